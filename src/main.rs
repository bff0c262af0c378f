//! The `shardcast` binary: global allocator, logging, command-line dispatch, and the
//! `serve` process lifecycle (start, print the address, wait for SIGTERM/SIGINT, shut
//! down gracefully). Everything else lives in the library.
//!
//! Exit codes: 0 clean shutdown; 1 runtime failure (cannot bind, publish refused); 2 bad
//! configuration; `run` exits with the command's code (125 when `run` itself failed);
//! `subscribe` exits 0 when stopped (SIGINT/SIGTERM, `--until-exit`), 1 when it failed or
//! the connection ended.

use anyhow::{bail, Context};
use clap::Parser;
use shardcast::cli::{self, Cli, Command, ServeArgs};
use shardcast::config;
use shardcast::runner;
use shardcast::server::Server;
use shardcast::subscribe;
use std::io::Write as _;
use std::process::ExitCode;
use std::time::Duration;
use tokio::signal::unix::{signal, SignalKind};

#[global_allocator]
static GLOBAL: mimalloc::MiMalloc = mimalloc::MiMalloc;

/// Extra time on top of `server.shutdown_grace` before giving up on a stuck shutdown.
const SHUTDOWN_MARGIN: Duration = Duration::from_secs(5);

fn main() -> ExitCode {
    shardcast::alloc::tune();
    let cli = Cli::parse();
    if cli
        .command
        .as_ref()
        .is_some_and(|c| !matches!(c, Command::Serve(_)))
    {
        init_logging("info", config::LogFormat::Text);
    }
    match cli.command {
        None => serve(&cli.serve),
        Some(Command::Serve(args)) => serve(&args),
        Some(Command::Publish(args)) => match block_on(cli::publish(&args)) {
            Ok(response) => {
                let mut out = std::io::stdout().lock();
                let _ = writeln!(out, "{}", response.trim_end());
                let _ = out.flush();
                ExitCode::SUCCESS
            }
            Err(e) => fail(&e, 1),
        },
        Some(Command::Run(args)) => {
            let ran = block_on(runner::run(
                &args.url,
                &args.id,
                args.api_key.as_deref(),
                &args.command,
            ));
            match ran {
                Ok(code) => ExitCode::from(u8::try_from(code).unwrap_or(1)),
                Err(e) => fail(&e, runner::EXIT_RUNNER_FAILED),
            }
        }
        Some(Command::Subscribe(args)) => match block_on(subscribe::run(&args)) {
            Ok(_) => ExitCode::SUCCESS,
            Err(e) => fail(&e, 1),
        },
    }
}

/// Logs to stderr: `RUST_LOG` if set, else `level`, as text or JSON lines.
fn init_logging(level: &str, format: config::LogFormat) {
    let filter = tracing_subscriber::EnvFilter::try_from_default_env()
        .or_else(|_| tracing_subscriber::EnvFilter::try_new(level))
        .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new("info"));
    // Colour codes only for a terminal: not in files, journald or `docker logs`.
    let builder = tracing_subscriber::fmt()
        .with_writer(std::io::stderr)
        .with_ansi(std::io::IsTerminal::is_terminal(&std::io::stderr()))
        .with_env_filter(filter);
    match format {
        config::LogFormat::Text => builder.init(),
        config::LogFormat::Json => builder.json().init(),
    }
}

fn fail(e: &anyhow::Error, code: i32) -> ExitCode {
    let _ = writeln!(std::io::stderr().lock(), "error: {e:#}");
    ExitCode::from(u8::try_from(code).unwrap_or(1))
}

/// Runs a client-side future (`publish`, `run`, `subscribe`) on a current-thread runtime.
fn block_on<T>(future: impl std::future::Future<Output = anyhow::Result<T>>) -> anyhow::Result<T> {
    tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .context("cannot start the async runtime")?
        .block_on(future)
}

fn serve(args: &ServeArgs) -> ExitCode {
    let config = match config::load(args.config.as_deref(), std::env::vars(), &args.overrides()) {
        Ok(c) => c,
        Err(e) => {
            let _ = writeln!(std::io::stderr().lock(), "{e}");
            return ExitCode::from(2);
        }
    };
    init_logging(&config.server.log_level, config.server.log_format);
    match serve_until_signal(config) {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => fail(&e, 1),
    }
}

/// Says which address could not be taken, and what to do when it is in use.
fn start_error(e: anyhow::Error, listen: std::net::SocketAddr) -> anyhow::Error {
    let in_use = e
        .chain()
        .filter_map(|c| c.downcast_ref::<std::io::Error>())
        .any(|io| io.kind() == std::io::ErrorKind::AddrInUse);
    if in_use {
        e.context(format!(
            "cannot listen on {listen}: another process already listens there; stop it or choose another address (--listen or server.listen)"
        ))
    } else {
        e.context(format!("cannot start the server on {listen}"))
    }
}

fn serve_until_signal(config: config::Config) -> anyhow::Result<()> {
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .context("cannot start the signal runtime")?;
    // Listen for signals before announcing the address, so a test that sends SIGTERM as
    // soon as it reads the line never hits the default (kill) disposition.
    let (mut term, mut int) = {
        let _guard = rt.enter();
        (
            signal(SignalKind::terminate()).context("cannot listen for SIGTERM")?,
            signal(SignalKind::interrupt()).context("cannot listen for SIGINT")?,
        )
    };
    let grace = config.server.shutdown_grace;
    let shards = config.shard_count();
    let listen = config.server.listen;
    let handle = Server::start(config).map_err(|e| start_error(e.into(), listen))?;
    let addr = handle.local_addr();
    {
        let mut out = std::io::stdout().lock();
        writeln!(out, "shardcast listening on {addr}").context("cannot write to stdout")?;
        out.flush().context("cannot write to stdout")?;
    }
    tracing::info!(%addr, shards, "listening");

    let which = rt.block_on(async {
        tokio::select! {
            _ = term.recv() => "SIGTERM",
            _ = int.recv() => "SIGINT",
        }
    });
    tracing::info!(
        signal = which,
        grace_ms = grace.as_millis() as u64,
        "shutting down"
    );
    handle.shutdown();

    // wait() blocks; run it off this thread so a second signal or a stuck shutdown can
    // still end the process.
    let (done_tx, done_rx) = tokio::sync::oneshot::channel();
    std::thread::Builder::new()
        .name("shutdown-wait".to_owned())
        .spawn(move || {
            handle.wait();
            let _ = done_tx.send(());
        })
        .context("cannot start the shutdown thread")?;
    rt.block_on(async {
        tokio::select! {
            _ = done_rx => Ok(()),
            _ = term.recv() => bail!("second signal during shutdown: exiting now"),
            _ = int.recv() => bail!("second signal during shutdown: exiting now"),
            () = tokio::time::sleep(grace + SHUTDOWN_MARGIN) => {
                bail!("shutdown did not finish within server.shutdown_grace + {}s", SHUTDOWN_MARGIN.as_secs())
            }
        }
    })?;
    tracing::info!("stopped");
    Ok(())
}
