//! A session's standby: a logged-in connection to another target, opened ahead
//! of a flip when the control asks for one, so the flip only has to move state.

use super::migrate::{self, StepError, Warm};
use super::SessionCtx;
use crate::pump::Pump;
use crate::registry::SessionHandle;
use crate::Shared;
use pgcutover_api::Side;
use tracing::warn;

/// The session's standby connection, if any.
pub(super) enum Standby {
    /// None wanted.
    None,
    /// Logging in, in a task of its own so the session keeps serving.
    Connecting(Side, tokio::task::JoinHandle<Result<Warm, StepError>>),
    /// Logged in, statements prepared: waiting for the flip.
    Ready(Side, Box<Warm>),
    /// The login failed; not retried until another target is asked for.
    Failed(Side),
}

impl Standby {
    fn target(&self) -> Option<Side> {
        match self {
            Standby::None => None,
            Standby::Connecting(t, _) | Standby::Ready(t, _) | Standby::Failed(t) => Some(*t),
        }
    }

    /// Opens (or drops) the standby so that it matches `wanted`.
    pub(super) fn sync(&mut self, shared: &Shared, ctx: &SessionCtx, pump: &Pump, wanted: Option<Side>) {
        if self.target() == wanted {
            return;
        }
        if let Standby::Connecting(_, task) = self {
            task.abort();
        }
        ctx.registration.handle.set_standby_ready(false);
        *self = match wanted {
            Some(target) => {
                let (backend, opts) = (shared.backend(target).clone(), shared.login.clone());
                let (params, credential) = (ctx.params.clone(), ctx.credential.clone());
                let statements = pump.state_log().statements().iter();
                let statements = statements.map(|(n, f)| (n.to_owned(), f.clone())).collect();
                let warm = migrate::warm_standby(backend, opts, params, credential, statements);
                Standby::Connecting(target, tokio::spawn(warm))
            }
            None => Standby::None,
        };
    }

    /// Hands over the ready connection to `target` for a move, if there is one.
    pub(super) fn take_for(&mut self, target: Side, handle: &SessionHandle) -> Option<Warm> {
        handle.set_standby_ready(false);
        match std::mem::replace(self, Standby::None) {
            Standby::Ready(t, conn) if t == target => Some(*conn),
            other => {
                *self = other;
                None
            }
        }
    }

    /// Resolves when a standby login finishes; never while there is none.
    pub(super) async fn login(&mut self) -> Result<Warm, StepError> {
        match self {
            Standby::Connecting(_, task) => match task.await {
                Ok(r) => r,
                Err(e) => Err(StepError::Stopped(e.to_string())),
            },
            _ => std::future::pending().await,
        }
    }

    /// Takes in the result of [`login`](Self::login).
    pub(super) fn settle(&mut self, login: Result<Warm, StepError>, handle: &SessionHandle) {
        let target = self.target().unwrap_or(Side::Blue);
        *self = match login {
            Ok(conn) => {
                handle.set_standby_ready(true);
                Standby::Ready(target, Box::new(conn))
            }
            Err(e) => {
                warn!(target = target.name(), "standby connection failed: {e}");
                Standby::Failed(target)
            }
        };
    }
}
