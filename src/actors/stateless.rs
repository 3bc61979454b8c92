//! What the proxy does without a transaction: forward a response that matches none along
//! its Via (RFC 3261 section 18.2.2), forward the ACK of a 2xx along the route (section
//! 16.11), and answer a request that cannot have a transaction (errors found first, 503s
//! of admission control).

use std::net::IpAddr;
use std::sync::Arc;

use crate::sip::builder;
use crate::sip::message::{HeaderName, Message};
use crate::sip::proxy::response_context::Origin;
use crate::sip::proxy::{self, Decision, Received};
use crate::sip::transport::Transport;
use crate::sip::via::Via;

use super::core::Core;
use super::transport::{response_destination, send_reply, send_udp, Inbound, ReplyPath, Target};

/// Forwards a response that matches no transaction along its Via (RFC 3261 section
/// 18.2.2), when the top Via is ours. 100 Trying is hop-by-hop and dropped.
pub fn forward_stray_response(core: &Core, msg: &Message) {
    let ours = match msg.top_via() {
        Some(Ok(v)) => {
            let t = v.transport.parse().unwrap_or(Transport::Udp);
            core.live().identity.is_local(v.host, v.port, t)
        }
        _ => false,
    };
    if !ours || msg.status() == Some(100) {
        core.metrics.message_dropped("stray_response");
        return;
    }
    let vias = msg.list_values(HeaderName::Via);
    let Some(next) = vias
        .get(1)
        .and_then(|r| Via::parse(msg.slice(r.clone())).ok())
    else {
        core.metrics.message_dropped("stray_response");
        return;
    };
    let Some(dest) = next.response_address().filter(|a| is_unicast(a.ip())) else {
        core.metrics.message_dropped("stray_response");
        return;
    };
    let bytes = builder::forward_response(msg);
    let t = next.transport.parse().unwrap_or(Transport::Udp);
    let sent = match t {
        Transport::Udp => core
            .transports
            .udp_for(&dest)
            .is_some_and(|s| send_udp(&s, dest, bytes).is_ok()),
        _ => core
            .transports
            .conn_to(t, dest)
            .is_some_and(|c| c.send(bytes)),
    };
    if !sent {
        core.metrics.message_dropped("stray_response");
    }
}

/// ACK that matches no server transaction: the ACK for a 2xx, forwarded statelessly
/// (RFC 3261 section 16.11) with a branch that is the same for its retransmissions. An
/// ACK for a response this proxy generated statelessly carries our To tag: absorbed.
pub fn forward_ack(core: &Arc<Core>, inbound: Box<Inbound>) {
    let msg = &inbound.msg;
    if msg.to_tag().is_some_and(|t| {
        t.starts_with(proxy::LOCAL_TAG_PREFIX.as_bytes()) && t == proxy::local_tag(msg).as_bytes()
    }) {
        return;
    }
    let token = core.flow_token_for(&inbound);
    let live = core.snapshot();
    let rx = Received {
        msg,
        transport: inbound.transport,
        source: inbound.source,
        from_upstream: live.upstreams.is_upstream(inbound.source.ip()),
        local: inbound.reply.through().local,
        flow_token: token.as_deref(),
    };
    let plan = match core.decide(&live, rx) {
        Decision::Forward(plan) => plan,
        // An ACK is never answered: what would have been the response is the reason.
        Decision::Respond(r) => {
            tracing::debug!(event = "ack_not_routable", source = %inbound.source, code = r.code, reason = %r.reason);
            core.metrics.message_dropped("ack_not_routable");
            return;
        }
        Decision::OptionsToUs { .. } => {
            core.metrics.message_dropped("ack_not_routable");
            return;
        }
        Decision::Drop(why) => {
            tracing::debug!(event = "ack_not_routable", source = %inbound.source, reason = why);
            core.metrics.message_dropped("ack_not_routable");
            return;
        }
    };
    let top_via = msg.top_via().and_then(Result::ok);
    let received_branch = top_via
        .as_ref()
        .and_then(|v| v.branch())
        .unwrap_or_default();
    let branch = proxy::stateless_branch(plan.loop_hash, received_branch.as_bytes());
    let hp = match &plan.destination {
        proxy::Destination::Pair(i) => live.upstreams.active_member(*i).cloned(),
        proxy::Destination::Host(hp) => Some(hp.clone()),
        // An ACK for a 2xx toward a phone whose flow another instance holds: to it.
        proxy::Destination::Relay { instance, .. } => Some(crate::sip::HostPort::from(*instance)),
        proxy::Destination::Flow { flow, .. } => {
            // An ACK for a 2xx toward a phone: over its flow, if it is still there.
            if let Some(target) = core.flow_target(flow) {
                let through = match &target.1 {
                    Some(conn) => ReplyPath::Stream(conn.clone()).through(),
                    None => core.through(&live, target.0),
                };
                let bytes = plan.build(msg, &live.identity, through, &branch);
                let _ = match target.1 {
                    Some(conn) => conn.send(bytes),
                    None => core
                        .transports
                        .udp_for(&target.0.addr)
                        .is_some_and(|s| send_udp(&s, target.0.addr, bytes).is_ok()),
                };
            }
            return;
        }
    };
    let Some(hp) = hp else {
        return;
    };
    if let (Some(addr), Transport::Udp) = (hp.socket_addr(), hp.transport) {
        let through = core.through(
            &live,
            Target {
                transport: Transport::Udp,
                addr,
            },
        );
        let bytes = plan.build(msg, &live.identity, through, &branch);
        let server = |ip| live.upstreams.is_upstream(ip);
        match core.transports.udp_toward(&addr, server) {
            Some(sock) => {
                let _ = send_udp(&sock, addr, bytes);
            }
            None => core.metrics.message_dropped("no_transport"),
        }
        return;
    }
    let core = core.clone();
    tokio::spawn(async move {
        if let Some(target) = core.locate(&live, &hp).await {
            let through = core.through(&live, target);
            let bytes = plan.build(&inbound.msg, &live.identity, through, &branch);
            let _ = super::connection::send(&core, target, bytes).await;
        }
    });
}

/// Answers a request without a transaction (errors found before one exists).
pub fn respond_stateless(core: &Core, inbound: &Inbound, code: u16, reason: &str, extra: &[&str]) {
    let tag = proxy::local_tag(&inbound.msg);
    let extra: Vec<String> = extra.iter().map(|s| s.to_string()).collect();
    let bytes = builder::response(&inbound.msg, code, reason, &tag, &extra);
    let dest = response_destination(&inbound.msg, inbound.source, &inbound.reply);
    if send_reply(&inbound.reply, dest, bytes).is_ok() {
        core.metrics.response(code, Origin::Local);
    }
}

fn is_unicast(ip: IpAddr) -> bool {
    match ip {
        IpAddr::V4(v4) => !(v4.is_broadcast() || v4.is_multicast() || v4.is_unspecified()),
        IpAddr::V6(v6) => !(v6.is_multicast() || v6.is_unspecified()),
    }
}
