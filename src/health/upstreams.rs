//! The upstream servers as this instance knows them: the pairs, which member is active and
//! up, which addresses are upstream servers, when each member was last heard from, and
//! where the health actors are. This is the handle the proxy and the health actors share
//! (in place of the proxy's whole core): the proxy reads it on every request and feeds it
//! what it sees; the health actors write it.

use std::collections::HashSet;
use std::net::{IpAddr, SocketAddr};
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::OnceLock;
use std::time::{Duration, Instant};

use dashmap::DashMap;
use ractor::ActorRef;

use crate::sip::addr::HostPort;
use crate::sip::proxy::response_context::PairView;
use crate::sip::proxy::Pair;

use super::messages::{PairMsg, ProbeMsg};
use super::rtt::{FailoverBounds, Rtt};
use super::{HealthStatus, Member, PairStates};

/// The hasher of the maps looked up once per message (is this an upstream, which member
/// sent it): foldhash, seeded per process; SipHash cost about 2,000 instructions per call.
type Fast = foldhash::fast::RandomState;

/// The upstream servers and their health (see the module documentation).
pub struct Upstreams {
    pairs: Vec<Pair>,
    /// Active member and up/down per member of every pair, lock-free.
    pub states: PairStates,
    /// Snapshots for `/status`.
    pub status: HealthStatus,
    upstream_ips: HashSet<IpAddr, Fast>,
    located_upstream_ips: DashMap<IpAddr, (), Fast>,
    /// Pair members by the address they answer from.
    member_addrs: DashMap<SocketAddr, (usize, Member), Fast>,
    /// When each member was last heard from (µs since `epoch`).
    heard: Vec<[AtomicU64; 2]>,
    epoch: Instant,
    /// Per pair, how to recognise a request from its backup (IP alone, or IP and port
    /// when both members share an IP).
    backup_sources: Vec<(usize, SocketAddr, bool)>,
    /// Per member: a transaction failed since the last one it served (the circuit breaker
    /// only needs to hear of a success after a failure).
    failing: Vec<[AtomicBool; 2]>,
    /// Response time of every member, and the failover timer's bounds.
    rtt: Vec<[Rtt; 2]>,
    bounds: FailoverBounds,
    /// Outstanding OPTIONS probes by branch: the probe actor and its probe number.
    probes: DashMap<String, (ActorRef<ProbeMsg>, u64)>,
    probe_actors: DashMap<(usize, Member), ActorRef<ProbeMsg>>,
    pair_actors: OnceLock<Vec<ActorRef<PairMsg>>>,
}

impl std::fmt::Debug for Upstreams {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Upstreams")
            .field("pairs", &self.pairs.len())
            .finish()
    }
}

impl Upstreams {
    /// The upstreams of these pairs, every primary active.
    pub fn new(pairs: &[Pair], bounds: FailoverBounds) -> Upstreams {
        let mut upstream_ips = HashSet::with_hasher(Fast::default());
        let member_addrs = DashMap::with_hasher(Fast::default());
        for (i, p) in pairs.iter().enumerate() {
            for (member, hp) in [(Member::Primary, &p.primary), (Member::Backup, &p.backup)] {
                if let Some(a) = hp.socket_addr() {
                    upstream_ips.insert(a.ip());
                    member_addrs.insert(a, (i, member));
                }
            }
        }
        let backup_sources = pairs
            .iter()
            .enumerate()
            .filter_map(|(i, p)| {
                let b = p.backup.socket_addr()?;
                let same_ip = p.primary.socket_addr().is_some_and(|a| a.ip() == b.ip());
                Some((i, b, same_ip))
            })
            .collect();
        Upstreams {
            pairs: pairs.to_vec(),
            states: PairStates::new(pairs.len()),
            status: HealthStatus::new(pairs.len()),
            upstream_ips,
            located_upstream_ips: DashMap::with_hasher(Fast::default()),
            member_addrs,
            heard: (0..pairs.len())
                .map(|_| [AtomicU64::new(0), AtomicU64::new(0)])
                .collect(),
            epoch: Instant::now(),
            backup_sources,
            rtt: (0..pairs.len()).map(|_| Default::default()).collect(),
            failing: (0..pairs.len()).map(|_| Default::default()).collect(),
            bounds,
            probes: DashMap::new(),
            probe_actors: DashMap::new(),
            pair_actors: OnceLock::new(),
        }
    }

