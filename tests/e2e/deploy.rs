//! What `deploy/` ships against what the proxy exports: every metric the alert
//! rules, their tests and the Grafana dashboard name is one a running proxy
//! serves on `/metrics`, with the kind the name implies. (The files' syntax and the
//! rules' behaviour are checked by `scripts/check-deploy.sh` with promtool.)

use crate::support::*;
use std::collections::{BTreeSet, HashMap};
use std::time::Duration;

/// Every `pgcutover_...` name in `text`.
fn metric_names(text: &str) -> BTreeSet<String> {
    let mut names = BTreeSet::new();
    let mut rest = text;
    while let Some(at) = rest.find("pgcutover_") {
        let tail = &rest[at..];
        let end = tail
            .find(|c: char| !(c.is_ascii_lowercase() || c.is_ascii_digit() || c == '_'))
            .unwrap_or(tail.len());
        // Part of a longer word (a file name, say) is not a metric.
        let standalone = rest[..at]
            .chars()
            .next_back()
            .is_none_or(|c| !(c.is_alphanumeric() || c == '_' || c == '-' || c == '/'));
        if standalone {
            names.insert(tail[..end].to_owned());
        }
        rest = &tail[end..];
    }
    names
}

#[tokio::test]
async fn every_metric_the_rules_and_the_dashboard_use_is_exported() {
    let blue = Db::pg15();
    let green = Db::pg17();
    green.copy_role_secrets_from(&blue);
    let proxy = RunningProxy::start(blue.config_with_green(&green, "")).await;
    let (code, exposition) = http_text(proxy.admin, "GET", "/metrics", None, "").await;
    assert_eq!(code, 200);
    // name -> kind, from the `# TYPE` lines (present for a family with no samples yet).
    let kinds: HashMap<&str, &str> = exposition
        .lines()
        .filter_map(|l| l.strip_prefix("# TYPE "))
        .filter_map(|l| l.split_once(' '))
        .collect();
    assert!(kinds.len() > 15, "{exposition}");
    let exported = |name: &str| -> bool {
        let base = |suffix: &str, kind: &str| name.strip_suffix(suffix).is_some_and(|b| kinds.get(b) == Some(&kind));
        matches!(kinds.get(name), Some(&"gauge"))
            || base("_total", "counter")
            || ["_bucket", "_sum", "_count"].iter().any(|s| base(s, "histogram"))
    };
    let root = std::path::Path::new(env!("CARGO_MANIFEST_DIR"));
    let mut checked = 0;
    for file in [
        "deploy/prometheus/pgcutover-rules.yml",
        "deploy/prometheus/pgcutover-rules.test.yml",
        "deploy/grafana/pgcutover.json",
    ] {
        let text = std::fs::read_to_string(root.join(file)).unwrap();
        let names = metric_names(&text);
        assert!(!names.is_empty(), "{file} names no metric");
        let missing: Vec<_> = names.iter().filter(|n| !exported(n)).collect();
        assert!(
            missing.is_empty(),
            "{file} uses metrics the proxy does not export: {missing:?}"
        );
        checked += names.len();
    }
    assert!(checked >= 20, "only {checked} metric names found");
}

#[test]
fn metric_names_are_found_whole() {
    let names =
        metric_names("rate(pgcutover_bytes_proxied_total[1m]) / pgcutover_max_client_conn\nrules/pgcutover_x.yml");
    assert_eq!(
        names.into_iter().collect::<Vec<_>>(),
        ["pgcutover_bytes_proxied_total", "pgcutover_max_client_conn"]
    );
}

