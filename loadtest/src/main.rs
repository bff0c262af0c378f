//! Command line of the load harness: `run SCENARIO …` and `plot …`.

use anyhow::{Context, Result};
use clap::{Args, Parser, Subcommand};
use shardcast_loadtest::plan::{Plan, Scenario};
use shardcast_loadtest::plot;
use shardcast_loadtest::progress::Progress;
use shardcast_loadtest::wire::{Dialect, Target};
use shardcast_loadtest::{replay, run};
use std::process::ExitCode;
use std::time::Duration;

#[derive(Parser)]
#[command(
    name = "shardcast-loadtest",
    version,
    about = "Load harness for vws/gows/SemStreams WebSocket brokers (loopback only)"
)]
struct Cli {
    #[command(subcommand)]
    cmd: Cmd,
}

#[derive(Subcommand)]
enum Cmd {
    /// Run one scenario against a broker and print a summary table.
    Run(Box<RunArgs>),
    /// Draw the latency distributions of saved JSON reports in one SVG.
    Plot(PlotArgs),
    /// Print a markdown table of saved JSON reports: each run, then medians per target
    /// (a run's target is its label up to " #").
    Summarize {
        #[arg(required = true)]
        reports: Vec<String>,
    },
}

#[derive(Args)]
struct RunArgs {
    /// fanout, many-topics, fanin, idle, churn, slow, cluster, abuse, replay, ingest or
    /// backpressure.
    #[arg(value_enum)]
    scenario: Scenario,
    /// WebSocket URL the subscribers connect to, e.g. ws://127.0.0.1:8080/ws.
    #[arg(long)]
    url: String,
    /// WebSocket URL for publishers (default: --url). The cluster scenario needs it.
    #[arg(long)]
    pub_url: Option<String>,
    /// For wss:// URLs: PEM file of the CA (or self-signed certificate) to trust. The
    /// certificate must name the loopback IP address the harness connects to.
    #[arg(long)]
    tls_ca: Option<std::path::PathBuf>,
    /// Subscribers offer permessage-deflate (as browsers do) and inflate what arrives
    /// compressed; the broker needs `server.compression = "on"` to agree.
    #[arg(long)]
    compression: bool,
    /// Dialect of the subscribers.
    #[arg(long, value_enum, default_value = "vws")]
    dialect: Dialect,
    /// Dialect of the publishers (default: vws; the backpressure edge is always
    /// semstreams).
    #[arg(long, value_enum, default_value = "vws")]
    pub_dialect: Dialect,
    /// Subscribers that read (scenario default if not given). replay: the joiners, and
    /// as many live subscribers.
    #[arg(long)]
    subs: Option<usize>,
    /// Topics the subscribers are spread over.
    #[arg(long)]
    topics: Option<usize>,
    /// Publisher connections (replay: always 1, none with --fill 0).
    #[arg(long)]
    pubs: Option<usize>,
    /// Publishes per second over all publishers (deliveries/s = rate x subs / topics).
    #[arg(long)]
    rate: Option<f64>,
    /// Size of each message's data object, in bytes.
    #[arg(long, default_value_t = 256)]
    payload: usize,
    /// replay: publications made to the history channel (PREFIX/0), at --rate, while the
    /// live subscribers read, before the joiners subscribe with offset 0; 0 = no live
    /// phase, the joiners replay what the channel already holds.
    #[arg(long, default_value_t = shardcast_loadtest::plan::REPLAY_FILL)]
    fill: u64,
    /// Extra subscribers that never read (slow consumers).
    #[arg(long)]
    slow: Option<usize>,
    /// Connections opened and closed per second while publishing.
    #[arg(long)]
    churn: Option<f64>,
    /// Seconds each churn connection stays open.
    #[arg(long, default_value_t = 0.5)]
    churn_hold: f64,
    /// Seconds of publishing before the measured window [default: 2].
    #[arg(long)]
    warmup: Option<f64>,
    /// Seconds of the measured window [default: 5; abuse: 18 for each of its two windows].
    #[arg(long)]
    duration: Option<f64>,
    /// Seconds late deliveries may still arrive after publishing stops [default: 5;
    /// abuse: 2].
    #[arg(long)]
    drain: Option<f64>,
    /// abuse: seconds the broker may take after the abuse, healthy traffic still flowing,
    /// to get its connections back to their count before and its RSS within 10% [default: 14].
    #[arg(long)]
    settle: Option<f64>,
    /// abuse: seconds of every attack before the warm-up, so one-time costs are paid
    /// before the "before" RSS reading; 0 = none [default: 2].
    #[arg(long)]
    prime: Option<f64>,
    /// abuse: run only these attacks (comma-separated; default all): bad-json, deep-json,
    /// sub-flood, publish-flood, bad-frames, slowloris, garbage-http, rst-churn, conn-burst,
    /// idle-sockets, big-heads, sub-storm.
    #[arg(long, value_delimiter = ',')]
    attacks: Vec<String>,
    /// abuse: cut the clean and the abuse window into this many slices each and
    /// alternate them, so both see the same background load; 1 = one clean window, then
    /// one abuse window.
    #[arg(long, default_value_t = 4)]
    cycles: usize,
    /// abuse: the milliseconds added to 2 x the clean p99 to give the most the healthy
    /// p99 may reach under abuse. Short CI smoke runs, whose 2-second slices a single
    /// scheduler stall can move, pass more than the default.
    #[arg(long, default_value_t = 2.0)]
    p99_floor: f64,
    /// abuse: when the broker's threads waited for a CPU at least this many milliseconds
    /// per second (summed) in the abuse slices, the machine was too busy for latency to
    /// say anything about the broker: the p99 limit is then reported, not enforced. Loss,
    /// recovery, memory and --p99-ceiling are judged on any machine.
    #[arg(long, default_value_t = 100.0)]
    busy_host_ms: f64,
    /// abuse: the most the healthy p99 under abuse may be on any machine, in milliseconds.
    #[arg(long, default_value_t = 500.0)]
    p99_ceiling: f64,
    /// Seconds allowed for all subscribers to connect and subscribe.
    #[arg(long, default_value_t = 60.0)]
    setup_timeout: f64,
    /// Subscriber threads.
    #[arg(long, default_value_t = 1)]
    threads: usize,
    /// Connection set-ups in flight per subscriber thread.
    #[arg(long, default_value_t = 256)]
    connect_concurrency: usize,
    /// Broker process id: report its CPU seconds and RSS (ingest: acks per CPU-second).
    #[arg(long)]
    pid: Option<u32>,
    /// shardcast only: read its write counters from http://ADDR/api/stats (host:port)
    /// and report frames per write in the window; backpressure: its blocked reads and
    /// dropped frames from http://ADDR/metrics.
    #[arg(long)]
    broker_stats: Option<std::net::SocketAddr>,
    /// Name of this run in the table, JSON and plot (default: scenario name).
    #[arg(long)]
    label: Option<String>,
    /// Prefix of the topic names.
    #[arg(long, default_value = "bench")]
    topic_prefix: String,
    /// ingest, backpressure: the topic everything goes to; the broker's
    /// `semstreams.data_channel`, where SemStreams data without a topic lands.
    #[arg(long, default_value = shardcast_loadtest::plan::DATA_CHANNEL)]
    ingest_topic: String,
    /// ingest: publishes each edge keeps in flight (sent, not yet acked).
    #[arg(long, default_value_t = shardcast_loadtest::plan::INGEST_WINDOW)]
    window: usize,
    /// backpressure: frames per second the edge reads from its own socket (each publish
    /// brings back two: its ack and its echo).
    #[arg(long, default_value_t = shardcast_loadtest::plan::READ_RATE)]
    read_rate: f64,
    /// Write the report as JSON to this file.
    #[arg(long)]
    json: Option<String>,
    /// Write this run's latency distribution as an SVG plot.
    #[arg(long)]
    plot: Option<String>,
    /// No progress line.
    #[arg(long)]
    quiet: bool,
    /// Exit with status 1 unless nothing was lost, nothing failed and latency was measured
    /// (abuse: and its verdict passed, see docs/LOADTEST.md).
    #[arg(long)]
    check: bool,
}

