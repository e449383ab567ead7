//! The proxy with real command-line clients, the `pgcutover` binary itself
//! (config errors, signals), and PostgreSQL 17 behind it.

use crate::support::*;
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

fn pgcutover() -> Command {
    Command::new(env!("CARGO_BIN_EXE_pgcutover"))
}

#[tokio::test]
async fn psql_runs_queries_through_the_proxy() {
    let db = Db::pg15();
    let proxy = RunningProxy::start(db.default_config()).await;
    let port = proxy.addr.port().to_string();
    #[rustfmt::skip]
    let out = client_tool(pg_harness::psql_path(), PLAIN_PASSWORD, &[
        "-X", "-v", "ON_ERROR_STOP=1", "-At", "-h", "127.0.0.1", "-p", &port, "-U", PLAIN_USER, "-d", DB,
        "-c", "create table p (id serial primary key, v text)",
        "-c", "insert into p (v) select 'row ' || g from generate_series(1, 1000) g",
        "-c", "\\copy p (v) from program 'seq 1 500'",
        "-c", "select count(*), max(id) from p",
    ])
    .await;
    assert!(out.success, "psql failed: {}", out.output);
    assert_eq!(out.stdout.lines().last(), Some("1500|1500"), "{}", out.stdout);
}

#[tokio::test]
async fn pgbench_prepared_with_8_clients_has_no_failed_transactions() {
    let db = Db::pg15();
    let proxy = RunningProxy::start(db.default_config()).await;
    let port = proxy.addr.port().to_string();
    let conn = ["-h", "127.0.0.1", "-p", port.as_str(), "-U", PLAIN_USER];
    let init = client_tool(
        pg_harness::pgbench_path(),
        PLAIN_PASSWORD,
        &[&conn[..], &["-i", "-s", "1", "-q", DB]].concat(),
    )
    .await;
    assert!(init.success, "pgbench -i failed:\n{}", init.output);
    let bench = [
        &conn[..],
        &["-c", "8", "-j", "2", "-T", "10", "-M", "prepared", "-n", DB],
    ]
    .concat();
    let run = client_tool(pg_harness::pgbench_path(), PLAIN_PASSWORD, &bench).await;
    let report = run.output;
    assert!(run.success, "pgbench failed:\n{report}");
    assert!(report.contains("number of failed transactions: 0 "), "{report}");
    let processed = pgbench_processed(&report);
    assert!(processed > 100, "{report}");
    // Every transaction pgbench counted left its history row.
    let history: u64 = db
        .cluster
        .psql(DB, "select count(*) from pgbench_history")
        .unwrap()
        .parse()
        .unwrap();
    assert_eq!(history, processed);
}

#[tokio::test]
async fn bad_config_fails_at_start_naming_key_value_and_form() {
    let db = Db::pg15();
    let config = db.dir.write(
        "bad.toml",
        "[proxy]\nshutdown_timeout = \"soon\"\n[auth]\nauth_file = \"x\"\n[blue]\nurl = \"postgres://h/db\"\n",
    );
    let out = pgcutover().args(["proxy", "--config"]).arg(&config).output().unwrap();
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(!out.status.success());
    assert!(
        err.contains("shutdown_timeout") && err.contains("soon") && err.contains("30s"),
        "{err}"
    );

    let out = pgcutover()
        .args(["proxy", "--config"])
        .arg(db.dir.0.join("missing.toml"))
        .output()
        .unwrap();
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(!out.status.success());
    assert!(err.contains("missing.toml"), "{err}");

    // A missing auth_file is reported at start, not at the first login.
    let config = db.dir.write(
        "nofile.toml",
        "[auth]\nauth_file = \"nope.txt\"\n[blue]\nurl = \"postgres://h/db\"\n",
    );
    let out = pgcutover().args(["proxy", "--config"]).arg(&config).output().unwrap();
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(!out.status.success());
    assert!(err.contains("nope.txt"), "{err}");
}

