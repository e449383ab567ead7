//! The switchover's guarantees when operators and processes misbehave: two runs at
//! once, a prepared transaction waiting on blue, a green sequence already ahead, a
//! proxy restarted after the run and one the run never drove. Blue 15 → green 17.

use crate::support::*;
use crate::switchover::{
    assert_all_on, assert_fenced, count, post_switchover_completes, proxy_process, proxy_process_with_env, replicated,
    replicated_between, run_switchover, serial_writer,
};
use pgcutover_api::{Direction, Outcome, ProxyControl, Side};
use pgcutover_orchestrator as orch;
use pgcutover_proxy::local::LocalProxy;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::Duration;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn guardrails_then_one_switchover_at_a_time_and_sequences_never_backwards() {
    let (blue, green, config, targets) = replicated(false, "").await;
    let proxy = RunningProxy::start(config.clone()).await;
    let proxies: Vec<Arc<dyn ProxyControl>> = vec![Arc::new(LocalProxy(proxy.control.clone()))];
    let timeout = Duration::from_secs(20);

    // A proxy whose holds end sooner than the run's deadline would resume its
    // clients on fenced blue mid-run: refused, naming it.
    let mut short = config.clone();
    short.switchover.timeout = pgcutover_config::HumanDuration(Duration::from_secs(2));
    let short = RunningProxy::start(short).await;
    let both: Vec<Arc<dyn ProxyControl>> = vec![proxies[0].clone(), Arc::new(LocalProxy(short.control.clone()))];
    let report = run_switchover(&targets, &config, &both, Direction::Forward, timeout).await;
    assert_eq!(report.outcome, Outcome::Refused, "{report:?}");
    let reason = report.reason.clone().unwrap_or_default();
    assert!(reason.contains("resumes a hold by itself after 2.0s"), "{reason}");
    drop(short);

    // A proxy an operator holds would resume by its own timer mid-run: refused.
    assert!(proxy.control.hold());
    let report = run_switchover(&targets, &config, &proxies, Direction::Forward, timeout).await;
    assert_eq!(report.outcome, Outcome::Refused, "{report:?}");
    assert!(
        report.reason.as_deref().unwrap_or_default().contains("held for"),
        "{report:?}"
    );
    proxy.control.resume();

    // A session on a database that is not replicated would land on green's
    // unrelated database of that name: refused, named.
    let other = connect(&proxy.conninfo(SCRAM_USER, SCRAM_PASSWORD, "postgres"))
        .await
        .unwrap();
    other.simple_query("select 1").await.unwrap();
    let report = run_switchover(&targets, &config, &proxies, Direction::Forward, timeout).await;
    assert_eq!(report.outcome, Outcome::Refused, "{report:?}");
    let reason = report.reason.clone().unwrap_or_default();
    assert!(reason.contains("not replicated: 1 on database postgres"), "{reason}");
    drop(other);
    wait_for("the session on postgres to end", Duration::from_secs(10), || {
        !proxy.control.status_reply().databases.contains_key("postgres")
    })
    .await;

    // A prepared transaction would commit past the fence: refused, named, nothing changed.
    blue.sql("begin; insert into items (note) values ('2pc'); prepare transaction 'pgcutover_test';");
    let report = run_switchover(&targets, &config, &proxies, Direction::Forward, timeout).await;
    assert_eq!(report.outcome, Outcome::Refused, "{report:?}");
    let reason = report.reason.clone().unwrap_or_default();
    assert!(
        reason.contains("prepared transaction")
            && reason.contains("'pgcutover_test'")
            && reason.contains("COMMIT PREPARED"),
        "{reason}"
    );
    assert_eq!(blue.sql("show default_transaction_read_only"), "off");
    blue.sql("commit prepared 'pgcutover_test'");

    // Green's sequence is ahead of blue's (writes made there, an earlier run): the
    // sync must not move it back.
    green.sql("select setval('items_id_seq', 1000000)");

    let stop = Arc::new(AtomicBool::new(false));
    let writer = serial_writer(proxy.conninfo(SCRAM_USER, SCRAM_PASSWORD, DB), stop.clone());
    tokio::time::sleep(Duration::from_secs(1)).await;
    let (a, b) = tokio::join!(
        run_switchover(&targets, &config, &proxies, Direction::Forward, timeout),
        run_switchover(&targets, &config, &proxies, Direction::Forward, timeout),
    );
    let (won, lost) = if a.outcome == Outcome::Completed {
        (a, b)
    } else {
        (b, a)
    };
    assert_eq!(won.outcome, Outcome::Completed, "{won:?}");
    assert_eq!(lost.outcome, Outcome::Refused, "{lost:?}");
    let reason = lost.reason.clone().unwrap_or_default();
    assert!(reason.contains("another switchover is running"), "{reason}");
    tokio::time::sleep(Duration::from_millis(500)).await;
    stop.store(true, Ordering::Relaxed);
    let (acked, errors) = writer.await.unwrap();

    // The loser undid nothing of the winner's: blue fenced, every acknowledged write on green.
    assert!(errors.is_empty(), "{errors:?}");
    assert_all_on(&green, &acked);
    assert_fenced(&blue).await;
    let c = connect(&proxy.conninfo(SCRAM_USER, SCRAM_PASSWORD, DB)).await.unwrap();
    let next: i32 = c
        .query_one("insert into items (note) values ('after') returning id", &[])
        .await
        .unwrap()
        .get(0);
    assert!(next > 1_000_000, "green's sequence went backwards: next id {next}");

    // The journal on both sides: clients belong on green, the run completed, nobody runs.
    let journal = orch::journal::current(&targets, Duration::from_secs(5)).await.unwrap();
    assert_eq!(journal.route(), (Side::Green, 1), "{journal:?}");
    assert!(!journal.running, "{journal:?}");
    let last = journal.last.unwrap();
    assert_eq!(last.outcome.as_deref(), Some("completed"), "{last:?}");
    for db in [&blue, &green] {
        assert_eq!(
            db.sql(
                "select route || ' ' || epoch || ' ' || outcome from pgcutover.journal order by version desc limit 1"
            ),
            "green 1 completed"
        );
    }
}