#[derive(Args)]
struct PlotArgs {
    /// The SVG file to write.
    #[arg(long)]
    out: String,
    /// Title above the plot.
    #[arg(long, default_value = "delivery latency")]
    title: String,
    /// Report JSON files written with --json; one line each.
    #[arg(required = true)]
    reports: Vec<String>,
}

fn seconds(name: &str, v: f64) -> Result<Duration> {
    Duration::try_from_secs_f64(v).with_context(|| format!("--{name} {v}: not a number of seconds"))
}

fn plan(a: &RunArgs) -> Result<Plan> {
    let preset = a.scenario.preset();
    let secure = |mut t: Target| -> Result<Target> {
        if t.is_wss() {
            let ca = a
                .tls_ca
                .as_deref()
                .with_context(|| format!("{}: wss:// needs --tls-ca FILE", t.url))?;
            t.trust(ca)?;
        }
        Ok(t)
    };
    let sub_target = secure(Target::parse(&a.url)?)?;
    let pub_target = match &a.pub_url {
        Some(u) => secure(Target::parse(u)?)?,
        None if a.scenario == Scenario::Cluster => {
            anyhow::bail!("the cluster scenario needs --pub-url (the node publishers use)")
        }
        None => sub_target.clone(),
    };
    let mut sub_target = sub_target;
    sub_target.deflate = a.compression;
    let subs = a.subs.unwrap_or(preset.subs);
    let timing = preset.timing;
    let replay = a.scenario == Scenario::Replay;
    if replay && a.pubs.is_some_and(|p| p != 1) {
        anyhow::bail!("the replay scenario has one publisher (--pubs 1), or none with --fill 0");
    }
    Ok(Plan {
        scenario: a.scenario,
        label: a
            .label
            .clone()
            .unwrap_or_else(|| a.scenario.name().to_string()),
        sub_target,
        pub_target,
        dialect: a.dialect,
        pub_dialect: match a.scenario {
            Scenario::Backpressure => Dialect::Semstreams,
            _ => a.pub_dialect,
        },
        subs,
        // Idle runs give every subscriber its own topic.
        topics: a.topics.unwrap_or(if a.scenario == Scenario::Idle {
            subs.max(1)
        } else {
            preset.topics
        }),
        pubs: match (replay, a.fill) {
            (true, 0) => 0,
            (true, _) => 1,
            (false, _) => a.pubs.unwrap_or(preset.pubs),
        },
        rate: a.rate.unwrap_or(preset.rate),
        payload: a.payload,
        slow: a.slow.unwrap_or(preset.slow),
        churn: a.churn.unwrap_or(preset.churn),
        churn_hold: seconds("churn-hold", a.churn_hold)?,
        warmup: seconds("warmup", a.warmup.unwrap_or(timing.warmup))?,
        duration: seconds("duration", a.duration.unwrap_or(timing.duration))?,
        drain: seconds("drain", a.drain.unwrap_or(timing.drain))?,
        settle: seconds("settle", a.settle.unwrap_or(timing.settle))?,
        prime: seconds("prime", a.prime.unwrap_or(timing.prime))?,
        attacks: a.attacks.clone(),
        cycles: a.cycles,
        latency_rule: shardcast_loadtest::abuse::soak::LatencyRule {
            p99_floor_ms: a.p99_floor,
            busy_host_ms: a.busy_host_ms,
            p99_ceiling_ms: a.p99_ceiling,
        },
        setup_timeout: seconds("setup-timeout", a.setup_timeout)?,
        threads: a.threads,
        connect_concurrency: a.connect_concurrency,
        pid: a.pid,
        broker_stats: a.broker_stats,
        topic_prefix: a.topic_prefix.clone(),
        fill: if replay { a.fill } else { 0 },
        window: a.window,
        ingest_topic: a.ingest_topic.clone(),
        read_rate: a.read_rate,
    })
}

