//! Outside programs the cluster tests run (`nats-server`, `haproxy`): finding them,
//! skipping with a NOTICE (or failing, in CI) when missing, and child processes that are
//! killed when dropped.

use super::*;
use std::io::Write;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};

/// A helper server's binary: `env_bin` if set, else `name` on `PATH` or where Debian and
/// others put it (`/usr/sbin` is often not on a user's PATH).
pub fn find_binary(name: &str, env_bin: &str) -> Option<PathBuf> {
    if let Some(p) = std::env::var_os(env_bin) {
        return Some(p.into());
    }
    let path = std::env::var_os("PATH").unwrap_or_default();
    std::env::split_paths(&path)
        .chain(["/usr/sbin", "/usr/local/sbin", "/usr/local/bin", "/usr/bin"].map(PathBuf::from))
        .map(|dir| dir.join(name))
        .find(|p| p.is_file())
}

/// The binary (Debian package of the same name), or `None` after printing why the test is
/// skipped; a missing binary fails the test when `env_require` is `1`.
pub fn require_binary(name: &str, env_bin: &str, env_require: &str) -> Option<PathBuf> {
    let found = find_binary(name, env_bin);
    if found.is_none() {
        assert!(
            std::env::var(env_require).as_deref() != Ok("1"),
            "{name} not found and {env_require}=1 (install it: apt-get install {name})"
        );
        // Written past the test harness's capture (eprintln! is captured), so a skipped
        // test is seen in a normal run rather than reported as a plain `ok`.
        let _ = writeln!(
            std::io::stderr(),
            "NOTICE: test skipped: {name} not found (apt-get install {name}, or set {env_bin}; {env_require}=1 makes this a failure)"
        );
    }
    found
}

pub fn require_nats() -> Option<PathBuf> {
    require_binary(
        "nats-server",
        "SHARDCAST_NATS_SERVER",
        "SHARDCAST_REQUIRE_NATS",
    )
}

pub fn require_haproxy() -> Option<PathBuf> {
    require_binary("haproxy", "SHARDCAST_HAPROXY", "SHARDCAST_REQUIRE_HAPROXY")
}

/// A port nobody listens on right now.
pub fn free_port() -> u16 {
    let l = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    l.local_addr().unwrap().port()
}

/// A helper server (`nats-server`, `haproxy`) as a child process; killed when dropped.
pub struct Server {
    child: Child,
    /// What the process wrote to stdout and stderr.
    log: std::fs::File,
}

impl Server {
    /// Spawns `bin args` and waits until it accepts connections on `port`; if it exits
    /// instead, fails with what it wrote.
    pub async fn start(bin: &Path, args: &[&str], port: u16) -> Server {
        let mut log = tempfile::tempfile().unwrap();
        let mut child = Command::new(bin)
            .args(args)
            .stdin(Stdio::null())
            .stdout(log.try_clone().unwrap())
            .stderr(log.try_clone().unwrap())
            .spawn()
            .unwrap_or_else(|e| panic!("spawn {}: {e}", bin.display()));
        let what = format!("{} to listen on {port}", bin.display());
        until_ok(&what, READY, || {
            let exited = child.try_wait().unwrap();
            if let Some(status) = exited {
                use std::io::{Read, Seek};
                let mut out = String::new();
                log.rewind().unwrap();
                log.read_to_string(&mut out).unwrap();
                panic!("{} {args:?} exited ({status}):\n{out}", bin.display());
            }
            async move {
                tokio::net::TcpStream::connect(("127.0.0.1", port))
                    .await
                    .map(drop)
                    .map_err(|e| e.to_string())
            }
        })
        .await;
        Server { child, log }
    }

    /// Everything the process has written so far.
    pub fn output(&self) -> String {
        use std::io::{Read, Seek};
        let mut log = self.log.try_clone().unwrap();
        let mut out = String::new();
        log.rewind().unwrap();
        log.read_to_string(&mut out).unwrap();
        out
    }
}

impl Drop for Server {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// `nats-server` on 127.0.0.1:`port` with `extra` arguments (e.g. cluster routes).
pub async fn start_nats(bin: &Path, port: u16, extra: &[&str]) -> Server {
    let port_arg = port.to_string();
    let args = [&["-a", "127.0.0.1", "-p", port_arg.as_str()], extra].concat();
    Server::start(bin, &args, port).await
}
