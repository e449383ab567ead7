//! Shared set-up for the end-to-end tests: a PostgreSQL cluster with the test roles,
//! an auth_file made from their real stored secrets, and a proxy running in-process.

use pg_harness::{Binaries, Cluster, ClusterOptions};
use pgcutover_config::Config;
use pgcutover_proxy::Proxy;
use std::net::SocketAddr;
use std::path::PathBuf;
use std::time::Duration;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::sync::oneshot;

/// A role whose password is stored as a SCRAM verifier.
pub const SCRAM_USER: &str = "app_scram";
/// Its password.
pub const SCRAM_PASSWORD: &str = "scram secret é";
/// A role whose password is stored as an md5 hash (and whose pg_hba method is md5).
pub const MD5_USER: &str = "app_md5";
/// Its password.
pub const MD5_PASSWORD: &str = "md5-secret";
/// A role whose secret is in auth_file in plain text.
pub const PLAIN_USER: &str = "app_plain";
/// Its password.
pub const PLAIN_PASSWORD: &str = "plain-secret";
/// A role known only to the database (for auth_query).
pub const QUERY_USER: &str = "app_query";
/// Its password.
pub const QUERY_PASSWORD: &str = "query-secret";
/// The test database.
pub const DB: &str = "app";
/// The admin token in configs made by `config_with_green`.
pub const ADMIN_TOKEN: &str = "test-admin-token-0123456789";

/// [`ADMIN_TOKEN`] as the orchestrator presents it.
pub fn admin_token() -> Option<pgcutover_config::AdminToken> {
    pgcutover_config::AdminToken::new(ADMIN_TOKEN)
}

/// A cluster with the test roles and database, and a scratch directory for files.
pub struct Db {
    pub cluster: Cluster,
    pub dir: Scratch,
}

/// A directory removed on drop.
pub struct Scratch(pub PathBuf);

impl Drop for Scratch {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.0);
    }
}

impl Scratch {
    pub fn new() -> Scratch {
        static N: std::sync::atomic::AtomicU32 = std::sync::atomic::AtomicU32::new(0);
        let p = std::env::temp_dir().join(format!(
            "pgcutover-e2e-{}-{}",
            std::process::id(),
            N.fetch_add(1, std::sync::atomic::Ordering::Relaxed)
        ));
        std::fs::create_dir_all(&p).unwrap();
        Scratch(p)
    }

    pub fn write(&self, name: &str, content: &str) -> PathBuf {
        let p = self.0.join(name);
        std::fs::write(&p, content).unwrap();
        p
    }
}

impl Db {
    /// PostgreSQL 15 with the test roles.
    pub fn pg15() -> Db {
        Db::start(&Binaries::pg15().expect("PostgreSQL 15 binaries (run scripts/setup.sh)"))
    }

    /// PostgreSQL 17 with the test roles.
    pub fn pg17() -> Db {
        Db::start(&Binaries::pg17().expect("PostgreSQL 17 binaries (run scripts/setup.sh)"))
    }

    /// PostgreSQL 17 with the test roles and extra postgresql.conf `settings`.
    pub fn pg17_with(settings: &[(&str, &str)]) -> Db {
        Db::start_with(
            &Binaries::pg17().expect("PostgreSQL 17 binaries (run scripts/setup.sh)"),
            settings,
        )
    }

    /// PostgreSQL 18 with the test roles, the plain user on `trust` so that raw
    /// sockets can log in directly and be compared with the proxy byte for byte.
    pub fn pg18() -> Db {
        let bin = Binaries::pg18().expect("PostgreSQL 18 binaries (run scripts/setup.sh)");
        Db::start_with_hba(&bin, &[], &[format!("host all {PLAIN_USER} 127.0.0.1/32 trust")])
    }

    fn start(bin: &Binaries) -> Db {
        Db::start_with(bin, &[])
    }

    fn start_with(bin: &Binaries, settings: &[(&str, &str)]) -> Db {
        Db::start_with_hba(bin, settings, &[])
    }