fn run_cmd(a: RunArgs) -> Result<bool> {
    let plan = plan(&a)?;
    let limit = plan.bound();
    std::thread::spawn(move || {
        std::thread::sleep(limit);
        eprintln!("shardcast-loadtest: the run exceeded its bound of {limit:?}; stopping");
        std::process::exit(3);
    });
    let progress = Progress::new(a.quiet);
    if plan.is_replay() {
        let report = replay::run(plan, &progress)?;
        print!("{}", report.table());
        if let Some(path) = &a.json {
            let text = serde_json::to_string_pretty(&report).context("serialize report")?;
            std::fs::write(path, text + "\n").with_context(|| format!("write {path}"))?;
        }
        if let Some(path) = &a.plot {
            std::fs::write(path, plot::svg(&report.scenario, &[report.live_series()]))
                .with_context(|| format!("write {path}"))?;
        }
        return Ok(!a.check || report.clean());
    }
    let report = run::run(plan, &progress)?;
    print!("{}", report.table());
    if let Some(path) = &a.json {
        let text = serde_json::to_string_pretty(&report).context("serialize report")?;
        std::fs::write(path, text + "\n").with_context(|| format!("write {path}"))?;
    }
    if let Some(path) = &a.plot {
        let series = plot::Series {
            label: report.label.clone(),
            points: report.latency_curve.clone(),
        };
        std::fs::write(path, plot::svg(&report.scenario, &[series]))
            .with_context(|| format!("write {path}"))?;
    }
    Ok(!a.check || report.clean())
}

fn plot_cmd(a: PlotArgs) -> Result<bool> {
    let series = a
        .reports
        .iter()
        .map(|p| plot::series_from_json(p))
        .collect::<Result<Vec<_>>>()?;
    std::fs::write(&a.out, plot::svg(&a.title, &series))
        .with_context(|| format!("write {}", a.out))?;
    Ok(true)
}

fn main() -> ExitCode {
    let result = match Cli::parse().cmd {
        Cmd::Run(a) => run_cmd(*a),
        Cmd::Plot(a) => plot_cmd(a),
        Cmd::Summarize { reports } => shardcast_loadtest::summary::markdown(&reports).map(|md| {
            print!("{md}");
            true
        }),
    };
    match result {
        Ok(true) => ExitCode::SUCCESS,
        Ok(false) => {
            eprintln!("shardcast-loadtest: check failed: loss, errors, no latency figures, a failed abuse verdict or an incomplete replay (see the table)");
            ExitCode::from(1)
        }
        Err(e) => {
            eprintln!("shardcast-loadtest: {e:#}");
            ExitCode::from(2)
        }
    }
}
