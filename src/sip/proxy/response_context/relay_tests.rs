//! A request relayed to the instance of the pool that holds a phone's flow, with simulated
//! time: relayed answers come back as any others; an instance that cannot be reached, or
//! stays silent past the relay timer, means 430 Flow Failed at once, and a late answer to
//! an INVITE given up is ended (no ghost call).

use std::net::SocketAddr;
use std::time::{Duration, Instant};

use super::*;
use crate::sip::addr::{Listener, Target};
use crate::sip::flow::FlowKeys;
use crate::sip::proxy::{decide, PoolSides, Received, Router};
use crate::sip::transport::Transport;

const KEY: &[u8] = b"the pool's shared flow-token key";
const RELAY: Duration = Duration::from_millis(300);

/// Pairs are not involved in a relay: nothing is up.
struct NoPairs;

impl PairView for NoPairs {
    fn active(&self, _: usize) -> Option<Member> {
        None
    }
    fn is_up(&self, _: usize, _: Member) -> bool {
        false
    }
    fn server(&self, _: usize, _: Member) -> Option<HostPort> {
        None
    }
    fn member_at(&self, _: SocketAddr) -> Option<(usize, Member)> {
        None
    }
}

fn instance(ip: &str, epoch: u32) -> LocalIdentity {
    let udp: SocketAddr = format!("{ip}:5060").parse().unwrap();
    LocalIdentity::new(ip, vec![Listener::new(Transport::Udp, udp)])
        .with_pool("pool.example.com", PoolSides::Both)
        .with_flows(FlowKeys::new(KEY, epoch).with_instance(Some(Target {
            transport: Transport::Udp,
            addr: udp,
        })))
}

/// `method` from the server toward a phone whose flow instance A (10.0.0.5) holds, as it
/// reaches instance B; B's context after `decide`, and its actions so far.
fn at_b(method: &str, now: Instant) -> (ResponseContext, Vec<Action>, LocalIdentity) {
    at_b_over(method, Transport::Tls, now)
}

/// As [`at_b`], the phone's flow at A over `flow`.
fn at_b_over(
    method: &str,
    flow: Transport,
    now: Instant,
) -> (ResponseContext, Vec<Action>, LocalIdentity) {
    let a = instance("10.0.0.5", 1);
    let b = instance("10.0.0.6", 2);
    let conn = if flow == Transport::Udp { 0 } else { 42 };
    let token = a
        .flows()
        .token(flow, conn, "198.51.100.7:40000".parse().unwrap());
    let to_tag = if method == "INVITE" { "" } else { ";tag=p" };
    let msg = crate::sip::message::parse_for_test(&format!(
        "{method} sip:phone@198.51.100.7:40000;transport=tls SIP/2.0\r\n\
         Via: SIP/2.0/UDP 192.0.2.11:5060;branch=z9hG4bKs1\r\nMax-Forwards: 70\r\n\
         Route: <sip:pool.example.com;lr>, <sip:{token}@pool.example.com;transport=tls;lr>\r\n\
         From: <sip:agent@site.example>;tag=s\r\nTo: <sip:phone@site.example>{to_tag}\r\n\
         Call-ID: relay1\r\nCSeq: 5 {method}\r\nContact: <sip:agent@192.0.2.11>\r\n\
         Content-Length: 0\r\n\r\n"
    ));
    let decision = decide(
        Received {
            msg: &msg,
            transport: Transport::Udp,
            source: "192.0.2.11:5060".parse().unwrap(),
            from_upstream: true,
            local: None,
            flow_token: None,
        },
        &b,
        &Router {
            pairs: Vec::new(),
            routes: Vec::new(),
            serving: 0,
        },
    );
    let mut ctx = ResponseContext::new(msg, false, Timers::default(), Duration::from_secs(1))
        .with_relay_timeout(RELAY);
    ctx.handle_request(decision, &NoPairs, now);
    let actions = drain(&mut ctx);
    (ctx, actions, b)
}

fn drain(ctx: &mut ResponseContext) -> Vec<Action> {
    std::iter::from_fn(|| ctx.poll_action()).collect()
}

fn to_client(actions: &[Action]) -> Vec<u16> {
    actions
        .iter()
        .filter_map(|a| match a {
            Action::ToClient { code, .. } => Some(*code),
            _ => None,
        })
        .collect()
}

/// Starts the branch toward A; returns its branch id.
fn start(ctx: &mut ResponseContext, actions: &[Action], b: &LocalIdentity, now: Instant) -> String {
    let to_a = actions.iter().any(|a| {
        matches!(a, Action::Locate(hp) if hp.host == "10.0.0.5" && hp.port == 5060 && hp.explicit_port)
    });
    assert!(to_a, "not relayed to A: {actions:?}");
    let (key, bytes) = ctx
        .start_branch(Transport::Udp.into(), b, &NoPairs, now)
        .unwrap();
    let text = String::from_utf8_lossy(&bytes);
    assert!(text.contains("Route: <sip:10.0.0.5:5060;lr>\r\n"), "{text}");
    key.branch().to_string()
}

