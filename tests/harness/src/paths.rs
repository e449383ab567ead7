//! Temporary directories (in /dev/shm when usable), copying trees, free ports.

use crate::*;

pub(crate) fn unique_suffix() -> String {
    static COUNTER: AtomicU64 = AtomicU64::new(0);
    let n = COUNTER.fetch_add(1, Ordering::Relaxed);
    let nanos = SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map(|d| d.as_nanos())
        .unwrap_or(0);
    format!("{}-{}-{}", std::process::id(), n, nanos)
}

/// Where clusters and templates go: `$PGCUTOVER_TMPDIR`; else `/dev/shm` when it is a
/// tmpfs with at least 2 GiB free (creating a data directory's ~1000 files costs ~0.7 s
/// on this machine's disk, ~60 ms on tmpfs); else the system temp dir (`/tmp` as root
/// when that is not searchable by the server user, or too long for a socket path).
pub fn temp_root() -> PathBuf {
    static ROOT: OnceLock<PathBuf> = OnceLock::new();
    ROOT.get_or_init(|| {
        if let Some(d) = env_nonempty("PGCUTOVER_TMPDIR") {
            return PathBuf::from(d);
        }
        if shm_usable() {
            return PathBuf::from("/dev/shm");
        }
        let t = std::env::temp_dir();
        let too_long = t.as_os_str().len() > 48; // <tmp>/pgcutover-test-.../.s.PGSQL.NNNNN < 108
        if too_long || (is_root() && !searchable_by_others(&t)) {
            return PathBuf::from("/tmp");
        }
        t
    })
    .clone()
}

pub(crate) fn shm_usable() -> bool {
    let shm = Path::new("/dev/shm");
    let tmpfs = fs::read_to_string("/proc/mounts")
        .map(|m| {
            m.lines().any(|l| {
                let f: Vec<&str> = l.split_whitespace().collect();
                f.len() > 2 && f[1] == "/dev/shm" && f[2] == "tmpfs"
            })
        })
        .unwrap_or(false);
    // World-writable and sticky, like /tmp.
    let open = fs::metadata(shm)
        .map(|m| m.is_dir() && m.mode() & 0o1777 == 0o1777)
        .unwrap_or(false);
    if !tmpfs || !open {
        return false;
    }
    let Ok(out) = run(
        Command::new("df").args(["-Pk", "/dev/shm"]),
        None,
        Duration::from_secs(10),
    ) else {
        return false;
    };
    let text = String::from_utf8_lossy(&out.stdout);
    let avail_kib: u64 = text
        .lines()
        .nth(1)
        .and_then(|l| l.split_whitespace().nth(3))
        .and_then(|v| v.parse().ok())
        .unwrap_or(0);
    avail_kib >= 2 * 1024 * 1024
}

pub(crate) fn searchable_by_others(path: &Path) -> bool {
    path.ancestors()
        .all(|p| fs::metadata(p).map(|m| m.mode() & 0o001 != 0).unwrap_or(false))
}

pub(crate) fn mkdir_mode(path: &Path, mode: u32) -> Res<()> {
    fs::DirBuilder::new()
        .mode(mode)
        .create(path)
        .map_err(|e| io_err(format_args!("mkdir {}", path.display()), e))?;
    // The umask may have cut bits off.
    fs::set_permissions(path, fs::Permissions::from_mode(mode))
        .map_err(|e| io_err(format_args!("chmod {}", path.display()), e))
}

/// Recursively copies `src` to `dst` (which must not exist), preserving modes, and
/// chowns everything to `who`.
pub(crate) fn copy_tree(src: &Path, dst: &Path, who: Option<RunAs>) -> io::Result<()> {
    let meta = fs::symlink_metadata(src)?;
    fs::DirBuilder::new().mode(0o700).create(dst)?;
    for entry in fs::read_dir(src)? {
        let entry = entry?;
        let from = entry.path();
        let to = dst.join(entry.file_name());
        let ft = entry.file_type()?;
        if ft.is_dir() {
            copy_tree(&from, &to, who)?;
        } else if ft.is_symlink() {
            std::os::unix::fs::symlink(fs::read_link(&from)?, &to)?;
            if let Some(w) = who {
                std::os::unix::fs::lchown(&to, Some(w.uid), Some(w.gid))?;
            }
        } else {
            fs::copy(&from, &to)?;
            if let Some(w) = who {
                std::os::unix::fs::chown(&to, Some(w.uid), Some(w.gid))?;
            }
        }
    }
    fs::set_permissions(dst, fs::Permissions::from_mode(meta.mode() & 0o7777))?;
    if let Some(w) = who {
        std::os::unix::fs::chown(dst, Some(w.uid), Some(w.gid))?;
    }
    Ok(())
}

pub(crate) fn remove_tree(path: &Path) {
    // A dying server may still be writing a file; a few bounded retries.
    for _ in 0..5 {
        match fs::remove_dir_all(path) {
            Ok(()) => return,
            Err(e) if e.kind() == io::ErrorKind::NotFound => return,
            Err(_) => std::thread::sleep(Duration::from_millis(50)),
        }
    }
}
