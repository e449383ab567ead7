//! Client authentication by the proxy, and the proxy's login to the server.

use crate::support::*;
use std::time::Duration;

async fn assert_login(proxy: &RunningProxy, user: &str, password: &str) {
    let c = connect(&proxy.conninfo(user, password, DB))
        .await
        .unwrap_or_else(|e| panic!("{user} logs in: {e}"));
    let who: String = c.query_one("select current_user", &[]).await.unwrap().get(0);
    assert_eq!(who, user);
}

async fn assert_refused(proxy: &RunningProxy, user: &str, password: &str, code: &str) -> String {
    let e = connect(&proxy.conninfo(user, password, DB))
        .await
        .err()
        .unwrap_or_else(|| panic!("{user} with password {password:?} must be refused"));
    assert_eq!(sqlstate(&e), code, "{e}");
    e.as_db_error().map(|d| d.message().to_owned()).unwrap_or_default()
}

#[tokio::test]
async fn scram_clients_log_in_and_wrong_passwords_fail() {
    let db = Db::pg15();
    let proxy = RunningProxy::start(db.default_config()).await;
    // Verifier in auth_file: SCRAM with the client, SCRAM pass-through to the server.
    assert_login(&proxy, SCRAM_USER, SCRAM_PASSWORD).await;
    // Plain password in auth_file: SCRAM with the client, password to the server.
    assert_login(&proxy, PLAIN_USER, PLAIN_PASSWORD).await;
    assert_login(&proxy, pg_harness::SUPERUSER, pg_harness::SUPERUSER_PASSWORD).await;
    let m = assert_refused(&proxy, SCRAM_USER, "wrong", "28P01").await;
    assert!(m.contains(SCRAM_USER), "{m}");
    assert_refused(&proxy, PLAIN_USER, "wrong", "28P01").await;
    // An md5 hash cannot verify SCRAM. As PostgreSQL does, the client sees an
    // ordinary failed exchange (telling it would tell anyone which kind of secret a
    // user has); the proxy's log says what to store instead.
    let m = assert_refused(&proxy, MD5_USER, MD5_PASSWORD, "28P01").await;
    assert_eq!(m, format!("password authentication failed for user \"{MD5_USER}\""));
}

#[tokio::test]
async fn scram_pass_through_works_with_only_the_verifier() {
    let db = Db::pg15();
    // auth_file has nothing but the verifier PostgreSQL stored: the proxy never learns the password.
    let userlist = db.dir.write(
        "verifier-only.txt",
        &format!("\"{SCRAM_USER}\" \"{}\"\n", db.stored_secret(SCRAM_USER)),
    );
    let proxy = RunningProxy::start(db.config("", &format!("auth_file = {userlist:?}"))).await;
    for _ in 0..3 {
        assert_login(&proxy, SCRAM_USER, SCRAM_PASSWORD).await;
    }
    assert_refused(&proxy, SCRAM_USER, "not it", "28P01").await;
}

#[tokio::test]
async fn md5_clients_log_in_and_wrong_passwords_fail() {
    let db = Db::pg15();
    let proxy =
        RunningProxy::start(db.config("", &format!("auth_type = \"md5\"\nauth_file = {:?}", db.userlist()))).await;
    // md5 hash in auth_file: md5 with the client and with the server (pg_hba says md5).
    assert_login(&proxy, MD5_USER, MD5_PASSWORD).await;
    assert_refused(&proxy, MD5_USER, "wrong", "28P01").await;
    // Plain password: md5 with the client, SCRAM with the server.
    assert_login(&proxy, PLAIN_USER, PLAIN_PASSWORD).await;
    // A SCRAM verifier: the proxy asks the client for SCRAM instead, as PostgreSQL does.
    assert_login(&proxy, SCRAM_USER, SCRAM_PASSWORD).await;
    assert_refused(&proxy, SCRAM_USER, "wrong", "28P01").await;
}

