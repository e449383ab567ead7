//! Resume: every proxy lets transactions start again, on whatever route it has.

use super::machine::Run;
use futures_util::future::join_all;
use tracing::warn;

impl Run<'_> {
    /// Releases every hold and records how long clients were held. A proxy that does
    /// not answer is only warned about: its hold ends by itself.
    pub(super) async fn resume_all(&mut self) {
        let resumes = self.proxies.iter().map(|p| p.resume(&self.run_id));
        for (p, r) in self.proxies.iter().zip(join_all(resumes).await) {
            if let Err(e) = r {
                warn!(
                    "{}: resume: {e} (its hold ends by itself after the switchover timeout)",
                    p.name()
                );
            }
        }
        if let Some(t) = self.held_at {
            self.report.max_hold_ms = t.elapsed().as_secs_f64() * 1000.0;
        }
    }
}
