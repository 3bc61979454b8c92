//! Configuration: one TOML file plus `SIPPOOL__SECTION__KEY` environment overrides.
//!
//! This module owns loading, defaults and validation. Every error names the key it is about
//! (`pair[0].primary: ...`), and unknown keys are errors, not silence. It must not open
//! sockets or start anything: `sippool check-config` runs exactly this code and nothing more.

use std::fmt;
use std::net::{IpAddr, SocketAddr};
use std::path::Path;
use std::str::FromStr;
use std::time::Duration;

use serde::Deserialize;

use crate::sip::transport::Transport;

/// The whole configuration of one sippool instance.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Config {
    /// Identity of this instance.
    pub instance: InstanceConfig,
    /// Listen sockets, each with its own transport.
    #[serde(default)]
    pub listen: Vec<ListenConfig>,
    /// Upstream primary/backup pairs.
    #[serde(default)]
    pub pair: Vec<PairConfig>,
    /// Static routes: domain -> next hop, as for a partner domain.
    #[serde(default)]
    pub route: Vec<StaticRouteConfig>,
    /// Which pair serves requests from endpoints.
    #[serde(default)]
    pub routing: RoutingConfig,
    /// Upstream health probing.
    #[serde(default)]
    pub health: HealthConfig,
    /// Overload protection.
    #[serde(default)]
    pub overload: OverloadConfig,
    /// Caps that keep memory bounded.
    #[serde(default)]
    pub limits: LimitsConfig,
    /// RFC 3261 timer values.
    #[serde(default)]
    pub timers: TimersConfig,
    /// Threads.
    #[serde(default)]
    pub runtime: RuntimeConfig,
    /// TCP keep-alive on stream connections.
    #[serde(default)]
    pub keepalive: KeepaliveConfig,
    /// DNS resolution of upstream names (RFC 3263).
    #[serde(default)]
    pub dns: DnsConfig,
    /// The HTTP endpoint (`/metrics`, `/status`, `/healthz`, `/readyz`, `/`).
    #[serde(default)]
    pub http: Option<HttpConfig>,
    /// TLS: listeners' certificates, client and upstream CAs.
    #[serde(default)]
    pub tls: Option<TlsConfig>,
    /// Flow tokens.
    #[serde(default)]
    pub flow: Option<FlowConfig>,
}

/// `[flow]`
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct FlowConfig {
    /// HMAC key for flow tokens, hex, the same on every instance of the pool.
    pub token_key: String,
}

/// `[tls]`
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct TlsConfig {
    /// Certificate chain, PEM (needed by TLS listeners; offered to upstream servers that ask
    /// for a client certificate).
    #[serde(default)]
    pub cert: Option<String>,
    /// Private key, PEM.
    #[serde(default)]
    pub key: Option<String>,
    /// CA certificates that client certificates must chain to, PEM; set => mutual TLS.
    #[serde(default)]
    pub client_ca: Option<String>,
    /// `required` (default) or `optional` (a certificate, when offered, is verified).
    #[serde(default)]
    pub client_auth: Option<String>,
    /// CA certificates that upstream servers' certificates must chain to, PEM (needed by
    /// `transport=tls` upstreams).
    #[serde(default)]
    pub upstream_ca: Option<String>,
    /// The name upstream certificates must carry; default: the host of each server's URI.
    #[serde(default)]
    pub upstream_server_name: Option<String>,
    /// How often the files are checked for a change, in seconds (0: only on SIGHUP).
    #[serde(default = "default_tls_watch_s")]
    pub watch_s: u64,
}

fn default_tls_watch_s() -> u64 {
    10
}

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

/// `[http]`
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct HttpConfig {
    /// Socket address to serve on.
    pub address: String,
}

/// `[dns]`
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct DnsConfig {
    /// DNS servers (`ip:port`); empty uses the system's resolvers (`/etc/resolv.conf`).
    pub servers: Vec<String>,
    /// Query timeout (ms).
    pub timeout_ms: u64,
}

impl Default for DnsConfig {
    fn default() -> Self {
        DnsConfig {
            servers: Vec::new(),
            timeout_ms: 2000,
        }
    }
}

