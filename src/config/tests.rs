//! Unit tests for config loading and validation (pure: temp files, no process env).

use super::*;
use std::io::Write;
use std::net::SocketAddr;
use std::path::Path;
use std::time::Duration;

fn env(vars: &[(&str, &str)]) -> Vec<(String, String)> {
    vars.iter()
        .map(|(k, v)| ((*k).to_owned(), (*v).to_owned()))
        .collect()
}

fn file(text: &str) -> tempfile::NamedTempFile {
    let mut f = tempfile::NamedTempFile::new().expect("temp file");
    f.write_all(text.as_bytes()).expect("write temp file");
    f
}

fn load_file(text: &str) -> (tempfile::NamedTempFile, Result<Config, ConfigError>) {
    let f = file(text);
    let r = load(Some(f.path()), env(&[]), &Overrides::default());
    (f, r)
}

fn load_env(vars: &[(&str, &str)]) -> Result<Config, ConfigError> {
    load(None, env(vars), &Overrides::default())
}

/// Asserts an `Invalid` error on `key`, whose message contains `needle`; returns the text.
fn invalid(r: Result<Config, ConfigError>, key: &str, needle: &str) -> String {
    let err = r.expect_err("expected a config error");
    let text = err.to_string();
    assert_eq!(err.key(), Some(key), "wrong key in: {text}");
    assert!(
        text.contains(needle),
        "{text:?} does not contain {needle:?}"
    );
    text
}

fn defaults_with(section_toml: &str) -> Result<Config, ConfigError> {
    load_file(section_toml).1
}

#[test]
fn embedded_defaults_parse_and_validate() {
    let c = Config::default();
    c.validate().expect("defaults are valid");
    assert_eq!(
        c.server.listen,
        "0.0.0.0:8080".parse::<SocketAddr>().expect("addr")
    );
    assert_eq!(c.server.shards, 0);
    assert_eq!(c.server.ws_path, "/ws");
    assert_eq!(
        c.server.default_dialect,
        crate::protocol::DefaultDialect::Auto
    );
    assert_eq!(c.semstreams.data_channel, "federated/data");
    assert_eq!(c.semstreams.on_full, SemstreamsOnFull::DropOldest);
    assert_eq!(c.server.max_connections, 10_000);
    assert_eq!(c.server.max_message_bytes, 65_536);
    assert_eq!(c.server.idle_timeout, Duration::from_secs(60));
    assert_eq!(c.server.ping_interval, Duration::from_secs(25));
    assert!(c.server.allowed_origins.is_empty());
    assert_eq!(c.server.shutdown_grace, Duration::from_secs(5));
    assert_eq!(c.server.handshake_timeout, Duration::from_secs(10));
    assert_eq!(c.server.first_byte_timeout, Duration::from_secs(2));
    assert_eq!(c.server.max_pending_handshakes, 2048);
    assert_eq!(c.server.max_request_head_bytes, 16_384);
    assert_eq!(c.server.ipv6_prefix_per_ip, 64);
    assert_eq!(c.server.inbox_capacity, 65_536);
    assert_eq!(c.client.queue_frames, 4096);
    assert_eq!(c.client.queue_bytes, 1_048_576);
    assert_eq!(c.client.on_full, OnFull::Disconnect);
    assert_eq!(c.client.max_subscriptions, 1000);
    assert_eq!(c.client.max_wildcard_subscriptions, 64);
    assert!((c.client.publish_rate - 1000.0).abs() < f64::EPSILON);
    assert_eq!(c.client.publish_burst, 2000);
    assert_eq!(c.client.rate_limit_strikes, 100);
    assert!(!c.client.allow_publish);
    assert_eq!(c.client.max_topic_bytes, 1024);
    assert_eq!(c.client.max_topic_levels, 32);
    assert_eq!(c.client.max_json_depth, 32);
    assert_eq!(c.auth.kind, AuthType::None);
    assert!(c.policy.is_empty());
    assert_eq!(c.api.key_env, "");
    assert_eq!(c.api.max_body_bytes, 1_048_576);
    assert_eq!(c.api.max_batch, 1000);
    assert!(c.metrics.enabled);
    assert_eq!(c.cluster.nats_url, "");
    assert_eq!(c.cluster.subject_prefix, "shardcast");
}

