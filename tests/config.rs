//! Configuration (SPEC §6): a bad file or environment is refused at start with exit code 2
//! and a message naming the file/variable, the key and the reason; valid overrides apply.
#![allow(clippy::unwrap_used, clippy::panic, clippy::indexing_slicing)]

mod common;
use common::*;
use std::time::Duration;

const EXIT: Duration = Duration::from_secs(10);

/// `serve` with this config file content and env; must refuse to start.
async fn refused(toml: &str, env: &[(&str, &str)]) -> (String, String) {
    let file = config_file(toml);
    let path = file.path().display().to_string();
    let out = run_cli(
        &["serve", "--config", &path, "--listen", "127.0.0.1:0"],
        env,
        EXIT,
    )
    .await;
    assert_eq!(out.code, Some(2), "bad config must exit 2: {out:?}");
    assert!(
        !out.stdout.contains("listening"),
        "must not start half-configured: {out:?}"
    );
    (path, out.stderr)
}

#[tokio::test]
async fn unknown_key_in_file_names_file_and_key() {
    let (path, err) = refused("[server]\nmax_conections = 5\n", &[]).await;
    assert!(err.contains(&path), "stderr names the file: {err}");
    assert!(
        err.contains("max_conections"),
        "stderr names the key: {err}"
    );
}

#[tokio::test]
async fn unknown_section_is_refused() {
    let (path, err) = refused("[sever]\nshards = 1\n", &[]).await;
    assert!(err.contains(&path), "{err}");
    assert!(err.contains("sever"), "{err}");
}

#[tokio::test]
async fn wrong_type_names_the_key() {
    let (path, err) = refused("[server]\nmax_connections = \"lots\"\n", &[]).await;
    assert!(err.contains(&path), "{err}");
    assert!(err.contains("max_connections"), "{err}");
}

#[tokio::test]
async fn bad_enum_value_names_the_key() {
    let (_, err) = refused("[client]\non_full = \"sometimes\"\n", &[]).await;
    assert!(err.contains("on_full"), "{err}");
}

#[tokio::test]
async fn syntax_error_names_the_file() {
    let (path, err) = refused("[server\nshards = \n", &[]).await;
    assert!(err.contains(&path), "{err}");
}

#[tokio::test]
async fn ping_interval_not_below_idle_timeout_is_refused() {
    let (path, err) = refused(
        "[server]\nidle_timeout = \"1s\"\nping_interval = \"2s\"\n",
        &[],
    )
    .await;
    assert!(err.contains(&path), "{err}");
    assert!(err.contains("server.ping_interval"), "{err}");
    let (_, err) = refused(
        "[server]\nidle_timeout = \"2s\"\nping_interval = \"2s\"\n",
        &[],
    )
    .await;
    assert!(
        err.contains("server.ping_interval"),
        "equal is refused too: {err}"
    );
}

#[tokio::test]
async fn bad_duration_is_refused() {
    let (_, err) = refused("[server]\nidle_timeout = \"soon\"\n", &[]).await;
    assert!(err.contains("idle_timeout"), "{err}");
}

#[tokio::test]
async fn missing_config_file_is_refused() {
    let path = "/nonexistent/shardcast-test/config.toml";
    let out = run_cli(
        &["serve", "--config", path, "--listen", "127.0.0.1:0"],
        &[],
        EXIT,
    )
    .await;
    assert_eq!(out.code, Some(2), "{out:?}");
    assert!(out.stderr.contains(path), "{out:?}");
}

#[tokio::test]
async fn env_override_applies() {
    let broker = Broker::start_with("", &[], &[("SHARDCAST_SERVER__MAX_CONNECTIONS", "1")]);
    let mut first = broker.ws(Dialect::Subprotocol("gows")).await;
    first.gows_sync().await;
    match try_ws(&broker.ws_url(), Dialect::Subprotocol("gows")).await {
        Err(status) => assert_eq!(status, 503),
        Ok(_) => panic!("second connection must get 503 with max_connections=1 from env"),
    }
    first.gows_sync().await;
}

#[tokio::test]
async fn env_override_beats_the_file() {
    let broker = Broker::start_with(
        "[server]\nmax_connections = 100\n",
        &[],
        &[("SHARDCAST_SERVER__MAX_CONNECTIONS", "1")],
    );
    let _first = broker.ws(Dialect::Default).await;
    assert_eq!(
        try_ws(&broker.ws_url(), Dialect::Default).await.err(),
        Some(503)
    );
}

