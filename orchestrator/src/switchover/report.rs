//! The report's text: its `reason` line, rendered from the typed errors, and the
//! whole report as the CLI prints it.

use super::error::SwitchoverError;
use super::rollback::Problem;
use pgcutover_api::{Direction, Outcome, Report};

/// The reason for a rollback: the failure, then what the rollback itself hit.
pub(super) fn reason_with(failure: &SwitchoverError, problems: &[Problem]) -> String {
    if problems.is_empty() {
        return failure.to_string();
    }
    let hit: Vec<String> = problems.iter().map(|(what, e)| format!("{what}: {e}")).collect();
    format!("{failure}; the rollback itself hit: {}", hit.join("; "))
}

/// Appends `problem` to the report's reason (after the flip, problems add up).
pub(super) fn add_reason(report: &mut Report, problem: &SwitchoverError) {
    report.reason = Some(match report.reason.take() {
        Some(before) => format!("{before}; {problem}"),
        None => problem.to_string(),
    });
}

/// How a run that passed its commit point ended: `completed` only when every proxy
/// took the route and no session stayed on the old side or was closed because its
/// move failed (a session closed by `pinned_policy = close` was closed by choice).
pub(super) fn outcome_past_commit(report: &Report, every_proxy_routed: bool) -> Outcome {
    if every_proxy_routed && !report.unmoved_sessions.iter().any(|u| u.spoils_completion()) {
        Outcome::Completed
    } else {
        Outcome::Incomplete
    }
}

/// The report as the CLI prints it.
pub fn render(r: &Report) -> String {
    let mut out = format!(
        "switchover ({}) {}{}\n",
        match r.direction {
            Direction::Forward => "blue -> green",
            Direction::Rollback => "green -> blue",
        },
        r.outcome.name(),
        r.reason.as_deref().map(|x| format!(": {x}")).unwrap_or_default()
    );
    for p in &r.phases {
        out.push_str(&format!("  {:<16} {:>9.1} ms\n", p.phase.name(), p.ms));
    }
    out.push_str(&format!(
        "  clients held at most {:.1} ms; sessions held {}, in a transaction at the hold {}, moved {}, not moved {}\n",
        r.max_hold_ms, r.sessions_held, r.transactions_drained, r.sessions_moved, r.pinned_sessions
    ));
    for u in &r.unmoved_sessions {
        out.push_str(&format!(
            "  not moved: {} user {} database {} client {} (backend pid {}): {}; {}\n",
            u.proxy,
            u.user,
            u.database,
            u.client,
            u.server_pid,
            u.reason,
            if u.stayed {
                "still on the old server"
            } else {
                "closed with FATAL 57P01"
            }
        ));
    }
    for line in &r.cut_proof {
        out.push_str(&format!("  proof: {line}\n"));
    }
    for (db, lsn) in &r.cut_lsn {
        out.push_str(&format!("  cut (sentinel commit) in {db}: {lsn}\n"));
    }
    out.push_str(&format!("  sequences synced: {}\n", r.sequences_synced));
    if r.reverse_replication {
        out.push_str(
            "  reverse replication green -> blue is running: `pgcutover rollback` goes back without losing writes\n",
        );
    }
    if let Some(ms) = r.predicted_hold_ms {
        out.push_str(&format!(
            "  predicted hold: about {ms:.0} ms (drain + fence, catch-up, sequences, flip)\n"
        ));
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::targets::Side;
    use pgcutover_api::Phase;

    #[test]
    fn a_rollback_reason_names_the_failure_then_what_the_undo_hit() {
        let failure = SwitchoverError::Timeout {
            phase: Some(Phase::CatchUp),
            timeout: std::time::Duration::from_secs(3),
        };
        assert_eq!(reason_with(&failure, &[]), failure.to_string());
        let hit = SwitchoverError::Database {
            side: Side::Blue,
            database: "app".into(),
            doing: "reloading the configuration".into(),
            message: "boom".into(),
        };
        assert_eq!(
            reason_with(&failure, &[("lifting the fence on blue".into(), hit)]),
            format!("{failure}; the rollback itself hit: lifting the fence on blue: blue database app: reloading the configuration: boom")
        );
    }

    #[test]
    fn problems_after_the_flip_add_up() {
        let mut r = Report::new(Direction::Forward);
        add_reason(&mut r, &SwitchoverError::NoDatabase);
        add_reason(&mut r, &SwitchoverError::NoDatabase);
        let one = SwitchoverError::NoDatabase.to_string();
        assert_eq!(r.reason, Some(format!("{one}; {one}")));
    }

    fn unmoved(stayed: bool, by_policy: bool) -> pgcutover_api::UnmovedSession {
        pgcutover_api::UnmovedSession {
            proxy: "proxy a".into(),
            user: "app".into(),
            database: "shop".into(),
            client: "10.0.0.7:51234".into(),
            server_pid: 4242,
            reason: "could not log into the green server".into(),
            stayed,
            by_policy,
        }
    }

    #[test]
    fn completed_means_every_proxy_and_every_session_moved_or_closed_by_policy() {
        let mut r = Report::new(Direction::Forward);
        assert_eq!(outcome_past_commit(&r, true), Outcome::Completed);
        assert_eq!(
            outcome_past_commit(&r, false),
            Outcome::Incomplete,
            "a proxy not routed"
        );
        r.unmoved_sessions.push(unmoved(false, true));
        assert_eq!(
            outcome_past_commit(&r, true),
            Outcome::Completed,
            "closed by pinned_policy = close"
        );
        for (stayed, by_policy) in [(true, true), (false, false)] {
            let mut r = Report::new(Direction::Forward);
            r.unmoved_sessions.push(unmoved(stayed, by_policy));
            assert_eq!(
                outcome_past_commit(&r, true),
                Outcome::Incomplete,
                "{stayed} {by_policy}"
            );
            let text = render(&r);
            assert!(
                text.contains("not moved: proxy a user app database shop client 10.0.0.7:51234 (backend pid 4242)"),
                "{text}"
            );
        }
    }

    #[test]
    fn the_rendered_report_lists_phases_and_the_cut() {
        let mut r = Report::new(Direction::Forward);
        r.phases.push(pgcutover_api::PhaseTime {
            phase: Phase::CatchUp,
            ms: 1.3,
        });
        r.cut_lsn.push(("app".into(), "0/1A".into()));
        let text = render(&r);
        assert!(text.starts_with("switchover (blue -> green) "), "{text}");
        assert!(text.contains("  catch_up ") && text.contains(" 1.3 ms\n"), "{text}");
        assert!(text.contains("cut (sentinel commit) in app: 0/1A"), "{text}");
    }
}
