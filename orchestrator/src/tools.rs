//! PostgreSQL's client programs (pg_dump, pg_restore, psql), found and run with the
//! admin login in the environment (never on the command line).

use crate::error::{one_line, OrchestratorError};
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};

/// A directory holding pg_dump, pg_restore and psql of one major version.
#[derive(Debug, Clone)]
pub(crate) struct PgTools {
    bindir: Option<PathBuf>,
    /// Major version of pg_dump.
    pub major: u32,
}

const TOOLS: [&str; 3] = ["pg_dump", "pg_restore", "psql"];

impl PgTools {
    /// `configured` (`[replication] bindir`), else the `PATH`, else
    /// `/usr/lib/postgresql/<N>/bin` for N from `min_major` up; pg_dump must be at least
    /// `min_major` (blue's major version: pg_dump refuses newer servers).
    pub fn locate(configured: Option<&Path>, min_major: u32) -> Result<PgTools, OrchestratorError> {
        let mut candidates: Vec<Option<PathBuf>> = Vec::new();
        match configured {
            Some(dir) => candidates.push(Some(dir.to_owned())),
            None => {
                candidates.push(None);
                for n in (min_major..=30).rev() {
                    candidates.push(Some(PathBuf::from(format!("/usr/lib/postgresql/{n}/bin"))));
                }
            }
        }
        let mut seen = Vec::new();
        for dir in candidates {
            let tools = PgTools {
                bindir: dir.clone(),
                major: 0,
            };
            let Some(major) = tools.version("pg_dump") else {
                continue;
            };
            let all = TOOLS.iter().all(|t| tools.version(t).is_some());
            let place = dir.as_deref().map(|d| d.display().to_string()).unwrap_or("PATH".into());
            seen.push(format!("{major} in {place}"));
            if all && major >= min_major {
                return Ok(PgTools { bindir: dir, major });
            }
        }
        let found = if seen.is_empty() {
            "none found".to_owned()
        } else {
            format!("found {}", seen.join(", "))
        };
        Err(OrchestratorError::Tool {
            tool: "pg_dump".into(),
            message: format!(
                "the copy method needs pg_dump, pg_restore and psql of PostgreSQL {min_major} or newer ({found}); \
                 install them (e.g. apt install postgresql-client-{min_major}) or set [replication] bindir"
            ),
        })
    }

    fn path(&self, tool: &str) -> PathBuf {
        match &self.bindir {
            Some(d) => d.join(tool),
            None => PathBuf::from(tool),
        }
    }

    fn version(&self, tool: &str) -> Option<u32> {
        let out = Command::new(self.path(tool)).arg("--version").output().ok()?;
        let text = String::from_utf8_lossy(&out.stdout);
        let rest = text.split("PostgreSQL)").nth(1)?;
        rest.trim().split(['.', ' ']).next()?.parse().ok()
    }

    /// Runs `tool args` with `env`, off the async runtime; stdout on success, else an
    /// error naming the tool and its stderr.
    pub async fn run(
        &self,
        tool: &'static str,
        args: Vec<String>,
        env: Vec<(&'static str, String)>,
        doing: String,
    ) -> Result<Vec<u8>, OrchestratorError> {
        let path = self.path(tool);
        let out = tokio::task::spawn_blocking(move || {
            let mut cmd = Command::new(&path);
            cmd.args(&args).stdin(Stdio::null());
            for k in [
                "PGSERVICE",
                "PGSERVICEFILE",
                "PGOPTIONS",
                "PGHOSTADDR",
                "PGTARGETSESSIONATTRS",
            ] {
                cmd.env_remove(k);
            }
            cmd.envs(env);
            cmd.output()
        })
        .await
        .map_err(|e| OrchestratorError::Tool {
            tool: tool.into(),
            message: format!("{doing}: {e}"),
        })?
        .map_err(|e| OrchestratorError::Tool {
            tool: tool.into(),
            message: format!("{doing}: cannot run {}: {e}", self.path(tool).display()),
        })?;
        if !out.status.success() {
            let err = String::from_utf8_lossy(&out.stderr);
            let lines: Vec<&str> = err.lines().filter(|l| !l.trim().is_empty()).collect();
            let tail = lines[lines.len().saturating_sub(4)..].join("\n");
            return Err(OrchestratorError::Tool {
                tool: tool.into(),
                message: format!("{doing} failed ({}): {}", out.status, one_line(&tail)),
            });
        }
        Ok(out.stdout)
    }
}
