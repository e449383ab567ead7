//! One initdb template data directory per set of binaries, shared by test processes.

use crate::*;

pub(crate) fn template_is_valid(dir: &Path) -> bool {
    dir.join("PG_VERSION").is_file() && dir.join("global").join("pg_control").is_file() && dir.join("base").is_dir()
}

pub(crate) fn template_key(bin: &Binaries, who: Option<RunAs>) -> String {
    let mut h = DefaultHasher::new();
    TEMPLATE_FORMAT.hash(&mut h);
    bin.bindir.hash(&mut h);
    bin.version.hash(&mut h);
    if let Ok(m) = fs::metadata(bin.tool("postgres")) {
        (m.len(), m.mtime(), m.mtime_nsec()).hash(&mut h);
    }
    let uid = who.map(|w| w.uid).unwrap_or_else(effective_uid);
    format!("pg{}-u{}-{:016x}", bin.major, uid, h.finish())
}

/// The template data directory for these binaries, made once (race-safe across processes).
pub(crate) fn template_for(bin: &Binaries, who: Option<RunAs>) -> Res<PathBuf> {
    static LOCK: Mutex<()> = Mutex::new(());
    let root = temp_root().join("pgcutover-templates");
    let path = root.join(template_key(bin, who));
    if template_is_valid(&path) {
        return Ok(path);
    }
    let _guard = LOCK.lock().unwrap_or_else(|e| e.into_inner());
    if template_is_valid(&path) {
        return Ok(path);
    }
    if !root.is_dir() {
        // Sticky and world-writable like /tmp, so root and non-root runs can share it.
        match mkdir_mode(&root, 0o1777) {
            Ok(()) => {}
            Err(_) if root.is_dir() => {}
            Err(e) => return Err(e),
        }
    }
    if path.exists() && !template_is_valid(&path) {
        // Broken (e.g. partly removed by a tmp cleaner): move it aside, then rebuild.
        let aside = root.join(format!(".stale-{}", unique_suffix()));
        if fs::rename(&path, &aside).is_ok() {
            remove_tree(&aside);
        }
    }
    let work = root.join(format!(".tmp-{}", unique_suffix()));
    mkdir_mode(&work, 0o700)?;
    let result = (|| -> Res<()> {
        chown_to(&work, who)?;
        let pwfile = work.join("pwfile");
        fs::write(&pwfile, format!("{SUPERUSER_PASSWORD}\n")).map_err(|e| io_err("write pwfile", e))?;
        chown_to(&pwfile, who)?;
        let data = work.join("data");
        let out = run(
            server_command(bin, "initdb", who, &work)
                .arg("-D")
                .arg(&data)
                .args(["-A", "trust", "--auth-host=scram-sha-256", "--auth-local=trust"])
                .args([
                    "-U",
                    SUPERUSER,
                    "-E",
                    "UTF8",
                    "--locale=C",
                    "--no-sync",
                    "--no-instructions",
                ])
                .arg(format!("--pwfile={}", pwfile.display())),
            None,
            Duration::from_secs(300),
        )
        .map_err(|e| io_err(format_args!("initdb ({})", bin.bindir.display()), e))?;
        if !out.status.success() {
            return Err(HarnessError(format!(
                "initdb ({}) failed: {}",
                bin.bindir.display(),
                describe(&out)
            )));
        }
        match fs::rename(&data, &path) {
            Ok(()) => Ok(()),
            // Another process won the race: use its template.
            Err(_) if template_is_valid(&path) => Ok(()),
            Err(e) => Err(io_err(
                format_args!("rename {} -> {}", data.display(), path.display()),
                e,
            )),
        }
    })();
    remove_tree(&work);
    result.map(|()| path)
}