/// A sequence the run's role cannot read looks unused in `pg_sequences`; skipping
/// it would leave green's value behind. The preflight refuses, naming it and the
/// grant, and passes that guardrail once the grant is made.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_sequence_the_run_cannot_read_refuses_the_switchover() {
    let (blue, _green, mut config, _) = replicated(false, "").await;
    blue.sql(
        "set pgcutover.internal = on;
         create sequence private_ids; select nextval('private_ids');
         revoke all on sequence private_ids from public;
         create role runner login password 'runner-secret';
         grant usage on schema pgcutover to runner;
         grant all on all tables in schema pgcutover to runner; grant all on all sequences in schema pgcutover to runner;",
    );
    config.blue.url.user = Some("runner".into());
    config.blue.url.password = Some("runner-secret".into());
    let targets = orch::Targets::from_config(&config).unwrap();
    let proxy = RunningProxy::start(config.clone()).await;
    let proxies: Vec<Arc<dyn ProxyControl>> = vec![Arc::new(LocalProxy(proxy.control.clone()))];
    let timeout = Duration::from_secs(20);
    let report = run_switchover(&targets, &config, &proxies, Direction::Forward, timeout).await;
    assert_eq!(report.outcome, Outcome::Refused, "{report:?}");
    let reason = report.reason.clone().unwrap_or_default();
    assert!(
        reason.contains("blue database app: the switchover's role lacks SELECT, USAGE on sequences public.private_ids")
            && reason.contains("GRANT SELECT ON ALL SEQUENCES IN SCHEMA"),
        "{reason}"
    );
    blue.sql("grant select on sequence private_ids to runner");
    let report = run_switchover(&targets, &config, &proxies, Direction::Forward, timeout).await;
    let reason = report.reason.clone().unwrap_or_default();
    assert!(!reason.contains("sequences"), "{reason}");
}

/// With `unreplicated_sessions = "close"` a session on a database outside
/// `[replication] databases` does not refuse the run: the flip closes it with a
/// FATAL naming the database, the report lists it as closed by policy, and the
/// outcome is `completed`.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sessions_on_an_unreplicated_database_are_closed_at_the_flip_when_the_proxy_says_so() {
    let (_blue, green, config, targets) = replicated(false, "unreplicated_sessions = \"close\"").await;
    let proxy = RunningProxy::start(config.clone()).await;
    let proxies: Vec<Arc<dyn ProxyControl>> = vec![Arc::new(LocalProxy(proxy.control.clone()))];
    let (other, _, other_conn) = connect_listening(&proxy.conninfo(SCRAM_USER, SCRAM_PASSWORD, "postgres")).await;
    other.simple_query("select 1").await.unwrap();
    let app = connect(&proxy.conninfo(SCRAM_USER, SCRAM_PASSWORD, DB)).await.unwrap();
    app.simple_query("select 1").await.unwrap();
    let report = run_switchover(&targets, &config, &proxies, Direction::Forward, Duration::from_secs(20)).await;
    assert_eq!(report.outcome, Outcome::Completed, "{report:?}");
    let closed: Vec<_> = report
        .unmoved_sessions
        .iter()
        .map(|u| (&u.database[..], u.stayed, u.by_policy))
        .collect();
    assert_eq!(closed, [("postgres", false, true)], "{report:?}");
    let message = crate::cutover::closed_with_57p01(other_conn).await;
    assert!(message.contains("database \"postgres\" is not replicated"), "{message}");
    let server: String = app
        .query_one("select current_setting('server_version_num')", &[])
        .await
        .unwrap()
        .get(0);
    assert_eq!(
        server,
        green.sql("show server_version_num"),
        "the app session moved to green"
    );
}

