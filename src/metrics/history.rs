//! The dashboard's history: what the proxy did over the last minutes, kept in the process
//! so that the charts are full the moment an operator opens the page.
//!
//! A ring buffer of [`CAPACITY`] samples, one every [`PERIOD`] (15 minutes), each holding
//! the INVITEs received per second, the 503 responses sent per second (every reason) and
//! the last probe round trip of every upstream server; plus the pair switches of that
//! window (at most [`MAX_SWITCHES`]). Memory is bounded: a sample is three numbers and one
//! per server (a few kilobytes in all for a handful of pairs).
//!
//! Sans-IO: the shell reads the counters and hands them in as a [`Reading`] with the time
//! it was taken; this module turns counters into rates and keeps the window.

use std::collections::VecDeque;
use std::time::Duration;

use serde_json::{json, Value};

/// How often the shell takes a sample.
pub const PERIOD: Duration = Duration::from_secs(5);

/// How many samples are kept: 15 minutes at one every [`PERIOD`].
pub const CAPACITY: usize = 180;

/// How many pair switches are kept at most (older ones go first; so do switches older
/// than the window).
pub const MAX_SWITCHES: usize = 100;

/// One upstream server, as the charts name it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ServerKey {
    /// Pair name.
    pub pair: String,
    /// `primary` or `backup`.
    pub member: &'static str,
    /// host:port;transport
    pub server: String,
}

/// What the shell read at one sampling time.
#[derive(Debug, Clone)]
pub struct Reading {
    /// When, Unix seconds.
    pub at: f64,
    /// INVITEs received so far (a counter).
    pub invites: u64,
    /// 503 responses sent so far, every reason (a counter).
    pub rejected_503: u64,
    /// Per server, the round trip of its last answered probe in milliseconds; `None`
    /// while it is down or not measured yet.
    pub rtt_ms: Vec<(ServerKey, Option<f64>)>,
}

/// A pair switch, as the charts mark it.
#[derive(Debug, Clone, PartialEq)]
pub struct SwitchEvent {
    /// Pair name.
    pub pair: String,
    /// When, Unix seconds.
    pub at: f64,
    /// The member active before (`None`: out of service).
    pub from: Option<&'static str>,
    /// The member active after (`None`: out of service).
    pub to: Option<&'static str>,
    /// Why.
    pub why: String,
}

/// One point of the charts.
#[derive(Debug, Clone)]
struct Sample {
    at: f64,
    calls_per_s: f64,
    rejected_per_s: f64,
    /// Indexed like `History::servers`; shorter when servers were added later.
    rtt_ms: Vec<Option<f64>>,
}

/// The ring buffer of samples and the switches of its window (see the module
/// documentation).
#[derive(Debug)]
pub struct History {
    period: Duration,
    capacity: usize,
    samples: VecDeque<Sample>,
    servers: Vec<ServerKey>,
    /// The previous reading's time and counters: rates are taken against it.
    last: Option<(f64, u64, u64)>,
    switches: VecDeque<SwitchEvent>,
    /// The number of the last switch taken in (switches are numbered by their source).
    switch_seq: u64,
}

impl Default for History {
    fn default() -> Self {
        History::new(PERIOD, CAPACITY)
    }
}

impl History {
    /// An empty history of `capacity` samples taken every `period`.
    pub fn new(period: Duration, capacity: usize) -> History {
        History {
            period,
            capacity: capacity.max(1),
            samples: VecDeque::with_capacity(capacity.max(1)),
            servers: Vec::new(),
            last: None,
            switches: VecDeque::new(),
            switch_seq: 0,
        }
    }

    /// The time the window covers.
    pub fn window(&self) -> Duration {
        self.period
            .saturating_mul(u32::try_from(self.capacity).unwrap_or(u32::MAX))
    }

    /// Takes in a reading: a sample of the rates since the previous reading (the first
    /// reading, and one taken at or before the previous one, only sets the baseline), the
    /// oldest sample dropped when the buffer is full.
    pub fn record(&mut self, r: Reading) {
        let previous = self.last.replace((r.at, r.invites, r.rejected_503));
        let Some((at, invites, rejected)) = previous else {
            return;
        };
        let dt = r.at - at;
        if dt.is_nan() || dt <= 0.0 {
            return;
        }
        let mut rtt_ms = vec![None; self.servers.len()];
        for (key, rtt) in r.rtt_ms {
            let i = match self.servers.iter().position(|k| *k == key) {
                Some(i) => i,
                None => {
                    self.servers.push(key);
                    rtt_ms.push(None);
                    self.servers.len() - 1
                }
            };
            if let Some(slot) = rtt_ms.get_mut(i) {
                *slot = rtt;
            }
        }
        if self.samples.len() >= self.capacity {
            self.samples.pop_front();
        }
        self.samples.push_back(Sample {
            at: r.at,
            calls_per_s: r.invites.saturating_sub(invites) as f64 / dt,
            rejected_per_s: r.rejected_503.saturating_sub(rejected) as f64 / dt,
            rtt_ms,
        });
        self.forget_switches_before(r.at - self.window().as_secs_f64());
    }

