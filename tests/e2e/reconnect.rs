//! A server connection lost while its session is idle (terminated by the
//! database, or the database restarted) is recreated transparently from the
//! session's state log; inside a transaction, or with state the log cannot follow,
//! the client gets the error as it would from a direct connection.

use crate::support::*;
use std::time::Duration;

const SCHEMA: &str = "create schema app_schema;
    create table app_schema.items (id int primary key);
    grant all on schema app_schema to public;
    grant all on all tables in schema app_schema to public;";

fn backend_count(db: &Db, pid: i32) -> String {
    db.sql(&format!("select count(*) from pg_stat_activity where pid = {pid}"))
}

/// The session's backend pid, once nothing of the client's is in flight:
/// tokio-postgres closes the statement `query_one` prepared (Close + Sync) in the
/// background once it is dropped, and a server that goes away while that crosses
/// its FATAL ends the session (the documented rule); one more round trip on the
/// same connection waits for it.
async fn backend_pid(client: &tokio_postgres::Client) -> i32 {
    let pid = client.query_one("select pg_backend_pid()", &[]).await.unwrap().get(0);
    client.batch_execute("").await.unwrap();
    pid
}

async fn metrics(proxy: &RunningProxy) -> String {
    http_text(proxy.admin, "GET", "/metrics", None, "").await.1
}

