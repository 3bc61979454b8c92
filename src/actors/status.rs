//! The running proxy as the HTTP endpoint sees it: [`StatusView`] for [`Core`], the
//! `/status` document and the gauges that mirror state kept elsewhere.

use std::time::{SystemTime, UNIX_EPOCH};

use axum::http::StatusCode;

use serde_json::{json, Value};

use crate::health::pair::name;
use crate::health::Member;
use crate::metrics::http::{StatusView, SwitchFuture};
use crate::metrics::{Metrics, ServerLabels};

use super::core::Core;

impl StatusView for Core {
    fn metrics(&self) -> &Metrics {
        &self.metrics
    }

    fn refresh_gauges(&self) {
        refresh_gauges(self);
    }

    fn status(&self) -> Value {
        status_json(self)
    }

    fn history(&self) -> Value {
        super::sampler::history_json(self)
    }

    fn admin_token(&self) -> Option<String> {
        self.live().settings.admin_token.clone()
    }

    fn switch(&self, pair: String, to: Option<String>, why: String) -> SwitchFuture<'_> {
        Box::pin(async move {
            let to = match to.as_deref() {
                None => None,
                Some("primary") => Some(Member::Primary),
                Some("backup") => Some(Member::Backup),
                Some(other) => {
                    return Err((
                        StatusCode::BAD_REQUEST,
                        format!("'to' is '{other}': primary or backup"),
                    ))
                }
            };
            let upstreams = self.live().upstreams.clone();
            if !upstreams.pairs().iter().any(|p| p.name == pair) {
                return Err((StatusCode::NOT_FOUND, format!("no pair named '{pair}'")));
            }
            match upstreams.switch(&pair, to, why).await {
                Ok(Some(m)) => Ok(format!("{pair}: {} is active now", name(m))),
                Ok(None) => Ok(format!("{pair}: already active, nothing to do")),
                Err(e) => Err((StatusCode::CONFLICT, format!("{pair}: not switched: {e}"))),
            }
        })
    }

    fn not_ready(&self) -> Option<&'static str> {
        let live = self.live();
        if self.admission.is_draining() {
            Some("draining")
        } else if live.upstreams.states.active(live.router.serving).is_none() {
            // OPTIONS to this instance get 503 too: clients move to another instance.
            Some("serving pair out of service")
        } else {
            None
        }
    }
}

fn refresh_gauges(core: &Core) {
    core.metrics.lingering.set(core.txns.lingering.len() as i64);
    if let Some(rss) = crate::memory::resident_bytes() {
        core.metrics
            .resident_memory
            .set(i64::try_from(rss).unwrap_or(i64::MAX));
    }
    let live = core.live();
    for (i, p) in live.settings.pairs.iter().enumerate() {
        let active = live.upstreams.states.active(i);
        for (m, server) in [(Member::Primary, &p.primary), (Member::Backup, &p.backup)] {
            let labels = ServerLabels {
                pair: p.name.clone(),
                member: name(m),
                server: server.to_string(),
            };
            core.metrics
                .upstream_up
                .get_or_create(&labels)
                .set(i64::from(live.upstreams.states.is_up(i, m)));
            core.metrics
                .upstream_active
                .get_or_create(&labels)
                .set(i64::from(active == Some(m)));
        }
    }
}

fn unix(t: SystemTime) -> f64 {
    t.duration_since(UNIX_EPOCH)
        .map_or(0.0, |d| d.as_secs_f64())
}

fn status_json(core: &Core) -> Value {
    let live = core.live();
    let pairs: Vec<Value> = live
        .settings
        .pairs
        .iter()
        .enumerate()
        .map(|(i, p)| {
            let active = live.upstreams.states.active(i);
            let members: Vec<Value> = [(Member::Primary, &p.primary), (Member::Backup, &p.backup)]
                .into_iter()
                .map(|(m, server)| {
                    let st = live.upstreams.status.server(i, m);
                    json!({
                        "role": name(m),
                        "server": server.to_string(),
                        "state": if live.upstreams.states.is_up(i, m) { "up" } else { "down" },
                        "active": active == Some(m),
                        "since": st.as_ref().map(|s| unix(s.since)),
                        "reason": st.as_ref().map(|s| s.reason.clone()),
                        "last_probe": st.as_ref().and_then(|s| s.last_probe).map(unix),
                        "last_rtt_ms": st.as_ref().and_then(|s| s.last_rtt).map(|d| d.as_secs_f64() * 1000.0),
                        "srtt_ms": live.upstreams.srtt(i, m).map(|d| d.as_secs_f64() * 1000.0),
                    })
                })
                .collect();
            let switch = live.upstreams.status.switch(i).map(|s| {
                json!({
                    "at": unix(s.at),
                    "from": s.from.map(name),
                    "to": s.to.map(name),
                    "why": s.why,
                })
            });
            json!({
                "name": p.name,
                "domain": p.domain,
                "state": if active.is_some() { "in_service" } else { "out_of_service" },
                "active": active.map(name),
                "failback": p.failback,
                "members": members,
                "last_switch": switch,
            })
        })
        .collect();
    let listeners: Vec<Value> = live
        .settings
        .listeners
        .iter()
        .map(|l| json!({"transport": l.transport.uri_param(), "address": l.address.to_string()}))
        .collect();
    let m = &core.metrics;
    let flows: i64 = ["tcp", "tls"]
        .into_iter()
        .map(|kind| {
            m.flows
                .get_or_create(&crate::metrics::KindLabels { kind })
                .get()
        })
        .sum();
    json!({
        "instance": live.settings.name,
        "version": env!("CARGO_PKG_VERSION"),
        "started": unix(core.started),
        "now": unix(SystemTime::now()),
        "ready": !core.admission.is_draining(),
        "draining": core.admission.is_draining(),
        "listeners": listeners,
        "connections": core.transports.open_connections(),
        "flows": flows,
        "transactions": core.txns.server.len(),
        "transactions_lingering": core.txns.lingering.len(),
        "max_transactions": live.settings.limits.max_transactions,
        "memory": {
            "resident_bytes": crate::memory::resident_bytes(),
        },
        "overload": {
            "invite_rate": core.admission.invite_rate(),
            "rejected_invite_rate": crate::metrics::Metrics::reason_value(&m.overload_rejections, "invite_rate"),
            "rejected_transactions": crate::metrics::Metrics::reason_value(&m.overload_rejections, "transactions"),
            "rejected_draining": crate::metrics::Metrics::reason_value(&m.overload_rejections, "draining"),
        },
        "calls": {
            "invites_received": m.requests.get_or_create(&crate::metrics::MethodLabels { method: "INVITE" }).get(),
        },
        "pairs": pairs,
    })
}
