//! The `sippool` command: `run`, `check-config` and `demo` (see `sippool --help`).

use std::net::SocketAddr;
use std::path::PathBuf;
use std::process::ExitCode;

use clap::{Parser, Subcommand, ValueEnum};
use tracing::Instrument;

use sippool::actors::{DrainOutcome, Proxy};
use sippool::config;

/// A clustered SIP proxy: high availability for a primary/backup pair of SIP servers
#[derive(Debug, Parser)]
#[command(
    name = "sippool",
    version,
    arg_required_else_help = true,
    after_help = "Environment overrides: SIPPOOL__SECTION__KEY (e.g. SIPPOOL__OVERLOAD__INVITE_RATE=100).\n\
                  Log filter: log.level in the config file, or RUST_LOG (which wins)."
)]
struct Cli {
    #[command(subcommand)]
    command: Command,
}

#[derive(Debug, Subcommand)]
enum Command {
    /// Runs the proxy with a config file
    ///
    /// Runs until SIGTERM or SIGINT, then drains: new dialogs get 503, transactions in flight
    /// finish (within runtime.drain_timeout_s); a second signal exits at once. SIGHUP
    /// reloads the config file (all but listen sockets, http.address, threads, the flow
    /// key and [tls]) and the TLS files. Exit 2 on a config error, 1 when a listener
    /// cannot start.
    Run {
        /// The config file (examples/sippool.toml lists every key).
        #[arg(short, long, value_name = "FILE")]
        config: PathBuf,
        /// Log format on stderr: human-readable text, or one JSON object per line.
        #[arg(long, value_enum, default_value_t = LogFormat::Text)]
        log_format: LogFormat,
    },
    /// Validates a config file without starting anything
    ///
    /// Checks the file, the SIPPOOL__SECTION__KEY overrides and the TLS files it names:
    /// exit 0 if all is good, 2 with the bad key named if not.
    CheckConfig {
        /// The config file to check.
        #[arg(value_name = "FILE")]
        file: PathBuf,
    },
    /// Runs a demo on loopback: an instance, a simulated pair and calls
    ///
    /// Starts an instance in front of a simulated primary/backup pair with call traffic
    /// and the dashboard; kill and revive the primary (k / r + Enter, or the control
    /// page) to watch the switchover. q + Enter or Ctrl-C quits.
    Demo {
        /// Address of the instance's dashboard and metrics (a free port if taken).
        #[arg(long, value_name = "ADDR", default_value_t = sippool::demo::DemoOptions::default().http)]
        http: SocketAddr,
        /// Address of the demo's control page (kill / revive the primary).
        #[arg(long, value_name = "ADDR", default_value_t = sippool::demo::DemoOptions::default().control)]
        control: SocketAddr,
        /// Calls per second, more than 0 and at most 1000.
        #[arg(long, value_name = "CALLS_PER_S", value_parser = parse_rate, default_value_t = sippool::demo::DemoOptions::default().rate)]
        rate: f64,
    },
}

/// How `run` writes its logs.
#[derive(Debug, Clone, Copy, PartialEq, Eq, ValueEnum)]
enum LogFormat {
    /// Human-readable lines.
    Text,
    /// One JSON object per line.
    Json,
}

fn parse_rate(s: &str) -> Result<f64, String> {
    s.parse()
        .ok()
        .filter(|r: &f64| *r > 0.0 && *r <= 1000.0)
        .ok_or_else(|| "a number of calls per second, more than 0 and at most 1000".to_string())
}

/// Changes the log filter of the running subscriber (`log.level` on start and reload).
struct LogLevel(
    tracing_subscriber::reload::Handle<tracing_subscriber::EnvFilter, tracing_subscriber::Registry>,
);

impl LogLevel {
    /// Applies `log.level`'s filter, unless `RUST_LOG` (which wins) is set.
    fn apply(&self, filter: &str) {
        if std::env::var_os("RUST_LOG").is_some() {
            tracing::info!(
                event = "log_level_kept",
                filter,
                "RUST_LOG is set and takes the place of log.level"
            );
            return;
        }
        match tracing_subscriber::EnvFilter::builder().parse(filter) {
            Ok(f) => match self.0.reload(f) {
                // At debug level: seen only when the new filter lets debug through.
                Ok(()) => tracing::debug!(event = "log_filter_applied", filter),
                Err(e) => tracing::error!(event = "log_level_not_changed", filter, error = %e),
            },
            // Validated with the config: not reached.
            Err(e) => tracing::error!(event = "log_level_not_changed", filter, error = %e),
        }
    }
}