    /// Takes over what `old` (the upstreams before a reload) knew of every server that is
    /// still configured the same way: a member of a pair of the same name with the same
    /// server keeps its up/down state, response time, when it was last heard, its located
    /// addresses and circuit-breaker count; the pair keeps its active member while that
    /// member's server is unchanged, and its last switch. A new or changed server starts
    /// as at start-up (assumed up, probed at once). Returns the pairs (by name) whose
    /// health was carried over.
    pub fn carry_health_from(&self, old: &Upstreams) -> Vec<String> {
        let mut carried = Vec::new();
        for (ip, ()) in old.located_upstream_ips.iter().map(|e| (*e.key(), ())) {
            self.learn_upstream_ip(ip);
        }
        for (i, p) in self.pairs.iter().enumerate() {
            let Some(j) = old.pairs.iter().position(|o| o.name == p.name) else {
                continue;
            };
            let same = |m: Member| old.member_server(j, m) == self.member_server(i, m);
            for m in [Member::Primary, Member::Backup] {
                if !same(m) {
                    continue;
                }
                self.states.set_up(i, m, old.states.is_up(j, m));
                if let (Some(to), Some(from)) = (
                    self.rtt.get(i).and_then(|r| r.get(m as usize)),
                    old.rtt.get(j).and_then(|r| r.get(m as usize)),
                ) {
                    to.copy_from(from);
                }
                if let (Some(to), Some(from)) = (
                    self.heard.get(i).and_then(|h| h.get(m as usize)),
                    old.heard.get(j).and_then(|h| h.get(m as usize)),
                ) {
                    let at = old.epoch + Duration::from_micros(from.load(Ordering::Relaxed));
                    let since_ours = at.saturating_duration_since(self.epoch).as_micros() as u64;
                    to.store(since_ours, Ordering::Relaxed);
                }
                if let (Some(to), Some(from)) = (
                    self.failing.get(i).and_then(|f| f.get(m as usize)),
                    old.failing.get(j).and_then(|f| f.get(m as usize)),
                ) {
                    to.store(from.load(Ordering::Relaxed), Ordering::Relaxed);
                }
                if let Some(st) = old.status.server(j, m) {
                    self.status.set_server(i, m, st);
                }
                for e in old.member_addrs.iter() {
                    if *e.value() == (j, m) {
                        self.member_addrs.insert(*e.key(), (i, m));
                    }
                }
            }
            let active = match old.states.active(j) {
                Some(m) if same(m) => Some(m),
                None if same(Member::Primary) && same(Member::Backup) => None,
                // The active member's server changed: as at start-up, with what is known.
                _ => [Member::Primary, Member::Backup]
                    .into_iter()
                    .find(|m| self.states.is_up(i, *m)),
            };
            self.states.set_active(i, active);
            if let Some(sw) = old.status.switch(j) {
                self.status.keep_switch(i, sw);
            }
            carried.push(p.name.clone());
        }
        self.status.continue_numbering(&old.status);
        carried
    }

    /// The pairs, in config order.
    pub fn pairs(&self) -> &[Pair] {
        &self.pairs
    }

    /// Whether `ip` is one of the configured upstream servers (given as IPs, or located
    /// by name for probing).
    pub fn is_upstream(&self, ip: IpAddr) -> bool {
        self.upstream_ips.contains(&ip) || self.located_upstream_ips.contains_key(&ip)
    }

    /// Records the address a named upstream server was located at.
    pub fn learn_upstream_ip(&self, ip: IpAddr) {
        if !self.upstream_ips.contains(&ip) {
            self.located_upstream_ips.insert(ip, ());
        }
    }

