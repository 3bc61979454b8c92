//! `sippool demo`: in one process on loopback, an instance in front of a simulated
//! primary/backup pair, with light call traffic through it, the live dashboard, and a way
//! to kill and revive the primary (HTTP endpoint, or a key press) to watch the switchover.

pub mod caller;
pub mod server;

use std::net::{IpAddr, Ipv4Addr, SocketAddr};
use std::sync::atomic::Ordering;
use std::sync::Arc;
use std::time::Duration;

use axum::extract::State;
use axum::response::Html;
use axum::routing::{get, post};
use axum::{Json, Router};

use crate::actors::Proxy;
use crate::config::Config;
use crate::health::Member;
use crate::sip::transport::Transport;

use self::caller::CallStats;
use self::server::SimServer;

/// What the demo runs with.
#[derive(Debug, Clone)]
pub struct DemoOptions {
    /// The instance's dashboard and metrics (taken: any free port).
    pub http: SocketAddr,
    /// The demo's own control endpoint (kill / revive the primary).
    pub control: SocketAddr,
    /// Calls per second.
    pub rate: f64,
    /// How long each call lasts.
    pub hold: Duration,
}

impl Default for DemoOptions {
    fn default() -> Self {
        DemoOptions {
            http: SocketAddr::new(IpAddr::V4(Ipv4Addr::LOCALHOST), 8080),
            control: SocketAddr::new(IpAddr::V4(Ipv4Addr::LOCALHOST), 8081),
            rate: 5.0,
            hold: Duration::from_secs(3),
        }
    }
}

/// A running demo.
pub struct Demo {
    /// The sippool instance.
    pub proxy: Proxy,
    /// The simulated primary.
    pub primary: SimServer,
    /// The simulated backup.
    pub backup: SimServer,
    /// The call traffic's counters.
    pub stats: Arc<CallStats>,
    /// Where the control endpoint listens.
    pub control: SocketAddr,
    tasks: Vec<tokio::task::JoinHandle<()>>,
}

/// Binds `addr`, or any free port on its IP when that one is taken.
async fn bind_or_any(addr: SocketAddr) -> std::io::Result<tokio::net::TcpListener> {
    match tokio::net::TcpListener::bind(addr).await {
        Ok(l) => Ok(l),
        Err(_) => tokio::net::TcpListener::bind((addr.ip(), 0)).await,
    }
}

impl Demo {
    /// Starts the servers, the instance, the traffic and the control endpoint.
    pub async fn start(opts: DemoOptions) -> Result<Demo, String> {
        // Everything on loopback; the caller on an address of its own, so that the proxy
        // does not take it for one of the servers.
        let ip = IpAddr::V4(Ipv4Addr::LOCALHOST);
        let primary = SimServer::start(ip).await.map_err(|e| e.to_string())?;
        let backup = SimServer::start(ip).await.map_err(|e| e.to_string())?;
        // The dashboard's port: the one asked for, or a free one.
        let http = bind_or_any(opts.http)
            .await
            .and_then(|l| l.local_addr())
            .map_err(|e| e.to_string())?;
        let toml = format!(
            "[instance]\nname = \"demo\"\nadvertised_host = \"{ip}\"\n\
             [[listen]]\ntransport = \"udp\"\naddress = \"{ip}:0\"\n\
             [[pair]]\nname = \"demo\"\nprimary = \"{}\"\nbackup = \"{}\"\nfailback = true\n\
             [health]\noos_check = 1\noos_force = 2\nprobe_timeout_ms = 500\nfailover_timeout_ms = 500\n\
             [http]\naddress = \"{http}\"\n",
            primary.addr, backup.addr
        );
        let settings = Config::from_toml_str(&toml)
            .and_then(|c| c.validate())
            .map_err(|e| e.to_string())?;
        let proxy = Proxy::start(settings).await.map_err(|e| e.to_string())?;
        let sip = proxy.local_addr(Transport::Udp).ok_or("no UDP listener")?;
        let stats = Arc::new(CallStats::default());
        let caller_ip = IpAddr::V4(Ipv4Addr::new(127, 0, 0, 2));
        let traffic = tokio::spawn(caller::run(
            caller_ip,
            sip,
            opts.rate,
            opts.hold,
            stats.clone(),
        ));
        let control_listener = bind_or_any(opts.control).await.map_err(|e| e.to_string())?;
        let control = control_listener.local_addr().map_err(|e| e.to_string())?;
        let state = ControlState {
            primary: primary.clone(),
            stats: stats.clone(),
            dashboard: http,
        };
        let app = Router::new()
            .route("/", get(page))
            .route("/state", get(show_state))
            .route("/primary/kill", post(kill))
            .route("/primary/revive", post(revive))
            .with_state(state);
        let server = tokio::spawn(async move {
            let _ = axum::serve(control_listener, app).await;
        });
        Ok(Demo {
            proxy,
            primary,
            backup,
            stats,
            control,
            tasks: vec![traffic, server],
        })
    }

    /// The dashboard's address.
    pub fn dashboard(&self) -> Option<SocketAddr> {
        self.proxy.http_addr()
    }

    /// One line on how things stand.
    pub fn summary(&self) -> String {
        let s = &self.stats;
        let core = self.proxy.core();
        let active = match core.live().upstreams.states.active(0) {
            Some(Member::Primary) => "primary",
            Some(Member::Backup) => "backup",
            None => "none",
        };
        format!(
            "calls: {} completed, {} failed, {} in progress | primary {} | active: {active}",
            s.completed.load(Ordering::Relaxed),
            s.failed.load(Ordering::Relaxed),
            s.in_progress(),
            if self.primary.is_alive() {
                "running"
            } else {
                "KILLED"
            },
        )
    }

    /// Stops the traffic, the control endpoint and the instance.
    pub async fn stop(self) {
        for t in &self.tasks {
            t.abort();
        }
        self.proxy.stop().await;
    }
}

#[derive(Clone)]
struct ControlState {
    primary: SimServer,
    stats: Arc<CallStats>,
    dashboard: SocketAddr,
}

async fn kill(State(s): State<ControlState>) -> &'static str {
    s.primary.set_alive(false);
    "primary killed\n"
}

async fn revive(State(s): State<ControlState>) -> &'static str {
    s.primary.set_alive(true);
    "primary revived\n"
}

async fn show_state(State(s): State<ControlState>) -> Json<serde_json::Value> {
    Json(serde_json::json!({
        "primary_alive": s.primary.is_alive(),
        "calls_started": s.stats.started.load(Ordering::Relaxed),
        "calls_completed": s.stats.completed.load(Ordering::Relaxed),
        "calls_failed": s.stats.failed.load(Ordering::Relaxed),
        "dashboard": format!("http://{}/", s.dashboard),
    }))
}

async fn page(State(s): State<ControlState>) -> Html<String> {
    Html(format!(
        "<!doctype html><title>sippool demo</title><body style=\"font-family:sans-serif\">\
         <h1>sippool demo</h1><p>Dashboard: <a href=\"http://{d}/\">http://{d}/</a></p>\
         <form method=post action=/primary/kill><button>Kill the primary</button></form>\
         <form method=post action=/primary/revive><button>Revive the primary</button></form>\
         <p><a href=/state>call counters</a></p></body>",
        d = s.dashboard
    ))
}
