//! Learning the upstream's node id: `GET /healthz` on the upstream's host and port,
//! `details.node_id`. With it a push link never sends a publication back to the node it
//! came from; without it (an upstream behind a proxy that hides `/healthz`) the hop limit
//! and the pulling side's own-id check still stop loops.

use std::time::Duration;
use tokio::io::{AsyncReadExt, AsyncWriteExt};

/// Most bytes of the upstream's answer read.
const MAX_ANSWER: usize = 64 * 1024;

/// The node id the broker at `host:port` reports, or why there is none.
pub async fn node_id(
    host: &str,
    port: u16,
    authority: &str,
    timeout: Duration,
) -> Result<String, String> {
    match tokio::time::timeout(timeout, fetch(host, port, authority)).await {
        Ok(r) => r,
        Err(_) => Err(format!(
            "no /healthz answer from {authority} within {timeout:?}"
        )),
    }
}

async fn fetch(host: &str, port: u16, authority: &str) -> Result<String, String> {
    let mut stream = tokio::net::TcpStream::connect((host, port))
        .await
        .map_err(|e| format!("cannot connect to {authority}: {e}"))?;
    let request = format!(
        "GET /healthz HTTP/1.1\r\nHost: {authority}\r\nConnection: close\r\nUser-Agent: shardcast-link\r\n\r\n"
    );
    stream
        .write_all(request.as_bytes())
        .await
        .map_err(|e| format!("cannot ask {authority} for /healthz: {e}"))?;
    let mut answer = Vec::new();
    let mut chunk = [0u8; 8192];
    loop {
        let n = stream
            .read(&mut chunk)
            .await
            .map_err(|e| format!("reading /healthz of {authority}: {e}"))?;
        if n == 0 {
            break;
        }
        answer.extend_from_slice(&chunk[..n]);
        if answer.len() > MAX_ANSWER {
            return Err(format!("/healthz of {authority} is too long"));
        }
    }
    parse(&answer).ok_or_else(|| format!("/healthz of {authority} has no details.node_id"))
}

/// `details.node_id` from a whole HTTP answer.
fn parse(answer: &[u8]) -> Option<String> {
    let at = memchr::memmem::find(answer, b"\r\n\r\n")?;
    let body = answer.get(at + 4..)?;
    let v: serde_json::Value = serde_json::from_slice(body).ok()?;
    v.get("details")?
        .get("node_id")?
        .as_str()
        .filter(|s| !s.is_empty() && !s.contains(','))
        .map(str::to_owned)
}

#[cfg(test)]
mod tests {
    #[test]
    fn parses_the_node_id_and_refuses_anything_else() {
        let ok =
            b"HTTP/1.1 200 OK\r\ncontent-length: 9\r\n\r\n{\"details\":{\"node_id\":\"cloud\"}}";
        assert_eq!(super::parse(ok).as_deref(), Some("cloud"));
        assert_eq!(super::parse(b"HTTP/1.1 200 OK\r\n\r\n{}"), None);
        assert_eq!(super::parse(b"garbage"), None);
        assert_eq!(
            super::parse(b"HTTP/1.1 200 OK\r\n\r\n{\"details\":{\"node_id\":\"a,b\"}}"),
            None
        );
    }
}
