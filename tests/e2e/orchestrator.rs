//! The orchestrator against real servers: `check`, `replicate` (copy method 15 → 17,
//! clone method 15 → 15 from a pg_basebackup), `status` with DDL drift, `verify`, a
//! re-run after the binary is killed mid-copy, and bad input. A bounded writer runs on
//! blue while replication is set up; every row it committed must be on green.

use crate::support::{connect, Scratch};
use pg_harness::{Binaries, Cluster, ClusterOptions, SUPERUSER, SUPERUSER_PASSWORD};
use pgcutover_config::Config;
use pgcutover_orchestrator as orch;
use std::path::PathBuf;
use std::process::Command;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

const DB: &str = "app";

/// Every kind of key and column the issue names, and one table without a key.
const SCHEMA: &str = "
CREATE TABLE accounts (id serial PRIMARY KEY, name text NOT NULL, balance numeric(12,2) NOT NULL DEFAULT 0);
CREATE TABLE events (id bigserial PRIMARY KEY, account_id int, payload jsonb, tags text[], blob bytea,
                     at timestamptz NOT NULL DEFAULT now());
CREATE TABLE items (id bigint GENERATED ALWAYS AS IDENTITY PRIMARY KEY, sku text UNIQUE, price numeric);
CREATE TABLE docs (id uuid PRIMARY KEY DEFAULT gen_random_uuid(), title text);
CREATE TABLE order_lines (order_id int, line int, qty int, PRIMARY KEY (order_id, line));
CREATE TABLE measurements (id bigint, day date NOT NULL, value float8, PRIMARY KEY (id, day)) PARTITION BY RANGE (day);
CREATE TABLE measurements_2025 PARTITION OF measurements FOR VALUES FROM ('2025-01-01') TO ('2026-01-01');
CREATE TABLE measurements_2026 PARTITION OF measurements FOR VALUES FROM ('2026-01-01') TO ('2027-01-01');
CREATE TABLE audit (at timestamptz NOT NULL DEFAULT now(), note text);
INSERT INTO accounts (name, balance) SELECT 'Zoë ' || g || ' — 東京 🚀', g * 1.25 FROM generate_series(1, 200) g;
INSERT INTO events (account_id, payload, tags, blob)
  SELECT g % 200 + 1, jsonb_build_object('n', g, 'ü', 'ß'), ARRAY['a' || g, 'b'], decode(md5(g::text), 'hex')
  FROM generate_series(1, 3000) g;
INSERT INTO items (sku, price) SELECT 'sku-' || g, g / 7.0 FROM generate_series(1, 500) g;
INSERT INTO docs (title) SELECT 'doc ' || g FROM generate_series(1, 300) g;
INSERT INTO order_lines SELECT o, l, o * l FROM generate_series(1, 100) o, generate_series(1, 5) l;
INSERT INTO measurements SELECT g, DATE '2025-06-01' + (g % 400), g * 0.5 FROM generate_series(1, 2000) g;
INSERT INTO audit (note) SELECT 'note ' || g FROM generate_series(1, 100) g;
";

fn pgcutover() -> Command {
    Command::new(env!("CARGO_BIN_EXE_pgcutover"))
}

/// `pgcutover check --json -c config`: it must exit 0 with no failing check.
/// Returns the checks.
fn checks_pass(config: &std::path::Path) -> Vec<serde_json::Value> {
    let out = pgcutover()
        .args(["check", "--json", "-c"])
        .arg(config)
        .output()
        .unwrap();
    let json: serde_json::Value = serde_json::from_slice(&out.stdout).expect("check --json prints JSON");
    let checks = json.as_array().unwrap().clone();
    let failed: Vec<_> = checks.iter().filter(|c| c["status"] == "fail").collect();
    assert!(out.status.success() && failed.is_empty(), "{failed:#?}");
    checks
}

fn url(c: &Cluster, db: &str) -> String {
    c.url(SUPERUSER, SUPERUSER_PASSWORD, db)
}

/// A config file for blue → green; `extra` is appended (e.g. a [replication] section).
fn write_config(dir: &Scratch, blue_url: &str, green_url: &str, extra: &str) -> (PathBuf, Config) {
    let text = format!(
        "[proxy]\nserver_tls_mode = \"disable\"\n[auth]\nauth_type = \"trust\"\n[blue]\nurl = \"{blue_url}\"\n[green]\nurl = \"{green_url}\"\n{extra}\n"
    );
    let path = dir.write("pgcutover.toml", &text);
    let config = Config::from_toml(&text, "test", &dir.0, std::iter::empty()).expect("valid config");
    (path, config)
}

fn blue_with_schema(bin: &Binaries) -> Cluster {
    let blue = Cluster::start(bin).expect("blue starts");
    blue.psql("postgres", &format!("CREATE DATABASE {DB}")).unwrap();
    blue.psql(DB, SCHEMA).unwrap();
    blue
}

