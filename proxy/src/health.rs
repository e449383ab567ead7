//! Readiness (`GET /ready`, a load balancer's or Kubernetes' readiness probe):
//! whether this proxy should be given new clients. Not while it shuts down (its
//! sessions are draining), nor while it cannot reach the server its route points
//! at. A switchover's hold does not make it unready: held clients wait here, which
//! is the point, and the hold is over long before a probe would notice.
//!
//! Reachability is a TCP connect to each configured server every
//! [`PROBE_INTERVAL`], bounded by [`PROBE_TIMEOUT`]: cheap, needs no credentials,
//! and says what readiness needs (a server that accepts connections; one that
//! refuses logins still fails every login with its own error).

use crate::server::Backend;
use crate::Shared;
use pgcutover_api::{PerSide, Side};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::Duration;
use tokio::net::TcpStream;
use tracing::{info, warn};

/// How often each server is probed.
pub const PROBE_INTERVAL: Duration = Duration::from_secs(5);
/// How long a probe's connect may take.
pub const PROBE_TIMEOUT: Duration = Duration::from_secs(2);

/// What `GET /ready` answers from. Written by the probe task and by shutdown.
#[derive(Debug)]
pub struct Health {
    shutting_down: AtomicBool,
    /// Per side: the last probe connected. True until a probe says otherwise, so a
    /// proxy that just started is not turned away before its first probe.
    reachable: PerSide<AtomicBool>,
}

impl Default for Health {
    fn default() -> Self {
        Health {
            shutting_down: AtomicBool::new(false),
            reachable: PerSide::from_fn(|_| AtomicBool::new(true)),
        }
    }
}

/// Why the proxy is not ready.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum NotReady {
    /// SIGTERM/SIGINT: no new connections, sessions draining.
    ShuttingDown,
    /// The route's server did not accept a TCP connection at the last probe.
    Unreachable(Side),
}

impl std::fmt::Display for NotReady {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            NotReady::ShuttingDown => write!(f, "shutting down: sessions are draining, no new connections"),
            NotReady::Unreachable(side) => write!(
                f,
                "the {side} server (where the route points) did not accept a connection within {PROBE_TIMEOUT:?} at the last probe"
            ),
        }
    }
}

impl Health {
    /// Ready for new clients whose sessions go to `route`, or why not.
    pub fn check(&self, route: Side) -> Result<(), NotReady> {
        if self.shutting_down.load(Ordering::Relaxed) {
            return Err(NotReady::ShuttingDown);
        }
        if !self.reachable.get(route).load(Ordering::Relaxed) {
            return Err(NotReady::Unreachable(route));
        }
        Ok(())
    }

    /// From now on, not ready.
    pub fn shutting_down(&self) {
        self.shutting_down.store(true, Ordering::Relaxed);
    }

    fn set_reachable(&self, side: Side, up: bool) -> bool {
        self.reachable.get(side).swap(up, Ordering::Relaxed)
    }
}

/// Whether `backend` accepts a TCP connection within [`PROBE_TIMEOUT`].
async fn probe(backend: &Backend) -> bool {
    let connect = TcpStream::connect((backend.url.host.as_str(), backend.url.port));
    matches!(tokio::time::timeout(PROBE_TIMEOUT, connect).await, Ok(Ok(_)))
}

/// Probes every configured server forever, recording the result for `/ready` and
/// in `pgcutover_server_up`; logs each change.
pub(crate) async fn probe_servers(shared: Arc<Shared>) {
    let mut tick = tokio::time::interval(PROBE_INTERVAL);
    tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    loop {
        tick.tick().await;
        for backend in std::iter::once(&shared.blue).chain(shared.green.as_ref()) {
            let up = probe(backend).await;
            shared.metrics.server_up(backend.side, up);
            let was = shared.health.set_reachable(backend.side, up);
            match (was, up) {
                (true, false) => {
                    warn!(server = %backend.url.host_port(), side = %backend.side, "the {} server does not accept connections", backend.side)
                }
                (false, true) => {
                    info!(server = %backend.url.host_port(), side = %backend.side, "the {} server accepts connections again", backend.side)
                }
                _ => {}
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn ready_unless_shutting_down_or_the_routes_server_is_unreachable() {
        let h = Health::default();
        assert_eq!(h.check(Side::Blue), Ok(()));
        h.set_reachable(Side::Green, false);
        assert_eq!(
            h.check(Side::Blue),
            Ok(()),
            "green's state does not matter while routed to blue"
        );
        assert_eq!(h.check(Side::Green), Err(NotReady::Unreachable(Side::Green)));
        h.shutting_down();
        assert_eq!(h.check(Side::Blue), Err(NotReady::ShuttingDown));
    }
}
