//! `pgcutover replicate`: sets up blue → green logical replication, idempotently.
//! Re-running continues where a previous run stopped: every step either checks the
//! catalogs for what exists or is recorded in `pgcutover.progress` in the same
//! transaction as its effect.
//!
//! `copy` builds green from blue's schema and an initial copy; `clone` attaches to
//! a green that is a clone of blue. Both create the subscription through
//! `subscription`.

mod clone;
mod copy;
mod subscription;

use crate::check::{preflight, Scope};
use crate::error::OrchestratorError;
use crate::lsn::Lsn;
use crate::progress::Progress;
use crate::targets::Targets;
use pgcutover_config::ReplicationMethod;
use std::path::PathBuf;
use std::time::Instant;

pub use clone::{aurora_start_lsn, parse_clone_log, CloneStart};
pub(crate) use subscription::state_name;

/// What `replicate` was asked to do.
#[derive(Debug, Clone, Default)]
pub struct ReplicateOptions {
    /// Clone method, first half: create the publication and slot on blue and stop.
    pub prepare_clone: bool,
    /// Clone method: the clone's first start-up log, to find the start LSN in.
    pub clone_log: Option<PathBuf>,
    /// Clone method: the start LSN when neither Aurora nor the log gives it.
    pub start_lsn: Option<Lsn>,
    /// Return once the subscription exists instead of waiting for the initial copy.
    pub no_wait: bool,
}

/// Runs `replicate` for every configured database.
pub async fn replicate(
    targets: &Targets,
    opts: &ReplicateOptions,
    progress: &Progress,
) -> Result<(), OrchestratorError> {
    let t = Instant::now();
    if opts.prepare_clone {
        preflight(targets, Scope::PrepareClone).await?;
        progress.done(t, "preflight checks passed");
        return clone::prepare(targets, progress).await;
    }
    preflight(targets, Scope::Replicate).await?;
    progress.done(t, "preflight checks passed");
    match targets.method {
        ReplicationMethod::Copy => copy::copy(targets, opts, progress).await,
        ReplicationMethod::Clone => clone::attach(targets, opts, progress).await,
    }
}
