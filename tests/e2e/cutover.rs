//! The proxy's cutover core: hold, drain, flip between blue (PostgreSQL 15) and green
//! (PostgreSQL 17) with server-side reconnect and session-state replay, resume.
//! No replication here: both databases get the same schema from the test.

use crate::support::*;
use pgcutover_config::DrainPolicy;
use std::sync::atomic::{AtomicBool, AtomicU32, AtomicU64, Ordering};
use std::sync::Arc;
use std::time::Duration;

/// An operator's raw route to green (see the admin API's `force`).
const FORCED_GREEN: &str = "{\"target\":\"green\",\"force\":true}";

/// Blue 15 and green 17 with the same roles (same secrets) and the same schema.
fn blue_green(schema: &str) -> (Db, Db) {
    let blue = Db::pg15();
    let green = Db::pg17();
    green.copy_role_secrets_from(&blue);
    for db in [&blue, &green] {
        db.sql(schema);
    }
    (blue, green)
}

const SCHEMA: &str = "create schema app_schema;
    create table app_schema.items (id bigserial primary key, worker int, note text);
    grant all on schema app_schema to public;
    grant all on all tables in schema app_schema to public;
    grant all on all sequences in schema app_schema to public;";

/// Hold, drain (must succeed), flip, resume: what the switchover will do.
async fn switch(proxy: &RunningProxy, target: pgcutover_api::Side) {
    proxy.control.hold();
    let drain = proxy
        .control
        .drain(Duration::from_secs(20), DrainPolicy::Abort, Duration::ZERO)
        .await;
    assert!(drain.drained, "drain: {drain:?}");
    let flip = proxy.control.flip(target, Duration::from_secs(20)).await.unwrap();
    assert_eq!(flip.not_moved, 0, "flip: {flip:?}");
    proxy.control.resume();
}

fn major(version_num: &str) -> u32 {
    version_num.parse::<u32>().unwrap() / 10_000
}