/// A proxy restarted after a switchover serves on green at once; a proxy the run
/// never drove (not among its peers) follows the journal to green by itself.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_restarted_proxy_and_a_proxy_the_run_missed_both_serve_on_green() {
    let (blue, green, _, _) = replicated(false, "").await;
    let (ports, a_file, b_file) = two_proxy_configs(&blue, &green);
    let version = |port: u16| async move {
        let c = connect(&scram_conninfo(port)).await.unwrap();
        let v: String = c.query_one("show server_version_num", &[]).await.unwrap().get(0);
        v
    };
    let (a, a_admin) = proxy_process(&a_file, ports[1]).await;
    let (_b, _) = proxy_process(&b_file, ports[3]).await;
    assert!(version(ports[2]).await.starts_with("15"));

    post_switchover_completes(a_admin).await;

    // A, killed and started again with the same config: on green from its first client.
    drop(a);
    let (_a, _) = proxy_process(&a_file, ports[1]).await;
    assert!(version(ports[0]).await.starts_with("17"));
    let c = connect(&scram_conninfo(ports[0])).await.unwrap();
    c.execute("insert into items (note) values ('through a restarted proxy')", &[])
        .await
        .expect("the restarted proxy writes to green");

    // B was not driven by the run; it reads the journal every 10 s.
    let deadline = tokio::time::Instant::now() + Duration::from_secs(30);
    while !version(ports[2]).await.starts_with("17") {
        assert!(
            tokio::time::Instant::now() < deadline,
            "proxy B never followed the journal to green"
        );
        tokio::time::sleep(Duration::from_millis(500)).await;
    }
    let c = connect(&scram_conninfo(ports[2])).await.unwrap();
    c.execute("insert into items (note) values ('through the missed proxy')", &[])
        .await
        .expect("the proxy that missed the run writes to green");
    assert_eq!(
        count(&green, "select count(*) from items where note like 'through%'"),
        2
    );

    // `pgcutover status` says where clients belong and how the last run ended.
    let out = pgcutover(&["status", "-c", a_file.to_str().unwrap()]).await;
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert!(
        stdout.contains("switchover: clients belong on green (epoch 1); last run")
            && stdout.contains("forward completed"),
        "{stdout}"
    );

    // `pgcutover unfence` on blue: refused while clients belong on green, then, with
    // --force, exactly the fence is lifted.
    let unfence = ["unfence", "--side", "blue", "-c", b_file.to_str().unwrap()];
    let out = pgcutover(&unfence).await;
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(
        !out.status.success() && stderr.contains("clients belong on green") && stderr.contains("--force"),
        "{stderr}"
    );
    assert_eq!(blue.sql("show default_transaction_read_only"), "on");
    let out = pgcutover(&[&unfence[..], &["--force"]].concat()).await;
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(out.status.success(), "{stderr}");
    assert!(stderr.contains("fence triggers dropped from"), "{stderr}");
    assert_eq!(blue.sql("show default_transaction_read_only"), "off");
    assert_eq!(
        blue.sql("select count(*) from pg_trigger where tgname = 'pgcutover_fence'"),
        "0"
    );
    blue.cluster
        .psql_as(
            SCRAM_USER,
            SCRAM_PASSWORD,
            DB,
            "insert into items (note) values ('blue unfenced')",
        )
        .expect("blue takes writes after unfence --force");
}