    /// Records the address a pair member sends from (its located address).
    pub fn learn_member_addr(&self, addr: SocketAddr, pair: usize, member: Member) {
        self.member_addrs.insert(addr, (pair, member));
    }

    /// The pair member at this address, if one is.
    pub fn member_at(&self, addr: SocketAddr) -> Option<(usize, Member)> {
        self.member_addrs.get(&addr).map(|e| *e)
    }

    /// The server the pair's active member names; `None` when the pair is out of service.
    pub fn active_member(&self, pair: usize) -> Option<&HostPort> {
        self.member_server(pair, self.states.active(pair)?)
    }

    /// The server of one member of a pair.
    pub fn member_server(&self, pair: usize, m: Member) -> Option<&HostPort> {
        let p = self.pairs.get(pair)?;
        Some(match m {
            Member::Primary => &p.primary,
            Member::Backup => &p.backup,
        })
    }

    /// A response time of a member: a probe's round trip, or the time to the first
    /// response of a request sent to it.
    pub fn observe_rtt(&self, pair: usize, member: Member, rtt: Duration) {
        if let Some(r) = self.rtt.get(pair).and_then(|v| v.get(member as usize)) {
            r.observe(rtt);
        }
    }

    /// A member's smoothed response time, when measured.
    pub fn srtt(&self, pair: usize, member: Member) -> Option<Duration> {
        self.rtt.get(pair)?.get(member as usize)?.srtt()
    }

    /// Whether anything at all was heard from a pair member after `since`.
    pub fn heard_since(&self, pair: usize, member: Member, since: Instant) -> bool {
        let Some(slot) = self.heard.get(pair).and_then(|v| v.get(member as usize)) else {
            return false;
        };
        let at = slot.load(Ordering::Relaxed);
        let since = since.saturating_duration_since(self.epoch).as_micros() as u64;
        at > since
    }

    /// Notes a message from `source` if it is a pair member.
    pub fn note_heard(&self, source: SocketAddr) {
        if let Some(e) = self.member_addrs.get(&source) {
            let (pair, member) = *e;
            if let Some(slot) = self.heard.get(pair).and_then(|v| v.get(member as usize)) {
                let now = self.epoch.elapsed().as_micros() as u64;
                slot.store(now, Ordering::Relaxed);
            }
        }
    }

    /// A request from `source`: when that is the backup of a pair whose active member is
    /// not the backup, tells the pair actor (SPEC section 2: the backup has taken over).
    pub fn note_request_source(&self, source: SocketAddr) {
        for (i, addr, same_ip) in &self.backup_sources {
            let from_backup = if *same_ip {
                *addr == source
            } else {
                addr.ip() == source.ip()
            };
            if from_backup && self.states.active(*i) != Some(Member::Backup) {
                if let Some(a) = self.pair_actors.get().and_then(|v| v.get(*i)) {
                    let _ = a.send_message(PairMsg::FromBackup);
                }
            }
        }
    }

    /// Asks the pair actor of pair `name` to make `to` active (`None`: the member that is
    /// not active now). The answer: the member made active (`None`: it was already), or
    /// why not.
    pub async fn switch(
        &self,
        name: &str,
        to: Option<Member>,
        why: String,
    ) -> Result<Option<Member>, String> {
        let i = self
            .pairs
            .iter()
            .position(|p| p.name == name)
            .ok_or_else(|| format!("no pair named '{name}'"))?;
        let to = match to {
            Some(m) => m,
            None => self.states.active(i).map_or(Member::Primary, Member::other),
        };
        let actor = self
            .pair_actors
            .get()
            .and_then(|v| v.get(i))
            .ok_or("pair actor not running")?;
        let (tx, rx) = tokio::sync::oneshot::channel();
        actor
            .send_message(PairMsg::Manual { to, why, reply: tx })
            .map_err(|_| "pair actor not running".to_string())?;
        rx.await
            .map_err(|_| "pair actor did not answer".to_string())?
    }

