//! The response context with simulated time: every path of section 16.7 without a socket.

use std::cell::Cell;
use std::net::SocketAddr;
use std::time::{Duration, Instant};

use super::*;
use crate::sip::addr::Listener;
use crate::sip::message::Message;
use crate::sip::proxy::{decide, Pair, Received, Router};
use crate::sip::transport::Transport;

const PRIMARY: &str = "192.0.2.11:5060";
const BACKUP: &str = "192.0.2.12:5060";
const FAILOVER: Duration = Duration::from_millis(1000);

/// Pair 0: PRIMARY and BACKUP, each up or down.
struct Pairs {
    up: [Cell<bool>; 2],
}

impl Pairs {
    fn both_up() -> Pairs {
        Pairs {
            up: [Cell::new(true), Cell::new(true)],
        }
    }
}

impl PairView for Pairs {
    fn active(&self, _pair: usize) -> Option<Member> {
        if self.up[0].get() {
            Some(Member::Primary)
        } else if self.up[1].get() {
            Some(Member::Backup)
        } else {
            None
        }
    }
    fn is_up(&self, _pair: usize, m: Member) -> bool {
        self.up[m as usize].get()
    }
    fn server(&self, _pair: usize, m: Member) -> Option<HostPort> {
        Some(match m {
            Member::Primary => PRIMARY.parse().unwrap(),
            Member::Backup => BACKUP.parse().unwrap(),
        })
    }
    fn member_at(&self, addr: SocketAddr) -> Option<(usize, Member)> {
        match addr.to_string().as_str() {
            PRIMARY => Some((0, Member::Primary)),
            BACKUP => Some((0, Member::Backup)),
            _ => None,
        }
    }
}

fn identity() -> LocalIdentity {
    LocalIdentity::new(
        "192.0.2.10",
        vec![Listener::new(
            Transport::Udp,
            "192.0.2.10:5060".parse().unwrap(),
        )],
    )
}

fn router() -> Router {
    Router {
        pairs: vec![Pair {
            name: "p".into(),
            domain: None,
            primary: PRIMARY.parse().unwrap(),
            backup: BACKUP.parse().unwrap(),
            failback: false,
        }],
        routes: Vec::new(),
        serving: 0,
    }
}

fn parse(s: &str) -> Message {
    crate::sip::message::parse_for_test(s)
}

fn request(method: &str) -> Message {
    parse(&format!(
        "{method} sip:bob@example.com SIP/2.0\r\nVia: SIP/2.0/UDP 10.0.0.1:5060;branch=z9hG4bKc1\r\n\
         Max-Forwards: 70\r\nFrom: <sip:alice@example.com>;tag=a1\r\nTo: <sip:bob@example.com>\r\n\
         Call-ID: rc1\r\nCSeq: 1 {method}\r\nContact: <sip:alice@10.0.0.1>\r\nContent-Length: 0\r\n\r\n"
    ))
}

/// A response on `branch` to the request as forwarded.
fn response(code: u16, branch: &str, method: &str) -> Message {
    parse(&format!(
        "SIP/2.0 {code} Whatever\r\nVia: SIP/2.0/UDP 192.0.2.10:5060;branch={branch}\r\n\
         Via: SIP/2.0/UDP 10.0.0.1:5060;branch=z9hG4bKc1\r\nFrom: <sip:alice@example.com>;tag=a1\r\n\
         To: <sip:bob@example.com>;tag=b1\r\nCall-ID: rc1\r\nCSeq: 1 {method}\r\n\
         Contact: <sip:bob@192.0.2.11>\r\nContent-Length: 0\r\n\r\n"
    ))
}

/// A context for `method` from a phone, after `decide`, with all its actions so far.
fn context(method: &str, pairs: &Pairs, now: Instant) -> (ResponseContext, Vec<Action>) {
    context_for(request(method), pairs, now)
}

/// A context for `msg` from a phone (UDP), after `decide`, with all its actions so far.
fn context_for(msg: Message, pairs: &Pairs, now: Instant) -> (ResponseContext, Vec<Action>) {
    context_with(msg, Timers::default(), pairs, now)
}