/// Ctrl-C on `pgcutover switchover` while clients are held: the run rolls back at
/// its next step (it does not die with the proxy held and blue fenced), exits
/// non-zero, and the transaction it was draining commits on blue.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_interrupted_cli_run_rolls_back_and_leaves_blue_writable() {
    let (blue, green, _, _) = replicated(false, "").await;
    let (port, admin) = (pg_harness::free_port(), pg_harness::free_port());
    let file = blue.proxy_config_file(
        &green,
        "pgcutover.toml",
        port,
        admin,
        "reverse_replication = false\ndrain_timeout = \"20s\"",
    );
    let (_proxy, admin_addr) = proxy_process(&file, admin).await;
    let conninfo = scram_conninfo(port);
    // A transaction open through the proxy keeps the run in Drain.
    let client = connect(&conninfo).await.unwrap();
    client
        .batch_execute("begin; insert into items (note) values ('open at the interrupt')")
        .await
        .unwrap();

    let cli = std::process::Command::new(env!("CARGO_BIN_EXE_pgcutover"))
        .args(["switchover", "--timeout", "30s", "-c", file.to_str().unwrap()])
        .stdout(std::process::Stdio::piped())
        .stderr(std::process::Stdio::piped())
        .spawn()
        .unwrap();
    let deadline = tokio::time::Instant::now() + Duration::from_secs(20);
    loop {
        let (_, status) = http(admin_addr, "GET", "/status", None, "").await;
        if status["held_ms"].is_number() {
            break;
        }
        assert!(tokio::time::Instant::now() < deadline, "the run never held: {status}");
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    let kill = std::process::Command::new("kill")
        .args(["-INT", &cli.id().to_string()])
        .status()
        .unwrap();
    assert!(kill.success());
    // The drained transaction ends; the run's next step sees the interrupt.
    tokio::time::sleep(Duration::from_millis(300)).await;
    client
        .batch_execute("commit")
        .await
        .expect("the held transaction commits");
    let out = rolled_back(cli).await;
    assert!(out.contains("interrupted in phase drain"), "{out}");
    let (_, status) = http(admin_addr, "GET", "/status", None, "").await;
    assert_eq!(
        (status["route"].as_str(), status["held_ms"].is_null()),
        (Some("blue"), true),
        "{status}"
    );
    assert_eq!(blue.sql("show default_transaction_read_only"), "off");
    client
        .execute("insert into items (note) values ('after the interrupt')", &[])
        .await
        .expect("blue takes writes after the rollback");
    assert_eq!(
        count(
            &blue,
            "select count(*) from items where note in ('open at the interrupt', 'after the interrupt')"
        ),
        2
    );
}

/// What a `kill -9` test leaves to check.
struct Killed {
    blue: Db,
    green: Db,
    file: std::path::PathBuf,
    admin: std::net::SocketAddr,
    bench: ToolRun,
    /// The journal's undo log when the run was killed.
    undo: String,
    _proxy: crate::switchover::KillOnDrop,
}

/// Under pgbench through a proxy process, `pgcutover switchover` is killed with
/// SIGKILL in `phase` (held there by the test fault point). Returns once pgbench
/// has ended and the proxy has recovered the run by itself.
async fn kill_nine_in(phase: &str) -> Killed {
    let (blue, green, _, _) = replicated(false, "").await;
    let (port, admin) = (pg_harness::free_port(), pg_harness::free_port());
    let file = blue.proxy_config_file(&green, "pgcutover.toml", port, admin, "reverse_replication = false");
    let (proxy, admin_addr) = proxy_process(&file, admin).await;
    let port_arg = port.to_string();
    let bench = tokio::spawn(async move {
        let args = [
            "-n",
            "-M",
            "prepared",
            "-c",
            "4",
            "-j",
            "2",
            "-T",
            "24",
            "-h",
            "127.0.0.1",
            "-p",
            &port_arg,
            "-U",
            SCRAM_USER,
            DB,
        ];
        client_tool(pg_harness::pgbench_path(), SCRAM_PASSWORD, &args).await
    });
    tokio::time::sleep(Duration::from_secs(2)).await;
    let mut cli = cli_paused_at(&file, phase, admin_addr).await;
    // The run's row, written before it changes anything (in Preflight the proxies
    // hear of the phase before the lease is taken).
    let recorded = match phase {
        "preflight" => "preflight",
        "resume" => "flip",
        _ => "hold",
    };
    wait_for("the run's journal row", Duration::from_secs(10), || {
        blue.sql(&format!(
            "select count(*) from pgcutover.journal where outcome is null and phase = '{recorded}'"
        )) != "0"
    })
    .await;
    let undo = blue.sql("select array_to_string(undo, ',') from pgcutover.journal order by version desc limit 1");
    // The proxies are leased from the run's first prepare, held from its hold.
    let (leased, held) = (phase != "preflight", !matches!(phase, "preflight" | "hold"));
    if leased {
        // The run's lease: nobody else may resume or route the clients it holds.
        for (path, body) in [
            ("/resume", ""),
            ("/route", "{\"target\":\"blue\",\"force\":true}"),
            ("/hold", ""),
        ] {
            let (code, reply) = http(admin_addr, "POST", path, Some(ADMIN_TOKEN), body).await;
            let message = reply["error"].as_str().unwrap_or_default();
            assert!(
                code == 409 && message.contains("is driving this proxy"),
                "{path}: {code} {reply}"
            );
        }
    }
    let (_, status) = http(admin_addr, "GET", "/status", None, "").await;
    assert_eq!(status["held_ms"].is_number(), held, "{phase}: {status}");
    cli.kill().unwrap();
    cli.wait().unwrap();
    let bench = bench.await.unwrap();
    Killed {
        blue,
        green,
        file,
        admin: admin_addr,
        bench,
        undo,
        _proxy: proxy,
    }
}