/// Rows a bounded writer committed on blue.
struct Written {
    event_ids: Vec<i64>,
    doc_ids: Vec<String>,
}

/// Writes to blue (inserts, updates, deletes across the tables) until `stop` or 60 s or
/// 20 000 rounds, a few ms apart; returns what it committed.
fn start_writer(blue_url: String, stop: Arc<AtomicBool>) -> tokio::task::JoinHandle<Written> {
    tokio::spawn(async move {
        let c = connect(&blue_url).await.expect("writer connects");
        let deadline = Instant::now() + Duration::from_secs(60);
        let mut w = Written {
            event_ids: Vec::new(),
            doc_ids: Vec::new(),
        };
        for i in 0..20_000i32 {
            if stop.load(Ordering::Relaxed) || Instant::now() > deadline {
                break;
            }
            let id: i64 = c
                .query_one(
                    "INSERT INTO events (account_id, payload, tags, blob)
                     VALUES ($1, jsonb_build_object('w', $1::int), ARRAY['w'], '\\x00ff') RETURNING id",
                    &[&(i % 200 + 1)],
                )
                .await
                .expect("insert event")
                .get(0);
            w.event_ids.push(id);
            if i % 3 == 0 {
                c.execute(
                    "UPDATE accounts SET balance = balance + 1 WHERE id = $1",
                    &[&(i % 200 + 1)],
                )
                .await
                .expect("update account");
                let d: String = c
                    .query_one(
                        "INSERT INTO docs (title) VALUES ('written ' || $1::int) RETURNING id::text",
                        &[&i],
                    )
                    .await
                    .expect("insert doc")
                    .get(0);
                w.doc_ids.push(d);
            }
            if i % 5 == 0 {
                c.execute("INSERT INTO audit (note) VALUES ('w ' || $1::int)", &[&i])
                    .await
                    .expect("audit");
                c.execute(
                    "DELETE FROM order_lines WHERE order_id = $1 AND line = 1",
                    &[&(i % 100 + 1)],
                )
                .await
                .expect("delete line");
                c.execute(
                    "INSERT INTO measurements VALUES ($1, DATE '2026-02-01', 1.5) ON CONFLICT DO NOTHING",
                    &[&(100_000 + i64::from(i))],
                )
                .await
                .expect("insert measurement");
            }
            tokio::time::sleep(Duration::from_millis(3)).await;
        }
        w
    })
}

