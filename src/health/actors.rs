//! Health actors: one probe actor per upstream server, one pair actor per pair, under a
//! health supervisor that restarts a failed probe actor.
//!
//! A probe actor drives a [`ProbeState`] with time and the answers to its OPTIONS (which
//! reach it through the proxy's dispatch by branch, via [`Upstreams`]), logs `upstream_down` / `upstream_up`
//! and tells its pair actor. The pair actor drives a [`PairLogic`], publishes the active
//! member to [`crate::health::PairStates`] and logs `pair_switched`,
//! `pair_out_of_service` and `pair_back_in_service`.

use std::collections::HashMap;
use std::future::Future;
use std::pin::Pin;
use std::sync::Arc;
use std::time::Instant;

use ractor::{Actor, ActorId, ActorProcessingErr, ActorRef, SupervisionEvent};

use crate::metrics::{KindLabels, Metrics};
use crate::sip::addr::{HostPort, Target};
use crate::sip::proxy::LocalIdentity;
use crate::wakeup::Wakeup;

use super::messages::{PairMsg, ProbeMsg, PROBE_BRANCH_PREFIX};
use super::pair::{name, PairLogic};
use super::probe::ProbeConfig;
use super::probe::{Change, ProbeState};
use super::upstreams::Upstreams;
use super::Member;

/// A future the probe network returns.
pub type NetFuture<'a, T> = Pin<Box<dyn Future<Output = T> + Send + 'a>>;

/// What the probe actors need from the proxy besides the shared upstream state: locating a
/// server (RFC 3263) and sending a probe over the proxy's own sockets (so that answers come
/// back to its listeners). The proxy implements it.
pub trait ProbeNet: Send + Sync + 'static {
    /// Locates a server; `None` when its name does not resolve.
    fn locate<'a>(&'a self, server: &'a HostPort) -> NetFuture<'a, Option<Target>>;
    /// The listener a probe to `target` leaves by (for its Via).
    fn through(&self, target: Target) -> crate::sip::proxy::Through {
        target.transport.into()
    }
    /// Sends a probe's bytes to a target.
    fn send(&self, target: Target, bytes: bytes::Bytes) -> NetFuture<'_, Result<(), String>>;
}

/// Everything the health actors work with: this handle, not the proxy's core.
#[derive(Clone)]
pub struct HealthEnv {
    /// The upstream servers and their health, shared with the proxy.
    pub upstreams: Arc<Upstreams>,
    /// How to locate a server and send a probe.
    pub net: Arc<dyn ProbeNet>,
    /// Metrics (probe RTT, failovers, actor failures).
    pub metrics: Arc<Metrics>,
    /// How this instance writes itself into a probe's Via and From.
    pub identity: Arc<LocalIdentity>,
    /// Probe timings.
    pub probe: ProbeConfig,
}

/// What a probe actor is started with (kept by the supervisor to restart it).
#[derive(Clone)]
pub struct ProbeSpec {
    env: HealthEnv,
    pair: usize,
    member: Member,
    server: HostPort,
    pair_actor: ActorRef<PairMsg>,
}

/// The probe actor.
pub struct ProbeActor;

/// Its state.
pub struct ProbeActorState {
    spec: ProbeSpec,
    probe: ProbeState,
    id: u64,
    wakeup: Wakeup<ProbeMsg>,
    outstanding_branch: Option<String>,
    /// INVITEs left unanswered while nothing at all was heard from the server.
    silent_unanswered: u32,
}

impl Actor for ProbeActor {
    type Msg = ProbeMsg;
    type State = ProbeActorState;
    type Arguments = ProbeSpec;

    async fn pre_start(
        &self,
        myself: ActorRef<ProbeMsg>,
        spec: ProbeSpec,
    ) -> Result<ProbeActorState, ActorProcessingErr> {
        spec.env
            .upstreams
            .register_probe(spec.pair, spec.member, myself.clone());
        let _ = myself.send_message(ProbeMsg::Tick);
        // As published: up at start-up; down when a restart (after a failure, or a reload
        // that kept this server) finds it down.
        let up = &spec.env.upstreams;
        let now = Instant::now();
        let probe = if up.states.is_up(spec.pair, spec.member) {
            ProbeState::new(spec.env.probe, now)
        } else {
            let reason = up
                .status
                .server(spec.pair, spec.member)
                .map_or_else(|| "down before a restart".into(), |s| s.reason);
            ProbeState::down(spec.env.probe, now, reason)
        };
        Ok(ProbeActorState {
            probe,
            id: rand::random::<u32>().into(),
            spec,
            wakeup: Wakeup::default(),
            outstanding_branch: None,
            silent_unanswered: 0,
        })
    }