/// [`context_for`] with these timers.
fn context_with(
    msg: Message,
    timers: Timers,
    pairs: &Pairs,
    now: Instant,
) -> (ResponseContext, Vec<Action>) {
    let decision = decide(
        Received {
            msg: &msg,
            transport: Transport::Udp,
            source: "10.0.0.1:5060".parse().unwrap(),
            from_upstream: false,
            local: None,
            flow_token: None,
        },
        &identity(),
        &router(),
    );
    let mut ctx = ResponseContext::new(msg, false, timers, FAILOVER);
    ctx.handle_request(decision, pairs, now);
    let actions = drain(&mut ctx);
    (ctx, actions)
}

/// Feeds a response to the context by the client key it names, as the dispatcher does.
fn respond_on(ctx: &mut ResponseContext, msg: &Message, pairs: &Pairs, now: Instant) {
    let key = ClientKey::of_response(msg).unwrap();
    ctx.handle_response(&key, msg, pairs, now);
}

fn drain(ctx: &mut ResponseContext) -> Vec<Action> {
    std::iter::from_fn(|| ctx.poll_action()).collect()
}

/// Codes sent to the client among `actions`.
fn to_client(actions: &[Action]) -> Vec<(u16, Origin)> {
    actions
        .iter()
        .filter_map(|a| match a {
            Action::ToClient { code, origin, .. } => Some((*code, *origin)),
            _ => None,
        })
        .collect()
}

fn on_branch(actions: &[Action]) -> Vec<String> {
    actions
        .iter()
        .filter_map(|a| match a {
            Action::ToBranch { bytes, .. } => Some(String::from_utf8_lossy(bytes).into_owned()),
            _ => None,
        })
        .collect()
}

/// Locates and starts the branch the context asked for; returns its branch id.
fn start(ctx: &mut ResponseContext, actions: &[Action], now: Instant) -> String {
    assert!(
        actions.iter().any(|a| matches!(a, Action::Locate(_))),
        "{actions:?}"
    );
    let (key, bytes) = ctx
        .start_branch(Transport::Udp.into(), &identity(), &Pairs::both_up(), now)
        .unwrap();
    let text = String::from_utf8_lossy(&bytes);
    assert!(text.contains(key.branch()));
    key.branch().to_string()
}

fn located(actions: &[Action]) -> Option<String> {
    actions.iter().find_map(|a| match a {
        Action::Locate(hp) => Some(format!("{}:{}", hp.host, hp.port)),
        _ => None,
    })
}

#[test]
fn invite_goes_to_the_active_member_and_gets_100_when_nothing_came_back_in_200_ms() {
    let pairs = Pairs::both_up();
    let t0 = Instant::now();
    let (mut ctx, actions) = context("INVITE", &pairs, t0);
    assert_eq!(to_client(&actions), []);
    assert_eq!(located(&actions).as_deref(), Some(PRIMARY));
    start(&mut ctx, &actions, t0);
    let trying = t0 + Duration::from_millis(200);
    assert_eq!(ctx.poll_timeout(), Some(trying));
    ctx.handle_timeout(&pairs, trying - Duration::from_millis(1));
    assert_eq!(to_client(&drain(&mut ctx)), []);
    ctx.handle_timeout(&pairs, trying);
    assert_eq!(to_client(&drain(&mut ctx)), [(100, Origin::Local)]);
    // Once: the next timer is the branch's (Timer A, T1).
    assert_eq!(ctx.poll_timeout(), Some(t0 + Duration::from_millis(500)));
    ctx.handle_timeout(&pairs, t0 + Duration::from_millis(500));
    assert_eq!(to_client(&drain(&mut ctx)), []);
}

