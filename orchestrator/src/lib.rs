//! pgcutover's orchestrator: preflight checks, blue → green logical replication
//! (copy and clone methods), lag and DDL-drift status, data verification.
//!
//! Everything it creates is named by the constants below; the switchover relies on
//! them. Per replicated database: a schema [`SCHEMA`] on blue and green holding
//! [`SENTINEL_TABLE`] (one row per database, replicated: the switchover proves
//! catch-up with it), [`DDL_LOG_TABLE`] (filled on blue by event triggers) and
//! [`PROGRESS_TABLE`] (what `replicate` has done, per side) and, in the first
//! database, [`journal::JOURNAL_TABLE`] (the route and the last switchover); a publication
//! [`PUBLICATION`] `FOR ALL TABLES` on blue; a subscription on green and its slot on
//! blue, both named [`subscription_name`]. Reverse replication (green → blue, for
//! `pgcutover rollback`) adds [`REVERSE_PUBLICATION`] on green and a subscription on
//! blue with its slot on green, both named [`reverse_subscription_name`].

pub mod check;
mod error;
pub mod journal;
mod lsn;
mod progress;
mod quote;
pub mod replicate;
mod reverse;
mod roles;
mod setup;
pub mod status;
pub mod switchover;
mod targets;
mod tools;
pub mod verify;

pub use check::{run_checks, CheckResult, CheckStatus};
pub use error::{pg_message, OrchestratorError};
pub use lsn::Lsn;
pub use progress::Progress;
pub use quote::{quote_ident, quote_literal};
pub use replicate::{aurora_start_lsn, parse_clone_log, replicate, CloneStart, ReplicateOptions};
pub use setup::suppress_ddl_capture;
pub use status::{replication_status, DatabaseStatus, Status};
pub use targets::{connect, Side, Targets};
pub use verify::{verify, VerifyOptions, VerifyReport};

/// Schema holding pgcutover's tables, on blue and green, in every replicated database.
pub const SCHEMA: &str = "pgcutover";
/// `pgcutover.sentinel (database text PRIMARY KEY, token bigint, written_at timestamptz)`:
/// one row per database, written on blue, replicated; the switchover bumps `token`.
pub const SENTINEL_TABLE: &str = "pgcutover.sentinel";
/// `pgcutover.ddl_log (id, at, event, command_tag, object_identity, command)`: DDL run
/// on blue since replication began, written by event triggers, replicated to green.
pub const DDL_LOG_TABLE: &str = "pgcutover.ddl_log";
/// `pgcutover.progress (side, step, done_at, detail)`: what `replicate` finished on
/// each side. Blue's rows replicate to green; green's rows are green's own.
pub const PROGRESS_TABLE: &str = "pgcutover.progress";
/// The publication on blue (per database, `FOR ALL TABLES`).
pub const PUBLICATION: &str = "pgcutover";
/// Prefix of the subscription (green) and slot (blue) names: `pgcutover_<database>`.
pub const SUBSCRIPTION_PREFIX: &str = "pgcutover_";
/// Prefix of the event triggers on blue (`pgcutover_ddl_command_end`, ...).
pub const EVENT_TRIGGER_PREFIX: &str = "pgcutover_";
/// Session setting that makes the DDL event triggers skip a session's DDL: pgcutover
/// sets it to `on` for its own DDL on blue (see [`suppress_ddl_capture`]).
pub const INTERNAL_GUC: &str = "pgcutover.internal";

/// The reverse publication on green (`FOR ALL TABLES`), for reverse replication.
pub const REVERSE_PUBLICATION: &str = "pgcutover_reverse";

/// The subscription name on green and slot name on blue for `database`:
/// `pgcutover_<database>`, lower-cased, characters other than `[a-z0-9_]` replaced by
/// `_` (slot names allow nothing else), cut to 63 bytes.
pub fn subscription_name(database: &str) -> String {
    let mut name = String::from(SUBSCRIPTION_PREFIX);
    for c in database.chars() {
        let c = c.to_ascii_lowercase();
        name.push(if c.is_ascii_lowercase() || c.is_ascii_digit() || c == '_' {
            c
        } else {
            '_'
        });
    }
    name.truncate(63);
    name
}

/// Blue's subscription to green (and green's slot) for `database`:
/// [`subscription_name`] with the prefix `pgcutover_reverse_`.
pub fn reverse_subscription_name(database: &str) -> String {
    let mut name = subscription_name(database).replacen(SUBSCRIPTION_PREFIX, "pgcutover_reverse_", 1);
    name.truncate(63);
    name
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn subscription_names_are_valid_slot_names() {
        assert_eq!(subscription_name("app"), "pgcutover_app");
        assert_eq!(subscription_name("My-DB.é"), "pgcutover_my_db__");
        assert_eq!(subscription_name(&"x".repeat(100)).len(), 63);
    }

    #[test]
    fn reverse_subscription_names_are_valid_slot_names() {
        assert_eq!(reverse_subscription_name("app"), "pgcutover_reverse_app");
        assert_eq!(reverse_subscription_name("My-DB"), "pgcutover_reverse_my_db");
        assert_eq!(reverse_subscription_name(&"x".repeat(100)).len(), 63);
    }
}