/// `[keepalive]`: SO_KEEPALIVE on every TCP and TLS connection, to find connections that
/// died silently behind a firewall or NAT (RFC 5626 section 4.4 leaves the choice of
/// mechanism to the flow's ends; CRLF pings are answered regardless).
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct KeepaliveConfig {
    /// Seconds of silence before the first probe; 0 turns TCP keep-alive off.
    pub idle_s: u64,
    /// Seconds between unanswered probes.
    pub interval_s: u64,
    /// Unanswered probes after which the connection is dead.
    pub count: u32,
}

impl Default for KeepaliveConfig {
    fn default() -> Self {
        KeepaliveConfig {
            idle_s: 60,
            interval_s: 10,
            count: 3,
        }
    }
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

/// `[runtime]`
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct RuntimeConfig {
    /// Threads that run the proxy. 1 (the default) runs everything on one thread, which
    /// costs the fewest CPU cycles per call; raise it when one core is saturated.
    pub worker_threads: usize,
    /// On SIGTERM/SIGINT, how long transactions in flight may take to finish (seconds).
    pub drain_timeout_s: u64,
}

impl Default for RuntimeConfig {
    fn default() -> Self {
        RuntimeConfig {
            worker_threads: 1,
            drain_timeout_s: 30,
        }
    }
}

/// `[instance]`
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct InstanceConfig {
    /// Appears in logs, metrics and the status page.
    pub name: String,
    /// Host put in Via, Record-Route and Path. Defaults to the first listen address's IP
    /// (required when that address is unspecified, such as `0.0.0.0`).
    #[serde(default)]
    pub advertised_host: Option<String>,
}

/// `[[listen]]`
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ListenConfig {
    /// `udp` or `tcp`.
    pub transport: String,
    /// Socket address, IPv4 (`0.0.0.0:5060`) or IPv6 (`[::]:5060`).
    pub address: String,
}

/// `[[pair]]`
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct PairConfig {
    /// Name used by `routing.serving_pair`, logs and metrics.
    pub name: String,
    /// SIP domain served by this pair; a request for it goes to the pair's active member.
    #[serde(default)]
    pub domain: Option<String>,
    /// Primary server, `host:port;transport=udp|tcp`.
    pub primary: String,
    /// Backup server, same form.
    pub backup: String,
    /// Return to the primary when it answers again (default false: no flapping).
    #[serde(default)]
    pub failback: bool,
}

/// `[[route]]`
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct StaticRouteConfig {
    /// Request-URI or top Route host that selects this route.
    pub domain: String,
    /// Next hop, `host:port;transport=udp|tcp`.
    pub target: String,
}

/// `[routing]`
#[derive(Debug, Clone, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RoutingConfig {
    /// Pair that receives requests from endpoints; defaults to the first `[[pair]]`.
    #[serde(default)]
    pub serving_pair: Option<String>,
}

/// `[health]`
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct HealthConfig {
    /// Seconds between OPTIONS probes of an in-service server; 0 disables probing.
    pub oos_check: u64,
    /// Seconds between OPTIONS probes of an out-of-service server.
    pub oos_force: u64,
    /// How long a probe may go unanswered (ms).
    pub probe_timeout_ms: u64,
    /// Missed probes before a server is out of service.
    pub down_after: u32,
    /// Answered probes before an out-of-service server is back.
    pub up_after: u32,
    /// A request sent to a pair member that gets no response at all within this time (ms)
    /// is sent to the other member instead.
    pub failover_timeout_ms: u64,
}

impl Default for HealthConfig {
    fn default() -> Self {
        HealthConfig {
            oos_check: 5,
            oos_force: 5,
            probe_timeout_ms: 1000,
            down_after: 1,
            up_after: 1,
            failover_timeout_ms: 1000,
        }
    }
}

/// `[overload]`
#[derive(Debug, Clone, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct OverloadConfig {
    /// New dialog-creating INVITEs per second accepted; 0 = no limit.
    #[serde(default)]
    pub invite_rate: u32,
}