#[tokio::test]
async fn sessions_keep_their_state_across_five_round_trips_between_blue_and_green() {
    use pgcutover_api::Side;
    let (blue, green) = blue_green(SCHEMA);
    let proxy = Arc::new(RunningProxy::start(blue.config_with_green(&green, "")).await);
    const WORKERS: usize = 32;
    let stop = Arc::new(AtomicBool::new(false));
    let seen_major: Arc<Vec<AtomicU32>> = Arc::new((0..WORKERS).map(|_| AtomicU32::new(0)).collect());
    let rounds: Arc<Vec<AtomicU64>> = Arc::new((0..WORKERS).map(|_| AtomicU64::new(0)).collect());
    let mut workers = Vec::new();
    let mut listeners = Vec::new();
    for w in 0..WORKERS {
        let (client, notifications, conn) = connect_listening(&proxy.conninfo(SCRAM_USER, SCRAM_PASSWORD, DB)).await;
        // Session state of every kind the proxy must carry over.
        client
            .batch_execute(&format!(
                "SET search_path = app_schema, public; SET application_name = 'worker-{w}';
                 SET statement_timeout = '{}s'; PREPARE add_one(int) AS SELECT $1 + 1;",
                10 + w
            ))
            .await
            .unwrap();
        if w % 4 == 0 {
            client.batch_execute(&format!("LISTEN chan_{w}")).await.unwrap();
            listeners.push((w, notifications));
        }
        let named = client
            .prepare("SELECT $1::int * 2, current_setting('server_version_num')")
            .await
            .unwrap();
        let (stop, seen_major, rounds) = (stop.clone(), seen_major.clone(), rounds.clone());
        workers.push(tokio::spawn(async move {
            let deadline = tokio::time::Instant::now() + Duration::from_secs(180);
            while !stop.load(Ordering::Relaxed) && tokio::time::Instant::now() < deadline {
                // Extended protocol, named statement prepared before any flip.
                let row = client.query_one(&named, &[&21i32]).await.expect("named statement");
                assert_eq!(row.get::<_, i32>(0), 42);
                // Unnamed statements and a write, inside a transaction.
                client.batch_execute("BEGIN").await.expect("begin");
                client
                    .execute("INSERT INTO items (worker, note) VALUES ($1, 'x')", &[&(w as i32)])
                    .await
                    .expect("insert via search_path");
                client.batch_execute("COMMIT").await.expect("commit");
                // SQL-level PREPARE and every SET survive.
                let rows = client
                    .simple_query(
                        "EXECUTE add_one(41); SELECT current_setting('application_name'), \
                         current_setting('statement_timeout'), current_setting('search_path')",
                    )
                    .await
                    .expect("simple query");
                let values: Vec<Vec<String>> = rows
                    .iter()
                    .filter_map(|m| match m {
                        tokio_postgres::SimpleQueryMessage::Row(r) => {
                            Some((0..r.len()).map(|i| r.get(i).unwrap_or("").to_owned()).collect())
                        }
                        _ => None,
                    })
                    .collect();
                assert_eq!(values[0], ["42"], "EXECUTE add_one");
                assert_eq!(
                    values[1],
                    [
                        format!("worker-{w}"),
                        format!("{}s", 10 + w),
                        "app_schema, public".to_owned()
                    ]
                );
                seen_major[w].store(major(&row.get::<_, String>(1)), Ordering::Relaxed);
                rounds[w].fetch_add(1, Ordering::Relaxed);
            }
            client
        }));
        drop(conn);
    }

    let wait_all_on = |major_wanted: u32| {
        let seen_major = seen_major.clone();
        let rounds = rounds.clone();
        async move {
            let marks: Vec<u64> = rounds.iter().map(|r| r.load(Ordering::Relaxed)).collect();
            wait_for(
                &format!("every session to run on PostgreSQL {major_wanted}"),
                Duration::from_secs(60),
                || {
                    (0..WORKERS).all(|w| {
                        rounds[w].load(Ordering::Relaxed) > marks[w] + 1
                            && seen_major[w].load(Ordering::Relaxed) == major_wanted
                    })
                },
            )
            .await;
        }
    };
    wait_all_on(15).await;
    for round in 0..5 {
        switch(&proxy, Side::Green).await;
        wait_all_on(17).await;
        // A NOTIFY sent on green reaches listeners that subscribed on blue.
        let notifier = connect(&proxy.conninfo(PLAIN_USER, PLAIN_PASSWORD, DB)).await.unwrap();
        for (w, _) in &listeners {
            notifier
                .batch_execute(&format!("NOTIFY chan_{w}, 'round {round}'"))
                .await
                .unwrap();
        }
        for (w, rx) in listeners.iter_mut() {
            let (channel, payload, _) = tokio::time::timeout(Duration::from_secs(10), rx.recv())
                .await
                .unwrap_or_else(|_| panic!("worker {w} got the notification sent on green"))
                .unwrap();
            assert_eq!((channel, payload), (format!("chan_{w}"), format!("round {round}")));
        }
        switch(&proxy, Side::Blue).await;
        wait_all_on(15).await;
    }
    stop.store(true, Ordering::Relaxed);
    for (w, worker) in workers.into_iter().enumerate() {
        let client = worker.await.unwrap_or_else(|e| panic!("worker {w} failed: {e}"));
        assert!(!client.is_closed(), "worker {w} was disconnected");
    }
    // Every write landed on one of the two databases, none lost, none doubled.
    let total: u64 = rounds.iter().map(|r| r.load(Ordering::Relaxed)).sum();
    let written: u64 = blue
        .sql("select count(*) from app_schema.items")
        .parse::<u64>()
        .unwrap()
        + green
            .sql("select count(*) from app_schema.items")
            .parse::<u64>()
            .unwrap();
    assert_eq!(written, total);
}

#[tokio::test]
async fn an_open_transaction_finishes_on_blue_and_the_next_runs_on_green() {
    use pgcutover_api::Side;
    let (blue, green) = blue_green("create table t (id int primary key); grant all on t to public;");
    let proxy = RunningProxy::start(blue.config_with_green(&green, "")).await;
    let c = connect(&proxy.conninfo(SCRAM_USER, SCRAM_PASSWORD, DB)).await.unwrap();
    c.batch_execute("BEGIN; INSERT INTO t VALUES (1)").await.unwrap();

    proxy.control.hold();
    let control = proxy.control.clone();
    let drain = tokio::spawn(async move {
        control
            .drain(Duration::from_secs(20), DrainPolicy::Abort, Duration::ZERO)
            .await
    });
    tokio::time::sleep(Duration::from_millis(200)).await;
    assert!(!drain.is_finished(), "the drain waits for the open transaction");
    c.batch_execute("INSERT INTO t VALUES (2); COMMIT").await.unwrap();
    assert!(drain.await.unwrap().drained);
    proxy.control.flip(Side::Green, Duration::from_secs(10)).await.unwrap();
    proxy.control.resume();

    let v: String = c.query_one("show server_version_num", &[]).await.unwrap().get(0);
    assert_eq!(major(&v), 17);
    c.batch_execute("INSERT INTO t VALUES (3)").await.unwrap();
    assert_eq!(blue.sql("select string_agg(id::text, ',' order by id) from t"), "1,2");
    assert_eq!(green.sql("select string_agg(id::text, ',' order by id) from t"), "3");
}