    async fn handle(
        &self,
        myself: ActorRef<ProbeMsg>,
        msg: ProbeMsg,
        st: &mut ProbeActorState,
    ) -> Result<(), ActorProcessingErr> {
        let now = Instant::now();
        match msg {
            ProbeMsg::Tick => {
                st.wakeup.fired();
                if let Some(c) = st.probe.handle_timeout(now) {
                    st.forget_branch();
                    st.report(c);
                }
            }
            ProbeMsg::Response {
                seq,
                code,
                retry_after,
            } => {
                if code >= 200 {
                    st.forget_branch();
                    st.silent_unanswered = 0;
                }
                if code >= 200 && seq > 0 {
                    if let Some(rtt) = st.probe.rtt_of(seq, now) {
                        st.spec.env.metrics.probe_rtt.observe(rtt.as_secs_f64());
                        st.spec
                            .env
                            .upstreams
                            .observe_rtt(st.spec.pair, st.spec.member, rtt);
                    }
                }
                if let Some(c) = st.probe.on_response(now, seq, code, retry_after) {
                    st.report(c);
                }
            }
            ProbeMsg::Suspect => st.probe.probe_soon(now),
            ProbeMsg::Outcome { served } => {
                if let Some(c) = st.probe.transaction_outcome(now, served) {
                    st.forget_branch();
                    st.report(c);
                }
            }
            ProbeMsg::Unreachable { reason } => {
                let what = format!("ICMP {}", reason.replace('_', " "));
                if let Some(c) = st.probe.missed(now, &what) {
                    st.forget_branch();
                    st.report(c);
                }
            }
            ProbeMsg::Unanswered { sent_at } => {
                let upstreams = &st.spec.env.upstreams;
                if upstreams.heard_since(st.spec.pair, st.spec.member, sent_at) {
                    // It answers other things: this one request was just ignored.
                    st.silent_unanswered = 0;
                    st.probe.probe_soon(now);
                } else {
                    // Silent since then. Two such INVITEs are as good as a missed probe (a
                    // dead server under load); one alone only brings the next probe forward.
                    st.silent_unanswered += 1;
                    if st.silent_unanswered >= 2 {
                        st.silent_unanswered = 0;
                        if let Some(c) = st.probe.missed(now, "no answer to INVITEs") {
                            st.forget_branch();
                            st.report(c);
                        }
                    } else {
                        st.probe.probe_soon(now);
                    }
                }
            }
        }
        if let Some(seq) = st.probe.poll_probe(now) {
            st.send_probe(&myself, seq, now).await;
        }
        st.publish();
        if let Some(next) = st.probe.poll_timeout() {
            st.wakeup.schedule(&myself, next, now, || ProbeMsg::Tick);
        }
        Ok(())
    }

    async fn post_stop(
        &self,
        _myself: ActorRef<ProbeMsg>,
        st: &mut ProbeActorState,
    ) -> Result<(), ActorProcessingErr> {
        st.wakeup.cancel();
        st.forget_branch();
        Ok(())
    }
}

impl ProbeActorState {
    fn forget_branch(&mut self) {
        if let Some(b) = self.outstanding_branch.take() {
            self.spec.env.upstreams.probe_done(&b);
        }
    }

    async fn send_probe(&mut self, myself: &ActorRef<ProbeMsg>, seq: u64, now: Instant) {
        let env = &self.spec.env;
        let Some(target) = env.net.locate(&self.spec.server).await else {
            tracing::warn!(event = "host_not_resolved", host = %self.spec.server.host, pair = %self.pair_name());
            if let Some(c) = self.probe.unreachable(now, "host not resolved") {
                self.report(c);
            }
            return;
        };
        env.upstreams.learn_upstream_ip(target.addr.ip());
        env.upstreams
            .learn_member_addr(target.addr, self.spec.pair, self.spec.member);
        let branch = format!("{PROBE_BRANCH_PREFIX}{:x}x{seq}", self.id);
        let bytes = options_request(
            &env.identity,
            env.net.through(target),
            &self.spec.server,
            target,
            &branch,
            self.id,
            seq,
        );
        env.upstreams
            .probe_sent(branch.clone(), myself.clone(), seq);
        if let Some(old) = self.outstanding_branch.replace(branch) {
            env.upstreams.probe_done(&old);
        }
        if let Err(e) = env.net.send(target, bytes).await {
            tracing::debug!(event = "probe_send_failed", server = %self.spec.server, error = ?e);
            // Counts as an unanswered probe when its timeout comes.
        }
    }

