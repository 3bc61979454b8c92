//! A pool of sippool processes (the binary under test) on their own loopback addresses.

use std::net::IpAddr;
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use super::WAIT;

/// One sippool process (the binary under test), killed when dropped.
pub struct Instance {
    pub ip: IpAddr,
    pub child: Child,
}

impl Drop for Instance {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

impl Instance {
    pub fn start(dir: &std::path::Path, name: &str, ip: IpAddr, shared: &str) -> Instance {
        let config = format!(
            "[instance]\nname = \"{name}\"\nadvertised_host = \"{ip}\"\n\
             [[listen]]\ntransport = \"udp\"\naddress = \"{ip}:5060\"\n\
             [[listen]]\ntransport = \"tls\"\naddress = \"{ip}:5061\"\n{shared}"
        );
        let path = dir.join(format!("{name}.toml"));
        std::fs::write(&path, config).unwrap();
        let child = Command::new(env!("CARGO_BIN_EXE_sippool"))
            .args(["run", "--config"])
            .arg(&path)
            .stdout(Stdio::null())
            .stderr(std::fs::File::create(dir.join(format!("{name}.log"))).unwrap())
            .spawn()
            .expect("sippool starts");
        Instance { ip, child }
    }

    /// Waits until the instance accepts TLS connections (its listeners are all bound).
    pub async fn ready(&self) {
        let start = Instant::now();
        while tokio::net::TcpStream::connect((self.ip, 5061))
            .await
            .is_err()
        {
            assert!(start.elapsed() < WAIT, "instance {} did not start", self.ip);
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
    }

    /// Kills the process at once (SIGKILL) and reaps it.
    pub fn kill(mut self) {
        self.child.kill().unwrap();
        self.child.wait().unwrap();
    }
}

/// The pool's DNS name in these tests.
pub const POOL: &str = "pool.sippool.test";

/// Three instances a, b and c on their own loopback addresses behind `_sip._udp` and
/// `_sips._tcp` SRV records served by dnsmasq, with one certificate naming them all and
/// one flow-token key. Processes are killed and files removed when it is dropped.
pub struct Pool {
    /// The instances, `None` once killed.
    pub instances: Vec<Option<Instance>>,
    /// Their addresses, in the order a, b, c.
    pub ips: [IpAddr; 3],
    /// Resolves the pool's name the RFC 3263 way.
    pub locator: sippool::dns::Locator,
    /// The DNS server's address.
    pub dns: std::net::SocketAddr,
    /// The CA the certificate chains to.
    pub ca: super::pki::Ca,
    dir: std::path::PathBuf,
    _dns: super::dnsmasq::Dnsmasq,
}

impl Pool {
    /// Starts the pool: `udp_srv` and `tls_srv` give each instance's (priority, weight) in
    /// the `_sip._udp` and `_sips._tcp` records; `config` is appended to every instance's
    /// file (pairs, `[pool]`...).
    pub async fn start(udp_srv: [(u16, u16); 3], tls_srv: [(u16, u16); 3], config: &str) -> Pool {
        let ips = [
            super::loopback(super::PROXY),
            super::loopback(super::PROXY),
            super::loopback(super::PROXY),
        ];
        let names = ["a", "b", "c"];
        let hosts: String = ips
            .iter()
            .zip(names)
            .map(|(ip, n)| format!("{ip} {n}.{POOL}\n"))
            .collect();
        let mut srv = Vec::new();
        for (i, n) in names.iter().enumerate() {
            let (prio, weight) = udp_srv[i];
            srv.push(format!("_sip._udp.{POOL},{n}.{POOL},5060,{prio},{weight}"));
            let (prio, weight) = tls_srv[i];
            srv.push(format!("_sips._tcp.{POOL},{n}.{POOL},5061,{prio},{weight}"));
        }
        let dns = super::dnsmasq::Dnsmasq::start(&hosts, &srv);
        dns.ready(&format!("a.{POOL}:1")).await;
        let locator = sippool::dns::Locator::new(&[dns.addr], Duration::from_millis(300)).unwrap();
        let dir = std::env::temp_dir().join(super::unique("sippool-pool-"));
        std::fs::create_dir_all(&dir).unwrap();
        let ca = super::pki::ca("pool CA");
        let sans: Vec<String> = ips.iter().map(IpAddr::to_string).collect();
        let (cert, key) = super::pki::leaf_for(&ca, &sans, false);
        let cert = super::pki::write(&dir, "pool.pem", &cert);
        let key = super::pki::write(&dir, "pool.key", &key);
        let shared = format!(
            "{config}[tls]\ncert = \"{cert}\"\nkey = \"{key}\"\n\
             [flow]\ntoken_key = \"5f3c9a7e1b2d4c6f8a0e1d3c5b7a9f2e\"\n"
        );
        let instances: Vec<Option<Instance>> = ips
            .iter()
            .zip(names)
            .map(|(ip, n)| Some(Instance::start(&dir, n, *ip, &shared)))
            .collect();
        for i in instances.iter().flatten() {
            i.ready().await;
        }
        Pool {
            instances,
            ips,
            locator,
            dns: dns.addr,
            ca,
            dir,
            _dns: dns,
        }
    }

    /// Kills instance `i` (SIGKILL).
    pub fn kill(&mut self, i: usize) {
        if let Some(inst) = self.instances.get_mut(i).and_then(Option::take) {
            inst.kill();
        }
    }
}

impl Drop for Pool {
    fn drop(&mut self) {
        self.instances.clear();
        let _ = std::fs::remove_dir_all(&self.dir);
    }
}
