//! TLS between clients and the proxy.

use crate::support::*;

struct TestCert {
    cert_pem: String,
}

fn make_cert(db: &Db) -> (TestCert, String) {
    let ck = rcgen::generate_simple_self_signed(vec!["127.0.0.1".to_owned(), "localhost".to_owned()]).unwrap();
    let cert_pem = ck.cert.pem();
    let cert = db.dir.write("server.crt", &cert_pem);
    let key = db.dir.write("server.key", &ck.key_pair.serialize_pem());
    (
        TestCert { cert_pem },
        format!("tls_cert_file = {cert:?}\ntls_key_file = {key:?}"),
    )
}

fn rustls_connector(cert: &TestCert) -> tokio_postgres_rustls::MakeRustlsConnect {
    use rustls_pki_types::pem::PemObject;
    let mut roots = rustls::RootCertStore::empty();
    roots
        .add(rustls_pki_types::CertificateDer::from_pem_slice(cert.cert_pem.as_bytes()).unwrap())
        .unwrap();
    let config =
        rustls::ClientConfig::builder_with_provider(std::sync::Arc::new(rustls::crypto::ring::default_provider()))
            .with_safe_default_protocol_versions()
            .unwrap()
            .with_root_certificates(roots)
            .with_no_client_auth();
    tokio_postgres_rustls::MakeRustlsConnect::new(config)
}

#[tokio::test]
async fn tls_client_connects_and_queries() {
    let db = Db::pg15();
    let (cert, tls_lines) = make_cert(&db);
    let proxy = RunningProxy::start(db.config(
        &format!("{tls_lines}\ntls_mode = \"require\""),
        &format!("auth_file = {:?}", db.userlist()),
    ))
    .await;
    let conninfo = format!("{} sslmode=require", proxy.conninfo(SCRAM_USER, SCRAM_PASSWORD, DB));
    let (client, conn) = tokio_postgres::connect(&conninfo, rustls_connector(&cert))
        .await
        .unwrap();
    tokio::spawn(conn);
    // A large result proves the pump handles TLS records both ways.
    let n: i64 = client
        .query_one(
            "select sum(length(repeat('x', i)))::int8 from generate_series(1, 3000) i",
            &[],
        )
        .await
        .unwrap()
        .get(0);
    assert_eq!(n, (1..=3000i64).sum::<i64>());
    let rows = client
        .query("select repeat('y', 100000) from generate_series(1, 30)", &[])
        .await
        .unwrap();
    assert_eq!(rows.len(), 30);

    // psql (libpq + OpenSSL) too.
    let port = proxy.addr.port();
    let conninfo = format!("host=127.0.0.1 port={port} user={PLAIN_USER} dbname={DB} sslmode=require");
    let out = client_tool(
        pg_harness::psql_path(),
        PLAIN_PASSWORD,
        &["-X", "-At", "-c", "select 'tls ok'", &conninfo],
    )
    .await;
    assert!(out.success, "{}", out.output);
    assert_eq!(out.stdout.trim(), "tls ok");
}

#[tokio::test]
async fn tls_mode_require_refuses_plaintext_with_28000() {
    let db = Db::pg15();
    let (_cert, tls_lines) = make_cert(&db);
    let proxy = RunningProxy::start(db.config(
        &format!("{tls_lines}\ntls_mode = \"require\""),
        &format!("auth_file = {:?}", db.userlist()),
    ))
    .await;
    let e = connect(&format!(
        "{} sslmode=disable",
        proxy.conninfo(SCRAM_USER, SCRAM_PASSWORD, DB)
    ))
    .await
    .unwrap_err();
    assert_eq!(sqlstate(&e), "28000", "{e}");
    assert!(e.as_db_error().unwrap().message().contains("TLS"), "{e}");
}

