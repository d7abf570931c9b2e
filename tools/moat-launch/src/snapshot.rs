//! Workspace snapshots: `runs/<run>/snapshots/<snap_id>/` holds `manifest.json` (every
//! entry with its kind, mode, size, SHA-256 or link target) and `files/`, a copy of the
//! workspace's regular files. A snapshot is built under a `.tmp-` name and renamed into place,
//! so a listed snapshot is always complete.
//!
//! What is left out: `.git/`, what the workspace's .gitignore ignores (unless
//! `exclude.ignore_gitignore`), and the `exclude.additional` patterns. Symbolic links are
//! recorded as links, never followed.
//!
//! Restore trusts nothing in the snapshot: every path must be a plain relative path, every
//! stored file must be a regular file (no link anywhere on its path) whose SHA-256 matches
//! the manifest, and nothing is written through a symbolic link in the workspace: a link
//! where the snapshot has a directory or file is replaced, not followed. Before it changes
//! anything, restore takes a `safety` snapshot of the workspace as it is.

use crate::config::SnapshotSpec;
use moat_core::{Error, Result};
use serde::{Deserialize, Serialize};
use std::collections::{BTreeMap, BTreeSet};
use std::io::{Read, Write};
use std::os::unix::fs::{DirBuilderExt, MetadataExt, PermissionsExt};
use std::path::{Component, Path, PathBuf};

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Kind {
    Dir,
    File,
    Symlink,
}

#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
pub struct Entry {
    pub path: String,
    pub kind: Kind,
    pub mode: u32,
    #[serde(default)]
    pub size: u64,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub sha256: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub target: Option<String>,
}

#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct Manifest {
    pub v: u32,
    pub id: String,
    pub run: String,
    /// pre-run, manual or safety.
    pub kind: String,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub label: Option<String>,
    pub created_at: String,
    pub workspace: PathBuf,
    pub exclude: Vec<String>,
    pub ignore_gitignore: bool,
    pub files: u64,
    pub bytes: u64,
    pub entries: Vec<Entry>,
}

pub fn dir(run_dir: &Path) -> PathBuf {
    run_dir.join("snapshots")
}

fn new_id() -> String {
    format!("snap_{}", moat_core::hex(&moat_core::random_bytes::<6>()))
}

/// `*` and `?` within a component, `**` across components.
fn glob(p: &[u8], s: &[u8]) -> bool {
    match (p.first(), s.first()) {
        (None, None) => true,
        (None, Some(_)) => false,
        (Some(b'*'), _) if p.get(1) == Some(&b'*') => {
            let rest = p[2..].strip_prefix(b"/").unwrap_or(&p[2..]);
            (0..=s.len()).any(|i| glob(rest, &s[i..]))
        }
        (Some(b'*'), _) => {
            let mut i = 0;
            loop {
                if glob(&p[1..], &s[i..]) {
                    return true;
                }
                if i >= s.len() || s[i] == b'/' {
                    return false;
                }
                i += 1;
            }
        }
        (Some(b'?'), Some(c)) if *c != b'/' => glob(&p[1..], &s[1..]),
        (Some(a), Some(b)) if a == b => glob(&p[1..], &s[1..]),
        _ => false,
    }
}

/// gitignore-like: `dir/` only directories, `/x` or `a/b` anchored at the top, else the name.
pub fn excluded(patterns: &[String], rel: &str, is_dir: bool) -> bool {
    let name = rel.rsplit('/').next().unwrap_or(rel);
    patterns.iter().any(|p| {
        let (p, dir_only) = match p.strip_suffix('/') {
            Some(p) => (p, true),
            None => (p.as_str(), false),
        };
        if dir_only && !is_dir {
            return false;
        }
        let anchored = p.starts_with('/') || p.contains('/');
        let p = p.trim_start_matches('/');
        if anchored {
            glob(p.as_bytes(), rel.as_bytes())
        } else {
            glob(p.as_bytes(), name.as_bytes())
        }
    })
}

