//! `pgcutover demo`, the README's first command, as a user runs it: the real binary
//! starts blue (15) and green (17), switches over under load and must report every
//! invariant holding; and on Ctrl-C it must leave nothing behind.

use std::io::{BufRead, BufReader};
use std::path::PathBuf;
use std::process::{Child, Command, Stdio};
use std::sync::mpsc;
use std::time::{Duration, Instant};

fn demo(args: &[&str]) -> Command {
    let mut cmd = Command::new(env!("CARGO_BIN_EXE_pgcutover"));
    cmd.arg("demo").args(args).env_remove("RUST_LOG");
    cmd
}

/// What the demo (pid `pid`) leaves in the temp dir: its work dir and its clusters.
fn leftovers(pid: u32) -> Vec<PathBuf> {
    let root = pg_harness::temp_root();
    let mine = [format!("pgcutover-demo-{pid}"), format!("pgcutover-test-{pid}-")];
    std::fs::read_dir(&root)
        .map(|entries| {
            entries
                .flatten()
                .filter(|e| {
                    let name = e.file_name().to_string_lossy().into_owned();
                    name == mine[0] || name.starts_with(&mine[1])
                })
                .map(|e| e.path())
                .collect()
        })
        .unwrap_or_default()
}

/// The child's stderr, line by line, on a channel (so a test can wait for a line with a deadline).
fn stderr_lines(child: &mut Child) -> mpsc::Receiver<String> {
    let (tx, rx) = mpsc::channel();
    let stderr = child.stderr.take().expect("piped stderr");
    std::thread::spawn(move || {
        for line in BufReader::new(stderr).lines().map_while(Result::ok) {
            if tx.send(line).is_err() {
                break;
            }
        }
    });
    rx
}

/// Every line still to come, once the child has exited (its stderr reaches EOF).
fn rest(rx: &mpsc::Receiver<String>) -> Vec<String> {
    let mut lines = Vec::new();
    while let Ok(line) = rx.recv_timeout(Duration::from_secs(5)) {
        lines.push(line);
    }
    lines
}

fn wait_exit(child: &mut Child, limit: Duration) -> std::process::ExitStatus {
    let deadline = Instant::now() + limit;
    loop {
        if let Some(status) = child.try_wait().expect("try_wait") {
            return status;
        }
        if Instant::now() > deadline {
            let _ = child.kill();
            panic!("pgcutover demo did not exit within {limit:?}");
        }
        std::thread::sleep(Duration::from_millis(50));
    }
}

/// The number right before `label`: `count_before("(12,140 on blue, 9 on green)", "on green")` is 9.
fn count_before(text: &str, label: &str) -> u64 {
    let head = &text[..text.find(label).unwrap_or_else(|| panic!("no {label:?} in {text:?}"))];
    let token = head.split([' ', '(']).rev().find(|t| !t.is_empty()).unwrap_or_default();
    token
        .replace(',', "")
        .parse()
        .unwrap_or_else(|_| panic!("no count before {label:?} in {text:?}"))
}

#[test]
fn demo_switches_over_under_load_with_no_error_and_no_lost_write() {
    let started = Instant::now();
    let mut child = demo(&["--clients", "8", "--seconds", "6"])
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .expect("pgcutover demo starts");
    let pid = child.id();
    let progress = stderr_lines(&mut child);
    let status = wait_exit(&mut child, Duration::from_secs(120));
    let mut stdout = String::new();
    std::io::Read::read_to_string(&mut child.stdout.take().unwrap(), &mut stdout).unwrap();
    let stderr = rest(&progress);
    let context = format!("--- stdout ---\n{stdout}\n--- stderr ---\n{}", stderr.join("\n"));

    assert!(status.success(), "demo exited with {status}\n{context}");
    for line in [
        "(blue) → PostgreSQL 17",
        ": completed",
        "ok    switchover completed",
        "ok    no client saw an error: 0 errors",
        "ok    every acknowledged orders row is on green",
        "ok    every acknowledged events row is on green",
        "ok    every acknowledged balance update is on green",
        "ok    sequences continue on green",
        "ok    clients now talk to PostgreSQL 17: 8 of 8",
        "ok    blue refuses writes (fenced)",
        "Demo passed",
    ] {
        assert!(stdout.contains(line), "missing {line:?}\n{context}");
    }
    assert!(!stdout.contains("FAIL"), "{context}");
    // Both sides carried load: the report's own figures, not just its verdict.
    let committed = stdout
        .lines()
        .find(|l| l.trim_start().starts_with("transactions:"))
        .unwrap_or_else(|| panic!("no transactions line\n{context}"));
    for side in ["on blue", "on green"] {
        let n = count_before(committed, side);
        assert!(n > 100, "{n} transactions {side}: {committed}\n{context}");
    }
    // Progress was shown while it ran, and it cleaned up.
    assert!(stderr.iter().any(|l| l.contains("green in sync")), "{context}");
    assert!(
        stderr.iter().any(|l| l.contains("stopped the proxy, blue and green")),
        "{context}"
    );
    assert_eq!(leftovers(pid), Vec::<PathBuf>::new(), "{context}");
    assert!(
        started.elapsed() < Duration::from_secs(90),
        "took {:?}",
        started.elapsed()
    );
}

#[test]
fn demo_interrupted_stops_and_removes_everything() {
    let mut child = demo(&["--clients", "4", "--seconds", "60"])
        .stdout(Stdio::null())
        .stderr(Stdio::piped())
        .spawn()
        .expect("pgcutover demo starts");
    let pid = child.id();
    let progress = stderr_lines(&mut child);
    // Interrupt it mid-load, once replication is running.
    let deadline = Instant::now() + Duration::from_secs(60);
    let mut seen = Vec::new();
    loop {
        let left = deadline.saturating_duration_since(Instant::now());
        match progress.recv_timeout(left) {
            Ok(line) => {
                let ready = line.contains("green in sync");
                seen.push(line);
                if ready {
                    break;
                }
            }
            Err(_) => {
                let _ = child.kill();
                panic!("no 'green in sync' within 60 s:\n{}", seen.join("\n"));
            }
        }
    }
    assert!(
        !leftovers(pid).is_empty(),
        "the demo's clusters should exist while it runs"
    );
    let kill = Command::new("kill")
        .args(["-INT", &pid.to_string()])
        .status()
        .expect("kill");
    assert!(kill.success());
    let status = wait_exit(&mut child, Duration::from_secs(30));
    seen.extend(rest(&progress));
    assert_eq!(status.code(), Some(130), "{}", seen.join("\n"));
    assert!(seen.iter().any(|l| l.contains("interrupted")), "{}", seen.join("\n"));
    assert_eq!(leftovers(pid), Vec::<PathBuf>::new(), "{}", seen.join("\n"));
}
