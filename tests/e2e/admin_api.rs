//! The admin API as a client of it sees it: every endpoint's method, what `/status`
//! shows with and without the token, hold without drain, `/drain`, `/phase`, and
//! callers that stall: they are dropped, and never starve the data path.

use crate::support::*;
use std::time::{Duration, Instant};
use tokio::io::{AsyncReadExt, AsyncWriteExt};

/// Blue 15 and green 17 with the same roles, and a proxy with the admin token.
async fn proxy_with_green() -> (Db, Db, RunningProxy) {
    let blue = Db::pg15();
    let green = Db::pg17();
    green.copy_role_secrets_from(&blue);
    let proxy = RunningProxy::start(blue.config_with_green(&green, "")).await;
    (blue, green, proxy)
}

#[tokio::test]
async fn status_hides_backend_pids_without_the_token_and_each_path_has_one_method() {
    let (_blue, _green, proxy) = proxy_with_green().await;
    let c = connect(&proxy.conninfo(SCRAM_USER, SCRAM_PASSWORD, DB)).await.unwrap();
    let pid: i32 = c.query_one("select pg_backend_pid()", &[]).await.unwrap().get(0);

    let (code, open) = http(proxy.admin, "GET", "/status", None, "").await;
    assert_eq!(code, 200, "{open}");
    assert!(open.get("server_pids").is_none(), "pids without the token: {open}");
    assert_eq!(
        (open["route"].as_str(), open["clients"].as_u64()),
        (Some("blue"), Some(1))
    );
    let (_, wrong) = http(proxy.admin, "GET", "/status", Some("wrong-token-wrong-token"), "").await;
    assert!(wrong.get("server_pids").is_none(), "pids with a wrong token: {wrong}");
    let (_, with) = http(proxy.admin, "GET", "/status", Some(ADMIN_TOKEN), "").await;
    assert_eq!(with["server_pids"]["blue"], serde_json::json!([pid]), "{with}");

    for (method, path, code) in [
        ("POST", "/status", 405),
        ("GET", "/hold", 405),
        ("GET", "/route", 405),
        ("POST", "/routes", 404),
        ("POST", "/", 404),
    ] {
        let (got, body) = http(proxy.admin, method, path, Some(ADMIN_TOKEN), "{\"target\":\"green\"}").await;
        assert_eq!(got, code, "{method} {path}: {body}");
        assert!(body["error"].is_string(), "{method} {path}: {body}");
    }
    let (_, status) = http(proxy.admin, "GET", "/status", None, "").await;
    assert_eq!(status["route"], "blue", "no path but POST /route flips: {status}");
}

#[tokio::test]
async fn hold_without_drain_answers_at_once_and_drain_waits_for_the_transaction() {
    let (_blue, _green, proxy) = proxy_with_green().await;
    let c = connect(&proxy.conninfo(SCRAM_USER, SCRAM_PASSWORD, DB)).await.unwrap();
    c.batch_execute("BEGIN; SELECT 1").await.unwrap();

    let started = Instant::now();
    let (code, held) = proxy.post("/hold", "{\"drain\": false}").await;
    assert_eq!(code, 200, "{held}");
    assert_eq!(
        (&held["held"], &held["drained"], &held["in_flight"]),
        (&true.into(), &false.into(), &1.into())
    );
    assert!(
        started.elapsed() < Duration::from_secs(2),
        "a hold without drain waits for nothing"
    );

    let drain = tokio::spawn({
        let admin = proxy.admin;
        async move { http(admin, "POST", "/drain", Some(ADMIN_TOKEN), "").await }
    });
    tokio::time::sleep(Duration::from_millis(300)).await;
    assert!(
        !drain.is_finished(),
        "the drain waits for the open transaction (a 300 ms sample)"
    );
    c.batch_execute("COMMIT").await.unwrap();
    let (code, drained) = drain.await.unwrap();
    assert_eq!((code, &drained["drained"]), (200, &true.into()), "{drained}");
    let (_, status) = http(proxy.admin, "GET", "/status", None, "").await;
    assert_eq!(status["phase"], "held", "{status}");
    let (code, _) = proxy.post("/resume", "").await;
    assert_eq!(code, 200);
    c.query_one("select 1", &[])
        .await
        .expect("the session goes on after the resume");
}

