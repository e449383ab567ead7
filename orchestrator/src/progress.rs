//! The progress display: one line per step on stderr, with the time since the
//! command started and how long the step took.

use std::time::{Duration, Instant};

/// Where a command reports its steps.
#[derive(Debug, Clone)]
pub struct Progress {
    start: Instant,
    quiet: bool,
}

impl Progress {
    /// Progress lines on stderr.
    pub fn stderr() -> Progress {
        Progress {
            start: Instant::now(),
            quiet: false,
        }
    }

    /// No output (library callers that report on their own).
    pub fn quiet() -> Progress {
        Progress {
            start: Instant::now(),
            quiet: true,
        }
    }

    /// Prints `[  12.3s] <line>`.
    pub fn line(&self, line: impl AsRef<str>) {
        if !self.quiet {
            eprintln!("[{:>7.1}s] {}", self.start.elapsed().as_secs_f64(), line.as_ref());
        }
    }

    /// Prints a finished step with its duration.
    pub fn done(&self, step_start: Instant, line: impl AsRef<str>) {
        self.line(format!("{} ({})", line.as_ref(), human_duration(step_start.elapsed())));
    }
}

/// `850ms`, `12.3s`, `4m05s`.
pub fn human_duration(d: Duration) -> String {
    let ms = d.as_millis();
    if ms < 1000 {
        format!("{ms}ms")
    } else if ms < 60_000 {
        format!("{:.1}s", d.as_secs_f64())
    } else {
        format!("{}m{:02}s", ms / 60_000, (ms / 1000) % 60)
    }
}

/// `512 B`, `12.0 kB`, `3.4 MB`, `1.2 GB`.
pub fn human_bytes(b: i64) -> String {
    let f = b as f64;
    if b.abs() < 1024 {
        format!("{b} B")
    } else if b.abs() < 1024 * 1024 {
        format!("{:.1} kB", f / 1024.0)
    } else if b.abs() < 1024 * 1024 * 1024 {
        format!("{:.1} MB", f / (1024.0 * 1024.0))
    } else {
        format!("{:.2} GB", f / (1024.0 * 1024.0 * 1024.0))
    }
}
