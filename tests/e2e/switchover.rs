//! The whole switchover, blue 15 → green 17 over real logical replication, under
//! load through two proxies: no failed transaction, no lost acknowledged write,
//! sequences continuing, blue fenced; then `rollback` back to blue with the writes
//! made on green. Faults end with clients only delayed and blue writable.

use crate::support::*;
use pgcutover_api::ProxyControl;
use pgcutover_config::Config;
use pgcutover_orchestrator as orch;
use pgcutover_orchestrator::switchover::{self, Direction, Outcome, RemoteProxy, Report, SwitchoverOptions};
use pgcutover_proxy::local::LocalProxy;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::Duration;

const SCHEMA: &str = "create table items (id serial primary key, note text not null);
    grant all on items to public; grant all on sequence items_id_seq to public;";

/// Blue with pgbench tables and `items`, green empty but for the roles (same
/// secrets), a config with [replication], and replication running and in sync.
pub(crate) async fn replicated(reverse: bool, switchover_extra: &str) -> (Db, Db, Config, orch::Targets) {
    replicated_between(Db::pg15(), Db::pg17(), reverse, switchover_extra).await
}

/// [`replicated`] between the given servers.
pub(crate) async fn replicated_between(
    blue: Db,
    green: Db,
    reverse: bool,
    switchover_extra: &str,
) -> (Db, Db, Config, orch::Targets) {
    green.copy_role_secrets_from(&blue);
    let init = client_tool(
        pg_harness::pgbench_path(),
        pg_harness::SUPERUSER_PASSWORD,
        &[
            "-i",
            "-q",
            "-s",
            "1",
            "-h",
            "127.0.0.1",
            "-p",
            &blue.cluster.port().to_string(),
            "-U",
            "postgres",
            DB,
        ],
    )
    .await;
    assert!(init.success, "{}", init.output);
    blue.sql(SCHEMA);
    // pgbench_history has no key; a bigserial one makes it replicable (and one more sequence).
    blue.sql(
        "alter table pgbench_history add column id bigserial primary key;
         grant all on all tables in schema public to public; grant all on all sequences in schema public to public;",
    );
    let switchover = format!("reverse_replication = {reverse}\n{switchover_extra}");
    let config = blue.config_for_switchover(&green, &switchover);
    let targets = orch::Targets::from_config(&config).unwrap();
    orch::replicate(&targets, &orch::ReplicateOptions::default(), &orch::Progress::stderr())
        .await
        .expect("replicate");
    (blue, green, config, targets)
}

pub(crate) async fn run_switchover(
    targets: &orch::Targets,
    config: &Config,
    proxies: &[Arc<dyn ProxyControl>],
    direction: Direction,
    timeout: Duration,
) -> Report {
    let opts = SwitchoverOptions {
        direction,
        timeout,
        dry_run: false,
    };
    let report = switchover::run(targets, config, proxies, &opts, &orch::Progress::stderr()).await;
    eprintln!("{}", switchover::render(&report));
    report
}

/// Inserts into `items` through `conninfo` until `stop`, recording acknowledged ids.
pub(crate) fn serial_writer(
    conninfo: String,
    stop: Arc<AtomicBool>,
) -> tokio::task::JoinHandle<(Vec<i32>, Vec<String>)> {
    tokio::spawn(async move {
        let client = connect(&conninfo).await.unwrap();
        let (mut acked, mut errors) = (Vec::new(), Vec::new());
        let deadline = tokio::time::Instant::now() + Duration::from_secs(60);
        while !stop.load(Ordering::Relaxed) && tokio::time::Instant::now() < deadline && acked.len() < 50_000 {
            match client
                .query_one("insert into items (note) values ('w') returning id", &[])
                .await
            {
                Ok(row) => acked.push(row.get(0)),
                Err(e) => errors.push(e.to_string()),
            }
            tokio::time::sleep(Duration::from_millis(2)).await;
        }
        (acked, errors)
    })
}

