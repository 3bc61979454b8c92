//! UDP listener actor: one per UDP listen socket.
//!
//! The actor owns the socket and its receive loop. A STUN Binding request (the RFC 5626
//! keep-alive, told from SIP by its first byte) is answered at once; every other datagram is parsed
//! (`Framing::Datagram`: octets after Content-Length are ignored) and handed to
//! [`Core::deliver`](super::core::Core::deliver) (the dispatcher). A panic while dispatching one datagram is caught, logged and counted,
//! so one bad datagram never stops the listener.

use std::net::SocketAddr;
use std::panic::AssertUnwindSafe;
use std::sync::Arc;

use bytes::Bytes;
use ractor::{Actor, ActorProcessingErr, ActorRef};
use tokio::net::UdpSocket;
use tokio::task::JoinHandle;

use crate::metrics::{KindLabels, OutcomeLabels};
use crate::sip::message::{Framing, Message};
use crate::sip::stun;
use crate::sip::transport::Transport;

use super::connection::parse_reason;
use super::core::Core;
use super::transport::{send_udp, Inbound, ReplyPath};

/// The UDP listener actor.
pub struct UdpListener;

/// Its state: the receive loop it owns.
pub struct UdpState {
    recv_loop: JoinHandle<()>,
}

impl Actor for UdpListener {
    type Msg = ();
    type State = UdpState;
    type Arguments = (Arc<Core>, Arc<UdpSocket>);

    async fn pre_start(
        &self,
        _myself: ActorRef<()>,
        (core, sock): Self::Arguments,
    ) -> Result<UdpState, ActorProcessingErr> {
        core.transports.register_udp(sock.clone());
        Ok(UdpState {
            recv_loop: tokio::spawn(recv_loop(core, sock, 0)),
        })
    }

    async fn post_stop(
        &self,
        _myself: ActorRef<()>,
        state: &mut UdpState,
    ) -> Result<(), ActorProcessingErr> {
        state.recv_loop.abort();
        Ok(())
    }
}

/// Receives and dispatches datagrams on `sock` until the task is dropped (the listener's,
/// or a worker's: `workers`).
pub(super) async fn recv_loop(core: Arc<Core>, sock: Arc<UdpSocket>, worker: u32) {
    let local = sock.local_addr().ok();
    let received = core
        .metrics
        .datagrams
        .get_or_create(&crate::metrics::WorkerLabels { worker })
        .clone();
    let mut buf = vec![0u8; 65_536];
    loop {
        let (n, source) = match sock.recv_from(&mut buf).await {
            Ok(x) => x,
            Err(e) => {
                // An ICMP error for a datagram we sent (IP_RECVERR): the queue says which
                // destination refused it. It concerns that peer only.
                for u in super::icmp::drain(sock.as_ref(), 64) {
                    core.unreachable(u.dest, u.reason());
                }
                tracing::debug!(event = "udp_recv_error", error = %e);
                continue;
            }
        };
        received.inc();
        let data = Bytes::copy_from_slice(buf.get(..n).unwrap_or_default());
        handle_datagram(&core, &sock, local, data, source);
    }
}

/// Answers a STUN Binding request (the UDP keep-alive of RFC 5626 section 4.4.2) from
/// `source`; anything else that looks like STUN is dropped and counted.
fn answer_stun(core: &Core, sock: &Arc<UdpSocket>, data: &[u8], source: SocketAddr) {
    let count = |outcome| {
        core.metrics
            .stun_requests
            .get_or_create(&OutcomeLabels { outcome })
            .inc();
    };
    match stun::answer(data, source) {
        Ok(answer) => {
            count(if stun::is_error_response(&answer) {
                "error_response"
            } else {
                "answered"
            });
            if let Err(e) = send_udp(sock, source, Bytes::from(answer)) {
                tracing::debug!(event = "stun_answer_not_sent", %source, error = ?e);
            }
        }
        Err(e) => {
            count("dropped");
            core.metrics.message_dropped(e.as_str());
        }
    }
}

/// Parses and dispatches one datagram, containing any panic to this datagram.
pub fn handle_datagram(
    core: &Arc<Core>,
    sock: &Arc<UdpSocket>,
    local: Option<SocketAddr>,
    data: Bytes,
    source: SocketAddr,
) {
    if data.iter().all(|&b| b == b'\r' || b == b'\n') {
        // RFC 5626 keep-alives over UDP are STUN; bare CRLFs are ignored.
        return;
    }
    if stun::is_stun(&data) {
        answer_stun(core, sock, &data, source);
        return;
    }
    let result = std::panic::catch_unwind(AssertUnwindSafe(|| {
        match Message::parse(data, Framing::Datagram, &core.live().limits) {
            Ok(msg) => core.deliver(Box::new(Inbound {
                msg,
                transport: Transport::Udp,
                source,
                reply: ReplyPath::Udp(sock.clone(), local),
                received: std::time::Instant::now(),
            })),
            Err(e) => core.metrics.parse_failed(parse_reason(e)),
        }
    }));
    if result.is_err() {
        core.metrics
            .actor_failures
            .get_or_create(&KindLabels {
                kind: "udp_dispatch",
            })
            .inc();
        tracing::error!(event = "datagram_handling_failed", %source);
    }
}