#[test]
fn a_provisional_within_200_ms_takes_the_place_of_100_trying() {
    let pairs = Pairs::both_up();
    let t0 = Instant::now();
    let (mut ctx, actions) = context("INVITE", &pairs, t0);
    let b = start(&mut ctx, &actions, t0);
    let t = t0 + Duration::from_millis(199);
    respond_on(&mut ctx, &response(100, &b, "INVITE"), &pairs, t);
    // The server's own 100 is not relayed (section 16.7) and quenches nothing upstream.
    assert_eq!(to_client(&drain(&mut ctx)), []);
    assert_eq!(ctx.poll_timeout(), Some(t0 + Duration::from_millis(200)));
    respond_on(&mut ctx, &response(180, &b, "INVITE"), &pairs, t);
    assert_eq!(to_client(&drain(&mut ctx)), [(180, Origin::Relayed)]);
    assert!(ctx
        .poll_timeout()
        .is_some_and(|next| next > t0 + Duration::from_secs(100)));
    ctx.handle_timeout(&pairs, t0 + Duration::from_millis(200));
    respond_on(&mut ctx, &response(200, &b, "INVITE"), &pairs, t);
    assert_eq!(to_client(&drain(&mut ctx)), [(200, Origin::Relayed)]);
}

#[test]
fn a_final_within_200_ms_goes_without_100_trying() {
    let pairs = Pairs::both_up();
    let t0 = Instant::now();
    let (mut ctx, actions) = context("INVITE", &pairs, t0);
    let b = start(&mut ctx, &actions, t0);
    respond_on(&mut ctx, &response(486, &b, "INVITE"), &pairs, t0);
    ctx.handle_timeout(&pairs, t0 + Duration::from_millis(200));
    assert_eq!(to_client(&drain(&mut ctx)), [(486, Origin::Relayed)]);
}

#[test]
fn an_invite_retransmitted_before_any_answer_gets_100_at_once() {
    let pairs = Pairs::both_up();
    let t0 = Instant::now();
    let (mut ctx, actions) = context("INVITE", &pairs, t0);
    start(&mut ctx, &actions, t0);
    let t = t0 + Duration::from_millis(50);
    assert!(!ctx.handle_retransmission(&request("INVITE"), t));
    assert_eq!(to_client(&drain(&mut ctx)), [(100, Origin::Local)]);
    // Again: the 100 is what the server transaction resends now, and no timer sends more.
    assert!(!ctx.handle_retransmission(&request("INVITE"), t));
    assert!(matches!(
        drain(&mut ctx).as_slice(),
        [Action::ResendToClient(_)]
    ));
    ctx.handle_timeout(&pairs, t0 + Duration::from_millis(200));
    assert_eq!(to_client(&drain(&mut ctx)), []);
}

#[test]
fn with_no_trying_delay_the_100_goes_at_once() {
    let pairs = Pairs::both_up();
    let timers = Timers {
        trying: Duration::ZERO,
        ..Timers::default()
    };
    let (_, actions) = context_with(request("INVITE"), timers, &pairs, Instant::now());
    assert_eq!(to_client(&actions), [(100, Origin::Local)]);
    assert_eq!(located(&actions).as_deref(), Some(PRIMARY));
}

#[test]
fn an_invite_answered_here_gets_its_final_response_alone() {
    let pairs = Pairs::both_up();
    let now = Instant::now();
    let text = String::from_utf8_lossy(request("INVITE").bytes()).into_owned();
    let msg = parse(&text.replace("Max-Forwards: 70", "Max-Forwards: 0"));
    let (mut ctx, actions) = context_for(msg, &pairs, now);
    assert_eq!(to_client(&actions), [(483, Origin::Local)]);
    assert_eq!(
        ctx.poll_timeout()
            .filter(|t| *t <= now + Duration::from_millis(200)),
        None
    );
    ctx.handle_timeout(&pairs, now + Duration::from_millis(200));
    assert_eq!(to_client(&drain(&mut ctx)), []);
}