#[tokio::test]
async fn phase_reports_show_in_status_and_count_in_the_metrics() {
    let blue = Db::pg15();
    let proxy = RunningProxy::start(blue.default_config_with_token()).await;
    let (code, reply) = proxy
        .post(
            "/phase",
            "{\"phase\": \"fence\", \"ended\": {\"phase\": \"drain\", \"ms\": 3.5}}",
        )
        .await;
    assert_eq!((code, &reply["phase"]), (200, &"fence".into()), "{reply}");
    let (_, status) = http(proxy.admin, "GET", "/status", None, "").await;
    assert_eq!(status["phase"], "fence", "{status}");
    let (code, reply) = proxy
        .post(
            "/phase",
            "{\"phase\": null, \"ended\": {\"phase\": \"resume\", \"ms\": 1.0}, \"outcome\": \"rolled_back\"}",
        )
        .await;
    assert_eq!((code, &reply["phase"]), (200, &"serving".into()), "{reply}");
    let metrics = http_text(proxy.admin, "GET", "/metrics", None, "").await.1;
    for line in [
        "pgcutover_switchover_phase_seconds_count{phase=\"drain\"} 1",
        "pgcutover_switchover_phase_seconds_count{phase=\"resume\"} 1",
        "pgcutover_switchovers_total{outcome=\"rolled_back\"} 1",
    ] {
        assert!(metrics.contains(line), "no {line} in\n{metrics}");
    }
    let (code, body) = proxy.post("/phase", "{\"phase\": \"teleport\"}").await;
    assert_eq!(code, 400, "{body}");
    let (code, _) = http(proxy.admin, "POST", "/phase", None, "{\"phase\": \"fence\"}").await;
    assert_eq!(code, 401, "reporting a phase needs the token");
}

#[tokio::test]
async fn stalled_admin_callers_are_dropped_and_never_starve_clients() {
    let blue = Db::pg15();
    let proxy = RunningProxy::start(blue.default_config_with_token()).await;
    // More stalled callers than the admin API serves at once, each with half a request.
    let mut stalled = Vec::new();
    for _ in 0..100 {
        let mut s = tokio::net::TcpStream::connect(proxy.admin).await.unwrap();
        s.write_all(b"POST /hold HTTP/1.1\r\nHost: x\r\n").await.unwrap();
        stalled.push(s);
    }
    // The data path is unaffected.
    let c = connect(&proxy.conninfo(SCRAM_USER, SCRAM_PASSWORD, DB)).await.unwrap();
    c.query_one("select 1", &[]).await.unwrap();
    // Every stalled caller is closed within the header timeout (5 s), with nothing held.
    let started = Instant::now();
    for s in &mut stalled {
        let mut buf = [0u8; 512];
        let deadline = Duration::from_secs(15).saturating_sub(started.elapsed());
        let read = tokio::time::timeout(deadline, s.read(&mut buf)).await;
        assert!(
            read.is_ok(),
            "a stalled admin caller still open after {:?}",
            started.elapsed()
        );
    }
    assert!(!proxy.control.is_held(), "half a POST /hold holds nothing");
    let (code, status) = http(proxy.admin, "GET", "/status", None, "").await;
    assert_eq!((code, status["route"].as_str()), (200, Some("blue")), "{status}");
}

/// Guessing the admin token gets nowhere: after 10 wrong tokens from an address,
/// every request of its that carries a token is refused for a minute, the right
/// token included, while requests without one (`/status`, `/metrics`) go on.
#[tokio::test]
async fn an_address_guessing_the_admin_token_is_refused_even_the_right_one() {
    let (_blue, _green, proxy) = proxy_with_green().await;
    for i in 0..10 {
        let (code, _) = http(proxy.admin, "POST", "/hold", Some(&format!("guess-{i:020}")), "").await;
        assert_eq!(code, 401, "guess {i}");
    }
    let (code, reply) = http(proxy.admin, "POST", "/hold", Some(ADMIN_TOKEN), "").await;
    assert_eq!(code, 429, "{reply}");
    assert!(proxy.control.status_reply().held_ms.is_none(), "nothing was held");
    let (code, _) = http(proxy.admin, "GET", "/status", None, "").await;
    assert_eq!(code, 200);
}

