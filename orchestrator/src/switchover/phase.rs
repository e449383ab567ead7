//! The switchover's states and the transitions the protocol allows, checked in every
//! build: an illegal transition is an [`IllegalTransition`], never a silent step.

/// One state of the switchover (DESIGN.md, "Switchover protocol").
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Phase {
    /// Nothing started yet.
    Idle,
    /// Guardrails; nothing changed but the reverse publication.
    Preflight,
    /// The proxies stop starting transactions.
    Hold,
    /// Wait until every session is at a transaction boundary.
    Drain,
    /// The source refuses writes; the sentinel marks the cut.
    Fence,
    /// Wait until the destination applied the sentinel.
    CatchUp,
    /// Copy the sequences to the destination.
    SyncSequences,
    /// Route every proxy to the destination: the commit point.
    Flip,
    /// Release the holds.
    Resume,
    /// Completed.
    Done,
    /// Undoing what the run changed before the flip.
    RollingBack,
    /// Undone; clients run on the source again.
    RolledBack,
}

/// A step the protocol does not allow (a bug in the orchestrator, reported as such).
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
#[error("illegal switchover transition {} -> {}", from.name(), to.name())]
pub struct IllegalTransition {
    /// Where the run was.
    pub from: Phase,
    /// Where it tried to go.
    pub to: Phase,
}

impl Phase {
    /// Every state, for exhaustive tests.
    #[cfg(test)]
    pub(super) const ALL: [Phase; 12] = [
        Phase::Idle,
        Phase::Preflight,
        Phase::Hold,
        Phase::Drain,
        Phase::Fence,
        Phase::CatchUp,
        Phase::SyncSequences,
        Phase::Flip,
        Phase::Resume,
        Phase::Done,
        Phase::RollingBack,
        Phase::RolledBack,
    ];

    /// `self → to` if the protocol allows it: forward one step at a time, and
    /// rollback from every state before the flip's routing (the commit point), which
    /// includes Flip itself up to the route calls.
    pub fn go(self, to: Phase) -> Result<Phase, IllegalTransition> {
        use Phase::*;
        let allowed = matches!(
            (self, to),
            (Idle, Preflight)
                | (Preflight, Hold)
                | (Hold, Drain)
                | (Drain, Fence)
                | (Fence, CatchUp)
                | (CatchUp, SyncSequences)
                | (SyncSequences, Flip)
                | (Flip, Resume)
                | (Resume, Done)
                | (
                    Preflight | Hold | Drain | Fence | CatchUp | SyncSequences | Flip,
                    RollingBack
                )
                | (RollingBack, RolledBack)
        );
        if allowed {
            Ok(to)
        } else {
            Err(IllegalTransition { from: self, to })
        }
    }

    /// The wire name reports, metrics and `/status` use (none before the first phase).
    pub(super) fn api(self) -> Option<pgcutover_api::Phase> {
        use pgcutover_api::Phase as P;
        Some(match self {
            Phase::Idle => return None,
            Phase::Preflight => P::Preflight,
            Phase::Hold => P::Hold,
            Phase::Drain => P::Drain,
            Phase::Fence => P::Fence,
            Phase::CatchUp => P::CatchUp,
            Phase::SyncSequences => P::SyncSequences,
            Phase::Flip => P::Flip,
            Phase::Resume => P::Resume,
            Phase::Done => P::Done,
            Phase::RollingBack => P::RollingBack,
            Phase::RolledBack => P::RolledBack,
        })
    }

    /// The metric / report name.
    pub fn name(self) -> &'static str {
        self.api().map_or("idle", pgcutover_api::Phase::name)
    }
}

#[cfg(test)]
mod tests {
    use super::Phase::{self, *};

    /// The protocol's transitions, written out once more as the specification.
    const ALLOWED: [(Phase, Phase); 17] = [
        (Idle, Preflight),
        (Preflight, Hold),
        (Hold, Drain),
        (Drain, Fence),
        (Fence, CatchUp),
        (CatchUp, SyncSequences),
        (SyncSequences, Flip),
        (Flip, Resume),
        (Resume, Done),
        (Preflight, RollingBack),
        (Hold, RollingBack),
        (Drain, RollingBack),
        (Fence, RollingBack),
        (CatchUp, RollingBack),
        (SyncSequences, RollingBack),
        (Flip, RollingBack),
        (RollingBack, RolledBack),
    ];

    #[test]
    fn every_allowed_transition_succeeds() {
        for (from, to) in ALLOWED {
            assert_eq!(from.go(to), Ok(to), "{from:?} -> {to:?}");
        }
    }

    #[test]
    fn every_other_pair_is_an_illegal_transition() {
        let mut forbidden = 0;
        for from in Phase::ALL {
            for to in Phase::ALL {
                if ALLOWED.contains(&(from, to)) {
                    continue;
                }
                forbidden += 1;
                let e = from.go(to).unwrap_err();
                assert_eq!((e.from, e.to), (from, to));
                assert_eq!(
                    e.to_string(),
                    format!("illegal switchover transition {} -> {}", from.name(), to.name())
                );
            }
        }
        assert_eq!(forbidden, 12 * 12 - ALLOWED.len());
    }

    #[test]
    fn the_forward_path_runs_from_idle_to_done_one_step_at_a_time() {
        let mut phase = Idle;
        for next in [
            Preflight,
            Hold,
            Drain,
            Fence,
            CatchUp,
            SyncSequences,
            Flip,
            Resume,
            Done,
        ] {
            phase = phase.go(next).unwrap();
        }
        assert_eq!(phase, Done);
    }

    #[test]
    fn nothing_rolls_back_after_the_flip_and_terminal_states_go_nowhere() {
        for from in [Resume, Done, RolledBack, Idle] {
            assert!(from.go(RollingBack).is_err(), "{from:?}");
        }
        for to in Phase::ALL {
            assert!(Done.go(to).is_err() && RolledBack.go(to).is_err(), "{to:?}");
        }
    }

    #[test]
    fn names_match_the_wire_vocabulary() {
        assert_eq!(Idle.name(), "idle");
        assert_eq!(CatchUp.name(), "catch_up");
        assert_eq!(SyncSequences.name(), "sync_sequences");
        assert_eq!(RollingBack.name(), "rolling_back");
        for p in Phase::ALL {
            assert_eq!(p.api().is_none(), p == Idle);
        }
    }
}
