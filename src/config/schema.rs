//! The configuration file's schema: the serde structs that mirror the TOML file, one per
//! section, with their defaults.
//!
//! This file owns the file's shape: key names, types, which keys are optional and their
//! default values; unknown keys are refused here (`deny_unknown_fields`). It must not check
//! values (that is `validate`, which names the key) nor open sockets or start anything.

use serde::{Deserialize, Serialize};

/// The whole configuration of one sippool instance.
#[derive(Debug, Clone, Deserialize, Serialize)]
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
    /// The pool this instance belongs to (absent: Record-Route names this instance).
    #[serde(default)]
    pub pool: Option<PoolConfig>,
    /// Logging.
    #[serde(default)]
    pub log: LogConfig,
}

/// `[log]`
#[derive(Debug, Clone, Deserialize, Serialize)]
#[serde(deny_unknown_fields, default)]
pub struct LogConfig {
    /// What is logged: a level (`error`, `warn`, `info`, `debug`, `trace`) or a filter in
    /// `RUST_LOG` syntax (`info,sippool::health=debug`). `RUST_LOG`, when set, takes its
    /// place. Changes live on reload.
    pub level: String,
}

impl Default for LogConfig {
    fn default() -> Self {
        LogConfig {
            level: "info".into(),
        }
    }
}

/// `[pool]`
#[derive(Debug, Clone, Deserialize, Serialize)]
#[serde(deny_unknown_fields)]
pub struct PoolConfig {
    /// The pool's DNS name, the one clients find instances by (SRV/A). Record-Route entries
    /// name it, so that in-dialog requests reach whichever instance DNS picks and a call
    /// outlives the instance that set it up. Needs `flow.token_key`.
    pub name: String,
    /// Which Record-Route entries name the pool: `both` (entries facing endpoints and
    /// servers) or `endpoints` (servers reach this instance by its own address).
    #[serde(default = "default_pool_record_route")]
    pub record_route: String,
    /// How long a request relayed to the instance holding a phone's flow waits for that
    /// instance's first answer before 430 Flow Failed.
    #[serde(default = "default_relay_timeout_ms")]
    pub relay_timeout_ms: u64,
    /// Where the other instances relay requests for this instance's flows, written into
    /// its flow tokens: `ip:port;transport=udp|tcp`. Defaults to a UDP (else TCP)
    /// listener's address, or for a wildcard listener the advertised host or an interface
    /// address with that listener's port.
    #[serde(default)]
    pub relay_address: Option<String>,
}

fn default_pool_record_route() -> String {
    "both".into()
}

fn default_relay_timeout_ms() -> u64 {
    2000
}

/// `[flow]`
#[derive(Debug, Clone, Deserialize, Serialize)]
#[serde(deny_unknown_fields)]
pub struct FlowConfig {
    /// HMAC key for flow tokens, hex, the same on every instance of the pool.
    pub token_key: String,
}

/// `[tls]`
#[derive(Debug, Clone, Deserialize, Serialize)]
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
/// `[http]`
#[derive(Debug, Clone, Deserialize, Serialize)]
#[serde(deny_unknown_fields)]
pub struct HttpConfig {
    /// Socket address to serve on.
    pub address: String,
    /// Bearer token for the endpoints that change state (`POST /pairs/{pair}/switch`);
    /// absent = those endpoints are off. Best given as `SIPPOOL__HTTP__ADMIN_TOKEN`.
    #[serde(default)]
    pub admin_token: Option<String>,
}

/// `[dns]`
#[derive(Debug, Clone, Deserialize, Serialize)]
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
#[derive(Debug, Clone, Deserialize, Serialize)]
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
/// `[runtime]`
#[derive(Debug, Clone, Deserialize, Serialize)]
#[serde(deny_unknown_fields, default)]
pub struct RuntimeConfig {
    /// Threads that run the proxy. 1 (the default) runs everything on one thread, which
    /// costs the fewest CPU cycles per call; raise it when one core is saturated.
    pub worker_threads: usize,
    /// Shared-nothing workers: each a thread with its own single-threaded runtime and its
    /// own `SO_REUSEPORT` socket per UDP listener, running the transactions of the
    /// datagrams it receives. A number, or `"auto"` (the default: one per available
    /// core, and 1 when `worker_threads` is set above 1). 1: everything on one runtime.
    /// A number above 1 does not go with `worker_threads` above 1.
    pub workers: Workers,
    /// On SIGTERM/SIGINT, how long transactions in flight may take to finish (seconds).
    pub drain_timeout_s: u64,
}

impl Default for RuntimeConfig {
    fn default() -> Self {
        RuntimeConfig {
            worker_threads: 1,
            workers: Workers::Named("auto".into()),
            drain_timeout_s: 30,
        }
    }
}

/// `runtime.workers`: a count, or `"auto"`.
#[derive(Debug, Clone, Deserialize, Serialize, PartialEq, Eq)]
#[serde(untagged)]
pub enum Workers {
    /// This many workers.
    Count(usize),
    /// `"auto"`: one per available core.
    Named(String),
}