/// Runs `pgcutover ready --admin <admin>`: (exit status 0, its first output line).
async fn pgcutover_ready(admin: std::net::SocketAddr) -> (bool, String) {
    let out = tokio::process::Command::new(env!("CARGO_BIN_EXE_pgcutover"))
        .args(["ready", "--admin", &admin.to_string()])
        .output()
        .await
        .unwrap();
    let text = format!(
        "{}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    (out.status.success(), text.lines().next().unwrap_or_default().to_owned())
}

/// Polls `GET /ready` until it answers `code`; returns the body.
async fn ready_becomes(proxy: &RunningProxy, code: u16, limit: Duration) -> serde_json::Value {
    let deadline = Instant::now() + limit;
    loop {
        let (got, body) = http(proxy.admin, "GET", "/ready", None, "").await;
        if got == code {
            return body;
        }
        assert!(
            Instant::now() < deadline,
            "GET /ready still {got} after {limit:?}: {body}"
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

/// `GET /ready` (the readiness probe, no token): 503 naming the server while the
/// route's server does not accept connections, 200 once it does, still 200 while
/// held (held clients wait at the proxy), and 503 while the proxy drains at shutdown.
#[tokio::test]
async fn ready_follows_the_routes_server_and_shutdown_but_not_a_hold() {
    let db = Db::pg15();
    // Blue first points at a port where nothing listens.
    let free = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let port = free.local_addr().unwrap().port();
    drop(free);
    let mut config = db.default_config();
    config.blue.url.port = port;
    let proxy = RunningProxy::start(config).await;
    let down = ready_becomes(&proxy, 503, Duration::from_secs(10)).await;
    assert_eq!(
        (down["ready"].as_bool(), down["route"].as_str()),
        (Some(false), Some("blue"))
    );
    assert!(down["reason"].as_str().unwrap().contains("blue server"), "{down}");
    let (_, metrics) = http_text(proxy.admin, "GET", "/metrics", None, "").await;
    assert!(metrics.contains("pgcutover_server_up{target=\"blue\"} 0"), "{metrics}");
    assert!(metrics.contains("pgcutover_max_client_conn "), "{metrics}");

    // Something accepts connections there now: ready within a probe interval.
    let listener = tokio::net::TcpListener::bind(("127.0.0.1", port)).await.unwrap();
    let accepting = tokio::spawn(async move { while listener.accept().await.is_ok() {} });
    let down_cli = pgcutover_ready(proxy.admin).await;
    let up = ready_becomes(&proxy, 200, Duration::from_secs(15)).await;
    assert_eq!(up, serde_json::json!({"ready": true, "route": "blue"}));
    // `pgcutover ready` (the image's HEALTHCHECK) says the same with its exit code.
    let up_cli = pgcutover_ready(proxy.admin).await;
    assert_eq!(up_cli, (true, "ready (routing to blue)".to_owned()));
    assert!(
        !down_cli.0 && down_cli.1.starts_with("not ready: the blue server"),
        "{down_cli:?}"
    );
    assert!(proxy.control.hold());
    let (code, held) = http(proxy.admin, "GET", "/ready", None, "").await;
    assert_eq!(code, 200, "a hold does not make the proxy unready: {held}");
    proxy.control.resume();
    accepting.abort();

    // Shutting down with a transaction open: unready while it drains.
    let mut proxy = RunningProxy::start(db.default_config()).await;
    let c = connect(&proxy.conninfo(SCRAM_USER, SCRAM_PASSWORD, DB)).await.unwrap();
    c.batch_execute("begin; select 1").await.unwrap();
    ready_becomes(&proxy, 200, Duration::from_secs(5)).await;
    proxy.shut_down();
    let draining = ready_becomes(&proxy, 503, Duration::from_secs(5)).await;
    assert!(
        draining["reason"].as_str().unwrap().contains("shutting down"),
        "{draining}"
    );
    c.batch_execute("commit").await.unwrap();
}