#[tokio::test]
async fn drain_timeout_with_abort_stays_held_then_resumes_on_blue() {
    let (blue, green) = blue_green("create table t (id int primary key); grant all on t to public;");
    let proxy = RunningProxy::start(blue.config_with_green(&green, "drain_timeout = \"300ms\"")).await;
    let straggler = connect(&proxy.conninfo(SCRAM_USER, SCRAM_PASSWORD, DB)).await.unwrap();
    straggler
        .batch_execute("BEGIN; INSERT INTO t VALUES (1)")
        .await
        .unwrap();

    let (code, body) = proxy.post("/hold", "").await;
    assert_eq!(code, 409, "{body}");
    assert_eq!(body["drained"], false);
    assert_eq!(body["in_flight"], 1);
    let (code, status) = http(proxy.admin, "GET", "/status", None, "").await;
    assert_eq!(code, 200);
    assert_eq!(status["phase"], "held");
    assert_eq!(status["route"], "blue");
    let (code, _) = proxy.post("/resume", "").await;
    assert_eq!(code, 200);

    straggler
        .batch_execute("INSERT INTO t VALUES (2); COMMIT")
        .await
        .unwrap();
    let other = connect(&proxy.conninfo(PLAIN_USER, PLAIN_PASSWORD, DB)).await.unwrap();
    let v: String = other.query_one("show server_version_num", &[]).await.unwrap().get(0);
    assert_eq!(major(&v), 15);
    assert_eq!(blue.sql("select count(*) from t"), "2");
}

