//! Running server programs as the `postgres` OS user, with timeouts.

use crate::*;

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) struct RunAs {
    pub(crate) uid: u32,
    pub(crate) gid: u32,
}

pub(crate) fn effective_uid() -> u32 {
    static EUID: OnceLock<u32> = OnceLock::new();
    *EUID.get_or_init(|| {
        // "Uid:\treal\teffective\tsaved\tfs"
        fs::read_to_string("/proc/self/status")
            .ok()
            .and_then(|s| {
                s.lines()
                    .find(|l| l.starts_with("Uid:"))
                    .and_then(|l| l.split_whitespace().nth(2).and_then(|u| u.parse().ok()))
            })
            .or_else(|| {
                let out = Command::new("id").arg("-u").output().ok()?;
                String::from_utf8_lossy(&out.stdout).trim().parse().ok()
            })
            .unwrap_or(u32::MAX)
    })
}

/// Whether this process runs as root (then servers run as the `postgres` OS user).
pub fn is_root() -> bool {
    effective_uid() == 0
}

pub(crate) fn lookup_user(name: &str) -> Option<RunAs> {
    let passwd = fs::read_to_string("/etc/passwd").ok()?;
    passwd.lines().find_map(|line| {
        let f: Vec<&str> = line.split(':').collect();
        if f.len() >= 4 && f[0] == name {
            Some(RunAs {
                uid: f[2].parse().ok()?,
                gid: f[3].parse().ok()?,
            })
        } else {
            None
        }
    })
}

/// Who runs the servers: `None` = this process's own user (not root).
pub(crate) fn server_user() -> Res<Option<RunAs>> {
    if !is_root() {
        return Ok(None);
    }
    lookup_user(SERVER_OS_USER).map(Some).ok_or_else(|| {
        HarnessError(format!(
            "running as root and there is no `{SERVER_OS_USER}` OS user to run PostgreSQL as \
             (initdb refuses root); {SETUP_HINT}"
        ))
    })
}

pub(crate) fn chown_to(path: &Path, who: Option<RunAs>) -> Res<()> {
    if let Some(w) = who {
        std::os::unix::fs::lchown(path, Some(w.uid), Some(w.gid))
            .map_err(|e| io_err(format_args!("chown {}", path.display()), e))?;
    }
    Ok(())
}

/// A command for a server-side program, run as the server user when root.
pub(crate) fn server_command(bin: &Binaries, program: &str, who: Option<RunAs>, cwd: &Path) -> Command {
    let mut cmd = Command::new(bin.tool(program));
    if let Some(w) = who {
        // std calls setgroups(0, NULL) before setuid when groups are not set explicitly,
        // so root's supplementary groups are dropped.
        cmd.uid(w.uid).gid(w.gid);
    }
    for k in [
        "PGDATA",
        "PGPORT",
        "PGHOST",
        "PGOPTIONS",
        "PGUSER",
        "PGDATABASE",
        "PGPASSWORD",
    ] {
        cmd.env_remove(k);
    }
    cmd.env("LC_ALL", "C").current_dir(cwd);
    for (k, v) in &bin.env {
        cmd.env(k, v);
    }
    cmd
}

/// Runs a command with optional stdin, capturing output, killing it after `timeout`.
pub(crate) fn run(cmd: &mut Command, stdin: Option<&[u8]>, timeout: Duration) -> io::Result<Output> {
    cmd.stdin(if stdin.is_some() { Stdio::piped() } else { Stdio::null() })
        .stdout(Stdio::piped())
        .stderr(Stdio::piped());
    let mut child = cmd.spawn()?;
    let writer = match (stdin, child.stdin.take()) {
        (Some(data), Some(mut pipe)) => {
            let data = data.to_vec();
            Some(std::thread::spawn(move || {
                let _ = pipe.write_all(&data);
            }))
        }
        _ => None,
    };
    let mut so = child.stdout.take().expect("piped stdout");
    let mut se = child.stderr.take().expect("piped stderr");
    let out_t = std::thread::spawn(move || {
        let mut v = Vec::new();
        let _ = so.read_to_end(&mut v);
        v
    });
    let err_t = std::thread::spawn(move || {
        let mut v = Vec::new();
        let _ = se.read_to_end(&mut v);
        v
    });
    let deadline = Instant::now() + timeout;
    let mut nap = Duration::from_millis(1);
    let status = loop {
        if let Some(st) = child.try_wait()? {
            break st;
        }
        if Instant::now() >= deadline {
            let _ = child.kill();
            let _ = child.wait();
            return Err(io::Error::new(
                io::ErrorKind::TimedOut,
                format!("timed out after {timeout:?}"),
            ));
        }
        std::thread::sleep(nap);
        nap = (nap * 2).min(Duration::from_millis(20));
    };
    if let Some(w) = writer {
        let _ = w.join();
    }
    let stdout = out_t.join().unwrap_or_default();
    let stderr = err_t.join().unwrap_or_default();
    Ok(Output { status, stdout, stderr })
}

pub(crate) fn describe(out: &Output) -> String {
    format!(
        "exit status {}\nstdout:\n{}\nstderr:\n{}",
        out.status,
        String::from_utf8_lossy(&out.stdout).trim_end(),
        String::from_utf8_lossy(&out.stderr).trim_end()
    )
}