fn response(code: u16, branch: &str, method: &str) -> Message {
    crate::sip::message::parse_for_test(&format!(
        "SIP/2.0 {code} Whatever\r\nVia: SIP/2.0/UDP 10.0.0.6:5060;branch={branch}\r\n\
         Via: SIP/2.0/UDP 192.0.2.11:5060;branch=z9hG4bKs1\r\nFrom: <sip:agent@site.example>;tag=s\r\n\
         To: <sip:phone@site.example>;tag=p\r\nCall-ID: relay1\r\nCSeq: 5 {method}\r\n\
         Contact: <sip:phone@198.51.100.7:40000;transport=tls>\r\nContent-Length: 0\r\n\r\n"
    ))
}

fn respond_on(ctx: &mut ResponseContext, msg: &Message, now: Instant) {
    let key = ClientKey::of_response(msg).unwrap();
    ctx.handle_response(&key, msg, &NoPairs, now);
}

#[test]
fn the_holding_instances_answer_is_relayed() {
    let now = Instant::now();
    let (mut ctx, actions, b) = at_b("BYE", now);
    let branch = start(&mut ctx, &actions, &b, now);
    respond_on(&mut ctx, &response(200, &branch, "BYE"), now + RELAY / 2);
    assert_eq!(to_client(&drain(&mut ctx)), [200]);
    // Well past the relay timer: nothing more.
    ctx.handle_timeout(&NoPairs, now + RELAY * 2);
    assert_eq!(to_client(&drain(&mut ctx)), Vec::<u16>::new());
}

#[test]
fn an_unreachable_holding_instance_is_430_at_once() {
    let now = Instant::now();
    let (mut ctx, actions, b) = at_b("BYE", now);
    start(&mut ctx, &actions, &b, now);
    // ICMP port unreachable from A's address: A is gone, and its flows with it.
    ctx.handle_transport_error(false, &NoPairs, now);
    assert_eq!(to_client(&drain(&mut ctx)), [430]);
    let (mut ctx, actions, _) = at_b("BYE", now);
    assert!(matches!(actions.first(), Some(Action::Locate(_))));
    ctx.handle_branch_failed(&NoPairs, now);
    assert_eq!(to_client(&drain(&mut ctx)), [430]);
}

#[test]
fn a_silent_holding_instance_is_430_after_the_relay_timer() {
    let now = Instant::now();
    let (mut ctx, actions, b) = at_b("BYE", now);
    start(&mut ctx, &actions, &b, now);
    assert_eq!(ctx.poll_timeout(), Some(now + RELAY), "before Timer E (T1)");
    ctx.handle_timeout(&NoPairs, now + RELAY - Duration::from_millis(1));
    assert_eq!(to_client(&drain(&mut ctx)), Vec::<u16>::new());
    ctx.handle_timeout(&NoPairs, now + RELAY);
    let actions = drain(&mut ctx);
    assert_eq!(to_client(&actions), [430]);
    assert!(actions.iter().any(|a| matches!(a, Action::BranchGone(_))));
}

#[test]
fn a_late_2xx_to_an_invite_given_up_is_acked_and_ended() {
    let now = Instant::now();
    let (mut ctx, actions, b) = at_b("INVITE", now);
    assert_eq!(to_client(&actions), Vec::<u16>::new());
    let branch = start(&mut ctx, &actions, &b, now);
    let trying = now + Timers::default().trying;
    ctx.handle_timeout(&NoPairs, trying);
    assert_eq!(
        to_client(&drain(&mut ctx)),
        [100],
        "nothing back within 200 ms"
    );
    ctx.handle_timeout(&NoPairs, now + RELAY);
    assert_eq!(to_client(&drain(&mut ctx)), [430]);
    // A was only slow: its phone answers after all. Nobody will use that dialog.
    respond_on(&mut ctx, &response(200, &branch, "INVITE"), now + RELAY * 2);
    let actions = drain(&mut ctx);
    let sent: Vec<String> = actions
        .iter()
        .filter_map(|a| match a {
            Action::ToBranch { bytes, .. } => Some(String::from_utf8_lossy(bytes).into_owned()),
            _ => None,
        })
        .collect();
    assert!(sent.iter().any(|m| m.starts_with("ACK ")), "{sent:?}");
    assert!(sent.iter().any(|m| m.starts_with("BYE ")), "{sent:?}");
    assert_eq!(to_client(&actions), Vec::<u16>::new());
}

#[test]
fn a_udp_phone_is_sent_to_from_here_when_its_instance_is_gone() {
    let now = Instant::now();
    let (mut ctx, actions, b) = at_b_over("BYE", Transport::Udp, now);
    start(&mut ctx, &actions, &b, now);
    ctx.handle_transport_error(false, &NoPairs, now);
    let actions = drain(&mut ctx);
    assert_eq!(to_client(&actions), Vec::<u16>::new());
    let flow = actions.iter().find_map(|a| match a {
        Action::Flow(f) => Some(**f),
        _ => None,
    });
    assert_eq!(
        flow.map(|f| (f.transport, f.peer.to_string())),
        Some((Transport::Udp, "198.51.100.7:40000".to_string()))
    );
    let (_, bytes) = ctx
        .start_branch(Transport::Udp.into(), &b, &NoPairs, now)
        .unwrap();
    let text = String::from_utf8_lossy(&bytes);
    assert!(
        !text.contains("Route:"),
        "every entry of ours consumed: {text}"
    );
    // The phone answers B directly.
    let key = ctx.branch_key().unwrap().branch().to_string();
    respond_on(&mut ctx, &response(200, &key, "BYE"), now);
    assert_eq!(to_client(&drain(&mut ctx)), [200]);
}
