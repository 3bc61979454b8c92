//! The HTTP endpoint (axum): `/metrics` (OpenMetrics text), `/status` (JSON),
//! `/status/history` (JSON: the last minutes, see [`crate::metrics::history`]), `/healthz`,
//! `/readyz` and `/` (a dashboard that refreshes itself from `/status`).
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
    fn admin_token(&self) -> Option<&str>;
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

const DASHBOARD: &str = r#"<!doctype html>
<html lang="en"><head><meta charset="utf-8"><title>sippool</title>
<style>
body{font-family:system-ui,sans-serif;margin:1.5em;background:#f6f7f9;color:#1d2330}
h1{font-size:1.4em;margin:0 0 .2em} .sub{color:#667;margin-bottom:1em}
.pair{background:#fff;border-radius:8px;padding:1em;margin-bottom:1em;box-shadow:0 1px 3px #0002}
.pair h2{font-size:1.1em;margin:0 0 .5em} table{border-collapse:collapse;width:100%}
td,th{text-align:left;padding:.35em .6em;border-bottom:1px solid #eee}
.up{color:#0a7d32;font-weight:600} .down{color:#c0262d;font-weight:600}
.active{background:#e4f5e9} .badge{display:inline-block;padding:.1em .5em;border-radius:4px;background:#0a7d32;color:#fff;font-size:.85em}
.oos{background:#c0262d} .kpi{display:inline-block;margin-right:2em} .kpi b{font-size:1.4em;display:block}
</style></head><body>
<h1>sippool <span id="instance"></span></h1><div class="sub" id="sub">loading...</div>
<div id="kpis"></div><div id="pairs"></div>
<script>
let last=null;
function esc(s){return String(s??'').replace(/[&<>"]/g,c=>({'&':'&amp;','<':'&lt;','>':'&gt;','"':'&quot;'}[c]))}
function ago(t,now){if(!t)return '-';const s=Math.max(0,now-t);return s<90?s.toFixed(0)+' s ago':(s/60).toFixed(1)+' min ago'}
async function tick(){
 try{
  const r=await fetch('/status',{cache:'no-store'});const st=await r.json();
  document.getElementById('instance').textContent=st.instance;
  document.getElementById('sub').textContent=(st.draining?'DRAINING - ':'')+'v'+st.version+', '+st.transactions+' transactions in flight, '+st.connections+' connections';
  let cps='-';
  if(last){const dt=st.now-last.now; if(dt>0) cps=((st.calls.invites_received-last.calls.invites_received)/dt).toFixed(1);}
  last=st;
  document.getElementById('kpis').innerHTML=
   '<div class="kpi">calls/s<b id="cps">'+cps+'</b></div>'+
   '<div class="kpi">503 (rate)<b>'+st.overload.rejected_invite_rate+'</b></div>'+
   '<div class="kpi">503 (caps)<b>'+st.overload.rejected_transactions+'</b></div>'+
   '<div class="kpi">INVITE limit<b>'+(st.overload.invite_rate||'off')+'</b></div>';
  document.getElementById('pairs').innerHTML=st.pairs.map(p=>{
   const badge=p.active?'<span class="badge">active: '+esc(p.active)+'</span>':'<span class="badge oos">OUT OF SERVICE</span>';
   const rows=p.members.map(m=>'<tr class="'+(m.active?'active':'')+'"><td>'+esc(m.role)+(m.active?' (active)':'')+'</td><td>'+esc(m.server)+'</td><td class="'+m.state+'">'+m.state+'</td><td>since '+ago(m.since,st.now)+'</td><td>'+esc(m.reason)+'</td><td>'+(m.last_rtt_ms==null?'-':m.last_rtt_ms.toFixed(1)+' ms')+'</td></tr>').join('');
   const sw=p.last_switch?'<div>last switch '+ago(p.last_switch.at,st.now)+': '+esc(p.last_switch.from||'none')+' &rarr; '+esc(p.last_switch.to||'none')+' ('+esc(p.last_switch.why)+')</div>':'';
   return '<div class="pair" data-pair="'+esc(p.name)+'"><h2>'+esc(p.name)+' '+badge+'</h2><table><tr><th>member</th><th>server</th><th>state</th><th></th><th>reason</th><th>probe RTT</th></tr>'+rows+'</table>'+sw+'</div>';
  }).join('');
 }catch(e){document.getElementById('sub').textContent='status unavailable: '+e}
}
tick();setInterval(tick,1000);
</script></body></html>
"#;

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn prometheus_text_names_counter_totals() {
        let om = "# HELP x_requests Requests.\n# TYPE x_requests counter\nx_requests_total 3\n# HELP x_rtt RTT.\n# TYPE x_rtt histogram\n# UNIT x_rtt seconds\nx_rtt_count 1\n# EOF\n";
        assert_eq!(
            to_prometheus_text(om),
            "# HELP x_requests_total Requests.\n# TYPE x_requests_total counter\nx_requests_total 3\n# HELP x_rtt RTT.\n# TYPE x_rtt histogram\nx_rtt_count 1\n"
        );
    }
}