#[tokio::test]
async fn admin_api_flips_with_the_token_and_refuses_without_it() {
    let (blue, green) = blue_green("select 1");
    let proxy = RunningProxy::start(blue.config_with_green(&green, "")).await;
    let c = connect(&proxy.conninfo(SCRAM_USER, SCRAM_PASSWORD, DB)).await.unwrap();
    for path in ["/hold", "/resume", "/route"] {
        let (code, body) = http(proxy.admin, "POST", path, None, "{\"target\":\"green\"}").await;
        assert_eq!(code, 401, "{path}: {body}");
        let (code, _) = http(
            proxy.admin,
            "POST",
            path,
            Some("wrong-token-wrong-token"),
            "{\"target\":\"green\"}",
        )
        .await;
        assert_eq!(code, 401, "{path}");
    }
    // An operator's raw route needs force (it skips the fence); it flips only while held.
    let (code, body) = proxy.post("/route", "{\"target\":\"green\"}").await;
    assert_eq!(code, 409, "{body}");
    assert!(body["error"].as_str().unwrap().contains("\"force\": true"), "{body}");
    let (code, body) = proxy.post("/route", FORCED_GREEN).await;
    assert_eq!(code, 409, "{body}");
    assert!(body["error"].as_str().unwrap().contains("hold"), "{body}");
    let (code, body) = proxy.post("/hold", "").await;
    assert_eq!((code, &body["drained"]), (200, &serde_json::json!(true)), "{body}");
    let (code, body) = proxy.post("/route", "{\"target\":\"purple\"}").await;
    assert_eq!(code, 400, "{body}");
    let (code, body) = proxy.post("/route", FORCED_GREEN).await;
    assert_eq!(code, 200, "{body}");
    assert_eq!(body["moved"], 1);
    let (code, _) = proxy.post("/resume", "").await;
    assert_eq!(code, 200);
    let v: String = c.query_one("show server_version_num", &[]).await.unwrap().get(0);
    assert_eq!(major(&v), 17);
    let (_, status) = http(proxy.admin, "GET", "/status", None, "").await;
    assert_eq!(status["route"], "green");
    assert_eq!(status["server_connections"]["green"], 1);
    assert_eq!(status["clients"], 1);
    // tokio-postgres closes its statement (Close + Sync) after query_one returns, so
    // the session may still be in flight for a moment: wait for it to settle.
    let deadline = tokio::time::Instant::now() + Duration::from_secs(10);
    let metrics = loop {
        let (code, metrics) = http_text(proxy.admin, "GET", "/metrics", None, "").await;
        assert_eq!(code, 200);
        if metrics.contains("pgcutover_client_connections{state=\"idle\"} 1") || tokio::time::Instant::now() > deadline
        {
            break metrics;
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    };
    for needle in [
        "pgcutover_route_flips_total{target=\"green\"} 1",
        "pgcutover_server_connections{target=\"green\"} 1",
        "pgcutover_client_connections{state=\"idle\"} 1",
        "pgcutover_drain_seconds_count 1",
        "pgcutover_hold_seconds_count 1",
    ] {
        assert!(metrics.contains(needle), "missing {needle} in\n{metrics}");
    }
    let forwarded = |name: &str| -> u64 {
        metrics
            .lines()
            .find(|l| l.starts_with(name))
            .and_then(|l| l.rsplit(' ').next())
            .and_then(|v| v.parse().ok())
            .unwrap_or(0)
    };
    assert!(
        forwarded("pgcutover_bytes_proxied_total{direction=\"to_client\"}") > 0,
        "{metrics}"
    );
    assert!(
        forwarded("pgcutover_messages_proxied_total{direction=\"to_server\"}") > 0,
        "{metrics}"
    );

    // Without admin_token_file, mutating calls are disabled, and say how to enable them.
    let bare = RunningProxy::start(blue.default_config()).await;
    let (code, body) = http(bare.admin, "POST", "/hold", Some(ADMIN_TOKEN), "").await;
    assert_eq!(code, 403);
    assert!(body["error"].as_str().unwrap().contains("admin_token_file"), "{body}");
}

#[tokio::test]
async fn cancel_after_a_flip_cancels_the_query_on_green() {
    use pgcutover_api::Side;
    let (blue, green) = blue_green("select 1");
    let proxy = RunningProxy::start(blue.config_with_green(&green, "")).await;
    let c = connect(&proxy.conninfo(SCRAM_USER, SCRAM_PASSWORD, DB)).await.unwrap();
    c.simple_query("select 1").await.unwrap();
    switch(&proxy, Side::Green).await;
    let token = c.cancel_token();
    let canceller = tokio::spawn(async move {
        tokio::time::sleep(Duration::from_millis(300)).await;
        token.cancel_query(tokio_postgres::NoTls).await
    });
    let started = std::time::Instant::now();
    let e = c.batch_execute("select pg_sleep(30)").await.unwrap_err();
    assert_eq!(sqlstate(&e), "57014");
    assert!(started.elapsed() < Duration::from_secs(10));
    canceller.await.unwrap().unwrap();
    let v: String = c.query_one("show server_version_num", &[]).await.unwrap().get(0);
    assert_eq!(major(&v), 17);
}

#[tokio::test]
async fn a_session_with_a_temp_table_is_closed_under_close_and_stays_under_wait() {
    use pgcutover_api::Side;
    let (blue, green) = blue_green("select 1");
    for policy in ["close", "wait"] {
        let proxy = RunningProxy::start(blue.config_with_green(&green, &format!("pinned_policy = \"{policy}\""))).await;
        let (pinned, _, conn) = connect_listening(&proxy.conninfo(SCRAM_USER, SCRAM_PASSWORD, DB)).await;
        pinned.batch_execute("CREATE TEMP TABLE scratch (x int)").await.unwrap();
        let free = connect(&proxy.conninfo(PLAIN_USER, PLAIN_PASSWORD, DB)).await.unwrap();
        free.simple_query("select 1").await.unwrap();
        let flip = hold_drain_flip_resume(&proxy, Side::Green).await;
        let v: String = free.query_one("show server_version_num", &[]).await.unwrap().get(0);
        assert_eq!(major(&v), 17, "the other session moved");
        match policy {
            "close" => {
                let m = closed_with_57p01(conn).await;
                assert!(m.contains("temporary tables"), "{m}");
            }
            _ => {
                assert_eq!(flip.not_moved, 1, "{flip:?}");
                let v: String = pinned.query_one("show server_version_num", &[]).await.unwrap().get(0);
                assert_eq!(major(&v), 15, "the pinned session stays on blue");
                // Its temp table is still there: it really stayed.
                pinned.batch_execute("INSERT INTO scratch VALUES (1)").await.unwrap();
            }
        }
    }
}

#[tokio::test]
async fn pgbench_prepared_with_16_clients_across_four_flips_has_no_failed_transactions() {
    use pgcutover_api::Side;
    let blue = Db::pg15();
    let green = Db::pg17();
    green.copy_role_secrets_from(&blue);
    let proxy = RunningProxy::start(blue.config_with_green(&green, "")).await;
    // The same pgbench schema on both, loaded directly.
    for db in [&blue, &green] {
        let port = db.cluster.port().to_string();
        #[rustfmt::skip]
        let init = client_tool(pg_harness::pgbench_path(), PLAIN_PASSWORD, &[
            "-i", "-s", "1", "-q", "-h", "127.0.0.1", "-p", &port, "-U", PLAIN_USER, DB,
        ])
        .await;
        assert!(init.success, "{}", init.output);
    }
    let port = proxy.addr.port().to_string();
    #[rustfmt::skip]
    let bench_args = [
        "-n", "-M", "prepared", "-c", "16", "-j", "2", "-T", "25",
        "-h", "127.0.0.1", "-p", &port, "-U", PLAIN_USER, DB,
    ];
    let bench = client_tool(pg_harness::pgbench_path(), PLAIN_PASSWORD, &bench_args);
    let flips = async {
        for target in [Side::Green, Side::Blue, Side::Green, Side::Blue] {
            tokio::time::sleep(Duration::from_secs(4)).await;
            switch(&proxy, target).await;
        }
    };
    let (out, ()) = tokio::join!(bench, flips);
    let report = out.output;
    assert!(out.success, "{report}");
    assert!(report.contains("number of failed transactions: 0 "), "{report}");
    let processed = pgbench_processed(&report);
    let history: u64 = blue.sql("select count(*) from pgbench_history").parse::<u64>().unwrap()
        + green
            .sql("select count(*) from pgbench_history")
            .parse::<u64>()
            .unwrap();
    assert_eq!(
        history, processed,
        "every committed transaction left its row on one side"
    );
}

#[tokio::test]
async fn a_flip_after_prepare_uses_the_standby_connections_opened_before_the_hold() {
    let (blue, green) = blue_green("select 1");
    let proxy = RunningProxy::start(blue.config_with_green(&green, "")).await;
    let mut clients = Vec::new();
    for _ in 0..4 {
        let c = connect(&proxy.conninfo(SCRAM_USER, SCRAM_PASSWORD, DB)).await.unwrap();
        c.batch_execute("SET application_name = 'standby-test'").await.unwrap();
        clients.push(c);
    }
    let (code, body) = proxy.post("/prepare", "{\"target\":\"green\"}").await;
    assert_eq!(code, 200, "{body}");
    assert_eq!(
        (body["ready"].as_u64(), body["sessions"].as_u64()),
        (Some(4), Some(4)),
        "{body}"
    );
    // The standbys are real, logged-in backends on green, before any hold.
    let standby_pids: Vec<String> = green
        .sql(&format!(
            "select string_agg(pid::text, ',') from pg_stat_activity where usename = '{SCRAM_USER}'"
        ))
        .split(',')
        .map(str::to_owned)
        .collect();
    assert_eq!(standby_pids.len(), 4, "{standby_pids:?}");
    for (path, body) in [("/hold", ""), ("/route", FORCED_GREEN), ("/resume", "")] {
        let (code, reply) = proxy.post(path, body).await;
        assert_eq!(code, 200, "{path}: {reply}");
    }
    for c in &clients {
        let row = c
            .query_one(
                "select pg_backend_pid()::text, current_setting('application_name')",
                &[],
            )
            .await
            .unwrap();
        let pid: String = row.get(0);
        assert!(
            standby_pids.contains(&pid),
            "backend {pid} is not one of the standbys {standby_pids:?}"
        );
        assert_eq!(
            row.get::<_, String>(1),
            "standby-test",
            "state was replayed on the standby"
        );
    }
    // No extra logins to green happened at flip time.
    assert_eq!(
        green.sql(&format!(
            "select count(*) from pg_stat_activity where usename = '{SCRAM_USER}'"
        )),
        "4"
    );
}

#[tokio::test]
async fn drain_policy_cancel_ends_stragglers_with_a_clear_error_and_moves_everyone_else() {
    let (blue, green) = blue_green("create table t (id int primary key); grant all on t to public;");
    let proxy = RunningProxy::start(blue.config_with_green(
        &green,
        "drain_timeout = \"300ms\"\ndrain_policy = \"cancel\"\ndrain_cancel_grace = \"500ms\"",
    ))
    .await;
    let (busy, _, busy_conn) = connect_listening(&proxy.conninfo(SCRAM_USER, SCRAM_PASSWORD, DB)).await;
    busy.batch_execute("BEGIN; INSERT INTO t VALUES (1)").await.unwrap();
    let sleeper = tokio::spawn(async move {
        let r = busy.batch_execute("select pg_sleep(30)").await;
        (busy, r)
    });
    let (idle_in_tx, _, idle_conn) = connect_listening(&proxy.conninfo(SCRAM_USER, SCRAM_PASSWORD, DB)).await;
    idle_in_tx
        .batch_execute("BEGIN; INSERT INTO t VALUES (2)")
        .await
        .unwrap();
    let bystander = connect(&proxy.conninfo(PLAIN_USER, PLAIN_PASSWORD, DB)).await.unwrap();
    bystander.simple_query("select 1").await.unwrap();
    tokio::time::sleep(Duration::from_millis(100)).await;

    let (code, body) = proxy.post("/hold", "").await;
    assert_eq!(code, 200, "{body}");
    assert_eq!(body["drained"], true, "{body}");
    // The running query was cancelled first...
    let (_busy, r) = tokio::time::timeout(Duration::from_secs(10), sleeper)
        .await
        .unwrap()
        .unwrap();
    assert_eq!(sqlstate(&r.unwrap_err()), "57014");
    // ...and both stragglers were then closed with an error that names the switchover.
    for conn in [busy_conn, idle_conn] {
        let m = closed_with_57p01(conn).await;
        assert!(m.contains("switchover"), "{m}");
    }
    let (code, body) = proxy.post("/route", FORCED_GREEN).await;
    assert_eq!((code, &body["not_moved"]), (200, &serde_json::json!(0)), "{body}");
    proxy.post("/resume", "").await;
    let v: String = bystander
        .query_one("show server_version_num", &[])
        .await
        .unwrap()
        .get(0);
    assert_eq!(major(&v), 17, "the bystander moved");
    // Neither straggler's transaction committed: nothing is half on each side.
    assert_eq!(blue.sql("select count(*) from t"), "0");
    assert_eq!(green.sql("select count(*) from t"), "0");
}

#[tokio::test]
async fn auth_query_runs_on_the_active_database_after_a_flip() {
    use pgcutover_api::Side;
    let (blue, green) = blue_green("select 1");
    let mut config = blue.config_with_green(&green, "");
    config.auth.auth_user = Some(pg_harness::SUPERUSER.to_owned());
    let proxy = RunningProxy::start(config).await;
    switch(&proxy, Side::Green).await;
    // A role that exists only on green, known to neither auth_file nor blue.
    green.sql("create role only_on_green login password 'green-secret'");
    let c = connect(&proxy.conninfo("only_on_green", "green-secret", DB))
        .await
        .unwrap();
    let v: String = c.query_one("show server_version_num", &[]).await.unwrap().get(0);
    assert_eq!(major(&v), 17);
}

#[tokio::test]
async fn sql_admin_console_shows_status_and_holds_and_resumes() {
    let (blue, green) = blue_green("select 1");
    let mut config = blue.config_with_green(&green, "");
    config.proxy.admin_users = vec![PLAIN_USER.to_owned()];
    let proxy = RunningProxy::start(config).await;
    let app = connect(&proxy.conninfo(SCRAM_USER, SCRAM_PASSWORD, DB)).await.unwrap();
    app.simple_query("select 1").await.unwrap();

    let console = connect(&proxy.conninfo(PLAIN_USER, PLAIN_PASSWORD, "pgcutover"))
        .await
        .unwrap();
    let rows = |msgs: Vec<tokio_postgres::SimpleQueryMessage>| -> Vec<Vec<String>> {
        msgs.iter()
            .filter_map(|m| match m {
                tokio_postgres::SimpleQueryMessage::Row(r) => {
                    Some((0..r.len()).map(|i| r.get(i).unwrap_or("").to_owned()).collect())
                }
                _ => None,
            })
            .collect()
    };
    let status = rows(console.simple_query("SHOW STATUS").await.unwrap());
    assert_eq!(&status[0][..3], ["blue", "0", "serving"], "{status:?}");
    assert_eq!(status[0][4], "1", "one application client: {status:?}");
    let clients = rows(console.simple_query("show clients;").await.unwrap());
    assert_eq!(clients.len(), 1, "{clients:?}");
    assert_eq!(&clients[0][..2], [SCRAM_USER, DB]);
    let servers = rows(console.simple_query("SHOW SERVERS").await.unwrap());
    assert_eq!(servers[0][0], "blue");
    let held = rows(console.simple_query("HOLD").await.unwrap());
    assert_eq!(&held[0][..2], ["true", "true"], "held and drained: {held:?}");
    assert_eq!(rows(console.simple_query("SHOW STATUS").await.unwrap())[0][2], "held");
    let resumed = rows(console.simple_query("RESUME").await.unwrap());
    assert_eq!(resumed[0][0], "false");
    let e = console.simple_query("DROP TABLE everything").await.unwrap_err();
    assert_eq!(sqlstate(&e), "42601", "{e}");
    // Still usable after an error.
    console.simple_query("SHOW HELP").await.unwrap();
    app.simple_query("select 1").await.unwrap();

    // psql, as operators use it.
    let port = proxy.addr.port().to_string();
    #[rustfmt::skip]
    let out = client_tool(pg_harness::psql_path(), PLAIN_PASSWORD, &[
        "-X", "-At", "-h", "127.0.0.1", "-p", &port, "-U", PLAIN_USER, "-d", "pgcutover", "-c", "SHOW STATUS",
    ])
    .await;
    assert!(out.success, "{}", out.output);
    assert!(out.stdout.starts_with("blue|0|serving|"), "{}", out.stdout);

    // Only admin_users get in.
    let e = connect(&proxy.conninfo(SCRAM_USER, SCRAM_PASSWORD, "pgcutover"))
        .await
        .unwrap_err();
    assert_eq!(sqlstate(&e), "28000", "{e}");
    assert!(e.as_db_error().unwrap().message().contains("admin console"), "{e}");
}

/// The wait for a held gate is the proxy's doing, not the client's: it is bounded by
/// the hold's own limit, not by `client_login_timeout` (which once closed such a
/// client with FATAL 08006 after a second here).
#[tokio::test]
async fn a_client_arriving_during_a_hold_longer_than_its_login_timeout_gets_in_at_the_resume() {
    let blue = Db::pg15();
    let config = blue.config(
        "client_login_timeout = \"1s\"",
        &format!("auth_file = {:?}", blue.userlist()),
    );
    let proxy = RunningProxy::start(config).await;
    proxy.control.hold();
    let conninfo = proxy.conninfo(SCRAM_USER, SCRAM_PASSWORD, DB);
    let arriving = tokio::spawn(async move { connect(&conninfo).await });
    // Not synchronisation: the duration under test, well past the login timeout.
    tokio::time::sleep(Duration::from_millis(2500)).await;
    assert!(!arriving.is_finished(), "a held client waits for the resume");
    proxy.control.resume();
    let client = arriving
        .await
        .unwrap()
        .unwrap_or_else(|e| panic!("the held client must get in, not {}: {e}", sqlstate(&e)));
    let n: i32 = client.query_one("select 41 + 1", &[]).await.unwrap().get(0);
    assert_eq!(n, 42);
}

/// A session whose move fails (its role is missing on green) does not stay on
/// blue, where writes would be fenced and reads stale: it gets FATAL 57P01 naming
/// why, the flip's report names it, and the other sessions move.
#[tokio::test]
async fn a_session_that_cannot_log_into_green_is_closed_and_named() {
    use pgcutover_api::Side;
    let (blue, green) = blue_green("select 1");
    green
        .cluster
        .psql("postgres", &format!("drop role {PLAIN_USER}"))
        .unwrap();
    let proxy = RunningProxy::start(blue.config_with_green(&green, "")).await;
    let (lost, _, conn) = connect_listening(&proxy.conninfo(PLAIN_USER, PLAIN_PASSWORD, DB)).await;
    lost.simple_query("select 1").await.unwrap();
    let fine = connect(&proxy.conninfo(SCRAM_USER, SCRAM_PASSWORD, DB)).await.unwrap();
    fine.simple_query("select 1").await.unwrap();
    let flip = hold_drain_flip_resume(&proxy, Side::Green).await;
    assert_eq!(flip.moved, 1, "{flip:?}");
    let [u] = flip.unmoved.as_slice() else {
        panic!("one unmoved session: {flip:?}")
    };
    assert_eq!(
        (u.user.as_str(), u.database.as_str(), u.stayed, u.by_policy),
        (PLAIN_USER, DB, false, false),
        "{u:?}"
    );
    assert!(
        u.reason.contains("could not log into the green server") && u.server_pid > 0,
        "{u:?}"
    );
    assert!(u.spoils_completion());
    let m = closed_with_57p01(conn).await;
    assert!(m.contains("could not move to the green server"), "{m}");
    let v: String = fine.query_one("show server_version_num", &[]).await.unwrap().get(0);
    assert_eq!(major(&v), 17, "the other session moved");
}

/// A move replays a session's SQL PREPAREs, whose text the server keeps as the
/// client's whole Query: only the PREPARE is replayed, never the DML sent with it,
/// also when PostgreSQL cut the name to 63 bytes; a PREPARE the proxy cannot tell
/// apart (a `U&` name) pins the session, which closes, instead.
#[tokio::test]
async fn a_move_replays_a_prepare_alone_never_the_dml_sent_with_it() {
    use pgcutover_api::Side;
    let (blue, green) = blue_green(SCHEMA);
    let proxy = RunningProxy::start(blue.config_with_green(&green, "")).await;
    let long = "a".repeat(70);
    let long_name = connect(&proxy.conninfo(SCRAM_USER, SCRAM_PASSWORD, DB)).await.unwrap();
    long_name
        .batch_execute(&format!(
            "INSERT INTO app_schema.items (note) VALUES ('once'); PREPARE {long} AS SELECT 41 + 1"
        ))
        .await
        .unwrap();
    let (escaped, _, escaped_conn) = connect_listening(&proxy.conninfo(PLAIN_USER, PLAIN_PASSWORD, DB)).await;
    escaped
        .batch_execute("INSERT INTO app_schema.items (note) VALUES ('escaped'); PREPARE U&\"d\\0061ta\" AS SELECT 1")
        .await
        .unwrap();
    let flip = hold_drain_flip_resume(&proxy, Side::Green).await;
    assert_eq!(flip.moved, 1, "{flip:?}");
    let rows = long_name.simple_query(&format!("EXECUTE {long}")).await.unwrap();
    let answer = rows.iter().find_map(|m| match m {
        tokio_postgres::SimpleQueryMessage::Row(r) => r.get(0).map(str::to_owned),
        _ => None,
    });
    assert_eq!(answer.as_deref(), Some("42"), "the statement moved");
    let v: String = long_name
        .query_one("show server_version_num", &[])
        .await
        .unwrap()
        .get(0);
    assert_eq!(major(&v), 17);
    let m = closed_with_57p01(escaped_conn).await;
    assert!(m.contains("cannot be told apart"), "{m}");
    assert_eq!(
        green.sql("select count(*) from app_schema.items"),
        "0",
        "a client's INSERT ran again on green"
    );
}

/// The proxy keeps at most 16 MiB of a session's prepared statements (it holds
/// every client's, where each server holds only its own): a session past that is
/// pinned, and closed at the flip naming why, while the others move.
#[tokio::test]
async fn a_session_with_more_prepared_statements_than_the_proxy_keeps_is_closed_at_the_flip() {
    use pgcutover_api::Side;
    let (blue, green) = blue_green("select 1");
    let proxy = RunningProxy::start(blue.config_with_green(&green, "")).await;
    let (heavy, _, heavy_conn) = connect_listening(&proxy.conninfo(SCRAM_USER, SCRAM_PASSWORD, DB)).await;
    let padding = "x".repeat(60_000);
    let mut statements = Vec::new();
    for i in 0..300 {
        statements.push(heavy.prepare(&format!("select {i} /* {padding} */")).await.unwrap());
    }
    let light = connect(&proxy.conninfo(PLAIN_USER, PLAIN_PASSWORD, DB)).await.unwrap();
    light.prepare("select 1").await.unwrap();
    let flip = hold_drain_flip_resume(&proxy, Side::Green).await;
    assert_eq!(flip.moved, 1, "{flip:?}");
    let m = closed_with_57p01(heavy_conn).await;
    assert!(m.contains("prepared statements too large to log"), "{m}");
    let v: String = light.query_one("show server_version_num", &[]).await.unwrap().get(0);
    assert_eq!(major(&v), 17);
    drop(statements);
}

/// What a switchover does to one proxy, in-process: hold, drain (abort policy),
/// flip to `target`, resume. Returns the flip's report.
async fn hold_drain_flip_resume(
    proxy: &RunningProxy,
    target: pgcutover_api::Side,
) -> pgcutover_proxy::control::FlipReport {
    proxy.control.hold();
    assert!(
        proxy
            .control
            .drain(Duration::from_secs(10), DrainPolicy::Abort, Duration::ZERO)
            .await
            .drained
    );
    let flip = proxy.control.flip(target, Duration::from_secs(10)).await.unwrap();
    proxy.control.resume();
    flip
}

/// Waits (up to 10 s) for the connection task of a session the proxy closes; it must
/// end with FATAL 57P01. Returns the server's message.
pub(crate) async fn closed_with_57p01(conn: tokio::task::JoinHandle<Result<(), tokio_postgres::Error>>) -> String {
    let e = tokio::time::timeout(Duration::from_secs(10), conn)
        .await
        .unwrap()
        .unwrap()
        .unwrap_err();
    assert_eq!(sqlstate(&e), "57P01", "{e}");
    e.as_db_error().unwrap().message().to_owned()
}
