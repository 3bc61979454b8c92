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
pub use identity::LocalIdentity;
pub use router::{Destination, Member, Pair, Router, StaticRoute};

use std::borrow::Cow;
use std::net::SocketAddr;

use bytes::Bytes;

use crate::sip::builder::{self, RequestEdits};
use crate::sip::message::{name_addr_uri, HeaderName, Message, Method};
use crate::sip::transport::Transport;
use crate::sip::uri::{scheme_of, Scheme, SipUri};

use branch::is_loop;
use validate::check_headers;

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
#[derive(Debug)]
pub enum Decision {
    /// Answer it locally with this response.
    Respond(Reject),
    /// Nothing can be answered (no usable Via): drop it and count it.
    Drop(&'static str),
    /// Forward it.
    Forward(Plan),
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
    edits: RequestEdits,
}

impl Plan {
    /// Whether the forwarded request hands out the inbound flow's token (in a Path or a
    /// Record-Route entry): from then on the flow is how the sender is reached.
    pub fn issues_flow_token(&self) -> bool {
        self.flow_token.is_some() && (self.record_route || self.path)
    }

    /// Writes the forwarded request for `outbound` with `branch`.
    pub fn build(
        &self,
        msg: &Message,
        identity: &LocalIdentity,
        outbound: Transport,
        branch: &str,
    ) -> Bytes {
        let mut edits = self.edits.clone();
        edits.via = identity.via(outbound, branch);
        if let Some(t) = self.flow_token.as_ref().filter(|_| self.path) {
            edits.path = Some(identity.flow_uri(outbound, t, true));
        }
        if self.record_route {
            // The entry facing a phone carries its flow token, so that in-dialog requests
            // from upstream reach the phone over its own connection, whichever side of the
            // dialog set it up.
            let side = |t: Transport, token: &Option<String>| match token {
                Some(token) => identity.flow_uri(t, token, false),
                None => identity.record_route(t),
            };
            let inbound_rr = side(self.inbound, &self.flow_token);
            if outbound != self.inbound || self.flow_token.is_some() || self.outbound_flow.is_some()
            {
                // RFC 5658: one entry per side when the transport changes.
                edits.record_route.push(side(outbound, &self.outbound_flow));
                edits.record_route.push(inbound_rr);
            } else {
                edits.record_route.push(inbound_rr);
            }
        }
        builder::forward_request(msg, &edits)
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
    let branch = msg
        .top_via()
        .and_then(|v| v.ok())
        .and_then(|v| v.branch().map(str::as_bytes).map(<[u8]>::to_vec))
        .unwrap_or_default();
    format!(
        "sp{:x}",
        fnv1a(&[
            msg.call_id().unwrap_or_default(),
            msg.from_tag().unwrap_or_default(),
            &branch
        ]) & 0xffff_ffff_ffff
    )
}

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
    /// The flow token of the flow it arrived on, when that flow can carry requests back to
    /// the sender (a stream, or UDP with rport); put in Path and Record-Route.
    pub flow_token: Option<&'a str>,
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
        Ok(Scheme::Sip | Scheme::Sips) => match SipUri::parse(ruri_text) {
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
    // carry the token in the first of our entries and go the other way.
    let mut flow: Option<String> = None;
    let first_ours = first_route;
    while first_route < usable_routes {
        match route_uris.get(first_route) {
            Some(Some(u)) if identity.is_local_uri(u) => {
                if let Some(user) = u.user.filter(|u| crate::sip::flow::looks_like_token(u)) {
                    if first_route > first_ours || rx.from_upstream {
                        flow = Some(String::from_utf8_lossy(user).into_owned());
                    }
                }
                first_route += 1;
            }
            _ => break,
        }
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
        return Decision::Respond(Reject {
            code: 200,
            reason: Cow::Borrowed("OK"),
            extra: vec!["Allow: INVITE, ACK, BYE, CANCEL, OPTIONS, REGISTER, SUBSCRIBE, NOTIFY, REFER, INFO, UPDATE, PRACK, MESSAGE".into()],
        });
    }
    let override_uri = request_uri_override.as_deref().map(str::as_bytes);
    let effective_ruri = match override_uri {
        Some(u) => SipUri::parse(u).ok(),
        None => ruri.clone(),
    };
    let destination = match (next_route, flow) {
        // Our own Route entry named a flow and nothing comes after it: over that flow.
        (None, Some(token)) => Destination::Flow(token),
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
    // RFC 3327: a REGISTER from a phone gets a Path naming its flow, so that requests from
    // the registrar come back to the phone over its own connection.
    let inbound_flow = rx
        .flow_token
        .filter(|_| !rx.from_upstream)
        .map(str::to_string);
    let outbound_flow = match &destination {
        Destination::Flow(t) => Some(t.clone()),
        _ => None,
    };
    edits.request_uri = request_uri_override;
    // received / rport (RFC 3581, RFC 3261 section 18.2.1).
    edits.top_via = via.with_received(rx.source);
    Decision::Forward(Plan {
        destination,
        loop_hash: hash,
        record_route: wants_record_route(msg),
        inbound: rx.transport,
        path: *method == Method::Register && inbound_flow.is_some(),
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
mod tests {
    use super::*;
    use crate::sip::addr::Listener;
    use crate::sip::message::{Framing, Limits};

    fn identity() -> LocalIdentity {
        LocalIdentity::new(
            "192.0.2.10",
            vec![
                Listener {
                    transport: Transport::Udp,
                    address: "192.0.2.10:5060".parse().unwrap(),
                },
                Listener {
                    transport: Transport::Tcp,
                    address: "192.0.2.10:5060".parse().unwrap(),
                },
            ],
        )
        .with_names(["pool.example.com"])
    }

    fn router() -> Router {
        Router {
            pairs: vec![Pair {
                name: "a".into(),
                domain: Some("site-a.example".into()),
                primary: "192.0.2.11:5060".parse().unwrap(),
                backup: "192.0.2.12:5060".parse().unwrap(),
                failback: false,
            }],
            routes: vec![StaticRoute {
                domain: "partner.example".into(),
                target: "198.51.100.1:5060;transport=tcp".parse().unwrap(),
            }],
            serving: 0,
        }
    }

    fn req(extra: &str, ruri: &str) -> Message {
        let s = format!(
            "INVITE {ruri} SIP/2.0\r\nVia: SIP/2.0/UDP 10.1.1.1:5060;branch=z9hG4bKabc;rport\r\n\
             Max-Forwards: 70\r\nFrom: <sip:a@x>;tag=1\r\nTo: <sip:b@y>\r\nCall-ID: c\r\n\
             CSeq: 1 INVITE\r\n{extra}Content-Length: 0\r\n\r\n"
        );
        Message::parse(Bytes::from(s), Framing::Datagram, &Limits::default()).unwrap()
    }

    fn decide_from(msg: &Message, src: &str, upstream: bool) -> Decision {
        decide(
            Received {
                msg,
                transport: Transport::Udp,
                source: src.parse().unwrap(),
                from_upstream: upstream,
                flow_token: None,
            },
            &identity(),
            &router(),
        )
    }

    fn code(d: &Decision) -> u16 {
        match d {
            Decision::Respond(r) => r.code,
            Decision::Drop(_) => 0,
            Decision::Forward(_) => 1,
        }
    }

    #[test]
    fn endpoint_request_goes_to_serving_pair_with_record_route_and_received() {
        let m = req("", "sip:bob@anything.example");
        let Decision::Forward(plan) = decide_from(&m, "10.9.9.9:40000", false) else {
            panic!()
        };
        assert_eq!(plan.destination, Destination::Pair(0));
        let out = plan.build(&m, &identity(), Transport::Tcp, "z9hG4bKsptest");
        let text = std::str::from_utf8(&out).unwrap();
        assert!(text.contains("Via: SIP/2.0/TCP 192.0.2.10:5060;branch=z9hG4bKsptest\r\n"));
        // Double Record-Route: TCP side on top, UDP side below (RFC 5658).
        assert!(text.contains(
            "Record-Route: <sip:192.0.2.10:5060;transport=tcp;lr>\r\nRecord-Route: <sip:192.0.2.10:5060;lr>\r\n"
        ));
        assert!(text.contains("rport=40000;received=10.9.9.9"));
        assert!(text.contains("Max-Forwards: 69\r\n"));
    }

    #[test]
    fn upstream_request_follows_request_uri_and_static_routes() {
        let m = req("", "sip:alice@203.0.113.5:5070;transport=tcp");
        let Decision::Forward(plan) = decide_from(&m, "192.0.2.11:5060", true) else {
            panic!()
        };
        assert_eq!(
            plan.destination,
            Destination::Host("203.0.113.5:5070;transport=tcp".parse().unwrap())
        );
        let m = req("", "sip:x@partner.example");
        let Decision::Forward(plan) = decide_from(&m, "10.9.9.9:5060", false) else {
            panic!()
        };
        assert_eq!(
            plan.destination,
            Destination::Host("198.51.100.1:5060;transport=tcp".parse().unwrap())
        );
    }

    #[test]
    fn loose_routing_removes_our_route_entries() {
        let m = req(
            "Route: <sip:192.0.2.10;lr>, <sip:192.0.2.10:5060;transport=tcp;lr>\r\nRoute: <sip:203.0.113.9;lr>\r\n",
            "sip:bob@203.0.113.1",
        );
        let Decision::Forward(plan) = decide_from(&m, "10.9.9.9:5060", false) else {
            panic!()
        };
        assert_eq!(
            plan.destination,
            Destination::Host("203.0.113.9".parse().unwrap())
        );
        let out = plan.build(&m, &identity(), Transport::Udp, "z9hG4bKspx");
        let text = std::str::from_utf8(&out).unwrap();
        assert!(text.contains("\r\nRoute: <sip:203.0.113.9;lr>\r\n"));
        assert!(!text.contains("192.0.2.10;lr>,"));
    }

    #[test]
    fn max_forwards_zero_and_bad() {
        let m = req("", "sip:b@y").clone();
        let zero = Message::parse(
            Bytes::from(
                String::from_utf8_lossy(m.bytes()).replace("Max-Forwards: 70", "Max-Forwards: 0"),
            ),
            Framing::Datagram,
            &Limits::default(),
        )
        .unwrap();
        assert_eq!(code(&decide_from(&zero, "10.0.0.1:5060", false)), 483);
        let big = Message::parse(
            Bytes::from(
                String::from_utf8_lossy(m.bytes()).replace("Max-Forwards: 70", "Max-Forwards: 300"),
            ),
            Framing::Datagram,
            &Limits::default(),
        )
        .unwrap();
        assert_eq!(code(&decide_from(&big, "10.0.0.1:5060", false)), 400);
    }

    /// `msg` as it comes back after passing this proxy once from `src`: our Via (with the
    /// loop hash of the first pass) under the new top Via, and `routes` as its Route set.
    fn back_again(first: &Message, src: &str, ruri: &str, routes: &str) -> Message {
        let hop = Hop {
            transport: Transport::Udp,
            source: src.parse::<SocketAddr>().unwrap().ip(),
        };
        let ours = format!(
            "Via: SIP/2.0/UDP 192.0.2.10:5060;branch={}\r\n{routes}",
            new_branch(loop_hash(first, hop))
        );
        req(&ours, ruri)
    }

    #[test]
    fn an_identical_request_back_from_the_same_hop_is_a_loop() {
        let first = req("", "sip:bob@y");
        let looped = back_again(&first, "10.0.0.1:5060", "sip:bob@y", "");
        assert_eq!(code(&decide_from(&looped, "10.0.0.1:5060", false)), 482);
    }

    #[test]
    fn a_changed_request_uri_is_a_spiral() {
        let first = req("", "sip:bob@y");
        let spiral = back_again(&first, "10.0.0.1:5060", "sip:bob@elsewhere", "");
        assert_eq!(code(&decide_from(&spiral, "10.0.0.1:5060", false)), 1);
    }

    #[test]
    fn a_changed_route_set_is_a_spiral() {
        // Phone A -> proxy -> registrar -> proxy -> phone B: the in-dialog BYE keeps its
        // Request-URI; the registrar removed its own Route entry on the way.
        let routes = "Route: <sip:192.0.2.10;lr>, <sip:192.0.2.99;lr>, <sip:tok@192.0.2.10;lr>\r\n";
        let first = req(routes, "sip:bob@203.0.113.7");
        let second = back_again(
            &first,
            "10.0.0.1:5060",
            "sip:bob@203.0.113.7",
            "Route: <sip:tok@192.0.2.10;lr>\r\n",
        );
        assert_eq!(code(&decide_from(&second, "10.0.0.1:5060", false)), 1);
        // The same Route set back again is a loop.
        let looped = back_again(&first, "10.0.0.1:5060", "sip:bob@203.0.113.7", routes);
        assert_eq!(code(&decide_from(&looped, "10.0.0.1:5060", false)), 482);
    }

    #[test]
    fn the_same_request_from_another_hop_is_a_spiral() {
        // Forwarded to the registrar by a phone's request, sent back by the registrar: the
        // proxy routes a request from upstream differently, so it is not a loop.
        let first = req("", "sip:bob@y");
        let from_registrar = back_again(&first, "10.0.0.1:5060", "sip:bob@y", "");
        assert_eq!(
            code(&decide_from(&from_registrar, "192.0.2.11:5060", true)),
            1
        );
    }

    #[test]
    fn a_route_naming_the_pool_is_ours_and_removed() {
        let m = req(
            "Route: <sip:pool.example.com:5060;lr>\r\n",
            "sip:bob@anything.example",
        );
        let Decision::Forward(plan) = decide_from(&m, "10.9.9.9:40000", false) else {
            panic!()
        };
        assert_eq!(plan.destination, Destination::Pair(0));
        let out = plan.build(&m, &identity(), Transport::Udp, "z9hG4bKsptest");
        assert!(!std::str::from_utf8(&out)
            .unwrap()
            .contains("Route: <sip:pool"));
        // Without a port (found by SRV) too; with a port we do not listen on, it is not us.
        let m = req(
            "Route: <sip:POOL.example.com;transport=tcp;lr>\r\n",
            "sip:b@x",
        );
        let Decision::Forward(plan) = decide_from(&m, "10.9.9.9:40000", false) else {
            panic!()
        };
        assert_eq!(plan.destination, Destination::Pair(0));
        let m = req("Route: <sip:pool.example.com:5999;lr>\r\n", "sip:b@x");
        let Decision::Forward(plan) = decide_from(&m, "10.9.9.9:40000", false) else {
            panic!()
        };
        assert!(matches!(plan.destination, Destination::Host(h) if h.port == 5999));
    }

    #[test]
    fn other_rejections() {
        assert_eq!(
            code(&decide_from(&req("", "soap.beep://x"), "10.0.0.1:1", false)),
            416
        );
        assert_eq!(
            code(&decide_from(
                &req("", "sip:a@b?Route=x"),
                "10.0.0.1:1",
                false
            )),
            400
        );
        assert_eq!(
            code(&decide_from(
                &req("Proxy-Require: foo\r\n", "sip:a@b"),
                "10.0.0.1:1",
                false
            )),
            420
        );
        assert_eq!(
            code(&decide_from(
                &req("To: <sip:c@d>\r\n", "sip:a@b"),
                "10.0.0.1:1",
                false
            )),
            400
        );
    }

    #[test]
    fn options_to_us_is_answered() {
        let s = "OPTIONS sip:192.0.2.10 SIP/2.0\r\nVia: SIP/2.0/UDP 192.0.2.11;branch=z9hG4bKo\r\nFrom: <sip:p@x>;tag=1\r\nTo: <sip:192.0.2.10>\r\nCall-ID: o\r\nCSeq: 1 OPTIONS\r\nContent-Length: 0\r\n\r\n";
        let m = Message::parse(Bytes::from(s), Framing::Datagram, &Limits::default()).unwrap();
        assert_eq!(code(&decide_from(&m, "192.0.2.11:5060", true)), 200);
    }

    #[test]
    fn transaction_keys() {
        let m = req("", "sip:b@y");
        assert_eq!(server_key(&m).unwrap(), "z9hG4bKabc|10.1.1.1:5060|INVITE");
    }
}