#[test]
fn load_with_nothing_is_default() {
    let c = load(None, env(&[]), &Overrides::default()).expect("loads");
    assert_eq!(c, Config::default());
}

#[test]
fn embedded_file_lists_every_key() {
    // No field has a serde default, so a key missing from the file would fail to parse;
    // and serializing the defaults yields exactly the keys of the file.
    fn keys(t: &toml::Table) -> Vec<String> {
        let mut out = Vec::new();
        for (k, v) in t {
            out.push(k.clone());
            if let toml::Value::Table(inner) = v {
                out.extend(keys(inner).into_iter().map(|i| format!("{k}.{i}")));
            }
        }
        out.sort();
        out
    }
    let file: toml::Table = toml::from_str(DEFAULTS_TOML).expect("parses");
    let text = toml::to_string(&Config::default()).expect("serializes");
    let round: toml::Table = toml::from_str(&text).expect("parses");
    assert_eq!(keys(&file), keys(&round));
    let back: Config = toml::from_str(&text).expect("round trips");
    assert_eq!(back, Config::default());
}

#[test]
fn shard_count_resolves_zero() {
    let mut c = Config::default();
    assert!(c.shard_count() >= 1 && c.shard_count() <= MAX_SHARDS);
    c.server.shards = 3;
    assert_eq!(c.shard_count(), 3);
}

#[test]
fn partial_file_overrides_defaults() {
    let (_f, r) = load_file(
        "[server]\nlisten = \"127.0.0.1:9000\"\nidle_timeout = \"2m\"\nping_interval = 30\n\
         [client]\non_full = \"drop_oldest\"\npublish_rate = 5\n",
    );
    let c = r.expect("loads");
    assert_eq!(c.server.listen.port(), 9000);
    assert_eq!(c.server.idle_timeout, Duration::from_secs(120));
    assert_eq!(c.server.ping_interval, Duration::from_secs(30));
    assert_eq!(c.client.on_full, OnFull::DropOldest);
    assert!((c.client.publish_rate - 5.0).abs() < f64::EPSILON);
    assert_eq!(c.server.ws_path, "/ws");
}

#[test]
fn unknown_key_in_file_names_it_and_the_file() {
    let (f, r) = load_file("[server]\nlisten = \"127.0.0.1:1\"\nlistn = 3\n");
    let text = invalid(r, "server.listn", "unknown key");
    assert!(text.contains(&f.path().display().to_string()), "{text}");
    assert!(text.contains("listen"), "lists the known keys: {text}");

    let (_f, r) = load_file("[sever]\nlisten = \"127.0.0.1:1\"\n");
    invalid(r, "sever", "unknown key");

    let (_f, r) =
        load_file("[[policy]]\npattern = \"a\"\nsubscribe = \"x\"\npublish = \"y\"\nwho = 1\n");
    invalid(r, "policy[0].who", "unknown key");
}

#[test]
fn wrong_type_in_file_names_the_key() {
    let (_f, r) = load_file("[server]\nmax_connections = \"lots\"\n");
    invalid(r, "server.max_connections", "invalid type");
    let (_f, r) = load_file("[server]\nlisten = \"nowhere\"\n");
    invalid(r, "server.listen", "nowhere");
    let (_f, r) = load_file("[server]\nidle_timeout = \"10 days\"\n");
    invalid(r, "server.idle_timeout", "invalid duration");
    let (_f, r) = load_file("[client]\non_full = \"explode\"\n");
    invalid(r, "client.on_full", "drop_oldest");
    let (_f, r) = load_file("[server]\ndefault_dialect = \"mqtt\"\n");
    invalid(r, "server.default_dialect", "gows");
    let (_f, r) = load_file("server = 3\n");
    invalid(r, "server", "must be a table");
}

