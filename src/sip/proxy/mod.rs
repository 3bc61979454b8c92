//! Proxy rules (RFC 3261 section 16), sans-IO: validate a request, process its Route
//! header, pick where it goes, and plan the edits of the forwarded copy.
//!
//! One RFC concept per module: [`validate`](self) (16.3 step 1), [`identity`](self) (which
//! names are ours, 16.4), [`branch`](self) (16.6 step 8 and loop detection, 16.3 step 4),
//! [`router`](self) (16.5: where a request goes). This module ties them into [`decide`]; it
//! sends nothing and keeps no state between requests. The routing policy of sippool lives
//! in [`Router`]: a request from an endpoint goes to the serving pair, a request from an
//! upstream server goes where its Route or Request-URI says, and static routes and pair
//! domains are matched by host.

mod branch;
mod identity;
pub mod response_context;
mod router;
mod validate;

pub use branch::{fnv1a, loop_hash, new_branch, stateless_branch, Hop, BRANCH_PREFIX};
pub use identity::{relay_route, LocalIdentity, Pool, PoolSides, Side, Through};
pub use router::{Destination, Member, Pair, Router, StaticRoute};

use std::borrow::Cow;
use std::net::SocketAddr;

use bytes::Bytes;

use crate::sip::builder::{self, RequestEdits};
use crate::sip::flow::{looks_like_token, Place};
use crate::sip::message::{name_addr_uri, HeaderName, Message, Method};
use crate::sip::transport::Transport;
use crate::sip::uri::{scheme_of, Scheme, SipUri};

use branch::is_loop;
use validate::check_headers;

/// The methods this proxy lets through, for the Allow of its own OPTIONS answer.
pub const ALLOW: &str =
    "Allow: INVITE, ACK, BYE, CANCEL, OPTIONS, REGISTER, SUBSCRIBE, NOTIFY, REFER, INFO, UPDATE, PRACK, MESSAGE";

/// A request refused with a response.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Reject {
    /// Status code.
    pub code: u16,
    /// Reason phrase.
    pub reason: Cow<'static, str>,
    /// Extra header lines (`Name: value`).
    pub extra: Vec<String>,
}

impl Reject {
    /// A response with no extra headers.
    pub fn new(code: u16, reason: &'static str) -> Self {
        Reject {
            code,
            reason: Cow::Borrowed(reason),
            extra: Vec::new(),
        }
    }
}

/// What to do with a request.
// A decision lives for one request and is moved once, into its response context: boxing
// the plan would cost an allocation per request to save a copy of a few hundred bytes.
#[allow(clippy::large_enum_variant)]
#[derive(Debug)]
pub enum Decision {
    /// Answer it locally with this response.
    Respond(Reject),
    /// Nothing can be answered (no usable Via): drop it and count it.
    Drop(&'static str),
    /// Forward it.
    Forward(Plan),
    /// An OPTIONS for this instance itself, as a client that probes its outbound proxy
    /// sends: 200 (with Allow) while the pair serving endpoints is in service, else 503 with
    /// Retry-After, so that the client moves to another instance of the pool.
    OptionsToUs {
        /// Index of the serving pair.
        serving: usize,
    },
}

impl Decision {
    /// The instance of the pool this decision relays to (it holds the flow the request is
    /// for), if it does.
    pub fn relay_target(&self) -> Option<crate::sip::addr::Target> {
        match self {
            Decision::Forward(Plan {
                destination: Destination::Relay { instance, .. },
                ..
            }) => Some(*instance),
            _ => None,
        }
    }