#[test]
fn provisional_and_final_are_relayed_and_a_non_2xx_is_acked() {
    let pairs = Pairs::both_up();
    let now = Instant::now();
    let (mut ctx, actions) = context("INVITE", &pairs, now);
    let b = start(&mut ctx, &actions, now);
    respond_on(&mut ctx, &response(180, &b, "INVITE"), &pairs, now);
    respond_on(&mut ctx, &response(486, &b, "INVITE"), &pairs, now);
    let actions = drain(&mut ctx);
    assert_eq!(
        to_client(&actions),
        [(180, Origin::Relayed), (486, Origin::Relayed)]
    );
    let sent = on_branch(&actions);
    assert_eq!(sent.len(), 1);
    assert!(
        sent[0].starts_with("ACK sip:bob@example.com"),
        "{}",
        sent[0]
    );
    assert!(sent[0].contains(&b));
}

#[test]
fn a_503_is_never_relayed_the_other_member_gets_the_request() {
    let pairs = Pairs::both_up();
    let now = Instant::now();
    let (mut ctx, actions) = context("INVITE", &pairs, now);
    let b = start(&mut ctx, &actions, now);
    respond_on(&mut ctx, &response(503, &b, "INVITE"), &pairs, now);
    let actions = drain(&mut ctx);
    assert!(to_client(&actions).is_empty());
    assert_eq!(located(&actions).as_deref(), Some(BACKUP));
    assert!(actions.contains(&Action::BranchGone(ClientKey::new(&b))));
    assert!(actions.contains(&Action::Evidence {
        pair: 0,
        member: Member::Primary,
        evidence: Evidence::Suspect
    }));
    // The backup answers 503 too: no third try, and 500 goes to the client (16.7 step 6).
    let b2 = start(&mut ctx, &actions, now);
    respond_on(&mut ctx, &response(503, &b2, "INVITE"), &pairs, now);
    let actions = drain(&mut ctx);
    assert_eq!(to_client(&actions), [(500, Origin::Local)]);
    assert!(located(&actions).is_none());
}

#[test]
fn the_best_failure_of_the_members_tried_is_answered() {
    // The primary times out (408), the backup refuses (a transport error, a 503): the
    // client gets 408, the lower class (16.7 step 6).
    let pairs = Pairs::both_up();
    let t0 = Instant::now();
    let (mut ctx, actions) = context("OPTIONS", &pairs, t0);
    let b = start(&mut ctx, &actions, t0);
    respond_on(&mut ctx, &response(100, &b, "OPTIONS"), &pairs, t0);
    let mut actions = Vec::new();
    while let Some(next) = ctx.poll_timeout() {
        ctx.handle_timeout(&pairs, next);
        actions.extend(drain(&mut ctx));
        if located(&actions).is_some() {
            break;
        }
    }
    assert_eq!(located(&actions).as_deref(), Some(BACKUP));
    start(&mut ctx, &actions, t0);
    ctx.handle_branch_failed(&pairs, t0);
    assert_eq!(to_client(&drain(&mut ctx)), [(408, Origin::Local)]);
}

#[test]
fn when_the_other_member_refuses_the_slow_one_is_waited_for_again() {
    let pairs = Pairs::both_up();
    let (mut ctx, b, t) = failed_over(&pairs, Instant::now());
    // The backup's port is closed: nothing is answered yet, the primary may still answer.
    ctx.handle_branch_failed(&pairs, t);
    let actions = drain(&mut ctx);
    assert!(to_client(&actions).is_empty(), "{actions:?}");
    assert_eq!(ctx.branch_key(), Some(&ClientKey::new(&b)));
    // It does: its answer is the call's, relayed as any.
    respond_on(&mut ctx, &response(200, &b, "INVITE"), &pairs, t);
    assert_eq!(to_client(&drain(&mut ctx)), [(200, Origin::Relayed)]);
}

#[test]
fn a_503_with_the_other_member_down_gives_500() {
    let pairs = Pairs::both_up();
    let now = Instant::now();
    let (mut ctx, actions) = context("OPTIONS", &pairs, now);
    let b = start(&mut ctx, &actions, now);
    pairs.up[1].set(false);
    respond_on(&mut ctx, &response(503, &b, "OPTIONS"), &pairs, now);
    assert_eq!(to_client(&drain(&mut ctx)), [(500, Origin::Local)]);
}

