//! Protocol 3.2 (PostgreSQL 18): a client that asks for it gets what PostgreSQL 18
//! gives it, byte for byte at login, and its 32-byte cancel key works through the
//! proxy, whichever server the session is on.

use crate::support::*;
use bytes::{BufMut, BytesMut};
use pgcutover_protocol::startup::CANCEL_REQUEST_CODE;
use std::net::SocketAddr;
use std::time::{Duration, Instant};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;

/// A StartupMessage asking for protocol 3.`minor`.
fn startup(minor: u16, extra: &[(&str, &str)]) -> BytesMut {
    let mut body = BytesMut::new();
    body.put_i32(3 << 16 | i32::from(minor));
    for (k, v) in [("user", PLAIN_USER), ("database", DB)].iter().chain(extra) {
        for s in [k, v] {
            body.put_slice(s.as_bytes());
            body.put_u8(0);
        }
    }
    body.put_u8(0);
    let mut packet = BytesMut::new();
    packet.put_i32(4 + body.len() as i32);
    packet.put_slice(&body);
    packet
}

/// A raw session: the socket, and the pid and secret from its BackendKeyData.
struct Raw {
    s: TcpStream,
    pid: i32,
    secret: Vec<u8>,
}

/// Logs in with `startup` (the user must be on trust) and describes what came back,
/// one line per message that differs between servers and protocol versions:
/// NegotiateProtocolVersion in full, BackendKeyData by its secret's length.
async fn log_in(addr: SocketAddr, minor: u16, extra: &[(&str, &str)]) -> (Raw, Vec<String>) {
    let mut s = TcpStream::connect(addr).await.unwrap();
    s.write_all(&startup(minor, extra)).await.unwrap();
    let mut seen = Vec::new();
    let (mut pid, mut secret) = (0, Vec::new());
    let mut buf = BytesMut::new();
    loop {
        let n = tokio::time::timeout(Duration::from_secs(10), s.read_buf(&mut buf))
            .await
            .expect("login answers")
            .unwrap();
        assert!(n > 0, "closed during login after {seen:?}");
        while let Some(f) = pgcutover_protocol::frame::decode_frame(&mut buf, 1 << 20).unwrap() {
            match f.tag {
                b'v' => seen.push(format!("NegotiateProtocolVersion {:02x?}", &f.body[..])),
                b'K' => {
                    pid = i32::from_be_bytes(f.body[..4].try_into().unwrap());
                    secret = f.body[4..].to_vec();
                    seen.push(format!("BackendKeyData with a {}-byte secret", secret.len()));
                }
                b'E' => panic!("login failed: {:?}", String::from_utf8_lossy(&f.body)),
                b'Z' => return (Raw { s, pid, secret }, seen),
                _ => {}
            }
        }
    }
}

async fn send_cancel(addr: SocketAddr, pid: i32, secret: &[u8]) {
    let mut p = BytesMut::new();
    p.put_i32(12 + secret.len() as i32);
    p.put_i32(CANCEL_REQUEST_CODE);
    p.put_i32(pid);
    p.put_slice(secret);
    let mut s = TcpStream::connect(addr).await.unwrap();
    s.write_all(&p).await.unwrap();
    let mut rest = Vec::new();
    let _ = tokio::time::timeout(Duration::from_secs(5), s.read_to_end(&mut rest)).await;
    assert_eq!(rest, Vec::<u8>::new(), "a cancel request is never answered");
}

/// Runs `sql` as a simple query; the SQLSTATE of its error, if it failed.
async fn run(raw: &mut Raw, sql: &str) -> Option<String> {
    let mut q = BytesMut::new();
    q.put_u8(b'Q');
    q.put_i32(4 + sql.len() as i32 + 1);
    q.put_slice(sql.as_bytes());
    q.put_u8(0);
    raw.s.write_all(&q).await.unwrap();
    let mut buf = BytesMut::new();
    let mut code = None;
    loop {
        let n = tokio::time::timeout(Duration::from_secs(60), raw.s.read_buf(&mut buf))
            .await
            .expect("the query ends")
            .unwrap();
        assert!(n > 0, "closed while running {sql}");
        while let Some(f) = pgcutover_protocol::frame::decode_frame(&mut buf, 1 << 20).unwrap() {
            match f.tag {
                b'E' => {
                    code = pgcutover_protocol::backend::ErrorFields::new(&f.body)
                        .code()
                        .map(str::to_owned)
                }
                b'Z' => return code,
                _ => {}
            }
        }
    }
}

