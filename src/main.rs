//! berthd: the CRI server.
//!
//! Flags in containerd's style override the config file; `berthd config
//! default` prints the defaults as TOML. SIGTERM and SIGINT stop berthd
//! (containers keep running); SIGHUP re-reads the config file's log level
//! and re-checks registries.conf and the CNI config, and never stops it.

use std::io::IsTerminal as _;
use std::path::PathBuf;
use std::process::ExitCode;

use anyhow::Context as _;
use berth::config::{Config, DEFAULT_CONFIG_PATH, LogFormat, Overrides};
use berth::cri::CriServer;
use clap::{Parser, Subcommand};
use tokio::signal::unix::{SignalKind, signal};
use tracing_subscriber::fmt::format::FmtSpan;
use tracing_subscriber::layer::SubscriberExt as _;
use tracing_subscriber::util::SubscriberInitExt as _;
use tracing_subscriber::{EnvFilter, Layer as _, Registry, reload};

/// berthd: a container runtime service for Kubernetes (CRI over a unix socket).
#[derive(Debug, Parser)]
#[command(name = "berthd", version = berth::LONG_VERSION, about, long_about = None)]
struct Cli {
    /// Config file (TOML); without this flag, /etc/berth/berthd.toml if it exists
    #[arg(long, short = 'c', value_name = "FILE", global = true)]
    config: Option<PathBuf>,
    /// Unix socket of the CRI server [default: /run/berth/berth.sock]
    #[arg(long, short = 'a', value_name = "SOCKET", global = true)]
    address: Option<PathBuf>,
    /// Persistent data directory (images, snapshots, metadata) [default: /var/lib/berth]
    #[arg(long, value_name = "DIR", global = true)]
    root: Option<PathBuf>,
    /// Runtime state directory (pinned namespaces, sockets) [default: /run/berth]
    #[arg(long, value_name = "DIR", global = true)]
    state: Option<PathBuf>,
    /// Log level or tracing directives (error, warn, info, debug, trace,
    /// "berth=debug,tonic=info"); overrides RUST_LOG and the config file
    #[arg(long, short = 'l', value_name = "LEVEL", global = true)]
    log_level: Option<String>,
    #[command(subcommand)]
    command: Option<Command>,
}

#[derive(Debug, Subcommand)]
enum Command {
    /// Inspect berthd's configuration
    Config {
        #[command(subcommand)]
        action: ConfigAction,
    },
}

#[derive(Debug, Subcommand)]
enum ConfigAction {
    /// Print the default configuration as TOML
    Default,
    /// Print the effective configuration (config file plus flags) as TOML
    Dump,
}

impl Cli {
    fn overrides(&self) -> Overrides {
        Overrides {
            address: self.address.clone(),
            root: self.root.clone(),
            state: self.state.clone(),
            log_level: self.log_level.clone(),
        }
    }

    /// The config file plus the flags.
    fn effective_config(&self) -> anyhow::Result<Config> {
        let (path, required) = match &self.config {
            Some(path) => (path.clone(), true),
            None => (PathBuf::from(DEFAULT_CONFIG_PATH), false),
        };
        let mut config = Config::load(&path, required)?;
        config.apply(self.overrides())?;
        Ok(config)
    }
}

fn main() -> ExitCode {
    // The pod init mode runs before anything else (single-threaded).
    if std::env::args().nth(1).as_deref() == Some(berth::pod::pod_init::POD_INIT_ARG) {
        berth::pod::pod_init::main();
    }
    let cli = Cli::parse();
    let result = match &cli.command {
        Some(Command::Config {
            action: ConfigAction::Default,
        }) => {
            print!("{}", Config::default_toml());
            Ok(())
        }
        Some(Command::Config {
            action: ConfigAction::Dump,
        }) => cli.effective_config().and_then(|config| {
            print!("{}", toml::to_string_pretty(&config)?);
            Ok(())
        }),
        None => run_daemon(&cli),
    };
    match result {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            let message = error_chain(&e);
            tracing::error!(error = %message, "berthd failed");
            eprintln!("berthd: error: {message}");
            ExitCode::FAILURE
        }
    }
}

fn run_daemon(cli: &Cli) -> anyhow::Result<()> {
    let config = cli.effective_config()?;
    let log_filter = init_logging(cli, &config)?;
    // Large buffers (ExecSync output of up to 16 MiB per stream, their
    // gRPC encoding) go back to the kernel when freed, instead of staying
    // in malloc's arenas (measured: +16 MiB RSS per 100 MiB ExecSync).
    if !berth::runtime::malloc_mmap_threshold(1 << 20) {
        tracing::warn!("mallopt(M_MMAP_THRESHOLD) refused");
    }
    // Before any thread, and before an upgrade can replace the binary.
    berth::pod::pod_init::open_own_executable().context("cannot open berthd's own executable")?;
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .thread_name("berthd")
        .build()
        .context("cannot start the async runtime")?;
    runtime.block_on(async {
        let mut sigterm = signal(SignalKind::terminate()).context("cannot handle SIGTERM")?;
        let mut sigint = signal(SignalKind::interrupt()).context("cannot handle SIGINT")?;
        // From here on SIGHUP no longer terminates berthd (its default action).
        let mut sighup = signal(SignalKind::hangup()).context("cannot handle SIGHUP")?;
        let server = CriServer::start(config).await?;
        let reloader = server.reloader();
        let reload_cli = ReloadCli {
            config: cli.config.clone(),
            overrides: cli.overrides(),
            filter_fixed: log_directives_fixed(cli),
        };
        tokio::spawn(async move {
            while sighup.recv().await.is_some() {
                tracing::info!(signal = "SIGHUP", "reloading");
                reload_cli.reload_log_level(&log_filter);
                reloader.reload().await;
            }
        });
        // The socket is bound: clients that connect now are served.
        sd_notify(berth::sd_notify::READY);
        server
            .serve(async move {
                let name = tokio::select! {
                    _ = sigterm.recv() => "SIGTERM",
                    _ = sigint.recv() => "SIGINT",
                };
                tracing::info!(signal = name, "received shutdown signal");
                sd_notify(berth::sd_notify::STOPPING);
            })
            .await?;
        Ok(())
    })
}

