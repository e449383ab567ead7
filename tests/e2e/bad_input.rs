//! Hostile or broken clients get an error (or a closed socket) and never disturb
//! anyone else.

use crate::support::*;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::Arc;
use std::time::Duration;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;

/// The SQLSTATE of the first ErrorResponse before the proxy closes the connection.
async fn error_then_close(s: TcpStream) -> Option<String> {
    errors_until_close(s).await.into_iter().next()
}

/// A client that keeps running queries while the test abuses the proxy; returns
/// how many it ran, and fails on the first error.
fn healthy_client(conninfo: String, stop: Arc<AtomicBool>) -> tokio::task::JoinHandle<u64> {
    tokio::spawn(async move {
        let c = connect(&conninfo).await.expect("healthy client connects");
        let count = AtomicU64::new(0);
        let deadline = tokio::time::Instant::now() + Duration::from_secs(120);
        while !stop.load(Ordering::Relaxed) && tokio::time::Instant::now() < deadline {
            let n: i32 = c
                .query_one("select $1::int * 2", &[&21i32])
                .await
                .expect("healthy query")
                .get(0);
            assert_eq!(n, 42);
            count.fetch_add(1, Ordering::Relaxed);
        }
        count.into_inner()
    })
}

#[tokio::test]
async fn garbage_oversized_and_half_packets_do_not_disturb_a_healthy_client() {
    let db = Db::pg15();
    // trust, so that a raw socket can log in for the mid-session case.
    let proxy = RunningProxy::start(db.config(
        "client_login_timeout = \"1s\"\nmax_message_bytes = 1048576",
        &format!("auth_type = \"trust\"\nauth_file = {:?}", db.userlist()),
    ))
    .await;
    let stop = Arc::new(AtomicBool::new(false));
    let healthy = healthy_client(proxy.conninfo(PLAIN_USER, PLAIN_PASSWORD, DB), stop.clone());

    // Before a valid startup packet the proxy answers exactly as PostgreSQL does,
    // byte for byte up to the message text: silence for a length out of range
    // (garbage, node-postgres' Terminate before its startup, a 100 MB claim),
    // FATAL 0A000 for an unknown protocol version.
    let direct: std::net::SocketAddr = format!("127.0.0.1:{}", db.cluster.port()).parse().unwrap();
    let mut protocol_4 = vec![0, 0, 0, 17, 0, 4, 0, 0];
    protocol_4.extend_from_slice(b"user\0x\0\0");
    protocol_4[3] = protocol_4.len() as u8;
    for (what, input) in [
        ("garbage", b"GET / HTTP/1.1\r\nHost: x\r\n\r\n".to_vec()),
        ("Terminate first", vec![b'X', 0, 0, 0, 4]),
        ("a 100 MB startup packet", 100_000_000u32.to_be_bytes().to_vec()),
        ("protocol 4.0", protocol_4),
    ] {
        let (ours, theirs) = (answer(proxy.addr, &input).await, answer(direct, &input).await);
        assert_eq!(
            sqlstates(&ours),
            sqlstates(&theirs),
            "{what}: proxy {ours:?} vs PostgreSQL {theirs:?}"
        );
        assert_eq!(
            ours.is_empty(),
            theirs.is_empty(),
            "{what}: proxy {ours:?} vs PostgreSQL {theirs:?}"
        );
    }

    // Half a startup packet, then silence: closed after client_login_timeout, without
    // a byte, as PostgreSQL's startup-packet timeout does (its default of 60 s is too
    // long to compare against here).
    let started = std::time::Instant::now();
    let half = answer(proxy.addr, &[0, 0, 0, 40, 0, 3, 0, 0, b'u', b's']).await;
    assert_eq!(half, Vec::<u8>::new(), "a half startup packet gets no answer");
    assert!(started.elapsed() < Duration::from_secs(5));

    // A logged-in client that sends a message longer than max_message_bytes.
    let c = connect(&proxy.conninfo(PLAIN_USER, PLAIN_PASSWORD, DB)).await.unwrap();
    let e = c
        .simple_query(&format!("select '{}'", "x".repeat(2 << 20)))
        .await
        .unwrap_err();
    assert_eq!(sqlstate(&e), "08P01", "{e}");

    // A logged-in client whose next frame has a length below 4.
    let mut raw = raw_login(&proxy).await;
    raw.write_all(&[b'Q', 0, 0, 0, 1]).await.unwrap();
    assert_eq!(error_then_close(raw).await.as_deref(), Some("08P01"));

    stop.store(true, Ordering::Relaxed);
    let ran = healthy.await.unwrap();
    assert!(ran > 0);
}

