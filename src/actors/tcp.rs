//! TCP and TLS listener actor: one per stream listen socket. It owns the accept loop; each accepted
//! connection becomes a connection task (`connection::task`).

use std::sync::Arc;

use ractor::{Actor, ActorProcessingErr, ActorRef};
use tokio::net::TcpListener;
use tokio::task::JoinHandle;

use super::connection::spawn_accept_loop;
use super::core::Core;

/// The TCP listener actor.
pub struct TcpListenerActor;

/// Its state: the accept loop it owns.
pub struct TcpListenerState {
    accept_loop: JoinHandle<()>,
}

impl Actor for TcpListenerActor {
    type Msg = ();
    type State = TcpListenerState;
    type Arguments = (Arc<Core>, TcpListener, crate::config::Listener);

    async fn pre_start(
        &self,
        _myself: ActorRef<()>,
        (core, listener, opts): Self::Arguments,
    ) -> Result<TcpListenerState, ActorProcessingErr> {
        Ok(TcpListenerState {
            accept_loop: spawn_accept_loop(core, listener, opts),
        })
    }

    async fn post_stop(
        &self,
        _myself: ActorRef<()>,
        state: &mut TcpListenerState,
    ) -> Result<(), ActorProcessingErr> {
        state.accept_loop.abort();
        Ok(())
    }
}
