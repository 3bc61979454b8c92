//! The proxy's side of the health layer's handle: [`ProbeNet`] (locate a server, send a
//! probe over the proxy's own sockets) and the [`HealthEnv`] the health actors start with.

use std::sync::Arc;

use bytes::Bytes;

use crate::health::actors::{HealthEnv, NetFuture, ProbeNet};
use crate::sip::addr::{HostPort, Target};

use super::core::Core;

/// Probes go out the way requests do: located by the proxy's resolver, sent over its
/// listeners' sockets or its connections.
struct CoreNet(Arc<Core>);

impl ProbeNet for CoreNet {
    fn locate<'a>(&'a self, server: &'a HostPort) -> NetFuture<'a, Option<Target>> {
        Box::pin(async move { self.0.locate(&self.0.snapshot(), server).await })
    }

    fn through(&self, target: Target) -> crate::sip::proxy::Through {
        self.0.through(&self.0.live(), target)
    }

    fn send(&self, target: Target, bytes: Bytes) -> NetFuture<'_, Result<(), String>> {
        Box::pin(async move {
            super::connection::send(&self.0, target, bytes)
                .await
                .map(|_| ())
                .map_err(|e| format!("{e:?}"))
        })
    }
}

/// What the health actors of this proxy work with, on the running configuration.
pub fn health_env(core: &Arc<Core>) -> HealthEnv {
    let live = core.live();
    HealthEnv {
        upstreams: live.upstreams.clone(),
        net: Arc::new(CoreNet(core.clone())),
        metrics: core.metrics.clone(),
        identity: Arc::new(live.identity.clone()),
        probe: live.settings.probe,
    }
}
