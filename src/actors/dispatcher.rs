//! The shell of the sans-IO dispatcher ([`crate::sip::dispatch()`]): every message a
//! listener or connection receives comes here. The dispatcher says where it belongs; this
//! module does it: hands it to a running transaction, answers a retransmission from a
//! lingering one, forwards what is stateless, applies admission control (drain,
//! transaction cap, INVITE rate) and starts one transaction (an actor cell) per new
//! server transaction. It never blocks.

use std::sync::{Arc, Weak};
use std::time::Instant;

use crate::metrics::Metrics;
use crate::sip::dispatch::{dispatch as sip_dispatch, Dispatch};
use crate::sip::message::{Message, Method};
use crate::sip::transaction::{ClientKey, ServerKey};

use super::core::Core;
use super::stateless::{forward_ack, forward_stray_response, respond_stateless};
use super::tables::TxMsg;
use super::transport::Inbound;

/// What listeners and connections hand received messages to: [`dispatch`] on this core.
/// Holds the core weakly, so that a stopped proxy's core is freed.
pub fn sink(core: &Arc<Core>) -> Box<dyn Fn(Box<Inbound>) + Send + Sync> {
    let weak: Weak<Core> = Arc::downgrade(core);
    Box::new(move |inbound| {
        if let Some(core) = weak.upgrade() {
            dispatch(&core, inbound);
        }
    })
}

/// Routes one received message (see the module documentation): the sans-IO
/// dispatcher says where it belongs, this does it.
pub fn dispatch(core: &Arc<Core>, inbound: Box<Inbound>) {
    if inbound.msg.is_response() {
        core.live().upstreams.note_heard(inbound.source);
    } else {
        let method = inbound.msg.method().map_or("", Method::as_str);
        core.metrics.request(method);
        core.live().upstreams.note_request_source(inbound.source);
    }
    route(core, inbound);
}

fn route(core: &Arc<Core>, inbound: Box<Inbound>) {
    match sip_dispatch(&inbound.msg, &core.txns, Instant::now()) {
        Dispatch::Probe(key) => to_probe(core, &key, &inbound.msg),
        Dispatch::ClientTransaction(key) => {
            let Some(tx) = core.txns.client.get(&key).map(|r| r.clone()) else {
                return forward_stray_response(core, &inbound.msg);
            };
            if tx.worker() != super::workers::current() {
                core.metrics.worker_handoffs.inc();
            }
            if let Err(TxMsg::Response(back, _)) = tx.send(TxMsg::Response(inbound, key)) {
                forward_stray_response(core, &back.msg);
            }
        }
        Dispatch::StrayResponse => forward_stray_response(core, &inbound.msg),
        Dispatch::Cancel(invite) => {
            if let Some(tx) = core.txns.server.get(&invite).map(|r| r.clone()) {
                let _ = tx.send(TxMsg::Cancel(inbound));
            }
        }
        Dispatch::ServerTransaction(key) => {
            let Some(tx) = core.txns.server.get(&key).map(|r| r.clone()) else {
                return route(core, inbound);
            };
            if let Err(TxMsg::Request(inbound)) = tx.send(TxMsg::Request(inbound)) {
                // The transaction just ended: it lingers, or this is a new one.
                core.txns.server.remove_if(&key, |_, v| v.id() == tx.id());
                route(core, inbound);
            }
        }
        Dispatch::Absorb(key) => core.txns.absorb(&key),
        Dispatch::AckStateless => forward_ack(core, inbound),
        Dispatch::New(key) => new_transaction(core, key, inbound),
        Dispatch::Respond(code, reason) => respond_stateless(core, &inbound, code, reason, &[]),
        Dispatch::Drop(reason) => core.metrics.message_dropped(reason),
    }
}

/// A response to one of our OPTIONS probes, to the probe actor that sent it.
fn to_probe(core: &Core, key: &ClientKey, msg: &Message) {
    let Some(code) = msg.status() else {
        return;
    };
    let retry_after = msg
        .header_value("Retry-After")
        .and_then(|v| {
            crate::sip::syntax::parse_u32(
                crate::sip::syntax::trim(
                    v.split(|&c| c == b';' || c == b'(')
                        .next()
                        .unwrap_or_default(),
                ),
                86_400,
            )
        })
        .map(|s| std::time::Duration::from_secs(u64::from(s)));
    core.live()
        .upstreams
        .probe_response(key.branch(), code, retry_after);
}

fn new_transaction(core: &Arc<Core>, key: ServerKey, inbound: Box<Inbound>) {
    let msg = &inbound.msg;
    let initial_invite = msg.method() == Some(&Method::Invite) && msg.to_tag().is_none();
    let out_of_dialog =
        msg.to_tag().is_none() && !matches!(msg.method(), Some(Method::Ack | Method::Cancel));
    if out_of_dialog && core.admission.is_draining() {
        Metrics::count(&core.metrics.overload_rejections, "draining");
        respond_stateless(
            core,
            &inbound,
            503,
            "Service Unavailable",
            &["Retry-After: 30"],
        );
        return;
    }
    if core.txns.server.len() >= core.live().settings.limits.max_transactions {
        Metrics::count(&core.metrics.overload_rejections, "transactions");
        respond_stateless(
            core,
            &inbound,
            503,
            "Service Unavailable",
            &["Retry-After: 5"],
        );
        return;
    }
    if initial_invite && msg.defect().is_none() && !core.admission.admit_invite() {
        Metrics::count(&core.metrics.overload_rejections, "invite_rate");
        respond_stateless(
            core,
            &inbound,
            503,
            "Service Unavailable",
            &["Retry-After: 1"],
        );
        return;
    }
    super::transaction::spawn(core, key, inbound);
}