    /// Records the pair actors (once, at start-up).
    pub fn set_pair_actors(&self, actors: Vec<ActorRef<PairMsg>>) {
        let _ = self.pair_actors.set(actors);
    }

    /// Records the (re)started probe actor of a pair member.
    pub fn register_probe(&self, pair: usize, member: Member, actor: ActorRef<ProbeMsg>) {
        self.probe_actors.insert((pair, member), actor);
    }

    /// Asks the probe actor of a pair member to probe now.
    pub fn suspect(&self, pair: usize, member: Member) {
        if let Some(a) = self.probe_actors.get(&(pair, member)) {
            let _ = a.send_message(ProbeMsg::Suspect);
        }
    }

    /// An INVITE sent to a pair member at `sent_at` got no answer at all.
    pub fn report_unanswered(&self, pair: usize, member: Member, sent_at: Instant) {
        if let Some(a) = self.probe_actors.get(&(pair, member)) {
            let _ = a.send_message(ProbeMsg::Unanswered { sent_at });
        }
    }

    /// The network refused a datagram to `dest` (ICMP unreachable): when that is a pair
    /// member, its probe actor counts it as a missed probe at once.
    pub fn report_unreachable(&self, dest: SocketAddr, reason: &'static str) {
        if let Some((pair, member)) = self.member_at(dest) {
            if let Some(a) = self.probe_actors.get(&(pair, member)) {
                let _ = a.send_message(ProbeMsg::Unreachable { reason });
            }
        }
    }

    /// What became of a transaction sent to a member (for its circuit breaker).
    pub fn transaction_outcome(&self, pair: usize, member: Member, served: bool) {
        // The hot path: a success while nothing failed since the last one sends nothing.
        let Some(failing) = self.failing.get(pair).and_then(|v| v.get(member as usize)) else {
            return;
        };
        if served {
            if !failing.swap(false, Ordering::Relaxed) {
                return;
            }
        } else {
            failing.store(true, Ordering::Relaxed);
        }
        if let Some(a) = self.probe_actors.get(&(pair, member)) {
            let _ = a.send_message(ProbeMsg::Outcome { served });
        }
    }

    /// An outstanding probe: responses with this branch go to `actor` as probe `seq`.
    pub fn probe_sent(&self, branch: String, actor: ActorRef<ProbeMsg>, seq: u64) {
        self.probes.insert(branch, (actor, seq));
    }

    /// The probe with this branch is answered or given up.
    pub fn probe_done(&self, branch: &str) {
        self.probes.remove(branch);
    }

    /// A response to the probe with this branch (dropped when none is outstanding).
    pub fn probe_response(&self, branch: &str, code: u16, retry_after: Option<Duration>) {
        if let Some(p) = self.probes.get(branch) {
            let _ = p.0.send_message(ProbeMsg::Response {
                seq: p.1,
                code,
                retry_after,
            });
        }
    }
}

impl PairView for Upstreams {
    fn active(&self, pair: usize) -> Option<Member> {
        self.states.active(pair)
    }

    fn is_up(&self, pair: usize, member: Member) -> bool {
        self.states.is_up(pair, member)
    }

    fn server(&self, pair: usize, member: Member) -> Option<HostPort> {
        self.member_server(pair, member).cloned()
    }

    fn member_at(&self, addr: SocketAddr) -> Option<(usize, Member)> {
        Upstreams::member_at(self, addr)
    }

    fn failover_timeout(&self, pair: usize, member: Member) -> Option<Duration> {
        let r = self.rtt.get(pair)?.get(member as usize)?;
        Some(r.failover_timeout(self.bounds))
    }
}

#[cfg(test)]
mod tests {
    use std::str::FromStr;

    use super::*;

    fn pair(name: &str, primary: &str, backup: &str) -> Pair {
        let hp = |s: &str| HostPort::from_str(s).unwrap_or_else(|e| panic!("{s}: {e}"));
        Pair {
            name: name.into(),
            domain: None,
            primary: hp(primary),
            backup: hp(backup),
            failback: false,
        }
    }