#[test]
fn no_answer_before_the_failover_timer_retries_on_the_other_member() {
    let pairs = Pairs::both_up();
    let t0 = Instant::now();
    let (mut ctx, actions) = context("INVITE", &pairs, t0);
    let b = start(&mut ctx, &actions, t0);
    assert_eq!(ctx.poll_timeout(), Some(t0 + Duration::from_millis(200)));
    ctx.handle_timeout(&pairs, t0 + Duration::from_millis(200));
    assert_eq!(to_client(&drain(&mut ctx)), [(100, Origin::Local)]);
    assert_eq!(ctx.poll_timeout(), Some(t0 + Duration::from_millis(500)));
    let t = t0 + FAILOVER;
    ctx.handle_timeout(&pairs, t);
    let actions = drain(&mut ctx);
    assert_eq!(located(&actions).as_deref(), Some(BACKUP));
    assert!(actions.contains(&Action::Evidence {
        pair: 0,
        member: Member::Primary,
        evidence: Evidence::Unanswered { sent_at: t0 }
    }));
    // The silent primary may still answer: its branch stays ours (no BranchGone).
    assert!(!actions.contains(&Action::BranchGone(ClientKey::new(&b))));
    let b2 = start(&mut ctx, &actions, t);
    respond_on(&mut ctx, &response(200, &b2, "INVITE"), &pairs, t);
    assert_eq!(to_client(&drain(&mut ctx)), [(200, Origin::Relayed)]);
}

/// A context whose INVITE went to the primary, which stayed silent past the failover
/// timer: the request now goes to the backup. Returns the given-up branch.
fn failed_over(pairs: &Pairs, t0: Instant) -> (ResponseContext, String, Instant) {
    let (mut ctx, actions) = context("INVITE", pairs, t0);
    let b = start(&mut ctx, &actions, t0);
    let t = t0 + FAILOVER;
    ctx.handle_timeout(pairs, t);
    let actions = drain(&mut ctx);
    start(&mut ctx, &actions, t);
    (ctx, b, t)
}

#[test]
fn a_late_provisional_on_a_given_up_branch_is_cancelled() {
    let pairs = Pairs::both_up();
    let (mut ctx, b, t) = failed_over(&pairs, Instant::now());
    respond_on(&mut ctx, &response(180, &b, "INVITE"), &pairs, t);
    let actions = drain(&mut ctx);
    assert!(
        to_client(&actions).is_empty(),
        "the caller hears nothing of it"
    );
    assert!(actions.contains(&Action::Ghost(GhostOutcome::Cancelled)));
    let sent: Vec<_> = actions
        .iter()
        .filter_map(|a| match a {
            Action::ToBranch { key, bytes } if key.branch() == b => {
                Some(String::from_utf8_lossy(bytes).into_owned())
            }
            _ => None,
        })
        .collect();
    assert_eq!(sent.len(), 1);
    assert!(
        sent[0].starts_with("CANCEL sip:bob@example.com"),
        "{sent:?}"
    );
    assert!(sent[0].contains(&format!("branch={b}")));
    // Its 487 gets the hop-by-hop ACK; a second provisional no second CANCEL.
    respond_on(&mut ctx, &response(183, &b, "INVITE"), &pairs, t);
    respond_on(&mut ctx, &response(200, &b, "CANCEL"), &pairs, t);
    respond_on(&mut ctx, &response(487, &b, "INVITE"), &pairs, t);
    let sent = on_branch(&drain(&mut ctx));
    assert_eq!(sent.len(), 1);
    assert!(sent[0].starts_with("ACK sip:bob@example.com"), "{sent:?}");
}

