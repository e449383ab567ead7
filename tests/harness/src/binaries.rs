//! Finding the PostgreSQL 15, 17 and 18 binaries, psql and pgbench.

use crate::*;

/// A set of PostgreSQL server binaries (`initdb`, `pg_ctl`, `postgres`) of one major version.
#[derive(Debug, Clone)]
pub struct Binaries {
    pub(crate) bindir: PathBuf,
    pub(crate) major: u32,
    pub(crate) version: String,
    pub(crate) env: Vec<(String, String)>,
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

    /// PostgreSQL 18: `$PG18_BINDIR`, else `<cache_dir()>/pg18/bin` as installed by
    /// `scripts/setup.sh`. The protocol 3.2 tests compare the proxy with it.
    pub fn pg18() -> Result<Binaries, HarnessError> {
        if let Some(dir) = env_nonempty("PG18_BINDIR") {
            return Binaries::expect_major(PathBuf::from(dir), 18, "PG18_BINDIR");
        }
        Binaries::expect_major(cache_dir().join("pg18").join("bin"), 18, "the setup.sh cache dir")
    }

    /// The directory of the libraries these binaries run with (`../lib`), where
    /// PostgreSQL 18's holds libpq 18: with it on `LD_LIBRARY_PATH`, 15's `psql`
    /// becomes a client that can ask for protocol 3.2.
    pub fn libdir(&self) -> PathBuf {
        self.bindir.join("..").join("lib")
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

pub(crate) fn parse_major(version: &str) -> Option<u32> {
    // "postgres (PostgreSQL) 15.18 (Debian 15.18-0+deb12u1)" / "PostgreSQL 17.10"
    let rest = version.split("PostgreSQL").nth(1)?;
    let rest = rest.trim_start_matches(|c: char| c == ')' || c.is_whitespace());
    let digits: String = rest.chars().take_while(|c| c.is_ascii_digit()).collect();
    digits.parse().ok()
}

pub(crate) fn pg_config_bindir(major: u32) -> Option<PathBuf> {
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

pub(crate) fn env_nonempty(key: &str) -> Option<String> {
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

pub(crate) fn pg17_default_bindir() -> PathBuf {
    cache_dir().join("pg17").join("bin")
}

pub(crate) fn pg15_bindir_guess() -> PathBuf {
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
