//! `moat promote RUN [--to DIR]`: a run's artifacts copied out of `runs/` (which `moat clean`
//! and `moat destroy` delete) into MOAT_HOME/promoted/<run> or DIR: metadata.json, spec.json,
//! the Dockerfile, launch.log, logs*.jsonl, network.jsonl, secrets.jsonl, agent session logs
//! (`sessions/`), the audit log with its checkpoints, a proof bundle (`moat-audit export`)
//! and the verifier key it verifies against. `promoted.json` lists every file with its size
//! and SHA-256. Written under a temporary name and renamed into place.
//!
//! The per-run proxy token, locks, sockets and snapshots are not copied.

use crate::run::tool;
use crate::store::{Metadata, Store};
use moat_core::{Error, Result, cli};
use serde::{Deserialize, Serialize};
use std::path::{Path, PathBuf};

#[derive(Debug, Serialize, Deserialize)]
pub struct PromotedFile {
    pub path: String,
    pub bytes: u64,
    pub sha256: String,
}

#[derive(Debug, Serialize, Deserialize)]
pub struct Promoted {
    pub v: u32,
    pub run: String,
    pub name: String,
    pub state: String,
    pub created_at: String,
    pub promoted_at: String,
    pub source: PathBuf,
    /// Whether `moat-audit export` verified the log and wrote bundle.json.
    pub audit_verified: bool,
    pub files: Vec<PromotedFile>,
}

/// Where promotions to other directories are remembered, for `list --promoted`.
fn elsewhere_file(store: &Store) -> PathBuf {
    store.home.root().join("promoted").join("elsewhere.jsonl")
}

fn copy_file(src: &Path, dst: &Path, rel: &str, out: &mut Vec<PromotedFile>) -> Result<()> {
    use sha2::Digest;
    match std::fs::symlink_metadata(src) {
        Ok(m) if m.file_type().is_file() => {}
        _ => return Ok(()), // absent, or not a plain file: never follow a link
    }
    if let Some(p) = dst.parent() {
        std::fs::create_dir_all(p)
            .map_err(|e| Error::io(format!("creating {}", p.display()), e))?;
    }
    let data =
        std::fs::read(src).map_err(|e| Error::io(format!("reading {}", src.display()), e))?;
    let mode = if rel.ends_with("Dockerfile") {
        0o644
    } else {
        0o600
    };
    moat_core::fsutil::write_atomic(dst, &data, mode)?;
    out.push(PromotedFile {
        path: rel.to_string(),
        bytes: data.len() as u64,
        sha256: moat_core::hex(&sha2::Sha256::digest(&data)),
    });
    Ok(())
}

fn copy_tree(src: &Path, dst: &Path, rel: &str, out: &mut Vec<PromotedFile>) -> Result<()> {
    let Ok(md) = std::fs::symlink_metadata(src) else {
        return Ok(());
    };
    if !md.file_type().is_dir() {
        return Ok(());
    }
    let mut names: Vec<String> = std::fs::read_dir(src)
        .map_err(|e| Error::io(format!("reading {}", src.display()), e))?
        .flatten()
        .filter_map(|e| e.file_name().into_string().ok())
        .collect();
    names.sort();
    for n in names {
        let (s, d, r) = (src.join(&n), dst.join(&n), format!("{rel}/{n}"));
        match std::fs::symlink_metadata(&s) {
            Ok(m) if m.file_type().is_dir() => copy_tree(&s, &d, &r, out)?,
            Ok(m) if m.file_type().is_file() => copy_file(&s, &d, &r, out)?,
            _ => {}
        }
    }
    Ok(())
}

/// The destination, checked: never inside runs/ (clean would delete it), never existing
/// unless `force`.
fn destination(store: &Store, m: &Metadata, to: Option<&Path>) -> Result<PathBuf> {
    let Some(to) = to else {
        return Ok(store.home.root().join("promoted").join(&m.id));
    };
    let abs = if to.is_absolute() {
        to.to_path_buf()
    } else {
        std::env::current_dir()
            .map_err(|e| Error::io("reading the current directory", e))?
            .join(to)
    };
    // Resolve the deepest existing ancestor, so a link cannot hide runs/.
    let mut existing = abs.clone();
    let mut rest = vec![];
    while !existing.exists() {
        match (existing.file_name(), existing.parent()) {
            (Some(n), Some(p)) => {
                rest.push(n.to_os_string());
                existing = p.to_path_buf();
            }
            _ => break,
        }
    }
    let mut resolved = std::fs::canonicalize(&existing)
        .map_err(|e| Error::io(format!("resolving {}", existing.display()), e))?;
    for n in rest.iter().rev() {
        if n == ".." {
            resolved.pop();
        } else if n != "." {
            resolved.push(n);
        }
    }
    let runs = store.home.runs_dir();
    let runs = std::fs::canonicalize(&runs).unwrap_or(runs);
    if resolved.starts_with(&runs) || runs.starts_with(&resolved) {
        return Err(Error::usage(format!(
            "--to {}: that is inside (or holds) {}, which `moat clean` deletes",
            to.display(),
            runs.display()
        ))
        .with_hint("choose a directory outside MOAT_HOME/runs"));
    }
    Ok(resolved)
}