#[test]
fn a_late_2xx_on_a_given_up_branch_is_acked_and_ended() {
    let pairs = Pairs::both_up();
    let (mut ctx, b, t) = failed_over(&pairs, Instant::now());
    respond_on(&mut ctx, &response(200, &b, "INVITE"), &pairs, t);
    let actions = drain(&mut ctx);
    assert!(
        to_client(&actions).is_empty(),
        "the caller's call is on the backup"
    );
    assert!(actions.contains(&Action::Ghost(GhostOutcome::Ended)));
    let bye_key = ClientKey::new(&format!("{b}b"));
    assert!(actions.contains(&Action::Track(bye_key.clone())));
    let sent = on_branch(&actions);
    assert_eq!(sent.len(), 2, "{sent:?}");
    // The ACK and the BYE go to the 2xx's Contact, in its dialog, on branches of their own.
    assert!(
        sent[0].starts_with("ACK sip:bob@192.0.2.11 SIP/2.0"),
        "{}",
        sent[0]
    );
    assert!(sent[0].contains("CSeq: 1 ACK\r\n") && sent[0].contains(";tag=b1"));
    assert!(
        sent[1].starts_with("BYE sip:bob@192.0.2.11 SIP/2.0"),
        "{}",
        sent[1]
    );
    assert!(sent[1].contains("CSeq: 2 BYE\r\n"));
    assert!(sent[1].contains(&format!("branch={b}b")));
    // A retransmitted 2xx is ACKed again, without a second BYE; the BYE's 200 ends it.
    respond_on(&mut ctx, &response(200, &b, "INVITE"), &pairs, t);
    let again = on_branch(&drain(&mut ctx));
    assert_eq!(again.len(), 1);
    assert!(again[0].starts_with("ACK "));
    let mut bye_ok = response(200, &format!("{b}b"), "BYE");
    bye_ok = parse(&String::from_utf8_lossy(bye_ok.bytes()).replace("CSeq: 1 BYE", "CSeq: 2 BYE"));
    respond_on(&mut ctx, &bye_ok, &pairs, t);
    assert!(drain(&mut ctx).is_empty());
    // Once Timer B of the given-up INVITE has run, its keys are forgotten.
    let mut gone = Vec::new();
    while let Some(next) = ctx.poll_timeout() {
        if next > t + Duration::from_secs(40) {
            break;
        }
        ctx.handle_timeout(&pairs, next);
        gone.extend(drain(&mut ctx).into_iter().filter_map(|a| match a {
            Action::BranchGone(k) => Some(k),
            _ => None,
        }));
    }
    assert!(
        gone.contains(&ClientKey::new(&b)) && gone.contains(&bye_key),
        "{gone:?}"
    );
}

#[test]
fn a_member_that_answers_something_is_not_failed_over_by_the_timer() {
    let pairs = Pairs::both_up();
    let t0 = Instant::now();
    let (mut ctx, actions) = context("INVITE", &pairs, t0);
    let b = start(&mut ctx, &actions, t0);
    respond_on(&mut ctx, &response(100, &b, "INVITE"), &pairs, t0);
    ctx.handle_timeout(&pairs, t0 + FAILOVER);
    let actions = drain(&mut ctx);
    assert!(located(&actions).is_none(), "{actions:?}");
}

#[test]
fn client_transaction_timeout_with_nothing_to_fail_over_to_is_408() {
    let pairs = Pairs::both_up();
    pairs.up[1].set(false);
    let t0 = Instant::now();
    let (mut ctx, actions) = context("OPTIONS", &pairs, t0);
    let b = start(&mut ctx, &actions, t0);
    respond_on(&mut ctx, &response(100, &b, "OPTIONS"), &pairs, t0);
    let mut t = t0;
    let mut seen = Vec::new();
    while let Some(next) = ctx.poll_timeout() {
        t = next;
        ctx.handle_timeout(&pairs, t);
        seen.extend(drain(&mut ctx));
        if ctx.is_done() || ctx.poll_linger(t).is_some() {
            break;
        }
    }
    assert!(seen.contains(&Action::UpstreamTimeout));
    assert_eq!(to_client(&seen), [(408, Origin::Local)]);
    assert_eq!(t, t0 + Timers::default().t1x64());
}

