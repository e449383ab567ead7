//! Server-connection reuse (`pool_mode = "session"`, the default): a client that
//! leaves at a transaction boundary leaves its backend, reset, to the next client
//! with the same user, database and startup parameters, and nothing of the first
//! client's session shows through; the pool moves with a switchover.

use crate::support::*;
use crate::switchover::{replicated, run_switchover};
use pgcutover_api::ProxyControl;
use pgcutover_orchestrator::switchover::{Direction, Outcome};
use pgcutover_proxy::local::LocalProxy;
use std::sync::Arc;
use std::time::Duration;

async fn backend_pid(c: &tokio_postgres::Client) -> i32 {
    c.query_one("select pg_backend_pid()", &[]).await.unwrap().get(0)
}

/// Connects, reads its backend pid, lets `with` use the session, and closes it
/// cleanly (Terminate); returns the pid once the proxy has had time to pool it.
async fn session_then_close<F, Fut>(conninfo: &str, with: F) -> i32
where
    F: FnOnce(tokio_postgres::Client) -> Fut,
    Fut: std::future::Future<Output = ()>,
{
    let c = connect(conninfo).await.unwrap();
    let pid = backend_pid(&c).await;
    with(c).await;
    // The reset (DISCARD ALL) runs after the client is gone.
    tokio::time::sleep(Duration::from_millis(300)).await;
    pid
}

#[tokio::test]
async fn a_leaving_clients_backend_serves_the_next_client_with_nothing_of_its_session_left() {
    let db = Db::pg15();
    let proxy = RunningProxy::start(db.default_config_with_token()).await;
    let conninfo = proxy.conninfo(SCRAM_USER, SCRAM_PASSWORD, DB);
    let first = session_then_close(&conninfo, |c| async move {
        c.batch_execute(
            "SET work_mem = '7MB'; SET application_name = 'first';
             PREPARE mine AS SELECT 1; CREATE TEMP TABLE scratch (x int);
             LISTEN first_channel; SELECT pg_advisory_lock(42);
             DECLARE held CURSOR WITH HOLD FOR SELECT 1",
        )
        .await
        .unwrap();
        let _named = c.prepare("select $1::int").await.unwrap();
        drop(c);
    })
    .await;

    // The idle backend is still the proxy's: the fence spares the pids /status lists.
    let (code, status) = http(proxy.admin, "GET", "/status", Some(ADMIN_TOKEN), "").await;
    assert_eq!(code, 200, "{status}");
    assert_eq!(status["server_pids"]["blue"], serde_json::json!([first]), "{status}");
    let c = connect(&conninfo).await.unwrap();
    assert_eq!(
        backend_pid(&c).await,
        first,
        "the second client did not get the pooled backend"
    );
    let row = c
        .query_one(
            "select current_setting('work_mem'), current_setting('application_name'),
                    (select count(*) from pg_prepared_statements),
                    (select count(*) from pg_class where relpersistence = 't'),
                    (select count(*) from pg_listening_channels()),
                    (select count(*) from pg_locks where locktype = 'advisory' and pid = pg_backend_pid()),
                    (select count(*) from pg_cursors where name = 'held')",
            &[],
        )
        .await
        .unwrap();
    let work_mem: String = row.get(0);
    let application_name: String = row.get(1);
    let counts: Vec<i64> = (2..7).map(|i| row.get(i)).collect();
    assert_eq!(work_mem, db.sql("show work_mem"), "a setting survived the reset");
    assert_eq!(application_name, "", "application_name survived the reset");
    // The count query itself is the one prepared statement (tokio-postgres names it).
    assert_eq!(
        counts,
        [1, 0, 0, 0, 0],
        "prepared, temp tables, channels, advisory locks, cursors"
    );

    // The client is told the pid it talks to, and a cancel reaches its backend.
    let cancel = c.cancel_token();
    let sleeper = tokio::spawn(async move { c.simple_query("select pg_sleep(20)").await });
    tokio::time::sleep(Duration::from_millis(300)).await;
    cancel.cancel_query(tokio_postgres::NoTls).await.unwrap();
    let cancelled = tokio::time::timeout(Duration::from_secs(5), sleeper)
        .await
        .expect("the cancel reached the pooled backend")
        .unwrap()
        .unwrap_err();
    assert_eq!(sqlstate(&cancelled), "57014", "{cancelled}");

    let (code, metrics) = http_text(proxy.admin, "GET", "/metrics", None, "").await;
    assert_eq!(code, 200);
    assert!(
        metrics.contains("pgcutover_server_logins_total{how=\"reused\"} 1"),
        "{metrics}"
    );
}

