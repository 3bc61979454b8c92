//! dnsmasq on loopback (Debian package dnsmasq-base): a real DNS server for the tests.

use std::io::Write;
use std::net::SocketAddr;
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use sippool::config::HostPort;

use super::loopback;

pub struct Dnsmasq {
    child: Child,
    pub addr: SocketAddr,
    hosts: std::path::PathBuf,
}

impl Drop for Dnsmasq {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
        let _ = std::fs::remove_file(&self.hosts);
    }
}

impl Dnsmasq {
    /// dnsmasq on a fresh loopback address, records from `hosts` (an /etc/hosts file) and
    /// `srv` (`--srv-host` values), every answer with a TTL of 1 s.
    pub fn start(hosts: &str, srv: &[String]) -> Dnsmasq {
        let ip = loopback(9);
        let port = std::net::UdpSocket::bind((ip, 0))
            .unwrap()
            .local_addr()
            .unwrap()
            .port();
        let path =
            std::env::temp_dir().join(format!("sippool-hosts-{}-{port}", std::process::id()));
        std::fs::File::create(&path)
            .unwrap()
            .write_all(hosts.as_bytes())
            .unwrap();
        let mut cmd = Command::new("dnsmasq");
        cmd.args([
            "--keep-in-foreground",
            "--no-resolv",
            "--no-hosts",
            "--bind-interfaces",
            "--user=root",
            "--pid-file=",
            "--local-ttl=1",
            &format!("--listen-address={ip}"),
            &format!("--port={port}"),
            &format!("--addn-hosts={}", path.display()),
        ]);
        for s in srv {
            cmd.arg(format!("--srv-host={s}"));
        }
        let child = cmd
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .expect("dnsmasq must be installed (apt-get install dnsmasq-base)");
        Dnsmasq {
            child,
            addr: SocketAddr::new(ip, port),
            hosts: path,
        }
    }

    pub fn rewrite_hosts(&self, hosts: &str) {
        std::fs::write(&self.hosts, hosts).unwrap();
        let _ = Command::new("kill")
            .args(["-HUP", &self.child.id().to_string()])
            .status();
    }

    /// Waits until the server answers for `hp`.
    pub async fn ready(&self, hp: &str) {
        let loc = sippool::dns::Locator::new(&[self.addr], Duration::from_millis(200)).unwrap();
        let hp: HostPort = hp.parse().unwrap();
        let start = Instant::now();
        while loc.locate(&hp).await.is_none() {
            assert!(
                start.elapsed() < Duration::from_secs(5),
                "dnsmasq did not come up"
            );
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
    }
}
