//! Every part of the protocol a client uses goes through the proxy unchanged.

use crate::support::*;
use bytes::Bytes;
use futures_util::{SinkExt, StreamExt, TryStreamExt};
use std::time::Duration;
use tokio::io::AsyncWriteExt;

#[tokio::test]
async fn simple_and_extended_protocol_round_trip() {
    let db = Db::pg15();
    let proxy = RunningProxy::start(db.default_config()).await;
    let c = connect(&proxy.conninfo(SCRAM_USER, SCRAM_PASSWORD, DB)).await.unwrap();

    let rows = c.simple_query("select 1 as a; select 'two' as b").await.unwrap();
    let values: Vec<String> = rows
        .iter()
        .filter_map(|m| match m {
            tokio_postgres::SimpleQueryMessage::Row(r) => Some(r.get(0).unwrap().to_owned()),
            _ => None,
        })
        .collect();
    assert_eq!(values, ["1", "two"]);

    let row = c
        .query_one("select $1::int + $2::int, current_user", &[&40i32, &2i32])
        .await
        .unwrap();
    assert_eq!(row.get::<_, i32>(0), 42);
    assert_eq!(row.get::<_, String>(1), SCRAM_USER);
}

#[tokio::test]
async fn named_prepared_statements_are_reused() {
    let db = Db::pg15();
    let proxy = RunningProxy::start(db.default_config()).await;
    let c = connect(&proxy.conninfo(SCRAM_USER, SCRAM_PASSWORD, DB)).await.unwrap();
    c.batch_execute("create table kv (k int primary key, v text)")
        .await
        .unwrap();
    // tokio-postgres prepares named statements (s0, s1...) and reuses them by name.
    let insert = c.prepare("insert into kv values ($1, $2)").await.unwrap();
    let select = c.prepare("select v from kv where k = $1").await.unwrap();
    for k in 0..200i32 {
        c.execute(&insert, &[&k, &format!("v{k}")]).await.unwrap();
    }
    for k in (0..200i32).step_by(37) {
        let v: String = c.query_one(&select, &[&k]).await.unwrap().get(0);
        assert_eq!(v, format!("v{k}"));
    }
    let named: i64 = c
        .query_one("select count(*) from pg_prepared_statements where not from_sql", &[])
        .await
        .unwrap()
        .get(0);
    assert!(named >= 2, "the server holds the named statements: {named}");
}

#[tokio::test]
async fn copy_in_and_out_of_100k_rows() {
    let db = Db::pg15();
    let proxy = RunningProxy::start(db.default_config()).await;
    let c = connect(&proxy.conninfo(SCRAM_USER, SCRAM_PASSWORD, DB)).await.unwrap();
    c.batch_execute("create table items (id int primary key, name text)")
        .await
        .unwrap();

    let sink = c.copy_in("copy items from stdin").await.unwrap();
    futures_util::pin_mut!(sink);
    let mut chunk = String::new();
    for i in 0..100_000 {
        chunk.push_str(&format!("{i}\titem-{i}\n"));
        if chunk.len() > 64 * 1024 {
            sink.send(Bytes::from(std::mem::take(&mut chunk))).await.unwrap();
        }
    }
    sink.send(Bytes::from(chunk)).await.unwrap();
    let copied = sink.finish().await.unwrap();
    assert_eq!(copied, 100_000);
    let sum: i64 = c
        .query_one("select sum(id)::int8 from items", &[])
        .await
        .unwrap()
        .get(0);
    assert_eq!(sum, (0..100_000i64).sum::<i64>());

    let out = c
        .copy_out("copy (select * from items order by id) to stdout")
        .await
        .unwrap();
    let chunks: Vec<Bytes> = out.try_collect().await.unwrap();
    let text: Vec<u8> = chunks.concat();
    let lines: Vec<&[u8]> = text.split(|&b| b == b'\n').filter(|l| !l.is_empty()).collect();
    assert_eq!(lines.len(), 100_000);
    assert_eq!(lines[99_999], b"99999\titem-99999");
}

#[tokio::test]
async fn listen_notify_reaches_the_listener() {
    let db = Db::pg15();
    let proxy = RunningProxy::start(db.default_config()).await;
    let (listener, mut conn) =
        tokio_postgres::connect(&proxy.conninfo(SCRAM_USER, SCRAM_PASSWORD, DB), tokio_postgres::NoTls)
            .await
            .unwrap();
    let (tx, mut rx) = tokio::sync::mpsc::unbounded_channel();
    tokio::spawn(async move {
        let mut messages = futures_util::stream::poll_fn(move |cx| conn.poll_message(cx));
        while let Some(Ok(m)) = messages.next().await {
            if let tokio_postgres::AsyncMessage::Notification(n) = m {
                let _ = tx.send((n.channel().to_owned(), n.payload().to_owned()));
            }
        }
    });
    listener.batch_execute("listen jobs").await.unwrap();
    let sender = connect(&proxy.conninfo(PLAIN_USER, PLAIN_PASSWORD, DB)).await.unwrap();
    sender.batch_execute("notify jobs, 'job 1'").await.unwrap();
    sender
        .execute("select pg_notify('jobs', $1)", &[&"job 2"])
        .await
        .unwrap();
    for expected in ["job 1", "job 2"] {
        let (channel, payload) = tokio::time::timeout(Duration::from_secs(10), rx.recv())
            .await
            .expect("notification within 10s")
            .unwrap();
        assert_eq!((channel.as_str(), payload.as_str()), ("jobs", expected));
    }
}