/// Everything a server sends to `input` until it closes the connection.
async fn answer(addr: std::net::SocketAddr, input: &[u8]) -> Vec<u8> {
    let mut s = TcpStream::connect(addr).await.unwrap();
    s.write_all(input).await.unwrap();
    let mut out = Vec::new();
    tokio::time::timeout(Duration::from_secs(10), s.read_to_end(&mut out))
        .await
        .expect("the connection is closed")
        .ok();
    out
}

/// The SQLSTATE of every ErrorResponse in `bytes`.
fn sqlstates(bytes: &[u8]) -> Vec<String> {
    let mut buf = bytes::BytesMut::from(bytes);
    let mut codes = Vec::new();
    while let Ok(Some(f)) = pgcutover_protocol::frame::decode_frame(&mut buf, 1 << 20) {
        if f.tag == b'E' {
            let fields = pgcutover_protocol::backend::ErrorFields::new(&f.body);
            codes.push(fields.code().unwrap_or("none").to_owned());
        }
    }
    codes
}

#[tokio::test]
async fn a_thousand_connections_opened_and_dropped_leave_the_proxy_serving() {
    let db = Db::pg15();
    let proxy = RunningProxy::start(db.config(
        "client_login_timeout = \"2s\"",
        &format!("auth_file = {:?}", db.userlist()),
    ))
    .await;
    let stop = Arc::new(AtomicBool::new(false));
    let healthy = healthy_client(proxy.conninfo(SCRAM_USER, SCRAM_PASSWORD, DB), stop.clone());
    let addr = proxy.addr;
    let mut tasks = tokio::task::JoinSet::new();
    for i in 0..1000u32 {
        tasks.spawn(async move {
            let mut s = TcpStream::connect(addr).await.expect("connect");
            match i % 4 {
                0 => {}                                                              // nothing at all
                1 => s.write_all(&[0, 0, 0, 8, 4, 0xd2, 0x16, 0x2f]).await.unwrap(), // SSLRequest, then gone
                2 => s.write_all(&[0, 0, 0]).await.unwrap(),                         // a partial length
                _ => {
                    // A full startup, then gone in the middle of authentication.
                    let mut p = bytes::BytesMut::new();
                    pgcutover_protocol::startup::encode_startup([("user", SCRAM_USER), ("database", DB)], &mut p);
                    s.write_all(&p).await.unwrap();
                    let mut b = [0u8; 1];
                    let _ = s.read(&mut b).await;
                }
            }
            drop(s);
        });
        if tasks.len() >= 100 {
            tasks.join_next().await.unwrap().unwrap();
        }
    }
    while let Some(r) = tasks.join_next().await {
        r.unwrap();
    }
    // Still serving new clients, and the healthy one never saw an error.
    let c = connect(&proxy.conninfo(PLAIN_USER, PLAIN_PASSWORD, DB)).await.unwrap();
    c.simple_query("select 1").await.unwrap();
    stop.store(true, Ordering::Relaxed);
    assert!(healthy.await.unwrap() > 0);
    // No server connections leaked: only the healthy client's and this one's remain (plus the psql probe).
    wait_for(
        "abandoned logins to release their server connections",
        Duration::from_secs(10),
        || {
            let n: i64 = db
                .cluster
                .psql(
                    "postgres",
                    &format!("select count(*) from pg_stat_activity where usename in ('{SCRAM_USER}', '{PLAIN_USER}')"),
                )
                .unwrap()
                .parse()
                .unwrap();
            n <= 2
        },
    )
    .await;
}