/// `[limits]`
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct LimitsConfig {
    /// Largest SIP message accepted, in bytes (headers and body).
    pub max_message_size: usize,
    /// Most header lines accepted in one message.
    pub max_headers: usize,
    /// Server transactions in flight; beyond it new requests get 503.
    pub max_transactions: usize,
    /// TCP connections open at once (inbound and outbound).
    pub max_connections: usize,
    /// A connection that carries nothing for this long is closed (seconds).
    pub idle_timeout_s: u64,
    /// TCP connections from one IP address at once.
    pub max_connections_per_ip: usize,
    /// A message that has started to arrive on a stream must be complete within this time
    /// (ms), or the connection is closed (slow senders cannot hold buffers).
    pub message_timeout_ms: u64,
    /// TLS handshakes in progress at once; more connections are closed at accept.
    pub max_tls_handshakes: usize,
    /// A TLS handshake must complete within this time (ms).
    pub tls_handshake_timeout_ms: u64,
}

impl Default for LimitsConfig {
    fn default() -> Self {
        Self {
            max_message_size: 65_535,
            max_headers: 256,
            max_transactions: 100_000,
            max_connections: 100_000,
            idle_timeout_s: 600,
            max_connections_per_ip: 1000,
            message_timeout_ms: 10_000,
            max_tls_handshakes: 1000,
            tls_handshake_timeout_ms: 5000,
        }
    }
}

/// `[timers]`: RFC 3261 section 17 base timers.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct TimersConfig {
    /// T1, round-trip estimate (ms), default 500.
    pub t1_ms: u64,
    /// T2, cap on non-INVITE retransmit interval (ms), default 4000.
    pub t2_ms: u64,
    /// T4, how long the network may hold a message (ms), default 5000.
    pub t4_ms: u64,
    /// Timer C, how long a proxied INVITE may stay unanswered after a provisional (s).
    pub timer_c_s: u64,
}

impl Default for TimersConfig {
    fn default() -> Self {
        Self {
            t1_ms: 500,
            t2_ms: 4000,
            t4_ms: 5000,
            timer_c_s: 180,
        }
    }
}

/// A configuration problem, naming the key it is about.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ConfigError {
    /// Dotted key path, such as `pair[0].primary`; empty when the file itself is the problem.
    pub key: String,
    /// What is wrong with it.
    pub problem: String,
}

impl fmt::Display for ConfigError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        if self.key.is_empty() {
            write!(f, "{}", self.problem)
        } else {
            write!(f, "{}: {}", self.key, self.problem)
        }
    }
}

impl std::error::Error for ConfigError {}

fn err(key: impl Into<String>, problem: impl Into<String>) -> ConfigError {
    ConfigError {
        key: key.into(),
        problem: problem.into(),
    }
}

/// An upstream or static-route address: `host[:port][;transport=udp|tcp]`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct HostPort {
    /// Host name or IP literal (IPv6 without brackets).
    pub host: String,
    /// Port, 5060 when not given.
    pub port: u16,
    /// Transport, UDP when not given.
    pub transport: Transport,
    /// Whether the port was written (RFC 3263: then no SRV lookup).
    pub explicit_port: bool,
}

impl HostPort {
    /// The socket address when the host is an IP literal.
    pub fn socket_addr(&self) -> Option<SocketAddr> {
        IpAddr::from_str(&self.host)
            .ok()
            .map(|ip| SocketAddr::new(ip, self.port))
    }
}

impl fmt::Display for HostPort {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        if self.host.contains(':') {
            write!(
                f,
                "[{}]:{};transport={}",
                self.host, self.port, self.transport
            )
        } else {
            write!(
                f,
                "{}:{};transport={}",
                self.host, self.port, self.transport
            )
        }
    }
}

impl FromStr for HostPort {
    type Err = String;

    fn from_str(s: &str) -> Result<Self, String> {
        let s = s.trim();
        let mut parts = s.split(';');
        let hostport = parts.next().unwrap_or_default();
        let mut transport = Transport::Udp;
        for param in parts {
            match param.split_once('=') {
                Some((name, value)) if name.eq_ignore_ascii_case("transport") => {
                    transport = Transport::from_str(value)
                        .map_err(|_| format!("unknown transport '{value}' (udp or tcp)"))?;
                }
                _ => return Err(format!("unknown parameter '{param}' (only transport=)")),
            }
        }
        let (host, port) = split_host_port(hostport)?;
        Ok(HostPort {
            host,
            port: port.unwrap_or(transport.default_port()),
            transport,
            explicit_port: port.is_some(),
        })
    }
}

