//! Which switchover run, if any, drives this proxy. A run takes the lease with its
//! first prepare or hold and gives it back with its resume; meanwhile every mutating
//! call from anyone else (an operator's `/hold`, `/resume`, `/route`, the console's
//! HOLD and RESUME, another run) is refused, so nothing can resume clients under a
//! run between its fence and its flip. The lease lapses by itself after the hold
//! limit, as the hold does: a run that died blocks nobody for longer.

use tokio::time::Instant;

/// Who makes a mutating call.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Caller<'a> {
    /// A switchover run, by its id.
    Run(&'a str),
    /// Anyone else: the admin API without the run header, the SQL console.
    Operator,
}

/// A mutating call.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Call {
    /// Standby connections.
    Prepare,
    /// New transactions wait.
    Hold,
    /// Wait for in-flight transactions.
    Drain,
    /// Move sessions.
    Route,
    /// Let transactions start again.
    Resume,
}

/// The run holding the proxy, and until when.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) struct Lease {
    run: String,
    until: Instant,
}

/// Why a call is refused: the run holding the lease.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) struct Leased(pub String);

/// The lease as one value, changed only by [`admit`].
#[derive(Debug, Default)]
pub(crate) struct LeaseState(Option<Lease>);

impl LeaseState {
    /// Admits `call` from `caller` at `now`, or names the run that holds the lease.
    /// A run's call takes or extends the lease by `ttl`; its resume ends it.
    pub(crate) fn admit(
        &mut self,
        caller: Caller<'_>,
        call: Call,
        now: Instant,
        ttl: std::time::Duration,
    ) -> Result<(), Leased> {
        if self.0.as_ref().is_some_and(|l| l.until <= now) {
            self.0 = None;
        }
        match (caller, &self.0) {
            (Caller::Operator, None) => Ok(()),
            (Caller::Operator, Some(l)) => Err(Leased(l.run.clone())),
            (Caller::Run(run), Some(l)) if l.run != run => Err(Leased(l.run.clone())),
            (Caller::Run(run), _) => {
                self.0 = match call {
                    Call::Resume => None,
                    _ => Some(Lease {
                        run: run.to_owned(),
                        until: now + ttl,
                    }),
                };
                Ok(())
            }
        }
    }

    /// The run holding the lease at `now`.
    pub(crate) fn holder(&self, now: Instant) -> Option<&str> {
        self.0.as_ref().filter(|l| l.until > now).map(|l| l.run.as_str())
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::time::Duration;

    const TTL: Duration = Duration::from_secs(30);

    #[test]
    fn a_run_holds_the_proxy_from_its_hold_to_its_resume() {
        let t0 = Instant::now();
        let mut lease = LeaseState::default();
        assert_eq!(
            lease.admit(Caller::Operator, Call::Hold, t0, TTL),
            Ok(()),
            "no run: operators may"
        );
        assert_eq!(lease.admit(Caller::Run("r1"), Call::Hold, t0, TTL), Ok(()));
        assert_eq!(lease.holder(t0), Some("r1"));
        for call in [Call::Resume, Call::Hold, Call::Route, Call::Prepare, Call::Drain] {
            assert_eq!(
                lease.admit(Caller::Operator, call, t0, TTL),
                Err(Leased("r1".into())),
                "{call:?}"
            );
        }
        assert_eq!(
            lease.admit(Caller::Run("r2"), Call::Hold, t0, TTL),
            Err(Leased("r1".into()))
        );
        assert_eq!(lease.admit(Caller::Run("r1"), Call::Route, t0, TTL), Ok(()));
        assert_eq!(lease.admit(Caller::Run("r1"), Call::Resume, t0, TTL), Ok(()));
        assert_eq!(lease.holder(t0), None);
        assert_eq!(lease.admit(Caller::Operator, Call::Resume, t0, TTL), Ok(()));
    }

    #[test]
    fn a_lease_lapses_with_the_hold_limit_and_each_call_extends_it() {
        let t0 = Instant::now();
        let mut lease = LeaseState::default();
        lease.admit(Caller::Run("r1"), Call::Prepare, t0, TTL).unwrap();
        let later = t0 + Duration::from_secs(20);
        lease.admit(Caller::Run("r1"), Call::Hold, later, TTL).unwrap();
        assert_eq!(
            lease.admit(Caller::Operator, Call::Resume, t0 + TTL, TTL),
            Err(Leased("r1".into()))
        );
        assert_eq!(lease.holder(later + TTL), None);
        assert_eq!(lease.admit(Caller::Run("r2"), Call::Hold, later + TTL, TTL), Ok(()));
        assert_eq!(lease.holder(later + TTL), Some("r2"));
    }
}
