//! `pgcutover aws prepare-green` and `pgcutover aws cleanup` against moto's RDS in
//! server mode (loopback; no test talks to AWS), with the SQL on local PostgreSQL:
//! blue's publication and slot on a real PostgreSQL 15, and green's start LSN read
//! from a PostgreSQL 17 that stands in for the clone (moto has no database behind
//! its endpoints; `PGCUTOVER_TEST_AWS_GREEN_URL` points the SQL there).

use crate::support::*;
use std::process::Command;
use std::time::Duration;

/// moto's RDS on a free loopback port, stopped on drop.
struct Moto {
    url: String,
    _process: crate::switchover::KillOnDrop,
}

fn aws_venv() -> std::path::PathBuf {
    pg_harness::cache_dir().join("aws-venv")
}

impl Moto {
    async fn start() -> Moto {
        let port = pg_harness::free_port();
        let process = crate::switchover::KillOnDrop(
            Command::new(aws_venv().join("bin/moto_server"))
                .args(["-H", "127.0.0.1", "-p", &port.to_string()])
                .stdout(std::process::Stdio::null())
                .stderr(std::process::Stdio::null())
                .spawn()
                .expect("moto_server (scripts/setup.sh installs it)"),
        );
        let addr: std::net::SocketAddr = format!("127.0.0.1:{port}").parse().unwrap();
        wait_for("moto to listen", Duration::from_secs(30), || {
            std::net::TcpStream::connect(addr).is_ok()
        })
        .await;
        Moto {
            url: format!("http://127.0.0.1:{port}"),
            _process: process,
        }
    }

    /// Runs boto3 against moto: the AWS state a test starts from, or reads back.
    fn boto3(&self, script: &str) -> String {
        let out = Command::new(aws_venv().join("bin/python"))
            .args(["-c", &format!("import boto3, json\nrds = boto3.client('rds', endpoint_url='{}', region_name='us-east-1')\n{script}", self.url)])
            .envs(aws_env())
            .output()
            .unwrap();
        assert!(out.status.success(), "boto3: {}", String::from_utf8_lossy(&out.stderr));
        String::from_utf8_lossy(&out.stdout).trim().to_owned()
    }
}

fn aws_env() -> [(&'static str, &'static str); 3] {
    [
        ("AWS_ACCESS_KEY_ID", "testing"),
        ("AWS_SECRET_ACCESS_KEY", "testing"),
        ("AWS_DEFAULT_REGION", "us-east-1"),
    ]
}

