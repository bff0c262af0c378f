//! Bounded runs of the `shardcast` binary for CLI and bad-config tests.

use super::*;

/// Outcome of a bounded run of the `shardcast` binary.
#[derive(Debug)]
pub struct CliOutput {
    pub code: Option<i32>,
    pub stdout: String,
    pub stderr: String,
}

/// Run `shardcast ARGS` with extra env, killing it if it runs longer than `d`.
pub async fn run_cli(args: &[&str], env: &[(&str, &str)], d: Duration) -> CliOutput {
    let mut cmd = tokio::process::Command::new(binary());
    cmd.args(args)
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .kill_on_drop(true);
    for (k, _) in std::env::vars() {
        if k.starts_with("SHARDCAST_") {
            cmd.env_remove(k);
        }
    }
    for (k, v) in env {
        cmd.env(k, v);
    }
    let child = cmd.spawn().expect("spawn shardcast binary");
    let out = within(
        d,
        &format!("`shardcast {}` to exit", args.join(" ")),
        child.wait_with_output(),
    )
    .await
    .expect("wait for shardcast");
    CliOutput {
        code: out.status.code(),
        stdout: String::from_utf8_lossy(&out.stdout).to_string(),
        stderr: String::from_utf8_lossy(&out.stderr).to_string(),
    }
}