/// Splits `host`, `host:port`, `[v6]` or `[v6]:port`.
fn split_host_port(s: &str) -> Result<(String, Option<u16>), String> {
    let bad_port = |p: &str| format!("invalid port '{p}'");
    if let Some(rest) = s.strip_prefix('[') {
        let (host, after) = rest
            .split_once(']')
            .ok_or_else(|| format!("unterminated IPv6 literal in '{s}'"))?;
        let port = match after.strip_prefix(':') {
            Some(p) => Some(p.parse::<u16>().map_err(|_| bad_port(p))?),
            None if after.is_empty() => None,
            None => return Err(format!("unexpected '{after}' after IPv6 literal")),
        };
        return Ok((host.to_string(), port));
    }
    let (host, port) = match s.rsplit_once(':') {
        Some((h, p)) => (h, Some(p.parse::<u16>().map_err(|_| bad_port(p))?)),
        None => (s, None),
    };
    if host.is_empty() {
        return Err("empty host".into());
    }
    if host.contains(':') {
        return Err(format!("IPv6 address must be in brackets: '{s}'"));
    }
    Ok((host.to_string(), port))
}

/// A listen socket after validation.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Listener {
    /// Transport of the socket.
    pub transport: Transport,
    /// Address to bind.
    pub address: SocketAddr,
}

/// An upstream pair after validation.
#[derive(Debug, Clone)]
pub struct Pair {
    /// Pair name.
    pub name: String,
    /// Domain it serves, lower-cased.
    pub domain: Option<String>,
    /// Primary server.
    pub primary: HostPort,
    /// Backup server.
    pub backup: HostPort,
    /// Return to the primary when it comes back.
    pub failback: bool,
}

/// A static route after validation.
#[derive(Debug, Clone)]
pub struct StaticRoute {
    /// Domain (lower-cased) that selects it.
    pub domain: String,
    /// Where requests for it go.
    pub target: HostPort,
}

/// The validated settings the running proxy uses.
#[derive(Debug, Clone)]
pub struct Settings {
    /// Instance name.
    pub name: String,
    /// Host written into Via and Record-Route.
    pub advertised_host: String,
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
    /// Longest graceful drain.
    pub drain_timeout: Duration,
    /// HTTP endpoint address, if any.
    pub http: Option<SocketAddr>,
    /// TLS settings (listeners and connections toward servers), if any.
    pub tls: Option<TlsSettings>,
    /// Flow-token key (`None`: a random key per process).
    pub flow_key: Option<Vec<u8>>,
    /// DNS servers to ask (empty: the system's).
    pub dns_servers: Vec<SocketAddr>,
    /// DNS query timeout.
    pub dns_timeout: Duration,
    /// Upstream probing.
    pub probe: crate::health::probe::ProbeConfig,
    /// No-response time after which a request is retried on the other pair member.
    pub failover_timeout: Duration,
    /// TCP keep-alive, when on.
    pub keepalive: Option<Keepalive>,
}

impl Config {
    /// Loads `path` (TOML) with `SIPPOOL__SECTION__KEY` overrides from the environment.
    pub fn load(path: &Path) -> Result<Config, ConfigError> {
        Self::load_with_env(path, None)
    }

    /// As [`Config::load`], with the environment given explicitly (for tests).
    pub fn load_with_env(
        path: &Path,
        env: Option<std::collections::HashMap<String, String>>,
    ) -> Result<Config, ConfigError> {
        if !path.exists() {
            return Err(err("", format!("config file {} not found", path.display())));
        }
        let raw = config::Config::builder()
            .add_source(config::File::from(path).format(config::FileFormat::Toml))
            .add_source(
                config::Environment::with_prefix("SIPPOOL")
                    .prefix_separator("__")
                    .separator("__")
                    .try_parsing(true)
                    .source(env),
            )
            .build()
            .map_err(from_config_error)?;
        raw.try_deserialize::<Config>().map_err(from_config_error)
    }

