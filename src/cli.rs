//! The command line: `shardcast [serve] | publish | run | subscribe` (clap derive), and
//! the `publish` command itself. `main.rs` dispatches; `serve` lives there because it owns
//! the process (signals, exit codes); `run` and `subscribe` have their own modules.

use crate::api_client;
use crate::config::Overrides;
use anyhow::{bail, Context};
use bytes::Bytes;
use clap::{Args, Parser, Subcommand};
use std::net::SocketAddr;
use std::path::PathBuf;

/// Default broker URL for `publish` and `run`.
pub const DEFAULT_URL: &str = "http://127.0.0.1:8080";

/// shardcast: a sharded WebSocket publish/subscribe broker.
///
/// With no subcommand, serves (same as `shardcast serve`).
#[derive(Debug, Parser)]
#[command(name = "shardcast", version, args_conflicts_with_subcommands = true)]
pub struct Cli {
    /// What to do; none = `serve`.
    #[command(subcommand)]
    pub command: Option<Command>,
    /// `serve` flags, accepted without the subcommand too.
    #[command(flatten)]
    pub serve: ServeArgs,
}

/// Subcommands.
#[derive(Debug, Subcommand)]
pub enum Command {
    /// Run the broker (the default).
    Serve(ServeArgs),
    /// Publish one message through a broker's HTTP API.
    Publish(PublishArgs),
    /// Run a command, streaming its output and status to `process:ID`.
    Run(RunArgs),
    /// Print a channel: its history first, then live publications, until Ctrl-C
    ///
    /// Subscribes over the broker's WebSocket (vws dialect) and prints one line per
    /// publication to stdout, in offset order:
    ///
    ///   process_output   the line itself (the data string, unquoted)
    ///   process_status   [running], [exited, code N], [killed] or [failed]
    ///   anything else    its data as compact JSON
    ///
    /// With a wildcard pattern (+ or #) each line starts with the channel and a tab.
    /// --json prints one JSON object per line instead:
    ///   {"offset":17,"channel":"process:b1","type":"process_output","data":"line"}
    /// ("offset" is null on channels without history; "headers" is added when the
    /// publication has headers other than its type).
    ///
    /// Channels with history and replay = "all" (every process: channel by default) are
    /// printed from the oldest retained publication; --since N prints only those after
    /// offset N. Notices go to stderr: a --since that could not be honoured completely,
    /// missed offsets, why the connection ended.
    ///
    /// Exit status: 0 after Ctrl-C (SIGINT) or SIGTERM, when --until-exit saw the end
    /// of the process, or when stdout was closed; 1 when the broker cannot be reached,
    /// refuses the connection or the subscription, or the connection ends; 2 for bad
    /// arguments.
    ///
    /// Example: shardcast subscribe --url ws://127.0.0.1:8080/ws --channel process:b1
    #[command(verbatim_doc_comment)]
    Subscribe(SubscribeArgs),
}

/// `shardcast serve`.
#[derive(Debug, Default, Args)]
pub struct ServeArgs {
    /// TOML config file (keys not in it keep their defaults).
    #[arg(long, value_name = "FILE", env = "SHARDCAST_CONFIG")]
    pub config: Option<PathBuf>,
    /// Listen address, overriding server.listen (e.g. 127.0.0.1:0 for any free port,
    /// localhost:9000).
    #[arg(long, value_name = "ADDR", value_parser = crate::config::parse_listen)]
    pub listen: Option<SocketAddr>,
    /// Number of shards, overriding server.shards (0 = one per CPU core).
    #[arg(long, value_name = "N")]
    pub shards: Option<usize>,
}

impl ServeArgs {
    /// The flags that override the configuration.
    pub fn overrides(&self) -> Overrides {
        Overrides {
            listen: self.listen,
            shards: self.shards,
        }
    }
}

/// `shardcast publish`.
#[derive(Debug, Args)]
pub struct PublishArgs {
    /// Broker base URL.
    #[arg(long, value_name = "URL", default_value = DEFAULT_URL)]
    pub url: String,
    /// Channel (topic) to publish on.
    #[arg(long, value_name = "C")]
    pub channel: String,
    /// Message data, as JSON (quote strings: --data '"hello"').
    #[arg(long, value_name = "JSON")]
    pub data: String,
    /// gows message type subscribers see (default: "event").
    #[arg(long = "type", value_name = "T")]
    pub kind: Option<String>,
    /// API key, sent as `Authorization: Bearer <key>`.
    #[arg(
        long,
        value_name = "KEY",
        env = "SHARDCAST_API_KEY",
        hide_env_values = true
    )]
    pub api_key: Option<String>,
}

/// `shardcast run`.
#[derive(Debug, Args)]
pub struct RunArgs {
    /// Broker base URL.
    #[arg(long, value_name = "URL", default_value = DEFAULT_URL)]
    pub url: String,
    /// Process id: output goes to channel `process:ID`.
    #[arg(long, value_name = "ID")]
    pub id: String,
    /// API key, sent as `Authorization: Bearer <key>`.
    #[arg(
        long,
        value_name = "KEY",
        env = "SHARDCAST_API_KEY",
        hide_env_values = true
    )]
    pub api_key: Option<String>,
    /// The command and its arguments, after `--`.
    #[arg(last = true, required = true, num_args = 1.., value_name = "CMD")]
    pub command: Vec<String>,
}

