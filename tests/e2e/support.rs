//! Shared set-up for the end-to-end tests: a PostgreSQL cluster with the test roles,
//! an auth_file made from their real stored secrets, and a proxy running in-process.

use pg_harness::{Binaries, Cluster, ClusterOptions};
use pgcutover_proxy::config::Config;
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

    fn start(bin: &Binaries) -> Db {
        let cluster = Cluster::start_with(
            bin,
            ClusterOptions {
                hba_prepend: vec![format!("host all {MD5_USER} 127.0.0.1/32 md5")],
                ..Default::default()
            },
        )
        .expect("cluster starts");
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
        let text = format!(
            "[proxy]\nlisten = \"127.0.0.1:0\"\nserver_tls_mode = \"disable\"\n{proxy_extra}\n[auth]\n{auth}\n[blue]\nurl = \"postgres://{}@127.0.0.1:{}/postgres\"\n",
            pg_harness::SUPERUSER,
            self.cluster.port()
        );
        Config::from_toml(&text, "test config", &self.dir.0, std::iter::empty()).expect("valid test config")
    }

    /// The default config: SCRAM clients, the full userlist.
    pub fn default_config(&self) -> Config {
        self.config("", &format!("auth_file = {:?}", self.userlist()))
    }
}

/// A proxy running on the test's runtime; shut down (gracefully) on drop.
pub struct RunningProxy {
    pub addr: SocketAddr,
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
        let (stop, stopped) = oneshot::channel();
        tokio::spawn(proxy.run(async {
            let _ = stopped.await;
        }));
        RunningProxy { addr, stop: Some(stop) }
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