    /// The number of the last switch taken in (0: none yet).
    pub fn switch_seq(&self) -> u64 {
        self.switch_seq
    }

    /// Takes in switch number `seq` (numbered from 1 by their source, in order); one
    /// already taken in is ignored.
    pub fn switched(&mut self, seq: u64, e: SwitchEvent) {
        if seq <= self.switch_seq {
            return;
        }
        self.switch_seq = seq;
        if self.switches.len() >= MAX_SWITCHES {
            self.switches.pop_front();
        }
        self.switches.push_back(e);
    }

    fn forget_switches_before(&mut self, t: f64) {
        while self.switches.front().is_some_and(|s| s.at < t) {
            self.switches.pop_front();
        }
    }

    /// How many samples are kept now.
    pub fn len(&self) -> usize {
        self.samples.len()
    }

    /// Whether no sample was taken yet.
    pub fn is_empty(&self) -> bool {
        self.samples.is_empty()
    }

    /// The `/status/history` document: columns of equal length (`t`, `calls_per_s`,
    /// `rejected_503_per_s`, and one `rtt_ms` column per server, `null` where it was down
    /// or not measured) and the switches of the window, oldest first.
    pub fn to_json(&self, now: f64) -> Value {
        let col = |f: &dyn Fn(&Sample) -> f64| -> Vec<f64> {
            self.samples.iter().map(|s| round(f(s), 1000.0)).collect()
        };
        let servers: Vec<Value> = self
            .servers
            .iter()
            .enumerate()
            .map(|(i, k)| {
                let values: Vec<Option<f64>> = self
                    .samples
                    .iter()
                    .map(|s| s.rtt_ms.get(i).copied().flatten().map(|v| round(v, 100.0)))
                    .collect();
                json!({"pair": k.pair, "member": k.member, "server": k.server, "rtt_ms": values})
            })
            .collect();
        let switches: Vec<Value> = self
            .switches
            .iter()
            .map(|s| json!({"pair": s.pair, "at": s.at, "from": s.from, "to": s.to, "why": s.why}))
            .collect();
        json!({
            "now": now,
            "period_s": self.period.as_secs_f64(),
            "window_s": self.window().as_secs_f64(),
            "t": col(&|s| s.at),
            "calls_per_s": col(&|s| s.calls_per_s),
            "rejected_503_per_s": col(&|s| s.rejected_per_s),
            "servers": servers,
            "switches": switches,
        })
    }
}

fn round(v: f64, scale: f64) -> f64 {
    (v * scale).round() / scale
}

#[cfg(test)]
mod tests {
    use super::*;

    fn key(pair: &str, member: &'static str) -> ServerKey {
        ServerKey {
            pair: pair.into(),
            member,
            server: format!("{pair}-{member}:5060"),
        }
    }

