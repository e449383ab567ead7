//! `[replication]`: what the orchestrator replicates from blue to green, and how.

use serde::Deserialize;
use std::path::PathBuf;

/// `[replication]`: what `pgcutover replicate` sets up from blue to green.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct ReplicationConfig {
    /// Databases to replicate; each gets its own publication, slot and subscription.
    /// Default: the database of `[blue] url` (or `postgres` when it names none).
    pub databases: Vec<String>,
    /// How green gets blue's existing data. Default `copy`.
    pub method: ReplicationMethod,
    /// libpq conninfo (`host=... port=... user=... password=...`) green's subscription
    /// uses to reach blue; `dbname=<database>` is appended per database. Default: built
    /// from `[blue] url`, password included.
    pub source_conninfo: Option<String>,
    /// Directory holding `pg_dump`, `pg_restore` and `psql` (at least blue's major
    /// version) for the copy method. Default: `PATH`, then `/usr/lib/postgresql/<N>/bin`.
    pub bindir: Option<PathBuf>,
}

impl Default for ReplicationConfig {
    fn default() -> Self {
        ReplicationConfig {
            databases: Vec::new(),
            method: ReplicationMethod::Copy,
            source_conninfo: None,
            bindir: None,
        }
    }
}

/// How green gets blue's existing data.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "kebab-case")]
pub enum ReplicationMethod {
    /// Copy roles and schema with pg_dump, then the data through the subscription
    /// (`copy_data = true`). For self-managed servers and any version pair.
    Copy,
    /// Green is a snapshot/clone of blue made after `replicate --prepare-clone`; the
    /// subscription starts at the clone's start LSN (`copy_data = false`).
    Clone,
}
