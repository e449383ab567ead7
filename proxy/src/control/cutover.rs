//! The proxy's cutover state as one value: where sessions go, whether new
//! transactions may start, and which target sessions keep a standby connection
//! to. It lives in one `watch`, and every change is one closure over the whole
//! value, so a check and the write it decides cannot be split by another caller.

use crate::route::Route;
use pgcutover_api::Side;
use std::time::Duration;
use tokio::time::Instant;

/// Whether new transactions may start.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Gate {
    /// They may.
    Open,
    /// New transactions wait.
    Held {
        /// When the hold began.
        since: Instant,
        /// Which hold this is; a hold's timer releases only its own hold.
        generation: u64,
    },
}

impl Gate {
    /// Whether new transactions wait.
    pub fn is_held(&self) -> bool {
        matches!(self, Gate::Held { .. })
    }
}

/// Everything sessions watch, in one value.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Cutover {
    /// Where sessions should be.
    pub route: Route,
    /// Whether new transactions may start.
    pub gate: Gate,
    /// The target sessions should hold a logged-in standby connection to.
    pub standby: Option<Side>,
    /// Holds so far: the next hold's generation is one more.
    holds: u64,
}

/// Why a flip cannot happen.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) struct NotHeld;

impl Cutover {
    /// On blue, open, no standby.
    pub(crate) fn new() -> Cutover {
        Cutover {
            route: Route {
                target: Side::Blue,
                epoch: 0,
            },
            gate: Gate::Open,
            standby: None,
            holds: 0,
        }
    }

    /// Closes the gate unless it is closed already; returns the new hold's generation.
    pub(crate) fn hold(&mut self, now: Instant) -> Option<u64> {
        if self.gate.is_held() {
            return None;
        }
        self.holds += 1;
        self.gate = Gate::Held {
            since: now,
            generation: self.holds,
        };
        Some(self.holds)
    }

    /// Opens the gate and drops the standby wish (its flip is done, or called off).
    /// Returns how long the hold lasted, if there was one, and whether anything changed.
    pub(crate) fn resume(&mut self, now: Instant) -> (Option<Duration>, bool) {
        let held_for = match self.gate {
            Gate::Held { since, .. } => Some(now.saturating_duration_since(since)),
            Gate::Open => None,
        };
        self.gate = Gate::Open;
        let dropped_standby = self.standby.take().is_some();
        (held_for, held_for.is_some() || dropped_standby)
    }

    /// [`resume`](Self::resume)s only if hold `generation` is still the current one.
    pub(crate) fn expire(&mut self, generation: u64, now: Instant) -> Option<Duration> {
        match self.gate {
            Gate::Held { generation: g, .. } if g == generation => self.resume(now).0,
            _ => None,
        }
    }

    /// Routes to `target` with a new epoch; only while held, so that no
    /// transaction is split between servers.
    pub(crate) fn flip(&mut self, target: Side) -> Result<u64, NotHeld> {
        if !self.gate.is_held() {
            return Err(NotHeld);
        }
        self.route.target = target;
        self.route.epoch += 1;
        Ok(self.route.epoch)
    }

    /// Drops the standby wish for `target` if no flip used it: not held, and the
    /// route points elsewhere. Returns whether it did.
    pub(crate) fn drop_unused_standby(&mut self, target: Side) -> bool {
        let unused = self.standby == Some(target) && !self.gate.is_held() && self.route.target != target;
        if unused {
            self.standby = None;
        }
        unused
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_second_hold_keeps_the_first() {
        let t0 = Instant::now();
        let mut c = Cutover::new();
        assert_eq!(c.hold(t0), Some(1));
        assert_eq!(c.hold(t0 + Duration::from_secs(1)), None);
        assert_eq!(
            c.gate,
            Gate::Held {
                since: t0,
                generation: 1
            }
        );
    }

    #[test]
    fn resume_opens_and_reports_the_hold() {
        let t0 = Instant::now();
        let mut c = Cutover::new();
        c.standby = Some(Side::Green);
        c.hold(t0);
        assert_eq!(
            c.resume(t0 + Duration::from_millis(250)),
            (Some(Duration::from_millis(250)), true)
        );
        assert_eq!(c.gate, Gate::Open);
        assert_eq!(c.standby, None);
        assert_eq!(c.resume(t0), (None, false), "nothing to resume");
        assert_eq!(c.hold(t0), Some(2), "a later hold is a new generation");
    }

    #[test]
    fn a_hold_timer_releases_only_its_own_generation() {
        let t0 = Instant::now();
        let mut c = Cutover::new();
        let first = c.hold(t0).unwrap();
        c.resume(t0);
        let second = c.hold(t0).unwrap();
        assert_eq!(c.expire(first, t0), None);
        assert!(c.gate.is_held(), "the first hold's timer must not end the second hold");
        assert!(c.expire(second, t0).is_some());
        assert!(!c.gate.is_held());
    }

    #[test]
    fn flip_requires_a_hold_and_bumps_the_epoch() {
        let mut c = Cutover::new();
        assert_eq!(c.flip(Side::Green), Err(NotHeld));
        assert_eq!(c.route.epoch, 0);
        c.hold(Instant::now());
        assert_eq!(c.flip(Side::Green), Ok(1));
        assert_eq!(c.flip(Side::Blue), Ok(2));
        assert_eq!(
            c.route,
            Route {
                target: Side::Blue,
                epoch: 2
            }
        );
    }

    #[test]
    fn an_unused_standby_is_dropped_but_not_one_a_flip_used() {
        let mut c = Cutover::new();
        c.standby = Some(Side::Green);
        c.hold(Instant::now());
        assert!(!c.drop_unused_standby(Side::Green), "held: a flip may still come");
        c.flip(Side::Green).unwrap();
        c.gate = Gate::Open;
        assert!(!c.drop_unused_standby(Side::Green), "routed there: it was used");
        c.route.target = Side::Blue;
        assert!(c.drop_unused_standby(Side::Green));
        assert_eq!(c.standby, None);
    }
}