fn init_logging(json: bool) -> LogLevel {
    use tracing_subscriber::layer::SubscriberExt;
    use tracing_subscriber::util::SubscriberInitExt;
    use tracing_subscriber::Layer;
    let filter = tracing_subscriber::EnvFilter::try_from_default_env()
        // ractor opens an info span per actor: one per transaction, held in the subscriber's
        // registry for the transaction's life (memory and CPU per transaction, issue 17).
        .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new("info,ractor=warn"));
    let (filter, handle) = tracing_subscriber::reload::Layer::new(filter);
    let fmt = tracing_subscriber::fmt::layer()
        .with_writer(std::io::stderr)
        .with_ansi(std::io::IsTerminal::is_terminal(&std::io::stderr()));
    let fmt = if json {
        fmt.json().boxed()
    } else {
        fmt.boxed()
    };
    tracing_subscriber::registry().with(filter).with(fmt).init();
    LogLevel(handle)
}

fn main() -> ExitCode {
    // Help and version go to stdout with exit 0; usage errors to stderr with exit 2.
    let cli = Cli::parse();
    match cli.command {
        Command::CheckConfig { file: config } => {
            match config::load_settings(&config).and_then(|s| match &s.tls {
                Some(t) => sippool::actors::TlsContext::load(t.clone()).map(|_| s),
                None => Ok(s),
            }) {
                Ok(s) => {
                    println!(
                        "{}: ok (instance {}, {} listener(s), {} pair(s))",
                        config.display(),
                        s.name,
                        s.listeners.len(),
                        s.pairs.len()
                    );
                    ExitCode::SUCCESS
                }
                Err(e) => {
                    eprintln!("{}: config error: {e}", config.display());
                    ExitCode::from(2)
                }
            }
        }
        Command::Demo {
            http,
            control,
            rate,
        } => {
            let opts = sippool::demo::DemoOptions {
                http,
                control,
                rate,
                ..Default::default()
            };
            let _ = init_logging(false);
            match tokio::runtime::Builder::new_current_thread()
                .enable_all()
                .build()
            {
                Ok(rt) => rt.block_on(demo(opts)),
                Err(e) => {
                    eprintln!("sippool: cannot start the runtime: {e}");
                    ExitCode::FAILURE
                }
            }
        }
        Command::Run { config, log_format } => {
            let log = init_logging(log_format == LogFormat::Json);
            let settings = match config::load_settings(&config) {
                Ok(s) => {
                    log.apply(&s.log_filter);
                    s
                }
                Err(e) => {
                    tracing::error!(event = "config_error", file = %config.display(), key = %e.key, problem = %e.problem);
                    eprintln!("{}: config error: {e}", config.display());
                    return ExitCode::from(2);
                }
            };
            let mut builder = if settings.worker_threads <= 1 {
                tokio::runtime::Builder::new_current_thread()
            } else {
                let mut b = tokio::runtime::Builder::new_multi_thread();
                b.worker_threads(settings.worker_threads);
                b
            };
            let rt = match builder.enable_all().build() {
                Ok(rt) => rt,
                Err(e) => {
                    eprintln!("sippool: cannot start the runtime: {e}");
                    return ExitCode::FAILURE;
                }
            };
            rt.block_on(run(settings, config, log))
        }
    }
}