/// What git ignores in `ws` (relative paths; directories end in '/'); empty if not a repo.
///
/// The workspace's `.git` is the run's: its `config` can name commands git runs
/// (`core.fsmonitor` runs one for `ls-files` itself). So git never reads it: it runs against
/// an empty repository of ours with `ws` as its work tree, which gives the same answer from
/// the workspace's .gitignore files, its `.git/info/exclude` (copied, bounded, never through
/// a link) and the user's own global excludes. One difference: a tracked file that a
/// .gitignore pattern matches counts as ignored.
fn git_ignored(ws: &Path) -> BTreeSet<String> {
    if std::fs::symlink_metadata(ws.join(".git")).is_err() {
        return BTreeSet::new();
    }
    let Ok(tmp) = tempdir_private() else {
        return BTreeSet::new();
    };
    let git = |args: &[&std::ffi::OsStr]| {
        std::process::Command::new("git")
            .args([
                "-c",
                "core.fsmonitor=false",
                "-c",
                "core.untrackedCache=false",
            ])
            .args(args)
            .env_remove("GIT_DIR")
            .env_remove("GIT_WORK_TREE")
            .env_remove("GIT_INDEX_FILE")
            .env_remove("GIT_CONFIG_PARAMETERS")
            .env_remove("GIT_CONFIG_COUNT")
            .stdin(std::process::Stdio::null())
            .stderr(std::process::Stdio::null())
            .output()
    };
    let repo = tmp.join("repo.git");
    let out = (|| {
        let o = git(&[
            "init".as_ref(),
            "--quiet".as_ref(),
            "--bare".as_ref(),
            repo.as_os_str(),
        ])
        .ok()?;
        if !o.status.success() {
            return None;
        }
        if let Some(b) = crate::triggers::read_bounded(ws, ".git/info/exclude", 1 << 20) {
            let _ = std::fs::create_dir_all(repo.join("info"));
            std::fs::write(repo.join("info/exclude"), b).ok()?;
        }
        let git_dir = format!("--git-dir={}", repo.display());
        let work_tree = format!("--work-tree={}", ws.display());
        git(&[
            git_dir.as_ref(),
            work_tree.as_ref(),
            "-C".as_ref(),
            ws.as_os_str(),
            "ls-files".as_ref(),
            "-z".as_ref(),
            "--others".as_ref(),
            "--ignored".as_ref(),
            "--exclude-standard".as_ref(),
            "--directory".as_ref(),
        ])
        .ok()
    })();
    let _ = std::fs::remove_dir_all(&tmp);
    match out {
        Some(o) if o.status.success() => o
            .stdout
            .split(|b| *b == 0)
            .filter(|s| !s.is_empty())
            .map(|s| String::from_utf8_lossy(s).to_string())
            .collect(),
        _ => BTreeSet::new(),
    }
}

/// A fresh 0700 directory under the temporary directory.
fn tempdir_private() -> Result<PathBuf> {
    let p = std::env::temp_dir().join(format!(
        "moat-snap-{}",
        moat_core::hex(&moat_core::random_bytes::<8>())
    ));
    std::fs::DirBuilder::new()
        .mode(0o700)
        .create(&p)
        .map_err(|e| Error::io(format!("creating {}", p.display()), e))?;
    Ok(p)
}

struct Filter {
    patterns: Vec<String>,
    ignored: BTreeSet<String>,
}

impl Filter {
    fn new(ws: &Path, exclude: &[String], ignore_gitignore: bool) -> Filter {
        let mut patterns = vec!["/.git".to_string()];
        patterns.extend(exclude.iter().cloned());
        Filter {
            patterns,
            ignored: if ignore_gitignore {
                BTreeSet::new()
            } else {
                git_ignored(ws)
            },
        }
    }
    fn skip(&self, rel: &str, is_dir: bool) -> bool {
        excluded(&self.patterns, rel, is_dir)
            || self.ignored.contains(rel)
            || (is_dir && self.ignored.contains(&format!("{rel}/")))
    }
}

