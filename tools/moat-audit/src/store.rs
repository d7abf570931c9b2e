//! Where a run's audit files live and which run a command means: an exact run id, a unique
//! prefix of one, or a run's name from its `metadata.json`; no run at all means the latest.
//! Also the signing key: created once (0600) under a lock, its verifier key beside it.

use crate::note::{NoteSigner, VerifierKey};
use moat_core::{Error, MoatHome, Result, fsutil, lock::FileLock};
use std::path::{Path, PathBuf};
use std::time::SystemTime;

pub const KEY_NAME: &str = "moat-audit";

pub fn log_path(home: &MoatHome, run: &str) -> PathBuf {
    home.run_audit_dir(run).join("log.jsonl")
}
pub fn checkpoints_path(home: &MoatHome, run: &str) -> PathBuf {
    home.run_audit_dir(run).join("checkpoints")
}
pub fn lock_path(home: &MoatHome, run: &str) -> PathBuf {
    home.run_audit_dir(run).join("lock")
}
pub fn signing_key_path(home: &MoatHome) -> PathBuf {
    home.audit_dir().join("signing.key")
}
pub fn signing_pub_path(home: &MoatHome) -> PathBuf {
    home.audit_dir().join("signing.pub")
}

/// The origin line of a run's checkpoints: binds every checkpoint to one log.
pub fn origin(run: &str) -> String {
    format!("moat-audit/{run}")
}

/// Run ids become directory names: keep them to a safe alphabet.
pub fn check_run_id(run: &str) -> Result<()> {
    let ok = !run.is_empty()
        && run.len() <= 128
        && !run.starts_with('.')
        && run
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || b"_.-".contains(&b));
    if ok {
        Ok(())
    } else {
        Err(Error::usage(format!(
            "{run:?} is not a run id (letters, digits, '_', '.', '-')"
        )))
    }
}

/// The signing key, created on first use. The verifier key file is (re)written from it when
/// missing, so the two always agree.
pub fn load_or_create_signer(home: &MoatHome) -> Result<NoteSigner> {
    let dir = home.audit_dir();
    home.ensure_dir(&dir)?;
    let _lock = FileLock::exclusive(&dir.join(".signing.lock"))?;
    let kp = signing_key_path(home);
    let signer = if kp.exists() {
        let raw = fsutil::read_secret(&kp)?;
        let text = String::from_utf8(raw)
            .map_err(|_| Error::data(format!("{} is not a signing key", kp.display())))?;
        NoteSigner::from_private_string(&text)
            .map_err(|e| Error::data(format!("{}: {e}", kp.display())))?
    } else {
        let mut seed = [0u8; 32];
        getrandom::fill(&mut seed)
            .map_err(|e| Error::software(format!("the OS random source failed: {e}")))?;
        let s = NoteSigner::new(KEY_NAME, seed);
        fsutil::write_secret(&kp, format!("{}\n", s.to_private_string()).as_bytes())?;
        s
    };
    let pp = signing_pub_path(home);
    let want = format!("{}\n", signer.verifier());
    if std::fs::read_to_string(&pp).ok().as_deref() != Some(want.as_str()) {
        fsutil::write_atomic(&pp, want.as_bytes(), 0o644)?;
    }
    Ok(signer)
}

/// The pinned verifier key of this machine, if there is one.
pub fn pinned_key(home: &MoatHome) -> Result<Option<VerifierKey>> {
    let p = signing_pub_path(home);
    match std::fs::read_to_string(&p) {
        Ok(s) => read_key_text(&s)
            .map(Some)
            .map_err(|e| Error::config(format!("{}: {e}", p.display()))),
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(None),
        Err(e) => Err(Error::io(format!("reading {}", p.display()), e)),
    }
}

/// A verifier key from text: its first non-empty, non-comment line.
pub fn read_key_text(s: &str) -> std::result::Result<VerifierKey, String> {
    let line = s
        .lines()
        .map(str::trim)
        .find(|l| !l.is_empty() && !l.starts_with('#'))
        .ok_or("no verifier key in it")?;
    line.parse()
}