/// GET `path` from Prometheus' HTTP API. HTTP/1.0, so that the reply is never
/// chunked (the admin API helper reads HTTP/1.1 replies with a Content-Length).
async fn prom_get(prometheus: std::net::SocketAddr, path: &str) -> serde_json::Value {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    let mut s = tokio::net::TcpStream::connect(prometheus).await.unwrap();
    s.write_all(format!("GET {path} HTTP/1.0\r\nHost: prometheus\r\n\r\n").as_bytes())
        .await
        .unwrap();
    let mut out = Vec::new();
    tokio::time::timeout(Duration::from_secs(30), s.read_to_end(&mut out))
        .await
        .expect("Prometheus answers")
        .unwrap();
    let text = String::from_utf8_lossy(&out);
    let (head, body) = text.split_once("\r\n\r\n").unwrap_or((&text, ""));
    assert!(
        head.starts_with("HTTP/1.0 200") || head.starts_with("HTTP/1.1 200"),
        "GET {path}: {text}"
    );
    serde_json::from_str(body).unwrap_or_else(|e| panic!("GET {path}: {e}: {body}"))
}

/// One PromQL instant query through Prometheus' HTTP API: (labels, value) per series.
async fn promql(prometheus: std::net::SocketAddr, query: &str) -> Vec<(serde_json::Value, f64)> {
    let encoded: String = query
        .bytes()
        .map(|b| match b {
            b'a'..=b'z' | b'A'..=b'Z' | b'0'..=b'9' | b'_' | b'.' | b'-' => (b as char).to_string(),
            _ => format!("%{b:02X}"),
        })
        .collect();
    let body = prom_get(prometheus, &format!("/api/v1/query?query={encoded}")).await;
    body["data"]["result"]
        .as_array()
        .unwrap_or(&Vec::new())
        .iter()
        .map(|r| (r["metric"].clone(), r["value"][1].as_str().unwrap().parse().unwrap()))
        .collect()
}