#[tokio::test]
async fn tls_mode_disable_answers_no_and_serves_plaintext() {
    let db = Db::pg15();
    let (cert, tls_lines) = make_cert(&db);
    let proxy = RunningProxy::start(db.config(
        &format!("{tls_lines}\ntls_mode = \"disable\""),
        &format!("auth_file = {:?}", db.userlist()),
    ))
    .await;
    // sslmode=prefer sends SSLRequest; the proxy says 'N' and the session goes on in plaintext.
    let conninfo = format!("{} sslmode=prefer", proxy.conninfo(SCRAM_USER, SCRAM_PASSWORD, DB));
    let (c, conn) = tokio_postgres::connect(&conninfo, rustls_connector(&cert))
        .await
        .unwrap();
    tokio::spawn(conn);
    c.simple_query("select 1").await.unwrap();
    // sslmode=require cannot be satisfied.
    let conninfo = format!("{} sslmode=require", proxy.conninfo(SCRAM_USER, SCRAM_PASSWORD, DB));
    assert!(tokio_postgres::connect(&conninfo, rustls_connector(&cert))
        .await
        .is_err());
}

/// The admin API over HTTPS: a peer that trusts its CA holds and resumes it with
/// the token; plain HTTP and a peer trusting another CA get nothing. A proxy whose
/// admin API would take the token in clear on a network address does not start.
#[tokio::test]
async fn the_admin_api_serves_https_and_never_takes_the_token_in_clear_from_a_network() {
    use pgcutover_api::{ProxyControl, Side};
    use pgcutover_orchestrator::switchover::RemoteProxy;
    let db = Db::pg15();
    let token = db.dir.write("admin.token", ADMIN_TOKEN);
    let auth = format!("auth_file = {:?}", db.userlist());

    // Refused before anything is bound, naming the fix.
    let mut open = db.config(&format!("admin_token_file = {token:?}"), &auth);
    open.proxy.admin_listen = "10.0.0.1:9187".parse().unwrap();
    let refused = pgcutover_proxy::Proxy::bind(open)
        .await
        .err()
        .expect("a token over plain HTTP on a network address");
    assert!(refused.to_string().contains("admin_tls_cert_file"), "{refused}");

    let ca = rcgen::generate_simple_self_signed(vec!["127.0.0.1".to_owned()]).unwrap();
    let cert = db.dir.write("admin.crt", &ca.cert.pem());
    let key = db.dir.write("admin.key", &ca.key_pair.serialize_pem());
    let proxy = RunningProxy::start(db.config(
        &format!("admin_token_file = {token:?}\nadmin_tls_cert_file = {cert:?}\nadmin_tls_key_file = {key:?}"),
        &auth,
    ))
    .await;
    let url = format!("https://127.0.0.1:{}", proxy.admin.port());
    let peer = RemoteProxy::new(&url, admin_token(), Some(&cert)).unwrap();
    let status = peer.status().await.unwrap();
    assert_eq!(status.route, Side::Blue);
    assert!(status.server_pids.is_some(), "the token was presented: {status:?}");
    assert!(peer.hold("tls-test").await.unwrap().held);
    assert!(proxy.control.status_reply().held_ms.is_some());
    peer.resume("tls-test").await.unwrap();
    assert!(proxy.control.status_reply().held_ms.is_none());

    let plain = RemoteProxy::new(&format!("http://127.0.0.1:{}", proxy.admin.port()), None, None).unwrap();
    assert!(plain.status().await.is_err(), "plain HTTP to the HTTPS port");
    let stranger = rcgen::generate_simple_self_signed(vec!["127.0.0.1".to_owned()]).unwrap();
    let stranger = db.dir.write("stranger.crt", &stranger.cert.pem());
    let untrusted = RemoteProxy::new(&url, admin_token(), Some(&stranger)).unwrap();
    let e = untrusted.status().await.unwrap_err().to_string();
    assert!(e.contains("certificate"), "{e}");
    assert!(proxy.control.status_reply().held_ms.is_none());
}