    fn reading(
        at: f64,
        invites: u64,
        rejected: u64,
        rtt: &[(&'static str, Option<f64>)],
    ) -> Reading {
        Reading {
            at,
            invites,
            rejected_503: rejected,
            rtt_ms: rtt.iter().map(|(m, v)| (key("a", m), *v)).collect(),
        }
    }

    fn switch(at: f64) -> SwitchEvent {
        SwitchEvent {
            pair: "a".into(),
            at,
            from: Some("primary"),
            to: Some("backup"),
            why: "test".into(),
        }
    }

    #[test]
    fn rates_are_counter_deltas_over_the_time_between_readings() {
        let mut h = History::new(PERIOD, 10);
        h.record(reading(1000.0, 40, 2, &[]));
        assert!(h.is_empty(), "the first reading is only the baseline");
        h.record(reading(1005.0, 90, 2, &[]));
        h.record(reading(1015.0, 90, 32, &[]));
        let j = h.to_json(1016.0);
        assert_eq!(j["t"], json!([1005.0, 1015.0]));
        assert_eq!(j["calls_per_s"], json!([10.0, 0.0]));
        assert_eq!(j["rejected_503_per_s"], json!([0.0, 3.0]));
        assert_eq!(j["period_s"], json!(5.0));
        assert_eq!(j["window_s"], json!(50.0));
    }

    #[test]
    fn a_clock_going_back_or_standing_still_makes_no_sample_and_no_spike() {
        let mut h = History::new(PERIOD, 10);
        h.record(reading(1000.0, 0, 0, &[]));
        h.record(reading(1000.0, 100, 0, &[]));
        h.record(reading(990.0, 200, 0, &[]));
        assert!(h.is_empty());
        h.record(reading(995.0, 210, 0, &[]));
        assert_eq!(h.to_json(995.0)["calls_per_s"], json!([2.0]));
    }

    #[test]
    fn a_counter_that_went_down_counts_as_nothing_not_as_a_huge_rate() {
        let mut h = History::new(PERIOD, 10);
        h.record(reading(0.0, 100, 100, &[]));
        h.record(reading(5.0, 10, 10, &[]));
        let j = h.to_json(5.0);
        assert_eq!(j["calls_per_s"], json!([0.0]));
        assert_eq!(j["rejected_503_per_s"], json!([0.0]));
    }

    #[test]
    fn the_ring_keeps_the_newest_samples_only() {
        let mut h = History::new(PERIOD, 3);
        for i in 0..=10u64 {
            h.record(reading(i as f64 * 5.0, i * 5, 0, &[]));
        }
        assert_eq!(h.len(), 3);
        let j = h.to_json(50.0);
        assert_eq!(j["t"], json!([40.0, 45.0, 50.0]));
        assert_eq!(j["calls_per_s"], json!([1.0, 1.0, 1.0]));
    }

    #[test]
    fn rtt_columns_line_up_with_samples_and_servers_can_appear_later() {
        let mut h = History::new(PERIOD, 10);
        h.record(reading(0.0, 0, 0, &[]));
        h.record(reading(5.0, 0, 0, &[("primary", Some(1.234))]));
        h.record(reading(
            10.0,
            0,
            0,
            &[("primary", None), ("backup", Some(2.0))],
        ));
        h.record(reading(
            15.0,
            0,
            0,
            &[("backup", Some(3.0)), ("primary", Some(4.0))],
        ));
        let j = h.to_json(15.0);
        let servers = j["servers"].as_array().unwrap();
        assert_eq!(servers.len(), 2);
        assert_eq!(servers[0]["member"], "primary");
        assert_eq!(servers[0]["server"], "a-primary:5060");
        assert_eq!(servers[0]["rtt_ms"], json!([1.23, null, 4.0]));
        assert_eq!(servers[1]["member"], "backup");
        assert_eq!(servers[1]["rtt_ms"], json!([null, 2.0, 3.0]));
    }

    #[test]
    fn switches_are_taken_in_once_and_age_out_with_the_window() {
        let mut h = History::new(PERIOD, 4); // a 20 s window
        h.record(reading(100.0, 0, 0, &[]));
        h.switched(1, switch(101.0));
        h.switched(1, switch(101.0));
        h.switched(2, switch(108.0));
        assert_eq!(h.switch_seq(), 2);
        let j = h.to_json(109.0);
        assert_eq!(j["switches"].as_array().unwrap().len(), 2);
        assert_eq!(j["switches"][0]["at"], json!(101.0));
        assert_eq!(j["switches"][0]["from"], "primary");
        assert_eq!(j["switches"][0]["to"], "backup");
        h.record(reading(125.0, 0, 0, &[]));
        let j = h.to_json(125.0);
        assert_eq!(
            j["switches"][0]["at"],
            json!(108.0),
            "101 is out of the window"
        );
        assert_eq!(j["switches"].as_array().unwrap().len(), 1);
    }

    #[test]
    fn switches_are_bounded_in_number() {
        let mut h = History::default();
        for seq in 1..=(MAX_SWITCHES as u64 + 5) {
            h.switched(seq, switch(seq as f64));
        }
        let j = h.to_json(1000.0);
        let s = j["switches"].as_array().unwrap();
        assert_eq!(s.len(), MAX_SWITCHES);
        assert_eq!(s[0]["at"], json!(6.0), "the oldest went first");
    }

    #[test]
    fn an_empty_history_is_a_valid_document() {
        let h = History::default();
        let j = h.to_json(1.0);
        assert_eq!(j["t"], json!([]));
        assert_eq!(j["servers"], json!([]));
        assert_eq!(j["switches"], json!([]));
        assert_eq!(j["window_s"], json!(900.0));
    }
}