/// Polls `query` until `ok` holds for its result.
async fn promql_until(
    prometheus: std::net::SocketAddr,
    query: &str,
    what: &str,
    ok: impl Fn(&[(serde_json::Value, f64)]) -> bool,
) -> Vec<(serde_json::Value, f64)> {
    let deadline = std::time::Instant::now() + Duration::from_secs(30);
    loop {
        let result = promql(prometheus, query).await;
        if ok(&result) {
            return result;
        }
        assert!(std::time::Instant::now() < deadline, "{what}: {query} = {result:?}");
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
}

/// Debian's Prometheus scrapes two proxy processes every 100 ms, with the alert
/// rules loaded, while one of them runs a switchover whose drain waits 1.5 s for a
/// transaction: through Prometheus' HTTP API the held-clients series rises and
/// returns to 0, and the switchover counter goes up on both proxies.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_real_prometheus_sees_the_hold_rise_and_fall_and_the_switchover_counted() {
    let (blue, green, _, _) = crate::switchover::replicated(false, "").await;
    let ports: Vec<u16> = (0..5).map(|_| pg_harness::free_port()).collect();
    let mut processes = Vec::new();
    let mut admins = Vec::new();
    for i in 0..2 {
        let text = blue.switchover_config_text(
            &green,
            &format!("127.0.0.1:{}", ports[2 * i]),
            &format!("127.0.0.1:{}", ports[2 * i + 1]),
            "reverse_replication = false",
        );
        let file = blue.dir.write(&format!("proxy{i}.toml"), &text);
        let peers = format!("[\"http://127.0.0.1:{}\"]", ports[3 - 2 * i]);
        let (process, admin) =
            crate::switchover::proxy_process_with_env(&file, ports[2 * i + 1], &[("PGCUTOVER_PROXY_PEERS", &peers)])
                .await;
        processes.push(process);
        admins.push(admin);
    }
    let rules = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("deploy/prometheus/pgcutover-rules.yml");
    let prom_config = blue.dir.write(
        "prometheus.yml",
        &format!(
            "global:\n  scrape_interval: 100ms\n  scrape_timeout: 100ms\n  evaluation_interval: 1s\nrule_files:\n  - {rules:?}\nscrape_configs:\n  - job_name: pgcutover\n    static_configs:\n      - targets: [\"{}\", \"{}\"]\n",
            admins[0], admins[1]
        ),
    );
    let prometheus: std::net::SocketAddr = format!("127.0.0.1:{}", ports[4]).parse().unwrap();
    let _prometheus = crate::switchover::KillOnDrop(
        std::process::Command::new("/usr/bin/prometheus")
            .arg(format!("--config.file={}", prom_config.display()))
            .arg(format!("--storage.tsdb.path={}", blue.dir.0.join("tsdb").display()))
            .arg(format!("--web.listen-address={prometheus}"))
            .arg("--log.level=warn")
            .stderr(std::fs::File::create(blue.dir.0.join("prometheus.log")).unwrap())
            .spawn()
            .expect("/usr/bin/prometheus (scripts/setup.sh installs it)"),
    );
    let deadline = std::time::Instant::now() + Duration::from_secs(30);
    // Listening is not ready: it answers 503 until its storage is open.
    while tokio::net::TcpStream::connect(prometheus).await.is_err()
        || http_text(prometheus, "GET", "/-/ready", None, "").await.0 != 200
    {
        assert!(
            std::time::Instant::now() < deadline,
            "Prometheus did not get ready: {:?}",
            std::fs::read_to_string(blue.dir.0.join("prometheus.log"))
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    promql_until(prometheus, "up{job=\"pgcutover\"} == 1", "both proxies scraped", |r| {
        r.len() == 2
    })
    .await;
    let rules_loaded = prom_get(prometheus, "/api/v1/rules").await;
    let alerts = rules_loaded["data"]["groups"][0]["rules"]
        .as_array()
        .map_or(0, Vec::len);
    assert_eq!(alerts, 8, "the alert rules load into Prometheus: {rules_loaded}");
    let before = promql(prometheus, "pgcutover_switchovers_total{outcome=\"completed\"}").await;
    assert!(before.iter().all(|(_, v)| *v == 0.0), "{before:?}");

    // Three idle sessions on the first proxy are held while a fourth's transaction
    // keeps the drain waiting for 1.5 s.
    let listen = |i: usize| {
        format!(
            "host=127.0.0.1 port={} user={PLAIN_USER} password={PLAIN_PASSWORD} dbname={DB} connect_timeout=10",
            ports[2 * i]
        )
    };
    let mut idle = Vec::new();
    for _ in 0..3 {
        let c = connect(&listen(0)).await.unwrap();
        c.simple_query("select 1").await.unwrap();
        idle.push(c);
    }
    let busy = connect(&listen(0)).await.unwrap();
    busy.batch_execute("begin; insert into items (note) values ('keeps the drain waiting')")
        .await
        .unwrap();
    let committer = tokio::spawn(async move {
        tokio::time::sleep(Duration::from_millis(1500)).await;
        busy.batch_execute("commit").await.unwrap();
        busy
    });
    crate::switchover::post_switchover_completes(admins[0]).await;
    committer.await.unwrap();

    let counted = promql_until(
        prometheus,
        "pgcutover_switchovers_total{outcome=\"completed\"}",
        "the switchover counted on both proxies",
        |r| r.len() == 2 && r.iter().all(|(_, v)| *v == 1.0),
    )
    .await;
    assert_eq!(counted.len(), 2);
    let peak = promql(
        prometheus,
        &format!(
            "max_over_time(pgcutover_held_clients{{instance=\"{}\"}}[5m])",
            admins[0]
        ),
    )
    .await;
    assert!(
        peak.first().is_some_and(|(_, v)| *v >= 3.0),
        "the held clients never showed in Prometheus: {peak:?}"
    );
    promql_until(
        prometheus,
        "max(pgcutover_held_clients)",
        "held clients back to 0",
        |r| r.first().is_some_and(|(_, v)| *v == 0.0),
    )
    .await;
    for c in &idle {
        c.simple_query("select 1")
            .await
            .expect("the held sessions go on, on green");
    }
}