#[tokio::test]
async fn unknown_env_key_names_the_variable() {
    let (_, err) = refused("", &[("SHARDCAST_SERVER__NO_SUCH_KEY", "1")]).await;
    assert!(err.contains("SHARDCAST_SERVER__NO_SUCH_KEY"), "{err}");
}

#[tokio::test]
async fn bad_env_value_names_the_variable() {
    let (_, err) = refused("", &[("SHARDCAST_SERVER__MAX_CONNECTIONS", "many")]).await;
    assert!(err.contains("SHARDCAST_SERVER__MAX_CONNECTIONS"), "{err}");
}

#[tokio::test]
async fn shards_flag_overrides_the_file() {
    let broker = Broker::start_with("[server]\nshards = 1\n", &["--shards", "3"], &[]);
    let s = broker.stats().await;
    assert_eq!(s["shards"].as_array().map(Vec::len), Some(3), "stats: {s}");
}

#[tokio::test]
async fn empty_config_uses_defaults() {
    let broker = Broker::start("");
    let mut ws = broker.ws(Dialect::Default).await;
    ws.gows_sync().await; // default dialect gows
    let r = broker.get("/healthz").await;
    assert_eq!(r.status, 200);
}

#[tokio::test]
async fn unset_auth_secret_is_a_config_error_naming_the_file() {
    let toml = "[auth]\ntype = \"jwt\"\njwt_secret_env = \"SHARDCAST_TEST_NEVER_SET\"\n";
    let (path, err) = refused(toml, &[]).await;
    assert!(err.contains(&path), "names the file: {err}");
    assert!(err.contains("auth.jwt_secret_env"), "names the key: {err}");
    assert!(
        err.contains("SHARDCAST_TEST_NEVER_SET"),
        "names the variable: {err}"
    );
    assert!(
        err.starts_with("config error in"),
        "one format for config errors: {err}"
    );
}

#[tokio::test]
async fn type_errors_say_what_to_write_not_the_rust_type() {
    let (_, err) = refused("[server]\nshards = -1\n", &[]).await;
    assert!(err.contains("whole number"), "{err}");
    assert!(!err.contains("usize"), "no Rust type names: {err}");
}

#[tokio::test]
async fn listen_accepts_localhost_and_hints_otherwise() {
    let broker = Broker::start_listening("", "localhost:0");
    assert!(broker.addr.ip().is_loopback(), "{}", broker.addr);
    assert_eq!(broker.get("/healthz").await.status, 200);

    let out = run_cli(&["serve", "--listen", "my-host:9000"], &[], EXIT).await;
    assert_eq!(out.code, Some(2), "{out:?}");
    assert!(
        out.stderr.contains("127.0.0.1:9000"),
        "shows a form that works: {out:?}"
    );
}

#[tokio::test]
async fn address_in_use_names_the_address() {
    let taken = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let addr = taken.local_addr().unwrap().to_string();
    let out = run_cli(&["serve", "--listen", &addr], &[], EXIT).await;
    assert_eq!(out.code, Some(1), "{out:?}");
    assert!(out.stderr.contains(&addr), "names the address: {out:?}");
    assert!(out.stderr.contains("already listens"), "says why: {out:?}");
}

#[tokio::test]
async fn short_hs256_secret_is_warned_about() {
    let toml = "[auth]\ntype = \"jwt\"\njwt_secret_env = \"SHARDCAST_TEST_JWT\"\n";
    let short = Broker::start_with(toml, &[], &[("SHARDCAST_TEST_JWT", "hunter2")]);
    let long_secret = "0123456789abcdef0123456789abcdef";
    let long = Broker::start_with(toml, &[], &[("SHARDCAST_TEST_JWT", long_secret)]);
    // The warning is written before the ready line; stderr is read by a thread.
    until_ok("the short-secret warning", Duration::from_secs(5), || {
        let err = short.stderr();
        async move {
            if err.contains("shorter than 32 bytes") {
                Ok(())
            } else {
                Err(err)
            }
        }
    })
    .await;
    assert!(!long.stderr().contains("shorter than"), "{}", long.stderr());
}