#[test]
fn cancel_before_a_provisional_waits_for_it() {
    let pairs = Pairs::both_up();
    let now = Instant::now();
    let (mut ctx, actions) = context("INVITE", &pairs, now);
    let b = start(&mut ctx, &actions, now);
    ctx.handle_cancel(now);
    assert!(
        drain(&mut ctx).is_empty(),
        "no CANCEL before a provisional (9.1)"
    );
    respond_on(&mut ctx, &response(180, &b, "INVITE"), &pairs, now);
    let actions = drain(&mut ctx);
    assert_eq!(to_client(&actions), [(180, Origin::Relayed)]);
    let sent = on_branch(&actions);
    assert!(
        sent[0].starts_with("CANCEL sip:bob@example.com"),
        "{sent:?}"
    );
    assert!(sent[0].contains(&b));
    // The 487 from the branch is relayed; the CANCEL's own 200 is absorbed.
    respond_on(&mut ctx, &response(200, &b, "CANCEL"), &pairs, now);
    respond_on(&mut ctx, &response(487, &b, "INVITE"), &pairs, now);
    assert_eq!(to_client(&drain(&mut ctx)), [(487, Origin::Relayed)]);
}

#[test]
fn cancel_after_a_provisional_goes_out_at_once_and_once() {
    let pairs = Pairs::both_up();
    let now = Instant::now();
    let (mut ctx, actions) = context("INVITE", &pairs, now);
    let b = start(&mut ctx, &actions, now);
    respond_on(&mut ctx, &response(183, &b, "INVITE"), &pairs, now);
    drain(&mut ctx);
    ctx.handle_cancel(now);
    ctx.handle_cancel(now);
    let sent = on_branch(&drain(&mut ctx));
    assert_eq!(sent.len(), 1);
    assert!(sent[0].starts_with("CANCEL "));
}

#[test]
fn cancel_before_any_branch_is_487() {
    let pairs = Pairs::both_up();
    let now = Instant::now();
    let (mut ctx, _) = context("INVITE", &pairs, now);
    ctx.handle_cancel(now);
    assert_eq!(to_client(&drain(&mut ctx)), [(487, Origin::Local)]);
    // A located target arriving after that sends nothing.
    assert!(ctx
        .start_branch(Transport::Udp.into(), &identity(), &Pairs::both_up(), now)
        .is_none());
}

#[test]
fn timer_c_cancels_then_answers_408() {
    let pairs = Pairs::both_up();
    let t0 = Instant::now();
    let (mut ctx, actions) = context("INVITE", &pairs, t0);
    let b = start(&mut ctx, &actions, t0);
    respond_on(&mut ctx, &response(180, &b, "INVITE"), &pairs, t0);
    drain(&mut ctx);
    let timers = Timers::default();
    assert_eq!(ctx.poll_timeout(), Some(t0 + timers.timer_c));
    let t = t0 + timers.timer_c;
    ctx.handle_timeout(&pairs, t);
    let sent = on_branch(&drain(&mut ctx));
    assert!(sent.iter().any(|m| m.starts_with("CANCEL ")), "{sent:?}");
    // The branch stays silent: 408 after 64*T1 more.
    let mut now = t;
    let mut codes = Vec::new();
    while let Some(next) = ctx.poll_timeout() {
        if next > t + timers.t1x64() {
            break;
        }
        now = next;
        ctx.handle_timeout(&pairs, now);
        codes.extend(to_client(&drain(&mut ctx)));
    }
    assert_eq!(codes, [(408, Origin::Local)]);
    assert_eq!(now, t + timers.t1x64());
}

#[test]
fn retransmissions_after_the_final_answer_get_it_again_then_linger() {
    let pairs = Pairs::both_up();
    let now = Instant::now();
    let (mut ctx, actions) = context("OPTIONS", &pairs, now);
    let b = start(&mut ctx, &actions, now);
    respond_on(&mut ctx, &response(200, &b, "OPTIONS"), &pairs, now);
    let actions = drain(&mut ctx);
    let Some(ok) = actions.iter().find_map(|a| match a {
        Action::ToClient { bytes, .. } => Some(bytes.clone()),
        _ => None,
    }) else {
        panic!("{actions:?}")
    };
    assert!(!ctx.handle_retransmission(&request("OPTIONS"), now));
    assert_eq!(drain(&mut ctx), [Action::ResendToClient(ok.clone())]);
    let linger = ctx
        .poll_linger(now)
        .expect("lingers after its final answer");
    assert_eq!(linger.response, Some(ok));
    assert_eq!(linger.until, now + Timers::default().t1x64());
}