/// A client writing straight into a server the way `write` says (one simple-query
/// string whose result is the new id), every 2 ms, reconnecting whenever its
/// connection is ended (as the fence ends bypassers): the acknowledged ids and
/// the errors, once `stop` is set (or 60 s passed).
pub(crate) fn bypass_writer(
    conninfo: String,
    write: &'static str,
    stop: Arc<AtomicBool>,
) -> tokio::task::JoinHandle<(Vec<i32>, Vec<String>)> {
    tokio::spawn(async move {
        let (mut acked, mut errors) = (Vec::new(), Vec::new());
        let mut client = connect(&conninfo).await.unwrap();
        let deadline = tokio::time::Instant::now() + Duration::from_secs(60);
        while !stop.load(Ordering::Relaxed) && tokio::time::Instant::now() < deadline && acked.len() < 50_000 {
            if client.is_closed() {
                match connect(&conninfo).await {
                    Ok(c) => client = c,
                    Err(e) => errors.push(format!("reconnecting: {e}")),
                }
            }
            match client.simple_query(write).await {
                Ok(messages) => acked.extend(messages.iter().find_map(|m| match m {
                    tokio_postgres::SimpleQueryMessage::Row(r) => r.get(0).and_then(|id| id.parse::<i32>().ok()),
                    _ => None,
                })),
                Err(e) => {
                    errors.push(e.to_string());
                    let _ = client.simple_query("rollback").await;
                }
            }
            tokio::time::sleep(Duration::from_millis(2)).await;
        }
        (acked, errors)
    })
}

/// Every id in `ids` (acknowledged to some client, so none may be lost) is a row
/// of `items` on `db`.
pub(crate) fn assert_all_on(db: &Db, ids: &[i32]) {
    assert!(!ids.is_empty(), "no acknowledged id to look for");
    let list = ids.iter().map(i32::to_string).collect::<Vec<_>>().join(",");
    assert_eq!(
        count(db, &format!("select count(*) from items where id in ({list})")),
        ids.len() as i64
    );
}

/// A write straight into `db` (as the SCRAM test user, past every proxy) is refused
/// with 25006: the fence holds. Returns the error.
pub(crate) async fn assert_fenced(db: &Db) -> tokio_postgres::Error {
    let refused = connect(&db.cluster.conninfo(SCRAM_USER, SCRAM_PASSWORD, DB))
        .await
        .unwrap()
        .execute("insert into items (note) values ('split brain')", &[])
        .await
        .unwrap_err();
    assert_eq!(sqlstate(&refused), "25006", "{refused}");
    refused
}

/// `POST /switchover` on the proxy at `admin` with a 20 s timeout: it must answer
/// 200 with a completed report, which it returns.
pub(crate) async fn post_switchover_completes(admin: std::net::SocketAddr) -> serde_json::Value {
    let (code, report) = http(
        admin,
        "POST",
        "/switchover",
        Some(ADMIN_TOKEN),
        "{\"timeout\": \"20s\"}",
    )
    .await;
    assert_eq!((code, report["outcome"].as_str()), (200, Some("completed")), "{report}");
    report
}