/// `sippool demo`: runs until Ctrl-C or `q`; `k` kills the primary, `r` revives it.
async fn demo(opts: sippool::demo::DemoOptions) -> ExitCode {
    use tokio::io::AsyncBufReadExt;
    let rate = opts.rate;
    let d = match sippool::demo::Demo::start(opts).await {
        Ok(d) => d,
        Err(e) => {
            eprintln!("sippool demo: {e}");
            return ExitCode::FAILURE;
        }
    };
    let dash = d
        .dashboard()
        .map(|a| format!("http://{a}/"))
        .unwrap_or_default();
    let ctl = d.control;
    println!(
        "\nsippool demo: an instance in front of a simulated primary ({}) and backup ({}),\n\
         with calls flowing through it ({rate} per second).\n\n  dashboard:  {dash}\n  controls:   http://{ctl}/\n\n\
         Kill the primary:   type k + Enter, or  curl -X POST http://{ctl}/primary/kill\n\
         Revive it:          type r + Enter, or  curl -X POST http://{ctl}/primary/revive\n\
         Quit:               q + Enter, or Ctrl-C\n",
        d.primary.addr, d.backup.addr
    );
    let mut lines = tokio::io::BufReader::new(tokio::io::stdin()).lines();
    let mut stdin_open = true;
    let mut tick = tokio::time::interval(std::time::Duration::from_secs(5));
    loop {
        tokio::select! {
            _ = tokio::signal::ctrl_c() => break,
            _ = tick.tick() => println!("{}", d.summary()),
            line = lines.next_line(), if stdin_open => match line {
                Ok(Some(l)) => match l.trim() {
                    "k" => { d.primary.set_alive(false); println!("primary killed: {}", d.summary()); }
                    "r" => { d.primary.set_alive(true); println!("primary revived: {}", d.summary()); }
                    "q" => break,
                    "" => {}
                    other => println!("'{other}'? k kills the primary, r revives it, q quits"),
                },
                _ => stdin_open = false,
            },
        }
    }
    println!("{}", d.summary());
    d.stop().await;
    ExitCode::SUCCESS
}

async fn run(settings: config::Settings, path: PathBuf, log: LogLevel) -> ExitCode {
    use tokio::signal::unix::{signal, SignalKind};
    let proxy = match Proxy::start(settings).await {
        Ok(p) => p,
        Err(e) => {
            eprintln!("sippool: {e}");
            return ExitCode::FAILURE;
        }
    };
    let (Ok(mut term), Ok(mut int), Ok(mut hup)) = (
        signal(SignalKind::terminate()),
        signal(SignalKind::interrupt()),
        signal(SignalKind::hangup()),
    ) else {
        eprintln!("sippool: cannot install signal handlers");
        return ExitCode::FAILURE;
    };
    let first = loop {
        tokio::select! {
            _ = term.recv() => break "SIGTERM",
            _ = int.recv() => break "SIGINT",
            _ = hup.recv() => reload(&proxy, &path, &log).await,
            _ = proxy.wait() => {
                tracing::error!(event = "proxy_stopping", reason = "actor tree stopped");
                return ExitCode::FAILURE;
            }
        }
    };
    // Graceful drain: no new dialogs, finish what is in flight, then exit. A second
    // signal exits at once.
    let drain_timeout = proxy.core().live().settings.drain_timeout;
    let drain = proxy
        .drain(drain_timeout)
        .instrument(tracing::info_span!("drain", signal = first));
    let outcome = tokio::select! {
        _ = term.recv() => None,
        _ = int.recv() => None,
        o = drain => Some(o),
    };
    let (reason, in_flight) = match outcome {
        Some(DrainOutcome::Drained) => ("drained", 0),
        Some(DrainOutcome::TimedOut { in_flight }) => ("drain timeout", in_flight),
        // Interrupted: what is still in flight, without waiting.
        None => match proxy.drain(std::time::Duration::ZERO).await {
            DrainOutcome::Drained => ("second signal", 0),
            DrainOutcome::TimedOut { in_flight } => ("second signal", in_flight),
        },
    };
    tracing::info!(event = "proxy_stopping", reason, in_flight);
    proxy.stop().await;
    ExitCode::SUCCESS
}

/// SIGHUP: re-reads the TLS files and the config file, and makes the new configuration the
/// running one (everything but the sockets, the threads, the flow key and `[tls]`; see
/// [`Proxy::reload`]). A file that does not validate changes nothing.
async fn reload(proxy: &Proxy, path: &std::path::Path, log: &LogLevel) {
    proxy.core().reload_tls("SIGHUP");
    match config::load_settings(path) {
        Ok(s) => {
            let done = proxy.reload(s).await;
            if let Some(filter) = &done.log_filter {
                log.apply(filter);
            }
        }
        Err(e) => {
            tracing::error!(event = "config_error", file = %path.display(), key = %e.key, problem = %e.problem, "the running configuration is kept");
        }
    }
}