#[tokio::test]
async fn only_a_backend_left_at_a_boundary_with_the_same_startup_parameters_is_reused() {
    let db = Db::pg15();
    let proxy = RunningProxy::start(db.default_config()).await;
    let conninfo = proxy.conninfo(SCRAM_USER, SCRAM_PASSWORD, DB);

    // Other startup parameters: another pool.
    let plain = session_then_close(&conninfo, |c| async move { drop(c) }).await;
    let other = connect(&format!("{conninfo} application_name=other")).await.unwrap();
    assert_ne!(
        backend_pid(&other).await,
        plain,
        "a backend started with other parameters was reused"
    );
    let row = other.query_one("show application_name", &[]).await.unwrap();
    assert_eq!(row.get::<_, String>(0), "other");
    drop(other);

    // A client gone inside a transaction: its backend is ended, never reused.
    let c = connect(&conninfo).await.unwrap();
    assert_eq!(backend_pid(&c).await, plain, "the idle pooled backend was not reused");
    c.batch_execute("BEGIN; SELECT 1").await.unwrap();
    let in_tx = plain;
    drop(c);
    wait_for(
        "the backend left inside a transaction to end",
        Duration::from_secs(10),
        || db.sql(&format!("select count(*) from pg_stat_activity where pid = {in_tx}")) == "0",
    )
    .await;
    let next = connect(&conninfo).await.unwrap();
    assert_ne!(backend_pid(&next).await, in_tx);
    next.batch_execute("SELECT 1").await.unwrap();
}

#[tokio::test]
async fn pool_mode_off_and_server_idle_timeout_close_backends() {
    let db = Db::pg15();
    let off = RunningProxy::start(db.config("pool_mode = \"off\"", &format!("auth_file = {:?}", db.userlist()))).await;
    let conninfo = off.conninfo(SCRAM_USER, SCRAM_PASSWORD, DB);
    let first = session_then_close(&conninfo, |c| async move { drop(c) }).await;
    wait_for(
        "the closed client's backend to end (pool_mode = off)",
        Duration::from_secs(10),
        || db.sql(&format!("select count(*) from pg_stat_activity where pid = {first}")) == "0",
    )
    .await;

    let timed = RunningProxy::start(db.config(
        "server_idle_timeout = \"1s\"",
        &format!("auth_file = {:?}", db.userlist()),
    ))
    .await;
    let conninfo = timed.conninfo(SCRAM_USER, SCRAM_PASSWORD, DB);
    let pooled = session_then_close(&conninfo, |c| async move { drop(c) }).await;
    assert_eq!(
        db.sql(&format!("select state from pg_stat_activity where pid = {pooled}")),
        "idle",
        "the pooled backend is kept, idle"
    );
    wait_for(
        "the idle pooled backend to be closed after 1 s",
        Duration::from_secs(10),
        || db.sql(&format!("select count(*) from pg_stat_activity where pid = {pooled}")) == "0",
    )
    .await;
    let c = connect(&conninfo).await.unwrap();
    assert_ne!(backend_pid(&c).await, pooled);
}

#[tokio::test]
async fn a_pooled_backend_ended_while_idle_is_not_handed_out() {
    let db = Db::pg15();
    let proxy = RunningProxy::start(db.default_config()).await;
    let conninfo = proxy.conninfo(SCRAM_USER, SCRAM_PASSWORD, DB);
    let pooled = session_then_close(&conninfo, |c| async move { drop(c) }).await;
    assert_eq!(db.sql(&format!("select pg_terminate_backend({pooled})")), "t");
    tokio::time::sleep(Duration::from_millis(200)).await;
    let c = connect(&conninfo).await.unwrap();
    assert_ne!(backend_pid(&c).await, pooled);
    let row = c.query_one("select 1", &[]).await.unwrap();
    assert_eq!(row.get::<_, i32>(0), 1);
}