#[test]
fn syntax_error_names_the_file() {
    let (f, r) = load_file("[server\nlisten = \n");
    let err = r.expect_err("syntax error");
    assert!(matches!(err, ConfigError::Syntax { .. }));
    let text = err.to_string();
    assert!(text.contains(&f.path().display().to_string()), "{text}");
    assert!(text.contains("line 1"), "{text}");
}

#[test]
fn missing_file_names_it() {
    let r = load(
        Some(Path::new("/nonexistent/shardcast.toml")),
        env(&[]),
        &Overrides::default(),
    );
    let text = r.expect_err("missing").to_string();
    assert!(text.contains("/nonexistent/shardcast.toml"), "{text}");
}

#[test]
fn env_overrides_each_type() {
    let c = load_env(&[
        ("SHARDCAST_SERVER__LISTEN", "127.0.0.1:9000"),
        ("SHARDCAST_CLIENT__ALLOW_PUBLISH", "true"),
        ("SHARDCAST_server__Max_Connections", "5"),
        (
            "SHARDCAST_SERVER__ALLOWED_ORIGINS",
            "[\"https://a.example\"]",
        ),
        ("SHARDCAST_SERVER__IDLE_TIMEOUT", "90s"),
        ("SHARDCAST_SERVER__PING_INTERVAL", "500ms"),
        ("SHARDCAST_CLIENT__PUBLISH_RATE", "2.5"),
        ("SHARDCAST_CLUSTER__NODE_ID", "2024"),
        ("SHARDCAST_API_KEY", "not config: ignored"),
        ("SHARDCAST_CONFIG", "/also/ignored"),
        ("HOME", "/root"),
    ])
    .expect("loads");
    assert_eq!(c.server.listen.port(), 9000);
    assert!(c.client.allow_publish);
    assert_eq!(c.server.max_connections, 5);
    assert_eq!(
        c.server.allowed_origins,
        vec!["https://a.example".to_owned()]
    );
    assert_eq!(c.server.idle_timeout, Duration::from_secs(90));
    assert_eq!(c.server.ping_interval, Duration::from_millis(500));
    assert!((c.client.publish_rate - 2.5).abs() < f64::EPSILON);
    assert_eq!(c.cluster.node_id, "2024", "string keys take the text as is");
}

#[test]
fn env_array_accepts_comma_list() {
    let c = load_env(&[(
        "SHARDCAST_SERVER__ALLOWED_ORIGINS",
        "https://a.example, https://b.example",
    )])
    .expect("loads");
    assert_eq!(c.server.allowed_origins.len(), 2);
}

#[test]
fn env_errors_name_the_variable() {
    let text = invalid(
        load_env(&[("SHARDCAST_SERVER__LISTN", "x")]),
        "server.listn",
        "unknown key",
    );
    assert!(
        text.contains("environment variable SHARDCAST_SERVER__LISTN"),
        "{text}"
    );
    invalid(
        load_env(&[("SHARDCAST_SERVR__LISTEN", "x")]),
        "servr",
        "unknown section",
    );
    invalid(
        load_env(&[("SHARDCAST_SERVER_LISTEN", "127.0.0.1:1")]),
        "server.listen",
        "SHARDCAST_SERVER__LISTEN",
    );
    let text = invalid(
        load_env(&[("SHARDCAST_SERVER__MAX_CONNECTIONS", "many")]),
        "server.max_connections",
        "invalid type",
    );
    assert!(text.contains("SHARDCAST_SERVER__MAX_CONNECTIONS"), "{text}");
    invalid(
        load_env(&[("SHARDCAST_POLICY__X", "1")]),
        "policy",
        "config file",
    );
}

#[test]
fn range_error_from_env_names_the_variable() {
    let text = invalid(
        load_env(&[("SHARDCAST_SERVER__SHARDS", "500")]),
        "server.shards",
        "at most 128",
    );
    assert!(text.contains("SHARDCAST_SERVER__SHARDS"), "{text}");
}

