//! The machine and its rollback against fake proxies: no servers needed up to the
//! first statement, which is as far as a hold or drain failure goes.

use super::machine::Run;
use super::*;
use pgcutover_api::{
    HoldReply, PerSide, PhaseUpdate, PrepareReply, ProxyPhase, ResumeReply, RouteReply, Side, StatusReply,
};
use std::sync::Mutex;

/// A proxy that answers from a script and records every call.
#[derive(Default)]
struct Fake {
    calls: Mutex<Vec<&'static str>>,
    phases: Mutex<Vec<String>>,
    hold_refused: bool,
    drain_stuck: bool,
}

impl Fake {
    fn log(&self, call: &'static str) {
        self.calls.lock().unwrap().push(call);
    }

    fn calls(&self) -> Vec<&'static str> {
        self.calls.lock().unwrap().clone()
    }

    fn refused(&self, call: &'static str) -> ProxyError {
        ProxyError::Refused {
            proxy: self.name(),
            call,
            status: 409,
            message: "held already".into(),
        }
    }
}

impl ProxyControl for Fake {
    fn name(&self) -> String {
        "fake proxy".into()
    }

    fn status(&self) -> BoxFuture<'_, Result<StatusReply, ProxyError>> {
        self.log("status");
        Box::pin(async {
            Ok(StatusReply {
                route: Side::Blue,
                epoch: 0,
                phase: ProxyPhase::Serving,
                held_ms: None,
                held_clients: 0,
                in_flight: 0,
                clients: 0,
                server_connections: PerSide::default(),
                server_pids: Some(PerSide::default()),
                databases: Default::default(),
                hold_limit_ms: 30_000,
                closes_unreplicated: false,
            })
        })
    }

    fn prepare<'a>(&'a self, _: &'a str, target: Side, _: Duration) -> BoxFuture<'a, Result<PrepareReply, ProxyError>> {
        self.log("prepare");
        Box::pin(async move {
            Ok(PrepareReply {
                target,
                ready: 0,
                sessions: 0,
                prepare_ms: 0.0,
            })
        })
    }

    fn hold<'a>(&'a self, _: &'a str) -> BoxFuture<'a, Result<HoldReply, ProxyError>> {
        self.log("hold");
        let reply = HoldReply {
            held: true,
            drained: false,
            in_flight: 1,
            sessions: 2,
            drain_ms: 0.0,
            error: None,
        };
        let result = if self.hold_refused {
            Err(self.refused("POST /hold"))
        } else {
            Ok(reply)
        };
        Box::pin(async move { result })
    }

    fn drain<'a>(&'a self, _: &'a str, _: Duration) -> BoxFuture<'a, Result<HoldReply, ProxyError>> {
        self.log("drain");
        let drained = !self.drain_stuck;
        Box::pin(async move {
            Ok(HoldReply {
                held: true,
                drained,
                in_flight: usize::from(!drained),
                sessions: 2,
                drain_ms: 1.0,
                error: None,
            })
        })
    }

    fn route<'a>(&'a self, _: &'a str, _: Side, _: Duration) -> BoxFuture<'a, Result<RouteReply, ProxyError>> {
        self.log("route");
        Box::pin(async { Err(self.refused("POST /route")) })
    }

    fn resume<'a>(&'a self, _: &'a str) -> BoxFuture<'a, Result<ResumeReply, ProxyError>> {
        self.log("resume");
        Box::pin(async {
            Ok(ResumeReply {
                held: false,
                route: Side::Blue,
                held_ms: Some(1.0),
            })
        })
    }

    fn report_phase(&self, update: PhaseUpdate) -> BoxFuture<'_, Result<(), ProxyError>> {
        let name = match (update.phase, update.outcome) {
            (Some(p), _) => p.name().to_owned(),
            (None, Some(o)) => o.name().to_owned(),
            (None, None) => "none".to_owned(),
        };
        self.phases.lock().unwrap().push(name);
        Box::pin(async { Ok(()) })
    }
}

/// Blue and green on a port nothing listens on.
fn config() -> Config {
    let port = std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port();
    let text = format!(
        "[auth]\nauth_type = \"trust\"\n[blue]\nurl = \"postgres://admin@127.0.0.1:{port}/app\"\n[green]\nurl = \"postgres://admin@127.0.0.1:{port}/app\"\n"
    );
    Config::from_toml(&text, "test", std::path::Path::new("."), std::iter::empty()).unwrap()
}

fn options() -> SwitchoverOptions {
    SwitchoverOptions {
        direction: Direction::Forward,
        timeout: Duration::from_secs(5),
        dry_run: false,
    }
}

/// Runs Hold → Flip from a started Preflight and rolls back, as `run` does on failure.
async fn hold_then_roll_back(fake: Arc<Fake>) -> Report {
    let config = config();
    let targets = Targets::from_config(&config).unwrap();
    let proxies: [Arc<dyn ProxyControl>; 1] = [fake];
    let (opts, progress) = (options(), Progress::quiet());
    let mut run = Run::new(&targets, &config, &proxies, &opts, &progress);
    run.go(Phase::Preflight).unwrap();
    let failure = run.hold_to_flip().await.unwrap_err();
    assert!(!run.undo.committed());
    run.rollback(failure).await;
    run.end().await
}

fn phase_names(r: &Report) -> Vec<&'static str> {
    r.phases.iter().map(|p| p.phase.name()).collect()
}

#[tokio::test]
async fn a_refused_hold_rolls_back_and_resumes_every_proxy() {
    let fake = Arc::new(Fake {
        hold_refused: true,
        ..Fake::default()
    });
    let report = hold_then_roll_back(fake.clone()).await;
    assert_eq!(fake.calls(), ["prepare", "hold", "resume"]);
    assert_eq!(report.outcome, Outcome::RolledBack);
    assert!(report.reason.as_deref().unwrap().contains("held already"), "{report:?}");
    assert_eq!(
        phase_names(&report),
        ["preflight", "hold", "rolling_back", "rolled_back"]
    );
    assert_eq!(
        *fake.phases.lock().unwrap(),
        ["preflight", "hold", "rolling_back", "rolled_back", "rolled_back"]
    );
}

#[tokio::test]
async fn a_drain_past_drain_timeout_rolls_back_before_any_fence() {
    let fake = Arc::new(Fake {
        drain_stuck: true,
        ..Fake::default()
    });
    let report = hold_then_roll_back(fake.clone()).await;
    assert_eq!(fake.calls(), ["prepare", "hold", "drain", "resume"]);
    let reason = report.reason.as_deref().unwrap();
    assert!(
        reason.contains("drain_timeout") && !reason.contains("rollback itself"),
        "{reason}"
    );
    assert_eq!(report.transactions_drained, 1);
    assert_eq!(
        phase_names(&report),
        ["preflight", "hold", "drain", "rolling_back", "rolled_back"]
    );
}

#[tokio::test]
async fn a_refused_preflight_holds_nobody() {
    let fake = Arc::new(Fake::default());
    let config = config();
    let targets = Targets::from_config(&config).unwrap();
    let proxies: [Arc<dyn ProxyControl>; 1] = [fake.clone()];
    let report = run(&targets, &config, &proxies, &options(), &Progress::quiet()).await;
    assert_eq!(report.outcome, Outcome::Refused, "{report:?}");
    assert!(report.reason.is_some());
    assert_eq!(fake.calls(), ["status"]);
    assert_eq!(phase_names(&report), ["preflight"]);
}