/// Every entry under `ws` that the filter keeps, parents before children; links not followed.
fn walk(ws: &Path, f: &Filter) -> Result<Vec<(String, std::fs::Metadata)>> {
    let mut out = vec![];
    let mut stack = vec![String::new()];
    while let Some(rel) = stack.pop() {
        let abs = if rel.is_empty() {
            ws.to_path_buf()
        } else {
            ws.join(&rel)
        };
        let rd = std::fs::read_dir(&abs)
            .map_err(|e| Error::io(format!("reading {}", abs.display()), e))?;
        let mut names: Vec<String> = vec![];
        for e in rd {
            let e = e.map_err(|e| Error::io(format!("reading {}", abs.display()), e))?;
            match e.file_name().into_string() {
                Ok(n) => names.push(n),
                Err(n) => eprintln!(
                    "moat: warning: snapshot skips {:?}: the name is not UTF-8",
                    abs.join(n)
                ),
            }
        }
        names.sort();
        let mut subdirs = vec![];
        for n in names {
            let r = if rel.is_empty() {
                n.clone()
            } else {
                format!("{rel}/{n}")
            };
            let md = match std::fs::symlink_metadata(ws.join(&r)) {
                Ok(m) => m,
                Err(_) => continue, // gone meanwhile
            };
            let ft = md.file_type();
            if !(ft.is_dir() || ft.is_file() || ft.is_symlink()) {
                continue; // sockets, fifos, devices
            }
            if f.skip(&r, ft.is_dir()) {
                continue;
            }
            if ft.is_dir() {
                subdirs.push(r.clone());
            }
            out.push((r, md));
        }
        // Depth first, in name order: push in reverse.
        for d in subdirs.into_iter().rev() {
            stack.push(d);
        }
    }
    out.sort_by(|a, b| a.0.cmp(&b.0));
    Ok(out)
}

fn sha256_copy(src: &Path, want: &std::fs::Metadata, dst: Option<&Path>) -> Result<String> {
    use sha2::Digest;
    let mut f =
        std::fs::File::open(src).map_err(|e| Error::io(format!("reading {}", src.display()), e))?;
    // The file opened must be the file looked at: a path swapped for a link in between
    // (by a running agent) would otherwise copy whatever the link names.
    let got = f
        .metadata()
        .map_err(|e| Error::io(format!("reading {}", src.display()), e))?;
    if got.ino() != want.ino() || got.dev() != want.dev() || !got.is_file() {
        return Err(Error::data(format!(
            "{} changed while it was read; try again",
            src.display()
        )));
    }
    let mut out = match dst {
        Some(d) => Some(
            std::fs::OpenOptions::new()
                .write(true)
                .create_new(true)
                .open(d)
                .map_err(|e| Error::io(format!("writing {}", d.display()), e))?,
        ),
        None => None,
    };
    let mut h = sha2::Sha256::new();
    let mut buf = vec![0u8; 1 << 16];
    loop {
        let n = f
            .read(&mut buf)
            .map_err(|e| Error::io(format!("reading {}", src.display()), e))?;
        if n == 0 {
            break;
        }
        h.update(&buf[..n]);
        if let Some(o) = &mut out {
            o.write_all(&buf[..n])
                .map_err(|e| Error::io("writing the snapshot", e))?;
        }
    }
    Ok(moat_core::hex(&h.finalize()))
}

