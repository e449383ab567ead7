//! The proxy in this process as a switchover drives it: the same calls as its
//! admin API, made directly on its [`Control`], so a switchover run by this process
//! (`POST /switchover`, the demo) treats it exactly like its peers.

use crate::control::{Call, Caller, Control, ControlError};
use pgcutover_api::{
    BoxFuture, HoldReply, PhaseUpdate, PrepareReply, ProxyControl, ProxyError, ResumeReply, RouteReply, Side,
    StatusReply,
};
use std::sync::Arc;
use std::time::Duration;

/// This process's proxy, for the orchestrator.
pub struct LocalProxy(pub Arc<Control>);

fn refused(call: &'static str, e: ControlError) -> ProxyError {
    ProxyError::Refused {
        proxy: "this proxy".into(),
        call,
        status: 409,
        message: e.to_string(),
    }
}

impl LocalProxy {
    /// The lease check the admin API makes, for the same calls made in-process.
    fn admit(&self, run: &str, call: Call, name: &'static str) -> Result<(), ProxyError> {
        self.0.admit(Caller::Run(run), call).map_err(|e| refused(name, e))
    }
}

impl ProxyControl for LocalProxy {
    fn name(&self) -> String {
        "this proxy".into()
    }

    fn status(&self) -> BoxFuture<'_, Result<StatusReply, ProxyError>> {
        Box::pin(async move { Ok(self.0.status_reply()) })
    }

    fn prepare<'a>(
        &'a self,
        run: &'a str,
        target: Side,
        budget: Duration,
    ) -> BoxFuture<'a, Result<PrepareReply, ProxyError>> {
        Box::pin(async move {
            self.admit(run, Call::Prepare, "POST /prepare")?;
            let report = self.0.prepare(target, budget).await;
            report.map(PrepareReply::from).map_err(|e| refused("POST /prepare", e))
        })
    }

    fn hold<'a>(&'a self, run: &'a str) -> BoxFuture<'a, Result<HoldReply, ProxyError>> {
        Box::pin(async move {
            self.admit(run, Call::Hold, "POST /hold")?;
            self.0.hold();
            Ok(self.0.hold_reply())
        })
    }

    fn drain<'a>(&'a self, run: &'a str, _budget: Duration) -> BoxFuture<'a, Result<HoldReply, ProxyError>> {
        // The drain is bounded by this proxy's own drain settings, as over HTTP.
        Box::pin(async move {
            self.admit(run, Call::Drain, "POST /drain")?;
            Ok(HoldReply::from(self.0.drain_configured().await))
        })
    }

    fn route<'a>(
        &'a self,
        run: &'a str,
        target: Side,
        budget: Duration,
    ) -> BoxFuture<'a, Result<RouteReply, ProxyError>> {
        Box::pin(async move {
            self.admit(run, Call::Route, "POST /route")?;
            let report = self.0.flip(target, budget).await;
            report.map(RouteReply::from).map_err(|e| refused("POST /route", e))
        })
    }

    fn resume<'a>(&'a self, run: &'a str) -> BoxFuture<'a, Result<ResumeReply, ProxyError>> {
        Box::pin(async move {
            self.admit(run, Call::Resume, "POST /resume")?;
            Ok(self.0.resume_reply())
        })
    }

    fn report_phase(&self, update: PhaseUpdate) -> BoxFuture<'_, Result<(), ProxyError>> {
        self.0.record_phase(&update);
        Box::pin(async { Ok(()) })
    }
}