/// `[instance]`
#[derive(Debug, Clone, Deserialize, Serialize)]
#[serde(deny_unknown_fields)]
pub struct InstanceConfig {
    /// Appears in logs, metrics and the status page.
    pub name: String,
    /// Host put in Via, Record-Route and Path. Defaults to the first listen address's IP
    /// (required when that address is unspecified, such as `0.0.0.0`).
    #[serde(default)]
    pub advertised_host: Option<String>,
    /// Other DNS names this instance is known by and must take as itself in a Route or
    /// Request-URI: the pool's SRV/A name (what phones have as outbound proxy), load
    /// balancer names. The host's own name and the listeners' addresses are implied.
    #[serde(default)]
    pub names: Vec<String>,
}

/// `[[listen]]`
#[derive(Debug, Clone, Deserialize, Serialize)]
#[serde(deny_unknown_fields)]
pub struct ListenConfig {
    /// `udp` or `tcp`.
    pub transport: String,
    /// Socket address, IPv4 (`0.0.0.0:5060`) or IPv6 (`[::]:5060`).
    pub address: String,
    /// Host written into Via, Record-Route and Path for traffic through this listener (a
    /// public address per network interface); absent: `instance.advertised_host`.
    #[serde(default)]
    pub advertised_host: Option<String>,
    /// Port written with it; absent: the listener's own port.
    #[serde(default)]
    pub advertised_port: Option<u16>,
    /// DSCP (0-63) of the SIP packets sent through this listener, e.g. 26 (AF31) or 46
    /// (EF); IPv4 ToS and IPv6 traffic class; absent: the system's.
    #[serde(default)]
    pub dscp: Option<u8>,
    /// tcp/tls only: every connection starts with a PROXY protocol v2 header from an L4
    /// load balancer; connections without one are refused.
    #[serde(default)]
    pub proxy_protocol: bool,
}

/// `[[pair]]`
#[derive(Debug, Clone, Deserialize, Serialize)]
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
#[derive(Debug, Clone, Deserialize, Serialize)]
#[serde(deny_unknown_fields)]
pub struct StaticRouteConfig {
    /// Request-URI or top Route host that selects this route.
    pub domain: String,
    /// Next hop, `host:port;transport=udp|tcp`.
    pub target: String,
}

/// `[routing]`
#[derive(Debug, Clone, Default, Deserialize, Serialize)]
#[serde(deny_unknown_fields)]
pub struct RoutingConfig {
    /// Pair that receives requests from endpoints; defaults to the first `[[pair]]`.
    #[serde(default)]
    pub serving_pair: Option<String>,
}

/// `[health]`
#[derive(Debug, Clone, Deserialize, Serialize)]
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
    /// is sent to the other member instead: the upper bound of the failover timer, which
    /// follows the member's measured response time (SRTT + 4 RTTVAR), and its value before
    /// any measurement.
    pub failover_timeout_ms: u64,
    /// The lower bound of the failover timer (ms).
    pub failover_min_ms: u64,
    /// Transactions failed in a row (timed out, 5xx) that take a member out of service
    /// even though it answers OPTIONS (circuit breaker); 0 turns it off.
    pub breaker_failures: u32,
    /// How long (s) a member the breaker took out stays out before its probes may bring it
    /// back; it is never failed over to meanwhile.
    pub breaker_probation_s: u64,
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
            failover_min_ms: 200,
            breaker_failures: 5,
            breaker_probation_s: 30,
        }
    }
}

/// `[overload]`
#[derive(Debug, Clone, Default, Deserialize, Serialize)]
#[serde(deny_unknown_fields)]
pub struct OverloadConfig {
    /// New dialog-creating INVITEs per second accepted; 0 = no limit.
    #[serde(default)]
    pub invite_rate: u32,
}

/// `[limits]`
#[derive(Debug, Clone, Deserialize, Serialize)]
#[serde(deny_unknown_fields, default)]
pub struct LimitsConfig {
    /// Largest SIP message accepted, in bytes (headers and body).
    pub max_message_size: usize,
    /// Most header lines accepted in one message.
    pub max_headers: usize,
    /// Server transactions in flight; beyond it new requests get 503. The default, 50,000,
    /// bounds their memory to about 400 MiB (about 8 KiB each, README "Memory").
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
            max_transactions: 50_000,
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
#[derive(Debug, Clone, Deserialize, Serialize)]
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
    /// How long an INVITE may wait for a provisional or final response from the server
    /// before the proxy sends 100 Trying itself (ms): default 200 (RFC 3261 17.2.1), or
    /// half of T1 when that is shorter; 0 sends it at once.
    pub trying_ms: Option<u64>,
}

impl Default for TimersConfig {
    fn default() -> Self {
        Self {
            t1_ms: 500,
            t2_ms: 4000,
            t4_ms: 5000,
            timer_c_s: 180,
            trying_ms: None,
        }
    }
}