/// Snapshot `ws` into the run's directory; then apply retention.
pub fn create(
    run_dir: &Path,
    run: &str,
    ws: &Path,
    spec: &SnapshotSpec,
    kind: &str,
    label: Option<String>,
) -> Result<Manifest> {
    let base = dir(run_dir);
    moat_core::fsutil::create_private_dir(&base)?;
    let id = new_id();
    let tmp = base.join(format!(".tmp-{id}"));
    let files_dir = tmp.join("files");
    std::fs::create_dir_all(&files_dir)
        .map_err(|e| Error::io(format!("creating {}", files_dir.display()), e))?;
    let result = (|| -> Result<Manifest> {
        let filter = Filter::new(ws, &spec.exclude, spec.ignore_gitignore);
        let mut entries = vec![];
        let (mut files, mut bytes) = (0u64, 0u64);
        for (rel, md) in walk(ws, &filter)? {
            let ft = md.file_type();
            let mode = md.permissions().mode() & 0o7777;
            if ft.is_dir() {
                std::fs::create_dir(files_dir.join(&rel))
                    .map_err(|e| Error::io(format!("snapshot of {rel}"), e))?;
                entries.push(Entry {
                    path: rel,
                    kind: Kind::Dir,
                    mode,
                    size: 0,
                    sha256: None,
                    target: None,
                });
            } else if ft.is_symlink() {
                let t = std::fs::read_link(ws.join(&rel))
                    .map_err(|e| Error::io(format!("reading link {rel}"), e))?;
                entries.push(Entry {
                    path: rel,
                    kind: Kind::Symlink,
                    mode,
                    size: 0,
                    sha256: None,
                    target: Some(t.to_string_lossy().to_string()),
                });
            } else {
                let sum = sha256_copy(&ws.join(&rel), &md, Some(&files_dir.join(&rel)))?;
                files += 1;
                bytes += md.len();
                entries.push(Entry {
                    path: rel,
                    kind: Kind::File,
                    mode,
                    size: md.len(),
                    sha256: Some(sum),
                    target: None,
                });
            }
        }
        let m = Manifest {
            v: 1,
            id: id.clone(),
            run: run.to_string(),
            kind: kind.to_string(),
            label: label.clone(),
            created_at: moat_core::timefmt::now_rfc3339(),
            workspace: ws.to_path_buf(),
            exclude: spec.exclude.clone(),
            ignore_gitignore: spec.ignore_gitignore,
            files,
            bytes,
            entries,
        };
        let mut text = serde_json::to_vec(&m)?;
        text.push(b'\n');
        moat_core::fsutil::write_atomic(&tmp.join("manifest.json"), &text, 0o600)?;
        Ok(m)
    })();
    let m = match result {
        Ok(m) => m,
        Err(e) => {
            let _ = std::fs::remove_dir_all(&tmp);
            return Err(e.context("taking a snapshot"));
        }
    };
    let dst = base.join(&id);
    std::fs::rename(&tmp, &dst).map_err(|e| Error::io(format!("creating {}", dst.display()), e))?;
    retain(run_dir, spec, &id);
    Ok(m)
}

/// Keep at most `max_count` snapshots: the oldest go first, the pre-run one only with
/// `delete_initial`, the one just made never.
fn retain(run_dir: &Path, spec: &SnapshotSpec, keep: &str) {
    let Ok(all) = list(run_dir) else { return };
    let mut extra = all.len().saturating_sub(spec.max_count.max(1));
    for m in all {
        if extra == 0 {
            break;
        }
        if m.id == keep || (m.kind == "pre-run" && !spec.delete_initial) {
            continue;
        }
        if std::fs::remove_dir_all(dir(run_dir).join(&m.id)).is_ok() {
            extra -= 1;
        }
    }
}

/// A run's snapshots, oldest first (incomplete ones never show).
pub fn list(run_dir: &Path) -> Result<Vec<Manifest>> {
    let base = dir(run_dir);
    let rd = match std::fs::read_dir(&base) {
        Ok(rd) => rd,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(vec![]),
        Err(e) => return Err(Error::io(format!("reading {}", base.display()), e)),
    };
    let mut out = vec![];
    for e in rd.flatten() {
        let n = e.file_name().to_string_lossy().to_string();
        if !n.starts_with("snap_") {
            continue;
        }
        if let Ok(m) = load(run_dir, &n) {
            out.push(m);
        }
    }
    out.sort_by(|a, b| a.created_at.cmp(&b.created_at).then(a.id.cmp(&b.id)));
    Ok(out)
}

fn check_snap_id(id: &str) -> Result<()> {
    if id.starts_with("snap_")
        && id.len() <= 64
        && id[5..].bytes().all(|b| b.is_ascii_alphanumeric())
    {
        Ok(())
    } else {
        Err(Error::usage(format!(
            "{id:?} is not a snapshot id (snap_ and 12 hex digits; see `moat snapshot list RUN`)"
        )))
    }
}

pub fn load(run_dir: &Path, id: &str) -> Result<Manifest> {
    check_snap_id(id)?;
    let p = dir(run_dir).join(id).join("manifest.json");
    let b = match std::fs::read(&p) {
        Ok(b) => b,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => {
            return Err(Error::noinput(format!("no snapshot {id}"))
                .with_hint("`moat snapshot list RUN` lists them"));
        }
        Err(e) => return Err(Error::io(format!("reading {}", p.display()), e)),
    };
    let m: Manifest =
        serde_json::from_slice(&b).map_err(|e| Error::data(format!("{}: {e}", p.display())))?;
    if m.id != id {
        return Err(Error::data(format!(
            "{}: the manifest names {}, not {id}",
            p.display(),
            m.id
        )));
    }
    Ok(m)
}

