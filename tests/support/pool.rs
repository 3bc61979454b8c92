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
