//! The demo's report: the switchover's own report, what the clients saw, and the checks.

use crate::checks::Check;
use crate::workload::{thousands, Ack, ClientLog};
use pgcutover_orchestrator::switchover::Report;
use std::fmt::Write;
use std::time::Duration;

/// What the clients saw, over all of them.
#[derive(Debug, Clone, Default, serde::Serialize)]
pub struct ClientsSeen {
    /// Clients.
    pub clients: usize,
    /// Seconds the load ran.
    pub seconds: f64,
    /// Write transactions whose COMMIT succeeded.
    pub transactions: u64,
    /// Of those, run by PostgreSQL 17 (green).
    pub on_green: u64,
    /// Failed transactions, reads and checks on the clients' own connections.
    pub errors: u64,
    /// The first few error messages.
    pub error_messages: Vec<String>,
    /// Longest any transaction or read took, in milliseconds.
    pub longest_wait_ms: f64,
    /// 99th percentile, in milliseconds.
    pub p99_ms: f64,
    /// Median, in milliseconds.
    pub p50_ms: f64,
    /// `server_version` each client saw at the end (None: it could not ask).
    pub final_versions: Vec<Option<String>>,
    /// Acknowledged order ids (identity column).
    #[serde(skip)]
    pub(crate) orders: Vec<Ack>,
    /// Acknowledged event ids (serial column).
    #[serde(skip)]
    pub(crate) events: Vec<Ack>,
    /// Sum of the acknowledged balance changes.
    pub amount_cents: i64,
}

impl ClientsSeen {
    pub(crate) fn from_logs(logs: Vec<ClientLog>, elapsed: Duration) -> ClientsSeen {
        let mut seen = ClientsSeen {
            clients: logs.len(),
            seconds: elapsed.as_secs_f64(),
            ..ClientsSeen::default()
        };
        let mut latencies = Vec::new();
        for log in logs {
            seen.transactions += log.orders.len() as u64;
            seen.on_green += log.orders.iter().filter(|a| a.on_green).count() as u64;
            seen.errors += log.errors;
            seen.error_messages.extend(log.error_messages);
            seen.amount_cents += log.amount_cents;
            seen.final_versions.push(log.final_version);
            seen.orders.extend(log.orders);
            seen.events.extend(log.events);
            latencies.extend(log.latencies_us);
        }
        seen.error_messages.truncate(10);
        latencies.sort_unstable();
        let pct = |q: f64| -> f64 {
            if latencies.is_empty() {
                return 0.0;
            }
            let i = ((latencies.len() as f64 * q).ceil() as usize).clamp(1, latencies.len()) - 1;
            f64::from(latencies[i]) / 1000.0
        };
        seen.longest_wait_ms = latencies.last().map(|&l| f64::from(l) / 1000.0).unwrap_or(0.0);
        seen.p99_ms = pct(0.99);
        seen.p50_ms = pct(0.50);
        seen
    }

    /// `12,345 transactions, 0 errors, longest wait 120 ms`.
    pub fn one_line(&self) -> String {
        format!(
            "{} transactions, {} errors, longest wait {:.0} ms",
            thousands(self.transactions),
            self.errors,
            self.longest_wait_ms
        )
    }
}

/// Everything the demo found.
#[derive(Debug, Clone, serde::Serialize)]
pub struct DemoReport {
    /// Blue's `server_version`.
    pub blue_version: String,
    /// Green's `server_version`.
    pub green_version: String,
    /// The switchover's report.
    pub switchover: Report,
    /// What the clients saw.
    pub clients: ClientsSeen,
    /// The invariants, checked.
    pub checks: Vec<Check>,
    /// How long the whole demo took up to the report.
    pub elapsed: Duration,
}

impl DemoReport {
    /// Every check passed.
    pub fn passed(&self) -> bool {
        !self.checks.is_empty() && self.checks.iter().all(|c| c.ok)
    }