async fn wait_for_metric(proxy: &RunningProxy, line: &str) {
    let deadline = tokio::time::Instant::now() + Duration::from_secs(15);
    loop {
        let m = metrics(proxy).await;
        if m.contains(line) {
            return;
        }
        assert!(tokio::time::Instant::now() < deadline, "no {line} in:\n{m}");
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_session_whose_server_restarts_while_idle_carries_on_with_its_state() {
    let blue = Db::pg15();
    blue.sql(SCHEMA);
    let proxy = RunningProxy::start(blue.default_config()).await;
    let (client, mut notifications, _conn) = connect_listening(&proxy.conninfo(SCRAM_USER, SCRAM_PASSWORD, DB)).await;
    client
        .batch_execute(
            "SET search_path = app_schema, public; SET application_name = 'reconnect-test';
             PREPARE add_one(int) AS SELECT $1 + 1; LISTEN chan_r",
        )
        .await
        .unwrap();
    // A failed SET is not part of the session's state.
    client
        .batch_execute("SET statement_timeout = 'soon'")
        .await
        .unwrap_err();
    client.batch_execute("SET lock_timeout = '7s'").await.unwrap();
    let named = client.prepare("select $1::int * 3").await.unwrap();
    let pid = backend_pid(&client).await;

    // A fast shutdown tells every backend "terminating connection due to
    // administrator command", as pg_terminate_backend does; the server that comes
    // back has a younger postmaster, so the proxy reconnects. The client stays quiet
    // until then: a message that crosses the server's FATAL on the wire gets the
    // error instead, since nobody can tell whether the dying server ran it.
    tokio::task::block_in_place(|| blue.cluster.restart()).expect("restart");
    wait_for_metric(&proxy, "pgcutover_server_reconnects_total{outcome=\"reconnected\"} 1").await;
    assert_eq!(backend_count(&blue, pid), "0");

    let row = client
        .query_one(
            "select current_setting('search_path'), current_setting('application_name'),
                    current_setting('lock_timeout'), current_setting('statement_timeout'), pg_backend_pid()",
            &[],
        )
        .await
        .expect("the session carries on after its server was terminated");
    assert_eq!(row.get::<_, String>(0), "app_schema, public");
    assert_eq!(row.get::<_, String>(1), "reconnect-test");
    assert_eq!(row.get::<_, String>(2), "7s");
    assert_eq!(row.get::<_, String>(3), "0", "the failed SET must not be replayed");
    assert_ne!(row.get::<_, i32>(4), pid, "a new backend serves the session");
    // Unqualified names resolve through the replayed search_path.
    client.execute("insert into items values (1)", &[]).await.unwrap();
    let n: i32 = client.query_one("EXECUTE add_one(41)", &[]).await.unwrap().get(0);
    assert_eq!(n, 42);
    let n: i32 = client.query_one(&named, &[&7i32]).await.unwrap().get(0);
    assert_eq!(n, 21);
    blue.sql("NOTIFY chan_r, 'after-reconnect'");
    let (channel, payload, _) = tokio::time::timeout(Duration::from_secs(10), notifications.recv())
        .await
        .expect("notification after the reconnect")
        .unwrap();
    assert_eq!((channel.as_str(), payload.as_str()), ("chan_r", "after-reconnect"));
    assert!(
        metrics(&proxy)
            .await
            .contains("pgcutover_server_reconnects_total{outcome=\"reconnected\"} 1"),
        "{}",
        metrics(&proxy).await
    );
}

/// `pg_terminate_backend` of one backend while the server runs on: the client gets
/// the server's FATAL and its connection closes, exactly as on a direct connection
/// (pools check health that way, operators end sessions that way); the proxy goes
/// on serving the others.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_targeted_termination_ends_the_session_as_it_would_directly() {
    let blue = Db::pg15();
    let proxy = RunningProxy::start(blue.default_config()).await;
    let bystander = connect(&proxy.conninfo(SCRAM_USER, SCRAM_PASSWORD, DB)).await.unwrap();
    let mut seen = Vec::new();
    for conninfo in [
        blue.cluster.conninfo(SCRAM_USER, SCRAM_PASSWORD, DB),
        proxy.conninfo(SCRAM_USER, SCRAM_PASSWORD, DB),
    ] {
        let (client, _, conn) = connect_listening(&conninfo).await;
        client
            .batch_execute("SET application_name = 'terminated'")
            .await
            .unwrap();
        let pid = backend_pid(&client).await;
        assert_eq!(blue.sql(&format!("select pg_terminate_backend({pid})")), "t");
        let e = tokio::time::timeout(Duration::from_secs(10), conn)
            .await
            .expect("the connection ends")
            .unwrap()
            .expect_err("with the server's FATAL");
        let db = e
            .as_db_error()
            .unwrap_or_else(|| panic!("{conninfo}: no ErrorResponse: {e}"));
        seen.push((
            db.severity().to_owned(),
            db.code().code().to_owned(),
            db.message().to_owned(),
        ));
        assert!(client.is_closed());
    }
    assert_eq!(seen[0].1, "57P01", "{seen:?}");
    assert_eq!(seen[1], seen[0], "through the proxy as directly");
    wait_for_metric(&proxy, "pgcutover_server_reconnects_total{outcome=\"terminated\"} 1").await;
    let one: i32 = bystander.query_one("select 1", &[]).await.unwrap().get(0);
    assert_eq!(one, 1);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn idle_sessions_survive_a_restart_of_the_database() {
    let blue = Db::pg15();
    let proxy = RunningProxy::start(blue.default_config()).await;
    let mut clients = Vec::new();
    for i in 0..4 {
        let c = connect(&proxy.conninfo(SCRAM_USER, SCRAM_PASSWORD, DB)).await.unwrap();
        c.batch_execute(&format!("SET application_name = 'restart-{i}'"))
            .await
            .unwrap();
        clients.push(c);
    }
    tokio::task::block_in_place(|| blue.cluster.restart()).expect("restart");
    for (i, c) in clients.iter().enumerate() {
        let name: String = c
            .query_one("select current_setting('application_name')", &[])
            .await
            .expect("the session survives the restart")
            .get(0);
        assert_eq!(name, format!("restart-{i}"));
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn inside_a_transaction_or_with_state_it_cannot_follow_the_client_gets_the_error() {
    let blue = Db::pg15();
    let proxy = RunningProxy::start(blue.default_config()).await;
    let conninfo = proxy.conninfo(SCRAM_USER, SCRAM_PASSWORD, DB);
    let in_tx = connect(&conninfo).await.unwrap();
    in_tx.batch_execute("BEGIN").await.unwrap();
    let with_temp = connect(&conninfo).await.unwrap();
    with_temp
        .batch_execute("CREATE TEMP TABLE scratch (a int)")
        .await
        .unwrap();
    let mut pids = Vec::new();
    for c in [&in_tx, &with_temp] {
        pids.push(backend_pid(c).await);
    }
    for pid in &pids {
        assert_eq!(blue.sql(&format!("select pg_terminate_backend({pid})")), "t");
    }
    for (what, c) in [("in a transaction", &in_tx), ("with a temp table", &with_temp)] {
        let e = c.query_one("select 1", &[]).await.expect_err(what);
        // Exactly what a direct connection reports: the server's own 57P01, or the
        // closed connection right after it.
        assert!(
            sqlstate(&e) == "57P01" || e.is_closed() || e.to_string().contains("closed"),
            "{what}: {e}"
        );
    }
    let m = metrics(&proxy).await;
    assert!(
        m.contains("pgcutover_server_reconnects_total{outcome=\"not_attempted\"} 1"),
        "the temp-table session was not reconnected:\n{m}"
    );
    assert!(!m.contains("outcome=\"reconnected\""), "{m}");
}