/// A relative path of plain components only.
fn safe_rel(p: &str) -> bool {
    !p.is_empty()
        && !p.contains('\0')
        && Path::new(p)
            .components()
            .all(|c| matches!(c, Component::Normal(_)))
        && !p.starts_with('/')
}

/// Check every parent of `rel` under `root` is a real directory (never a link), making the
/// missing ones.
fn real_parents(root: &Path, rel: &str) -> Result<()> {
    let mut cur = root.to_path_buf();
    let comps: Vec<&str> = rel.split('/').collect();
    for c in &comps[..comps.len() - 1] {
        cur.push(c);
        match std::fs::symlink_metadata(&cur) {
            Ok(m) if m.file_type().is_dir() => {}
            Ok(_) => {
                return Err(Error::data(format!(
                    "{} is not a directory; refusing to write through it",
                    cur.display()
                )));
            }
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => {
                std::fs::create_dir(&cur)
                    .map_err(|e| Error::io(format!("creating {}", cur.display()), e))?;
            }
            Err(e) => return Err(Error::io(format!("reading {}", cur.display()), e)),
        }
    }
    Ok(())
}

fn remove_any(p: &Path) -> Result<()> {
    match std::fs::symlink_metadata(p) {
        Ok(m) if m.file_type().is_dir() => std::fs::remove_dir_all(p),
        Ok(_) => std::fs::remove_file(p),
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(()),
        Err(e) => Err(e),
    }
    .map_err(|e| Error::io(format!("removing {}", p.display()), e))
}

#[derive(Debug, Default, Serialize)]
pub struct Changes {
    pub snapshot: String,
    pub safety_snapshot: Option<String>,
    pub restored: Vec<String>,
    pub created: Vec<String>,
    pub removed: Vec<String>,
    pub unchanged: u64,
}

/// Check the whole snapshot before touching the workspace.
fn validate(run_dir: &Path, m: &Manifest) -> Result<()> {
    let files = dir(run_dir).join(&m.id).join("files");
    let mut seen: BTreeMap<&str, Kind> = BTreeMap::new();
    for e in &m.entries {
        if !safe_rel(&e.path) {
            return Err(Error::data(format!(
                "snapshot {}: entry {:?} is not a plain relative path; refusing to restore",
                m.id, e.path
            )));
        }
        // Every parent must be a directory of the snapshot itself.
        if let Some((parent, _)) = e.path.rsplit_once('/')
            && seen.get(parent) != Some(&Kind::Dir)
        {
            return Err(Error::data(format!(
                "snapshot {}: {:?} comes before (or without) its directory; refusing to restore",
                m.id, e.path
            )));
        }
        if seen.insert(&e.path, e.kind).is_some() {
            return Err(Error::data(format!(
                "snapshot {}: {:?} is listed twice",
                m.id, e.path
            )));
        }
        if e.kind == Kind::File {
            let stored = files.join(&e.path);
            // No link on the stored path: walk it component by component.
            let mut cur = files.clone();
            for c in e.path.split('/') {
                cur.push(c);
                let md = std::fs::symlink_metadata(&cur).map_err(|err| {
                    Error::data(format!(
                        "snapshot {}: {} is missing ({})",
                        m.id,
                        e.path,
                        moat_core::error::io_msg(&err)
                    ))
                })?;
                if md.file_type().is_symlink() {
                    return Err(Error::data(format!(
                        "snapshot {}: {} is a symbolic link inside the snapshot; refusing to restore",
                        m.id, e.path
                    )));
                }
            }
            let md = std::fs::symlink_metadata(&stored)
                .map_err(|err| Error::io(format!("reading {}", stored.display()), err))?;
            let sum = sha256_copy(&stored, &md, None)?;
            if Some(&sum) != e.sha256.as_ref() {
                return Err(Error::data(format!(
                    "snapshot {}: {} does not match its checksum; refusing to restore",
                    m.id, e.path
                )));
            }
        }
    }
    Ok(())
}