    /// The report as text (what `pgcutover demo` prints on stdout).
    pub fn render(&self) -> String {
        let mut o = String::new();
        let s = &self.switchover;
        let c = &self.clients;
        let _ = writeln!(
            o,
            "\nSwitchover PostgreSQL {} (blue) → PostgreSQL {} (green): {}",
            self.blue_version,
            self.green_version,
            serde_json::to_value(s.outcome)
                .ok()
                .and_then(|v| v.as_str().map(str::to_owned))
                .unwrap_or_default()
        );
        if let Some(reason) = &s.reason {
            let _ = writeln!(o, "  reason:            {reason}");
        }
        let phases: Vec<String> = s
            .phases
            .iter()
            .filter(|p| p.phase != pgcutover_api::Phase::Done)
            .map(|p| format!("{} {}", p.phase, ms(p.ms)))
            .collect();
        let _ = writeln!(o, "  phases:            {}", phases.join(", "));
        let _ = writeln!(o, "  clients held:      at most {}", ms(s.max_hold_ms));
        let _ = writeln!(
            o,
            "  sessions:          {} held, {} moved, {} pinned; {} transactions drained",
            s.sessions_held, s.sessions_moved, s.pinned_sessions, s.transactions_drained
        );
        let cut: Vec<String> = s.cut_lsn.iter().map(|(db, lsn)| format!("{db} {lsn}")).collect();
        let _ = writeln!(
            o,
            "  cut LSN:           {}; sequences synced: {}",
            if cut.is_empty() { "-".into() } else { cut.join(", ") },
            s.sequences_synced
        );
        let _ = writeln!(
            o,
            "\nWhat the {} clients saw over {:.1} s of load",
            c.clients, c.seconds
        );
        let _ = writeln!(
            o,
            "  transactions:      {} committed ({} on blue, {} on green)",
            thousands(c.transactions),
            thousands(c.transactions - c.on_green),
            thousands(c.on_green)
        );
        let _ = writeln!(o, "  errors:            {}", c.errors);
        for e in &c.error_messages {
            let _ = writeln!(o, "                     {e}");
        }
        let _ = writeln!(
            o,
            "  wait per query:    longest {}, p99 {}, median {}",
            ms(c.longest_wait_ms),
            ms(c.p99_ms),
            ms(c.p50_ms)
        );
        let _ = writeln!(o, "\nChecks");
        for check in &self.checks {
            let _ = writeln!(
                o,
                "  {}  {}: {}",
                if check.ok { "ok  " } else { "FAIL" },
                check.name,
                check.detail
            );
        }
        let failed = self.checks.iter().filter(|c| !c.ok).count();
        let _ = writeln!(
            o,
            "\n{} in {:.1} s",
            if self.passed() {
                "Demo passed: every check holds".to_owned()
            } else {
                format!("Demo FAILED: {failed} check(s) failed")
            },
            self.elapsed.as_secs_f64()
        );
        o
    }
}

/// `0.4 ms`, `12 ms`, `1,234 ms`.
fn ms(v: f64) -> String {
    if v < 10.0 {
        format!("{v:.1} ms")
    } else {
        format!("{} ms", thousands(v.round() as u64))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn percentiles_over_all_clients() {
        let log = |lat: Vec<u32>| ClientLog {
            latencies_us: lat,
            ..ClientLog::default()
        };
        let seen = ClientsSeen::from_logs(
            vec![log((1..=99).map(|i| i * 1000).collect()), log(vec![250_000])],
            Duration::from_secs(1),
        );
        assert_eq!(seen.longest_wait_ms, 250.0);
        assert_eq!(seen.p99_ms, 99.0);
        assert_eq!(seen.p50_ms, 50.0);
        assert_eq!(seen.clients, 2);
    }

    #[test]
    fn milliseconds_read_well() {
        assert_eq!(ms(0.42), "0.4 ms");
        assert_eq!(ms(120.4), "120 ms");
        assert_eq!(ms(1234.0), "1,234 ms");
    }
}
