//! Native TLS (SPEC §10, issue 18 item 3): the real binary with `server.tls_cert` /
//! `server.tls_key` serves `wss://` and `https://` on its one port to a client that
//! trusts a test CA made here; the certificate is replaced without a restart (SIGHUP,
//! and a file change alone); bad files stop the start with exit 2; plain-text clients
//! and failed handshakes are refused cleanly and counted.
#![allow(clippy::unwrap_used, clippy::panic, clippy::indexing_slicing)]

mod common;
use common::*;
use futures_util::{SinkExt, StreamExt};
use rcgen::{BasicConstraints, CertificateParams, DnType, IsCa, KeyPair, SerialNumber};
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Duration;
use tokio_rustls::rustls::pki_types::{CertificateDer, ServerName};
use tokio_rustls::rustls::{ClientConfig, RootCertStore};
use tokio_rustls::TlsConnector;
use tokio_tungstenite::tungstenite::Message;

/// A test CA and a server certificate for 127.0.0.1 / localhost signed by it.
struct Pki {
    ca: CertificateDer<'static>,
    cert_pem: String,
    key_pem: String,
    leaf: CertificateDer<'static>,
}

fn make_pki(name: &str, serial: u64) -> Pki {
    let ca_key = KeyPair::generate().unwrap();
    let mut ca_params = CertificateParams::new(Vec::<String>::new()).unwrap();
    ca_params.is_ca = IsCa::Ca(BasicConstraints::Unconstrained);
    ca_params
        .distinguished_name
        .push(DnType::CommonName, format!("{name} test CA"));
    let ca = ca_params.self_signed(&ca_key).unwrap();
    let key = KeyPair::generate().unwrap();
    let mut params =
        CertificateParams::new(vec!["127.0.0.1".to_owned(), "localhost".to_owned()]).unwrap();
    params.serial_number = Some(SerialNumber::from(serial));
    params
        .distinguished_name
        .push(DnType::CommonName, format!("{name} broker"));
    let leaf = params.signed_by(&key, &ca, &ca_key).unwrap();
    Pki {
        ca: ca.der().clone(),
        cert_pem: leaf.pem(),
        key_pem: key.serialize_pem(),
        leaf: leaf.der().clone(),
    }
}

/// The certificate and key files a broker is configured with.
struct Files {
    _dir: tempfile::TempDir,
    cert: PathBuf,
    key: PathBuf,
}

impl Files {
    fn new(pki: &Pki) -> Files {
        let dir = tempfile::tempdir().unwrap();
        let files = Files {
            cert: dir.path().join("cert.pem"),
            key: dir.path().join("key.pem"),
            _dir: dir,
        };
        files.write(pki);
        files
    }

    /// Replaces both files the way deploy tools do: write aside, rename over.
    fn write(&self, pki: &Pki) {
        for (path, text) in [(&self.cert, &pki.cert_pem), (&self.key, &pki.key_pem)] {
            let tmp = path.with_extension("tmp");
            std::fs::write(&tmp, text).unwrap();
            std::fs::rename(&tmp, path).unwrap();
        }
    }

    fn config(&self, extra: &str) -> String {
        format!(
            "[server]\ntls_cert = {:?}\ntls_key = {:?}\n{extra}",
            self.cert.display().to_string(),
            self.key.display().to_string()
        )
    }
}

fn connector(ca: &CertificateDer<'static>) -> TlsConnector {
    let mut roots = RootCertStore::empty();
    roots.add(ca.clone()).unwrap();
    let provider = Arc::new(tokio_rustls::rustls::crypto::ring::default_provider());
    let config = ClientConfig::builder_with_provider(provider)
        .with_safe_default_protocol_versions()
        .unwrap()
        .with_root_certificates(roots)
        .with_no_client_auth();
    TlsConnector::from(Arc::new(config))
}

type TlsStream = tokio_rustls::client::TlsStream<tokio::net::TcpStream>;

/// A TLS connection to the broker trusting `ca` (the handshake's error on failure).
async fn tls_connect(broker: &Broker, ca: &CertificateDer<'static>) -> std::io::Result<TlsStream> {
    let tcp = tokio::net::TcpStream::connect(broker.addr).await?;
    let name = ServerName::IpAddress(broker.addr.ip().into());
    within(RECV, "TLS handshake", connector(ca).connect(name, tcp)).await
}

/// The certificate the broker presented on `stream`.
fn presented(stream: &TlsStream) -> CertificateDer<'static> {
    stream.get_ref().1.peer_certificates().unwrap()[0].clone()
}