#[tokio::test]
async fn sigterm_lets_transactions_finish_then_closes_everyone_with_57p01() {
    let db = Db::pg15();
    db.cluster.psql(DB, "create table ledger (id int primary key)").unwrap();
    db.cluster
        .psql(DB, &format!("grant all on ledger to {PLAIN_USER}"))
        .unwrap();
    let port = pg_harness::free_port();
    let config = db.dir.write(
        "proxy.toml",
        &format!(
            "[proxy]\nlisten = \"127.0.0.1:{port}\"\nshutdown_timeout = \"3s\"\nserver_tls_mode = \"disable\"\n[auth]\nauth_file = {:?}\n[blue]\nurl = \"postgres://postgres@127.0.0.1:{}/postgres\"\n",
            db.userlist(),
            db.cluster.port()
        ),
    );
    let log = std::fs::File::create(db.dir.0.join("proxy.log")).unwrap();
    // Started as systemd starts a Type=notify unit: it must say READY=1 once it
    // accepts clients, and STOPPING=1 when SIGTERM starts the drain.
    let notify_path = db.dir.0.join("notify.sock");
    let notify = std::os::unix::net::UnixDatagram::bind(&notify_path).unwrap();
    notify.set_read_timeout(Some(Duration::from_secs(20))).unwrap();
    let next_notification = || {
        let mut buf = [0u8; 512];
        let n = notify.recv(&mut buf).expect("a notification to NOTIFY_SOCKET");
        String::from_utf8_lossy(&buf[..n]).into_owned()
    };
    let mut child = pgcutover()
        .args(["proxy", "--config"])
        .arg(&config)
        .env("NOTIFY_SOCKET", &notify_path)
        .stderr(Stdio::from(log))
        .spawn()
        .unwrap();
    let conninfo =
        format!("host=127.0.0.1 port={port} user={PLAIN_USER} password={PLAIN_PASSWORD} dbname={DB} connect_timeout=5");
    let ready = next_notification();
    assert_eq!(ready, format!("READY=1\nSTATUS=serving on 127.0.0.1:{port}"));
    std::net::TcpStream::connect(("127.0.0.1", port)).expect("listening once it said READY=1");
    let open = || async {
        let (c, conn) = tokio_postgres::connect(&conninfo, tokio_postgres::NoTls).await.unwrap();
        (c, tokio::spawn(conn))
    };
    let (idle, idle_conn) = open().await;
    let (finisher, finisher_conn) = open().await;
    let (straggler, straggler_conn) = open().await;
    idle.simple_query("select 1").await.unwrap();
    finisher
        .batch_execute("begin; insert into ledger values (1)")
        .await
        .unwrap();
    straggler
        .batch_execute("begin; insert into ledger values (2)")
        .await
        .unwrap();

    let sent = Instant::now();
    assert!(Command::new("kill")
        .args(["-TERM", &child.id().to_string()])
        .status()
        .unwrap()
        .success());

    assert!(next_notification().starts_with("STOPPING=1\n"));
    // The idle session is closed at once with 57P01.
    let e = tokio::time::timeout(Duration::from_secs(2), idle_conn)
        .await
        .expect("idle session closed promptly")
        .unwrap()
        .unwrap_err();
    assert_eq!(sqlstate(&e), "57P01", "{e}");
    // No new connections.
    assert!(tokio_postgres::connect(&conninfo, tokio_postgres::NoTls).await.is_err());
    // A transaction in flight may still commit; the session closes right after.
    finisher
        .batch_execute("insert into ledger values (3); commit")
        .await
        .unwrap();
    let e = tokio::time::timeout(Duration::from_secs(2), finisher_conn)
        .await
        .unwrap()
        .unwrap()
        .unwrap_err();
    assert_eq!(sqlstate(&e), "57P01", "{e}");
    // The one that never finishes is closed when shutdown_timeout (3s) passes.
    let e = tokio::time::timeout(Duration::from_secs(10), straggler_conn)
        .await
        .unwrap()
        .unwrap()
        .unwrap_err();
    assert_eq!(sqlstate(&e), "57P01", "{e}");
    assert!(
        sent.elapsed() >= Duration::from_millis(2900),
        "straggler kept for shutdown_timeout"
    );
    drop(straggler);

    let status = tokio::task::spawn_blocking(move || child.wait().unwrap())
        .await
        .unwrap();
    assert!(status.success(), "proxy exit status {status}");
    assert!(sent.elapsed() < Duration::from_secs(10));
    assert_eq!(
        db.cluster
            .psql(DB, "select string_agg(id::text, ',' order by id) from ledger")
            .unwrap(),
        "1,3"
    );
}

#[tokio::test]
async fn postgresql_17_behind_the_proxy_with_scram_pass_through() {
    let db = Db::pg17();
    let proxy = RunningProxy::start(db.default_config()).await;
    let c = connect(&proxy.conninfo(SCRAM_USER, SCRAM_PASSWORD, DB)).await.unwrap();
    let v: String = c.query_one("show server_version", &[]).await.unwrap().get(0);
    assert!(v.starts_with("17"), "{v}");
    let c = connect(&proxy.conninfo(MD5_USER, MD5_PASSWORD, DB)).await;
    // md5 hash in the file, SCRAM asked of the client: refused like a wrong
    // password, as PostgreSQL does (the log says why).
    assert_eq!(sqlstate(&c.err().unwrap()), "28P01");
}