    /// The instance this decision relays to is known not to take requests: a UDP flow is
    /// sent to from here instead ([`Plan::relay_failed`]), a connection is answered 430
    /// Flow Failed at once.
    pub fn relay_unreachable(self) -> Decision {
        match self {
            Decision::Forward(mut plan) if plan.relay.is_some() => {
                if plan.relay_failed().is_some() {
                    Decision::Forward(plan)
                } else {
                    Decision::Respond(Reject::new(430, "Flow Failed"))
                }
            }
            other => other,
        }
    }
}

/// A request on its way out: where, and how to write it once the outbound transport and
/// branch are known.
#[derive(Debug, Clone)]
pub struct Plan {
    /// Where it goes.
    pub destination: Destination,
    /// Loop-detection hash carried in our branch.
    pub loop_hash: u32,
    /// Whether to add Record-Route.
    pub record_route: bool,
    /// Transport the request arrived on.
    pub inbound: Transport,
    /// For a request relayed to the instance holding a flow: how many Route entries are
    /// ours in all, and the flow's token (to go straight to a UDP flow when that instance
    /// is gone).
    relay: Option<(usize, String)>,
    /// Who the side it arrived on is (the Record-Route entry facing it names the pool or
    /// this instance accordingly).
    inbound_side: Side,
    /// Who the side it leaves by is.
    outbound_side: Side,
    /// The local address of the socket it arrived on (its listener), if known.
    inbound_local: Option<std::net::SocketAddr>,
    /// The inbound flow's token, for the Record-Route entry facing the sender (a phone;
    /// never an upstream server, which is reached by its address).
    pub flow_token: Option<String>,
    /// The token of the flow the request leaves by (toward a phone), for the Record-Route
    /// entry facing that phone.
    outbound_flow: Option<String>,
    /// Add a Path entry with the inbound flow's token (REGISTER from a phone, RFC 3327);
    /// the entry names the side of the proxy that faces the registrar, so that the
    /// registrar can reach it.
    path: bool,
    /// The REGISTER is an outbound registration (RFC 5626: its Contact has `reg-id`): the
    /// Path entry then carries `ob`, telling the registrar the flow is kept alive.
    outbound_registration: bool,
    edits: RequestEdits,
}

impl Plan {
    /// Whether the forwarded request hands out the inbound flow's token (in a Path or a
    /// Record-Route entry): from then on the flow is how the sender is reached.
    pub fn issues_flow_token(&self) -> bool {
        self.flow_token.is_some() && (self.record_route || self.path)
    }

    /// The instance this request was relayed to is gone or silent. A UDP flow (a NAT
    /// binding) may still be reached from here: the plan then goes straight to it, with all
    /// our Route entries consumed, and the flow is returned. `None` for a connection: only
    /// its instance could reach it (430 Flow Failed).
    pub fn relay_failed(&mut self) -> Option<crate::sip::flow::Flow> {
        let Destination::Relay { flow, .. } = self.destination else {
            return None;
        };
        if flow.transport != Transport::Udp {
            return None;
        }
        let (all_ours, token) = self.relay.take()?;
        self.edits.route = None;
        self.edits.drop_top_routes = all_ours;
        self.outbound_flow = Some(token.clone());
        self.destination = Destination::Flow { token, flow };
        Some(flow)
    }

    /// Writes the forwarded request for `outbound` with `branch`.
    pub fn build(
        &self,
        msg: &Message,
        identity: &LocalIdentity,
        outbound: Through,
        branch: &str,
    ) -> Bytes {
        self.build_with_via(msg, identity, outbound, &identity.via(outbound, branch))
    }

    /// Writes the forwarded request for `outbound` under our Via value `via` (made by
    /// [`LocalIdentity::via`] for `outbound`).
    pub fn build_with_via(
        &self,
        msg: &Message,
        identity: &LocalIdentity,
        outbound: Through,
        via: &str,
    ) -> Bytes {
        let path = self
            .flow_token
            .as_ref()
            .filter(|_| self.path)
            .map(|t| identity.path(outbound, t, self.outbound_registration));
        let mut record_route = Vec::new();
        if self.record_route {
            // The entry facing a phone carries its flow token, so that in-dialog requests
            // from upstream reach the phone over its own connection, whichever side of the
            // dialog set it up; an entry names the pool where that side finds us by DNS.
            let inbound_rr = identity.record_route(
                self.inbound_through(),
                self.inbound_side,
                self.flow_token.as_deref(),
            );
            if self.double_record_route(identity, outbound) {
                // RFC 5658: one entry per side when the transport or the address changes.
                record_route.push(identity.record_route(
                    outbound,
                    self.outbound_side,
                    self.outbound_flow.as_deref(),
                ));
            }
            record_route.push(inbound_rr);
        }
        let added = builder::Added {
            via,
            record_route: &record_route,
            path: path.as_deref(),
        };
        builder::forward_request(msg, &self.edits, added)
    }