/// One `https://` request (`Connection: close`); the whole answer as text.
async fn https(broker: &Broker, ca: &CertificateDer<'static>, request: &str) -> String {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    let mut s = tls_connect(broker, ca).await.unwrap();
    s.write_all(request.as_bytes()).await.unwrap();
    let mut out = Vec::new();
    within(HTTP, "https answer", s.read_to_end(&mut out))
        .await
        .unwrap();
    String::from_utf8_lossy(&out).into_owned()
}

/// `POST /api/publish` of `payload` (JSON) over HTTPS; the whole answer.
async fn https_publish(broker: &Broker, ca: &CertificateDer<'static>, payload: &str) -> String {
    https(
        broker,
        ca,
        &format!(
            "POST /api/publish HTTP/1.1\r\nHost: 127.0.0.1\r\nContent-Type: application/json\r\nContent-Length: {}\r\nConnection: close\r\n\r\n{payload}",
            payload.len()
        ),
    )
    .await
}

async fn https_get(broker: &Broker, ca: &CertificateDer<'static>, path: &str) -> String {
    https(
        broker,
        ca,
        &format!("GET {path} HTTP/1.1\r\nHost: 127.0.0.1\r\nConnection: close\r\n\r\n"),
    )
    .await
}

type Wss = tokio_tungstenite::WebSocketStream<TlsStream>;

/// A `wss://` gows client.
async fn wss(broker: &Broker, ca: &CertificateDer<'static>) -> Wss {
    let stream = tls_connect(broker, ca).await.unwrap();
    let url = format!("wss://{}/ws", broker.addr);
    let (ws, _) = within(
        RECV,
        "wss handshake",
        tokio_tungstenite::client_async(url, stream),
    )
    .await
    .unwrap();
    ws
}

/// A `wss://` gows client whose upgrade has more headers than the lean handshake takes,
/// so hyper's upgrade path serves it.
async fn wss_via_hyper(broker: &Broker, ca: &CertificateDer<'static>) -> Wss {
    use tokio_tungstenite::tungstenite::client::IntoClientRequest;
    let stream = tls_connect(broker, ca).await.unwrap();
    let mut req = format!("wss://{}/ws", broker.addr)
        .into_client_request()
        .unwrap();
    for i in 0..40 {
        req.headers_mut().insert(
            tokio_tungstenite::tungstenite::http::HeaderName::from_bytes(
                format!("x-pad-{i}").as_bytes(),
            )
            .unwrap(),
            tokio_tungstenite::tungstenite::http::HeaderValue::from_static("1"),
        );
    }
    let (ws, _) = within(
        RECV,
        "wss handshake (hyper path)",
        tokio_tungstenite::client_async(req, stream),
    )
    .await
    .unwrap();
    ws
}

async fn recv_json(ws: &mut Wss) -> serde_json::Value {
    loop {
        let msg = within(RECV, "wss message", ws.next())
            .await
            .expect("stream open")
            .expect("message");
        if let Message::Text(t) = msg {
            return serde_json::from_str(&t).unwrap();
        }
    }
}

async fn send_json(ws: &mut Wss, v: serde_json::Value) {
    within(RECV, "wss send", ws.send(Message::Text(v.to_string())))
        .await
        .unwrap();
}

/// A gows subscribe to `channel`, in place once the ping after it is answered.
async fn subscribe_synced(ws: &mut Wss, channel: &str) {
    send_json(
        ws,
        serde_json::json!({"type": "subscribe", "data": channel}),
    )
    .await;
    send_json(ws, serde_json::json!({"type": "ping"})).await;
    assert_eq!(recv_json(ws).await["type"], "pong");
}

async fn broker_publish_https(broker: &Broker, ca: &CertificateDer<'static>, payload: &str) {
    let answer = https_publish(broker, ca, payload).await;
    assert!(status(&answer) < 300, "https publish: {answer}");
}

fn status(answer: &str) -> u16 {
    status_of(answer)
}

fn body(answer: &str) -> &str {
    answer.split_once("\r\n\r\n").map_or("", |(_, b)| b)
}

/// The `shardcast_rejections_total` count for `reason`, read over https.
async fn rejected(broker: &Broker, ca: &CertificateDer<'static>, reason: &str) -> f64 {
    let m = https_get(broker, ca, "/metrics").await;
    rejections(body(&m)).get(reason).copied().unwrap_or(0.0)
}

