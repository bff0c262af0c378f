//! shardcast-loadtest: the load harness. This is a placeholder that builds; the scenarios
//! (fanout, many-topics, fanin, idle, churn, slow, cluster) arrive with the harness issue.

fn main() {
    eprintln!("shardcast-loadtest: no scenarios yet (see the load-harness issue)");
    std::process::exit(2);
}