    /// Publishes this server's state for `/status` and the metrics.
    fn publish(&self) {
        let p = &self.probe;
        self.spec.env.upstreams.status.set_server(
            self.spec.pair,
            self.spec.member,
            super::ServerStatus {
                up: p.is_up(),
                last_probe: p.last_probe.map(super::wall),
                last_rtt: p.last_rtt,
                since: super::wall(p.since),
                reason: p.last_reason.clone(),
            },
        );
    }

    fn pair_name(&self) -> &str {
        self.spec
            .env
            .upstreams
            .pairs()
            .get(self.spec.pair)
            .map_or("", |p| p.name.as_str())
    }

    fn report(&self, c: Change) {
        let (up, reason) = match c {
            Change::Down(r) => (false, r),
            Change::Up(r) => (true, r),
        };
        let event = if up { "upstream_up" } else { "upstream_down" };
        if up {
            tracing::info!(event, pair = %self.pair_name(), member = name(self.spec.member), server = %self.spec.server, reason = %reason);
        } else {
            tracing::warn!(event, pair = %self.pair_name(), member = name(self.spec.member), server = %self.spec.server, reason = %reason);
        }
        self.spec
            .env
            .upstreams
            .states
            .set_up(self.spec.pair, self.spec.member, up);
        let _ = self.spec.pair_actor.send_message(PairMsg::Server {
            member: self.spec.member,
            up,
            reason,
        });
    }
}

/// The OPTIONS probe for `server`.
fn options_request(
    identity: &LocalIdentity,
    through: crate::sip::proxy::Through,
    server: &HostPort,
    target: Target,
    branch: &str,
    id: u64,
    seq: u64,
) -> bytes::Bytes {
    let host = if server.host.contains(':') {
        format!("[{}]", server.host)
    } else {
        server.host.clone()
    };
    let adv = identity.advertised_host();
    let text = format!(
        "OPTIONS sip:{host}:{port};transport={t} SIP/2.0\r\n\
         Via: {via}\r\n\
         Max-Forwards: 70\r\n\
         From: <sip:sippool@{adv}>;tag=probe{id:x}\r\n\
         To: <sip:{host}:{port}>\r\n\
         Call-ID: probe-{id:x}-{seq}@{adv}\r\n\
         CSeq: {seq} OPTIONS\r\n\
         User-Agent: sippool\r\n\
         Content-Length: 0\r\n\r\n",
        port = server.port,
        t = target.transport.uri_param(),
        via = identity.via(through, branch),
    );
    bytes::Bytes::from(text)
}

/// The pair actor.
pub struct PairActor;

/// Its state.
pub struct PairActorState {
    env: HealthEnv,
    index: usize,
    logic: PairLogic,
}

impl Actor for PairActor {
    type Msg = PairMsg;
    type State = PairActorState;
    type Arguments = (HealthEnv, usize);

    async fn pre_start(
        &self,
        _myself: ActorRef<PairMsg>,
        (env, index): Self::Arguments,
    ) -> Result<PairActorState, ActorProcessingErr> {
        let failback = env.upstreams.pairs().get(index).is_some_and(|p| p.failback);
        // As published: the start-up state, or what a reload carried over.
        let states = &env.upstreams.states;
        let logic = PairLogic::resume(
            states.active(index),
            states.is_up(index, Member::Primary),
            states.is_up(index, Member::Backup),
            failback,
        );
        Ok(PairActorState { env, index, logic })
    }