    fn start_with_hba(bin: &Binaries, settings: &[(&str, &str)], hba: &[String]) -> Db {
        let mut options = ClusterOptions {
            hba_prepend: [hba, &[format!("host all {MD5_USER} 127.0.0.1/32 md5")]].concat(),
            ..Default::default()
        };
        for (k, v) in settings {
            options = options.setting(*k, *v);
        }
        let cluster = Cluster::start_with(bin, options).expect("cluster starts");
        let sql = format!(
            "set password_encryption = 'scram-sha-256';
             create role {SCRAM_USER} login password '{SCRAM_PASSWORD}';
             create role {PLAIN_USER} login password '{PLAIN_PASSWORD}';
             create role {QUERY_USER} login password '{QUERY_PASSWORD}';
             set password_encryption = 'md5';
             create role {MD5_USER} login password '{MD5_PASSWORD}';
             create database {DB};
             grant all on database {DB} to public;"
        );
        cluster.psql("postgres", &sql).expect("test roles");
        cluster
            .psql(DB, "grant all on schema public to public")
            .expect("schema grant");
        Db {
            cluster,
            dir: Scratch::new(),
        }
    }

    /// The secret PostgreSQL stores for `role`.
    pub fn stored_secret(&self, role: &str) -> String {
        self.cluster
            .psql(
                "postgres",
                &format!("select rolpassword from pg_authid where rolname = '{role}'"),
            )
            .unwrap()
    }

    /// A userlist with the SCRAM user's verifier, the md5 user's hash, the plain user's password
    /// and the superuser's password, written to the scratch dir.
    pub fn userlist(&self) -> PathBuf {
        let text = format!(
            "\"{SCRAM_USER}\" \"{}\"\n\"{MD5_USER}\" \"{}\"\n\"{PLAIN_USER}\" \"{PLAIN_PASSWORD}\"\n\"{}\" \"{}\"\n",
            self.stored_secret(SCRAM_USER),
            self.stored_secret(MD5_USER),
            pg_harness::SUPERUSER,
            pg_harness::SUPERUSER_PASSWORD,
        );
        self.dir.write("userlist.txt", &text)
    }

    /// A config for a proxy in front of this cluster on a free port, with `extra`
    /// TOML lines added to `[proxy]` and `auth` lines as the `[auth]` section.
    pub fn config(&self, proxy_extra: &str, auth: &str) -> Config {
        self.config_text(proxy_extra, auth, "")
    }

    fn config_text(&self, proxy_extra: &str, auth: &str, rest: &str) -> Config {
        let text = format!(
            "[proxy]\nlisten = \"127.0.0.1:0\"\nadmin_listen = \"127.0.0.1:0\"\nserver_tls_mode = \"disable\"\n{proxy_extra}\n[auth]\n{auth}\n[blue]\nurl = \"postgres://{}@127.0.0.1:{}/postgres\"\n{rest}",
            pg_harness::SUPERUSER,
            self.cluster.port()
        );
        Config::from_toml(&text, "test config", &self.dir.0, std::iter::empty()).expect("valid test config")
    }

    /// A config routing to this cluster as blue and `green` as green, with an admin
    /// token, the full userlist, and `switchover` lines as the `[switchover]` section.
    pub fn config_with_green(&self, green: &Db, switchover: &str) -> Config {
        let token = self.dir.write("admin.token", ADMIN_TOKEN);
        self.config_text(
            &format!("admin_token_file = {token:?}"),
            &format!("auth_file = {:?}", self.userlist()),
            &format!(
                "[green]\nurl = \"postgres://{}@127.0.0.1:{}/postgres\"\n[switchover]\n{switchover}\n",
                pg_harness::SUPERUSER,
                green.cluster.port()
            ),
        )
    }

    /// Gives this cluster's test roles the exact secrets `blue` stores, as the
    /// orchestrator does when it copies roles: SCRAM pass-through needs identical verifiers.
    pub fn copy_role_secrets_from(&self, blue: &Db) {
        for role in [SCRAM_USER, MD5_USER, PLAIN_USER, QUERY_USER] {
            let secret = blue.stored_secret(role);
            self.cluster
                .psql("postgres", &format!("alter role {role} password '{secret}'"))
                .unwrap();
        }
    }

    /// A config for a switchover from this cluster (blue) to `green`: admin URLs with
    /// passwords (green's subscription logs into blue with them), [replication] of the
    /// test database, an admin token, the full userlist, and `switchover` lines.
    pub fn config_for_switchover(&self, green: &Db, switchover: &str) -> Config {
        let text = self.switchover_config_text(green, "127.0.0.1:0", "127.0.0.1:0", switchover);
        Config::from_toml(&text, "test config", &self.dir.0, std::iter::empty()).expect("valid test config")
    }

