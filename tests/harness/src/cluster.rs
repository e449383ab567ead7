//! A throwaway cluster: start, connect, query, stop and remove on drop.

use crate::*;

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
    pub(crate) bin: Binaries,
    pub(crate) who: Option<RunAs>,
    pub(crate) dir: PathBuf,
    pub(crate) data: PathBuf,
    pub(crate) port: u16,
    pub(crate) stopped: bool,
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
    // Two-phase commit is off by default; the switchover's guardrail against it is tested.
    ("max_prepared_transactions", "10"),
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

pub(crate) fn conf_value(v: &str) -> String {
    if v.starts_with('\'') {
        v.to_string()
    } else {
        format!("'{}'", v.replace('\\', "\\\\").replace('\'', "''"))
    }
}

pub(crate) fn conninfo_value(v: &str) -> String {
    if !v.is_empty() && !v.chars().any(|c| c.is_whitespace() || c == '\'' || c == '\\') {
        v.to_string()
    } else {
        format!("'{}'", v.replace('\\', "\\\\").replace('\'', "\\'"))
    }
}

pub(crate) fn url_encode(v: &str) -> String {
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

pub(crate) fn tail(text: &str, lines: usize) -> String {
    let all: Vec<&str> = text.lines().collect();
    all[all.len().saturating_sub(lines)..].join("\n")
}

pub(crate) static CLEANUP: Once = Once::new();

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