#[tokio::test]
async fn auth_query_looks_up_users_missing_from_the_auth_file() {
    let db = Db::pg15();
    let auth = format!(
        "auth_file = {:?}\nauth_user = \"{}\"\nauth_cache_ttl = \"1h\"",
        db.userlist(),
        pg_harness::SUPERUSER
    );
    let proxy = RunningProxy::start(db.config("", &auth)).await;
    assert_login(&proxy, QUERY_USER, QUERY_PASSWORD).await;
    assert_refused(&proxy, QUERY_USER, "wrong", "28P01").await;
    // The wrong password dropped the cached secret; a changed password is picked up
    // at the next attempt even though the cache TTL is an hour.
    db.cluster
        .psql("postgres", &format!("alter role {QUERY_USER} password 'changed'"))
        .unwrap();
    assert_login(&proxy, QUERY_USER, "changed").await;
    assert_refused(&proxy, "nobody_here", "x", "28P01").await;
}

/// auth_query runs before the client proved anything, so it is bounded: one kept
/// connection for every lookup, a fixed `search_path` (a database's own
/// `search_path` cannot put another `pg_shadow` first), and misses rate-limited per
/// client address, while cached users still log in.
#[tokio::test]
async fn auth_query_keeps_one_connection_resolves_names_in_the_catalog_and_limits_unknown_users() {
    let db = Db::pg15();
    // The unqualified query PgBouncer's documentation shows.
    let auth = format!(
        "auth_file = {:?}\nauth_user = \"{}\"\nauth_cache_ttl = \"1h\"\nauth_query = \"SELECT usename, passwd FROM pg_shadow WHERE usename = $1\"",
        db.userlist(),
        pg_harness::SUPERUSER
    );
    let proxy = RunningProxy::start(db.config("", &auth)).await;
    // A view that would make the user unknown, first on the path of the lookup
    // database (postgres, the first replicated one here) and of the client's.
    for database in ["postgres", DB] {
        db.cluster
            .psql(
                database,
                &format!(
                    "create schema evil;
                     create view evil.pg_shadow as select usename, passwd from pg_catalog.pg_shadow where false;
                     alter database {database} set search_path = evil, pg_catalog"
                ),
            )
            .unwrap();
    }
    assert_login(&proxy, QUERY_USER, QUERY_PASSWORD).await;
    // A wrong password drops the cached secret: the next login looks it up again.
    assert_refused(&proxy, QUERY_USER, "wrong", "28P01").await;
    assert_login(&proxy, QUERY_USER, QUERY_PASSWORD).await;

    let lookups = "select count(*) from pg_stat_activity where application_name = 'pgcutover auth_query'";
    assert_eq!(
        db.cluster.psql("postgres", lookups).unwrap(),
        "1",
        "one kept connection"
    );
    let mut limited = 0;
    for i in 0..40 {
        let e = connect(&proxy.conninfo(&format!("nobody_{i}"), "x", DB))
            .await
            .unwrap_err();
        match sqlstate(&e).as_str() {
            "28P01" => {}
            "53300" => limited += 1,
            other => panic!("nobody_{i}: {other}: {e}"),
        }
    }
    assert!(
        (15..=25).contains(&(40 - limited)),
        "{limited} of 40 unknown users rate-limited"
    );
    assert_eq!(
        db.cluster.psql("postgres", lookups).unwrap(),
        "1",
        "still one connection"
    );
    // A user the cache knows is not limited.
    assert_login(&proxy, QUERY_USER, QUERY_PASSWORD).await;
}

/// Under `auth_type = "trust"` the admin console still asks for the password: it
/// can hold and resume every client.
#[tokio::test]
async fn the_console_takes_a_password_even_under_trust() {
    let db = Db::pg15();
    let proxy = RunningProxy::start(db.config(
        &format!("admin_users = [\"{PLAIN_USER}\"]"),
        &format!("auth_type = \"trust\"\nauth_file = {:?}", db.userlist()),
    ))
    .await;
    let console = |password: &str| {
        format!(
            "host=127.0.0.1 port={} user={PLAIN_USER} password='{password}' dbname=pgcutover connect_timeout=10",
            proxy.addr.port()
        )
    };
    let e = connect(&console("wrong")).await.expect_err("a wrong password");
    assert_eq!(sqlstate(&e), "28P01", "{e}");
    let c = connect(&console(PLAIN_PASSWORD)).await.expect("the right password");
    c.simple_query("SHOW STATUS").await.unwrap();
    // Ordinary sessions are still trusted.
    assert_login(&proxy, PLAIN_USER, "anything").await;
}