#[test]
fn flags_win_over_env_win_over_file() {
    let f = file("[server]\nlisten = \"127.0.0.1:1001\"\nshards = 1\nmax_connections = 7\n");
    let vars = env(&[
        ("SHARDCAST_SERVER__LISTEN", "127.0.0.1:1002"),
        ("SHARDCAST_SERVER__SHARDS", "2"),
    ]);
    let c = load(Some(f.path()), vars.clone(), &Overrides::default()).expect("loads");
    assert_eq!(c.server.listen.port(), 1002);
    assert_eq!(c.server.shards, 2);
    assert_eq!(c.server.max_connections, 7);

    let flags = Overrides {
        listen: Some("127.0.0.1:1003".parse().expect("addr")),
        shards: Some(3),
    };
    let c = load(Some(f.path()), vars, &flags).expect("loads");
    assert_eq!(c.server.listen.port(), 1003);
    assert_eq!(c.server.shards, 3);
    assert_eq!(c.server.max_connections, 7);
}

#[test]
fn range_error_from_flag_names_the_flag() {
    let flags = Overrides {
        listen: None,
        shards: Some(129),
    };
    let r = load(None, env(&[]), &flags);
    let text = invalid(r, "server.shards", "flag --shards");
    assert!(
        text.starts_with("config error in flag --shards: server.shards: "),
        "{text}"
    );
}

#[test]
fn cross_key_error_names_the_latest_source() {
    // idle_timeout lowered in the file below the default ping_interval: blame the file.
    let (f, r) = load_file("[server]\nidle_timeout = \"10s\"\n");
    let text = invalid(
        r,
        "server.ping_interval",
        "shorter than server.idle_timeout",
    );
    assert_eq!(
        text,
        format!(
            "config error in {}: server.ping_interval: must be shorter than server.idle_timeout (25s >= 10s)",
            f.path().display()
        )
    );
    // ...and an env var setting the other key after the file is blamed instead.
    let r = load(
        Some(f.path()),
        env(&[("SHARDCAST_SERVER__PING_INTERVAL", "20s")]),
        &Overrides::default(),
    );
    let text = invalid(r, "server.ping_interval", "shorter");
    assert!(text.contains("SHARDCAST_SERVER__PING_INTERVAL"), "{text}");
}