    fn bounds() -> FailoverBounds {
        FailoverBounds {
            min: Duration::from_millis(100),
            max: Duration::from_secs(1),
        }
    }

    /// Pair "a" on its backup with its primary down and measured; pair "b" out of service.
    fn before() -> Upstreams {
        let old = Upstreams::new(
            &[
                pair("a", "10.0.0.1:5060", "10.0.0.2:5060"),
                pair("b", "10.0.1.1:5060", "10.0.1.2:5060"),
            ],
            bounds(),
        );
        old.states.set_up(0, Member::Primary, false);
        old.states.set_active(0, Some(Member::Backup));
        old.observe_rtt(0, Member::Backup, Duration::from_millis(40));
        old.status.set_switch(
            0,
            crate::health::SwitchStatus {
                at: std::time::SystemTime::now(),
                from: Some(Member::Primary),
                to: Some(Member::Backup),
                why: "primary down".into(),
            },
        );
        old.states.set_up(1, Member::Primary, false);
        old.states.set_up(1, Member::Backup, false);
        old.states.set_active(1, None);
        old.learn_upstream_ip("192.0.2.9".parse().unwrap_or(IpAddr::from([0, 0, 0, 0])));
        old
    }

    #[test]
    fn unchanged_servers_keep_their_health_across_a_reload() {
        let old = before();
        // Pairs reordered, one added: health follows the names, not the positions.
        let new = Upstreams::new(
            &[
                pair("c", "10.0.2.1:5060", "10.0.2.2:5060"),
                pair("b", "10.0.1.1:5060", "10.0.1.2:5060"),
                pair("a", "10.0.0.1:5060", "10.0.0.2:5060"),
            ],
            bounds(),
        );
        let carried = new.carry_health_from(&old);
        assert_eq!(carried, ["b", "a"]);
        assert_eq!(new.states.active(2), Some(Member::Backup));
        assert!(!new.states.is_up(2, Member::Primary));
        assert_eq!(new.srtt(2, Member::Backup), Some(Duration::from_millis(40)));
        assert_eq!(new.states.active(1), None, "out of service stays so");
        assert_eq!(
            new.states.active(0),
            Some(Member::Primary),
            "a new pair starts fresh"
        );
        assert!(new.states.is_up(0, Member::Primary));
        assert!(new.is_upstream("192.0.2.9".parse().unwrap_or(IpAddr::from([0, 0, 0, 0]))));
        assert_eq!(
            new.status.switch(2).map(|s| s.why),
            Some("primary down".into())
        );
        // The switch is kept, not logged again; the numbering goes on from the old one.
        assert!(new.status.switches_after(0).is_empty());
        new.status.set_switch(
            0,
            crate::health::SwitchStatus {
                at: std::time::SystemTime::now(),
                from: None,
                to: Some(Member::Primary),
                why: "t".into(),
            },
        );
        assert_eq!(new.status.switches_after(1).len(), 1);
    }

    #[test]
    fn a_changed_server_starts_fresh_and_the_pair_moves_off_it_only_if_it_was_active() {
        let old = before();
        // Pair a: the backup (active) moves to a new address; the primary (down) stays.
        let new = Upstreams::new(&[pair("a", "10.0.0.1:5060", "10.0.0.3:5060")], bounds());
        new.carry_health_from(&old);
        assert!(
            !new.states.is_up(0, Member::Primary),
            "the primary is still down"
        );
        assert!(
            new.states.is_up(0, Member::Backup),
            "the new backup is assumed up"
        );
        assert_eq!(new.srtt(0, Member::Backup), None, "and not measured");
        assert_eq!(new.states.active(0), Some(Member::Backup));
        // Pair b: the primary moves; both were down, so the new primary (assumed up) serves.
        let new = Upstreams::new(&[pair("b", "10.0.1.7:5060", "10.0.1.2:5060")], bounds());
        new.carry_health_from(&old);
        assert_eq!(new.states.active(0), Some(Member::Primary));
        assert!(!new.states.is_up(0, Member::Backup));
    }
}
