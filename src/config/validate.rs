//! Validation: [`Config::validate`] turns the file's view into the [`Settings`] the running
//! proxy uses.
//!
//! This file owns every check of a value, each error naming its key (`pair[0].primary`,
//! `tls.key`), and the validated types ([`Settings`] and what it holds). It may look whether a
//! named file exists, but must not open sockets, read certificates or start anything:
//! `sippool check-config` runs exactly this code.

use std::net::SocketAddr;
use std::path::Path;
use std::str::FromStr;
use std::time::Duration;

use super::{err, Config, ConfigError, HostPort, LimitsConfig, Listener, Pair, StaticRoute};
use crate::sip::proxy::{LocalIdentity, Router};
use crate::sip::transport::Transport;

/// Client certificate policy of TLS listeners.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ClientAuth {
    /// No client certificate is asked for.
    None,
    /// A client certificate is verified when offered.
    Optional,
    /// A verified client certificate is required.
    Required,
}

/// TLS settings after validation.
#[derive(Debug, Clone)]
pub struct TlsSettings {
    /// Certificate chain file.
    pub cert: Option<std::path::PathBuf>,
    /// Key file.
    pub key: Option<std::path::PathBuf>,
    /// Client CA file.
    pub client_ca: Option<std::path::PathBuf>,
    /// Client certificate policy.
    pub client_auth: ClientAuth,
    /// CA file for upstream servers' certificates.
    pub upstream_ca: Option<std::path::PathBuf>,
    /// Name upstream certificates must carry, instead of each server's host.
    pub upstream_server_name: Option<String>,
    /// File change check interval; `None`: only on SIGHUP.
    pub watch: Option<Duration>,
}
/// TCP keep-alive settings after validation.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Keepalive {
    /// Silence before the first probe.
    pub idle: Duration,
    /// Between probes.
    pub interval: Duration,
    /// Unanswered probes that mean dead.
    pub count: u32,
}
impl Settings {
    /// This instance's identity: its advertised host, listeners and configured names (the
    /// shell adds what it learns from the host: its name and interface addresses).
    pub fn identity(&self) -> LocalIdentity {
        let identity = LocalIdentity::new(self.advertised_host.clone(), self.listeners.clone())
            .with_names(&self.names);
        match &self.pool {
            Some(p) => identity.with_pool(&p.name, p.sides),
            None => identity,
        }
    }

    /// The routing table: pairs, static routes and the serving pair.
    pub fn router(&self) -> Router {
        Router {
            pairs: self.pairs.clone(),
            routes: self.routes.clone(),
            serving: self.serving_pair,
        }
    }
}

/// The validated settings the running proxy uses.
#[derive(Debug, Clone)]
pub struct Settings {
    /// Instance name.
    pub name: String,
    /// Host written into Via and Record-Route.
    pub advertised_host: String,
    /// Other DNS names this instance is known by (`instance.names`), lower-case.
    pub names: Vec<String>,
    /// Listen sockets.
    pub listeners: Vec<Listener>,
    /// Upstream pairs.
    pub pairs: Vec<Pair>,
    /// Index into `pairs` of the serving pair.
    pub serving_pair: usize,
    /// Static routes.
    pub routes: Vec<StaticRoute>,
    /// INVITEs per second, 0 = off.
    pub invite_rate: u32,
    /// Caps.
    pub limits: LimitsConfig,
    /// RFC 3261 timers.
    pub timers: crate::sip::transaction::Timers,
    /// Runtime threads.
    pub worker_threads: usize,
    /// Shared-nothing workers (`runtime.workers`, `auto` resolved).
    pub workers: usize,
    /// Longest graceful drain.
    pub drain_timeout: Duration,
    /// HTTP endpoint address, if any.
    pub http: Option<SocketAddr>,
    /// Bearer token for the HTTP endpoints that change state; `None`: they are off.
    pub admin_token: Option<String>,
    /// TLS settings (listeners and connections toward servers), if any.
    pub tls: Option<TlsSettings>,
    /// Flow-token key (`None`: a random key per process).
    pub flow_key: Option<Vec<u8>>,
    /// The pool this instance belongs to, if configured.
    pub pool: Option<super::pool::PoolSettings>,
    /// DNS servers to ask (empty: the system's).
    pub dns_servers: Vec<SocketAddr>,
    /// DNS query timeout.
    pub dns_timeout: Duration,
    /// Upstream probing.
    pub probe: crate::health::probe::ProbeConfig,
    /// No-response time after which a request is retried on the other pair member.
    pub failover_timeout: Duration,
    /// Bounds of the failover timer that follows each member's response time.
    pub failover_bounds: crate::health::rtt::FailoverBounds,
    /// TCP keep-alive, when on.
    pub keepalive: Option<Keepalive>,
    /// The log filter (`log.level`, completed: see [`log_filter`]).
    pub log_filter: String,
    /// The file's view these settings were validated from (what a reload compares).
    pub source: std::sync::Arc<Config>,
}