    /// Parses TOML text without environment overrides (tests, embedding).
    pub fn from_toml_str(text: &str) -> Result<Config, ConfigError> {
        config::Config::builder()
            .add_source(config::File::from_str(text, config::FileFormat::Toml))
            .build()
            .map_err(from_config_error)?
            .try_deserialize::<Config>()
            .map_err(from_config_error)
    }

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
            let listener = Listener { transport, address };
            if listeners.contains(&listener) {
                return Err(err(format!("listen[{i}]"), "duplicate listen socket"));
            }
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
        if self.runtime.worker_threads == 0 || self.runtime.worker_threads > 256 {
            return Err(err("runtime.worker_threads", "must be between 1 and 256"));
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
        Ok(Settings {
            keepalive,
            flow_key,
            tls,
            http,
            dns_servers,
            dns_timeout: Duration::from_millis(self.dns.timeout_ms),
            probe: crate::health::probe::ProbeConfig {
                oos_check: (h.oos_check > 0).then(|| Duration::from_secs(h.oos_check)),
                oos_force: Duration::from_secs(h.oos_force),
                timeout: Duration::from_millis(h.probe_timeout_ms),
                down_after: h.down_after,
                up_after: h.up_after,
            },
            failover_timeout: Duration::from_millis(h.failover_timeout_ms),
            worker_threads: self.runtime.worker_threads,
            drain_timeout: Duration::from_secs(self.runtime.drain_timeout_s),
            name: self.instance.name.clone(),
            advertised_host,
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
            },
        })
    }
}

fn from_config_error(e: config::ConfigError) -> ConfigError {
    // The config crate's messages already carry the key (`... for key `health.oos_check``);
    // surface them whole, but pull the key out where it is given so callers can match on it.
    let text = e.to_string();
    let key = extract_key(&text).unwrap_or_default();
    ConfigError { key, problem: text }
}

fn extract_key(text: &str) -> Option<String> {
    let start = text.find("key `")? + 5;
    let rest = text.get(start..)?;
    let end = rest.find('`')?;
    rest.get(..end).map(str::to_string)
}