/// pgbench opening a new connection for every transaction (`-C`), so nearly every
/// one runs on a pooled backend, through a whole switchover: no failed transaction,
/// every committed one on green, and no pooled backend left on blue. Two clients
/// per pgbench thread: pgbench connects synchronously, so a client arriving during
/// the hold must get in (on a pooled backend), or its thread's other client,
/// mid-transaction, never finishes and the drain fails.
#[tokio::test]
async fn a_switchover_under_pgbench_reconnecting_per_transaction_fails_nothing_and_empties_blues_pool() {
    let (blue, green, config, targets) = replicated(false, "").await;
    let proxy = RunningProxy::start(config.clone()).await;
    let port = proxy.addr.port().to_string();
    let bench = tokio::spawn(async move {
        #[rustfmt::skip]
        let args = [
            "-n", "-C", "-c", "4", "-j", "2", "-T", "8",
            "-h", "127.0.0.1", "-p", &port, "-U", SCRAM_USER, DB,
        ];
        client_tool(pg_harness::pgbench_path(), SCRAM_PASSWORD, &args).await
    });
    tokio::time::sleep(Duration::from_secs(3)).await;
    let proxies: [Arc<dyn ProxyControl>; 1] = [Arc::new(LocalProxy(proxy.control.clone()))];
    let report = run_switchover(&targets, &config, &proxies, Direction::Forward, Duration::from_secs(20)).await;
    assert_eq!(report.outcome, Outcome::Completed, "{report:?}");
    let run = bench.await.unwrap();
    assert!(run.success, "{}", run.output);
    assert!(
        run.output.contains("number of failed transactions: 0"),
        "{}",
        run.output
    );
    let processed = pgbench_processed(&run.output);
    assert!(processed > 20, "{}", run.output);
    let on_green: u64 = green.sql("select count(*) from pgbench_history").parse().unwrap();
    assert_eq!(on_green, processed, "every committed transaction is on green");

    let (_, metrics) = http_text(proxy.admin, "GET", "/metrics", None, "").await;
    let reused: u64 = metrics
        .lines()
        .find_map(|l| l.strip_prefix("pgcutover_server_logins_total{how=\"reused\"} "))
        .and_then(|n| n.parse().ok())
        .unwrap_or(0);
    assert!(
        reused * 2 > processed,
        "most transactions ran on a pooled backend: {reused} of {processed}\n{metrics}"
    );
    // The pool moved: nothing of the proxy's is left idle on blue.
    wait_for("blue's pooled backends to be closed", Duration::from_secs(10), || {
        blue.sql(&format!(
            "select count(*) from pg_stat_activity where usename = '{SCRAM_USER}'"
        )) == "0"
    })
    .await;
    assert!(
        metrics.contains("pgcutover_pool_idle_server_connections{target=\"green\""),
        "{metrics}"
    );
}

/// During a hold a client gets in at once on an idle pooled backend, and only its
/// first query waits for the resume (without one it waits at its login, for the
/// route the hold ends on: `cutover.rs`).
#[tokio::test]
async fn a_client_arriving_during_a_hold_logs_in_on_a_pooled_backend_and_its_query_waits() {
    let db = Db::pg15();
    let proxy = RunningProxy::start(db.default_config()).await;
    let conninfo = proxy.conninfo(SCRAM_USER, SCRAM_PASSWORD, DB);
    let pooled = session_then_close(&conninfo, |c| async move { drop(c) }).await;
    proxy.control.hold();
    let c = tokio::time::timeout(Duration::from_secs(5), connect(&conninfo))
        .await
        .expect("the login completes during the hold")
        .unwrap();
    let query = tokio::spawn(async move {
        let pid: i32 = c.query_one("select pg_backend_pid()", &[]).await.unwrap().get(0);
        pid
    });
    // Not synchronisation: the time the query must stay held.
    tokio::time::sleep(Duration::from_millis(1000)).await;
    assert!(!query.is_finished(), "the first query waits for the resume");
    proxy.control.resume();
    let pid = tokio::time::timeout(Duration::from_secs(5), query)
        .await
        .unwrap()
        .unwrap();
    assert_eq!(pid, pooled);
}

/// `min_pool_size`: once a client used a parameter set, that many idle backends are
/// kept open for it, and after a flip they are open on the new side before any
/// client asks (and gone from the old).
#[tokio::test]
async fn min_pool_size_keeps_backends_ready_and_opens_them_on_the_new_side_after_a_flip() {
    use pgcutover_api::Side;
    let blue = Db::pg15();
    let green = Db::pg17();
    green.copy_role_secrets_from(&blue);
    let mut config = blue.config_with_green(&green, "");
    config.proxy.min_pool_size = 3;
    let proxy = RunningProxy::start(config).await;
    let conninfo = proxy.conninfo(SCRAM_USER, SCRAM_PASSWORD, DB);
    let idle_on = |db: &Db| {
        db.sql(&format!(
            "select count(*) from pg_stat_activity where usename = '{SCRAM_USER}' and state = 'idle'"
        ))
    };
    assert_eq!(idle_on(&blue), "0", "nothing opens before a client used the parameters");
    session_then_close(&conninfo, |c| async move { drop(c) }).await;
    wait_for("3 idle backends ready on blue", Duration::from_secs(10), || {
        idle_on(&blue) == "3"
    })
    .await;

    proxy.control.hold();
    proxy.control.flip(Side::Green, Duration::from_secs(20)).await.unwrap();
    proxy.control.resume();
    wait_for("3 idle backends ready on green", Duration::from_secs(10), || {
        idle_on(&green) == "3"
    })
    .await;
    wait_for("none left on blue", Duration::from_secs(10), || idle_on(&blue) == "0").await;
    // A client now logs in on one of them.
    let c = connect(&conninfo).await.unwrap();
    let pid = backend_pid(&c).await;
    let (_, metrics) = http_text(proxy.admin, "GET", "/metrics", None, "").await;
    assert!(
        metrics.contains("pgcutover_server_logins_total{how=\"reused\"} 1"),
        "the client (on backend {pid}) got a backend opened ahead of it:\n{metrics}"
    );
    assert_eq!(
        green.sql(&format!("select count(*) from pg_stat_activity where pid = {pid}")),
        "1"
    );
}