/// The log filter `log.level` gives: the level or filter as written, with ractor's spans
/// kept at `warn` unless it names ractor (ractor opens a span per actor: one per
/// transaction, held for its life, issue 17).
pub fn log_filter(level: &str) -> Result<String, ConfigError> {
    let level = level.trim();
    if level.is_empty() {
        return Err(err("log.level", "must not be empty (e.g. info)"));
    }
    let filter = if level.contains("ractor") {
        level.to_string()
    } else {
        format!("{level},ractor=warn")
    };
    tracing_subscriber::EnvFilter::builder()
        .parse(&filter)
        .map_err(|e| {
            err(
                "log.level",
                format!("'{level}' is not a level or filter: {e}"),
            )
        })?;
    Ok(filter)
}
impl Config {
    /// An upstream server or route target; a `transport=tls` one needs `tls.upstream_ca`
    /// to verify it against.
    fn parse_upstream(&self, value: &str, key: &str) -> Result<HostPort, ConfigError> {
        let hp = HostPort::from_str(value).map_err(|e| err(key, format!("'{value}': {e}")))?;
        if hp.transport == Transport::Tls
            && self.tls.as_ref().is_none_or(|t| t.upstream_ca.is_none())
        {
            return Err(err(
                key,
                "a transport=tls server needs tls.upstream_ca to verify it against",
            ));
        }
        Ok(hp)
    }