/// Loads and validates in one step, as `run` and `check-config` do.
pub fn load_settings(path: &Path) -> Result<Settings, ConfigError> {
    Config::load(path)?.validate()
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::collections::HashMap;
    use std::io::Write;

    const GOOD: &str = r#"
[instance]
name = "a"
[[listen]]
transport = "udp"
address = "127.0.0.1:5060"
[[pair]]
name = "site-a"
primary = "127.0.0.11:5060;transport=udp"
backup = "127.0.0.12"
"#;

    fn file(text: &str) -> tempfile_lite::TempFile {
        let f = tempfile_lite::TempFile::new();
        let mut h = std::fs::File::create(&f.path).unwrap();
        h.write_all(text.as_bytes()).unwrap();
        f
    }

    mod tempfile_lite {
        pub struct TempFile {
            pub path: std::path::PathBuf,
        }
        impl TempFile {
            pub fn new() -> Self {
                use std::sync::atomic::{AtomicU32, Ordering};
                static N: AtomicU32 = AtomicU32::new(0);
                let path = std::env::temp_dir().join(format!(
                    "sippool-cfg-{}-{}.toml",
                    std::process::id(),
                    N.fetch_add(1, Ordering::Relaxed)
                ));
                TempFile { path }
            }
        }
        impl Drop for TempFile {
            fn drop(&mut self) {
                let _ = std::fs::remove_file(&self.path);
            }
        }
    }

    #[test]
    fn good_config_validates_with_defaults() {
        let f = file(GOOD);
        let s = Config::load_with_env(&f.path, Some(HashMap::new()))
            .unwrap()
            .validate()
            .unwrap();
        assert_eq!(s.advertised_host, "127.0.0.1");
        assert_eq!(s.pairs[0].backup.port, 5060);
        assert_eq!(s.pairs[0].backup.transport, Transport::Udp);
        assert_eq!(s.invite_rate, 0);
    }

    #[test]
    fn unknown_key_is_an_error_naming_it() {
        let f = file(&format!("{GOOD}\n[overload]\ninvite_rat = 5\n"));
        let e = Config::load_with_env(&f.path, Some(HashMap::new())).unwrap_err();
        assert!(e.to_string().contains("invite_rat"), "{e}");
    }

    #[test]
    fn environment_overrides_a_key() {
        let f = file(GOOD);
        let env = HashMap::from([(
            "SIPPOOL__OVERLOAD__INVITE_RATE".to_string(),
            "42".to_string(),
        )]);
        let s = Config::load_with_env(&f.path, Some(env))
            .unwrap()
            .validate()
            .unwrap();
        assert_eq!(s.invite_rate, 42);
    }

    #[test]
    fn bad_value_names_the_key() {
        let f = file(GOOD);
        let env = HashMap::from([(
            "SIPPOOL__OVERLOAD__INVITE_RATE".to_string(),
            "lots".to_string(),
        )]);
        let e = Config::load_with_env(&f.path, Some(env)).unwrap_err();
        assert_eq!(e.key, "overload.invite_rate", "{e}");
    }

    #[test]
    fn bad_upstream_names_the_key() {
        let f = file(&GOOD.replace("127.0.0.12\"", "127.0.0.12;transport=carrier-pigeon\""));
        let e = Config::load_with_env(&f.path, Some(HashMap::new()))
            .unwrap()
            .validate()
            .unwrap_err();
        assert_eq!(e.key, "pair[0].backup");
        assert!(e.problem.contains("carrier-pigeon"));
    }

    fn validate_text(text: &str) -> Result<Settings, ConfigError> {
        let f = file(text);
        Config::load_with_env(&f.path, Some(HashMap::new()))?.validate()
    }

    #[test]
    fn tls_upstream_needs_a_ca_to_verify_it() {
        let tls = GOOD.replace("127.0.0.12\"", "127.0.0.12;transport=tls\"");
        let e = validate_text(&tls).unwrap_err();
        assert_eq!(e.key, "pair[0].backup");
        assert!(e.problem.contains("tls.upstream_ca"), "{e}");
        let f = file("-----BEGIN CERTIFICATE-----\n");
        let ca = f.path.display();
        let s = validate_text(&format!("{tls}[tls]\nupstream_ca = \"{ca}\"\n")).unwrap();
        assert_eq!(s.pairs[0].backup.transport, Transport::Tls);
        assert_eq!(s.pairs[0].backup.port, 5061);
        // A TLS listener still needs a certificate and key.
        let listener = format!("{tls}[[listen]]\ntransport = \"tls\"\naddress = \"127.0.0.1:5061\"\n[tls]\nupstream_ca = \"{ca}\"\n");
        assert_eq!(
            validate_text(&listener).unwrap_err().key,
            "listen[1].transport"
        );
        let half = format!("{GOOD}[tls]\ncert = \"{ca}\"\n");
        assert_eq!(validate_text(&half).unwrap_err().key, "tls.key");
    }

    #[test]
    fn keepalive_defaults_and_bounds() {
        let s = validate_text(GOOD).unwrap();
        assert_eq!(
            s.keepalive,
            Some(Keepalive {
                idle: Duration::from_secs(60),
                interval: Duration::from_secs(10),
                count: 3
            })
        );
        let off = validate_text(&format!("{GOOD}[keepalive]\nidle_s = 0\n")).unwrap();
        assert_eq!(off.keepalive, None);
        let bad = validate_text(&format!("{GOOD}[keepalive]\ncount = 0\n")).unwrap_err();
        assert_eq!(bad.key, "keepalive.count");
    }

    #[test]
    fn unknown_serving_pair_is_an_error() {
        let f = file(&format!("{GOOD}\n[routing]\nserving_pair = \"nope\"\n"));
        let e = Config::load_with_env(&f.path, Some(HashMap::new()))
            .unwrap()
            .validate()
            .unwrap_err();
        assert_eq!(e.key, "routing.serving_pair");
    }

    #[test]
    fn unspecified_listen_needs_advertised_host() {
        let f = file(&GOOD.replace("127.0.0.1:5060", "0.0.0.0:5060"));
        let e = Config::load_with_env(&f.path, Some(HashMap::new()))
            .unwrap()
            .validate()
            .unwrap_err();
        assert_eq!(e.key, "instance.advertised_host");
    }

    #[test]
    fn host_port_forms() {
        let hp: HostPort = "[::1]:5070;transport=tcp".parse().unwrap();
        assert_eq!(hp.host, "::1");
        assert_eq!(hp.port, 5070);
        assert_eq!(hp.transport, Transport::Tcp);
        assert!("::1:5060".parse::<HostPort>().is_err());
        assert!("pbx.example.com".parse::<HostPort>().is_ok());
        assert!("10.0.0.1:99999".parse::<HostPort>().is_err());
    }
}