#[tokio::test]
async fn logins_at_every_protocol_version_answer_as_postgresql_18_does() {
    let db = Db::pg18();
    let trust = format!("auth_type = \"trust\"\nauth_file = {:?}", db.userlist());
    let proxy = RunningProxy::start(db.config("", &trust)).await;
    let direct: SocketAddr = format!("127.0.0.1:{}", db.cluster.port()).parse().unwrap();
    let pq = [("_pq_.something_new", "on")];
    let cases: [(u16, &[(&str, &str)]); 6] = [(0, &[]), (1, &[]), (2, &[]), (3, &[]), (0, &pq), (2, &pq)];
    for (minor, extra) in cases {
        let (_, from_postgres) = log_in(direct, minor, extra).await;
        let (_, from_proxy) = log_in(proxy.addr, minor, extra).await;
        assert_eq!(from_proxy, from_postgres, "protocol 3.{minor} with {extra:?}");
    }
    // What PostgreSQL 18 answers, spelled out, so that a change on its side shows.
    let (_, newer) = log_in(proxy.addr, 3, &[]).await;
    assert_eq!(
        newer,
        [
            "NegotiateProtocolVersion [00, 03, 00, 02, 00, 00, 00, 00]",
            "BackendKeyData with a 32-byte secret"
        ]
    );
    let (_, old) = log_in(proxy.addr, 0, &[]).await;
    assert_eq!(old, ["BackendKeyData with a 4-byte secret"]);
}

#[tokio::test]
async fn a_32_byte_cancel_key_cancels_only_when_whole_even_on_a_full_proxy() {
    let db = Db::pg18();
    // One client slot, taken by the session: every cancel below goes through the
    // refusal path, which must still read a 44-byte CancelRequest whole.
    let trust = format!("auth_type = \"trust\"\nauth_file = {:?}", db.userlist());
    let proxy = RunningProxy::start(db.config("max_client_conn = 1", &trust)).await;
    let (mut raw, _) = log_in(proxy.addr, 2, &[]).await;
    assert_eq!(raw.secret.len(), 32);
    let (addr, pid) = (proxy.addr, raw.pid);

    // Wrong keys: a bit flipped in the last byte, the first 4 bytes alone.
    let mut flipped = raw.secret.clone();
    flipped[31] ^= 0x80;
    let prefix = raw.secret[..4].to_vec();
    let wrong = tokio::spawn(async move {
        tokio::time::sleep(Duration::from_millis(300)).await;
        send_cancel(addr, pid, &flipped).await;
        send_cancel(addr, pid, &prefix).await;
    });
    assert_eq!(
        run(&mut raw, "select pg_sleep(1.5)").await,
        None,
        "a wrong key cancels nothing"
    );
    wrong.await.unwrap();

    let secret = raw.secret.clone();
    let right = tokio::spawn(async move {
        tokio::time::sleep(Duration::from_millis(300)).await;
        send_cancel(addr, pid, &secret).await;
    });
    let started = Instant::now();
    assert_eq!(run(&mut raw, "select pg_sleep(30)").await.as_deref(), Some("57014"));
    assert!(started.elapsed() < Duration::from_secs(10));
    right.await.unwrap();
    assert_eq!(run(&mut raw, "select 1").await, None, "the session goes on");
}

#[tokio::test]
async fn psql_on_libpq_18_asking_for_protocol_3_2_cancels_through_the_proxy() {
    let db = Db::pg18();
    let proxy = RunningProxy::start(db.default_config()).await;
    let libpq18 = db.cluster.binaries().libdir();
    // min too: libpq would otherwise accept a downgrade to 3.0 without a word.
    let conninfo = format!(
        "{} min_protocol_version=3.2 max_protocol_version=3.2",
        proxy.conninfo(SCRAM_USER, SCRAM_PASSWORD, DB)
    );
    let psql = tokio::process::Command::new(pg_harness::psql_path())
        .env("LD_LIBRARY_PATH", &libpq18)
        .args([
            "-X",
            "-v",
            "ON_ERROR_STOP=1",
            "-d",
            &conninfo,
            "-c",
            "select pg_sleep(30)",
        ])
        .stdout(std::process::Stdio::piped())
        .stderr(std::process::Stdio::piped())
        .kill_on_drop(true)
        .spawn()
        .unwrap();
    let pid = psql.id().unwrap() as i32;
    wait_for("psql's query to run", Duration::from_secs(10), || {
        db.cluster
            .psql(
                "postgres",
                "select count(*) from pg_stat_activity where query = 'select pg_sleep(30)'",
            )
            .unwrap()
            == "1"
    })
    .await;
    let started = Instant::now();
    // What Ctrl-C does: psql sends a CancelRequest with the key it was given.
    let sent = std::process::Command::new("kill")
        .args(["-INT", &pid.to_string()])
        .status()
        .unwrap();
    assert!(sent.success());
    let out = tokio::time::timeout(Duration::from_secs(10), psql.wait_with_output())
        .await
        .expect("psql ends once its query is cancelled")
        .unwrap();
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(
        stderr.contains("canceling statement due to user request"),
        "psql's stderr: {stderr}"
    );
    assert!(started.elapsed() < Duration::from_secs(10));
}