#[tokio::test]
async fn wss_subscriber_gets_publication_and_https_api_answers() {
    let pki = make_pki("one", 1);
    let files = Files::new(&pki);
    let broker = Broker::start(&files.config(""));

    let health = https_get(&broker, &pki.ca, "/healthz").await;
    assert_eq!(status(&health), 200, "https /healthz: {health}");

    let mut ws = wss(&broker, &pki.ca).await;
    subscribe_synced(&mut ws, "news").await;

    let payload = r#"{"channel":"news","data":{"n":42}}"#;
    let answer = https_publish(&broker, &pki.ca, payload).await;
    assert!(status(&answer) < 300, "https publish: {answer}");
    let got = recv_json(&mut ws).await;
    assert_eq!(got["data"]["n"], 42, "publication over wss: {got}");

    // A big publication crosses many TLS records and the socket's buffer.
    let big = "x".repeat(200_000);
    let payload = serde_json::json!({"channel": "news", "data": {"big": big}}).to_string();
    let answer = https_publish(&broker, &pki.ca, &payload).await;
    assert!(
        status(&answer) < 300,
        "big https publish: {}",
        &answer[..200]
    );
    let got = recv_json(&mut ws).await;
    assert_eq!(got["data"]["big"].as_str().map(str::len), Some(200_000));

    // The upgrade hyper serves (a head the lean path passes on) works over TLS too.
    let mut other = wss_via_hyper(&broker, &pki.ca).await;
    subscribe_synced(&mut other, "news").await;
    broker_publish_https(&broker, &pki.ca, r#"{"channel":"news","data":{"n":7}}"#).await;
    assert_eq!(recv_json(&mut ws).await["data"]["n"], 7);
    assert_eq!(recv_json(&mut other).await["data"]["n"], 7);

    // The dashboard and the client script load over https too.
    let page = https_get(&broker, &pki.ca, "/").await;
    assert_eq!(status(&page), 200, "dashboard over https");
    let m = https_get(&broker, &pki.ca, "/metrics").await;
    assert!(counter(body(&m), "shardcast_tls_handshakes_total") >= 5.0);
}

#[tokio::test]
async fn plain_text_client_on_tls_port_gets_a_readable_400() {
    let pki = make_pki("plain", 2);
    let files = Files::new(&pki);
    let broker = Broker::start(&files.config(""));
    let answer = raw_http(
        broker.addr,
        b"GET /healthz HTTP/1.1\r\nHost: 127.0.0.1\r\nConnection: close\r\n\r\n",
    )
    .await;
    assert_eq!(
        status_of(&answer),
        400,
        "plain http on the TLS port: {answer}"
    );
    assert!(answer.contains("https://"), "says what to use: {answer}");
    assert_eq!(
        rejected(&broker, &pki.ca, "plain_text_on_tls_port").await,
        1.0
    );
}

#[tokio::test]
async fn client_that_does_not_trust_the_certificate_is_counted_not_fatal() {
    let pki = make_pki("trusted", 3);
    let stranger = make_pki("stranger", 4);
    let files = Files::new(&pki);
    let broker = Broker::start(&files.config(""));
    let refused = tls_connect(&broker, &stranger.ca).await;
    assert!(refused.is_err(), "a client trusting another CA must fail");
    // The broker counts it and keeps serving.
    eventually("tls_handshake_failed counted", RECV, || async {
        rejected(&broker, &pki.ca, "tls_handshake_failed").await >= 1.0
    })
    .await;
    let mut ws = wss(&broker, &pki.ca).await;
    send_json(&mut ws, serde_json::json!({"type": "ping"})).await;
    assert_eq!(recv_json(&mut ws).await["type"], "pong");
}

#[tokio::test]
async fn stalled_tls_handshake_is_cut_by_handshake_timeout() {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    let pki = make_pki("slow", 5);
    let files = Files::new(&pki);
    let broker = Broker::start(&files.config("handshake_timeout = \"1s\"\n"));
    let mut tcp = tokio::net::TcpStream::connect(broker.addr).await.unwrap();
    // A TLS record header for a handshake message, then nothing.
    tcp.write_all(&[0x16, 0x03, 0x01, 0x02, 0x00])
        .await
        .unwrap();
    let mut sink = [0u8; 64];
    let end = within(
        Duration::from_secs(5),
        "broker closes the stalled socket",
        async {
            loop {
                match tcp.read(&mut sink).await {
                    Ok(0) | Err(_) => break,
                    Ok(_) => {}
                }
            }
        },
    )
    .await;
    let () = end;
    assert!(rejected(&broker, &pki.ca, "handshake_timeout").await >= 1.0);
}

/// Waits until a new connection trusting `pki.ca` is presented `pki.leaf`.
async fn until_served(broker: &Broker, pki: &Pki) {
    until_ok(
        "new connections get the new certificate",
        Duration::from_secs(10),
        || async {
            match tls_connect(broker, &pki.ca).await {
                Ok(s) if presented(&s) == pki.leaf => Ok(()),
                Ok(_) => Err("old certificate".to_owned()),
                Err(e) => Err(format!("handshake failed: {e}")),
            }
        },
    )
    .await;
}

#[tokio::test]
async fn sighup_reloads_the_certificate_for_new_connections() {
    let first = make_pki("first", 10);
    let second = make_pki("second", 11);
    let files = Files::new(&first);
    // File polling off: only the signal can make the broker see the new files.
    let broker = Broker::start(&files.config("tls_reload_interval = \"0s\"\n"));
    let old = tls_connect(&broker, &first.ca).await.unwrap();
    assert_eq!(presented(&old), first.leaf);
    let mut open = wss(&broker, &first.ca).await;

    files.write(&second);
    // Without a signal, nothing changes.
    let still = tls_connect(&broker, &first.ca).await.unwrap();
    assert_eq!(presented(&still), first.leaf);

    // SAFETY: sending a signal to our own child process.
    unsafe { libc::kill(broker.pid() as i32, libc::SIGHUP) };
    until_served(&broker, &second).await;
    // The broker survived the signal, and the open connection kept its session.
    send_json(&mut open, serde_json::json!({"type": "ping"})).await;
    assert_eq!(recv_json(&mut open).await["type"], "pong");
    let m = https_get(&broker, &second.ca, "/metrics").await;
    assert_eq!(counter(body(&m), "shardcast_tls_reloads_total"), 1.0);
}

#[tokio::test]
async fn file_change_alone_reloads_and_a_bad_pair_keeps_the_old_one() {
    let first = make_pki("first", 20);
    let second = make_pki("second", 21);
    let files = Files::new(&first);
    let broker = Broker::start(&files.config("tls_reload_interval = \"100ms\"\n"));

    // A key that does not belong to the certificate: refused, the old pair stays.
    let mismatched = Pki {
        key_pem: first.key_pem.clone(),
        ..make_pki("second", 22)
    };
    files.write(&mismatched);
    eventually("bad pair counted", Duration::from_secs(10), || async {
        let m = https_get(&broker, &first.ca, "/metrics").await;
        counter(body(&m), "shardcast_tls_reload_failures_total") >= 1.0
    })
    .await;
    let s = tls_connect(&broker, &first.ca).await.unwrap();
    assert_eq!(presented(&s), first.leaf, "the old certificate is kept");
    assert!(broker.stderr().contains("keeping the current one"));

    files.write(&second);
    until_served(&broker, &second).await;
}

/// `serve` with these TLS files must exit 2 naming `key` and saying `why`.
async fn refused(cert: &Path, key: &Path, name: &str, why: &str) {
    let toml = format!(
        "[server]\ntls_cert = {:?}\ntls_key = {:?}\n",
        cert.display().to_string(),
        key.display().to_string()
    );
    let file = config_file(&toml);
    let path = file.path().display().to_string();
    let out = run_cli(
        &["serve", "--config", &path, "--listen", "127.0.0.1:0"],
        &[],
        Duration::from_secs(10),
    )
    .await;
    assert_eq!(out.code, Some(2), "bad TLS files must exit 2: {out:?}");
    assert!(!out.stdout.contains("listening"), "{out:?}");
    assert!(out.stderr.contains(name), "names {name}: {}", out.stderr);
    assert!(out.stderr.contains(why), "says {why:?}: {}", out.stderr);
}

#[tokio::test]
async fn unusable_files_are_config_errors_naming_the_key() {
    let pki = make_pki("files", 30);
    let other = make_pki("other", 31);
    let files = Files::new(&pki);
    let dir = tempfile::tempdir().unwrap();
    let missing = dir.path().join("missing.pem");
    let garbage = dir.path().join("garbage.pem");
    std::fs::write(&garbage, "this is not PEM\n").unwrap();
    let broken = dir.path().join("broken.pem");
    std::fs::write(&broken, "-----BEGIN CERTIFICATE-----\nAAAA\n").unwrap();
    let other_key = dir.path().join("other-key.pem");
    std::fs::write(&other_key, &other.key_pem).unwrap();

    refused(&missing, &files.key, "server.tls_cert", "cannot read").await;
    refused(&files.cert, &missing, "server.tls_key", "cannot read").await;
    refused(
        &garbage,
        &files.key,
        "server.tls_cert",
        "holds no certificate",
    )
    .await;
    refused(&broken, &files.key, "server.tls_cert", "not valid PEM").await;
    // The certificate file given as the key: PEM, but no private key in it.
    refused(
        &files.cert,
        &files.cert,
        "server.tls_key",
        "holds no private key",
    )
    .await;
    refused(&files.cert, &other_key, "server.tls_key", "does not belong").await;

    // One without the other.
    let file = config_file(&format!(
        "[server]\ntls_cert = {:?}\n",
        files.cert.display().to_string()
    ));
    let path = file.path().display().to_string();
    let out = run_cli(
        &["serve", "--config", &path, "--listen", "127.0.0.1:0"],
        &[],
        Duration::from_secs(10),
    )
    .await;
    assert_eq!(out.code, Some(2), "{out:?}");
    assert!(out.stderr.contains("server.tls_key"), "{}", out.stderr);
}
