//! The HTTP endpoint (axum): `/metrics` (OpenMetrics text), `/status` (JSON),
//! `/status/history` (JSON: the last minutes, see [`crate::metrics::history`]), `/healthz`,
//! `/readyz` and `/` (a dashboard that refreshes itself from `/status` and
//! `/status/history`).
//!
//! It reads the running proxy through [`StatusView`], a narrow view the proxy implements,
//! and never changes it; it imports nothing from the actors or the health layer.

use std::future::Future;
use std::net::SocketAddr;
use std::pin::Pin;
use std::sync::Arc;

use axum::extract::{ConnectInfo, Path, State};
use axum::http::{header, StatusCode};
use axum::response::{Html, IntoResponse, Response};
use axum::routing::{get, post};
use axum::Router;
use serde_json::Value;
use tokio::net::TcpListener;

use crate::metrics::Metrics;

/// The answer to a manual switchover: what was done, or an HTTP status and why not.
pub type SwitchFuture<'a> =
    Pin<Box<dyn Future<Output = Result<String, (StatusCode, String)>> + Send + 'a>>;

/// What the HTTP endpoint reads of the running proxy.
pub trait StatusView: Send + Sync + 'static {
    /// The metrics, after the gauges that mirror state kept elsewhere were refreshed.
    fn metrics(&self) -> &Metrics;
    /// Sets the gauges that mirror state kept elsewhere (before `/metrics` is read).
    fn refresh_gauges(&self);
    /// The `/status` document.
    fn status(&self) -> Value;
    /// The `/status/history` document ([`crate::metrics::history::History::to_json`]).
    fn history(&self) -> Value;
    /// The bearer token that guards the endpoints that change state; `None`: they are off.
    fn admin_token(&self) -> Option<String>;
    /// Makes `to` (`"primary"`, `"backup"`, or `None`: the member not active now) the
    /// active member of pair `pair`, for `why`. The answer: what was done, or an HTTP
    /// status and why not.
    fn switch(&self, pair: String, to: Option<String>, why: String) -> SwitchFuture<'_>;
    /// Why the proxy should get no new traffic (`/readyz` says 503 with this), or `None`
    /// when it is ready.
    fn not_ready(&self) -> Option<&'static str>;
}

/// Serves until the task is aborted.
pub async fn serve<V: StatusView>(view: Arc<V>, listener: TcpListener) {
    let app = Router::new()
        .route("/metrics", get(metrics::<V>))
        .route("/status", get(status::<V>))
        .route("/status/history", get(history::<V>))
        .route("/healthz", get(healthz))
        .route("/readyz", get(readyz::<V>))
        .route("/", get(dashboard))
        .route("/pairs/{pair}/switch", post(switch::<V>))
        .with_state(view);
    let app = app.into_make_service_with_connect_info::<SocketAddr>();
    if let Err(e) = axum::serve(listener, app).await {
        tracing::error!(event = "http_server_failed", error = %e);
    }
}

/// OpenMetrics for clients that ask for it (Prometheus does), the Prometheus text format
/// (0.0.4) otherwise (curl, promtool).
async fn metrics<V: StatusView>(
    State(view): State<Arc<V>>,
    headers: axum::http::HeaderMap,
) -> Response {
    view.refresh_gauges();
    let text = view.metrics().encode();
    let wants_openmetrics = headers
        .get(header::ACCEPT)
        .and_then(|v| v.to_str().ok())
        .is_some_and(|a| a.contains("application/openmetrics-text"));
    if wants_openmetrics {
        (
            [(
                header::CONTENT_TYPE,
                "application/openmetrics-text; version=1.0.0; charset=utf-8",
            )],
            text,
        )
            .into_response()
    } else {
        (
            [(
                header::CONTENT_TYPE,
                "text/plain; version=0.0.4; charset=utf-8",
            )],
            to_prometheus_text(&text),
        )
            .into_response()
    }
}

/// Rewrites OpenMetrics text as Prometheus text: counters' HELP/TYPE name the `_total`
/// series, and the `# UNIT` and `# EOF` lines go.
pub fn to_prometheus_text(openmetrics: &str) -> String {
    let counters: std::collections::HashSet<&str> = openmetrics
        .lines()
        .filter_map(|l| l.strip_prefix("# TYPE "))
        .filter_map(|l| l.strip_suffix(" counter"))
        .collect();
    let mut out = String::with_capacity(openmetrics.len() + 256);
    for line in openmetrics.lines() {
        if line.starts_with("# UNIT ") || line == "# EOF" {
            continue;
        }
        let meta = line
            .strip_prefix("# HELP ")
            .map(|r| ("# HELP ", r))
            .or_else(|| line.strip_prefix("# TYPE ").map(|r| ("# TYPE ", r)));
        if let Some((kind, rest)) = meta {
            let (name, tail) = rest.split_once(' ').unwrap_or((rest, ""));
            if counters.contains(name) {
                out.push_str(kind);
                out.push_str(name);
                out.push_str("_total ");
                out.push_str(tail);
                out.push('\n');
                continue;
            }
        }
        out.push_str(line);
        out.push('\n');
    }
    out
}