#[test]
fn an_ack_for_a_2xx_on_the_invite_branch_is_not_absorbed() {
    let pairs = Pairs::both_up();
    let now = Instant::now();
    let (mut ctx, actions) = context("INVITE", &pairs, now);
    let b = start(&mut ctx, &actions, now);
    respond_on(&mut ctx, &response(200, &b, "INVITE"), &pairs, now);
    drain(&mut ctx);
    assert!(ctx.handle_retransmission(&request("ACK"), now));
    let linger = ctx.poll_linger(now).expect("INVITE answered 2xx lingers");
    assert_eq!(linger.response, None);
}

#[test]
fn pair_out_of_service_is_503_with_retry_after() {
    let pairs = Pairs::both_up();
    pairs.up[0].set(false);
    pairs.up[1].set(false);
    let (mut ctx, actions) = context("OPTIONS", &pairs, Instant::now());
    assert_eq!(to_client(&actions), [(503, Origin::Local)]);
    let Some(Action::ToClient { bytes, .. }) = actions.first() else {
        panic!()
    };
    assert!(String::from_utf8_lossy(bytes).contains("Retry-After: 5\r\n"));
    assert!(ctx.poll_action().is_none());
}

#[test]
fn transport_errors_fail_over_and_a_lost_phone_flow_is_430() {
    let pairs = Pairs::both_up();
    let now = Instant::now();
    let (mut ctx, actions) = context("INVITE", &pairs, now);
    start(&mut ctx, &actions, now);
    assert!(ctx.branch_request_in_progress().is_some());
    ctx.handle_branch_failed(&pairs, now);
    let actions = drain(&mut ctx);
    assert_eq!(located(&actions).as_deref(), Some(BACKUP));
    start(&mut ctx, &actions, now);
    ctx.handle_transport_error(true, &pairs, now);
    assert_eq!(to_client(&drain(&mut ctx)), [(430, Origin::Local)]);
    assert!(ctx.branch_request_in_progress().is_none());
}

#[test]
fn a_gone_flow_is_430() {
    let pairs = Pairs::both_up();
    let (mut ctx, _) = context("BYE", &pairs, Instant::now());
    ctx.handle_flow_refused(Instant::now());
    assert_eq!(to_client(&drain(&mut ctx)), [(430, Origin::Local)]);
}

#[test]
fn options_to_the_instance_say_whether_it_can_serve() {
    let pairs = Pairs::both_up();
    let ask = |pairs: &Pairs| {
        let msg = parse(
            "OPTIONS sip:192.0.2.10 SIP/2.0\r\nVia: SIP/2.0/UDP 10.0.0.1:5060;branch=z9hG4bKo1\r\n\
             Max-Forwards: 70\r\nFrom: <sip:sbc@example.com>;tag=o\r\nTo: <sip:192.0.2.10>\r\n\
             Call-ID: o1\r\nCSeq: 1 OPTIONS\r\nContent-Length: 0\r\n\r\n",
        );
        context_for(msg, pairs, Instant::now()).1
    };
    let actions = ask(&pairs);
    assert_eq!(to_client(&actions), [(200, Origin::Local)]);
    pairs.up[0].set(false);
    pairs.up[1].set(false);
    let actions = ask(&pairs);
    assert_eq!(to_client(&actions), [(503, Origin::Local)]);
    let Some(Action::ToClient { bytes, .. }) = actions.first() else {
        panic!()
    };
    assert!(String::from_utf8_lossy(bytes).contains("Retry-After: 5\r\n"));
}