/// `--key` takes a verifier key or a file holding one.
pub fn key_arg(arg: &str) -> Result<VerifierKey> {
    if let Ok(k) = arg.parse::<VerifierKey>() {
        return Ok(k);
    }
    let p = Path::new(arg);
    let text = std::fs::read_to_string(p).map_err(|e| {
        if e.kind() == std::io::ErrorKind::NotFound && arg.contains('+') {
            Error::usage(format!(
                "--key {arg}: not a valid verifier key: {}",
                arg.parse::<VerifierKey>().unwrap_err()
            ))
        } else {
            Error::io(format!("reading key {arg}"), e)
        }
    })?;
    read_key_text(&text).map_err(|e| Error::usage(format!("--key {arg}: {e}")))
}

struct RunDir {
    id: String,
    name: Option<String>,
    created: SystemTime,
    has_log: bool,
}

fn list_runs(home: &MoatHome) -> Result<Vec<RunDir>> {
    let dir = home.runs_dir();
    let rd = match std::fs::read_dir(&dir) {
        Ok(rd) => rd,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(Vec::new()),
        Err(e) => return Err(Error::io(format!("reading {}", dir.display()), e)),
    };
    let mut runs = Vec::new();
    for e in rd.flatten() {
        let Ok(ft) = e.file_type() else { continue };
        let Some(id) = e.file_name().to_str().map(str::to_string) else {
            continue;
        };
        if !ft.is_dir() || id.starts_with('.') {
            continue;
        }
        let path = e.path();
        let meta: Option<serde_json::Value> = std::fs::read(path.join("metadata.json"))
            .ok()
            .and_then(|b| serde_json::from_slice(&b).ok());
        let name = meta
            .as_ref()
            .and_then(|m| m.get("name"))
            .and_then(|n| n.as_str())
            .map(str::to_string);
        let created = meta
            .as_ref()
            .and_then(|m| m.get("created"))
            .and_then(|c| c.as_str())
            .and_then(moat_core::timefmt::parse_rfc3339)
            .or_else(|| e.metadata().ok().and_then(|m| m.modified().ok()))
            .unwrap_or(SystemTime::UNIX_EPOCH);
        let has_log = path.join("audit").join("log.jsonl").exists();
        runs.push(RunDir {
            id,
            name,
            created,
            has_log,
        });
    }
    Ok(runs)
}

/// Which run a command means.
pub fn resolve_run(home: &MoatHome, arg: Option<&str>) -> Result<String> {
    let runs = list_runs(home)?;
    let Some(arg) = arg else {
        return runs
            .iter()
            .filter(|r| r.has_log)
            .max_by(|a, b| a.created.cmp(&b.created).then(a.id.cmp(&b.id)))
            .map(|r| r.id.clone())
            .ok_or_else(|| {
                Error::noinput(format!(
                    "no run with an audit log under {}",
                    home.runs_dir().display()
                ))
            });
    };
    if runs.iter().any(|r| r.id == arg) {
        return Ok(arg.to_string());
    }
    let by_prefix: Vec<&RunDir> = runs
        .iter()
        .filter(|r| {
            r.id.starts_with(arg)
                || r.id
                    .strip_prefix("run_")
                    .is_some_and(|s| s.starts_with(arg))
        })
        .collect();
    let by_name: Vec<&RunDir> = runs
        .iter()
        .filter(|r| r.name.as_deref() == Some(arg))
        .collect();
    // A name that matches exactly one run wins over id prefixes.
    let hits = if by_name.len() == 1 || by_prefix.is_empty() {
        by_name
    } else {
        by_prefix
    };
    match hits.as_slice() {
        [one] => Ok(one.id.clone()),
        [] => Err(Error::noinput(format!("no run matches {arg:?}"))),
        many => Err(Error::usage(format!(
            "{arg:?} matches several runs: {}",
            many.iter()
                .map(|r| r.id.as_str())
                .collect::<Vec<_>>()
                .join(", ")
        ))),
    }
}