pub(crate) fn count(db: &Db, sql: &str) -> i64 {
    db.sql(sql)
        .trim()
        .parse()
        .unwrap_or_else(|_| panic!("{sql}: {}", db.sql(sql)))
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn switchover_under_load_through_two_proxies_loses_nothing_then_rollback_brings_green_writes_back() {
    let (blue, green, config, targets) = replicated(true, "").await;
    let p1 = RunningProxy::start(config.clone()).await;
    let p2 = RunningProxy::start(config.clone()).await;
    let proxies: [Arc<dyn ProxyControl>; 2] = [
        Arc::new(LocalProxy(p1.control.clone())),
        Arc::new(RemoteProxy::new(&format!("http://{}", p2.admin), admin_token(), None).unwrap()),
    ];

    // A session with state of every kind, on each proxy.
    let mut stateful = Vec::new();
    for p in [&p1, &p2] {
        let (c, notes, _conn) = connect_listening(&p.conninfo(SCRAM_USER, SCRAM_PASSWORD, DB)).await;
        c.batch_execute("SET application_name = 'stateful'; PREPARE one AS SELECT 1; LISTEN moved")
            .await
            .unwrap();
        let named = c.prepare("select count(*) from items where id > $1").await.unwrap();
        stateful.push((c, notes, named));
    }
    // Load: pgbench TPC-B through proxy 1, a serial-keyed writer through proxy 2, and a
    // client that writes to blue directly, bypassing the proxies.
    let port = p1.addr.port().to_string();
    let bench = tokio::spawn(async move {
        let args = [
            "-n",
            "-M",
            "prepared",
            "-c",
            "16",
            "-j",
            "2",
            "-T",
            "10",
            "-h",
            "127.0.0.1",
            "-p",
            &port,
            "-U",
            SCRAM_USER,
            DB,
        ];
        client_tool(pg_harness::pgbench_path(), SCRAM_PASSWORD, &args).await
    });
    let stop = Arc::new(AtomicBool::new(false));
    let writer = serial_writer(p2.conninfo(SCRAM_USER, SCRAM_PASSWORD, DB), stop.clone());
    // Bypassing writers, one for each way round `default_transaction_read_only`: a
    // plain session, an explicit read-write transaction, a startup option, and a
    // role whose own setting turns it off. Each reconnects when the fence ends it.
    blue.sql(
        "create role bypass_role login password 'bypass-secret';
         alter role bypass_role set default_transaction_read_only = off",
    );
    let direct = blue.cluster.conninfo(SCRAM_USER, SCRAM_PASSWORD, DB);
    let insert = "insert into items (note) values ('bypass') returning id";
    let bypasses = [
        bypass_writer(direct.clone(), insert, stop.clone()),
        bypass_writer(
            direct.clone(),
            "begin read write; insert into items (note) values ('bypass') returning id; commit",
            stop.clone(),
        ),
        bypass_writer(
            format!("{direct} options='-c default_transaction_read_only=off'"),
            insert,
            stop.clone(),
        ),
        bypass_writer(
            blue.cluster.conninfo("bypass_role", "bypass-secret", DB),
            insert,
            stop.clone(),
        ),
    ];
    tokio::time::sleep(Duration::from_secs(3)).await;

    let report = run_switchover(&targets, &config, &proxies, Direction::Forward, Duration::from_secs(20)).await;
    assert_eq!(report.outcome, Outcome::Completed, "{report:?}");
    assert!(report.reverse_replication);
    assert!(report.sequences_synced >= 2, "{report:?}");
    assert_eq!(report.pinned_sessions, 0, "{report:?}");
    // The forward subscription is retired with its slot (no WAL kept on blue);
    // blue subscribes to green instead.
    assert_eq!(green.sql("select count(*) from pg_subscription"), "0");
    assert_eq!(
        blue.sql("select string_agg(slot_name, ',') from pg_replication_slots"),
        ""
    );
    assert_eq!(blue.sql("select subname from pg_subscription"), "pgcutover_reverse_app");
    tokio::time::sleep(Duration::from_secs(2)).await;
    stop.store(true, Ordering::Relaxed);
    let run = bench.await.unwrap();
    let (acked, errors) = writer.await.unwrap();
    let mut bypassed = Vec::new();
    for b in bypasses {
        bypassed.push(b.await.unwrap());
    }

    // pgbench: no failed transaction, and every committed one is on green.
    assert!(run.success, "{}", run.output);
    assert!(
        run.output.contains("number of failed transactions: 0"),
        "{}",
        run.output
    );
    let processed = pgbench_processed(&run.output) as i64;
    assert!(processed > 0);
    assert_eq!(count(&green, "select count(*) from pgbench_history"), processed);
    // The serial writer: no error, every acknowledged row on green, no duplicate key.
    assert!(errors.is_empty(), "{errors:?}");
    assert_all_on(&green, &acked);
    // Each bypassing client was stopped by the fence with an error, and its writes
    // kept failing after it reconnected; what it got acknowledged before is on green.
    for (i, (acked, errors)) in bypassed.iter().enumerate() {
        assert!(
            !errors.is_empty(),
            "bypass {i}: a write to blue after the fence must fail"
        );
        assert!(errors.len() > 5, "bypass {i} wrote again after the fence: {errors:?}");
        assert_all_on(&green, acked);
    }
    // Sequences continue above blue's; blue refuses writes; clients see 17.
    // Blue's highest id is read first: reverse replication copies the new row back
    // to blue within milliseconds, so reading it after would compare the row with itself.
    let c = connect(&p1.conninfo(SCRAM_USER, SCRAM_PASSWORD, DB)).await.unwrap();
    let blue_max = count(&blue, "select max(id) from items") as i32;
    let next: i32 = c
        .query_one("insert into items (note) values ('after') returning id", &[])
        .await
        .unwrap()
        .get(0);
    assert!(next > blue_max, "green's next id {next} is not above blue's {blue_max}");
    let version: String = c.query_one("show server_version_num", &[]).await.unwrap().get(0);
    assert!(version.starts_with("17"), "{version}");
    let direct = connect(&blue.cluster.conninfo(SCRAM_USER, SCRAM_PASSWORD, DB))
        .await
        .unwrap();
    let refused = direct
        .execute("insert into items (note) values ('split brain')", &[])
        .await
        .unwrap_err();
    assert_eq!(sqlstate(&refused), "25006", "{refused}");
    // Session state moved with every session, on both proxies.
    for (c, notes, named) in &mut stateful {
        let row = c
            .query_one(
                "select current_setting('application_name'), current_setting('server_version_num')",
                &[],
            )
            .await
            .unwrap();
        assert_eq!(row.get::<_, String>(0), "stateful");
        assert!(row.get::<_, String>(1).starts_with("17"));
        c.query_one("EXECUTE one", &[]).await.unwrap();
        c.query_one(&*named, &[&0i32]).await.unwrap();
        green.sql("NOTIFY moved, 'on green'");
        let (channel, payload, _) = tokio::time::timeout(Duration::from_secs(10), notes.recv())
            .await
            .expect("notification from green")
            .unwrap();
        assert_eq!((channel.as_str(), payload.as_str()), ("moved", "on green"));
    }

    // Writes on green come back with `rollback`.
    let mut green_ids = Vec::new();
    for _ in 0..20 {
        green_ids.push(
            c.query_one("insert into items (note) values ('made on green') returning id", &[])
                .await
                .unwrap()
                .get::<_, i32>(0),
        );
    }
    let report = run_switchover(
        &targets,
        &config,
        &proxies,
        Direction::Rollback,
        Duration::from_secs(20),
    )
    .await;
    assert_eq!(report.outcome, Outcome::Completed, "{report:?}");
    assert_all_on(&blue, &green_ids);
    let version: String = c.query_one("show server_version_num", &[]).await.unwrap().get(0);
    assert!(version.starts_with("15"), "back on blue: {version}");
    let id: i32 = c
        .query_one("insert into items (note) values ('blue again') returning id", &[])
        .await
        .expect("blue takes writes again")
        .get(0);
    assert!(id > *green_ids.iter().max().unwrap());
    // Green is fenced after the rollback.
    assert_fenced(&green).await;
}

/// After a rolled-back switchover: blue takes writes (directly and through the
/// proxy), the proxy routes to blue, and replication still runs.
async fn assert_back_on_blue(blue: &Db, proxy: &RunningProxy, report: &Report) {
    assert_eq!(report.outcome, Outcome::RolledBack, "{report:?}");
    assert!(report.reason.is_some());
    blue.sql("insert into items (note) values ('blue is writable')");
    let c = connect(&proxy.conninfo(SCRAM_USER, SCRAM_PASSWORD, DB)).await.unwrap();
    let version: String = c.query_one("show server_version_num", &[]).await.unwrap().get(0);
    assert!(version.starts_with("15"), "{version}");
    c.execute("insert into items (note) values ('through the proxy')", &[])
        .await
        .unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn faults_before_the_flip_roll_back_and_clients_only_wait() {
    let (blue, green, config, targets) = replicated(true, "drain_timeout = \"1s\"").await;
    let proxy = RunningProxy::start(config.clone()).await;
    let proxies: [Arc<dyn ProxyControl>; 1] = [Arc::new(LocalProxy(proxy.control.clone()))];

    // 1. A transaction longer than drain_timeout: abort, everything stays on blue.
    let long = connect(&proxy.conninfo(SCRAM_USER, SCRAM_PASSWORD, DB)).await.unwrap();
    long.batch_execute("BEGIN; insert into items (note) values ('long')")
        .await
        .unwrap();
    let report = run_switchover(&targets, &config, &proxies, Direction::Forward, Duration::from_secs(10)).await;
    assert!(
        report.reason.as_deref().unwrap_or("").contains("drain_timeout"),
        "{report:?}"
    );
    long.batch_execute("COMMIT")
        .await
        .expect("the long transaction commits on blue");
    assert_back_on_blue(&blue, &proxy, &report).await;

    // 2. Green never applies the sentinel (its table is locked): the timeout expires.
    let lock = connect(
        &green
            .cluster
            .conninfo(pg_harness::SUPERUSER, pg_harness::SUPERUSER_PASSWORD, DB),
    )
    .await
    .unwrap();
    lock.batch_execute("BEGIN; LOCK TABLE pgcutover.sentinel IN ACCESS EXCLUSIVE MODE")
        .await
        .unwrap();
    let report = run_switchover(&targets, &config, &proxies, Direction::Forward, Duration::from_secs(3)).await;
    assert!(report.reason.as_deref().unwrap_or("").contains("timeout"), "{report:?}");
    assert_back_on_blue(&blue, &proxy, &report).await;
    lock.batch_execute("ROLLBACK").await.unwrap();

    // 3. Green stops during catch-up.
    lock.batch_execute("BEGIN; LOCK TABLE pgcutover.sentinel IN ACCESS EXCLUSIVE MODE")
        .await
        .unwrap();
    // Stopped once the run reports catch-up (the locked sentinel keeps it there), not
    // after a fixed time: on a loaded machine the preflight alone can take longer.
    let control = proxy.control.clone();
    let stopper = tokio::spawn(async move {
        let catch_up = pgcutover_api::ProxyPhase::Switchover(pgcutover_api::Phase::CatchUp);
        let deadline = tokio::time::Instant::now() + Duration::from_secs(15);
        while control.proxy_phase() != catch_up && tokio::time::Instant::now() < deadline {
            tokio::time::sleep(Duration::from_millis(5)).await;
        }
        assert_eq!(control.proxy_phase(), catch_up, "the run never reached catch-up");
        tokio::task::spawn_blocking(move || green.cluster.stop()).await.unwrap()
    });
    let report = run_switchover(&targets, &config, &proxies, Direction::Forward, Duration::from_secs(20)).await;
    stopper.await.unwrap();
    assert_back_on_blue(&blue, &proxy, &report).await;
}

#[tokio::test]
async fn an_unreachable_peer_refuses_the_switchover_before_anything_changes() {
    let blue = Db::pg15();
    let green = Db::pg17();
    let config = blue.config_for_switchover(&green, "");
    let targets = orch::Targets::from_config(&config).unwrap();
    let proxy = RunningProxy::start(config.clone()).await;
    let unreachable = format!("http://127.0.0.1:{}", pg_harness::free_port());
    let proxies: [Arc<dyn ProxyControl>; 2] = [
        Arc::new(LocalProxy(proxy.control.clone())),
        Arc::new(RemoteProxy::new(&unreachable, admin_token(), None).unwrap()),
    ];
    let report = run_switchover(&targets, &config, &proxies, Direction::Forward, Duration::from_secs(5)).await;
    assert_eq!(report.outcome, Outcome::Refused, "{report:?}");
    assert!(
        report.reason.as_deref().unwrap().contains("not reachable"),
        "{report:?}"
    );
    assert!(!proxy.control.is_held());
    assert_eq!(blue.sql("show default_transaction_read_only"), "off");
}

/// The proxy as its own process, the CLI's dry run, then `POST /switchover`.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_cli_dry_run_changes_nothing_and_post_switchover_moves_a_running_proxy() {
    let (blue, green, _, _) = replicated(false, "").await;
    let (port, admin) = (pg_harness::free_port(), pg_harness::free_port());
    let file = blue.proxy_config_file(&green, "pgcutover.toml", port, admin, "reverse_replication = false");
    let bin = env!("CARGO_BIN_EXE_pgcutover");
    let (_proxy, admin_addr) = proxy_process(&file, admin).await;
    let conninfo = scram_conninfo(port);
    let client = connect(&conninfo).await.unwrap();

    let out = tokio::task::spawn_blocking(move || {
        std::process::Command::new(bin)
            .args(["switchover", "--dry-run", "-c", file.to_str().unwrap()])
            .output()
            .unwrap()
    })
    .await
    .unwrap();
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert!(out.status.success(), "{stdout}{}", String::from_utf8_lossy(&out.stderr));
    assert!(
        stdout.contains("dry_run") && stdout.contains("predicted hold"),
        "{stdout}"
    );
    assert_eq!(
        blue.sql("show default_transaction_read_only"),
        "off",
        "a dry run fences nothing"
    );

    let report = post_switchover_completes(admin_addr).await;
    assert!(report["max_hold_ms"].as_f64().unwrap() > 0.0, "{report}");
    let version: String = client.query_one("show server_version_num", &[]).await.unwrap().get(0);
    assert!(version.starts_with("17"), "{version}");
    let (code, status) = http(admin_addr, "GET", "/status", None, "").await;
    assert_eq!((code, status["route"].as_str()), (200, Some("green")), "{status}");
    let metrics = http_text(admin_addr, "GET", "/metrics", None, "").await.1;
    for line in [
        "pgcutover_switchovers_total{outcome=\"completed\"} 1",
        "pgcutover_switchover_phase_seconds_count{phase=\"catch_up\"} 1",
    ] {
        assert!(metrics.contains(line), "no {line} in:\n{metrics}");
    }
    assert_fence_holds_against_read_write_overrides(&blue).await;
}

/// After the fence no session on `db` commits a write, whatever it asks for: a
/// startup option, `BEGIN READ WRITE`, a session `SET`, or its role's own setting
/// (`default_transaction_read_only` alone is only a default each of these overrides).
async fn assert_fence_holds_against_read_write_overrides(db: &Db) {
    let direct = db.cluster.conninfo(SCRAM_USER, SCRAM_PASSWORD, DB);
    let overriding = connect(&format!("{direct} options='-c default_transaction_read_only=off'"))
        .await
        .unwrap();
    for sql in [
        "insert into items (note) values ('startup option')",
        "begin read write; insert into items (note) values ('read write'); commit",
        "set default_transaction_read_only = off; insert into items (note) values ('set')",
        "set session characteristics as transaction read write; insert into items (note) values ('characteristics')",
    ] {
        let e = overriding.batch_execute(sql).await.expect_err(sql);
        assert_eq!(sqlstate(&e), "25006", "{sql}: {e}");
        overriding.batch_execute("rollback").await.ok();
    }
    db.sql(&format!(
        "begin read write; alter role {SCRAM_USER} set default_transaction_read_only = off; commit"
    ));
    let by_role = connect(&direct).await.unwrap();
    let e = by_role
        .batch_execute("insert into items (note) values ('role setting')")
        .await
        .expect_err("a role's own read-write setting");
    assert_eq!(sqlstate(&e), "25006", "{e}");
    db.sql(&format!(
        "begin read write; alter role {SCRAM_USER} reset default_transaction_read_only; commit"
    ));
    let count = db.sql(
        "select count(*) from items where note in ('startup option', 'read write', 'set', 'characteristics', 'role setting')",
    );
    assert_eq!(count, "0", "a write got past the fence");
}

/// Two proxies as their own processes and `pgcutover switchover` as a third: while
/// the CLI runs, both proxies' `/status` shows the switchover's phase, and afterwards
/// both have recorded the phases and the outcome in their metrics.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_cli_run_switchover_shows_its_phase_and_records_metrics_on_every_proxy() {
    let (blue, green, _, _) = replicated(false, "").await;
    let ports: Vec<u16> = (0..4).map(|_| pg_harness::free_port()).collect();
    let mut admins = Vec::new();
    let mut processes = Vec::new();
    for (i, pair) in ports.chunks(2).enumerate() {
        let text = blue.switchover_config_text(
            &green,
            &format!("127.0.0.1:{}", pair[0]),
            &format!("127.0.0.1:{}", pair[1]),
            "reverse_replication = false",
        );
        let file = blue.dir.write(&format!("proxy{i}.toml"), &text);
        let (process, admin) = proxy_process(&file, pair[1]).await;
        processes.push(process);
        admins.push(admin);
    }
    // The CLI drives the first proxy (its admin_listen) and the second as a peer.
    let cli_config = blue.dir.write(
        "cli.toml",
        &blue.switchover_config_text(
            &green,
            &format!("127.0.0.1:{}", ports[0]),
            &admins[0].to_string(),
            "reverse_replication = false",
        ),
    );
    let peers = format!("[\"http://{}\"]", admins[1]);
    let bin = env!("CARGO_BIN_EXE_pgcutover");
    let cli = tokio::task::spawn_blocking(move || {
        std::process::Command::new(bin)
            .args(["switchover", "--json", "-c", cli_config.to_str().unwrap()])
            .env("PGCUTOVER_PROXY_PEERS", peers)
            .output()
            .unwrap()
    });
    let mut seen: Vec<std::collections::BTreeSet<String>> = vec![Default::default(); admins.len()];
    while !cli.is_finished() {
        for (admin, seen) in admins.iter().zip(&mut seen) {
            let (_, status) = http(*admin, "GET", "/status", None, "").await;
            seen.insert(status["phase"].as_str().unwrap_or_default().to_owned());
        }
        tokio::time::sleep(Duration::from_millis(2)).await;
    }
    let out = cli.await.unwrap();
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert!(out.status.success(), "{stdout}{}", String::from_utf8_lossy(&out.stderr));
    let report: serde_json::Value = serde_json::from_str(&stdout).unwrap();
    assert_eq!(report["outcome"], "completed", "{report}");
    for ((admin, seen), i) in admins.iter().zip(&seen).zip(0..) {
        let switchover_phases: Vec<_> = seen.iter().filter(|p| *p != "serving" && *p != "held").collect();
        assert!(
            switchover_phases.iter().any(|p| *p == "preflight"),
            "proxy {i} never showed the switchover's phase in /status: saw {seen:?}"
        );
        let (_, status) = http(*admin, "GET", "/status", None, "").await;
        assert_eq!(status["phase"], "serving", "proxy {i} after the switchover: {status}");
        assert_eq!(status["route"], "green", "proxy {i}: {status}");
        let metrics = http_text(*admin, "GET", "/metrics", None, "").await.1;
        for line in [
            "pgcutover_switchovers_total{outcome=\"completed\"} 1",
            "pgcutover_switchover_phase_seconds_count{phase=\"preflight\"} 1",
            "pgcutover_switchover_phase_seconds_count{phase=\"catch_up\"} 1",
            "pgcutover_switchover_phase_seconds_count{phase=\"resume\"} 1",
        ] {
            assert!(metrics.contains(line), "proxy {i}: no {line} in:\n{metrics}");
        }
    }
}