pub fn promote(store: &Store, run: &str, to: Option<&Path>, force: bool) -> Result<()> {
    let m = store.resolve(Some(run))?;
    if !m.state.is_terminal() {
        return Err(Error::no(format!(
            "{} ({}) is still {}; its logs and audit log are not final",
            m.name,
            m.id,
            m.state.as_str()
        ))
        .with_hint(format!("`moat stop {}` first, then promote it", m.id)));
    }
    let dst = destination(store, &m, to)?;
    if dst.exists() {
        let empty = std::fs::read_dir(&dst)
            .map(|mut r| r.next().is_none())
            .unwrap_or(false);
        if !empty && !force {
            return Err(Error::new(
                moat_core::exit::CANTCREAT,
                format!("{} already exists", dst.display()),
            )
            .with_hint("--force replaces it if it is an earlier promoted copy"));
        }
        // --force replaces what promote made, never a directory of the user's: replacing
        // deletes it whole, and `--to ~ --force` must not cost anyone their home.
        if !empty && !dst.join("promoted.json").is_file() {
            return Err(Error::new(
                moat_core::exit::CANTCREAT,
                format!(
                    "{} already exists and is not a promoted run (it has no promoted.json); --force replaces only those",
                    dst.display()
                ),
            )
            .with_hint("choose a new or empty directory"));
        }
    }
    let parent = dst
        .parent()
        .ok_or_else(|| Error::usage(format!("{} has no parent directory", dst.display())))?;
    std::fs::create_dir_all(parent)
        .map_err(|e| Error::io(format!("creating {}", parent.display()), e))?;
    let tmp = parent.join(format!(
        ".tmp-promote-{}-{}",
        m.id,
        moat_core::hex(&moat_core::random_bytes::<4>())
    ));
    moat_core::fsutil::create_private_dir(&tmp)?;
    let built = build(store, &m, &tmp);
    let promoted = match built {
        Ok(p) => p,
        Err(e) => {
            let _ = std::fs::remove_dir_all(&tmp);
            return Err(e);
        }
    };
    if dst.exists() {
        std::fs::remove_dir_all(&dst)
            .map_err(|e| Error::io(format!("replacing {}", dst.display()), e))?;
    }
    std::fs::rename(&tmp, &dst).map_err(|e| {
        let _ = std::fs::remove_dir_all(&tmp);
        Error::io(format!("creating {}", dst.display()), e)
    })?;
    if to.is_some() {
        let rec = moat_core::jsonl::line(
            "promoted",
            &serde_json::json!({"run": m.id, "name": m.name, "path": dst, "promoted_at": promoted.promoted_at}),
        )?;
        let f = elsewhere_file(store);
        store.home.ensure_dir(f.parent().expect("has a parent"))?;
        use std::io::Write;
        std::fs::OpenOptions::new()
            .create(true)
            .append(true)
            .open(&f)
            .and_then(|mut o| o.write_all(rec.as_bytes()))
            .map_err(|e| Error::io(format!("writing {}", f.display()), e))?;
    }
    eprintln!(
        "moat: promoted {} ({}) to {}: {} file(s)",
        m.name,
        m.id,
        dst.display(),
        promoted.files.len()
    );
    cli::write_stdout(format!("{}\n", dst.display()).as_bytes())?;
    if !promoted.audit_verified {
        return Err(Error::no(format!(
            "the audit log of {} did not verify; it was copied without a proof bundle",
            m.id
        ))
        .with_hint(format!("`moat audit {}` shows why", m.id)));
    }
    Ok(())
}

