//! Starts real clusters. Needs scripts/setup.sh to have run (PostgreSQL 15 and 17).

use pg_harness::{pgbench_path, psql_path, Binaries, Cluster, ClusterOptions, SUPERUSER, SUPERUSER_PASSWORD};
use std::os::unix::fs::MetadataExt;
use std::time::Instant;

fn pg15() -> Binaries {
    Binaries::pg15().expect("PostgreSQL 15")
}

fn pg17() -> Binaries {
    Binaries::pg17().expect("PostgreSQL 17")
}

fn postmaster_pid(c: &Cluster) -> u32 {
    let s = std::fs::read_to_string(c.data_dir().join("postmaster.pid")).expect("postmaster.pid");
    s.lines().next().unwrap().trim().parse().unwrap()
}

/// Exists and is not a zombie.
fn alive(pid: u32) -> bool {
    match std::fs::read_to_string(format!("/proc/{pid}/status")) {
        Ok(s) => !s.lines().any(|l| l.starts_with("State:") && l.contains('Z')),
        Err(_) => false,
    }
}

#[test]
fn pg15_cluster_runs_sql() {
    let bin = pg15();
    assert_eq!(bin.major(), 15);
    let t = Instant::now();
    let c = Cluster::start(&bin).unwrap();
    eprintln!("pg15 cluster start: {:?}", t.elapsed());
    assert_eq!(c.major(), 15);
    assert_eq!(c.host(), "127.0.0.1");
    let v = c.psql("postgres", "select version()").unwrap();
    assert!(v.starts_with("PostgreSQL 15."), "{v}");
    assert_eq!(c.psql("postgres", "show port").unwrap(), c.port().to_string());
    assert_eq!(c.psql("postgres", "show wal_level").unwrap(), "logical");
    assert_eq!(c.psql("postgres", "show max_connections").unwrap(), "300");
    assert_eq!(c.psql("postgres", "show password_encryption").unwrap(), "scram-sha-256");
    assert_eq!(c.psql("postgres", "show listen_addresses").unwrap(), "127.0.0.1");
    // Several statements, including one that cannot run in a transaction block.
    let out = c
        .psql(
            "postgres",
            "create database app;\ncreate table t (id int); insert into t values (1), (2);\nselect count(*) from t;",
        )
        .unwrap();
    assert_eq!(out, "2");
    assert_eq!(c.psql("app", "select current_database()").unwrap(), "app");
    // Data dir: 0700, owned by the server user.
    let meta = std::fs::metadata(c.data_dir()).unwrap();
    assert_eq!(meta.mode() & 0o777, 0o700);
    if pg_harness::is_root() {
        let passwd = std::fs::read_to_string("/etc/passwd").unwrap();
        let uid: u32 = passwd
            .lines()
            .find(|l| l.starts_with("postgres:"))
            .and_then(|l| l.split(':').nth(2))
            .unwrap()
            .parse()
            .unwrap();
        assert_eq!(meta.uid(), uid);
    }
    assert!(c.log_path().exists());
    assert!(c.conninfo("u", "p w", "d").contains("password='p w'"));
    assert_eq!(
        c.admin_conninfo(),
        format!(
            "host=127.0.0.1 port={} user={SUPERUSER} password={SUPERUSER_PASSWORD} dbname=postgres",
            c.port()
        )
    );
}

#[test]
fn pg17_cluster_runs_sql() {
    let bin = pg17();
    assert_eq!(bin.major(), 17);
    let t = Instant::now();
    let c = Cluster::start(&bin).unwrap();
    eprintln!("pg17 cluster start: {:?}", t.elapsed());
    assert_eq!(c.major(), 17);
    let v = c.psql("postgres", "select version()").unwrap();
    assert!(v.starts_with("PostgreSQL 17."), "{v}");
    assert_eq!(c.psql("postgres", "show wal_level").unwrap(), "logical");
}

#[test]
fn clusters_start_concurrently() {
    let (b15, b17) = (pg15(), pg17());
    let handles: Vec<_> = [b15.clone(), b15, b17]
        .into_iter()
        .map(|b| std::thread::spawn(move || Cluster::start(&b).unwrap()))
        .collect();
    let clusters: Vec<Cluster> = handles.into_iter().map(|h| h.join().unwrap()).collect();
    let mut ports: Vec<u16> = clusters.iter().map(|c| c.port()).collect();
    ports.sort();
    ports.dedup();
    assert_eq!(ports.len(), clusters.len());
    for c in &clusters {
        let v = c
            .psql("postgres", "select current_setting('server_version_num')::int / 10000")
            .unwrap();
        assert_eq!(v, c.major().to_string());
    }
}

