//! Faults between the proxy and the server, made by a relay this test controls
//! (loopback only): the proxy's `[blue] url` points at the relay, which forwards to
//! PostgreSQL until told to reset every connection it carries.

use crate::support::*;
use std::net::SocketAddr;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};
use tokio::net::{TcpListener, TcpStream};

/// A TCP relay to `upstream` that can reset (RST) every connection it carries.
struct Relay {
    addr: SocketAddr,
    carried: Arc<Mutex<Vec<tokio::task::JoinHandle<()>>>>,
    accepting: tokio::task::JoinHandle<()>,
}

impl Relay {
    async fn start(upstream: u16) -> Relay {
        let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap();
        let carried: Arc<Mutex<Vec<tokio::task::JoinHandle<()>>>> = Arc::default();
        let tasks = carried.clone();
        let accepting = tokio::spawn(async move {
            while let Ok((mut client, _)) = listener.accept().await {
                let Ok(mut server) = TcpStream::connect(("127.0.0.1", upstream)).await else {
                    continue;
                };
                // With linger 0 a close is a reset, also when the task is aborted.
                for s in [&client, &server] {
                    let _ = socket2::SockRef::from(s).set_linger(Some(Duration::ZERO));
                }
                let task = tokio::spawn(async move {
                    let _ = tokio::io::copy_bidirectional(&mut client, &mut server).await;
                });
                tasks.lock().unwrap().push(task);
            }
        });
        Relay {
            addr,
            carried,
            accepting,
        }
    }

    /// Ends every carried connection with a reset, both ways; new ones still pass.
    fn reset_all(&self) {
        for task in self.carried.lock().unwrap().drain(..) {
            task.abort();
        }
    }
}

impl Drop for Relay {
    fn drop(&mut self) {
        self.accepting.abort();
        self.reset_all();
    }
}

/// A proxy in front of `db` through `relay`.
async fn proxy_through(db: &Db, relay: &Relay) -> RunningProxy {
    let mut config = db.default_config();
    config.blue.url.port = relay.addr.port();
    RunningProxy::start(config).await
}

/// The server connection is reset while a large result streams: the client gets
/// an error at once (never a hang, never a corrupt stream), and the proxy goes on
/// serving the next client.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_connection_reset_mid_result_ends_that_session_with_an_error_and_nothing_else() {
    let db = Db::pg15();
    let relay = Relay::start(db.cluster.port()).await;
    let proxy = proxy_through(&db, &relay).await;
    let bystander = connect(&proxy.conninfo(PLAIN_USER, PLAIN_PASSWORD, DB)).await.unwrap();
    bystander.simple_query("select 1").await.unwrap();
    let victim = connect(&proxy.conninfo(SCRAM_USER, SCRAM_PASSWORD, DB)).await.unwrap();
    let started = Instant::now();
    let big = victim.simple_query("select repeat('x', 1000) from generate_series(1, 200000)");
    let reset = async {
        tokio::time::sleep(Duration::from_millis(150)).await;
        relay.reset_all();
    };
    let (result, ()) = tokio::time::timeout(Duration::from_secs(20), async { tokio::join!(big, reset) })
        .await
        .expect("the client is told, not left waiting");
    let e = result.expect_err("a reset mid-result is an error");
    // Mid-message nothing can be added to the stream: the proxy closes it, as the
    // server's reset would close a direct connection.
    assert!(
        sqlstate(&e) == "08006" || e.is_closed() || e.to_string().contains("closed"),
        "{e}"
    );
    assert!(started.elapsed() < Duration::from_secs(15), "{:?}", started.elapsed());
    // The bystander's server connection went with the reset too (the relay carried
    // it); idle, it is reconnected as after a server restart.
    let one: i32 = bystander.query_one("select 1", &[]).await.unwrap().get(0);
    assert_eq!(one, 1);
    let next = connect(&proxy.conninfo(SCRAM_USER, SCRAM_PASSWORD, DB)).await.unwrap();
    next.simple_query("select 1").await.unwrap();
    drop(e);
}

/// Every server connection is reset while the proxy is held: the idle sessions
/// are reconnected with their state behind the hold, and once it ends they go on
/// as if nothing happened.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_server_going_away_during_a_hold_is_recovered_behind_it() {
    let db = Db::pg15();
    let relay = Relay::start(db.cluster.port()).await;
    let proxy = proxy_through(&db, &relay).await;
    let mut clients = Vec::new();
    for i in 0..4 {
        let c = connect(&proxy.conninfo(SCRAM_USER, SCRAM_PASSWORD, DB)).await.unwrap();
        c.batch_execute(&format!("SET application_name = 'held-{i}'"))
            .await
            .unwrap();
        clients.push(c);
    }
    assert!(proxy.control.hold());
    relay.reset_all();
    tokio::time::sleep(Duration::from_millis(500)).await;
    proxy.control.resume();
    for (i, c) in clients.iter().enumerate() {
        let name: String = tokio::time::timeout(
            Duration::from_secs(15),
            c.query_one("select current_setting('application_name')", &[]),
        )
        .await
        .expect("answered within the bound")
        .expect("the session carries on")
        .get(0);
        assert_eq!(name, format!("held-{i}"));
    }
}

/// This process's resident memory, in bytes.
fn resident_bytes() -> u64 {
    let status = std::fs::read_to_string("/proc/self/status").unwrap();
    let kib: u64 = status
        .lines()
        .find_map(|l| l.strip_prefix("VmRSS:"))
        .and_then(|v| v.trim().trim_end_matches("kB").trim().parse().ok())
        .unwrap();
    kib * 1024
}

/// A client that reads a 50 MB result at 10 kB/s: the proxy passes the server's
/// backpressure on instead of buffering the result (its memory stays flat), other
/// sessions are served as usual meanwhile, and when the slow client goes away its
/// query ends on the server too.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_slow_reader_of_a_large_result_costs_the_proxy_no_memory_and_nobody_else_time() {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    let db = Db::pg15();
    let proxy =
        RunningProxy::start(db.config("", &format!("auth_type = \"trust\"\nauth_file = {:?}", db.userlist()))).await;
    let other = connect(&proxy.conninfo(PLAIN_USER, PLAIN_PASSWORD, DB)).await.unwrap();
    let mut slow = raw_login(&proxy).await;
    let before = resident_bytes();
    let mut query = bytes::BytesMut::new();
    pgcutover_protocol::build::query(
        &mut query,
        "select repeat('x', 1000) as big from generate_series(1, 50000) /* slow reader */",
    );
    slow.write_all(&query).await.unwrap();
    let mut chunk = [0u8; 1024];
    let mut read = 0usize;
    let mut slowest = Duration::ZERO;
    // 40 KB over 4 s: 10 kB/s, while another session works.
    for _ in 0..40 {
        read += slow.read(&mut chunk).await.unwrap();
        let started = Instant::now();
        other.simple_query("select 1").await.unwrap();
        slowest = slowest.max(started.elapsed());
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    let grown = resident_bytes().saturating_sub(before);
    assert!(read >= 40 * 1024 - 1024, "read {read}");
    assert!(grown < 16 << 20, "the proxy buffered the result: +{} MiB", grown >> 20);
    assert!(slowest < Duration::from_secs(2), "the other session waited {slowest:?}");
    drop(slow);
    let running = "select count(*) from pg_stat_activity where query like '%slow reader%' and pid <> pg_backend_pid()";
    wait_for(
        "the slow reader's query to end on the server",
        Duration::from_secs(15),
        || db.sql(running) == "0",
    )
    .await;
}
