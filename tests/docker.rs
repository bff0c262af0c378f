//! The image's entry point (docker/entrypoint.sh), run with sh against the built binary:
//! from the host a container's clients are never loopback, so the image turns the API key
//! on from `SHARDCAST_API_KEY`, and says so when it is missing.
#![allow(clippy::unwrap_used, clippy::panic, clippy::indexing_slicing)]

mod common;
use common::*;
use serde_json::json;
use std::process::Command;
use std::time::Duration;

fn entrypoint(env: &[(&str, &str)]) -> Broker {
    let config = config_file("");
    let bin_dir = binary().parent().unwrap().to_path_buf();
    let path = format!(
        "{}:{}",
        bin_dir.display(),
        std::env::var("PATH").unwrap_or_default()
    );
    let script = concat!(env!("CARGO_MANIFEST_DIR"), "/docker/entrypoint.sh");
    let mut cmd = Command::new("sh");
    cmd.arg(script)
        .arg("serve")
        .arg("--config")
        .arg(config.path())
        .arg("--listen")
        .arg("127.0.0.1:0")
        .env("PATH", path);
    for (k, v) in env {
        cmd.env(k, v);
    }
    Broker::spawn(cmd, config)
}

async fn publish(broker: &Broker, key: Option<&str>) -> u16 {
    let body = json!({"channel": "news", "data": {"n": 1}}).to_string();
    let auth = key.map_or(String::new(), |k| format!("Authorization: Bearer {k}\r\n"));
    let req = format!(
        "POST /api/publish HTTP/1.1\r\nHost: {}\r\n{auth}Content-Type: application/json\r\nContent-Length: {}\r\nConnection: close\r\n\r\n{body}",
        broker.addr,
        body.len()
    );
    status_of(&raw_http(broker.addr, req.as_bytes()).await)
}

#[tokio::test]
async fn api_key_from_the_environment_turns_the_key_on() {
    let broker = entrypoint(&[("SHARDCAST_API_KEY", "change-me")]);
    assert_eq!(publish(&broker, Some("change-me")).await, 200);
    // Even loopback needs the key once one is configured.
    assert_eq!(publish(&broker, None).await, 401);
    assert_eq!(publish(&broker, Some("wrong")).await, 401);
}

#[tokio::test]
async fn without_a_key_the_image_says_how_to_publish() {
    let broker = entrypoint(&[]);
    until_ok("the entry point's notice", Duration::from_secs(5), || {
        let err = broker.stderr();
        async move {
            if err.contains("-e SHARDCAST_API_KEY=") {
                Ok(())
            } else {
                Err(err)
            }
        }
    })
    .await;
    // Loopback-only rule unchanged: the container itself may publish.
    assert_eq!(publish(&broker, None).await, 200);
}
