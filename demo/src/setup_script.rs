//! Installs PostgreSQL 17 when the demo finds it missing, by running the repository's
//! own `scripts/setup.sh --pg17-only` (embedded at build time, so the installed binary
//! needs no checkout): one install procedure for the scripts, the tests and the demo.

use std::os::fd::AsFd;
use std::process::Stdio;
use std::time::Duration;

const SETUP_SH: &str = include_str!("../../scripts/setup.sh");
/// The npm download is ~30 MB; a machine that cannot reach the registry fails fast.
const INSTALL_TIMEOUT: Duration = Duration::from_secs(600);

/// Runs the embedded setup script with `--pg17-only`; its output goes to stderr.
/// Returns the reason on failure.
pub(crate) async fn install_pg17() -> Result<(), String> {
    let dir = std::env::temp_dir().join(format!("pgcutover-setup-{}", std::process::id()));
    std::fs::create_dir_all(&dir).map_err(|e| format!("create {}: {e}", dir.display()))?;
    let script = dir.join("setup.sh");
    let result = async {
        std::fs::write(&script, SETUP_SH).map_err(|e| format!("write {}: {e}", script.display()))?;
        // The script's stdout goes to our stderr: stdout is for the demo's report.
        let stderr = || {
            std::io::stderr()
                .as_fd()
                .try_clone_to_owned()
                .map(Stdio::from)
                .unwrap_or_else(|_| Stdio::inherit())
        };
        let mut child = tokio::process::Command::new("bash")
            .arg(&script)
            .arg("--pg17-only")
            .stdin(Stdio::null())
            .stdout(stderr())
            .stderr(Stdio::inherit())
            .kill_on_drop(true)
            .spawn()
            .map_err(|e| format!("cannot run bash: {e}"))?;
        match tokio::time::timeout(INSTALL_TIMEOUT, child.wait()).await {
            Ok(Ok(status)) if status.success() => Ok(()),
            Ok(Ok(status)) => Err(format!(
                "scripts/setup.sh --pg17-only exited with {status} (its output is above)"
            )),
            Ok(Err(e)) => Err(format!("waiting for scripts/setup.sh: {e}")),
            Err(_) => Err(format!(
                "scripts/setup.sh --pg17-only did not finish within {INSTALL_TIMEOUT:?}"
            )),
        }
    }
    .await;
    let _ = std::fs::remove_dir_all(&dir);
    result
}
