//! What `deploy/` ships against what the proxy exports: every metric the alert
//! rules, their tests and the Grafana dashboard name is one a running proxy
//! serves on `/metrics`, with the kind the name implies. (The files' syntax and the
//! rules' behaviour are checked by `scripts/check-deploy.sh` with promtool.)

use crate::support::*;
use std::collections::{BTreeSet, HashMap};

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