    fn inbound_through(&self) -> Through {
        Through {
            transport: self.inbound,
            local: self.inbound_local,
        }
    }

    /// Whether the request sent through `outbound` gets two Record-Route entries, one per
    /// side (RFC 5658: the transport changes, a side is a phone's flow, or the two sides'
    /// entries name different hosts: the pool and this instance, or two listeners' own
    /// advertised addresses).
    fn double_record_route(&self, identity: &LocalIdentity, outbound: Through) -> bool {
        outbound.transport != self.inbound
            || self.flow_token.is_some()
            || self.outbound_flow.is_some()
            || identity.entries_differ(
                (self.inbound_through(), self.inbound_side),
                (outbound, self.outbound_side),
            )
    }

    /// How many Record-Route entries this proxy adds to the request sent through
    /// `outbound`.
    pub fn record_route_count(&self, identity: &LocalIdentity, outbound: Through) -> usize {
        match (
            self.record_route,
            self.double_record_route(identity, outbound),
        ) {
            (false, _) => 0,
            (true, false) => 1,
            (true, true) => 2,
        }
    }

    /// The CANCEL for the request as forwarded on the branch whose Via (ours) is `via`
    /// (RFC 3261 section 9.1), written from the received request: nothing is parsed again.
    pub fn cancel(&self, msg: &Message, via: &str) -> Bytes {
        builder::cancel_for(msg, &self.edits, via)
    }

    /// The hop-by-hop ACK for a non-2xx final `response` on the branch whose Via is `via`
    /// (RFC 3261 section 17.1.1.3).
    pub fn ack(&self, msg: &Message, via: &str, response: &Message) -> Bytes {
        builder::ack_for(msg, &self.edits, via, response)
    }

    /// A fresh unique branch carrying this plan's loop hash.
    pub fn new_branch(&self) -> String {
        new_branch(self.loop_hash)
    }
}

/// A To tag for responses this proxy generates: the same for retransmissions.
pub fn local_tag(msg: &Message) -> String {
    let via = msg.top_via().and_then(|v| v.ok());
    let branch = via.as_ref().and_then(|v| v.branch()).unwrap_or_default();
    let hash = fnv1a(&[
        msg.call_id().unwrap_or_default(),
        msg.from_tag().unwrap_or_default(),
        branch.as_bytes(),
    ]) & 0xffff_ffff_ffff;
    let mut tag = String::with_capacity(LOCAL_TAG_PREFIX.len() + 12);
    tag.push_str(LOCAL_TAG_PREFIX);
    branch::push_hex(&mut tag, hash, 1);
    tag
}

/// How every To tag of [`local_tag`] begins.
pub const LOCAL_TAG_PREFIX: &str = "sp";

/// A received request with what the transport knows about it.
#[derive(Debug, Clone, Copy)]
pub struct Received<'a> {
    /// The request.
    pub msg: &'a Message,
    /// Transport it came on.
    pub transport: Transport,
    /// Packet source.
    pub source: SocketAddr,
    /// Whether the source is one of the configured upstream servers.
    pub from_upstream: bool,
    /// The local address of the socket it arrived on (which listener), if known.
    pub local: Option<SocketAddr>,
    /// The flow token of the flow it arrived on, when that flow can carry requests back to
    /// the sender (a stream, or UDP with rport); put in Path and Record-Route.
    pub flow_token: Option<&'a str>,
}

