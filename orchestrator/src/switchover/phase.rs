//! The protocol's transitions over the phases the wire already names
//! ([`pgcutover_api::Phase`]), checked in every build: an illegal transition is an
//! [`IllegalTransition`], never a silent step. Before its first phase a run is idle,
//! `None`, as `/status` shows it.

pub use pgcutover_api::Phase;

/// A step the protocol does not allow (a bug in the orchestrator, reported as such).
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
#[error("illegal switchover transition {} -> {}", name(*from), to.name())]
pub struct IllegalTransition {
    /// Where the run was (`None`: not started).
    pub from: Option<Phase>,
    /// Where it tried to go.
    pub to: Phase,
}

/// `from → to` if the protocol allows it: forward one step at a time, and rollback
/// from every phase before the flip's routing (the commit point), which includes
/// Flip itself up to the route calls.
pub fn go(from: Option<Phase>, to: Phase) -> Result<Phase, IllegalTransition> {
    use Phase::*;
    let allowed = match from {
        None => to == Preflight,
        Some(from) => matches!(
            (from, to),
            (Preflight, Hold)
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
        ),
    };
    if allowed {
        Ok(to)
    } else {
        Err(IllegalTransition { from, to })
    }
}

/// The phase's metric / report name, `idle` before the first.
pub fn name(phase: Option<Phase>) -> &'static str {
    phase.map_or("idle", Phase::name)
}

#[cfg(test)]
mod tests {
    use super::Phase::*;
    use super::*;

    const ALL: [Phase; 11] = Phase::ALL;

    /// The protocol's transitions, written out once more as the specification.
    const ALLOWED: [(Option<Phase>, Phase); 17] = [
        (None, Preflight),
        (Some(Preflight), Hold),
        (Some(Hold), Drain),
        (Some(Drain), Fence),
        (Some(Fence), CatchUp),
        (Some(CatchUp), SyncSequences),
        (Some(SyncSequences), Flip),
        (Some(Flip), Resume),
        (Some(Resume), Done),
        (Some(Preflight), RollingBack),
        (Some(Hold), RollingBack),
        (Some(Drain), RollingBack),
        (Some(Fence), RollingBack),
        (Some(CatchUp), RollingBack),
        (Some(SyncSequences), RollingBack),
        (Some(Flip), RollingBack),
        (Some(RollingBack), RolledBack),
    ];

    fn every_from() -> impl Iterator<Item = Option<Phase>> {
        std::iter::once(None).chain(ALL.map(Some))
    }

    #[test]
    fn every_allowed_transition_succeeds() {
        for (from, to) in ALLOWED {
            assert_eq!(go(from, to), Ok(to), "{from:?} -> {to:?}");
        }
    }

    #[test]
    fn every_other_pair_is_an_illegal_transition() {
        let mut forbidden = 0;
        for from in every_from() {
            for to in ALL {
                if ALLOWED.contains(&(from, to)) {
                    continue;
                }
                forbidden += 1;
                let e = go(from, to).unwrap_err();
                assert_eq!((e.from, e.to), (from, to));
                assert_eq!(
                    e.to_string(),
                    format!("illegal switchover transition {} -> {}", name(from), to.name())
                );
            }
        }
        assert_eq!(forbidden, 12 * 11 - ALLOWED.len());
    }

    #[test]
    fn the_forward_path_runs_from_idle_to_done_one_step_at_a_time() {
        let mut phase = None;
        // The forward path is ALL up to Done.
        for next in ALL.into_iter().take_while(|p| *p != RollingBack) {
            phase = Some(go(phase, next).unwrap());
        }
        assert_eq!(phase, Some(Done));
    }

    #[test]
    fn nothing_rolls_back_after_the_flip_and_terminal_states_go_nowhere() {
        for from in [None, Some(Resume), Some(Done), Some(RolledBack)] {
            assert!(go(from, RollingBack).is_err(), "{from:?}");
        }
        for to in ALL {
            assert!(
                go(Some(Done), to).is_err() && go(Some(RolledBack), to).is_err(),
                "{to:?}"
            );
        }
    }

    #[test]
    fn idle_is_named_for_reports() {
        assert_eq!(name(None), "idle");
        assert_eq!(name(Some(CatchUp)), "catch_up");
    }
}
