//! TEMPORARY stand-in for `pgcutover_orchestrator::switchover::run` (same signature),
//! used only until the real state machine lands on main; then this file goes. It does
//! hold → drain → sentinel catch-up → sequence sync → flip → resume with the proxy's
//! controls, without preflight guardrails, fence or rollback.

use pgcutover_orchestrator::switchover::{Direction, Outcome, PhaseTime, ProxyEndpoint, Report, SwitchoverOptions};
use pgcutover_orchestrator::{Progress, Side, Targets};
use pgcutover_proxy::config::Config;
use pgcutover_proxy::route::Target;
use std::time::{Duration, Instant};

pub(crate) async fn run(
    targets: &Targets,
    _config: &Config,
    proxies: &[ProxyEndpoint],
    opts: &SwitchoverOptions,
    progress: &Progress,
) -> Report {
    let mut report = Report {
        outcome: Outcome::Completed,
        reason: None,
        direction: Direction::Forward,
        phases: Vec::new(),
        max_hold_ms: 0.0,
        sessions_held: 0,
        transactions_drained: 0,
        cut_lsn: Vec::new(),
        sequences_synced: 0,
        pinned_sessions: 0,
        sessions_moved: 0,
        reverse_replication: false,
        predicted_hold_ms: None,
    };
    let Some(ProxyEndpoint::Local(control)) = proxies.first() else {
        report.outcome = Outcome::Refused;
        report.reason = Some("interim switchover: only a local proxy".into());
        return report;
    };
    let db = &targets.databases[0];
    let (blue, green) = match (
        targets.connect(Side::Blue, db).await,
        targets.connect(Side::Green, db).await,
    ) {
        (Ok(b), Ok(g)) => (b, g),
        (Err(e), _) | (_, Err(e)) => {
            report.outcome = Outcome::Refused;
            report.reason = Some(e.to_string());
            return report;
        }
    };
    let phase = |report: &mut Report, name: &'static str, t: Instant| {
        report.phases.push(PhaseTime {
            phase: name,
            ms: t.elapsed().as_secs_f64() * 1000.0,
        });
        progress.done(t, format!("switchover (interim): {name}"));
    };
    let hold_start = Instant::now();
    let t = Instant::now();
    let drain = control.hold_and_drain().await;
    report.sessions_held = drain.sessions;
    phase(&mut report, "drain", t);
    let result: Result<(), String> = async {
        if !drain.drained {
            return Err(format!("{} sessions still in a transaction", drain.in_flight));
        }
        let t = Instant::now();
        let token: i64 = blue
            .query_one(
                "UPDATE pgcutover.sentinel SET token = coalesce(token, 0) + 1, written_at = now() WHERE database = $1 \
                 RETURNING token",
                &[db],
            )
            .await
            .map_err(|e| e.to_string())?
            .get(0);
        let deadline = Instant::now() + opts.timeout;
        loop {
            let row = green
                .query_opt("SELECT token FROM pgcutover.sentinel WHERE database = $1", &[db])
                .await
                .map_err(|e| e.to_string())?;
            if row.and_then(|r| r.get::<_, Option<i64>>(0)) >= Some(token) {
                break;
            }
            if Instant::now() > deadline {
                return Err("green did not catch up".into());
            }
            tokio::time::sleep(Duration::from_millis(2)).await;
        }
        phase(&mut report, "catch_up", t);
        let t = Instant::now();
        let seqs = blue
            .query(
                "SELECT format('%I.%I', schemaname, sequencename), last_value FROM pg_sequences \
                 WHERE last_value IS NOT NULL AND schemaname <> 'pgcutover'",
                &[],
            )
            .await
            .map_err(|e| e.to_string())?;
        let mut sql = String::new();
        for r in &seqs {
            let (name, value): (String, i64) = (r.get(0), r.get(1));
            sql.push_str(&format!("SELECT setval('{name}', {value});"));
        }
        green.batch_execute(&sql).await.map_err(|e| e.to_string())?;
        report.sequences_synced = seqs.len();
        phase(&mut report, "sync_sequences", t);
        let t = Instant::now();
        let flip = control
            .flip(Target::Green, Duration::from_secs(5))
            .await
            .map_err(|e| e.to_string())?;
        report.sessions_moved = flip.moved;
        phase(&mut report, "flip", t);
        Ok(())
    }
    .await;
    if let Err(e) = result {
        report.outcome = Outcome::RolledBack;
        report.reason = Some(e);
    }
    let t = Instant::now();
    control.resume();
    report.max_hold_ms = hold_start.elapsed().as_secs_f64() * 1000.0;
    phase(&mut report, "resume", t);
    report
}