async fn status<V: StatusView>(State(view): State<Arc<V>>) -> impl IntoResponse {
    axum::Json(view.status())
}

async fn history<V: StatusView>(State(view): State<Arc<V>>) -> impl IntoResponse {
    axum::Json(view.history())
}

/// What `POST /pairs/{pair}/switch` may carry (JSON, all optional).
#[derive(Debug, Default, serde::Deserialize)]
#[serde(deny_unknown_fields)]
struct SwitchRequest {
    /// `primary` or `backup`; absent: the member that is not active now.
    to: Option<String>,
    /// Why, for the log and `/status`.
    why: Option<String>,
}

/// Manual switchover (`POST /pairs/{pair}/switch`, `Authorization: Bearer TOKEN`): off
/// (404) unless `http.admin_token` is set; a missing or wrong token gets 401.
async fn switch<V: StatusView>(
    State(view): State<Arc<V>>,
    Path(pair): Path<String>,
    ConnectInfo(peer): ConnectInfo<SocketAddr>,
    headers: axum::http::HeaderMap,
    body: String,
) -> Response {
    let Some(token) = view.admin_token() else {
        return (
            StatusCode::NOT_FOUND,
            "switchover is off: no http.admin_token configured\n",
        )
            .into_response();
    };
    let given = headers
        .get(header::AUTHORIZATION)
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.strip_prefix("Bearer "))
        .unwrap_or_default();
    if !bool::from(subtle::ConstantTimeEq::ct_eq(
        given.as_bytes(),
        token.as_bytes(),
    )) {
        tracing::warn!(event = "manual_switch_unauthorized", pair = %pair, %peer);
        return (
            StatusCode::UNAUTHORIZED,
            [(header::WWW_AUTHENTICATE, "Bearer")],
            "a valid bearer token is required\n",
        )
            .into_response();
    }
    let req: SwitchRequest = if body.trim().is_empty() {
        SwitchRequest::default()
    } else {
        match serde_json::from_str(&body) {
            Ok(r) => r,
            Err(e) => {
                return (StatusCode::BAD_REQUEST, format!("bad JSON body: {e}\n")).into_response()
            }
        }
    };
    let why = format!(
        "{} (by {peer})",
        req.why.as_deref().unwrap_or("no reason given")
    );
    tracing::warn!(event = "manual_switch_requested", pair = %pair, to = ?req.to, %why);
    match view.switch(pair, req.to, why).await {
        Ok(done) => (StatusCode::OK, format!("{done}\n")).into_response(),
        Err((code, e)) => (code, format!("{e}\n")).into_response(),
    }
}

async fn healthz() -> &'static str {
    "ok\n"
}

async fn readyz<V: StatusView>(State(view): State<Arc<V>>) -> Response {
    match view.not_ready() {
        Some(why) => (StatusCode::SERVICE_UNAVAILABLE, format!("{why}\n")).into_response(),
        None => (StatusCode::OK, "ready\n").into_response(),
    }
}

async fn dashboard() -> Html<&'static str> {
    Html(DASHBOARD)
}

/// The page: self-contained (inline style and script, no external asset), it polls
/// `/status` every second and `/status/history` every few seconds.
const DASHBOARD: &str = include_str!("dashboard.html");

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_dashboard_is_one_self_contained_page() {
        for external in ["http:", "https:", "//", "src=", "<link", "@import", "url("] {
            let at = DASHBOARD.find(external);
            // `//` only as a JavaScript comment at the start of a line.
            let comment = external == "//"
                && DASHBOARD
                    .lines()
                    .filter(|l| l.contains("//"))
                    .all(|l| l.trim_start().starts_with("//"));
            assert!(at.is_none() || comment, "{external} at {at:?}");
        }
        assert!(DASHBOARD.contains("fetch('/status/history'"));
        assert!(DASHBOARD.contains("class=\"switch\""));
    }

    #[test]
    fn prometheus_text_names_counter_totals() {
        let om = "# HELP x_requests Requests.\n# TYPE x_requests counter\nx_requests_total 3\n# HELP x_rtt RTT.\n# TYPE x_rtt histogram\n# UNIT x_rtt seconds\nx_rtt_count 1\n# EOF\n";
        assert_eq!(
            to_prometheus_text(om),
            "# HELP x_requests_total Requests.\n# TYPE x_requests_total counter\nx_requests_total 3\n# HELP x_rtt RTT.\n# TYPE x_rtt histogram\nx_rtt_count 1\n"
        );
    }
}