fn pgcutover(args: &[&str], config: &std::path::Path, green_url: &str) -> (bool, String) {
    let out = Command::new(env!("CARGO_BIN_EXE_pgcutover"))
        .args(args)
        .arg("-c")
        .arg(config)
        .envs(aws_env())
        .env("PGCUTOVER_TEST_AWS_GREEN_URL", green_url)
        .output()
        .unwrap();
    (
        out.status.success(),
        format!(
            "{}{}",
            String::from_utf8_lossy(&out.stdout),
            String::from_utf8_lossy(&out.stderr)
        ),
    )
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn prepare_green_clones_upgrades_and_reads_the_lsn_then_cleanup_deletes_only_what_it_made() {
    let moto = Moto::start().await;
    moto.boto3(
        "rds.create_db_cluster(DBClusterIdentifier='shop', Engine='aurora-postgresql', EngineVersion='15.4', MasterUsername='admin', MasterUserPassword='password1234')
rds.create_db_instance(DBInstanceIdentifier='shop-1', DBClusterIdentifier='shop', Engine='aurora-postgresql', DBInstanceClass='db.r6g.large')
rds.create_db_cluster(DBClusterIdentifier='untouched', Engine='aurora-postgresql', EngineVersion='15.4', MasterUsername='admin', MasterUserPassword='password1234')",
    );
    let blue = Db::pg15();
    // Green's SQL side: what the clone's aurora_volume_logical_start_lsn() answers.
    let green = Db::pg17();
    green.sql("create function aurora_volume_logical_start_lsn() returns pg_lsn language sql as $$ select '0/1A2B3C4D'::pg_lsn $$");
    let green_url = green
        .cluster
        .url(pg_harness::SUPERUSER, pg_harness::SUPERUSER_PASSWORD, DB);
    let config = blue.dir.write(
        "aws.toml",
        &format!(
            "[blue]\nurl = \"{}\"\n[proxy]\nserver_tls_mode = \"disable\"\n[auth]\nauth_file = {:?}\n[replication]\ndatabases = [\"{DB}\"]\n[aws]\nendpoint_url = \"{}\"\nregion = \"us-east-1\"\nsource_cluster = \"shop\"\ntarget_engine_version = \"17.4\"\n",
            blue.cluster.url(pg_harness::SUPERUSER, pg_harness::SUPERUSER_PASSWORD, DB),
            blue.userlist(),
            moto.url
        ),
    );

    // The dry run: the whole plan, made from read-only calls, and no change.
    let (ok, dry) = pgcutover(&["aws", "prepare-green", "--dry-run"], &config, &green_url);
    eprintln!("{dry}");
    assert!(ok, "{dry}");
    for line in [
        "CreateDBClusterParameterGroup pgcutover-shop-aurora-postgresql15 (family aurora-postgresql15) for blue",
        "ModifyDBClusterParameterGroup pgcutover-shop-aurora-postgresql15: rds.logical_replication = 1 (pending-reboot)",
        "ModifyDBCluster shop: DBClusterParameterGroupName = pgcutover-shop-aurora-postgresql15",
        "RebootDBInstance shop-1 is needed for rds.logical_replication to take effect: not without --allow-reboot",
        "SQL on blue: publication and slot (replicate --prepare-clone)",
        "RestoreDBClusterToPointInTime shop-green from shop (RestoreType = copy-on-write, latest restorable time), tagged",
        "CreateDBInstance shop-green-writer (db.r6g.large), green's writer, tagged",
        "SQL on green: SELECT aurora_volume_logical_start_lsn() (before the upgrade)",
        "ModifyDBCluster shop-green: EngineVersion = 17.4, AllowMajorVersionUpgrade, DBClusterParameterGroupName = pgcutover-shop-green-aurora-postgresql17, ApplyImmediately",
        "wait until green is available at engine version 17.4",
        "replicate (clone method) from the start LSN",
        "dry run: nothing was changed",
    ] {
        assert!(dry.contains(line), "no {line:?} in:\n{dry}");
    }
    let clusters = "print(sorted(c['DBClusterIdentifier'] for c in rds.describe_db_clusters()['DBClusters']))";
    assert_eq!(moto.boto3(clusters), "['shop', 'untouched']");

    // Without --allow-reboot: refused before the first change.
    let (ok, refused) = pgcutover(&["aws", "prepare-green", "--no-attach"], &config, &green_url);
    assert!(!ok, "{refused}");
    assert!(
        refused.contains("must reboot")
            && refused.contains("nothing was changed")
            && refused.contains("--allow-reboot"),
        "{refused}"
    );
    assert_eq!(moto.boto3(clusters), "['shop', 'untouched']");

    // The run: every AWS step, blue's slot, green's start LSN.
    let (ok, run) = pgcutover(
        &["aws", "prepare-green", "--allow-reboot", "--no-attach"],
        &config,
        &green_url,
    );
    assert!(ok, "{run}");
    assert!(run.contains("green's start LSN: 0/1A2B3C4D"), "{run}");
    assert!(run.contains("pgcutover replicate --start-lsn 0/1A2B3C4D"), "{run}");
    let green_cluster = moto.boto3(
        "c = rds.describe_db_clusters(DBClusterIdentifier='shop-green')['DBClusters'][0]
print(json.dumps([c['EngineVersion'], sorted(t['Key'] for t in c['TagList']), [m['DBInstanceIdentifier'] for m in c['DBClusterMembers']]]))",
    );
    assert_eq!(
        green_cluster,
        r#"["17.4", ["pgcutover:run", "pgcutover:source"], ["shop-green-writer"]]"#
    );
    assert_eq!(
        moto.boto3(
            "print(rds.describe_db_clusters(DBClusterIdentifier='shop')['DBClusters'][0]['DBClusterParameterGroup'])"
        ),
        "pgcutover-shop-aurora-postgresql15"
    );
    assert_eq!(
        blue.sql("select count(*) from pg_replication_slots where slot_name = 'pgcutover_app'"),
        "1"
    );

    // Again: what exists is not made twice.
    let (ok, again) = pgcutover(
        &["aws", "prepare-green", "--dry-run", "--no-attach"],
        &config,
        &green_url,
    );
    assert!(ok, "{again}");
    assert!(
        !again.contains("RestoreDBClusterToPointInTime") && !again.contains("EngineVersion = 17.4"),
        "{again}"
    );

    // Cleanup: what the run tagged, nothing else.
    let (ok, cleaned) = pgcutover(&["aws", "cleanup", "--yes"], &config, &green_url);
    assert!(ok, "{cleaned}");
    assert!(cleaned.contains("deleted DB instance shop-green-writer"), "{cleaned}");
    assert!(cleaned.contains("deleted DB cluster shop-green"), "{cleaned}");
    assert!(
        cleaned.contains("DB cluster parameter group pgcutover-shop-green-aurora-postgresql17"),
        "{cleaned}"
    );
    assert_eq!(moto.boto3(clusters), "['shop', 'untouched']");
}

/// `prepare-green` for an RDS for PostgreSQL instance against moto: blue's DB
/// parameter group, the slot, the snapshot, green restored from it and upgraded,
/// then replication attached to a real clone of blue from the LSN in the clone's
/// start-up log, and `cleanup` deleting exactly what it made. moto has no database
/// behind its instances and keeps no logs (`DownloadDBLogFilePortion`): green's SQL
/// side is a pg_basebackup copy of blue taken after the slot, and the runs take
/// `--start-lsn`; the log reading through the API is unit-tested with mocks in `aws/`.
#[tokio::test]
async fn prepare_green_restores_an_rds_instance_attaches_from_its_lsn_and_cleanup_deletes_only_what_it_made() {
    let moto = Moto::start().await;
    moto.boto3(
        "for name in ['shop-db', 'untouched']:
    rds.create_db_instance(DBInstanceIdentifier=name, Engine='postgres', EngineVersion='15.4', DBInstanceClass='db.m6g.large', MasterUsername='admin', MasterUserPassword='password1234', AllocatedStorage=20)",
    );
    let blue = Db::pg15();
    blue.sql("create table items (id int primary key, v text); insert into items select g, 'before the slot' from generate_series(1, 100) g");
    let config = blue.dir.write(
        "aws.toml",
        &format!(
            "[blue]\nurl = \"{}\"\n[proxy]\nserver_tls_mode = \"disable\"\n[auth]\nauth_file = {:?}\n[replication]\ndatabases = [\"{DB}\"]\n[aws]\nendpoint_url = \"{}\"\nregion = \"us-east-1\"\nsource_instance = \"shop-db\"\ntarget_engine_version = \"17.4\"\n",
            blue.cluster.url(pg_harness::SUPERUSER, pg_harness::SUPERUSER_PASSWORD, DB),
            blue.userlist(),
            moto.url
        ),
    );
    let no_green = "postgres://nobody@127.0.0.1:1/none";
    let instances = "print(sorted(i['DBInstanceIdentifier'] for i in rds.describe_db_instances()['DBInstances']))";

    let (ok, dry) = pgcutover(&["aws", "prepare-green", "--dry-run"], &config, no_green);
    assert!(ok, "{dry}");
    for line in [
        "CreateDBParameterGroup pgcutover-shop-db-postgres15 (family postgres15) for blue, tagged",
        "ModifyDBInstance shop-db: DBParameterGroupName = pgcutover-shop-db-postgres15",
        "RebootDBInstance shop-db is needed",
        "SQL on blue: publication and slot (replicate --prepare-clone)",
        "CreateDBSnapshot pgcutover-shop-db-green of shop-db, tagged",
        "RestoreDBInstanceFromDBSnapshot shop-db-green (db.m6g.large) from pgcutover-shop-db-green",
        "DownloadDBLogFilePortion of shop-db-green's first logs",
        "ModifyDBInstance shop-db-green: EngineVersion = 17.4, AllowMajorVersionUpgrade, DBParameterGroupName = pgcutover-shop-db-green-postgres17, ApplyImmediately",
        "replicate (clone method) from the start LSN",
        "dry run: nothing was changed",
    ] {
        assert!(dry.contains(line), "no {line:?} in:\n{dry}");
    }
    assert_eq!(moto.boto3(instances), "['shop-db', 'untouched']");

    let (ok, run) = pgcutover(
        &[
            "aws",
            "prepare-green",
            "--allow-reboot",
            "--no-attach",
            "--start-lsn",
            "0/1A2B3C4D",
        ],
        &config,
        no_green,
    );
    assert!(ok, "{run}");
    assert!(run.contains("start LSN 0/1A2B3C4D (--start-lsn)"), "{run}");
    assert!(run.contains("pgcutover replicate --start-lsn 0/1A2B3C4D"), "{run}");
    let green = moto.boto3(
        "i = rds.describe_db_instances(DBInstanceIdentifier='shop-db-green')['DBInstances'][0]
print(json.dumps([i['EngineVersion'], i['DBParameterGroups'][0]['DBParameterGroupName'], sorted(t['Key'] for t in i['TagList'])]))",
    );
    assert_eq!(
        green,
        r#"["17.4", "pgcutover-shop-db-green-postgres17", ["pgcutover:run", "pgcutover:source"]]"#
    );
    assert_eq!(
        moto.boto3("print(rds.describe_db_instances(DBInstanceIdentifier='shop-db')['DBInstances'][0]['DBParameterGroups'][0]['DBParameterGroupName'])"),
        "pgcutover-shop-db-postgres15"
    );
    assert_eq!(
        moto.boto3("print([p['ParameterValue'] for p in rds.describe_db_parameters(DBParameterGroupName='pgcutover-shop-db-postgres15')['Parameters'] if p['ParameterName'] == 'rds.logical_replication'])"),
        "['1']"
    );
    assert_eq!(
        blue.sql("select count(*) from pg_replication_slots where slot_name = 'pgcutover_app'"),
        "1"
    );

    // Green's database: a copy of blue taken after the slot, with writes on either side.
    blue.sql("insert into items select g, 'after the slot' from generate_series(101, 200) g");
    let clone = blue.cluster.basebackup_clone().expect("a copy of blue");
    blue.sql("insert into items select g, 'after the clone' from generate_series(201, 300) g");
    let start = pgcutover_orchestrator::parse_clone_log(&std::fs::read_to_string(clone.log_path()).unwrap())
        .expect("the copy's start-up log names its end of redo")
        .lsn
        .to_string();
    let clone_url = clone.url(pg_harness::SUPERUSER, pg_harness::SUPERUSER_PASSWORD, DB);

    // Again, attaching: nothing made twice, replication from the given LSN.
    let (ok, attached) = pgcutover(&["aws", "prepare-green", "--start-lsn", &start], &config, &clone_url);
    assert!(ok, "{attached}");
    for absent in [
        "CreateDBSnapshot",
        "RestoreDBInstanceFromDBSnapshot",
        "EngineVersion = 17.4",
        "RebootDBInstance",
    ] {
        assert!(!attached.contains(absent), "{absent} again:\n{attached}");
    }
    assert!(attached.contains("replication runs from the start LSN"), "{attached}");
    blue.sql("insert into items select g, 'after the attach' from generate_series(301, 400) g");
    let count = "select count(*), count(distinct id), coalesce(max(id), 0) from items";
    wait_for("every row of blue on the copy", Duration::from_secs(30), || {
        clone.psql(DB, count).ok().as_deref() == Some("400|400|400")
    })
    .await;
    assert_eq!(
        clone
            .psql(DB, "select apply_error_count from pg_stat_subscription_stats")
            .unwrap(),
        "0",
        "a row replayed twice stops the apply worker"
    );

    let (ok, again) = pgcutover(&["aws", "prepare-green", "--dry-run", "--no-attach"], &config, no_green);
    assert!(ok, "{again}");
    assert!(
        !again.contains("CreateDBSnapshot")
            && !again.contains("RestoreDBInstanceFromDBSnapshot")
            && !again.contains("EngineVersion = 17.4"),
        "{again}"
    );

    let (ok, cleaned) = pgcutover(&["aws", "cleanup", "--yes"], &config, no_green);
    assert!(ok, "{cleaned}");
    for line in [
        "deleted DB instance shop-db-green",
        "deleted DB snapshot pgcutover-shop-db-green",
        "deleted DB parameter group pgcutover-shop-db-green-postgres17",
        "kept DB parameter group pgcutover-shop-db-postgres15: blue uses it",
    ] {
        assert!(cleaned.contains(line), "no {line:?} in:\n{cleaned}");
    }
    assert!(!cleaned.contains("DB instance shop-db\n"), "{cleaned}");
    assert_eq!(moto.boto3(instances), "['shop-db', 'untouched']");
    assert_eq!(
        moto.boto3("print(len(rds.describe_db_snapshots(SnapshotType='manual')['DBSnapshots']))"),
        "0"
    );
}

/// `pgcutover aws managed-switchover` in front of AWS's Blue/Green (moto's API),
/// with local PostgreSQL 15 and 17 standing for blue and green and this test doing
/// AWS's part of the switchover while it is "in progress" (moto finishes at once;
/// `PGCUTOVER_TEST_PAUSE_AT=aws_switchover` gives the test the seconds a real one
/// takes): green caught up and its sequence moved, then every client connection on
/// blue ended, as AWS ends them. Writers through the proxy see no error, and every
/// write they saw acknowledged is on green.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn managed_switchover_keeps_every_client_across_aws_blue_green() {
    use crate::switchover::{assert_all_on, proxy_process_at, replicated, serial_writer};
    use std::sync::atomic::{AtomicBool, Ordering};
    use std::sync::Arc;

    let moto = Moto::start().await;
    moto.boto3(
        "rds.create_db_cluster(DBClusterIdentifier='shop', Engine='aurora-postgresql', EngineVersion='15.4', MasterUsername='admin', MasterUserPassword='password1234')
rds.create_db_instance(DBInstanceIdentifier='shop-1', DBClusterIdentifier='shop', Engine='aurora-postgresql', DBInstanceClass='db.r6g.large')",
    );
    // AWS's replication into green, played by pgcutover's own.
    let (blue, green, _, _) = replicated(false, "").await;
    let (client_port, admin_port) = (pg_harness::free_port(), pg_harness::free_port());
    let aws = format!(
        "timeout = \"60s\"\n[aws]\nendpoint_url = \"{}\"\nregion = \"us-east-1\"\nsource_cluster = \"shop\"\ntarget_engine_version = \"17.4\"\n",
        moto.url
    );
    let text = blue.switchover_config_text(
        &green,
        &format!("127.0.0.1:{client_port}"),
        &format!("127.0.0.1:{admin_port}"),
        &aws,
    );
    let config = blue.dir.write("managed.toml", &text);
    let admin: std::net::SocketAddr = format!("127.0.0.1:{admin_port}").parse().unwrap();
    let proxy = proxy_process_at(&config, admin, &[]).await.0;
    let managed = |extra: &[&str]| {
        let mut args = vec!["aws", "managed-switchover"];
        args.extend_from_slice(extra);
        let out = Command::new(env!("CARGO_BIN_EXE_pgcutover"))
            .args(&args)
            .arg("-c")
            .arg(&config)
            .envs(aws_env())
            .env("PGCUTOVER_TEST_PAUSE_AT", "aws_switchover:3")
            .output()
            .unwrap();
        (
            out.status.success(),
            String::from_utf8_lossy(&out.stdout).into_owned(),
            String::from_utf8_lossy(&out.stderr).into_owned(),
        )
    };

    // The dry run: the plan, and nothing made.
    let (ok, plan, err) = managed(&["--dry-run"]);
    assert!(ok, "{plan}{err}");
    for line in [
        "CreateBlueGreenDeployment pgcutover-shop (Source = arn:aws:rds:us-east-1:",
        "TargetEngineVersion = 17.4), tagged",
        "wait until the deployment is AVAILABLE",
        "hold and drain 1 proxy, SwitchoverBlueGreenDeployment (the new one) (SwitchoverTimeout = 40 s)",
        "clients wait at most 60 s",
        "dry run: nothing was changed",
    ] {
        assert!(plan.contains(line), "no {line:?} in:\n{plan}");
    }
    let deployments = "print(len(rds.describe_blue_green_deployments()['BlueGreenDeployments']))";
    assert_eq!(moto.boto3(deployments), "0");

    // The deployment, made and awaited without switching.
    let (ok, out, err) = managed(&["--no-switchover"]);
    assert!(ok, "{out}{err}");
    assert!(out.contains("is available; run managed-switchover again"), "{out}");
    assert_eq!(moto.boto3(deployments), "1");

    // Writers through the proxy, and AWS's part played here while the run waits.
    let stop = Arc::new(AtomicBool::new(false));
    let writers: Vec<_> = (0..3)
        .map(|_| serial_writer(scram_conninfo(client_port), stop.clone()))
        .collect();
    tokio::time::sleep(Duration::from_millis(500)).await;
    let aws_part = {
        let (blue_url, green_url) = (
            blue.cluster
                .conninfo(pg_harness::SUPERUSER, pg_harness::SUPERUSER_PASSWORD, DB),
            green
                .cluster
                .conninfo(pg_harness::SUPERUSER, pg_harness::SUPERUSER_PASSWORD, DB),
        );
        tokio::spawn(async move {
            wait_until_phase(admin, "flip").await;
            let blue = connect(&blue_url).await.unwrap();
            let green = connect(&green_url).await.unwrap();
            let on_blue: i64 = blue.query_one("select count(*) from items", &[]).await.unwrap().get(0);
            for _ in 0..200 {
                let on_green: i64 = green.query_one("select count(*) from items", &[]).await.unwrap().get(0);
                if on_green == on_blue {
                    break;
                }
                tokio::time::sleep(Duration::from_millis(10)).await;
            }
            green
                .execute("select setval('items_id_seq', (select max(id) from items))", &[])
                .await
                .unwrap();
            let ended: i64 = blue
                .query_one(
                    "select count(pg_terminate_backend(pid)) from pg_stat_activity \
                     where backend_type = 'client backend' and pid <> pg_backend_pid() and usename <> 'postgres'",
                    &[],
                )
                .await
                .unwrap()
                .get(0);
            ended
        })
    };
    let (ok, out, err) = managed(&["--json"]);
    let ended = aws_part.await.unwrap();
    stop.store(true, Ordering::Relaxed);
    eprintln!("{err}");
    assert!(ok, "{out}{err}");
    assert!(
        ended >= 3,
        "AWS's part ended {ended} connections on blue, not every writer's"
    );
    let report: serde_json::Value = serde_json::from_str(&out).unwrap();
    assert_eq!(report["outcome"], "completed", "{report}");
    let mut acked = Vec::new();
    for (i, w) in writers.into_iter().enumerate() {
        let (ids, errors) = w.await.unwrap();
        assert!(errors.is_empty(), "writer {i} saw errors: {errors:?}");
        acked.extend(ids);
    }
    assert_all_on(&green, &acked);
    let (_, status) = http(admin, "GET", "/status", None, "").await;
    assert_eq!(status["route"], "green", "{status}");
    // moto's side: blue renamed away, green under blue's name, the deployment done.
    assert_eq!(
        moto.boto3("print(rds.describe_blue_green_deployments()['BlueGreenDeployments'][0]['Status'])"),
        "SWITCHOVER_COMPLETED"
    );
    // Run again: nothing left to switch.
    let (ok, again, err) = managed(&["--dry-run"]);
    assert!(!ok && err.contains("runs 17.4 already"), "{again}{err}");
    drop(proxy);
}

/// Waits until the proxy at `admin` reports switchover phase `phase` (30 s at most).
async fn wait_until_phase(admin: std::net::SocketAddr, phase: &str) {
    let deadline = tokio::time::Instant::now() + Duration::from_secs(30);
    while tokio::time::Instant::now() < deadline {
        let (_, status) = http(admin, "GET", "/status", None, "").await;
        if status["phase"] == phase {
            return;
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    panic!("the proxy never reported phase {phase}");
}