#[tokio::test]
async fn trust_lets_clients_in_and_logs_in_with_auth_file_secrets() {
    let db = Db::pg15();
    let proxy =
        RunningProxy::start(db.config("", &format!("auth_type = \"trust\"\nauth_file = {:?}", db.userlist()))).await;
    assert_login(&proxy, PLAIN_USER, "whatever the client says").await;
    assert_login(&proxy, MD5_USER, "").await;
}

#[tokio::test]
async fn login_errors_carry_the_right_sqlstate() {
    let db = Db::pg15();
    let proxy =
        RunningProxy::start(db.config("max_client_conn = 3", &format!("auth_file = {:?}", db.userlist()))).await;

    // An unknown user goes through a SCRAM exchange and is refused exactly like a
    // known user with a wrong password, as PostgreSQL does: names cannot be probed.
    let unknown = assert_refused(&proxy, "stranger", "x", "28P01").await;
    let wrong = assert_refused(&proxy, SCRAM_USER, "x", "28P01").await;
    assert_eq!(unknown, wrong.replace(SCRAM_USER, "stranger"));

    // Unknown database: the server's own error, passed through.
    let e = connect(&proxy.conninfo(SCRAM_USER, SCRAM_PASSWORD, "no_such_db"))
        .await
        .unwrap_err();
    assert_eq!(sqlstate(&e), "3D000", "{e}");

    // Too many clients.
    let mut held = Vec::new();
    for _ in 0..3 {
        held.push(connect(&proxy.conninfo(SCRAM_USER, SCRAM_PASSWORD, DB)).await.unwrap());
    }
    let m = assert_refused(&proxy, SCRAM_USER, SCRAM_PASSWORD, "53300").await;
    assert!(m.contains("3"), "{m}");
    // Refused before it sends a byte: a connection over the limit costs no session.
    let mut raw = tokio::net::TcpStream::connect(proxy.addr).await.unwrap();
    let mut answer = Vec::new();
    tokio::time::timeout(
        Duration::from_secs(5),
        tokio::io::AsyncReadExt::read_to_end(&mut raw, &mut answer),
    )
    .await
    .expect("the refusal comes without a startup packet")
    .unwrap();
    assert_eq!(answer.first(), Some(&b'E'), "{answer:?}");
    assert!(String::from_utf8_lossy(&answer).contains("C53300"), "{answer:?}");
    // A full proxy still forwards cancels, as PostgreSQL does.
    let sleeping = held[0].cancel_token();
    let query = held[0].simple_query("select pg_sleep(30)");
    let cancel = async {
        tokio::time::sleep(Duration::from_millis(500)).await;
        sleeping.cancel_query(tokio_postgres::NoTls).await
    };
    let (cancelled, sent) = tokio::time::timeout(Duration::from_secs(20), async { tokio::join!(query, cancel) })
        .await
        .expect("the cancel ends the query");
    sent.unwrap();
    assert_eq!(sqlstate(&cancelled.unwrap_err()), "57014");
    drop(held);
    // Slots are released when clients leave.
    let deadline = tokio::time::Instant::now() + Duration::from_secs(10);
    loop {
        match connect(&proxy.conninfo(SCRAM_USER, SCRAM_PASSWORD, DB)).await {
            Ok(_) => break,
            Err(e) if sqlstate(&e) == "53300" && tokio::time::Instant::now() < deadline => {
                tokio::time::sleep(Duration::from_millis(50)).await
            }
            Err(e) => panic!("{e}"),
        }
    }
}

#[tokio::test]
async fn unreachable_backend_gives_08006_naming_it() {
    let db = Db::pg15();
    let mut config = db.default_config();
    let dead_port = pg_harness::free_port();
    config.blue.url.port = dead_port;
    let proxy = RunningProxy::start(config).await;
    let e = connect(&proxy.conninfo(SCRAM_USER, SCRAM_PASSWORD, DB))
        .await
        .unwrap_err();
    assert_eq!(sqlstate(&e), "08006", "{e}");
    let m = e.as_db_error().unwrap().message().to_owned();
    assert!(m.contains("blue") && m.contains(&dead_port.to_string()), "{m}");
}