/// pgbench saw no failure, and `pgcutover status` names the dead run, the last
/// phase its journal recorded (the journal is written at the hold and at the commit
/// point, not inside the hold), and how the recovery ended it.
async fn assert_recovered(k: &Killed, recorded: &str, outcome: &str) {
    assert!(k.bench.success, "{}", k.bench.output);
    assert!(
        k.bench.output.contains("number of failed transactions: 0"),
        "{}",
        k.bench.output
    );
    let (_, status) = http(k.admin, "GET", "/status", None, "").await;
    assert_eq!(
        (status["phase"].as_str(), status["held_ms"].is_null()),
        (Some("serving"), true),
        "{status}"
    );
    let out = pgcutover(&["status", "-c", k.file.to_str().unwrap()]).await;
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert!(
        stdout.contains(&format!("forward {outcome}"))
            && stdout.contains(&format!("died in phase {recorded} (recovered)")),
        "{stdout}"
    );
}

/// Killed inside the hold, after the fence: the proxy rolls the dead run back by
/// itself before its hold expires; clients only waited, blue takes writes again, and
/// the next switchover completes.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_run_killed_after_the_fence_is_rolled_back_by_the_proxy() {
    let k = kill_nine_in("catch_up").await;
    assert_recovered(&k, "hold", "rolled_back").await;
    assert_eq!(k.undo, format!("resume||,unfence|blue|{DB}"));
    let (_, status) = http(k.admin, "GET", "/status", None, "").await;
    assert_eq!(status["route"], "blue", "{status}");
    assert_eq!(k.blue.sql("show default_transaction_read_only"), "off");
    let processed = pgbench_processed(&k.bench.output) as i64;
    assert_eq!(count(&k.blue, "select count(*) from pgbench_history"), processed);
    connect(&k.blue.cluster.conninfo(SCRAM_USER, SCRAM_PASSWORD, DB))
        .await
        .unwrap()
        .execute("insert into items (note) values ('blue is unfenced')", &[])
        .await
        .expect("blue takes writes after the recovery");
    post_switchover_completes(k.admin).await;
}