#[tokio::test]
async fn result_set_of_50_mb_arrives_whole() {
    let db = Db::pg15();
    let proxy = RunningProxy::start(db.default_config()).await;
    let c = connect(&proxy.conninfo(SCRAM_USER, SCRAM_PASSWORD, DB)).await.unwrap();
    // 50,000 rows of 1 KB, plus one 2 MB value that spans many reads.
    let rows = c
        .query(
            "select i, repeat(chr(65 + i % 26), case when i = 1 then 2000000 else 1000 end) \
             from generate_series(1, 50000) i",
            &[],
        )
        .await
        .unwrap();
    assert_eq!(rows.len(), 50_000);
    let total: usize = rows.iter().map(|r| r.get::<_, &str>(1).len()).sum();
    assert_eq!(total, 49_999 * 1000 + 2_000_000);
    assert!(rows[0].get::<_, &str>(1).bytes().all(|b| b == b'B'));
    assert_eq!(rows[49_999].get::<_, i32>(0), 50_000);
}

#[tokio::test]
async fn error_in_transaction_then_rollback_keeps_session_usable() {
    let db = Db::pg15();
    let proxy = RunningProxy::start(db.default_config()).await;
    let c = connect(&proxy.conninfo(SCRAM_USER, SCRAM_PASSWORD, DB)).await.unwrap();
    c.batch_execute("create table t (id int primary key)").await.unwrap();
    c.batch_execute("begin; insert into t values (1)").await.unwrap();
    let e = c.batch_execute("insert into t values (1)").await.unwrap_err();
    assert_eq!(sqlstate(&e), "23505");
    let e = c.batch_execute("select 1").await.unwrap_err();
    assert_eq!(sqlstate(&e), "25P02", "the transaction is aborted until ROLLBACK");
    c.batch_execute("rollback").await.unwrap();
    let n: i64 = c.query_one("select count(*) from t", &[]).await.unwrap().get(0);
    assert_eq!(n, 0);
}

#[tokio::test]
async fn cancel_request_reaches_the_running_query() {
    let db = Db::pg15();
    let proxy = RunningProxy::start(db.default_config()).await;
    let c = connect(&proxy.conninfo(SCRAM_USER, SCRAM_PASSWORD, DB)).await.unwrap();
    let pid: i32 = c.query_one("select pg_backend_pid()", &[]).await.unwrap().get(0);
    let token = c.cancel_token();
    let started = std::time::Instant::now();
    let canceller = tokio::spawn(async move {
        tokio::time::sleep(Duration::from_millis(300)).await;
        token.cancel_query(tokio_postgres::NoTls).await
    });
    let e = c.batch_execute("select pg_sleep(30)").await.unwrap_err();
    assert_eq!(sqlstate(&e), "57014", "query_canceled");
    assert!(started.elapsed() < Duration::from_secs(10));
    canceller.await.unwrap().unwrap();
    // Same server session afterwards: the cancel hit only the query.
    let after: i32 = c.query_one("select pg_backend_pid()", &[]).await.unwrap().get(0);
    assert_eq!(after, pid);
}

#[tokio::test]
async fn server_session_belongs_to_the_clients_own_user() {
    let db = Db::pg15();
    let proxy = RunningProxy::start(db.default_config()).await;
    let c = connect(&proxy.conninfo(SCRAM_USER, SCRAM_PASSWORD, DB)).await.unwrap();
    let pid: i32 = c.query_one("select pg_backend_pid()", &[]).await.unwrap().get(0);
    let app: String = c
        .query_one("select application_name from pg_stat_activity where pid = $1", &[&pid])
        .await
        .unwrap()
        .get(0);
    // tokio-postgres sends no application_name; the server session is the client's own.
    assert_eq!(app, "");
    let listed: i64 = db
        .cluster
        .psql(
            "postgres",
            &format!("select count(*) from pg_stat_activity where pid = {pid} and usename = '{SCRAM_USER}'"),
        )
        .unwrap()
        .parse()
        .unwrap();
    assert_eq!(listed, 1);
}

#[tokio::test]
async fn server_side_termination_reaches_the_client_as_the_servers_own_error_only() {
    let db = Db::pg15();
    // trust, so a raw socket can log in and see every byte the proxy sends.
    let proxy =
        RunningProxy::start(db.config("", &format!("auth_type = \"trust\"\nauth_file = {:?}", db.userlist()))).await;
    let mut raw = raw_login(&proxy).await;
    // Inside a transaction: an idle session would be reconnected instead (reconnect.rs).
    raw.write_all(b"Q\0\0\0\x0aBEGIN\0").await.unwrap();
    let in_transaction =
        format!("select pid from pg_stat_activity where usename = '{PLAIN_USER}' and state = 'idle in transaction'");
    wait_for("the session to be in its transaction", Duration::from_secs(10), || {
        !db.cluster.psql("postgres", &in_transaction).unwrap().is_empty()
    })
    .await;
    let pid: i64 = db.cluster.psql("postgres", &in_transaction).unwrap().parse().unwrap();
    db.cluster
        .psql("postgres", &format!("select pg_terminate_backend({pid})"))
        .unwrap();
    // Exactly the server's FATAL 57P01: no second error from the proxy on top.
    assert_eq!(errors_until_close(raw).await, ["57P01"]);
    // The proxy itself still serves others.
    connect(&proxy.conninfo(PLAIN_USER, PLAIN_PASSWORD, DB))
        .await
        .unwrap()
        .simple_query("select 1")
        .await
        .unwrap();
}
