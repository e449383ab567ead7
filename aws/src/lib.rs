//! pgcutover's AWS steps, through `aws-sdk-rds`: `prepare-green` makes green from
//! blue on Aurora PostgreSQL (parameter groups, the fast clone, its writer, the
//! major-version upgrade) or on RDS for PostgreSQL (a snapshot restore, the start
//! LSN from green's log) around the orchestrator's SQL steps, and `cleanup`
//! deletes what it made, by tag; [`managed`] drives AWS's own Blue/Green
//! deployment with every proxy holding clients across its switchover. Waits are
//! our own poll loop on a [`Clock`], so tests run them without sleeping.

#![warn(missing_docs)]

mod aurora;
mod cleanup;
mod client;
mod describe;
mod error;
mod instance;
pub mod managed;
mod params;
mod wait;

pub use aurora::{
    execute, plan, wait_available, BoxFuture, Database, Green, GroupScope, Plan, PrepareOptions, Step, RUN_TAG,
    SOURCE_TAG,
};
pub use cleanup::{delete, find, Deleted, Tagged};
pub use client::connect;
pub use error::AwsError;

pub use wait::{wait_until, Backoff, Clock, Poll, SystemClock};