    /// Checks every key and turns the file's view into [`Settings`].
    pub fn validate(&self) -> Result<Settings, ConfigError> {
        if self.instance.name.trim().is_empty() {
            return Err(err("instance.name", "must not be empty"));
        }
        if self.listen.is_empty() {
            return Err(err("listen", "at least one [[listen]] socket is required"));
        }
        let mut listeners = Vec::with_capacity(self.listen.len());
        for (i, l) in self.listen.iter().enumerate() {
            let transport = Transport::from_str(&l.transport).map_err(|_| {
                err(
                    format!("listen[{i}].transport"),
                    format!("unknown transport '{}' (udp, tcp or tls)", l.transport),
                )
            })?;
            if transport == Transport::Tls
                && self
                    .tls
                    .as_ref()
                    .is_none_or(|t| t.cert.is_none() || t.key.is_none())
            {
                return Err(err(
                    format!("listen[{i}].transport"),
                    "a tls listener needs a [tls] section with cert and key",
                ));
            }
            let address = SocketAddr::from_str(l.address.trim()).map_err(|e| {
                err(
                    format!("listen[{i}].address"),
                    format!("'{}' is not a socket address: {e}", l.address),
                )
            })?;
            if listeners
                .iter()
                .any(|o: &Listener| o.transport == transport && o.address == address)
            {
                return Err(err(format!("listen[{i}]"), "duplicate listen socket"));
            }
            let mut listener = Listener::new(transport, address);
            listener.advertised = match (&l.advertised_host, l.advertised_port) {
                (None, None) => None,
                (None, Some(_)) => {
                    return Err(err(
                        format!("listen[{i}].advertised_port"),
                        "needs listen[i].advertised_host",
                    ))
                }
                (Some(h), port) => {
                    let h = h.trim().trim_matches(['[', ']']);
                    if h.is_empty() || h.contains(char::is_whitespace) {
                        return Err(err(
                            format!("listen[{i}].advertised_host"),
                            format!("'{h}' is not a host name or IP address"),
                        ));
                    }
                    Some((h.to_string(), port))
                }
            };
            listener.dscp = match l.dscp {
                Some(d) if d > 63 => {
                    return Err(err(format!("listen[{i}].dscp"), "must be 0 to 63"));
                }
                d => d,
            };
            if l.proxy_protocol && transport == Transport::Udp {
                return Err(err(
                    format!("listen[{i}].proxy_protocol"),
                    "only for tcp and tls listeners",
                ));
            }
            listener.proxy_protocol = l.proxy_protocol;
            listeners.push(listener);
        }
        let advertised_host = match &self.instance.advertised_host {
            Some(h) if !h.trim().is_empty() => h.trim().trim_matches(['[', ']']).to_string(),
            Some(_) => return Err(err("instance.advertised_host", "must not be empty")),
            None => {
                let ip = listeners
                    .first()
                    .map(|l| l.address.ip())
                    .ok_or_else(|| err("listen", "at least one [[listen]] socket is required"))?;
                if ip.is_unspecified() {
                    return Err(err(
                        "instance.advertised_host",
                        "required when listen[0].address is unspecified (0.0.0.0 or ::)",
                    ));
                }
                ip.to_string()
            }
        };
        let mut names = Vec::with_capacity(self.instance.names.len());
        for (i, n) in self.instance.names.iter().enumerate() {
            names.push(super::pool::dns_name(&format!("instance.names[{i}]"), n)?);
        }
        if self.pair.is_empty() {
            return Err(err("pair", "at least one [[pair]] is required"));
        }
        let mut pairs = Vec::with_capacity(self.pair.len());
        for (i, p) in self.pair.iter().enumerate() {
            if p.name.trim().is_empty() {
                return Err(err(format!("pair[{i}].name"), "must not be empty"));
            }
            if pairs.iter().any(|q: &Pair| q.name == p.name) {
                return Err(err(
                    format!("pair[{i}].name"),
                    format!("duplicate pair name '{}'", p.name),
                ));
            }
            let primary = self.parse_upstream(&p.primary, &format!("pair[{i}].primary"))?;
            let backup = self.parse_upstream(&p.backup, &format!("pair[{i}].backup"))?;
            pairs.push(Pair {
                name: p.name.clone(),
                domain: p.domain.as_ref().map(|d| d.trim().to_ascii_lowercase()),
                primary,
                backup,
                failback: p.failback,
            });
        }
        let serving_pair = match &self.routing.serving_pair {
            None => 0,
            Some(name) => pairs.iter().position(|p| &p.name == name).ok_or_else(|| {
                err(
                    "routing.serving_pair",
                    format!("no [[pair]] named '{name}'"),
                )
            })?,
        };
        let mut routes = Vec::with_capacity(self.route.len());
        for (i, r) in self.route.iter().enumerate() {
            if r.domain.trim().is_empty() {
                return Err(err(format!("route[{i}].domain"), "must not be empty"));
            }
            routes.push(StaticRoute {
                domain: r.domain.trim().to_ascii_lowercase(),
                target: self.parse_upstream(&r.target, &format!("route[{i}].target"))?,
            });
        }
        let l = &self.limits;
        if l.max_message_size < 1500 || l.max_message_size > 1 << 20 {
            return Err(err(
                "limits.max_message_size",
                "must be between 1500 and 1048576 bytes",
            ));
        }
        if l.max_headers < 8 || l.max_headers > 4096 {
            return Err(err("limits.max_headers", "must be between 8 and 4096"));
        }
        if l.max_transactions == 0 {
            return Err(err("limits.max_transactions", "must be at least 1"));
        }
        if l.max_connections_per_ip == 0 {
            return Err(err("limits.max_connections_per_ip", "must be at least 1"));
        }
        if l.message_timeout_ms < 100 {
            return Err(err("limits.message_timeout_ms", "must be at least 100 ms"));
        }
        if l.max_connections == 0 {
            return Err(err("limits.max_connections", "must be at least 1"));
        }
        let t = &self.timers;
        if t.t1_ms == 0 || t.t2_ms < t.t1_ms || t.t4_ms == 0 {
            return Err(err(
                "timers",
                "t1_ms, t4_ms must be positive and t2_ms >= t1_ms",
            ));
        }
        if t.timer_c_s < 3 {
            return Err(err("timers.timer_c_s", "must be at least 3 seconds"));
        }
        // The client's first retransmission comes after T1: 100 Trying must be out by then.
        // Unset: the transaction layer's default (section 17.2.1's 200 ms), unless half of T1
        // is shorter.
        let trying = match t.trying_ms {
            Some(ms) if ms >= t.t1_ms => {
                return Err(err("timers.trying_ms", "must be less than timers.t1_ms"));
            }
            Some(ms) => Duration::from_millis(ms),
            None => crate::sip::transaction::Timers::default()
                .trying
                .min(Duration::from_millis(t.t1_ms / 2)),
        };
        if self.runtime.worker_threads == 0 || self.runtime.worker_threads > 256 {
            return Err(err("runtime.worker_threads", "must be between 1 and 256"));
        }
        let workers = match &self.runtime.workers {
            super::schema::Workers::Count(n) if (1..=256).contains(n) => *n,
            // A work-stealing runtime asked for by `worker_threads` is the choice made.
            super::schema::Workers::Named(a) if a == "auto" && self.runtime.worker_threads > 1 => 1,
            super::schema::Workers::Named(a) if a == "auto" => {
                std::thread::available_parallelism().map_or(1, |n| n.get().min(256))
            }
            _ => {
                return Err(err(
                    "runtime.workers",
                    "a number between 1 and 256, or \"auto\"",
                ))
            }
        };
        if workers > 1 && self.runtime.worker_threads > 1 {
            return Err(err(
                "runtime.workers",
                "workers and worker_threads above 1 do not go together: use workers",
            ));
        }
        let h = &self.health;
        if h.oos_force == 0 {
            return Err(err("health.oos_force", "must be at least 1 second"));
        }
        if h.probe_timeout_ms < 10 {
            return Err(err("health.probe_timeout_ms", "must be at least 10 ms"));
        }
        if h.down_after == 0 {
            return Err(err("health.down_after", "must be at least 1"));
        }
        if h.up_after == 0 {
            return Err(err("health.up_after", "must be at least 1"));
        }
        if h.failover_timeout_ms < 10 {
            return Err(err("health.failover_timeout_ms", "must be at least 10 ms"));
        }
        if h.failover_min_ms < 10 || h.failover_min_ms > h.failover_timeout_ms {
            return Err(err(
                "health.failover_min_ms",
                "must be at least 10 ms and at most health.failover_timeout_ms",
            ));
        }
        let mut dns_servers = Vec::with_capacity(self.dns.servers.len());
        for (i, d) in self.dns.servers.iter().enumerate() {
            dns_servers.push(SocketAddr::from_str(d.trim()).map_err(|e| {
                err(
                    format!("dns.servers[{i}]"),
                    format!("'{d}' is not ip:port: {e}"),
                )
            })?);
        }
        if self.dns.timeout_ms == 0 {
            return Err(err("dns.timeout_ms", "must be positive"));
        }
        let http = match &self.http {
            None => None,
            Some(h) => Some(SocketAddr::from_str(h.address.trim()).map_err(|e| {
                err(
                    "http.address",
                    format!("'{}' is not a socket address: {e}", h.address),
                )
            })?),
        };
        let admin_token = match self.http.as_ref().and_then(|h| h.admin_token.as_deref()) {
            None => None,
            Some(t) if t.trim().len() < 16 => {
                return Err(err(
                    "http.admin_token",
                    "must be at least 16 characters (a guessable token guards nothing)",
                ))
            }
            Some(t) => Some(t.trim().to_string()),
        };
        let tls = match &self.tls {
            None => None,
            Some(t) => {
                let client_auth = match (t.client_ca.as_deref(), t.client_auth.as_deref()) {
                    (None, None) => ClientAuth::None,
                    (None, Some(_)) => {
                        return Err(err(
                            "tls.client_auth",
                            "needs tls.client_ca to verify against",
                        ))
                    }
                    (Some(_), None | Some("required")) => ClientAuth::Required,
                    (Some(_), Some("optional")) => ClientAuth::Optional,
                    (Some(_), Some(other)) => {
                        return Err(err(
                            "tls.client_auth",
                            format!("'{other}' is not required or optional"),
                        ))
                    }
                };
                if t.cert.is_some() != t.key.is_some() {
                    return Err(err(
                        if t.cert.is_some() {
                            "tls.key"
                        } else {
                            "tls.cert"
                        },
                        "tls.cert and tls.key go together",
                    ));
                }
                for (key, path) in [
                    ("tls.cert", t.cert.as_ref()),
                    ("tls.key", t.key.as_ref()),
                    ("tls.client_ca", t.client_ca.as_ref()),
                    ("tls.upstream_ca", t.upstream_ca.as_ref()),
                ] {
                    if let Some(p) = path {
                        if !Path::new(p).is_file() {
                            return Err(err(key, format!("file {p} not found")));
                        }
                    }
                }
                Some(TlsSettings {
                    cert: t.cert.clone().map(Into::into),
                    key: t.key.clone().map(Into::into),
                    client_ca: t.client_ca.clone().map(Into::into),
                    client_auth,
                    upstream_ca: t.upstream_ca.clone().map(Into::into),
                    upstream_server_name: t.upstream_server_name.clone(),
                    watch: (t.watch_s > 0).then(|| Duration::from_secs(t.watch_s)),
                })
            }
        };
        let flow_key = match &self.flow {
            None => None,
            Some(f) => {
                let k = f.token_key.trim();
                if k.len() < 32
                    || !k.len().is_multiple_of(2)
                    || !k.bytes().all(|b| b.is_ascii_hexdigit())
                {
                    return Err(err(
                        "flow.token_key",
                        "must be at least 16 bytes written as hex (32+ hex digits)",
                    ));
                }
                Some(
                    k.as_bytes()
                        .chunks(2)
                        .filter_map(|p| std::str::from_utf8(p).ok())
                        .filter_map(|p| u8::from_str_radix(p, 16).ok())
                        .collect(),
                )
            }
        };
        let k = &self.keepalive;
        let keepalive = if k.idle_s == 0 {
            None
        } else {
            if k.interval_s == 0 || k.interval_s > 3600 {
                return Err(err("keepalive.interval_s", "must be 1 to 3600 seconds"));
            }
            if k.count == 0 || k.count > 100 {
                return Err(err("keepalive.count", "must be 1 to 100"));
            }
            if k.idle_s > 86_400 {
                return Err(err("keepalive.idle_s", "must be 0 (off) to 86400 seconds"));
            }
            Some(Keepalive {
                idle: Duration::from_secs(k.idle_s),
                interval: Duration::from_secs(k.interval_s),
                count: k.count,
            })
        };
        let pool = match &self.pool {
            Some(p) => Some(super::pool::validate(p, flow_key.is_some())?),
            None => None,
        };
        let log_filter = log_filter(&self.log.level)?;
        Ok(Settings {
            source: std::sync::Arc::new(self.clone()),
            log_filter,
            pool,
            keepalive,
            flow_key,
            tls,
            http,
            admin_token,
            dns_servers,
            dns_timeout: Duration::from_millis(self.dns.timeout_ms),
            probe: crate::health::probe::ProbeConfig {
                oos_check: (h.oos_check > 0).then(|| Duration::from_secs(h.oos_check)),
                oos_force: Duration::from_secs(h.oos_force),
                timeout: Duration::from_millis(h.probe_timeout_ms),
                down_after: h.down_after,
                up_after: h.up_after,
                breaker_failures: h.breaker_failures,
                breaker_probation: Duration::from_secs(h.breaker_probation_s),
            },
            failover_timeout: Duration::from_millis(h.failover_timeout_ms),
            failover_bounds: crate::health::rtt::FailoverBounds {
                min: Duration::from_millis(h.failover_min_ms),
                max: Duration::from_millis(h.failover_timeout_ms),
            },
            worker_threads: self.runtime.worker_threads,
            workers,
            drain_timeout: Duration::from_secs(self.runtime.drain_timeout_s),
            name: self.instance.name.clone(),
            advertised_host,
            names,
            listeners,
            pairs,
            serving_pair,
            routes,
            invite_rate: self.overload.invite_rate,
            limits: self.limits.clone(),
            timers: crate::sip::transaction::Timers {
                t1: Duration::from_millis(t.t1_ms),
                t2: Duration::from_millis(t.t2_ms),
                t4: Duration::from_millis(t.t4_ms),
                timer_c: Duration::from_secs(t.timer_c_s),
                trying,
            },
        })
    }
}