/// Tells systemd (a `Type=notify` service, see deploy/berthd.service) about
/// start-up and shutdown; a no-op when not started that way.
fn sd_notify(state: &str) {
    match berth::sd_notify::notify(state) {
        Ok(true) => tracing::debug!(state, "notified systemd"),
        Ok(false) => {}
        Err(e) => tracing::warn!(state, error = %e, "cannot notify systemd"),
    }
}

/// The live log filter: SIGHUP swaps it.
type LogFilter = reload::Handle<EnvFilter, Registry>;

/// What SIGHUP needs of the command line to re-read the config file.
struct ReloadCli {
    config: Option<PathBuf>,
    overrides: Overrides,
    /// `--log-level` or RUST_LOG is set: they win over the file, also on reload.
    filter_fixed: Option<&'static str>,
}

impl ReloadCli {
    fn reload_log_level(&self, handle: &LogFilter) {
        if let Some(by) = self.filter_fixed {
            tracing::info!(
                by,
                "log level kept: set by {by}, which wins over the config file"
            );
            return;
        }
        let (path, required) = match &self.config {
            Some(path) => (path.clone(), true),
            None => (PathBuf::from(DEFAULT_CONFIG_PATH), false),
        };
        let loaded = Config::load(&path, required).and_then(|mut c| {
            c.apply(self.overrides.clone())?;
            Ok(c)
        });
        let config = match loaded {
            Ok(c) => c,
            Err(e) => {
                tracing::error!(error = %e, "config file does not load; log level unchanged");
                return;
            }
        };
        match EnvFilter::builder().parse(&config.log_level) {
            Ok(filter) => match handle.reload(filter) {
                Ok(()) => tracing::info!(log_level = %config.log_level, "log level reloaded"),
                Err(e) => tracing::error!(error = %e, "cannot swap the log filter"),
            },
            Err(e) => tracing::error!(
                log_level = %config.log_level,
                error = %e,
                "invalid log level in the config file; log level unchanged"
            ),
        }
    }
}

/// Which source of log directives outranks the config file, if any.
fn log_directives_fixed(cli: &Cli) -> Option<&'static str> {
    if cli.log_level.is_some() {
        Some("--log-level")
    } else if std::env::var("RUST_LOG").is_ok_and(|v| !v.trim().is_empty()) {
        Some("RUST_LOG")
    } else {
        None
    }
}

/// Logs go to stderr, as text or JSON lines (`log_format`). Precedence of
/// the filter: --log-level, then RUST_LOG, then the config file's
/// `log_level`. Returns the handle SIGHUP swaps the filter with.
fn init_logging(cli: &Cli, config: &Config) -> anyhow::Result<LogFilter> {
    let directives = match (&cli.log_level, std::env::var("RUST_LOG")) {
        (Some(level), _) => level.clone(),
        (None, Ok(env)) if !env.trim().is_empty() => env,
        _ => config.log_level.clone(),
    };
    let filter = EnvFilter::builder()
        .parse(&directives)
        .with_context(|| format!("invalid log level {directives:?}"))?;
    let (filter, handle) = reload::Layer::new(filter);
    let output = tracing_subscriber::fmt::layer()
        .with_writer(std::io::stderr)
        .with_target(true)
        .with_span_events(FmtSpan::CLOSE);
    let output = match config.log_format {
        LogFormat::Text => output.with_ansi(std::io::stderr().is_terminal()).boxed(),
        LogFormat::Json => output.json().with_ansi(false).boxed(),
    };
    tracing_subscriber::registry()
        .with(filter)
        .with(output)
        .init();
    Ok(handle)
}

/// The error and its causes, each said once: the library's errors already
/// include their source in their message, so a cause whose text is already
/// there is skipped.
fn error_chain(e: &anyhow::Error) -> String {
    let mut out = String::new();
    for cause in e.chain() {
        let text = cause.to_string();
        if out.contains(&text) {
            continue;
        }
        if !out.is_empty() {
            out.push_str(": ");
        }
        out.push_str(&text);
    }
    out
}

#[cfg(test)]
mod tests {
    use super::error_chain;

    #[test]
    fn causes_already_in_the_message_are_said_once() {
        let io = std::io::Error::new(std::io::ErrorKind::AddrInUse, "in use");
        let e = anyhow::Error::new(io).context("bind 127.0.0.1:1: in use");
        assert_eq!(error_chain(&e), "bind 127.0.0.1:1: in use");
        let io = std::io::Error::new(std::io::ErrorKind::NotFound, "no file");
        let e = anyhow::Error::new(io).context("config x.toml");
        assert_eq!(error_chain(&e), "config x.toml: no file");
    }
}