/// `shardcast subscribe`.
#[derive(Debug, Args)]
pub struct SubscribeArgs {
    /// Broker WebSocket URL: ws://host:port/path (a URL without a path gets /ws).
    #[arg(long, value_name = "WS_URL", default_value = crate::subscribe::DEFAULT_WS_URL)]
    pub url: String,
    /// Channel to print: an exact channel (process:ID), or a pattern with + and #.
    #[arg(long, value_name = "C")]
    pub channel: String,
    /// Print only publications after offset N of the channel's history (0 = all retained).
    #[arg(long, value_name = "N")]
    pub since: Option<u64>,
    /// Print each publication as one JSON object per line (offset, channel, type, data).
    #[arg(long)]
    pub json: bool,
    /// Stop after the process's final status (exited, killed or failed), with exit 0.
    /// A final status replayed from history ends it only when nothing came after it.
    #[arg(long)]
    pub until_exit: bool,
    /// Credential for the broker's [auth] (token, JWT, or base64 user:password for basic),
    /// sent as ?token=.
    #[arg(
        long,
        value_name = "TOKEN",
        env = "SHARDCAST_TOKEN",
        hide_env_values = true
    )]
    pub token: Option<String>,
}

/// The JSON body `shardcast publish` sends: `{"channel", "data", "type"?}`.
///
/// # Errors
/// `--data` is not valid JSON.
pub fn publish_body(args: &PublishArgs) -> anyhow::Result<Bytes> {
    let data: serde_json::Value = serde_json::from_str(&args.data).with_context(|| {
        format!(
            "--data is not valid JSON: {:?} (to send a string, quote it: --data '\"text\"')",
            args.data
        )
    })?;
    let mut body = serde_json::Map::new();
    body.insert("channel".to_owned(), args.channel.clone().into());
    body.insert("data".to_owned(), data);
    if let Some(kind) = &args.kind {
        body.insert("type".to_owned(), kind.clone().into());
    }
    Ok(Bytes::from(serde_json::Value::Object(body).to_string()))
}

/// `shardcast publish`: POSTs to `/api/publish` and returns the broker's JSON response.
///
/// # Errors
/// Bad `--data`, the broker unreachable, or a non-2xx answer (with the broker's `error`).
pub async fn publish(args: &PublishArgs) -> anyhow::Result<String> {
    let body = publish_body(args)?;
    let (status, text) = api_client::post(
        &args.url,
        "/api/publish",
        "application/json",
        body,
        args.api_key.as_deref(),
    )
    .await?;
    if !(200..300).contains(&status) {
        bail!(
            "the broker answered HTTP {status}: {}",
            api_client::error_text(&text)
        );
    }
    Ok(text)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn parse(args: &[&str]) -> Cli {
        Cli::try_parse_from(args).expect("parses")
    }

    #[test]
    fn no_subcommand_serves() {
        let cli = parse(&["shardcast"]);
        assert!(cli.command.is_none());
        let cli = parse(&["shardcast", "--listen", "127.0.0.1:0"]);
        assert_eq!(cli.serve.overrides().listen.map(|a| a.port()), Some(0));
    }

    #[test]
    fn serve_flags() {
        let cli = parse(&[
            "shardcast",
            "serve",
            "--config",
            "x.toml",
            "--listen",
            "127.0.0.1:9",
            "--shards",
            "4",
        ]);
        let s = match cli.command {
            Some(Command::Serve(s)) => Some(s),
            _ => None,
        }
        .expect("serve expected");
        assert_eq!(s.config, Some(PathBuf::from("x.toml")));
        assert_eq!(s.overrides().shards, Some(4));
        assert!(Cli::try_parse_from(["shardcast", "serve", "--listen", "nowhere"]).is_err());
    }

    #[test]
    fn run_takes_the_command_after_dashes() {
        let cli = parse(&[
            "shardcast",
            "run",
            "--url",
            "http://h:1",
            "--id",
            "b1",
            "--",
            "sh",
            "-c",
            "echo hi; exit 3",
        ]);
        let r = match cli.command {
            Some(Command::Run(r)) => Some(r),
            _ => None,
        }
        .expect("run expected");
        assert_eq!(r.id, "b1");
        assert_eq!(r.command, ["sh", "-c", "echo hi; exit 3"]);
        assert!(Cli::try_parse_from(["shardcast", "run", "--id", "b1"]).is_err());
    }

    #[test]
    fn subscribe_flags() {
        let cli = parse(&[
            "shardcast",
            "subscribe",
            "--channel",
            "process:b1",
            "--since",
            "17",
            "--json",
            "--until-exit",
        ]);
        let s = match cli.command {
            Some(Command::Subscribe(s)) => Some(s),
            _ => None,
        }
        .expect("subscribe expected");
        assert_eq!(s.url, crate::subscribe::DEFAULT_WS_URL);
        assert_eq!(
            (s.channel.as_str(), s.since, s.json, s.until_exit),
            ("process:b1", Some(17), true, true)
        );
        assert!(Cli::try_parse_from(["shardcast", "subscribe"]).is_err());
        assert!(
            Cli::try_parse_from(["shardcast", "subscribe", "--channel", "c", "--since", "-1"])
                .is_err()
        );
    }

    #[test]
    fn publish_body_shape() {
        let cli = parse(&[
            "shardcast",
            "publish",
            "--channel",
            "a/b",
            "--data",
            r#"{"c":21.5}"#,
            "--type",
            "reading",
        ]);
        let p = match cli.command {
            Some(Command::Publish(p)) => Some(p),
            _ => None,
        }
        .expect("publish expected");
        assert_eq!(p.url, DEFAULT_URL);
        let body: serde_json::Value =
            serde_json::from_slice(&publish_body(&p).expect("valid")).expect("json");
        assert_eq!(
            body,
            serde_json::json!({"channel": "a/b", "data": {"c": 21.5}, "type": "reading"})
        );

        let bad = PublishArgs {
            data: "hello".to_owned(),
            kind: None,
            ..p
        };
        let err = publish_body(&bad).expect_err("not JSON").to_string();
        assert!(err.contains("quote it"), "{err}");
    }
}