#[tokio::test]
async fn messages_before_authentication_are_capped_at_64_kib() {
    let db = Db::pg15();
    // max_message_bytes (1 GiB by default) applies only once a client has logged in.
    let proxy = RunningProxy::start(db.default_config()).await;
    let mut s = TcpStream::connect(proxy.addr).await.unwrap();
    let mut p = bytes::BytesMut::new();
    pgcutover_protocol::startup::encode_startup([("user", SCRAM_USER), ("database", DB)], &mut p);
    s.write_all(&p).await.unwrap();
    // The whole AuthenticationSASL request, so what follows starts at a message.
    let mut buf = bytes::BytesMut::new();
    let request = loop {
        s.read_buf(&mut buf).await.unwrap();
        if let Some(f) = pgcutover_protocol::frame::decode_frame(&mut buf, 1024).unwrap() {
            break f;
        }
    };
    assert_eq!(request.tag, b'R', "asked for a password");
    // A password message claiming 65541 bytes.
    s.write_all(&[b'p', 0, 1, 0, 5]).await.unwrap();
    assert_eq!(error_then_close(s).await.as_deref(), Some("08P01"));
}

/// `client_login_timeout` bounds the whole login once: a client that spends most of
/// it before its startup packet has only the rest for authentication.
#[tokio::test]
async fn the_login_timeout_bounds_startup_and_authentication_together() {
    let db = Db::pg15();
    let proxy = RunningProxy::start(db.config(
        "client_login_timeout = \"2s\"",
        &format!("auth_file = {:?}", db.userlist()),
    ))
    .await;
    let connected = std::time::Instant::now();
    let mut s = TcpStream::connect(proxy.addr).await.unwrap();
    tokio::time::sleep(Duration::from_millis(1200)).await;
    let mut startup = bytes::BytesMut::new();
    pgcutover_protocol::startup::encode_startup([("user", SCRAM_USER), ("database", DB)], &mut startup);
    s.write_all(&startup).await.unwrap();
    // The SCRAM challenge arrives; the client never answers it.
    assert_eq!(error_then_close(s).await.as_deref(), Some("08006"));
    let took = connected.elapsed();
    assert!(
        took < Duration::from_millis(2800),
        "closed {took:?} after connecting: the login deadline is 2 s from the connect, not 2 s after the startup"
    );
}

/// A replication connection (physical or logical) gets a FATAL naming the fix: a
/// WAL stream never reaches a transaction boundary, so it would stall every drain.
/// `replication=false` is an ordinary session.
#[tokio::test]
async fn replication_connections_are_refused_with_a_fatal_naming_the_fix() {
    let db = Db::pg15();
    let proxy = RunningProxy::start(db.default_config()).await;
    let port = proxy.addr.port().to_string();
    for mode in ["database", "true"] {
        let conninfo = format!("host=127.0.0.1 port={port} user={SCRAM_USER} dbname={DB} replication={mode}");
        let run = client_tool(
            pg_harness::psql_path(),
            SCRAM_PASSWORD,
            &["-X", "-At", "-d", &conninfo, "-c", "IDENTIFY_SYSTEM"],
        )
        .await;
        assert!(!run.success, "replication={mode}: {}", run.output);
        assert!(
            run.output.contains("pgcutover does not proxy replication connections")
                && run.output.contains("connect pg_basebackup"),
            "replication={mode}: {}",
            run.output
        );
    }
    let conninfo = format!("host=127.0.0.1 port={port} user={SCRAM_USER} dbname={DB} replication=false");
    let run = client_tool(
        pg_harness::psql_path(),
        SCRAM_PASSWORD,
        &["-X", "-At", "-d", &conninfo, "-c", "select 1"],
    )
    .await;
    assert!(run.success && run.stdout.trim() == "1", "{}", run.output);
}