/// Whether a Contact of the request has a `reg-id` parameter (an RFC 5626 outbound
/// registration, section 4.2).
fn has_reg_id(msg: &Message) -> bool {
    msg.all(HeaderName::Contact).any(|h| {
        let v = msg.value(h);
        crate::sip::syntax::split_list(v).into_iter().any(|r| {
            crate::sip::message::header_param(v.get(r).unwrap_or_default(), b"reg-id").is_some()
        })
    })
}

/// Whether the request is on its way into a dialog-creating transaction we Record-Route.
fn wants_record_route(msg: &Message) -> bool {
    if msg.to_tag().is_some() {
        return false;
    }
    match msg.method() {
        Some(Method::Invite) => true,
        Some(Method::Other(m)) => matches!(&**m, "SUBSCRIBE" | "REFER" | "NOTIFY"),
        _ => false,
    }
}

/// Checks a request (RFC 3261 section 16.3) and decides what to do with it.
pub fn decide(rx: Received<'_>, identity: &LocalIdentity, router: &Router) -> Decision {
    let msg = rx.msg;
    if msg.first(HeaderName::Via).is_none() {
        return Decision::Drop("no Via");
    }
    // A wrong SIP version is answered as such (505), whatever else is wrong.
    if let Some(d) = msg.defect().filter(|d| d.code == 505) {
        return Decision::Respond(Reject {
            code: d.code,
            reason: Cow::Borrowed(d.reason),
            extra: Vec::new(),
        });
    }
    // A response needs a Via to go back along.
    let via = match msg.top_via() {
        Some(Ok(v)) => v,
        Some(Err(_)) => {
            // A Via that does not parse: answer along the packet source anyway.
            return Decision::Respond(Reject::new(400, "Malformed Via"));
        }
        None => return Decision::Drop("no Via"),
    };
    if let Some(d) = msg.defect() {
        return Decision::Respond(Reject {
            code: d.code,
            reason: Cow::Borrowed(d.reason),
            extra: Vec::new(),
        });
    }
    if let Err(r) = check_headers(msg, &via) {
        return Decision::Respond(r);
    }
    let Some(method) = msg.method() else {
        return Decision::Drop("not a request");
    };
    // Request-URI (16.3 step 2).
    let ruri_text = msg.request_uri().unwrap_or_default();
    let ruri = match scheme_of(ruri_text) {
        Err(_) => return Decision::Respond(Reject::new(400, "Malformed Request-URI")),
        Ok(Scheme::Other) => return Decision::Respond(Reject::new(416, "Unsupported URI Scheme")),
        Ok(Scheme::Tel) => None,
        Ok(scheme @ (Scheme::Sip | Scheme::Sips)) => match SipUri::parse_as(ruri_text, scheme) {
            Ok(u) if u.has_headers => {
                return Decision::Respond(Reject::new(400, "Headers Not Allowed In Request-URI"))
            }
            Ok(u) => Some(u),
            Err(_) => return Decision::Respond(Reject::new(400, "Malformed Request-URI")),
        },
    };
    // Max-Forwards (step 3).
    let max_forwards = match msg.max_forwards() {
        None => 70,
        Some(Err(())) => return Decision::Respond(Reject::new(400, "Bad Max-Forwards")),
        Some(Ok(0)) => return Decision::Respond(Reject::new(483, "Too Many Hops")),
        Some(Ok(n)) => n - 1,
    };
    // Loop detection (step 4).
    let hash = loop_hash(
        msg,
        Hop {
            transport: rx.transport,
            source: rx.source.ip(),
        },
    );
    if is_loop(msg, identity, hash) {
        return Decision::Respond(Reject::new(482, "Loop Detected"));
    }
    // Proxy-Require (step 5).
    let proxy_require: Vec<String> = msg
        .all(HeaderName::ProxyRequire)
        .map(|h| String::from_utf8_lossy(msg.value(h)).into_owned())
        .collect();
    if !proxy_require.is_empty() && *method != Method::Ack && *method != Method::Cancel {
        return Decision::Respond(Reject {
            code: 420,
            reason: Cow::Borrowed("Bad Extension"),
            extra: vec![format!("Unsupported: {}", proxy_require.join(", "))],
        });
    }
    // Route processing (16.4).
    let mut edits = RequestEdits {
        max_forwards,
        ..Default::default()
    };
    let routes = msg.list_values(HeaderName::Route);
    let route_uris: Vec<Option<SipUri<'_>>> = routes
        .iter()
        .map(|r| name_addr_uri(msg.slice(r.clone())).and_then(|u| SipUri::parse(u).ok()))
        .collect();
    let mut request_uri_override: Option<String> = None;
    let mut first_route = 0;
    if ruri.as_ref().is_some_and(|u| identity.is_local_uri(u)) && !routes.is_empty() {
        // The previous hop was a strict router: the last Route is the real Request-URI.
        if let Some(last) = routes.last() {
            if let Some(u) = name_addr_uri(msg.slice(last.clone())) {
                request_uri_override = Some(String::from_utf8_lossy(u).into_owned());
                edits.drop_last_route = true;
            }
        }
    }
    let usable_routes = if edits.drop_last_route {
        route_uris.len().saturating_sub(1)
    } else {
        route_uris.len()
    };
    // A flow token in our Route entries sends the request over that flow, toward the phone:
    // when the entry is not the first of ours (the phone's side of a double Record-Route)
    // or the request comes from an upstream server (a Path). Requests from the phone itself
    // carry the token in the first of our entries and go the other way. An entry naming
    // another instance of the pool (its Path) is ours too when it carries a token of the
    // pool's in that place: the request goes to that instance's flow the same way.
    let mut flow: Option<(usize, String)> = None;
    let first_ours = first_route;
    while first_route < usable_routes {
        let Some(Some(u)) = route_uris.get(first_route) else {
            break;
        };
        let token = u
            .user
            .filter(|u| looks_like_token(u))
            .map(|u| String::from_utf8_lossy(u).into_owned());
        let toward_flow = first_route > first_ours || rx.from_upstream;
        let ours = identity.is_local_uri(u)
            || (toward_flow
                && token
                    .as_deref()
                    .is_some_and(|t| identity.flows().verify(t).is_ok()));
        if !ours {
            break;
        }
        if let Some(t) = token.filter(|_| toward_flow) {
            flow = Some((first_route, t));
        }
        first_route += 1;
    }
    edits.drop_top_routes = first_route;
    if usable_routes > first_route && route_uris.get(first_route).is_some_and(Option::is_none) {
        return Decision::Respond(Reject::new(400, "Malformed Route"));
    }
    let next_route = if first_route < usable_routes {
        route_uris.get(first_route).and_then(Option::as_ref)
    } else {
        None
    };
    // A request for us with nowhere further to go.
    if next_route.is_none()
        && *method == Method::Options
        && request_uri_override.is_none()
        && ruri
            .as_ref()
            .is_some_and(|u| identity.is_local_uri(u) && u.user.is_none())
    {
        return Decision::OptionsToUs {
            serving: router.serving,
        };
    }
    let override_uri = request_uri_override.as_deref().map(str::as_bytes);
    let effective_ruri = match override_uri {
        Some(u) => SipUri::parse(u).ok(),
        None => ruri.clone(),
    };
    let mut relay = None;
    let destination = match (next_route, flow) {
        // Our own Route entry named a flow and nothing comes after it: over that flow, or
        // to the instance of the pool that holds it.
        (None, Some((at, token))) => match identity.flows().place(&token) {
            Ok(Place::Here(flow)) => Destination::Flow { token, flow },
            Ok(Place::Elsewhere { instance, flow }) => {
                // Our entries above the flow's are done with; the flow's entry stays for
                // the instance that holds it, under one naming that instance.
                relay = Some((at, token));
                edits.route = Some(relay_route(instance));
                Destination::Relay { instance, flow }
            }
            // A UDP peer (a NAT binding) that no process holds any more: sent to from here,
            // it may still get through. A connection that is gone is gone.
            Ok(Place::Gone(flow)) if flow.transport == Transport::Udp => {
                Destination::Flow { token, flow }
            }
            Ok(Place::Gone(_)) => return Decision::Respond(Reject::new(430, "Flow Failed")),
            Err(_) => return Decision::Respond(Reject::new(403, "Invalid Flow Token")),
        },
        _ => match router.destination(
            identity,
            next_route,
            effective_ruri.as_ref(),
            rx.from_upstream,
            msg.to_tag().is_some(),
        ) {
            Ok(d) => d,
            Err(r) => return Decision::Respond(r),
        },
    };
    let toward_flow = matches!(
        destination,
        Destination::Flow { .. } | Destination::Relay { .. }
    );
    // RFC 3327: a REGISTER from a phone gets a Path naming its flow, so that requests from
    // the registrar come back to the phone over its own connection. A request on its way to
    // a phone's flow came from a server or from another instance: no flow of its sender's
    // is handed out.
    let inbound_flow = rx
        .flow_token
        .filter(|_| !rx.from_upstream && !toward_flow)
        .map(str::to_string);
    let outbound_flow = match &destination {
        Destination::Flow { token, .. } => Some(token.clone()),
        _ => None,
    };
    let inbound_side = if rx.from_upstream {
        Side::Servers
    } else {
        Side::Endpoints
    };
    let outbound_side = match destination {
        Destination::Flow { .. } => Side::Endpoints,
        Destination::Pair(_) => Side::Servers,
        Destination::Host(_) | Destination::Relay { .. } if rx.from_upstream => Side::Endpoints,
        Destination::Host(_) | Destination::Relay { .. } => Side::Servers,
    };
    edits.request_uri = request_uri_override;
    let all_ours = edits.drop_top_routes;
    if let Some((at, _)) = &relay {
        edits.drop_top_routes = *at;
    }
    // received / rport (RFC 3581, RFC 3261 section 18.2.1).
    edits.top_via = via.with_received(rx.source);
    Decision::Forward(Plan {
        destination,
        loop_hash: hash,
        // A relay to the instance holding a flow is one more hop of ours: that instance
        // Record-Routes the request, this one need not stay on the path.
        record_route: wants_record_route(msg) && relay.is_none(),
        relay: relay.map(|(_, token)| (all_ours, token)),
        inbound: rx.transport,
        inbound_side,
        outbound_side,
        inbound_local: rx.local,
        path: *method == Method::Register && inbound_flow.is_some(),
        outbound_registration: *method == Method::Register && has_reg_id(msg),
        flow_token: inbound_flow,
        outbound_flow,
        edits,
    })
}