/// Killed in each other phase before the commit point (the journal has recorded
/// the hold): rolled back by the proxy the same way, with no failed transaction and
/// every one on blue.
async fn assert_killed_before_the_commit_point_rolls_back(phase: &str) {
    let k = kill_nine_in(phase).await;
    let recorded = if phase == "preflight" { "preflight" } else { "hold" };
    assert_recovered(&k, recorded, "rolled_back").await;
    // The journal listed, before the run made them, the changes its recovery undid.
    assert_eq!(k.undo, format!("resume||,unfence|blue|{DB}"), "{phase}");
    let (_, status) = http(k.admin, "GET", "/status", None, "").await;
    assert_eq!(status["route"], "blue", "{phase}: {status}");
    assert_eq!(k.blue.sql("show default_transaction_read_only"), "off", "{phase}");
    assert_eq!(
        k.blue
            .sql("select count(*) from pg_trigger where tgname = 'pgcutover_fence'"),
        "0",
        "{phase}"
    );
    let processed = pgbench_processed(&k.bench.output) as i64;
    assert_eq!(
        count(&k.blue, "select count(*) from pgbench_history"),
        processed,
        "{phase}"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_run_killed_in_preflight_or_entering_the_hold_is_rolled_back_by_the_proxy() {
    // "preflight": the lease taken, the proxies not yet leased; "hold": standbys
    // prepared and the proxies leased, nobody held yet.
    for phase in ["preflight", "hold"] {
        assert_killed_before_the_commit_point_rolls_back(phase).await;
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_run_killed_draining_or_entering_the_fence_is_rolled_back_by_the_proxy() {
    // The fault point pauses on entering a phase: "drain" is held and not yet
    // drained, "fence" drained and not yet fenced.
    for phase in ["drain", "fence"] {
        assert_killed_before_the_commit_point_rolls_back(phase).await;
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_run_killed_syncing_sequences_or_entering_the_flip_is_rolled_back_by_the_proxy() {
    for phase in ["sync_sequences", "flip"] {
        assert_killed_before_the_commit_point_rolls_back(phase).await;
    }
}

/// Killed past the commit point, with every proxy routed but still held: the proxy
/// finishes the dead run by itself; clients go on on green, the forward subscription
/// is retired and blue stays fenced.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_run_killed_past_the_commit_point_is_finished_by_the_proxy() {
    let k = kill_nine_in("resume").await;
    assert_recovered(&k, "flip", "completed").await;
    assert_eq!(k.undo, "", "past the commit point nothing is to be undone");
    let (_, status) = http(k.admin, "GET", "/status", None, "").await;
    assert_eq!(status["route"], "green", "{status}");
    let processed = pgbench_processed(&k.bench.output) as i64;
    assert_eq!(count(&k.green, "select count(*) from pgbench_history"), processed);
    // The forward subscription is retired with its slot: nothing keeps WAL on blue.
    assert_eq!(k.green.sql("select count(*) from pg_subscription"), "0");
    assert_eq!(k.blue.sql("select count(*) from pg_replication_slots"), "0");
    assert_fenced(&k.blue).await;
}

/// A session whose move fails (its role is missing on green): the outcome is not
/// `completed`, and the report names the session.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_session_that_fails_to_move_makes_the_outcome_incomplete_and_is_named() {
    let (_blue, green, config, targets) = replicated(false, "").await;
    green
        .cluster
        .psql("postgres", &format!("drop role {PLAIN_USER}"))
        .unwrap();
    let proxy = RunningProxy::start(config.clone()).await;
    let proxies: Vec<Arc<dyn ProxyControl>> = vec![Arc::new(LocalProxy(proxy.control.clone()))];
    let lost = connect(&proxy.conninfo(PLAIN_USER, PLAIN_PASSWORD, DB)).await.unwrap();
    lost.simple_query("select 1").await.unwrap();
    let report = run_switchover(&targets, &config, &proxies, Direction::Forward, Duration::from_secs(20)).await;
    assert_eq!(report.outcome, Outcome::Incomplete, "{report:?}");
    assert!(!report.ok());
    let [u] = report.unmoved_sessions.as_slice() else {
        panic!("one unmoved session: {report:?}")
    };
    assert_eq!(
        (u.proxy.as_str(), u.user.as_str(), u.stayed),
        ("this proxy", PLAIN_USER, false),
        "{u:?}"
    );
    let text = orch::switchover::render(&report);
    assert!(
        text.contains(&format!("not moved: this proxy user {PLAIN_USER} database {DB}")),
        "{text}"
    );
    let e = lost.simple_query("select 1").await.unwrap_err();
    assert!(
        e.to_string().contains("could not move to the green server") || e.is_closed(),
        "{e}"
    );
}

/// A superuser steps past the fence's triggers (`session_replication_role =
/// replica`) and commits on blue after the fence: the proof slot sees it before the
/// commit point, the run rolls back naming the table, and the write stays on blue,
/// which serves again.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_write_past_the_fence_is_proven_and_rolls_the_switchover_back() {
    let (blue, green, _, _) = replicated(false, "").await;
    let (port, admin) = (pg_harness::free_port(), pg_harness::free_port());
    let file = blue.proxy_config_file(&green, "pgcutover.toml", port, admin, "reverse_replication = false");
    let (_proxy, admin_addr) = proxy_process(&file, admin).await;
    let cli = cli_paused_at(&file, "catch_up:3", admin_addr).await;
    // The fence refuses an ordinary write; a superuser replica session passes it.
    let refused = blue
        .cluster
        .psql_as(
            SCRAM_USER,
            SCRAM_PASSWORD,
            DB,
            "insert into items (note) values ('refused')",
        )
        .unwrap_err();
    assert!(refused.to_string().contains("read-only"), "{refused}");
    blue.sql(
        "set default_transaction_read_only = off; set session_replication_role = replica;
         insert into items (note) values ('past the fence');",
    );
    let out = rolled_back(cli).await;
    assert!(
        out.contains("committed on blue database app after the fence") && out.contains("public.items"),
        "{out}"
    );
    let (_, status) = http(admin_addr, "GET", "/status", None, "").await;
    assert_eq!(status["route"], "blue", "{status}");
    assert_eq!(blue.sql("show default_transaction_read_only"), "off");
    assert_eq!(
        count(&blue, "select count(*) from items where note = 'past the fence'"),
        1
    );
    // And without the bypass, the same switchover completes and says what it checked.
    let report = post_switchover_completes(admin_addr).await;
    let proof = report["cut_proof"][0].as_str().unwrap_or_default();
    assert!(
        proof.starts_with("app: nothing committed on blue after the fence but pgcutover's own"),
        "{report}"
    );
}

/// `pgcutover switchover -c file` as a process, paused by the test fault point at
/// `pause` (`phase[:seconds]`); returns once the proxy at `admin` shows that phase.
// The child is handed to the caller, which waits for it (or kills it).
#[allow(clippy::zombie_processes)]
async fn cli_paused_at(file: &std::path::Path, pause: &str, admin: std::net::SocketAddr) -> std::process::Child {
    let mut cli = std::process::Command::new(env!("CARGO_BIN_EXE_pgcutover"))
        .args(["switchover", "--timeout", "30s", "-c", file.to_str().unwrap()])
        .env("PGCUTOVER_TEST_PAUSE_AT", pause)
        .stdout(std::process::Stdio::piped())
        .stderr(std::process::Stdio::piped())
        .spawn()
        .unwrap();
    let phase = pause.split(':').next().unwrap();
    let deadline = tokio::time::Instant::now() + Duration::from_secs(20);
    loop {
        let (_, status) = http(admin, "GET", "/status", None, "").await;
        if status["phase"] == phase {
            return cli;
        }
        if tokio::time::Instant::now() >= deadline {
            let _ = cli.kill();
            let _ = cli.wait();
            panic!("the run never reached {phase}: {status}");
        }
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
}

/// DDL on blue after the preflight (here while the run holds, before its fence)
/// would reach green as changes it cannot apply: the fence re-checks drift and the
/// run rolls back, naming the statement.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn ddl_after_the_preflight_is_caught_at_the_fence() {
    let (blue, green, _, _) = replicated(false, "").await;
    let (port, admin) = (pg_harness::free_port(), pg_harness::free_port());
    let file = blue.proxy_config_file(&green, "pgcutover.toml", port, admin, "reverse_replication = false");
    let (_proxy, admin_addr) = proxy_process(&file, admin).await;
    let cli = cli_paused_at(&file, "fence:2", admin_addr).await;
    blue.sql("alter table items add column late text");
    let out = rolled_back(cli).await;
    assert!(
        out.contains("DDL statement(s) ran on blue") && out.contains("alter table items add column late text"),
        "{out}"
    );
    assert_eq!(blue.sql("show default_transaction_read_only"), "off");
}

/// Where `ALTER SYSTEM` is not available (RDS and Aurora; here PostgreSQL 17's
/// `allow_alter_system = off` on green, fenced by the rollback), the triggers fence
/// alone: the rollback completes under load with nothing lost, green refuses writes
/// with 25006 though its read-only default stays off, and the proof stands.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn without_alter_system_the_triggers_fence_alone() {
    let green = Db::pg17_with(&[("allow_alter_system", "off")]);
    let (blue, green, config, targets) = replicated_between(Db::pg15(), green, true, "").await;
    let proxy = RunningProxy::start(config.clone()).await;
    let proxies: Vec<Arc<dyn ProxyControl>> = vec![Arc::new(LocalProxy(proxy.control.clone()))];
    let timeout = Duration::from_secs(20);
    let report = run_switchover(&targets, &config, &proxies, Direction::Forward, timeout).await;
    assert_eq!(report.outcome, Outcome::Completed, "{report:?}");
    let stop = Arc::new(AtomicBool::new(false));
    let writer = serial_writer(proxy.conninfo(SCRAM_USER, SCRAM_PASSWORD, DB), stop.clone());
    let bypass = serial_writer(green.cluster.conninfo(SCRAM_USER, SCRAM_PASSWORD, DB), stop.clone());
    tokio::time::sleep(Duration::from_secs(1)).await;
    let report = run_switchover(&targets, &config, &proxies, Direction::Rollback, timeout).await;
    assert_eq!(report.outcome, Outcome::Completed, "{report:?}");
    assert!(
        report.cut_proof[0].contains("nothing committed on green after the fence"),
        "{report:?}"
    );
    tokio::time::sleep(Duration::from_millis(500)).await;
    stop.store(true, Ordering::Relaxed);
    let (acked, errors) = writer.await.unwrap();
    let (bypass_acked, bypass_errors) = bypass.await.unwrap();
    assert!(errors.is_empty(), "{errors:?}");
    assert!(!bypass_errors.is_empty(), "a write to green after the fence must fail");
    assert_all_on(&blue, &[acked, bypass_acked].concat());
    assert_eq!(green.sql("show default_transaction_read_only"), "off");
    let refused = assert_fenced(&green).await;
    let message = refused.as_db_error().unwrap().message();
    assert!(message.contains("is fenced"), "{message}");
}

/// SIGTERM to the proxy running `POST /switchover`, mid-hold: it waits for the run,
/// which finishes and moves its peer's clients to green; nothing is left held.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_proxy_stopped_while_it_runs_a_switchover_lets_the_run_finish() {
    let (blue, green, _, targets) = replicated(false, "").await;
    let (ports, a_file, b_file) = two_proxy_configs(&blue, &green);
    let (_b, b_admin) = proxy_process(&b_file, ports[3]).await;
    let peers = format!("[\"http://{b_admin}\"]");
    let (mut a, a_admin) = proxy_process_with_env(
        &a_file,
        ports[1],
        &[
            ("PGCUTOVER_PROXY_PEERS", &peers),
            ("PGCUTOVER_TEST_PAUSE_AT", "catch_up:3"),
        ],
    )
    .await;
    let through_b = scram_conninfo(ports[2]);
    let stop = Arc::new(AtomicBool::new(false));
    let writer = serial_writer(through_b, stop.clone());
    tokio::time::sleep(Duration::from_secs(1)).await;
    let post = tokio::spawn(async move {
        http(
            a_admin,
            "POST",
            "/switchover",
            Some(ADMIN_TOKEN),
            "{\"timeout\": \"20s\"}",
        )
        .await
    });
    let deadline = tokio::time::Instant::now() + Duration::from_secs(20);
    loop {
        let (_, status) = http(b_admin, "GET", "/status", None, "").await;
        if status["phase"] == "catch_up" {
            break;
        }
        assert!(
            tokio::time::Instant::now() < deadline,
            "the run never reached catch_up: {status}"
        );
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    let term = std::process::Command::new("kill")
        .args(["-TERM", &a.0.id().to_string()])
        .status()
        .unwrap();
    assert!(term.success());
    let exited = tokio::task::spawn_blocking(move || {
        let status = a.0.wait();
        (a, status)
    });
    let (_a, status) = tokio::time::timeout(Duration::from_secs(60), exited)
        .await
        .unwrap()
        .unwrap();
    assert!(status.unwrap().success());
    post.abort();
    tokio::time::sleep(Duration::from_millis(500)).await;
    stop.store(true, Ordering::Relaxed);
    let (acked, errors) = writer.await.unwrap();
    assert!(errors.is_empty(), "the peer's client saw an error: {errors:?}");
    assert_all_on(&green, &acked);
    let (_, status) = http(b_admin, "GET", "/status", None, "").await;
    assert_eq!(
        (status["route"].as_str(), status["held_ms"].is_null()),
        (Some("green"), true),
        "{status}"
    );
    let journal = orch::journal::current(&targets, Duration::from_secs(5)).await.unwrap();
    let last = journal.last.unwrap();
    assert_eq!(last.outcome.as_deref(), Some("completed"), "{last:?}");
}

/// Waits for a CLI run that must end rolled back (exit non-zero); returns what it
/// printed, standard output then standard error.
async fn rolled_back(cli: std::process::Child) -> String {
    let out = tokio::task::spawn_blocking(move || cli.wait_with_output().unwrap())
        .await
        .unwrap();
    let text = format!(
        "{}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    assert!(!out.status.success(), "{text}");
    assert!(text.contains("switchover (blue -> green) rolled_back"), "{text}");
    text
}

/// Runs the `pgcutover` binary with `args` to its end, off the runtime thread.
async fn pgcutover(args: &[&str]) -> std::process::Output {
    let args: Vec<String> = args.iter().map(|a| a.to_string()).collect();
    tokio::task::spawn_blocking(move || {
        std::process::Command::new(env!("CARGO_BIN_EXE_pgcutover"))
            .args(args)
            .output()
            .unwrap()
    })
    .await
    .unwrap()
}

/// Configs `a.toml` and `b.toml` for two proxy processes switching `blue` to
/// `green` without reverse replication, on four free ports: A listens on
/// `ports[0]` (admin `ports[1]`), B on `ports[2]` (admin `ports[3]`).
fn two_proxy_configs(blue: &Db, green: &Db) -> (Vec<u16>, std::path::PathBuf, std::path::PathBuf) {
    let ports: Vec<u16> = (0..4).map(|_| pg_harness::free_port()).collect();
    let file = |name: &str, listen: u16, admin: u16| {
        blue.proxy_config_file(green, name, listen, admin, "reverse_replication = false")
    };
    let (a, b) = (file("a.toml", ports[0], ports[1]), file("b.toml", ports[2], ports[3]));
    (ports, a, b)
}