#[test]
fn drop_stops_server_and_removes_dir() {
    let c = Cluster::start(&pg15()).unwrap();
    let dir = c.dir().to_path_buf();
    let pid = postmaster_pid(&c);
    assert!(alive(pid));
    c.stop();
    assert!(!dir.exists(), "{} still exists", dir.display());
    assert!(!alive(pid), "postmaster {pid} still running");
}

#[test]
fn drop_runs_when_the_test_panics() {
    let (tx, rx) = std::sync::mpsc::channel();
    let res = std::thread::spawn(move || {
        let c = Cluster::start(&pg15()).unwrap();
        tx.send((c.dir().to_path_buf(), postmaster_pid(&c))).unwrap();
        panic!("deliberate panic with a running cluster");
    })
    .join();
    assert!(res.is_err());
    let (dir, pid) = rx.recv().unwrap();
    assert!(!dir.exists(), "{} still exists", dir.display());
    assert!(!alive(pid), "postmaster {pid} still running");
}

#[test]
fn options_are_applied() {
    let opts = ClusterOptions::default()
        .hba("host all rejected 127.0.0.1/32 reject")
        .setting("work_mem", "8MB")
        .setting("application_name", "it's quoted");
    let c = Cluster::start_with(&pg15(), opts).unwrap();
    assert_eq!(c.psql("postgres", "show work_mem").unwrap(), "8MB");
    assert_eq!(
        c.psql(
            "postgres",
            "select current_setting('application_name', true) is not null"
        )
        .unwrap(),
        "t"
    );
    c.psql(
        "postgres",
        "create role rejected login password 'pw'; create role alice login password 'pw'",
    )
    .unwrap();
    assert_eq!(
        c.psql_as("alice", "pw", "postgres", "select current_user").unwrap(),
        "alice"
    );
    let err = c.psql_as("rejected", "pw", "postgres", "select 1").unwrap_err();
    assert!(err.message().contains("rejects connection"), "{err}");
    let err = c.psql_as("alice", "wrong", "postgres", "select 1").unwrap_err();
    assert!(err.message().contains("password authentication failed"), "{err}");
}

#[test]
fn psql_error_includes_stderr() {
    let c = Cluster::start(&pg15()).unwrap();
    let err = c
        .psql("postgres", "select 1; select * from no_such_table; select 2")
        .unwrap_err();
    assert!(err.message().contains("no_such_table"), "{err}");
}

#[test]
fn restart_and_reload_keep_the_port() {
    let c = Cluster::start(&pg15()).unwrap();
    c.psql("postgres", "alter system set max_wal_senders = 25").unwrap();
    c.restart().unwrap();
    assert_eq!(c.psql("postgres", "show max_wal_senders").unwrap(), "25");
    c.psql("postgres", "alter system set work_mem = '5MB'").unwrap();
    c.reload().unwrap();
    // Reload is asynchronous; a new session sees it once the postmaster has processed SIGHUP.
    let mut v = String::new();
    for _ in 0..100 {
        v = c.psql("postgres", "show work_mem").unwrap();
        if v == "5MB" {
            break;
        }
        std::thread::sleep(std::time::Duration::from_millis(20));
    }
    assert_eq!(v, "5MB");
}

#[test]
fn server_runs_without_root_groups() {
    if !pg_harness::is_root() {
        return;
    }
    let c = Cluster::start(&pg15()).unwrap();
    let status = c.psql("postgres", "select pg_read_file('/proc/self/status')").unwrap();
    let uid_line = status.lines().find(|l| l.starts_with("Uid:")).unwrap();
    assert!(!uid_line.split_whitespace().skip(1).any(|u| u == "0"), "{uid_line}");
    let groups = status.lines().find(|l| l.starts_with("Groups:")).unwrap();
    assert!(
        !groups.split_whitespace().skip(1).any(|g| g == "0"),
        "backend keeps root's group: {groups}"
    );
}

#[test]
fn client_tools_exist() {
    assert!(psql_path().exists(), "{}", psql_path().display());
    assert!(pgbench_path().exists(), "{}", pgbench_path().display());
}
