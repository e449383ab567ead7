//! `[proxy] peers = ["dns+http://name:port"]`: a DNS name stands for every proxy
//! it resolves to, resolved at the start of each run. Three proxy processes found
//! through one name all move in one switchover with no failed transaction; a fourth
//! added to the name between two runs is driven by the second.
//!
//! The resolver is one this test controls: its own `/etc/hosts`, bind-mounted in a
//! private mount namespace (`unshare -m`, root only), so the machine's is untouched.
//! The proxies listen on 127.0.0.2 to 127.0.0.5, as replicas on different pods
//! listen on different addresses at the same port.

use crate::support::*;
use crate::switchover::{assert_all_on, post_switchover_completes, proxy_process_at, replicated, serial_writer};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

const IN_MOUNT_NS: &str = "PGCUTOVER_TEST_IN_MOUNT_NS";
const NAME: &str = "pgcutover-peers.test";

#[test]
fn proxies_found_through_dns_move_together_and_a_new_one_joins_the_next_run() {
    if !is_root() {
        eprintln!("SKIPPED: a private /etc/hosts needs a mount namespace, which needs root");
        return;
    }
    run_in_namespaces(
        &["-m", "--propagation", "private"],
        "peers::dns_peers_inside_a_mount_namespace",
        IN_MOUNT_NS,
    );
}

/// Writes `hosts` as the namespace's /etc/hosts, in place (the bind mount holds the inode).
fn set_hosts(path: &std::path::Path, addrs: &[&str]) {
    let mut text = String::from("127.0.0.1 localhost\n::1 localhost\n");
    for a in addrs {
        text.push_str(&format!("{a} {NAME}\n"));
    }
    std::fs::write(path, text).unwrap();
}