    async fn handle(
        &self,
        _myself: ActorRef<PairMsg>,
        msg: PairMsg,
        st: &mut PairActorState,
    ) -> Result<(), ActorProcessingErr> {
        let switch = match msg {
            PairMsg::Server { member, up, reason } => st.logic.on_server(member, up, &reason),
            PairMsg::FromBackup => st.logic.on_request_from_backup(),
            PairMsg::Manual { to, why, reply } => match st.logic.manual(to, &why) {
                Ok(s) => {
                    let _ = reply.send(Ok(s.as_ref().and(Some(to))));
                    s
                }
                Err(e) => {
                    tracing::warn!(event = "manual_switch_refused", why = %why, error = %e);
                    let _ = reply.send(Err(e));
                    None
                }
            },
        };
        let Some(s) = switch else {
            return Ok(());
        };
        let env = &st.env;
        env.upstreams.states.set_active(st.index, s.to);
        env.upstreams.status.set_switch(
            st.index,
            super::SwitchStatus {
                at: std::time::SystemTime::now(),
                from: s.from,
                to: s.to,
                why: s.why.clone(),
            },
        );
        let pair = env
            .upstreams
            .pairs()
            .get(st.index)
            .map_or("", |p| p.name.as_str());
        let label = |m: Option<Member>| m.map_or("none", name);
        env.metrics.failovers.inc();
        match (s.from, s.to) {
            (_, None) => {
                tracing::error!(event = "pair_out_of_service", pair, from = label(s.from), why = %s.why)
            }
            (None, Some(to)) => {
                tracing::info!(event = "pair_back_in_service", pair, to = name(to), why = %s.why)
            }
            (Some(from), Some(to)) => {
                tracing::warn!(event = "pair_switched", pair, from = name(from), to = name(to), why = %s.why)
            }
        }
        Ok(())
    }
}

/// Supervises the pair and probe actors; restarts a probe actor that fails.
pub struct HealthSupervisor;

/// Its state: how to restart each probe actor.
pub struct HealthState {
    env: HealthEnv,
    specs: HashMap<ActorId, ProbeSpec>,
}

impl Actor for HealthSupervisor {
    type Msg = ();
    type State = HealthState;
    type Arguments = HealthEnv;

    async fn pre_start(
        &self,
        myself: ActorRef<()>,
        env: HealthEnv,
    ) -> Result<HealthState, ActorProcessingErr> {
        let mut specs = HashMap::new();
        let mut pair_actors = Vec::new();
        for (i, p) in env.upstreams.pairs().iter().enumerate() {
            let (pa, _) =
                Actor::spawn_linked(None, PairActor, (env.clone(), i), myself.get_cell()).await?;
            pair_actors.push(pa.clone());
            for (member, server) in [(Member::Primary, &p.primary), (Member::Backup, &p.backup)] {
                let spec = ProbeSpec {
                    env: env.clone(),
                    pair: i,
                    member,
                    server: server.clone(),
                    pair_actor: pa.clone(),
                };
                let (probe, _) =
                    Actor::spawn_linked(None, ProbeActor, spec.clone(), myself.get_cell()).await?;
                specs.insert(probe.get_id(), spec);
            }
        }
        env.upstreams.set_pair_actors(pair_actors);
        Ok(HealthState { env, specs })
    }

    async fn handle_supervisor_evt(
        &self,
        myself: ActorRef<()>,
        evt: SupervisionEvent,
        st: &mut HealthState,
    ) -> Result<(), ActorProcessingErr> {
        if let SupervisionEvent::ActorFailed(cell, err) = evt {
            let kind = if st.specs.contains_key(&cell.get_id()) {
                "probe"
            } else {
                "pair"
            };
            st.env
                .metrics
                .actor_failures
                .get_or_create(&KindLabels { kind })
                .inc();
            tracing::error!(event = "health_actor_failed", kind, error = %err);
            match st.specs.remove(&cell.get_id()) {
                Some(spec) => {
                    let (probe, _) =
                        Actor::spawn_linked(None, ProbeActor, spec.clone(), myself.get_cell())
                            .await?;
                    st.specs.insert(probe.get_id(), spec);
                }
                // A pair actor holds state that cannot be rebuilt: fail upward.
                None => myself.stop(Some("pair actor failed".into())),
            }
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::sip::proxy::BRANCH_PREFIX;

    #[test]
    fn probe_branches_are_ours() {
        assert!(PROBE_BRANCH_PREFIX.starts_with(BRANCH_PREFIX));
    }
}