/// sent-by, with ACK matched to its INVITE; RFC 2543 requests (no magic cookie) are keyed on
/// Call-ID, From tag, CSeq number and sent-by.
pub fn server_key(msg: &Message) -> Option<String> {
    let via = msg.top_via()?.ok()?;
    let method = msg.method()?;
    let m = match method {
        Method::Ack => "INVITE",
        other => other.as_str(),
    };
    let port = via.port.unwrap_or(5060);
    if via.has_rfc3261_branch() {
        Some(format!("{}|{}:{}|{}", via.branch()?, via.host, port, m))
    } else {
        let cseq = msg.cseq().map_or(0, |(n, _)| n);
        Some(format!(
            "2543|{}|{}|{}|{}:{}|{}",
            String::from_utf8_lossy(msg.call_id().unwrap_or_default()),
            String::from_utf8_lossy(msg.from_tag().unwrap_or_default()),
            cseq,
            via.host,
            port,
            m
        ))
    }
}

/// The key of the INVITE server transaction a CANCEL refers to.
pub fn cancelled_invite_key(cancel: &Message) -> Option<String> {
    let key = server_key(cancel)?;
    key.strip_suffix("CANCEL").map(|k| format!("{k}INVITE"))
}

#[cfg(test)]
mod pool_tests;
#[cfg(test)]
mod tests;