/// A writer through the proxy at `listen` (see [`serial_writer`]).
fn writer(listen: &str, stop: Arc<AtomicBool>) -> tokio::task::JoinHandle<(Vec<i32>, Vec<String>)> {
    let (host, port) = listen.split_once(':').unwrap();
    let conninfo = format!(
        "host={host} port={port} user={SCRAM_USER} password='{}' dbname={DB} connect_timeout=10",
        SCRAM_PASSWORD.replace('\'', "\\'")
    );
    serial_writer(conninfo, stop)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
#[ignore = "run by proxies_found_through_dns_move_together_and_a_new_one_joins_the_next_run in a mount namespace"]
async fn dns_peers_inside_a_mount_namespace() {
    if std::env::var(IN_MOUNT_NS).as_deref() != Ok("1") {
        eprintln!("not inside `unshare -m`: nothing done (proxies_found_through_dns_... runs this)");
        return;
    }
    let (blue, green, _, _) = replicated(true, "").await;
    let hosts = blue.dir.0.join("hosts");
    set_hosts(&hosts, &["127.0.0.2", "127.0.0.3", "127.0.0.4"]);
    let mounted = std::process::Command::new("mount")
        .args(["--bind", hosts.to_str().unwrap(), "/etc/hosts"])
        .status()
        .unwrap();
    assert!(mounted.success(), "mount --bind {} /etc/hosts", hosts.display());
    let resolved: Vec<_> = tokio::net::lookup_host((NAME, 1)).await.unwrap().collect();
    assert_eq!(resolved.len(), 3, "the private hosts file answers: {resolved:?}");

    // One client port and one admin port, on four addresses.
    let (client_port, admin_port) = (pg_harness::free_port(), pg_harness::free_port());
    let peers = format!("[\"dns+http://{NAME}:{admin_port}\"]");
    let env = [("PGCUTOVER_PROXY_PEERS", peers.as_str())];
    let start = |i: usize| {
        let ip = format!("127.0.0.{}", i + 2);
        let text = blue.switchover_config_text(
            &green,
            &format!("{ip}:{client_port}"),
            &format!("{ip}:{admin_port}"),
            "",
        );
        let file = blue.dir.write(&format!("proxy{i}.toml"), &text);
        let admin: std::net::SocketAddr = format!("{ip}:{admin_port}").parse().unwrap();
        (file, admin, format!("{ip}:{client_port}"))
    };
    let mut processes = Vec::new();
    let mut admins = Vec::new();
    let mut listens = Vec::new();
    for i in 0..3 {
        let (file, admin, listen) = start(i);
        processes.push(proxy_process_at(&file, admin, &env).await.0);
        admins.push(admin);
        listens.push(listen);
    }

    // Run 1: started on the first proxy, which finds the other two through the name.
    let stop = Arc::new(AtomicBool::new(false));
    let writers: Vec<_> = listens.iter().map(|l| writer(l, stop.clone())).collect();
    tokio::time::sleep(Duration::from_millis(300)).await;
    post_switchover_completes(admins[0]).await;
    tokio::time::sleep(Duration::from_millis(300)).await;
    stop.store(true, Ordering::Relaxed);
    let acknowledged = Mutex::new(Vec::new());
    for (i, w) in writers.into_iter().enumerate() {
        let (ids, errors) = w.await.unwrap();
        assert!(errors.is_empty(), "writer on proxy {i}: {errors:?}");
        assert!(!ids.is_empty(), "writer on proxy {i} wrote nothing");
        acknowledged.lock().unwrap().extend(ids);
    }
    assert_all_on(&green, &acknowledged.lock().unwrap());
    for (i, admin) in admins.iter().enumerate() {
        let (_, status) = http(*admin, "GET", "/status", None, "").await;
        assert_eq!(status["route"], "green", "proxy {i} after run 1: {status}");
    }

    // A fourth replica comes up (on green: it follows the journal) and into the name.
    let (file, admin, listen) = start(3);
    processes.push(proxy_process_at(&file, admin, &env).await.0);
    admins.push(admin);
    listens.push(listen);
    set_hosts(&hosts, &["127.0.0.2", "127.0.0.3", "127.0.0.4", "127.0.0.5"]);

    // Run 2, the way back, from the CLI: it drives every proxy the name stands for now.
    let stop = Arc::new(AtomicBool::new(false));
    let writers: Vec<_> = listens.iter().map(|l| writer(l, stop.clone())).collect();
    tokio::time::sleep(Duration::from_millis(300)).await;
    let cli_config = blue.dir.write(
        "cli.toml",
        &blue.switchover_config_text(&green, &listens[0], &admins[0].to_string(), ""),
    );
    let bin = env!("CARGO_BIN_EXE_pgcutover");
    let peers_env = peers.clone();
    let out = tokio::task::spawn_blocking(move || {
        std::process::Command::new(bin)
            .args(["rollback", "--json", "-c", cli_config.to_str().unwrap()])
            .env("PGCUTOVER_PROXY_PEERS", peers_env)
            .output()
            .unwrap()
    })
    .await
    .unwrap();
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert!(out.status.success(), "{stdout}{}", String::from_utf8_lossy(&out.stderr));
    let report: serde_json::Value = serde_json::from_str(&stdout).unwrap();
    assert_eq!(report["outcome"], "completed", "{report}");
    tokio::time::sleep(Duration::from_millis(300)).await;
    stop.store(true, Ordering::Relaxed);
    let mut back = Vec::new();
    for (i, w) in writers.into_iter().enumerate() {
        let (ids, errors) = w.await.unwrap();
        assert!(errors.is_empty(), "writer on proxy {i} in run 2: {errors:?}");
        back.extend(ids);
    }
    assert_all_on(&blue, &back);
    for (i, admin) in admins.iter().enumerate() {
        let (_, status) = http(*admin, "GET", "/status", None, "").await;
        assert_eq!(status["route"], "blue", "proxy {i} after run 2: {status}");
    }
    // The fourth was driven by run 2 (its metrics count that run), not just
    // routed by the journal.
    let metrics = http_text(admins[3], "GET", "/metrics", None, "").await.1;
    assert!(
        metrics.contains("pgcutover_switchover_phase_seconds_count{phase=\"resume\"} 1"),
        "the fourth proxy took no part in run 2:\n{metrics}"
    );
    drop(processes);
}