    /// The TOML of [`config_for_switchover`](Self::config_for_switchover), with the
    /// proxy's addresses given (a proxy run as a separate process needs real ports).
    pub fn switchover_config_text(&self, green: &Db, listen: &str, admin: &str, switchover: &str) -> String {
        let token = self.dir.write("admin.token", ADMIN_TOKEN);
        let url = |db: &Db| {
            db.cluster
                .url(pg_harness::SUPERUSER, pg_harness::SUPERUSER_PASSWORD, DB)
        };
        format!(
            "[proxy]\nlisten = \"{listen}\"\nadmin_listen = \"{admin}\"\nserver_tls_mode = \"disable\"\nadmin_token_file = {token:?}\n[auth]\nauth_file = {:?}\n[blue]\nurl = \"{}\"\n[green]\nurl = \"{}\"\n[replication]\ndatabases = [\"{DB}\"]\n[switchover]\n{switchover}\n",
            self.userlist(),
            url(self),
            url(green)
        )
    }

    /// Writes `name`, the config of a proxy process listening on `listen` with its
    /// admin API on `admin` (ports on 127.0.0.1), switching to `green`.
    pub fn proxy_config_file(&self, green: &Db, name: &str, listen: u16, admin: u16, switchover: &str) -> PathBuf {
        let text = self.switchover_config_text(
            green,
            &format!("127.0.0.1:{listen}"),
            &format!("127.0.0.1:{admin}"),
            switchover,
        );
        self.dir.write(name, &text)
    }

    /// Runs the same SQL on this cluster's test database.
    pub fn sql(&self, sql: &str) -> String {
        self.cluster.psql(DB, sql).unwrap()
    }

    /// The default config: SCRAM clients, the full userlist.
    pub fn default_config(&self) -> Config {
        self.config("", &format!("auth_file = {:?}", self.userlist()))
    }

    /// The default config with the admin token, so mutating admin calls work.
    pub fn default_config_with_token(&self) -> Config {
        let token = self.dir.write("admin.token", ADMIN_TOKEN);
        self.config(
            &format!("admin_token_file = {token:?}"),
            &format!("auth_file = {:?}", self.userlist()),
        )
    }
}

/// A proxy running on the test's runtime; shut down (gracefully) on drop.
pub struct RunningProxy {
    pub addr: SocketAddr,
    pub admin: SocketAddr,
    pub control: std::sync::Arc<pgcutover_proxy::control::Control>,
    stop: Option<oneshot::Sender<()>>,
}

impl RunningProxy {
    pub async fn start(config: Config) -> RunningProxy {
        // Proxy logs show with a failing test's output; RUST_LOG picks the level.
        let _ = tracing_subscriber::fmt()
            .with_env_filter(
                tracing_subscriber::EnvFilter::try_from_default_env()
                    .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new("info")),
            )
            .with_test_writer()
            .try_init();
        let proxy = Proxy::bind(config).await.expect("proxy binds");
        let addr = proxy.local_addr();
        let admin = proxy.admin_addr();
        let control = proxy.control();
        let (stop, stopped) = oneshot::channel();
        tokio::spawn(proxy.run(async {
            let _ = stopped.await;
        }));
        RunningProxy {
            addr,
            admin,
            control,
            stop: Some(stop),
        }
    }

    /// A tokio-postgres conninfo string to reach `db` through the proxy.
    pub fn conninfo(&self, user: &str, password: &str, db: &str) -> String {
        format!(
            "host=127.0.0.1 port={} user={user} password='{}' dbname={db} connect_timeout=10",
            self.addr.port(),
            password.replace('\'', "\\'")
        )
    }
}

impl RunningProxy {
    /// Starts its graceful shutdown, as SIGTERM does to the binary.
    pub fn shut_down(&mut self) {
        if let Some(s) = self.stop.take() {
            let _ = s.send(());
        }
    }

    /// A mutating admin call with the test token (configs from `config_with_green`).
    pub async fn post(&self, path: &str, body: &str) -> (u16, serde_json::Value) {
        http(self.admin, "POST", path, Some(ADMIN_TOKEN), body).await
    }
}

