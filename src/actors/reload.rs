//! A reload (SIGHUP, `systemctl reload`): a new configuration takes the running one's
//! place without a restart.
//!
//! What it does, in order:
//! - compares the two files' views key by key ([`crate::config::changes`]); keys that only a
//!   restart can change (listen sockets, the HTTP socket, threads, the flow key, `[tls]`)
//!   keep their running values and are named in the log (`config_not_live`);
//! - when pairs, health timings, names or the pool changed, stops the health actors, builds
//!   new upstreams that carry over the health of every server still configured the same
//!   ([`Upstreams::carry_health_from`]), and starts the health actors on them;
//! - swaps the [`Live`] snapshot: new transactions use the new configuration, those in
//!   flight finish on the one they started with;
//! - applies the INVITE rate, the TLS handshake cap, and logs `config_reloaded` with every
//!   change.
//!
//! The log level is the caller's (the logging subscriber belongs to the program, not the
//! proxy): it reads [`Reload::log_filter`].

use std::sync::Arc;

use ractor::{Actor, ActorRef};

use crate::config::{Change, Settings};
use crate::health::upstreams::Upstreams;
use crate::metrics::ServerLabels;

use super::core::Core;
use super::live::Live;

/// What a reload did.
#[derive(Debug, Clone, Default)]
pub struct Reload {
    /// Every key whose value changed (restart-only ones included, marked).
    pub changes: Vec<Change>,
    /// The health actors were restarted on new upstreams.
    pub health_restarted: bool,
    /// The log filter changed to this (the caller applies it).
    pub log_filter: Option<String>,
}

impl Reload {
    /// The keys that changed live.
    pub fn applied(&self) -> impl Iterator<Item = &Change> {
        self.changes.iter().filter(|c| !c.needs_restart)
    }

    /// The keys that need a restart (their running values were kept).
    pub fn not_live(&self) -> impl Iterator<Item = &Change> {
        self.changes.iter().filter(|c| c.needs_restart)
    }
}

/// Sections whose change restarts the health actors: the pairs themselves, probe timings
/// and failover bounds, and what a probe says of this instance (its Via and From).
const HEALTH_KEYS: &[&str] = &["pair", "health", "instance", "pool"];

/// Sections that rebuild the resolver.
const DNS_KEYS: &[&str] = &["dns"];

fn any_under(changes: &[Change], sections: &[&str]) -> bool {
    changes
        .iter()
        .filter(|c| !c.needs_restart)
        .any(|c| sections.iter().any(|s| c.is_under(s)))
}

/// The health actors' supervisor, which a reload replaces.
pub(super) struct HealthTree {
    root: ractor::ActorCell,
    current: tokio::sync::Mutex<Option<ActorRef<()>>>,
}

impl HealthTree {
    /// Starts the health actors on the running configuration, linked to `root`.
    pub(super) async fn start(
        core: &Arc<Core>,
        root: ractor::ActorCell,
    ) -> Result<HealthTree, ractor::SpawnErr> {
        let tree = HealthTree {
            root,
            current: tokio::sync::Mutex::new(None),
        };
        let sup = tree.spawn(core).await?;
        *tree.current.lock().await = Some(sup);
        Ok(tree)
    }

    async fn spawn(&self, core: &Arc<Core>) -> Result<ActorRef<()>, ractor::SpawnErr> {
        let (sup, _) = Actor::spawn_linked(
            None,
            crate::health::actors::HealthSupervisor,
            super::probe_net::health_env(core),
            self.root.clone(),
        )
        .await?;
        Ok(sup)
    }
}