/// Starts `pgcutover proxy -c file` and waits until its admin API (on `admin_port`) answers.
pub(crate) async fn proxy_process(file: &std::path::Path, admin_port: u16) -> (KillOnDrop, std::net::SocketAddr) {
    proxy_process_with_env(file, admin_port, &[]).await
}

/// [`proxy_process`] with extra environment variables.
pub(crate) async fn proxy_process_with_env(
    file: &std::path::Path,
    admin_port: u16,
    env: &[(&str, &str)],
) -> (KillOnDrop, std::net::SocketAddr) {
    proxy_process_at(file, format!("127.0.0.1:{admin_port}").parse().unwrap(), env).await
}

/// [`proxy_process_with_env`] for a proxy whose admin API is at `admin`.
pub(crate) async fn proxy_process_at(
    file: &std::path::Path,
    admin: std::net::SocketAddr,
    env: &[(&str, &str)],
) -> (KillOnDrop, std::net::SocketAddr) {
    let process = KillOnDrop(
        std::process::Command::new(env!("CARGO_BIN_EXE_pgcutover"))
            .args(["proxy", "-c", file.to_str().unwrap()])
            .envs(env.iter().copied())
            .stderr(std::process::Stdio::null())
            .spawn()
            .unwrap(),
    );
    let mut process = process;
    for _ in 0..200 {
        // Exited: it could not bind (another test's process took the port), and
        // whatever answers there is not this proxy.
        if let Some(status) = process.0.try_wait().unwrap() {
            panic!(
                "the proxy with {} exited at start ({status}): a port was taken?",
                file.display()
            );
        }
        if tokio::net::TcpStream::connect(admin).await.is_ok() {
            // A proxy that answers its admin port has bound its listener too.
            tokio::time::sleep(Duration::from_millis(50)).await;
            if process.0.try_wait().unwrap().is_none() {
                return (process, admin);
            }
        }
        tokio::time::sleep(Duration::from_millis(25)).await;
    }
    panic!("the proxy with {} did not start", file.display());
}

/// A child process killed when the test ends, however it ends.
pub(crate) struct KillOnDrop(pub std::process::Child);

impl Drop for KillOnDrop {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}