impl Drop for RunningProxy {
    fn drop(&mut self) {
        if let Some(s) = self.stop.take() {
            let _ = s.send(());
        }
    }
}

/// Connects with tokio-postgres (no TLS) and drives the connection in the background.
pub async fn connect(conninfo: &str) -> Result<tokio_postgres::Client, tokio_postgres::Error> {
    let (client, conn) = tokio_postgres::connect(conninfo, tokio_postgres::NoTls).await?;
    tokio::spawn(async move {
        let _ = conn.await;
    });
    Ok(client)
}

/// The SQLSTATE of a failed connect or query.
pub fn sqlstate(e: &tokio_postgres::Error) -> String {
    e.as_db_error()
        .map(|d| d.code().code().to_owned())
        .unwrap_or_else(|| format!("no SQLSTATE: {e}"))
}

/// Waits for `cond` with a deadline instead of sleeping a fixed time.
pub async fn wait_for<F: FnMut() -> bool>(what: &str, limit: Duration, mut cond: F) {
    let deadline = tokio::time::Instant::now() + limit;
    while !cond() {
        assert!(tokio::time::Instant::now() < deadline, "timed out waiting for {what}");
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

/// Logs in over a raw socket (the proxy must use trust) and returns at ReadyForQuery.
pub async fn raw_login(proxy: &RunningProxy) -> tokio::net::TcpStream {
    let mut s = tokio::net::TcpStream::connect(proxy.addr).await.unwrap();
    let mut p = bytes::BytesMut::new();
    pgcutover_protocol::startup::encode_startup([("user", PLAIN_USER), ("database", DB)], &mut p);
    s.write_all(&p).await.unwrap();
    let mut buf = bytes::BytesMut::new();
    loop {
        s.read_buf(&mut buf).await.unwrap();
        while let Some(f) = pgcutover_protocol::frame::decode_frame(&mut buf, 1 << 20).unwrap() {
            assert_ne!(f.tag, b'E', "login failed");
            if f.tag == b'Z' {
                return s;
            }
        }
    }
}

/// Reads everything until the peer closes (bounded) and returns the SQLSTATE of every
/// ErrorResponse in it, in order.
pub async fn errors_until_close(mut s: tokio::net::TcpStream) -> Vec<String> {
    let mut buf = bytes::BytesMut::new();
    tokio::time::timeout(Duration::from_secs(10), async {
        loop {
            match s.read_buf(&mut buf).await {
                Ok(0) | Err(_) => break,
                Ok(_) => {}
            }
        }
    })
    .await
    .expect("the connection is closed");
    let mut codes = Vec::new();
    while let Ok(Some(f)) = pgcutover_protocol::frame::decode_frame(&mut buf, 1 << 20) {
        if f.tag == b'E' {
            codes.push(
                pgcutover_protocol::backend::ErrorFields::new(&f.body)
                    .code()
                    .unwrap_or("none")
                    .to_owned(),
            );
        }
    }
    codes
}

/// One HTTP/1.1 request to the admin API; returns the status code and the JSON body.
pub async fn http(
    addr: SocketAddr,
    method: &str,
    path: &str,
    token: Option<&str>,
    body: &str,
) -> (u16, serde_json::Value) {
    let (code, text) = http_text(addr, method, path, token, body).await;
    (code, serde_json::from_str(&text).unwrap_or(serde_json::Value::Null))
}

/// One HTTP/1.1 request to the admin API; returns the status code and the body text.
pub async fn http_text(addr: SocketAddr, method: &str, path: &str, token: Option<&str>, body: &str) -> (u16, String) {
    let mut s = tokio::net::TcpStream::connect(addr).await.unwrap();
    let auth = token
        .map(|t| format!("Authorization: Bearer {t}\r\n"))
        .unwrap_or_default();
    let req = format!(
        "{method} {path} HTTP/1.1\r\nHost: admin\r\n{auth}Content-Type: application/json\r\nContent-Length: {}\r\nConnection: close\r\n\r\n{body}",
        body.len()
    );
    s.write_all(req.as_bytes()).await.unwrap();
    let mut out = Vec::new();
    tokio::time::timeout(Duration::from_secs(60), s.read_to_end(&mut out))
        .await
        .expect("admin API answers")
        .unwrap();
    let text = String::from_utf8_lossy(&out);
    let code: u16 = text
        .split(' ')
        .nth(1)
        .and_then(|c| c.parse().ok())
        .expect("status line");
    let body = text.split_once("\r\n\r\n").map(|(_, b)| b).unwrap_or("");
    (code, body.to_owned())
}

/// Connects with tokio-postgres and forwards notifications to a channel.
pub async fn connect_listening(
    conninfo: &str,
) -> (
    tokio_postgres::Client,
    tokio::sync::mpsc::UnboundedReceiver<(String, String, i32)>,
    tokio::task::JoinHandle<Result<(), tokio_postgres::Error>>,
) {
    use futures_util::StreamExt;
    let (client, mut conn) = tokio_postgres::connect(conninfo, tokio_postgres::NoTls).await.unwrap();
    let (tx, rx) = tokio::sync::mpsc::unbounded_channel();
    let task = tokio::spawn(async move {
        let mut messages = futures_util::stream::poll_fn(move |cx| conn.poll_message(cx));
        while let Some(m) = messages.next().await {
            if let tokio_postgres::AsyncMessage::Notification(n) = m? {
                let _ = tx.send((n.channel().to_owned(), n.payload().to_owned(), n.process_id()));
            }
        }
        Ok(())
    });
    (client, rx, task)
}

/// What a client tool printed.
pub struct ToolRun {
    /// It exited 0.
    pub success: bool,
    /// Its standard output.
    pub stdout: String,
    /// Standard output then standard error, for assertions and failure messages.
    pub output: String,
}

/// Runs psql or pgbench with `password`, off the runtime thread (which also runs the
/// in-process proxy, so a blocking call there would stall the proxy).
pub async fn client_tool(program: std::path::PathBuf, password: &str, args: &[&str]) -> ToolRun {
    let args: Vec<String> = args.iter().map(|a| a.to_string()).collect();
    let password = password.to_owned();
    let out = tokio::task::spawn_blocking(move || {
        std::process::Command::new(program)
            .args(args)
            .env("PGPASSWORD", password)
            .output()
            .expect("client tool runs")
    })
    .await
    .unwrap();
    let stdout = String::from_utf8_lossy(&out.stdout).into_owned();
    ToolRun {
        success: out.status.success(),
        output: format!("{stdout}{}", String::from_utf8_lossy(&out.stderr)),
        stdout,
    }
}

/// The "transactions actually processed" count from a pgbench report.
pub fn pgbench_processed(report: &str) -> u64 {
    report
        .lines()
        .find_map(|l| l.strip_prefix("number of transactions actually processed: "))
        .and_then(|v| v.split('/').next())
        .and_then(|v| v.trim().parse().ok())
        .unwrap_or_else(|| panic!("no transaction count in:\n{report}"))
}

/// A conninfo for the SCRAM test user through a proxy listening on `port`.
pub fn scram_conninfo(port: u16) -> String {
    format!(
        "host=127.0.0.1 port={port} user={SCRAM_USER} password='{}' dbname={DB} connect_timeout=10",
        SCRAM_PASSWORD.replace('\'', "\\'")
    )
}

/// Whether the tests run as root (namespaces of their own need it).
pub fn is_root() -> bool {
    std::process::Command::new("id")
        .arg("-u")
        .output()
        .is_ok_and(|o| o.stdout.starts_with(b"0\n"))
}

/// Runs this binary's ignored test `test` again in namespaces of its own
/// (`unshare <namespaces>`), with `flag=1` in its environment so that it knows it
/// is inside; asserts that it ran and passed, and shows its output.
pub fn run_in_namespaces(namespaces: &[&str], test: &str, flag: &str) {
    let out = std::process::Command::new("unshare")
        .args(namespaces)
        .arg(std::env::current_exe().unwrap())
        .args([test, "--exact", "--ignored", "--nocapture"])
        .env(flag, "1")
        .output()
        .expect("unshare (util-linux) runs");
    let log = format!(
        "{}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    eprintln!("{log}");
    assert!(out.status.success(), "{test} in its namespaces failed:\n{log}");
    assert!(log.contains("1 passed"), "{test} did not run:\n{log}");
}