fn build(store: &Store, m: &Metadata, tmp: &Path) -> Result<Promoted> {
    let src = store.dir(&m.id);
    let mut files = vec![];
    let mut names: Vec<String> = std::fs::read_dir(&src)
        .map_err(|e| Error::io(format!("reading {}", src.display()), e))?
        .flatten()
        .filter_map(|e| e.file_name().into_string().ok())
        .collect();
    names.sort();
    for n in &names {
        let keep = matches!(
            n.as_str(),
            "metadata.json" | "spec.json" | "Dockerfile" | "launch.log"
        ) || (n.ends_with(".jsonl") && !n.starts_with('.'));
        if keep {
            copy_file(&src.join(n), &tmp.join(n), n, &mut files)?;
        }
    }
    copy_tree(
        &src.join("sessions"),
        &tmp.join("sessions"),
        "sessions",
        &mut files,
    )?;
    for n in ["log.jsonl", "checkpoints"] {
        let rel = format!("audit/{n}");
        copy_file(
            &src.join("audit").join(n),
            &tmp.join(&rel),
            &rel,
            &mut files,
        )?;
    }
    // The proof bundle and the key it verifies against.
    let mut audit_verified = false;
    if src.join("audit/log.jsonl").exists() {
        let bundle = tmp.join("bundle.json");
        let o = std::process::Command::new(tool("moat-audit"))
            .arg("export")
            .arg(&m.id)
            .arg("--export")
            .arg(&bundle)
            .stdin(std::process::Stdio::null())
            .stdout(std::process::Stdio::null())
            .stderr(std::process::Stdio::piped())
            .output()
            .map_err(|e| Error::io("running moat-audit export", e))?;
        if o.status.success() {
            audit_verified = true;
            copy_file(&bundle, &bundle, "bundle.json", &mut files)?;
            let pubkey = store.home.audit_dir().join("signing.pub");
            copy_file(&pubkey, &tmp.join("signing.pub"), "signing.pub", &mut files)?;
        } else {
            eprintln!(
                "moat: warning: moat-audit export: {}",
                String::from_utf8_lossy(&o.stderr).trim()
            );
            let _ = std::fs::remove_file(&bundle);
        }
    }
    let p = Promoted {
        v: 1,
        run: m.id.clone(),
        name: m.name.clone(),
        state: m.state.as_str().into(),
        created_at: m.created_at.clone(),
        promoted_at: moat_core::timefmt::now_rfc3339(),
        source: src,
        audit_verified,
        files,
    };
    let mut text = serde_json::to_vec_pretty(&p)?;
    text.push(b'\n');
    moat_core::fsutil::write_atomic(&tmp.join("promoted.json"), &text, 0o600)?;
    Ok(p)
}

/// `list --promoted`.
pub fn list(store: &Store, json: bool) -> Result<()> {
    let base = store.home.root().join("promoted");
    let mut found: Vec<(Promoted, PathBuf)> = vec![];
    let mut dirs: Vec<PathBuf> = std::fs::read_dir(&base)
        .into_iter()
        .flatten()
        .flatten()
        .filter(|e| e.file_name().to_string_lossy().starts_with("run_"))
        .map(|e| e.path())
        .collect();
    for l in std::fs::read_to_string(elsewhere_file(store))
        .unwrap_or_default()
        .lines()
    {
        if let Ok(Some(r)) = moat_core::jsonl::parse(l)
            && let Some(p) = r.str("path")
        {
            dirs.push(PathBuf::from(p));
        }
    }
    dirs.sort();
    dirs.dedup();
    for d in dirs {
        if let Ok(b) = std::fs::read(d.join("promoted.json"))
            && let Ok(p) = serde_json::from_slice::<Promoted>(&b)
        {
            found.push((p, d));
        }
    }
    found.sort_by(|a, b| a.0.promoted_at.cmp(&b.0.promoted_at));
    let mut out = String::new();
    if json {
        for (p, d) in &found {
            out.push_str(&moat_core::jsonl::line(
                "promoted",
                &serde_json::json!({"id": p.run, "name": p.name, "state": p.state, "created_at": p.created_at, "promoted_at": p.promoted_at, "path": d, "audit_verified": p.audit_verified, "files": p.files.len()}),
            )?);
        }
    } else if found.is_empty() {
        eprintln!("no promoted runs; `moat promote RUN` keeps one");
        return Ok(());
    } else {
        let w = found
            .iter()
            .map(|(p, _)| p.name.len())
            .max()
            .unwrap_or(4)
            .max(4);
        out.push_str(&format!(
            "{:<w$}  {:<16}  {:<8}  {:<24}  PATH\n",
            "NAME", "RUN ID", "STATE", "PROMOTED"
        ));
        for (p, d) in &found {
            out.push_str(&format!(
                "{:<w$}  {:<16}  {:<8}  {:<24}  {}\n",
                p.name,
                p.run,
                p.state,
                p.promoted_at,
                d.display()
            ));
        }
    }
    cli::write_stdout(out.as_bytes())
}
