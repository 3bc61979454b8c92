//! Shared-nothing workers (`runtime.workers`): threads beside the proxy's own runtime, each
//! with a single-threaded runtime of its own and its own socket per UDP listener, bound with
//! `SO_REUSEPORT` to the listener's address. The kernel spreads the datagrams over the
//! sockets by their addresses and ports; a worker parses and dispatches what its sockets
//! receive, and the transactions it starts run on its runtime, timers included.
//!
//! What stays shared is what was shared already: the tables (concurrent maps), the pair
//! state and metrics (atomics), the configuration snapshot. A response that reaches another
//! worker than its transaction's is handed over by the transaction's mailbox. Stream
//! connections, health, HTTP and the sweeper run on the proxy's own runtime (worker 0).

use std::net::UdpSocket as StdUdpSocket;
use std::sync::Arc;
use std::thread::JoinHandle;

use tokio::net::UdpSocket;
use tokio::sync::watch;

use super::core::Core;

/// The running workers (the proxy's own runtime not counted).
pub(super) struct Workers {
    stop: watch::Sender<bool>,
    threads: Vec<JoinHandle<()>>,
}

impl Workers {
    /// Starts one worker per entry of `sockets` (each its sockets, one per UDP listener).
    pub(super) fn start(
        core: &Arc<Core>,
        sockets: Vec<Vec<StdUdpSocket>>,
    ) -> std::io::Result<Workers> {
        let (stop, stopped) = watch::channel(false);
        let mut threads = Vec::with_capacity(sockets.len());
        for (i, socks) in sockets.into_iter().enumerate() {
            let core = core.clone();
            let stopped = stopped.clone();
            let thread = std::thread::Builder::new()
                .name(format!("sippool-w{}", i + 1))
                .spawn(move || run(core, socks, i + 1, stopped))?;
            threads.push(thread);
        }
        Ok(Workers { stop, threads })
    }

    /// Stops every worker and waits for its thread to end.
    pub(super) async fn stop(mut self) {
        let _ = self.stop.send(true);
        let threads = std::mem::take(&mut self.threads);
        let _ = tokio::task::spawn_blocking(move || {
            for t in threads {
                let _ = t.join();
            }
        })
        .await;
    }
}

/// A proxy dropped without being stopped stops its workers too.
impl Drop for Workers {
    fn drop(&mut self) {
        let _ = self.stop.send(true);
    }
}

/// One worker's thread: its runtime, a receive loop per socket, until told to stop.
fn run(
    core: Arc<Core>,
    sockets: Vec<StdUdpSocket>,
    worker: usize,
    mut stopped: watch::Receiver<bool>,
) {
    let worker = u32::try_from(worker).unwrap_or(u32::MAX);
    let rt = match tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
    {
        Ok(rt) => rt,
        Err(e) => {
            tracing::error!(event = "worker_cannot_start", error = %e);
            return;
        }
    };
    rt.block_on(async move {
        for s in sockets {
            match UdpSocket::from_std(s) {
                Ok(s) => {
                    tokio::spawn(super::udp::recv_loop(core.clone(), Arc::new(s), worker));
                }
                Err(e) => tracing::error!(event = "worker_socket_failed", error = %e),
            }
        }
        let _ = stopped.wait_for(|s| *s).await;
    });
}