#[test]
fn every_validation_rule() {
    let cases: &[(&str, &str, &str)] = &[
        ("[server]\nshards = 129", "server.shards", "at most 128"),
        (
            "[auth]\nanonymous = true",
            "auth.anonymous",
            "only means something with auth.type",
        ),
        (
            "[[history]]\nsize = 5",
            "history.rules",
            "exactly one of `pattern` and `prefix`",
        ),
        (
            "[[history]]\npattern = \"a/#\"\nprefix = \"a/\"",
            "history.rules",
            "exactly one of",
        ),
        (
            "[[history]]\npattern = \"a/#/b\"",
            "history.rules",
            "pattern:",
        ),
        (
            "[[history]]\nprefix = \"\"",
            "history.rules",
            "must not be empty",
        ),
        (
            "[[history]]\nprefix = \"x\"\nsize = 2000000",
            "history.rules",
            "at most 1000000",
        ),
        (
            "[[history]]\nprefix = \"x\"\nbytes = 0",
            "history.rules",
            "bytes must be more than 0",
        ),
        (
            "[[history]]\nprefix = \"x\"\nttl = \"0s\"",
            "history.rules",
            "ttl must be longer than 0s",
        ),
        (
            "[server]\nws_path = \"ws\"",
            "server.ws_path",
            "must start with '/'",
        ),
        (
            "[server]\nws_path = \"/w s\"",
            "server.ws_path",
            "plain path",
        ),
        (
            "[server]\nws_path = \"/api/ws\"",
            "server.ws_path",
            "already used",
        ),
        (
            "[server]\nws_path = \"/healthz\"",
            "server.ws_path",
            "already used",
        ),
        (
            "[server]\nmax_connections = 0",
            "server.max_connections",
            "at least 1",
        ),
        (
            "[server]\nmax_message_bytes = 127",
            "server.max_message_bytes",
            "between 128",
        ),
        (
            "[server]\nmax_message_bytes = 67108865\n[client]\nqueue_bytes = 100000000",
            "server.max_message_bytes",
            "64 MiB",
        ),
        (
            "[server]\nidle_timeout = \"0s\"",
            "server.idle_timeout",
            "longer than 0s",
        ),
        (
            "[server]\nping_interval = \"0ms\"",
            "server.ping_interval",
            "longer than 0s",
        ),
        (
            "[server]\nping_interval = \"60s\"",
            "server.ping_interval",
            "shorter than",
        ),
        (
            "[server]\nallowed_hosts = [\"https://broker.example.com\"]",
            "server.allowed_hosts",
            "not a host name",
        ),
        (
            "[server]\nallowed_hosts = [\"*\", \"b.example\"]",
            "server.allowed_hosts",
            "only entry",
        ),
        (
            "[server]\nallowed_origins = [\"example.com\"]",
            "server.allowed_origins",
            "not an origin",
        ),
        (
            "[server]\nallowed_origins = [\"https://a.com/\"]",
            "server.allowed_origins",
            "trailing",
        ),
        (
            "[server]\nallowed_origins = [\"*\", \"https://a.com\"]",
            "server.allowed_origins",
            "only entry",
        ),
        (
            "[server]\nallowed_origins = [\"https://*.example.com\"]",
            "server.allowed_origins",
            "only stand for the port",
        ),
        (
            "[server]\nallowed_origins = [\"http://*:3000\"]",
            "server.allowed_origins",
            "only stand for the port",
        ),
        (
            "[server]\nallowed_origins = [\"file:///home/me/page.html\"]",
            "server.allowed_origins",
            "add \"null\"",
        ),
        (
            "[server]\nallowed_origins = [\"https://a.com/app\"]",
            "server.allowed_origins",
            "no path",
        ),
        (
            "[server]\nallowed_origins = [\"http://localhost:x\"]",
            "server.allowed_origins",
            "port must be a number or '*'",
        ),
        (
            "[server]\nallowed_origins = [\"http://:3000\"]",
            "server.allowed_origins",
            "no host",
        ),
        (
            "[server]\nallowed_origins = [\"nul\"]",
            "server.allowed_origins",
            "\"null\", scheme://host[:port] or scheme://host:*",
        ),
        (
            "[server]\nhandshake_timeout = 0",
            "server.handshake_timeout",
            "longer than 0s",
        ),
        (
            "[server]\nfirst_byte_timeout = 0",
            "server.first_byte_timeout",
            "longer than 0s",
        ),
        (
            "[server]\nmax_pending_handshakes = 0",
            "server.max_pending_handshakes",
            "at least 1",
        ),
        (
            "[server]\nmax_request_head_bytes = 512",
            "server.max_request_head_bytes",
            "between 1024 and 1048576",
        ),
        (
            "[server]\nipv6_prefix_per_ip = 0",
            "server.ipv6_prefix_per_ip",
            "between 1 and 128",
        ),
        (
            "[server]\ninbox_capacity = 0",
            "server.inbox_capacity",
            "at least 1",
        ),
        (
            "[client]\nqueue_frames = 0",
            "client.queue_frames",
            "at least 1",
        ),
        (
            "[client]\nqueue_bytes = 1000",
            "client.queue_bytes",
            "server.max_message_bytes",
        ),
        (
            "[client]\nmax_subscriptions = 0",
            "client.max_subscriptions",
            "at least 1",
        ),
        (
            "[client]\npublish_rate = -1.0",
            "client.publish_rate",
            ">= 0",
        ),
        (
            "[client]\npublish_rate = nan",
            "client.publish_rate",
            ">= 0",
        ),
        (
            "[client]\npublish_burst = 0",
            "client.publish_burst",
            "at least 1",
        ),
        (
            "[client]\nrate_limit_strikes = 0",
            "client.rate_limit_strikes",
            "at least 1",
        ),
        (
            "[client]\nmax_topic_bytes = 0",
            "client.max_topic_bytes",
            "between 1",
        ),
        (
            "[client]\nmax_topic_levels = 0",
            "client.max_topic_levels",
            "between 1",
        ),
        (
            "[client]\nmax_json_depth = 5000",
            "client.max_json_depth",
            "between 1",
        ),
        (
            "[auth]\ntype = \"bearer\"",
            "auth.bearer_token_env",
            "auth.type = bearer needs the name of the environment variable",
        ),
        (
            "[auth]\ntype = \"basic\"\nbasic_username_env = \"U\"",
            "auth.basic_password_env",
            "needs the name",
        ),
        (
            "[auth]\ntype = \"jwt\"",
            "auth.jwt_secret_env",
            "needs the name",
        ),
        (
            "[auth]\njwt_secret_env = \"MY-SECRET\"",
            "auth.jwt_secret_env",
            "environment variable name",
        ),
        (
            "[auth]\njwt_publish_claim = \"\"",
            "auth.jwt_publish_claim",
            "must name a JWT claim",
        ),
        (
            "[[policy]]\npattern = \"#\"\nsubscribe = \"any\"\npublish = \"nobody\"",
            "policy",
            "rule 1 (pattern \"#\"): subscribe: \"any\" is not one of anyone",
        ),
        (
            "[[policy]]\npattern = \"a/#/b\"\nsubscribe = \"anyone\"\npublish = \"nobody\"",
            "policy",
            "rule 1 (pattern \"a/#/b\"): pattern: ",
        ),
        (
            "[[policy]]\npattern = \"a\"\nsubscribe = \"anyone\"\npublish = \"claim:admin\"",
            "policy",
            "publish: claim rules need auth.type = \"jwt\"",
        ),
        (
            "[[policy]]\npattern = \"a\"\nsubscribe = \"authenticated\"\npublish = \"nobody\"",
            "policy",
            "never matches with auth.type = \"none\"",
        ),
        (
            "[server]\nconnection_rate_per_ip = -1.0",
            "server.connection_rate_per_ip",
            "connections per second >= 0",
        ),
        (
            "[server]\nconnection_rate_per_ip = 5.0\nconnection_burst_per_ip = 0",
            "server.connection_burst_per_ip",
            "at least 1",
        ),
        (
            "[api]\nkey_env = \"1KEY\"",
            "api.key_env",
            "environment variable name",
        ),
        (
            "[api]\nmax_body_bytes = 0",
            "api.max_body_bytes",
            "at least 1",
        ),
        ("[api]\nmax_batch = 0", "api.max_batch", "at least 1"),
        (
            "[cluster]\nnats_url = \"nats://a b:x\"",
            "cluster.nats_url",
            "not a NATS server URL",
        ),
        (
            "[cluster]\nsubject_prefix = \"\"",
            "cluster.subject_prefix",
            "NATS subject prefix",
        ),
        (
            "[cluster]\nsubject_prefix = \"a.*\"",
            "cluster.subject_prefix",
            "NATS subject prefix",
        ),
        ("[cluster]\nnode_id = \"a b\"", "cluster.node_id", "spaces"),
        (
            "[semstreams]\ndata_channel = \"a/#\"",
            "semstreams.data_channel",
            "valid topic",
        ),
        ("[semstreams]\nqueue_size = 0", "semstreams.queue_size", "between 1"),
        (
            "[semstreams]\nslow_interval = \"1ms\"",
            "semstreams.slow_interval",
            "at least 10ms",
        ),
        (
            "[semstreams]\nmax_payload_bytes = 0",
            "semstreams.max_payload_bytes",
            "at least 1",
        ),
        ("[semstreams]\nid_window = 2000000", "semstreams.id_window", "at most"),
        (
            "[cluster]\nmax_control_line = 100",
            "cluster.max_control_line",
            "between 128 and 1048576",
        ),
        (
            "[cluster]\nmax_control_line = 128\nsubject_prefix = \"a-very-long-prefix.of-many-tokens.that-leaves-no-room.for-any-channel.in-a-control-line-of-128-bytes\"",
            "cluster.max_control_line",
            "too short for subject_prefix",
        ),
        (
            "[cluster]\nhistory = \"jetstream\"",
            "cluster.history",
            "needs cluster.nats_url",
        ),
        (
            "[cluster]\nhistory = \"disk\"",
            "cluster.history",
            "unknown variant",
        ),
        (
            "[cluster]\njetstream_stream = \"a.b\"",
            "cluster.jetstream_stream",
            "stream name",
        ),
        (
            "[cluster]\njetstream_max_bytes = 10",
            "cluster.jetstream_max_bytes",
            "at least 1024",
        ),
        (
            "[cluster]\njetstream_timeout = \"1ms\"",
            "cluster.jetstream_timeout",
            "between 10ms and 60s",
        ),
    ];
    for (toml, key, needle) in cases {
        let text = invalid(defaults_with(toml), key, needle);
        assert!(
            text.starts_with("config error in /"),
            "names the file: {text}"
        );
    }
    // Origins: exact, any port of one host, the opaque origin of file:// pages, IPv6.
    let c = defaults_with(
        "[server]\nallowed_origins = [\"null\", \"http://localhost:*\", \"https://app.example.com:8443\", \"http://[::1]:*\", \"http://[::1]:3000\"]",
    )
    .expect("every entry form is accepted");
    assert_eq!(c.server.allowed_origins.len(), 5);
    // Zero grace is meaningful: close at once.
    defaults_with("[server]\nshutdown_grace = \"0s\"").expect("zero grace is allowed");
    defaults_with("[client]\npublish_rate = 0\npublish_burst = 0").expect("unlimited");
}

