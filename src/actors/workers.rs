//! Shared-nothing workers (`runtime.workers`): threads beside the proxy's own runtime, each
//! with a single-threaded runtime of its own and its own socket per UDP listener, bound with
//! `SO_REUSEPORT` to the listener's address. The kernel spreads the datagrams over the
//! sockets by their addresses and ports; a worker parses and dispatches what its sockets
//! receive, and the transactions it starts run on its runtime, timers included.
//!
//! Each worker, the proxy's own runtime (worker 0) included, has besides one more UDP
//! socket per listener, on the listener's address with a port of its own
//! ([`Listener::worker_ports`](crate::sip::addr::Listener::worker_ports)): the requests its
//! transactions send to servers leave by it and name its port in their Via, so the
//! responses come back to the worker that owns the client transaction, not to whichever
//! worker the kernel would pick for the server's address. Record-Route and Path still name
//! the listener. Requests toward phones leave by the listener's socket (a phone behind NAT
//! only lets in what comes from the address it sent to).
//!
//! Stream connections are accepted by worker 0 and handed, in turn, to every worker's
//! runtime ([`Placement`]): a connection is owned by that worker from its TLS handshake on.
//! What is sent to it from another worker is queued on its handle, which wakes it.
//!
//! What stays shared is what was shared already: the tables (concurrent maps), the pair
//! state and metrics (atomics), the configuration snapshot. A response that reaches another
//! worker than its transaction's is handled there by the transaction (its cell, see
//! `actors::cell`; counted: `sippool_worker_handoffs_total`). Health, HTTP and the
//! sweeper run on worker 0.

use std::cell::Cell;
use std::net::{SocketAddr, UdpSocket as StdUdpSocket};
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, RwLock};
use std::thread::JoinHandle;

use tokio::net::UdpSocket;
use tokio::runtime::{Handle, Runtime};
use tokio::sync::watch;

use super::core::Core;

thread_local! {
    /// The worker this thread runs (0 on every thread that is no worker's).
    static CURRENT: Cell<u32> = const { Cell::new(0) };
}

/// The worker the calling thread belongs to: 0 for the proxy's own runtime (and any thread
/// that is no worker's).
pub fn current() -> u32 {
    CURRENT.with(Cell::get)
}

/// Where accepted stream connections run: every worker's runtime, taken in turn. Empty
/// with one worker (they run where they were accepted).
#[derive(Debug, Default)]
pub struct Placement {
    runtimes: RwLock<Vec<Handle>>,
    next: AtomicUsize,
}

impl Placement {
    /// The worker the next connection goes to, and its runtime; `None`: the caller's own.
    pub fn next(&self) -> Option<(u32, Handle)> {
        let runtimes = self.runtimes.read().ok()?;
        if runtimes.len() < 2 {
            return None;
        }
        let i = self.next.fetch_add(1, Ordering::Relaxed) % runtimes.len();
        let worker = u32::try_from(i).ok()?;
        runtimes.get(i).map(|h| (worker, h.clone()))
    }

    fn set(&self, runtimes: Vec<Handle>) {
        if let Ok(mut r) = self.runtimes.write() {
            *r = runtimes;
        }
    }
}

/// One worker's sockets, bound before it starts: its `SO_REUSEPORT` socket per UDP
/// listener (none for worker 0: the listener's own) and its own sending socket per UDP
/// listener, with the listener's address.
pub(super) struct WorkerSockets {
    /// Sockets sharing the listeners' addresses.
    pub listen: Vec<StdUdpSocket>,
    /// The worker's own sockets, each with the address of the listener it sends for.
    pub own: Vec<(SocketAddr, StdUdpSocket)>,
}

/// The running workers (the proxy's own runtime not counted).
pub(super) struct Workers {
    stop: watch::Sender<bool>,
    threads: Vec<JoinHandle<()>>,
    /// Worker 0's receive loops on its own sockets.
    own_loops: Vec<tokio::task::JoinHandle<()>>,
    core: Arc<Core>,
}

impl Workers {
    /// Starts the workers: `sockets` has one entry per worker, worker 0 (this runtime)
    /// first. Each worker's sockets are registered before this returns, so a request is
    /// never sent from a socket nobody reads.
    pub(super) fn start(core: &Arc<Core>, sockets: Vec<WorkerSockets>) -> std::io::Result<Workers> {
        let (stop, stopped) = watch::channel(false);
        let mut threads = Vec::with_capacity(sockets.len());
        let mut own_loops = Vec::new();
        let mut runtimes = vec![Handle::current()];
        for (i, socks) in sockets.into_iter().enumerate() {
            let worker = u32::try_from(i).unwrap_or(u32::MAX);
            if worker == 0 {
                for (listener, s) in socks.own {
                    let s = Arc::new(UdpSocket::from_std(s)?);
                    core.transports.register_worker_udp(0, listener, s.clone());
                    own_loops.push(tokio::spawn(super::udp::recv_loop(core.clone(), s, 0)));
                }
                continue;
            }
            let rt = tokio::runtime::Builder::new_current_thread()
                .enable_all()
                .build()?;
            // The sockets belong to the worker's runtime (its reactor wakes their readers).
            let mut listen = Vec::with_capacity(socks.listen.len() + socks.own.len());
            {
                let _in_worker = rt.enter();
                for s in socks.listen {
                    listen.push(Arc::new(UdpSocket::from_std(s)?));
                }
                for (listener, s) in socks.own {
                    let s = Arc::new(UdpSocket::from_std(s)?);
                    core.transports
                        .register_worker_udp(worker, listener, s.clone());
                    listen.push(s);
                }
            }
            runtimes.push(rt.handle().clone());
            let core = core.clone();
            let stopped = stopped.clone();
            let thread = std::thread::Builder::new()
                .name(format!("sippool-w{i}"))
                .spawn(move || run(rt, core, listen, worker, stopped))?;
            threads.push(thread);
        }
        core.transports.placement.set(runtimes);
        Ok(Workers {
            stop,
            threads,
            own_loops,
            core: core.clone(),
        })
    }

    /// Stops every worker and waits for its thread to end.
    pub(super) async fn stop(mut self) {
        self.core.transports.placement.set(Vec::new());
        let _ = self.stop.send(true);
        for l in &self.own_loops {
            l.abort();
        }
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
        self.core.transports.placement.set(Vec::new());
        let _ = self.stop.send(true);
        for l in &self.own_loops {
            l.abort();
        }
    }
}

/// One worker's thread: its runtime, a receive loop per socket, until told to stop.
fn run(
    rt: Runtime,
    core: Arc<Core>,
    sockets: Vec<Arc<UdpSocket>>,
    worker: u32,
    mut stopped: watch::Receiver<bool>,
) {
    CURRENT.with(|c| c.set(worker));
    rt.block_on(async move {
        for s in sockets {
            tokio::spawn(super::udp::recv_loop(core.clone(), s, worker));
        }
        let _ = stopped.wait_for(|s| *s).await;
    });
}
