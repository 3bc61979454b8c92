//! Which member of a primary/backup pair is active, sans-IO (SPEC section 2).
//!
//! Rules: the primary is active at start. When the active member goes down, the other one
//! takes over if it is up; if neither is up the pair is out of service. A request that
//! arrives from the backup means the backup has taken over: switch at once. When the
//! primary comes back the pair stays where it is (no flapping) unless `failback` is set.

use super::Member;

/// A switch of the active member, with its reason.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Switch {
    /// Active member before (`None`: out of service).
    pub from: Option<Member>,
    /// Active member after (`None`: out of service).
    pub to: Option<Member>,
    /// Why.
    pub why: String,
}

/// The pair's view of its two servers.
#[derive(Debug, Clone)]
pub struct PairLogic {
    active: Option<Member>,
    primary_up: bool,
    backup_up: bool,
    failback: bool,
}

impl PairLogic {
    /// Primary active, both assumed up.
    pub fn new(failback: bool) -> Self {
        PairLogic {
            active: Some(Member::Primary),
            primary_up: true,
            backup_up: true,
            failback,
        }
    }

    /// Resumes from a known state (a reload restarting the pair's actor).
    pub fn resume(
        active: Option<Member>,
        primary_up: bool,
        backup_up: bool,
        failback: bool,
    ) -> Self {
        PairLogic {
            active,
            primary_up,
            backup_up,
            failback,
        }
    }

    /// The active member (`None`: out of service).
    pub fn active(&self) -> Option<Member> {
        self.active
    }

    /// Whether a member is up as far as probing knows.
    pub fn is_up(&self, m: Member) -> bool {
        match m {
            Member::Primary => self.primary_up,
            Member::Backup => self.backup_up,
        }
    }

    fn set(&mut self, to: Option<Member>, why: String) -> Option<Switch> {
        if self.active == to {
            return None;
        }
        let from = self.active;
        self.active = to;
        Some(Switch { from, to, why })
    }

    /// A server's probe state changed.
    pub fn on_server(&mut self, m: Member, up: bool, reason: &str) -> Option<Switch> {
        match m {
            Member::Primary => self.primary_up = up,
            Member::Backup => self.backup_up = up,
        }
        let other = other(m);
        if !up {
            if self.active == Some(m) {
                let to = self.is_up(other).then_some(other);
                return self.set(to, format!("{} down: {reason}", name(m)));
            }
            return None;
        }
        match self.active {
            None => self.set(Some(m), format!("{} up: {reason}", name(m))),
            Some(Member::Backup) if m == Member::Primary && self.failback => self.set(
                Some(Member::Primary),
                format!("failback: primary up: {reason}"),
            ),
            _ => None,
        }
    }

    /// An operator asks for `to` to be active (a manual switchover). Refused when `to` is
    /// down as far as probing knows: never switch onto a member that cannot serve.
    /// `Ok(None)`: it is active already.
    pub fn manual(&mut self, to: Member, why: &str) -> Result<Option<Switch>, String> {
        if !self.is_up(to) {
            return Err(format!("{} is down", name(to)));
        }
        Ok(self.set(Some(to), format!("manual: {why}")))
    }

    /// A request arrived from the backup server: it has taken over.
    pub fn on_request_from_backup(&mut self) -> Option<Switch> {
        self.backup_up = true;
        self.set(
            Some(Member::Backup),
            "request received from the backup".into(),
        )
    }
}

/// The other member of the pair.
pub fn other(m: Member) -> Member {
    m.other()
}

/// The member's name in logs and metrics.
pub fn name(m: Member) -> &'static str {
    match m {
        Member::Primary => "primary",
        Member::Backup => "backup",
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_resumed_pair_goes_on_from_where_it_was() {
        // On the backup, primary down (a reload restarted the actor): the primary coming
        // back does not move it (no failback), the backup going down does not either.
        let mut p = PairLogic::resume(Some(Member::Backup), false, true, false);
        assert_eq!(p.on_server(Member::Primary, true, "answers"), None);
        let s = p.on_server(Member::Backup, false, "no answer");
        assert_eq!(s.map(|s| s.to), Some(Some(Member::Primary)));
        // Out of service: the first member back takes over.
        let mut p = PairLogic::resume(None, false, false, false);
        let s = p.on_server(Member::Backup, true, "answers");
        assert_eq!(s.map(|s| s.to), Some(Some(Member::Backup)));
    }

    #[test]
    fn manual_switch_goes_to_a_member_that_is_up_and_back() {
        let mut p = PairLogic::new(false);
        let s = p.manual(Member::Backup, "maintenance").unwrap().unwrap();
        assert_eq!(
            (s.from, s.to),
            (Some(Member::Primary), Some(Member::Backup))
        );
        assert_eq!(s.why, "manual: maintenance");
        assert_eq!(p.manual(Member::Backup, "again"), Ok(None));
        let s = p.manual(Member::Primary, "done").unwrap().unwrap();
        assert_eq!(s.to, Some(Member::Primary));
        p.on_server(Member::Backup, false, "no answer");
        assert_eq!(p.manual(Member::Backup, "x"), Err("backup is down".into()));
        assert_eq!(p.active(), Some(Member::Primary));
    }
    use Member::*;

    #[test]
    fn primary_down_switches_to_backup_and_stays_there() {
        let mut p = PairLogic::new(false);
        let s = p.on_server(Primary, false, "timeout").unwrap();
        assert_eq!((s.from, s.to), (Some(Primary), Some(Backup)));
        // No flapping: the primary coming back changes nothing.
        assert_eq!(p.on_server(Primary, true, "200"), None);
        assert_eq!(p.active(), Some(Backup));
    }

    #[test]
    fn failback_returns_to_primary() {
        let mut p = PairLogic::new(true);
        p.on_server(Primary, false, "timeout");
        let s = p.on_server(Primary, true, "200").unwrap();
        assert_eq!(s.to, Some(Primary));
    }

    #[test]
    fn both_down_is_out_of_service_and_first_back_takes_over() {
        let mut p = PairLogic::new(false);
        p.on_server(Backup, false, "timeout");
        assert_eq!(
            p.active(),
            Some(Primary),
            "backup down while primary active: no switch"
        );
        let s = p.on_server(Primary, false, "timeout").unwrap();
        assert_eq!(s.to, None);
        let s = p.on_server(Backup, true, "200").unwrap();
        assert_eq!((s.from, s.to), (None, Some(Backup)));
    }

    #[test]
    fn request_from_backup_switches_at_once() {
        let mut p = PairLogic::new(false);
        let s = p.on_request_from_backup().unwrap();
        assert_eq!(s.to, Some(Backup));
        assert_eq!(p.on_request_from_backup(), None);
    }
}
