//! The `sippool` command: `run --config FILE` and `check-config FILE`.

use std::path::PathBuf;
use std::process::ExitCode;

use sippool::actors::Proxy;
use sippool::config;

const USAGE: &str = "usage:
  sippool run --config FILE [--log-format text|json]
  sippool check-config FILE
  sippool demo [--http ADDR] [--control ADDR] [--rate CALLS_PER_S]
      an instance, a simulated primary/backup pair and call traffic on loopback, with
      the dashboard; kill and revive the primary to watch the switchover

Environment overrides: SIPPOOL__SECTION__KEY (e.g. SIPPOOL__OVERLOAD__INVITE_RATE=100).
Log filter: RUST_LOG (default info).";

enum Command {
    Run { config: PathBuf, json: bool },
    Check { config: PathBuf },
    Demo(sippool::demo::DemoOptions),
}

fn parse_args(args: &[String]) -> Result<Command, String> {
    match args.first().map(String::as_str) {
        Some("run") => {
            let mut config = None;
            let mut json = false;
            let mut it = args.iter().skip(1);
            while let Some(a) = it.next() {
                match a.as_str() {
                    "--config" | "-c" => config = it.next().map(PathBuf::from),
                    "--log-format" => match it.next().map(String::as_str) {
                        Some("json") => json = true,
                        Some("text") => json = false,
                        other => return Err(format!("--log-format: unknown format {other:?}")),
                    },
                    other => return Err(format!("unknown argument '{other}'")),
                }
            }
            Ok(Command::Run {
                config: config.ok_or("run needs --config FILE")?,
                json,
            })
        }
        Some("check-config") => match args.get(1) {
            Some(f) if args.len() == 2 => Ok(Command::Check {
                config: PathBuf::from(f),
            }),
            _ => Err("check-config needs exactly one FILE".into()),
        },
        Some("demo") => {
            let mut o = sippool::demo::DemoOptions::default();
            let mut it = args.iter().skip(1);
            while let Some(a) = it.next() {
                let value = it.next().ok_or(format!("{a} needs a value"))?;
                match a.as_str() {
                    "--http" => o.http = value.parse().map_err(|e| format!("--http: {e}"))?,
                    "--control" => {
                        o.control = value.parse().map_err(|e| format!("--control: {e}"))?
                    }
                    "--rate" => {
                        o.rate = value
                            .parse()
                            .ok()
                            .filter(|r: &f64| *r > 0.0 && *r <= 1000.0)
                            .ok_or("--rate: a number of calls per second, 0 to 1000")?
                    }
                    other => return Err(format!("unknown argument '{other}'")),
                }
            }
            Ok(Command::Demo(o))
        }
        Some("-h" | "--help" | "help") | None => Err(String::new()),
        Some(other) => Err(format!("unknown command '{other}'")),
    }
}

fn init_logging(json: bool) {
    let filter = tracing_subscriber::EnvFilter::try_from_default_env()
        .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new("info"));
    let builder = tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_writer(std::io::stderr)
        .with_ansi(std::io::IsTerminal::is_terminal(&std::io::stderr()));
    if json {
        builder.json().init();
    } else {
        builder.init();
    }
}

fn main() -> ExitCode {
    let args: Vec<String> = std::env::args().skip(1).collect();
    let cmd = match parse_args(&args) {
        Ok(c) => c,
        Err(e) => {
            if !e.is_empty() {
                eprintln!("sippool: {e}");
            }
            eprintln!("{USAGE}");
            return ExitCode::from(2);
        }
    };
    match cmd {
        Command::Check { config } => {
            match config::load_settings(&config).and_then(|s| match &s.tls {
                Some(t) => sippool::actors::tls::TlsContext::load(t.clone()).map(|_| s),
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
        Command::Demo(opts) => {
            init_logging(false);
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
        Command::Run { config, json } => {
            init_logging(json);
            let settings = match config::load_settings(&config) {
                Ok(s) => s,
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
            rt.block_on(run(settings, config))
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

async fn run(settings: config::Settings, path: PathBuf) -> ExitCode {
    use tokio::signal::unix::{signal, SignalKind};
    let drain_timeout = settings.drain_timeout;
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
            _ = hup.recv() => reload(&proxy, &path),
            _ = proxy.wait() => {
                tracing::error!(event = "proxy_stopping", reason = "actor tree stopped");
                return ExitCode::FAILURE;
            }
        }
    };
    // Graceful drain: no new dialogs, finish what is in flight, then exit. A second
    // signal exits at once.
    let core = proxy.core().clone();
    core.start_drain();
    tracing::info!(
        event = "drain_started",
        signal = first,
        in_flight = core.server_txns.len(),
        timeout_s = drain_timeout.as_secs()
    );
    let deadline = tokio::time::Instant::now() + drain_timeout;
    let outcome = tokio::select! {
        _ = term.recv() => "second signal",
        _ = int.recv() => "second signal",
        r = async {
            while !core.server_txns.is_empty() {
                if tokio::time::Instant::now() >= deadline {
                    return "drain timeout";
                }
                tokio::time::sleep(std::time::Duration::from_millis(50)).await;
            }
            "drained"
        } => r,
    };
    tracing::info!(
        event = "proxy_stopping",
        reason = outcome,
        in_flight = core.server_txns.len()
    );
    proxy.stop().await;
    ExitCode::SUCCESS
}

/// SIGHUP: re-reads the config file and the TLS files; the INVITE rate and the
/// certificates take effect at once (certificates for new connections), other keys at the
/// next restart.
fn reload(proxy: &Proxy, path: &std::path::Path) {
    proxy.core().reload_tls("SIGHUP");
    match config::load_settings(path) {
        Ok(s) => {
            proxy.core().set_invite_rate(s.invite_rate);
            tracing::info!(event = "config_reloaded", file = %path.display(), invite_rate = s.invite_rate);
        }
        Err(e) => {
            tracing::error!(event = "config_error", file = %path.display(), key = %e.key, problem = %e.problem);
        }
    }
}
