//! Feeds the dashboard's history ([`crate::metrics::history`]): every [`PERIOD`] a
//! reading of the counters and of every upstream server's probe round trip, and the pair
//! switches the health layer logged.

use std::sync::Weak;
use std::time::{SystemTime, UNIX_EPOCH};

use serde_json::Value;

use crate::health::pair::name;
use crate::health::Member;
use crate::metrics::history::{History, Reading, ServerKey, SwitchEvent, PERIOD};
use crate::metrics::MethodLabels;

use super::core::Core;

/// Takes the first reading (the baseline of the rates) now, then samples the history
/// every [`PERIOD`] until the core is gone.
pub(crate) fn spawn(core: Weak<Core>) {
    if let Some(c) = core.upgrade() {
        sample(&c);
    }
    tokio::spawn(async move {
        let mut tick = tokio::time::interval_at(tokio::time::Instant::now() + PERIOD, PERIOD);
        tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        loop {
            tick.tick().await;
            let Some(c) = core.upgrade() else { return };
            sample(&c);
        }
    });
}

fn unix_now() -> f64 {
    unix(SystemTime::now())
}

fn unix(t: SystemTime) -> f64 {
    t.duration_since(UNIX_EPOCH)
        .map_or(0.0, |d| d.as_secs_f64())
}

/// Takes one sample now.
pub(crate) fn sample(core: &Core) {
    let reading = read(core, unix_now());
    if let Ok(mut h) = core.history.lock() {
        take_switches(core, &mut h);
        h.record(reading);
    }
}

/// The `/status/history` document (switches up to this moment, samples up to the last
/// tick).
pub(crate) fn history_json(core: &Core) -> Value {
    match core.history.lock() {
        Ok(mut h) => {
            take_switches(core, &mut h);
            h.to_json(unix_now())
        }
        Err(_) => Value::Null,
    }
}

fn read(core: &Core, at: f64) -> Reading {
    let m = &core.metrics;
    let live = core.live();
    let mut rtt_ms = Vec::with_capacity(live.settings.pairs.len() * 2);
    for (i, p) in live.settings.pairs.iter().enumerate() {
        for (member, server) in [(Member::Primary, &p.primary), (Member::Backup, &p.backup)] {
            let rtt = live
                .upstreams
                .status
                .server(i, member)
                .filter(|_| live.upstreams.states.is_up(i, member))
                .and_then(|s| s.last_rtt)
                .map(|d| d.as_secs_f64() * 1000.0);
            let key = ServerKey {
                pair: p.name.clone(),
                member: name(member),
                server: server.to_string(),
            };
            rtt_ms.push((key, rtt));
        }
    }
    Reading {
        at,
        invites: m
            .requests
            .get_or_create(&MethodLabels { method: "INVITE" })
            .get(),
        rejected_503: m.responses_503.get(),
        rtt_ms,
    }
}

fn take_switches(core: &Core, h: &mut History) {
    let live = core.live();
    for (seq, pair, s) in live.upstreams.status.switches_after(h.switch_seq()) {
        let pair = live
            .settings
            .pairs
            .get(pair)
            .map_or_else(|| pair.to_string(), |p| p.name.clone());
        h.switched(
            seq,
            SwitchEvent {
                pair,
                at: unix(s.at),
                from: s.from.map(name),
                to: s.to.map(name),
                why: s.why,
            },
        );
    }
}