/// Bumps the sentinel on blue and waits until green shows it: logical replication
/// applies in commit order, so everything committed before is on green then.
async fn wait_caught_up(blue: &Cluster, green: &Cluster) {
    let token = blue
        .psql(
            DB,
            "UPDATE pgcutover.sentinel SET token = token + 1, written_at = now() RETURNING token",
        )
        .unwrap();
    let deadline = Instant::now() + Duration::from_secs(60);
    loop {
        let seen = green.psql(DB, "SELECT token FROM pgcutover.sentinel").unwrap();
        if seen == token {
            return;
        }
        assert!(
            Instant::now() < deadline,
            "green never caught up (token {seen} vs {token})"
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

/// Every row the writer committed is on green.
fn assert_written_rows_on_green(green: &Cluster, w: &Written) {
    assert!(
        w.event_ids.len() > 20,
        "the writer wrote too little: {}",
        w.event_ids.len()
    );
    let ids = w.event_ids.iter().map(|i| i.to_string()).collect::<Vec<_>>().join(",");
    let found = green
        .psql(DB, &format!("SELECT count(*) FROM events WHERE id IN ({ids})"))
        .unwrap();
    assert_eq!(
        found,
        w.event_ids.len().to_string(),
        "events written during setup missing on green"
    );
    let docs = w.doc_ids.iter().map(|d| format!("'{d}'")).collect::<Vec<_>>().join(",");
    if !docs.is_empty() {
        let found = green
            .psql(DB, &format!("SELECT count(*) FROM docs WHERE id IN ({docs})"))
            .unwrap();
        assert_eq!(
            found,
            w.doc_ids.len().to_string(),
            "docs written during setup missing on green"
        );
    }
}

fn quick_verify() -> orch::VerifyOptions {
    orch::VerifyOptions {
        jobs: 2,
        chunk_rows: 700,
        retries: 2,
        retry_delay: Duration::from_millis(300),
    }
}

#[tokio::test]
async fn orchestrator_check_fails_on_a_table_without_a_key_naming_the_fix_and_passes_once_fixed() {
    let blue = blue_with_schema(&Binaries::pg15().unwrap());
    let green = Cluster::start(&Binaries::pg17().unwrap()).unwrap();
    let dir = Scratch::new();
    let (config, _) = write_config(&dir, &url(&blue, DB), &url(&green, "postgres"), "");

    let out = pgcutover().args(["check", "-c"]).arg(&config).output().unwrap();
    let text = String::from_utf8_lossy(&out.stdout);
    assert!(!out.status.success(), "check passed with a keyless table:\n{text}");
    let line = text
        .lines()
        .position(|l| l.starts_with("FAIL") && l.contains("replica_identity"))
        .unwrap_or_else(|| panic!("no replica_identity failure:\n{text}"));
    let detail: String = text.lines().skip(line).take(3).collect::<Vec<_>>().join("\n");
    assert!(detail.contains("public.audit"), "{detail}");
    assert!(
        detail.contains("ALTER TABLE public.audit REPLICA IDENTITY FULL"),
        "{detail}"
    );
    assert!(
        !detail.contains("public.accounts"),
        "tables with keys are not named: {detail}"
    );

    blue.psql(DB, "ALTER TABLE audit REPLICA IDENTITY FULL").unwrap();
    let checks = checks_pass(&config);
    let ri = checks.iter().find(|c| c["name"] == "replica_identity").unwrap();
    assert_eq!(ri["status"], "ok");
    // Green reaches blue with the subscription's conninfo, and nothing was left behind.
    assert!(
        checks
            .iter()
            .any(|c| c["name"] == "green_reaches_blue" && c["status"] == "ok"),
        "{checks:#?}"
    );
    assert_eq!(
        green.psql("postgres", "SELECT count(*) FROM pg_subscription").unwrap(),
        "0"
    );
}

/// RDS and Aurora give `rds_superuser`, never superuser, and no login there reads
/// pg_authid: the copy method (roles with their hashes) cannot work, so `check` and
/// `replicate` refuse it naming the clone method, which they accept. Played here by
/// a login that is a member of a local `rds_superuser` role.
#[tokio::test]
async fn orchestrator_rds_superuser_is_told_to_use_the_clone_method_and_why() {
    let blue = blue_with_schema(&Binaries::pg15().unwrap());
    blue.psql(
        DB,
        "CREATE ROLE rds_superuser NOLOGIN; \
         CREATE ROLE rdsadmin_like LOGIN REPLICATION CREATEROLE CREATEDB PASSWORD 'rds-pass' IN ROLE rds_superuser",
    )
    .unwrap();
    // The premise: such a login cannot read the hashes.
    let denied = blue.psql_as("rdsadmin_like", "rds-pass", DB, "SELECT count(*) FROM pg_authid");
    assert!(format!("{denied:?}").contains("permission denied"), "{denied:?}");
    let green = Cluster::start(&Binaries::pg17().unwrap()).unwrap();
    let dir = Scratch::new();
    let blue_url = blue.url("rdsadmin_like", "rds-pass", DB);
    let privileges = |method: &str| {
        let (config, _) = write_config(
            &dir,
            &blue_url,
            &url(&green, "postgres"),
            &format!("[replication]\nmethod = \"{method}\""),
        );
        let out = pgcutover()
            .args(["check", "--json", "-c"])
            .arg(&config)
            .output()
            .unwrap();
        let json: serde_json::Value = serde_json::from_slice(&out.stdout).expect("check --json prints JSON");
        let on_blue = json
            .as_array()
            .unwrap()
            .iter()
            .find(|c| c["name"] == "privileges" && c["scope"] == "blue")
            .cloned()
            .unwrap_or_else(|| panic!("no privileges check on blue: {json:#}"));
        (config, on_blue)
    };

    let (config, copy) = privileges("copy");
    assert_eq!(copy["status"], "fail", "{copy:#}");
    let text = format!("{copy}");
    for part in [
        "rds_superuser, not superuser",
        "pg_authid",
        "method = \\\"clone\\\"",
        "prepare-green",
    ] {
        assert!(text.contains(part), "no {part:?} in {copy:#}");
    }
    let out = pgcutover().args(["replicate", "-c"]).arg(&config).output().unwrap();
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(
        !out.status.success() && err.contains("nothing was changed") && err.contains("clone"),
        "{err}"
    );
    assert_eq!(blue.psql(DB, "SELECT count(*) FROM pg_publication").unwrap(), "0");

    // A clone has blue's databases: enough of one for the checks to reach privileges.
    green.psql("postgres", &format!("CREATE DATABASE {DB}")).unwrap();
    let (_, clone) = privileges("clone");
    assert_eq!(clone["status"], "ok", "{clone:#}");
    assert!(format!("{clone}").contains("is rds_superuser"), "{clone:#}");
}

/// The example config's form: `[green] url` names the application database, which a
/// fresh green does not have yet. `check` runs every check (through a maintenance
/// database) and `replicate` creates the database and copies the data.
#[tokio::test]
async fn orchestrator_green_url_naming_a_database_green_lacks_checks_everything_and_replicates() {
    let blue = blue_with_schema(&Binaries::pg15().unwrap());
    blue.psql(DB, "ALTER TABLE audit REPLICA IDENTITY FULL").unwrap();
    let green = Cluster::start(&Binaries::pg17().unwrap()).unwrap();
    let dir = Scratch::new();
    let (config, _) = write_config(&dir, &url(&blue, DB), &url(&green, DB), "");

    let checks = checks_pass(&config);
    for name in ["wal_level", "replica_identity", "green_reaches_blue"] {
        assert!(
            checks.iter().any(|c| c["name"] == name && c["status"] == "ok"),
            "check {name} did not run or failed: {checks:#?}"
        );
    }
    assert!(
        checks
            .iter()
            .any(|c| c["message"].as_str().unwrap_or("").contains("replicate creates it")),
        "{checks:#?}"
    );

    let out = pgcutover().args(["replicate", "-c"]).arg(&config).output().unwrap();
    assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
    wait_caught_up(&blue, &green).await;
    let count = "SELECT count(*) FROM accounts";
    assert_eq!(green.psql(DB, count).unwrap(), blue.psql(DB, count).unwrap());
}

#[tokio::test]
async fn orchestrator_copy_method_replicates_every_row_written_during_setup_and_status_shows_ddl() {
    let blue = blue_with_schema(&Binaries::pg15().unwrap());
    blue.psql(
        "postgres",
        "SET password_encryption = 'scram-sha-256'; CREATE ROLE app_owner LOGIN PASSWORD 'owner secret';",
    )
    .unwrap();
    blue.psql(DB, "ALTER TABLE audit REPLICA IDENTITY FULL").unwrap();
    let green = Cluster::start(&Binaries::pg17().unwrap()).unwrap();
    let dir = Scratch::new();
    let (_, config) = write_config(&dir, &url(&blue, DB), &url(&green, "postgres"), "");
    let targets = orch::Targets::from_config(&config).unwrap();

    let stop = Arc::new(AtomicBool::new(false));
    let writer = start_writer(url(&blue, DB), stop.clone());
    tokio::time::sleep(Duration::from_millis(300)).await;
    let t = Instant::now();
    orch::replicate(&targets, &orch::ReplicateOptions::default(), &orch::Progress::stderr())
        .await
        .expect("replicate");
    eprintln!("replicate (copy) took {:?}", t.elapsed());
    // Writes go on after the initial copy, then stop.
    tokio::time::sleep(Duration::from_millis(500)).await;
    stop.store(true, Ordering::Relaxed);
    let written = writer.await.unwrap();
    wait_caught_up(&blue, &green).await;

    assert_written_rows_on_green(&green, &written);
    let report = orch::verify(&targets, &quick_verify(), &orch::Progress::stderr())
        .await
        .unwrap();
    assert!(report.identical, "{:#?}", report.differences);
    assert!(report.tables.len() >= 8, "{:#?}", report.tables);
    let events = report.tables.iter().find(|t| t.table == "public.events").unwrap();
    assert!(events.chunks > 3, "events was compared in key ranges: {events:?}");
    let blue_events: i64 = blue.psql(DB, "SELECT count(*) FROM events").unwrap().parse().unwrap();
    assert_eq!(
        (events.rows_blue, events.rows_green),
        (blue_events, blue_events),
        "ranges cover each row once"
    );
    let audit = report.tables.iter().find(|t| t.table == "public.audit").unwrap();
    assert_eq!(audit.method, "whole table");
    // Roles came over with their exact password hashes (SCRAM pass-through needs them).
    let hash = "SELECT rolpassword FROM pg_authid WHERE rolname = 'app_owner'";
    assert_eq!(
        blue.psql("postgres", hash).unwrap(),
        green.psql("postgres", hash).unwrap()
    );
    assert!(blue.psql("postgres", hash).unwrap().starts_with("SCRAM-SHA-256$"));

    // pgcutover's own setup DDL is not drift; the application's is.
    let status = orch::replication_status(&targets, 16 << 20).await;
    let d = &status.databases[0];
    assert_eq!(d.drift, 0, "{:#?}", d.ddl);
    assert!(status.ready, "{}", status.verdict);
    assert!(status.verdict.contains("in sync"), "{}", status.verdict);
    assert_eq!(d.tables_ready, d.tables_total);
    assert!(d.slot.as_ref().unwrap().active);
    // verify finds a changed row and a missing row, naming table and key range.
    green
        .psql(
            DB,
            "UPDATE accounts SET name = 'changed' WHERE id = 150; DELETE FROM items WHERE id = 7",
        )
        .unwrap();
    let out = pgcutover()
        .args(["verify", "--retries", "0", "--chunk-rows", "100", "-c"])
        .arg(dir.0.join("pgcutover.toml"))
        .output()
        .unwrap();
    let text = String::from_utf8_lossy(&out.stdout);
    assert!(!out.status.success(), "{text}");
    assert!(
        text.contains("DIFFERS  app/public.accounts  (id) > (100) AND (id) <= (200): 100 rows on blue, 100 on green"),
        "{text}"
    );
    assert!(
        text.contains("DIFFERS  app/public.items  (id) <= (100): 100 rows on blue, 99 on green"),
        "{text}"
    );
    assert!(text.lines().last().unwrap().starts_with("2 range(s) differ"), "{text}");

    blue.psql(
        DB,
        "ALTER TABLE accounts ADD COLUMN nickname text; CREATE TEMP TABLE scratch (x int);
         COMMENT ON COLUMN accounts.nickname IS 'it''s hunter2';",
    )
    .unwrap();
    // pgcutover.internal hides only the admin's DDL (here the role's grant), not an
    // ordinary role's that sets it too.
    blue.psql(
        DB,
        "SET pgcutover.internal = on; CREATE ROLE ddl_app LOGIN PASSWORD 'ddl-app-password';
         GRANT CREATE ON SCHEMA public TO ddl_app;",
    )
    .unwrap();
    blue.psql_as(
        "ddl_app",
        "ddl-app-password",
        DB,
        "SET pgcutover.internal = on; CREATE TABLE hidden (x int)",
    )
    .unwrap();
    let out = pgcutover()
        .args(["status", "-c"])
        .arg(dir.0.join("pgcutover.toml"))
        .output()
        .unwrap();
    let text = String::from_utf8_lossy(&out.stdout);
    assert!(out.status.success(), "{text}");
    assert!(text.contains("3 DDL statement(s)"), "{text}");
    assert!(text.contains("ALTER TABLE accounts ADD COLUMN nickname text"), "{text}");
    // A literal (it may be a password) is not kept in the log that status shows.
    assert!(text.contains("COMMENT ON COLUMN accounts.nickname IS '***'"), "{text}");
    assert!(!text.contains("hunter2"), "{text}");
    assert!(text.contains("CREATE TABLE hidden"), "{text}");
    assert!(!text.contains("scratch"), "temporary objects are not drift: {text}");
    let verdict = text.lines().last().unwrap();
    assert!(
        verdict.contains("drift: ALTER TABLE accounts ADD COLUMN nickname"),
        "{verdict}"
    );
}

#[tokio::test]
async fn orchestrator_replicate_rerun_after_being_killed_mid_copy_completes_without_duplicates() {
    let blue = blue_with_schema(&Binaries::pg15().unwrap());
    blue.psql(
        DB,
        "ALTER TABLE audit REPLICA IDENTITY FULL;
         CREATE TABLE big (id bigint PRIMARY KEY, filler text);
         INSERT INTO big SELECT g, repeat(md5(g::text), 3) FROM generate_series(1, 400000) g;",
    )
    .unwrap();
    let green = Cluster::start(&Binaries::pg17().unwrap()).unwrap();
    let dir = Scratch::new();
    let (path, config) = write_config(&dir, &url(&blue, DB), &url(&green, "postgres"), "");

    let mut child = pgcutover()
        .args(["replicate", "-c"])
        .arg(&path)
        .stdout(std::process::Stdio::null())
        .stderr(std::process::Stdio::null())
        .spawn()
        .unwrap();
    // Kill it while green's tables are still being copied.
    let deadline = Instant::now() + Duration::from_secs(60);
    loop {
        // pg_subscription_rel is per database; green's app database appears during the run.
        let syncing = green
            .psql(DB, "SELECT count(*) FROM pg_subscription_rel WHERE srsubstate <> 'r'")
            .unwrap_or_default();
        if syncing.parse::<i64>().unwrap_or(0) > 0 {
            break;
        }
        assert!(
            child.try_wait().unwrap().is_none(),
            "replicate finished before it could be killed"
        );
        assert!(Instant::now() < deadline, "the copy never started");
        tokio::time::sleep(Duration::from_millis(30)).await;
    }
    child.kill().unwrap();
    child.wait().unwrap();

    let out = pgcutover().args(["replicate", "-c"]).arg(&path).output().unwrap();
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(out.status.success(), "the re-run failed:\n{err}");
    assert!(err.contains("exists; continuing"), "the re-run resumed: {err}");
    wait_caught_up(&blue, &green).await;
    for (table, expect) in [("big", "400000"), ("audit", "100"), ("events", "3000")] {
        let n = green.psql(DB, &format!("SELECT count(*) FROM {table}")).unwrap();
        assert_eq!(n, expect, "{table} on green");
    }
    let targets = orch::Targets::from_config(&config).unwrap();
    let report = orch::verify(&targets, &quick_verify(), &orch::Progress::stderr())
        .await
        .unwrap();
    assert!(report.identical, "{:#?}", report.differences);
    assert_eq!(
        green
            .psql(
                DB,
                "SELECT count(*) FROM pgcutover.progress WHERE side = 'green' AND step = 'schema'"
            )
            .unwrap(),
        "1"
    );
}

#[tokio::test]
async fn orchestrator_clone_method_starts_at_the_clone_point_without_duplicates_or_gaps() {
    let blue = Arc::new(blue_with_schema(&Binaries::pg15().unwrap()));
    blue.psql(DB, "ALTER TABLE audit REPLICA IDENTITY FULL").unwrap();
    let dir = Scratch::new();
    let extra = "[replication]\nmethod = \"clone\"\n";
    // Step 1, before the clone exists: [green] is not known yet.
    let text = format!(
        "[proxy]\nserver_tls_mode = \"disable\"\n[auth]\nauth_type = \"trust\"\n[blue]\nurl = \"{}\"\n{extra}",
        url(&blue, DB)
    );
    let prep_config = Config::from_toml(&text, "test", &dir.0, std::iter::empty()).unwrap();
    let prep = orch::Targets::from_config(&prep_config).unwrap();
    let stop = Arc::new(AtomicBool::new(false));
    let writer = start_writer(url(&blue, DB), stop.clone());
    tokio::time::sleep(Duration::from_millis(300)).await;
    let opts = orch::ReplicateOptions {
        prepare_clone: true,
        ..Default::default()
    };
    orch::replicate(&prep, &opts, &orch::Progress::stderr())
        .await
        .expect("prepare-clone");
    tokio::time::sleep(Duration::from_millis(300)).await;

    // The clone, taken while the writer runs.
    let green = tokio::task::spawn_blocking({
        let blue = blue.clone();
        move || blue.basebackup_clone()
    })
    .await
    .unwrap()
    .expect("basebackup clone starts");
    let log = std::fs::read_to_string(green.log_path()).unwrap();
    assert!(log.contains("redo done at"), "{log}");

    let (_, config) = write_config(&dir, &url(&blue, DB), &url(&green, DB), extra);
    let targets = orch::Targets::from_config(&config).unwrap();
    let opts = orch::ReplicateOptions {
        clone_log: Some(green.log_path()),
        ..Default::default()
    };
    orch::replicate(&targets, &opts, &orch::Progress::stderr())
        .await
        .expect("replicate onto the clone");
    tokio::time::sleep(Duration::from_millis(500)).await;
    stop.store(true, Ordering::Relaxed);
    let written = writer.await.unwrap();
    wait_caught_up(&blue, &green).await;

    // A duplicate would have stopped the apply worker with a unique violation.
    assert_eq!(
        green
            .psql(
                DB,
                "SELECT apply_error_count + sync_error_count FROM pg_stat_subscription_stats"
            )
            .unwrap(),
        "0"
    );
    assert_written_rows_on_green(&green, &written);
    let report = orch::verify(&targets, &quick_verify(), &orch::Progress::stderr())
        .await
        .unwrap();
    assert!(report.identical, "{:#?}", report.differences);
    // The slot copy the clone carried is gone; blue's slot is in use by green.
    assert_eq!(
        green
            .psql("postgres", "SELECT count(*) FROM pg_replication_slots")
            .unwrap(),
        "0"
    );
    assert_eq!(
        blue.psql(
            "postgres",
            "SELECT active FROM pg_replication_slots WHERE slot_name = 'pgcutover_app'"
        )
        .unwrap(),
        "t"
    );
    let status = orch::replication_status(&targets, 16 << 20).await;
    assert!(status.ready, "{}", status.verdict);
}

/// Runs the binary; returns (success, stderr's error lines).
fn run(args: &[&str], config: &std::path::Path) -> (bool, Vec<String>, String) {
    let out = pgcutover().args(args).arg("-c").arg(config).output().unwrap();
    let err = String::from_utf8_lossy(&out.stderr).into_owned();
    let lines = err
        .lines()
        .filter(|l| !l.trim().is_empty())
        .map(str::to_owned)
        .collect();
    (
        out.status.success(),
        lines,
        String::from_utf8_lossy(&out.stdout).into_owned(),
    )
}

#[tokio::test]
async fn orchestrator_bad_input_fails_with_one_line_naming_the_fix_and_creates_nothing() {
    let blue = blue_with_schema(&Binaries::pg15().unwrap());
    let green = Cluster::start(&Binaries::pg17().unwrap()).unwrap();
    let dir = Scratch::new();
    let green_url = url(&green, "postgres");
    let nobody = pg_harness::free_port();
    let nobody_addr = format!("127.0.0.1:{nobody}");
    let cases = [
        (
            format!("postgres://{SUPERUSER}:{SUPERUSER_PASSWORD}@127.0.0.1:{nobody}/{DB}"),
            "",
            vec!["cannot connect to blue", &*nobody_addr, "check that blue is running"],
        ),
        (
            format!("postgres://{SUPERUSER}:wrong@127.0.0.1:{}/{DB}", blue.port()),
            "",
            vec![
                "password authentication failed",
                "check the user \"postgres\" and its password in [blue] url",
            ],
        ),
        (
            url(&blue, DB),
            "[replication]\ndatabases = [\"nope\"]\n",
            vec![
                "database \"nope\" does not exist",
                "create database \"nope\" on blue, or fix [replication] databases",
            ],
        ),
    ];
    for (blue_url, extra, expect) in cases {
        let (path, _) = write_config(&dir, &blue_url, &green_url, extra);
        let (ok, lines, _) = run(&["replicate"], &path);
        assert!(!ok);
        assert_eq!(lines.len(), 1, "one line: {lines:#?}");
        assert!(lines[0].starts_with("error: "), "{lines:?}");
        for e in expect {
            assert!(lines[0].contains(e), "{:?} not in {}", e, lines[0]);
        }
    }
    assert_nothing_created(&blue, &green, &dir);
}

fn assert_nothing_created(blue: &Cluster, green: &Cluster, dir: &Scratch) {
    assert_eq!(blue.psql(DB, "SELECT count(*) FROM pg_publication").unwrap(), "0");
    assert_eq!(
        blue.psql(DB, "SELECT to_regnamespace('pgcutover') IS NULL").unwrap(),
        "t"
    );
    assert_eq!(blue.psql(DB, "SELECT count(*) FROM pg_replication_slots").unwrap(), "0");
    assert_eq!(
        green.psql("postgres", "SELECT count(*) FROM pg_subscription").unwrap(),
        "0"
    );
    assert_eq!(
        green
            .psql("postgres", "SELECT count(*) FROM pg_database WHERE datname = 'app'")
            .unwrap(),
        "0"
    );
    let (path, _) = write_config(dir, &url(blue, DB), &url(green, "postgres"), "");
    let (ok, _, out) = run(&["status"], &path);
    assert!(ok, "{out}");
    assert!(out.lines().last().unwrap().contains("not set up"), "{out}");
}

#[tokio::test]
async fn orchestrator_replicate_refuses_when_blue_wal_level_is_not_logical() {
    let blue = Cluster::start_with(
        &Binaries::pg15().unwrap(),
        ClusterOptions::default().setting("wal_level", "replica"),
    )
    .unwrap();
    blue.psql("postgres", &format!("CREATE DATABASE {DB}")).unwrap();
    blue.psql(DB, SCHEMA).unwrap();
    blue.psql(DB, "ALTER TABLE audit REPLICA IDENTITY FULL").unwrap();
    blue.psql("postgres", "CREATE ROLE only_on_blue LOGIN PASSWORD 'x'")
        .unwrap();
    let green = Cluster::start(&Binaries::pg17().unwrap()).unwrap();
    let dir = Scratch::new();
    let (path, _) = write_config(&dir, &url(&blue, DB), &url(&green, "postgres"), "");
    let (ok, lines, _) = run(&["replicate"], &path);
    assert!(!ok);
    assert_eq!(lines.len(), 1, "one line: {lines:#?}");
    let line = &lines[0];
    assert!(line.contains("wal_level = replica"), "{line}");
    assert!(
        line.contains("ALTER SYSTEM SET wal_level = logical; then restart blue"),
        "{line}"
    );
    assert!(line.contains("nothing was changed"), "{line}");
    assert_eq!(
        green
            .psql(
                "postgres",
                "SELECT count(*) FROM pg_roles WHERE rolname = 'only_on_blue'"
            )
            .unwrap(),
        "0"
    );
    assert_nothing_created(&blue, &green, &dir);
}

/// The figure in the README: `verify` time per GB, on identical data generated on a
/// PostgreSQL 15 blue and a 17 green (`VERIFY_BENCH_ROWS`, default 2 000 000 rows of
/// ~200 bytes). Run with `cargo nextest run --run-ignored only -E 'test(verify_throughput)' --no-capture`.
#[tokio::test]
#[ignore = "benchmark"]
async fn orchestrator_verify_throughput() {
    let rows: i64 = std::env::var("VERIFY_BENCH_ROWS")
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(2_000_000);
    let fill = format!(
        "CREATE TABLE wide (id bigint PRIMARY KEY, a text, b int, c timestamptz, d numeric);
         INSERT INTO wide SELECT g, repeat(md5(g::text), 5), g % 1000, TIMESTAMPTZ '2025-01-01' + g * interval '1 s', g / 3.0
           FROM generate_series(1, {rows}) g;
         CREATE TABLE nokey (a text, b int);
         INSERT INTO nokey SELECT md5(g::text), g FROM generate_series(1, {rows} / 10) g;
         VACUUM ANALYZE;"
    );
    let blue = Cluster::start(&Binaries::pg15().unwrap()).unwrap();
    let green = Cluster::start(&Binaries::pg17().unwrap()).unwrap();
    for c in [&blue, &green] {
        c.psql("postgres", &format!("CREATE DATABASE {DB}")).unwrap();
        c.psql(DB, &fill).unwrap();
    }
    let dir = Scratch::new();
    let (_, config) = write_config(&dir, &url(&blue, DB), &url(&green, DB), "");
    let targets = orch::Targets::from_config(&config).unwrap();
    for jobs in [1, 2, 4] {
        let opts = orch::VerifyOptions {
            jobs,
            ..Default::default()
        };
        let report = orch::verify(&targets, &opts, &orch::Progress::quiet()).await.unwrap();
        assert!(report.identical);
        eprintln!("verify --jobs {jobs}: {}", report.summary());
    }
    // replicate (copy method) of the same data into an empty PostgreSQL 17.
    blue.psql(DB, "ALTER TABLE nokey REPLICA IDENTITY FULL").unwrap();
    let empty = Cluster::start(&Binaries::pg17().unwrap()).unwrap();
    let (_, config) = write_config(&dir, &url(&blue, DB), &url(&empty, "postgres"), "");
    let targets = orch::Targets::from_config(&config).unwrap();
    let t = Instant::now();
    orch::replicate(&targets, &orch::ReplicateOptions::default(), &orch::Progress::quiet())
        .await
        .unwrap();
    eprintln!("replicate (copy) of {rows} + {} rows: {:?}", rows / 10, t.elapsed());
}

#[tokio::test]
async fn orchestrator_running_proxy_exports_replication_lag_and_ddl_drift_gauges() {
    let blue = blue_with_schema(&Binaries::pg15().unwrap());
    blue.psql(DB, "ALTER TABLE audit REPLICA IDENTITY FULL").unwrap();
    let green = Cluster::start(&Binaries::pg17().unwrap()).unwrap();
    let dir = Scratch::new();
    let (listen, admin) = (pg_harness::free_port(), pg_harness::free_port());
    let extra = format!("[replication]\ndatabases = [\"{DB}\"]\n");
    let (_, config) = write_config(&dir, &url(&blue, DB), &url(&green, "postgres"), &extra);
    let targets = orch::Targets::from_config(&config).unwrap();
    orch::replicate(&targets, &orch::ReplicateOptions::default(), &orch::Progress::quiet())
        .await
        .unwrap();
    let text = format!(
        "[proxy]\nlisten = \"127.0.0.1:{listen}\"\nadmin_listen = \"127.0.0.1:{admin}\"\nserver_tls_mode = \"disable\"\n[auth]\nauth_type = \"trust\"\n[blue]\nurl = \"{}\"\n[green]\nurl = \"{}\"\n{extra}",
        url(&blue, DB),
        url(&green, "postgres")
    );
    let path = dir.write("proxy.toml", &text);
    let mut proxy = pgcutover()
        .args(["proxy", "-c"])
        .arg(&path)
        .stdout(std::process::Stdio::null())
        .stderr(std::process::Stdio::null())
        .spawn()
        .unwrap();
    let addr: std::net::SocketAddr = format!("127.0.0.1:{admin}").parse().unwrap();
    let metrics = |want: &'static str| async move {
        let deadline = Instant::now() + Duration::from_secs(30);
        loop {
            if let Ok(Ok(_)) = tokio::time::timeout(Duration::from_secs(2), tokio::net::TcpStream::connect(addr)).await
            {
                let (code, body) = crate::support::http_text(addr, "GET", "/metrics", None, "").await;
                if code == 200 && body.contains(want) {
                    return body;
                }
            }
            assert!(Instant::now() < deadline, "no {want} in /metrics");
            tokio::time::sleep(Duration::from_millis(200)).await;
        }
    };
    let body = metrics("pgcutover_ddl_drift{database=\"app\"} 0").await;
    assert!(
        body.contains("pgcutover_replication_lag_bytes{database=\"app\"} "),
        "{body}"
    );
    assert!(
        !body.contains("pgcutover_replication_lag_bytes{database=\"app\"} -1"),
        "{body}"
    );
    blue.psql(DB, "ALTER TABLE items ADD COLUMN color text").unwrap();
    metrics("pgcutover_ddl_drift{database=\"app\"} 1").await;
    proxy.kill().unwrap();
    proxy.wait().unwrap();
}

/// The reachability check is a CREATE SUBSCRIPTION expected to fail when the
/// source conninfo is wrong; with PostgreSQL's default `log_min_error_statement =
/// error` the failed statement, password included, would land in green's log.
#[tokio::test]
async fn a_failing_subscription_statement_keeps_its_password_out_of_the_server_log() {
    let blue = blue_with_schema(&Binaries::pg15().unwrap());
    let green = Cluster::start(&Binaries::pg17().unwrap()).unwrap();
    green.psql("postgres", &format!("CREATE DATABASE {DB}")).unwrap();
    let dir = Scratch::new();
    let secret = "TopSecret4711";
    let (config, _) = write_config(
        &dir,
        &url(&blue, DB),
        &url(&green, "postgres"),
        &format!("[replication]\nsource_conninfo = \"host=127.0.0.1 port=1 user=postgres password={secret}\""),
    );
    let out = pgcutover().args(["check", "-c"]).arg(&config).output().unwrap();
    let text = String::from_utf8_lossy(&out.stdout);
    assert!(
        text.lines()
            .any(|l| l.starts_with("FAIL") && l.contains("green_reaches_blue")),
        "{text}"
    );
    assert!(!text.contains(secret), "the report shows the password:\n{text}");
    let log = green.log_tail(2000);
    assert!(
        log.contains("CREATE SUBSCRIPTION") || log.contains("could not connect"),
        "{log}"
    );
    assert!(!log.contains(secret), "green's server log holds the password:\n{log}");
}