/// Is the workspace entry at `rel` already what the snapshot says?
fn same(ws: &Path, e: &Entry) -> bool {
    let p = ws.join(&e.path);
    let Ok(md) = std::fs::symlink_metadata(&p) else {
        return false;
    };
    let mode_ok = md.permissions().mode() & 0o7777 == e.mode;
    match e.kind {
        Kind::Dir => md.file_type().is_dir() && mode_ok,
        Kind::Symlink => {
            md.file_type().is_symlink()
                && std::fs::read_link(&p)
                    .map(|t| Some(t.to_string_lossy().to_string()) == e.target)
                    .unwrap_or(false)
        }
        Kind::File => {
            md.file_type().is_file()
                && mode_ok
                && md.len() == e.size
                && sha256_copy(&p, &md, None).ok() == e.sha256
        }
    }
}

/// Put the workspace back as the snapshot has it: what differs is rewritten, what the
/// snapshot lacks is removed (excluded and ignored paths are left alone).
pub fn restore(run_dir: &Path, run: &str, ws: &Path, id: &str) -> Result<Changes> {
    let m = load(run_dir, id)?;
    validate(run_dir, &m)?;
    let files = dir(run_dir).join(&m.id).join("files");
    let spec = SnapshotSpec {
        exclude: m.exclude.clone(),
        ignore_gitignore: m.ignore_gitignore,
        // The safety snapshot must not push the restored one out.
        max_count: usize::MAX,
        ..SnapshotSpec::default()
    };
    let safety = create(
        run_dir,
        run,
        ws,
        &spec,
        "safety",
        Some(format!("before restoring {id}")),
    )?;
    let mut ch = Changes {
        snapshot: m.id.clone(),
        safety_snapshot: Some(safety.id.clone()),
        ..Changes::default()
    };
    // What the workspace has and the snapshot lacks, deepest first.
    let want: BTreeSet<&str> = m.entries.iter().map(|e| e.path.as_str()).collect();
    let filter = Filter::new(ws, &m.exclude, m.ignore_gitignore);
    let now = walk(ws, &filter)?;
    for (rel, _) in now.iter().rev() {
        if !want.contains(rel.as_str()) {
            // A parent already removed took it along.
            if std::fs::symlink_metadata(ws.join(rel)).is_ok() {
                remove_any(&ws.join(rel))?;
            }
            ch.removed.push(rel.clone());
        }
    }
    for e in &m.entries {
        let p = ws.join(&e.path);
        real_parents(ws, &e.path)?;
        if same(ws, e) {
            ch.unchanged += 1;
            continue;
        }
        let existed = std::fs::symlink_metadata(&p).is_ok();
        match e.kind {
            Kind::Dir => {
                match std::fs::symlink_metadata(&p) {
                    Ok(md) if md.file_type().is_dir() => {}
                    Ok(_) => {
                        remove_any(&p)?;
                        std::fs::create_dir(&p)
                            .map_err(|err| Error::io(format!("creating {}", p.display()), err))?;
                    }
                    Err(_) => std::fs::create_dir(&p)
                        .map_err(|err| Error::io(format!("creating {}", p.display()), err))?,
                }
                std::fs::set_permissions(&p, std::fs::Permissions::from_mode(e.mode))
                    .map_err(|err| Error::io(format!("setting {}", p.display()), err))?;
            }
            Kind::Symlink => {
                remove_any(&p)?;
                let t = e.target.clone().unwrap_or_default();
                std::os::unix::fs::symlink(&t, &p)
                    .map_err(|err| Error::io(format!("creating link {}", p.display()), err))?;
            }
            Kind::File => {
                let parent = p.parent().unwrap_or(ws);
                let tmp = parent.join(format!(
                    ".moat-restore-{}",
                    moat_core::hex(&moat_core::random_bytes::<6>())
                ));
                let src = files.join(&e.path);
                let md = std::fs::symlink_metadata(&src)
                    .map_err(|err| Error::io(format!("reading {}", src.display()), err))?;
                let sum = sha256_copy(&src, &md, Some(&tmp));
                if sum.as_ref().ok() != e.sha256.as_ref() {
                    let _ = std::fs::remove_file(&tmp);
                    sum?;
                    return Err(Error::data(format!(
                        "snapshot {}: {} changed during the restore",
                        m.id, e.path
                    )));
                }
                std::fs::set_permissions(&tmp, std::fs::Permissions::from_mode(e.mode))
                    .map_err(|err| Error::io(format!("setting {}", tmp.display()), err))?;
                if std::fs::symlink_metadata(&p).is_ok_and(|m| m.file_type().is_dir()) {
                    remove_any(&p)?;
                }
                // rename replaces a link itself, never what it points to.
                std::fs::rename(&tmp, &p).map_err(|err| {
                    let _ = std::fs::remove_file(&tmp);
                    Error::io(format!("writing {}", p.display()), err)
                })?;
            }
        }
        if existed {
            ch.restored.push(e.path.clone());
        } else {
            ch.created.push(e.path.clone());
        }
    }
    Ok(ch)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn spec() -> SnapshotSpec {
        SnapshotSpec::default()
    }

    #[test]
    fn patterns() {
        let p = |v: &[&str]| v.iter().map(|s| s.to_string()).collect::<Vec<_>>();
        assert!(excluded(&p(&["node_modules/"]), "a/node_modules", true));
        assert!(!excluded(&p(&["node_modules/"]), "a/node_modules", false));
        assert!(excluded(&p(&["*.log"]), "x/y.log", false));
        assert!(!excluded(&p(&["/build"]), "a/build", true));
        assert!(excluded(&p(&["/build"]), "build", true));
        assert!(excluded(&p(&["docs/**/*.png"]), "docs/a/b/c.png", false));
    }

    #[test]
    fn snapshot_and_restore_round_trip() {
        let t = tempfile::tempdir().unwrap();
        let ws = t.path().join("ws");
        let run = t.path().join("run");
        std::fs::create_dir_all(ws.join("d/e")).unwrap();
        std::fs::create_dir_all(&run).unwrap();
        std::fs::write(ws.join("a.txt"), "one").unwrap();
        std::fs::write(ws.join("d/e/b.txt"), "two").unwrap();
        std::fs::write(ws.join("x.log"), "log").unwrap();
        std::os::unix::fs::symlink("a.txt", ws.join("link")).unwrap();
        let mut s = spec();
        s.exclude = vec!["*.log".into()];
        let m = create(&run, "run_x", &ws, &s, "manual", None).unwrap();
        assert_eq!(m.files, 2);
        assert!(!m.entries.iter().any(|e| e.path == "x.log"));
        // Change everything.
        std::fs::remove_file(ws.join("a.txt")).unwrap();
        std::fs::write(ws.join("d/e/b.txt"), "changed").unwrap();
        std::fs::write(ws.join("new.txt"), "new").unwrap();
        std::fs::remove_file(ws.join("link")).unwrap();
        std::os::unix::fs::symlink("/etc", ws.join("link")).unwrap();
        let ch = restore(&run, "run_x", &ws, &m.id).unwrap();
        assert_eq!(std::fs::read_to_string(ws.join("a.txt")).unwrap(), "one");
        assert_eq!(
            std::fs::read_to_string(ws.join("d/e/b.txt")).unwrap(),
            "two"
        );
        assert!(!ws.join("new.txt").exists());
        assert_eq!(
            std::fs::read_link(ws.join("link")).unwrap(),
            Path::new("a.txt")
        );
        assert!(ws.join("x.log").exists(), "excluded files are left alone");
        assert_eq!(ch.created, ["a.txt"]);
        assert!(ch.restored.contains(&"d/e/b.txt".to_string()));
        assert_eq!(ch.removed, ["new.txt"]);
        assert_eq!(list(&run).unwrap().len(), 2, "the safety snapshot is kept");
    }

    /// The workspace's .git/config is the run's: a snapshot must not run what it names
    /// (git runs `core.fsmonitor` for `ls-files`), and .gitignore is still honoured.
    #[test]
    fn a_snapshot_runs_nothing_from_the_workspace_git_config() {
        let t = tempfile::tempdir().unwrap();
        let ws = t.path().join("ws");
        let run = t.path().join("run");
        std::fs::create_dir_all(&run).unwrap();
        std::fs::create_dir_all(&ws).unwrap();
        let git = |args: &[&str]| {
            let st = std::process::Command::new("git")
                .arg("-C")
                .arg(&ws)
                .args(args)
                .status()
                .unwrap();
            assert!(st.success(), "git {args:?}");
        };
        git(&["init", "-q"]);
        std::fs::write(ws.join(".gitignore"), "*.tmp\nbuild/\n").unwrap();
        std::fs::write(ws.join(".git/info/exclude"), "secret.txt\n").unwrap();
        std::fs::create_dir_all(ws.join("build")).unwrap();
        std::fs::write(ws.join("build/out"), "o").unwrap();
        std::fs::write(ws.join("a.tmp"), "t").unwrap();
        std::fs::write(ws.join("secret.txt"), "s").unwrap();
        std::fs::write(ws.join("keep.rs"), "k").unwrap();
        let marker = t.path().join("fsmonitor-ran");
        let canary = format!("touch {}; false", marker.display());
        git(&["config", "core.fsmonitor", &canary]);
        let m = create(&run, "run_x", &ws, &spec(), "manual", None).unwrap();
        assert!(
            !marker.exists(),
            "the workspace's core.fsmonitor ran on the host"
        );
        let paths: Vec<&str> = m.entries.iter().map(|e| e.path.as_str()).collect();
        assert_eq!(paths, [".gitignore", "keep.rs"], "{paths:?}");
    }

    #[test]
    fn tampered_snapshots_are_refused() {
        let t = tempfile::tempdir().unwrap();
        let ws = t.path().join("ws");
        let run = t.path().join("run");
        std::fs::create_dir_all(&ws).unwrap();
        std::fs::create_dir_all(&run).unwrap();
        std::fs::write(ws.join("a.txt"), "one").unwrap();
        let m = create(&run, "run_x", &ws, &spec(), "manual", None).unwrap();
        let mp = dir(&run).join(&m.id).join("manifest.json");
        let orig = std::fs::read_to_string(&mp).unwrap();
        // A path that climbs out.
        std::fs::write(&mp, orig.replace("\"a.txt\"", "\"../escape.txt\"")).unwrap();
        let e = restore(&run, "run_x", &ws, &m.id).unwrap_err();
        assert_eq!(e.code, moat_core::exit::DATAERR, "{}", e.msg);
        assert!(!t.path().join("escape.txt").exists());
        // A stored file swapped for a link to a host file.
        std::fs::write(&mp, &orig).unwrap();
        let stored = dir(&run).join(&m.id).join("files/a.txt");
        std::fs::remove_file(&stored).unwrap();
        std::os::unix::fs::symlink("/etc/hostname", &stored).unwrap();
        let e = restore(&run, "run_x", &ws, &m.id).unwrap_err();
        assert!(e.msg.contains("symbolic link"), "{}", e.msg);
        // Unknown ids.
        assert_eq!(
            restore(&run, "run_x", &ws, "snap_000000000000")
                .unwrap_err()
                .code,
            moat_core::exit::NOINPUT
        );
        assert_eq!(
            restore(&run, "run_x", &ws, "../x").unwrap_err().code,
            moat_core::exit::USAGE
        );
    }

    #[test]
    fn restore_replaces_a_workspace_link_instead_of_following_it() {
        let t = tempfile::tempdir().unwrap();
        let ws = t.path().join("ws");
        let outside = t.path().join("outside");
        let run = t.path().join("run");
        std::fs::create_dir_all(ws.join("d")).unwrap();
        std::fs::create_dir_all(&outside).unwrap();
        std::fs::create_dir_all(&run).unwrap();
        std::fs::write(ws.join("d/f"), "in").unwrap();
        let m = create(&run, "run_x", &ws, &spec(), "manual", None).unwrap();
        std::fs::remove_dir_all(ws.join("d")).unwrap();
        std::os::unix::fs::symlink(&outside, ws.join("d")).unwrap();
        restore(&run, "run_x", &ws, &m.id).unwrap();
        assert!(!outside.join("f").exists(), "wrote through the link");
        assert!(ws.join("d").symlink_metadata().unwrap().is_dir());
        assert_eq!(std::fs::read_to_string(ws.join("d/f")).unwrap(), "in");
    }
}