#[test]
fn api_key_env_must_be_set() {
    let f = file("[api]\nkey_env = \"MY_API_KEY\"\n");
    let r = load(Some(f.path()), env(&[]), &Overrides::default());
    invalid(r, "api.key_env", "MY_API_KEY is not set");
    let c = load(
        Some(f.path()),
        env(&[("MY_API_KEY", "s3cret")]),
        &Overrides::default(),
    )
    .expect("loads");
    assert_eq!(c.api.key_env, "MY_API_KEY");
}

#[test]
fn history_rules_in_either_form_and_the_cap_from_the_environment() {
    let (_f, short) = load_file("[[history]]\npattern = \"chat/+\"\nsize = 50\nreplay = \"all\"\n");
    let short = short.expect("[[history]] form");
    assert_eq!(short.history.rules.len(), 1);
    assert_eq!(short.history.rules[0].size, 50);
    assert_eq!(short.history.rules[0].replay, crate::config::Replay::All);
    assert_eq!(
        short.history.max_bytes, 268_435_456,
        "the default cap stays"
    );

    let (_f, long) = load_file(
        "[history]\nmax_bytes = 1000\n\n[[history.rules]]\nprefix = \"logs/\"\nttl = \"1h\"\n",
    );
    let long = long.expect("[history] form");
    assert_eq!(long.history.max_bytes, 1000);
    assert_eq!(long.history.rules[0].prefix.as_deref(), Some("logs/"));
    assert_eq!(long.history.rules[0].ttl, Duration::from_secs(3600));
    assert_eq!(long.history.rules[0].size, 1000, "rule defaults");

    let f = file("[[history]]\nprefix = \"x/\"\n");
    let both = load(
        Some(f.path()),
        env(&[("SHARDCAST_HISTORY__MAX_BYTES", "4096")]),
        &Overrides::default(),
    )
    .expect("env cap with [[history]] rules");
    assert_eq!(
        (both.history.max_bytes, both.history.rules.len()),
        (4096, 1)
    );

    let (_f, bad) = load_file("[[history]]\npattern = \"a\"\nsizes = 3\n");
    let msg = invalid(bad, "history[0].sizes", "unknown key");
    assert!(msg.contains("size, bytes, ttl, replay"), "{msg}");
}
