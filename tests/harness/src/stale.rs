//! Cleaning up clusters left behind by killed test processes.

use crate::*;

pub(crate) const CLUSTER_PREFIX: &str = "pgcutover-test-";

/// Whether a process exists and is not a zombie waiting to be reaped.
pub(crate) fn pid_alive(pid: u32) -> bool {
    match fs::read_to_string(format!("/proc/{pid}/status")) {
        Ok(s) => !s.lines().any(|l| l.starts_with("State:") && l.contains("Z")),
        Err(_) => false,
    }
}

pub(crate) fn read_postmaster_pid(data: &Path) -> Option<u32> {
    let pidfile = fs::read_to_string(data.join("postmaster.pid")).ok()?;
    pidfile.lines().next()?.trim().parse().ok()
}

/// Waits (bounded) until a process has exited.
pub(crate) fn wait_gone(pid: u32, timeout: Duration) -> bool {
    let deadline = Instant::now() + timeout;
    while pid_alive(pid) {
        if Instant::now() >= deadline {
            return false;
        }
        std::thread::sleep(Duration::from_millis(5));
    }
    true
}

pub(crate) fn owner_pid(name: &str, prefix: &str) -> Option<u32> {
    name.strip_prefix(prefix)?.split('-').next()?.parse().ok()
}

/// Stops servers and removes directories left behind by test processes that died
/// without running their destructors (killed by a timeout, SIGKILL, abort).
pub(crate) fn cleanup_stale() {
    let me = std::process::id();
    let root = temp_root();
    let Ok(entries) = fs::read_dir(&root) else {
        return;
    };
    for entry in entries.flatten().take(10_000) {
        let name = entry.file_name().to_string_lossy().into_owned();
        let Some(pid) = owner_pid(&name, CLUSTER_PREFIX) else {
            continue;
        };
        if pid == me || pid_alive(pid) {
            continue;
        }
        let dir = entry.path();
        let data = dir.join("data");
        if data.join("postmaster.pid").exists() {
            if let Ok(bindir) = fs::read_to_string(dir.join("bindir")) {
                let bin = Binaries {
                    bindir: PathBuf::from(bindir.trim()),
                    major: 0,
                    version: String::new(),
                    env: Vec::new(),
                };
                let who = server_user().ok().flatten();
                let _ = stop_server(&bin, who, &dir, &data);
            }
            kill_postmaster(&data);
        }
        remove_tree(&dir);
    }
    let troot = root.join("pgcutover-templates");
    if let Ok(entries) = fs::read_dir(&troot) {
        for entry in entries.flatten().take(10_000) {
            let name = entry.file_name().to_string_lossy().into_owned();
            let pid = owner_pid(&name, ".tmp-").or_else(|| owner_pid(&name, ".stale-"));
            if let Some(pid) = pid {
                if pid != me && !pid_alive(pid) {
                    remove_tree(&entry.path());
                }
            }
        }
    }
}

/// Last resort when pg_ctl cannot stop a server: SIGKILL the postmaster named in
/// postmaster.pid, if that process is a postgres.
pub(crate) fn kill_postmaster(data: &Path) {
    let Some(pid) = read_postmaster_pid(data) else {
        return;
    };
    kill_if_postgres(pid);
}

pub(crate) fn kill_if_postgres(pid: u32) {
    let comm = fs::read_to_string(format!("/proc/{pid}/comm")).unwrap_or_default();
    if comm.trim() == "postgres" && pid_alive(pid) {
        let _ = run(
            Command::new("kill").args(["-KILL", &pid.to_string()]),
            None,
            Duration::from_secs(10),
        );
        // Children exit when they notice the postmaster is gone.
        wait_gone(pid, Duration::from_secs(10));
    }
}

pub(crate) fn stop_server(bin: &Binaries, who: Option<RunAs>, dir: &Path, data: &Path) -> io::Result<Output> {
    run(
        server_command(bin, "pg_ctl", who, dir)
            .arg("stop")
            .arg("-D")
            .arg(data)
            .args(["-m", "immediate", "-w", "-t", "60"]),
        None,
        Duration::from_secs(90),
    )
}