/// Makes `new` the running configuration of `core` (see the module documentation).
pub(super) async fn reload(core: &Arc<Core>, health: &HealthTree, mut new: Settings) -> Reload {
    // One reload at a time: the health tree's lock orders them.
    let mut running = health.current.lock().await;
    let old = core.snapshot();
    let changes = crate::config::changes(&old.settings.source, &new.source);
    if changes.is_empty() {
        tracing::info!(event = "config_reloaded", changes = 0, "nothing changed");
        return Reload::default();
    }
    keep_running_values(&old.settings, &mut new);
    let health_changed = any_under(&changes, HEALTH_KEYS);
    let upstreams = if health_changed {
        // Stopped first, so that nothing they learn after the carry-over is lost.
        if let Some(sup) = running.take() {
            let wait = Some(std::time::Duration::from_secs(2));
            sup.stop_children_and_wait(None, wait).await;
            let _ = sup.stop_and_wait(None, wait).await;
        }
        let fresh = Upstreams::new(&new.pairs, new.failover_bounds);
        let carried = fresh.carry_health_from(&old.upstreams);
        tracing::debug!(event = "health_carried_over", pairs = ?carried);
        Arc::new(fresh)
    } else {
        old.upstreams.clone()
    };
    let locator = if any_under(&changes, DNS_KEYS) {
        match crate::dns::Locator::new(&new.dns_servers, new.dns_timeout) {
            Ok(l) => Arc::new(l),
            Err(e) => {
                tracing::error!(event = "config_error", key = "dns", problem = %e.0, "the resolver keeps its old servers");
                old.locator.clone()
            }
        }
    } else {
        old.locator.clone()
    };
    let log_filter = (new.log_filter != old.settings.log_filter).then(|| new.log_filter.clone());
    core.admission.set_invite_rate(new.invite_rate);
    let live = Live::new(new, old.identity.flows().clone(), upstreams, locator);
    forget_gauges_of_removed_servers(core, &old, &live);
    core.replace_live(live);
    if health_changed {
        match health.spawn(core).await {
            Ok(sup) => *running = Some(sup),
            // Without health actors nothing fails over: stop, to be restarted.
            Err(e) => {
                tracing::error!(event = "health_cannot_start", error = %e);
                health
                    .root
                    .stop(Some(format!("health actors cannot start: {e}")));
            }
        }
    }
    let report = Reload {
        changes,
        health_restarted: health_changed,
        log_filter,
    };
    log(&report);
    report
}

/// What cannot change without a restart keeps its running value (the listen sockets as
/// bound, with port 0 resolved, among them).
fn keep_running_values(old: &Settings, new: &mut Settings) {
    new.listeners.clone_from(&old.listeners);
    new.http = old.http;
    new.worker_threads = old.worker_threads;
    new.workers = old.workers;
    new.flow_key.clone_from(&old.flow_key);
    new.tls.clone_from(&old.tls);
}

/// The per-server gauges of servers no longer configured are removed, not left at their
/// last value.
fn forget_gauges_of_removed_servers(core: &Core, old: &Live, new: &Live) {
    let labels = |live: &Live| -> Vec<ServerLabels> {
        live.settings
            .pairs
            .iter()
            .flat_map(|p| {
                [("primary", &p.primary), ("backup", &p.backup)].map(|(member, s)| ServerLabels {
                    pair: p.name.clone(),
                    member,
                    server: s.to_string(),
                })
            })
            .collect()
    };
    let kept = labels(new);
    for l in labels(old).into_iter().filter(|l| !kept.contains(l)) {
        core.metrics.upstream_up.remove(&l);
        core.metrics.upstream_active.remove(&l);
    }
}

/// One event per changed key (`config_changed`, or `config_not_live` for a key that needs
/// a restart), then `config_reloaded` with the keys that changed live.
fn log(report: &Reload) {
    let none = || "(none)".to_string();
    for c in report.applied() {
        let (from, to) = (
            c.from.clone().unwrap_or_else(none),
            c.to.clone().unwrap_or_else(none),
        );
        tracing::info!(event = "config_changed", key = %c.key, %from, %to);
    }
    for c in report.not_live() {
        let (from, to) = (
            c.from.clone().unwrap_or_else(none),
            c.to.clone().unwrap_or_else(none),
        );
        tracing::warn!(event = "config_not_live", key = %c.key, %from, %to, "keeps its running value until a restart");
    }
    let keys: Vec<&str> = report.applied().map(|c| c.key.as_str()).collect();
    tracing::info!(
        event = "config_reloaded",
        changes = keys.len(),
        keys = %keys.join(", "),
        health_restarted = report.health_restarted,
    );
}
