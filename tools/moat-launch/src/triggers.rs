//! Automatic snapshots while a run lives: after a git commit in the workspace, after a build
//! (from the run's exec trace, when it has one) and when the run goes idle. One task of the
//! supervisor polls once a second; the snapshots themselves are snapshot.rs's, taken on the
//! host from the workspace (links recorded, never followed), and retention applies to them.
//!
//! Everything read here is the run's to write: `.git/` is the workspace's, and the activity
//! files grow with what the container prints and asks for. So:
//! - the commit comes from `.git/HEAD`, the loose ref it names or `packed-refs`, read without
//!   a `git` process; no path with a symbolic link anywhere on it is read (the file opened
//!   must be the file looked at), nothing but a regular file, nothing larger than a bound;
//!   a ref name must be a plain `refs/...` name and a commit id 40 or 64 hex digits. Any
//!   other HEAD is "no commit". A `.git` that is a file (a worktree's or submodule's gitdir
//!   pointer) names a directory outside the workspace, which is not followed (no git
//!   snapshots), except in a `moat wt` run: there the repository comes from the run's spec
//!   and the gitdir must be one of its `.git/worktrees/` entries, settled as the run starts.
//! - each trigger takes at most one snapshot per [`MIN_INTERVAL`]; what happens meanwhile
//!   is folded into the next one (a commit loop gets one snapshot of its latest commit per
//!   interval), and a pending git or build snapshot is taken when the run ends.
//! - labels are a short commit id or a fixed build name, never text from the run.

use crate::config::SnapshotSpec;
use std::io::{Read, Seek, SeekFrom};
use std::os::unix::fs::{MetadataExt, OpenOptionsExt};
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};
use tokio::sync::{mpsc, watch};

/// At most one automatic snapshot per trigger in this time.
pub const MIN_INTERVAL: Duration = Duration::from_secs(10);
const POLL: Duration = Duration::from_secs(1);
/// HEAD and a loose ref are one line.
const MAX_SMALL: u64 = 4096;
/// packed-refs of a large repository; a larger one is "no commit".
const MAX_PACKED: u64 = 8 << 20;
/// exec.jsonl read per poll, and the longest record considered.
const EXEC_CHUNK: u64 = 1 << 20;
const MAX_EXEC_LINE: usize = 64 << 10;

// std has no names for these; the values are the kernel's.
#[cfg(target_os = "linux")]
const O_NONBLOCK: i32 = 0o4000;
#[cfg(not(target_os = "linux"))]
const O_NONBLOCK: i32 = 0x4;
#[cfg(all(target_os = "linux", any(target_arch = "aarch64", target_arch = "arm")))]
const O_NOFOLLOW: i32 = 0o100000;
#[cfg(all(
    target_os = "linux",
    not(any(target_arch = "aarch64", target_arch = "arm"))
))]
const O_NOFOLLOW: i32 = 0o400000;
#[cfg(not(target_os = "linux"))]
const O_NOFOLLOW: i32 = 0x100;

/// `root/rel` if every component below `root` is a real directory (no link), the last a
/// regular file of at most `max` bytes, and the file opened is the one looked at. A FIFO
/// put there meanwhile does not block the open.
pub(crate) fn read_bounded(root: &Path, rel: &str, max: u64) -> Option<Vec<u8>> {
    let comps: Vec<&str> = rel.split('/').collect();
    if comps
        .iter()
        .any(|c| c.is_empty() || *c == "." || *c == "..")
    {
        return None;
    }
    let mut cur = root.to_path_buf();
    for c in &comps[..comps.len() - 1] {
        cur.push(c);
        if !std::fs::symlink_metadata(&cur).ok()?.file_type().is_dir() {
            return None;
        }
    }
    cur.push(comps[comps.len() - 1]);
    let md = std::fs::symlink_metadata(&cur).ok()?;
    if !md.file_type().is_file() || md.len() > max {
        return None;
    }
    let f = std::fs::OpenOptions::new()
        .read(true)
        .custom_flags(O_NOFOLLOW | O_NONBLOCK)
        .open(&cur)
        .ok()?;
    let got = f.metadata().ok()?;
    if !got.is_file() || got.ino() != md.ino() || got.dev() != md.dev() {
        return None;
    }
    let mut buf = vec![];
    f.take(max + 1).read_to_end(&mut buf).ok()?;
    if buf.len() as u64 > max {
        return None;
    }
    Some(buf)
}

/// A commit id as git writes it: 40 (SHA-1) or 64 (SHA-256) lowercase hex digits.
fn commit_id(s: &str) -> Option<String> {
    let ok = (s.len() == 40 || s.len() == 64)
        && s.bytes()
            .all(|b| b.is_ascii_digit() || (b'a'..=b'f').contains(&b));
    ok.then(|| s.to_string())
}

/// A branch ref we follow: `refs/...`, plain components of a conservative alphabet.
fn plain_ref(r: &str) -> bool {
    r.len() <= 255
        && r.starts_with("refs/")
        && !r.contains("..")
        && r.split('/').all(|c| {
            !c.is_empty()
                && !c.starts_with('.')
                && !c.ends_with(".lock")
                && c.bytes()
                    .all(|b| b.is_ascii_alphanumeric() || b"-_.+".contains(&b))
        })
}

/// Where a run's HEAD and refs are read: each a trusted directory and a path below it
/// that is checked component by component.
#[derive(Debug, Clone, PartialEq)]
pub struct GitDirs {
    head: (PathBuf, String),
    refs: (PathBuf, String),
}

impl GitDirs {
    /// A workspace with its own `.git` directory.
    pub fn workspace(ws: &Path) -> GitDirs {
        GitDirs {
            head: (ws.to_path_buf(), ".git/HEAD".into()),
            refs: (ws.to_path_buf(), ".git/".into()),
        }
    }

    /// A `moat wt` run: the worktree's `.git` file names its directory under the main
    /// repository's `.git/worktrees/` (anything else is refused: None), whose HEAD is the
    /// worktree's; refs and packed-refs are the main `.git`'s. `repo` comes from the run's
    /// spec, not from the workspace.
    pub fn worktree(ws: &Path, repo: &Path) -> Option<GitDirs> {
        let common = repo.join(".git");
        if !std::fs::symlink_metadata(&common)
            .ok()?
            .file_type()
            .is_dir()
        {
            return None;
        }
        let common = std::fs::canonicalize(&common).ok()?;
        let dotgit = read_bounded(ws, ".git", MAX_SMALL)?;
        let gitdir = std::str::from_utf8(&dotgit)
            .ok()?
            .trim()
            .strip_prefix("gitdir:")?
            .trim()
            .to_string();
        let gitdir = std::fs::canonicalize(ws.join(gitdir)).ok()?;
        let under = gitdir.strip_prefix(common.join("worktrees")).ok()?;
        if under.components().count() != 1 {
            return None;
        }
        Some(GitDirs {
            head: (gitdir, "HEAD".into()),
            refs: (common, String::new()),
        })
    }

    /// The commit HEAD resolves to; None for anything else (no repository, no commit yet,
    /// links, oversized or malformed files).
    pub fn head(&self) -> Option<String> {
        let (root, rel) = &self.head;
        let head = read_bounded(root, rel, MAX_SMALL)?;
        let head = std::str::from_utf8(&head).ok()?.trim();
        let Some(r) = head.strip_prefix("ref:") else {
            return commit_id(head);
        };
        let r = r.trim();
        if !plain_ref(r) {
            return None;
        }
        let (root, prefix) = &self.refs;
        // A loose ref wins over packed-refs (git's order); an unreadable one is no commit.
        if std::fs::symlink_metadata(root.join(format!("{prefix}{r}"))).is_ok() {
            let b = read_bounded(root, &format!("{prefix}{r}"), MAX_SMALL)?;
            return commit_id(std::str::from_utf8(&b).ok()?.trim());
        }
        let packed = read_bounded(root, &format!("{prefix}packed-refs"), MAX_PACKED)?;
        packed
            .split(|b| *b == b'\n')
            .filter_map(|l| std::str::from_utf8(l).ok())
            .filter(|l| !l.starts_with('#') && !l.starts_with('^'))
            .find_map(|l| {
                let (id, name) = l.trim_end().split_once(' ')?;
                (name == r).then(|| commit_id(id)).flatten()
            })
    }
}

/// The commit the workspace's HEAD resolves to (its own `.git` directory only: a `.git`
/// file or link is None).
#[cfg(test)]
fn git_head(ws: &Path) -> Option<String> {
    GitDirs::workspace(ws).head()
}

/// A finished build in an exec record: `{"v":1,"type":"exec","event":"exit","argv":[...],
/// "exit_code":0}` whose argv is `make`, `gmake`, `ninja`, `cargo build`, `go build`,
/// `npm run build`, or `pnpm|yarn|bun [run] build`. The label is ours, not the run's text.
pub fn build_of(line: &[u8]) -> Option<&'static str> {
    let v: serde_json::Value = serde_json::from_slice(line).ok()?;
    if v.get("v")?.as_u64()? != 1
        || v.get("type")?.as_str()? != "exec"
        || v.get("event")?.as_str()? != "exit"
        || v.get("exit_code")?.as_i64()? != 0
    {
        return None;
    }
    let argv: Vec<&str> = v
        .get("argv")?
        .as_array()?
        .iter()
        .map(|a| a.as_str())
        .collect::<Option<_>>()?;
    let prog = argv.first()?.rsplit('/').next()?;
    // The first argument that is not an option (cargo's `+toolchain` counts as one).
    let sub: Vec<&str> = argv[1..]
        .iter()
        .copied()
        .filter(|a| !a.starts_with('-') && !a.starts_with('+'))
        .take(2)
        .collect();
    let first = sub.first().copied();
    match prog {
        "make" => Some("make"),
        "gmake" => Some("gmake"),
        "ninja" => Some("ninja"),
        "cargo" if matches!(first, Some("build" | "b")) => Some("cargo build"),
        "go" if first == Some("build") => Some("go build"),
        "npm" if first == Some("run") && sub.get(1) == Some(&"build") => Some("npm run build"),
        "pnpm" | "yarn" | "bun"
            if first == Some("build") || (first == Some("run") && sub.get(1) == Some(&"build")) =>
        {
            Some(match prog {
                "pnpm" => "pnpm build",
                "yarn" => "yarn build",
                _ => "bun build",
            })
        }
        _ => None,
    }
}

/// Follows a growing JSON-lines file from where it was when watching began.
struct Tail {
    path: PathBuf,
    at: u64,
    partial: Vec<u8>,
    skipping: bool,
}

impl Tail {
    fn new(path: PathBuf) -> Tail {
        Tail {
            path,
            at: 0,
            partial: vec![],
            skipping: false,
        }
    }

    /// Complete new lines (a line longer than [`MAX_EXEC_LINE`] is dropped).
    fn lines(&mut self) -> Vec<Vec<u8>> {
        let mut out = vec![];
        let Ok(md) = std::fs::symlink_metadata(&self.path) else {
            return out;
        };
        if !md.file_type().is_file() {
            return out;
        }
        if md.len() < self.at {
            // Replaced or truncated: start over.
            self.at = 0;
            self.partial.clear();
            self.skipping = false;
        }
        if md.len() == self.at {
            return out;
        }
        let Ok(mut f) = std::fs::OpenOptions::new()
            .read(true)
            .custom_flags(O_NOFOLLOW | O_NONBLOCK)
            .open(&self.path)
        else {
            return out;
        };
        if f.seek(SeekFrom::Start(self.at)).is_err() {
            return out;
        }
        let mut buf = vec![];
        if (&mut f).take(EXEC_CHUNK).read_to_end(&mut buf).is_err() {
            return out;
        }
        self.at += buf.len() as u64;
        for b in buf {
            if b == b'\n' {
                if !std::mem::take(&mut self.skipping) {
                    out.push(std::mem::take(&mut self.partial));
                }
                self.partial.clear();
            } else if !self.skipping {
                self.partial.push(b);
                if self.partial.len() > MAX_EXEC_LINE {
                    self.partial.clear();
                    self.skipping = true;
                }
            }
        }
        out
    }
}

fn len_of(p: &Path) -> u64 {
    std::fs::symlink_metadata(p).map(|m| m.len()).unwrap_or(0)
}

/// The running trigger task; [`Handle::finish`] takes what is pending and ends it.
pub struct Handle {
    stop: watch::Sender<bool>,
    task: tokio::task::JoinHandle<()>,
}

impl Handle {
    pub async fn finish(self) {
        let _ = self.stop.send(true);
        let mut task = self.task;
        if tokio::time::timeout(Duration::from_secs(120), &mut task)
            .await
            .is_err()
        {
            task.abort();
        }
    }
}

/// Is any automatic trigger on for this spec?
pub fn any(spec: &SnapshotSpec) -> bool {
    !spec.disabled && (spec.git_commits || spec.builds || spec.idle)
}

/// Start watching (None when snapshots or all triggers are off).
pub fn start(
    run_dir: PathBuf,
    run: String,
    ws: PathBuf,
    worktree_repo: Option<PathBuf>,
    spec: SnapshotSpec,
    audit: Option<mpsc::UnboundedSender<String>>,
) -> Option<Handle> {
    if !any(&spec) {
        return None;
    }
    let (stop, rx) = watch::channel(false);
    let task = tokio::spawn(watch_run(
        Ctx {
            run_dir,
            run,
            ws,
            worktree_repo,
            spec,
            audit,
        },
        rx,
    ));
    Some(Handle { stop, task })
}

struct Ctx {
    run_dir: PathBuf,
    run: String,
    ws: PathBuf,
    worktree_repo: Option<PathBuf>,
    spec: SnapshotSpec,
    audit: Option<mpsc::UnboundedSender<String>>,
}

impl Ctx {
    /// Take one snapshot; true if it was made.
    async fn snap(&self, kind: &'static str, label: String) -> bool {
        let (d, r, w, s, l) = (
            self.run_dir.clone(),
            self.run.clone(),
            self.ws.clone(),
            self.spec.clone(),
            label.clone(),
        );
        let made = tokio::task::spawn_blocking(move || {
            crate::snapshot::create(&d, &r, &w, &s, kind, Some(l))
        })
        .await;
        match made {
            Ok(Ok(m)) => {
                if let Some(tx) = &self.audit
                    && let Ok(l) = moat_core::jsonl::line(
                        "snapshot_created",
                        &serde_json::json!({"run": self.run, "snapshot": m.id, "kind": m.kind, "label": label, "files": m.files, "bytes": m.bytes}),
                    )
                {
                    let _ = tx.send(l);
                }
                true
            }
            Ok(Err(e)) => {
                eprintln!("moat: warning: no {kind} snapshot ({label}): {}", e.msg);
                false
            }
            Err(_) => {
                eprintln!("moat: warning: no {kind} snapshot ({label})");
                false
            }
        }
    }
}

fn open(last: Option<Instant>, now: Instant) -> bool {
    last.is_none_or(|t| now.duration_since(t) >= MIN_INTERVAL)
}

async fn watch_run(ctx: Ctx, mut stop: watch::Receiver<bool>) {
    let spec = &ctx.spec;
    // Where HEAD is, settled once: a worktree's gitdir is found (and checked) as the run
    // starts, so a `.git` file rewritten by the run later changes nothing.
    let dirs = {
        let (ws, repo) = (ctx.ws.clone(), ctx.worktree_repo.clone());
        tokio::task::spawn_blocking(move || match repo {
            Some(r) => GitDirs::worktree(&ws, &r),
            None => Some(GitDirs::workspace(&ws)),
        })
        .await
        .ok()
        .flatten()
    };
    let head = |d: Option<GitDirs>| async move {
        let d = d?;
        tokio::task::spawn_blocking(move || d.head())
            .await
            .ok()
            .flatten()
    };
    // The commit the run starts from is in the pre-run snapshot already.
    let mut seen = if spec.git_commits {
        head(dirs.clone()).await
    } else {
        None
    };
    let mut git_pending: Option<String> = None;
    let mut build_pending: Option<&'static str> = None;
    let (mut git_at, mut build_at, mut idle_at) = (None, None, None);
    let mut exec = Tail::new(ctx.run_dir.join("exec.jsonl"));
    // Skip what was traced before watching began.
    exec.at = len_of(&exec.path);
    let activity_files = [
        ctx.run_dir.join("logs.jsonl"),
        ctx.run_dir.join("network.jsonl"),
        ctx.run_dir.join("exec.jsonl"),
    ];
    // What the run printed or asked for before watching began is activity too.
    let mut sizes: Vec<u64> = vec![0; activity_files.len()];
    let mut last_activity = Instant::now();
    // Activity since the last idle snapshot (the start is none: nothing to keep yet).
    let mut active = false;
    let threshold = Duration::from_secs(spec.idle_threshold_seconds);
    loop {
        let stopping = tokio::select! {
            _ = tokio::time::sleep(POLL) => false,
            _ = stop.changed() => true,
        };
        let now = Instant::now();
        if spec.git_commits {
            let h = head(dirs.clone()).await;
            if h.is_some() && h != seen {
                seen = h.clone();
                git_pending = h;
                last_activity = now;
                active = true;
            }
        }
        if spec.builds {
            for l in exec.lines() {
                if let Some(b) = build_of(&l) {
                    build_pending = Some(b);
                }
            }
        }
        let now_sizes: Vec<u64> = activity_files.iter().map(|p| len_of(p)).collect();
        if now_sizes != sizes {
            sizes = now_sizes;
            last_activity = now;
            active = true;
        }
        if let Some(c) = git_pending.clone()
            && (stopping || open(git_at, now))
        {
            git_at = Some(now);
            if ctx.snap("git", format!("commit {}", &c[..12])).await {
                git_pending = None;
            }
        }
        if let Some(b) = build_pending
            && (stopping || open(build_at, now))
        {
            build_at = Some(now);
            if ctx.snap("build", b.to_string()).await {
                build_pending = None;
            }
        }
        if spec.idle
            && !stopping
            && active
            && now.duration_since(last_activity) >= threshold
            && open(idle_at, now)
        {
            idle_at = Some(now);
            active = false;
            ctx.snap("idle", format!("idle {}s", spec.idle_threshold_seconds))
                .await;
        }
        if stopping || stop.has_changed().is_err() {
            return;
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const A: &str = "0123456789abcdef0123456789abcdef01234567";
    const B: &str = "89abcdef0123456789abcdef0123456789abcdef";

    fn repo() -> (tempfile::TempDir, PathBuf) {
        let t = tempfile::tempdir().unwrap();
        let ws = t.path().join("ws");
        std::fs::create_dir_all(ws.join(".git/refs/heads")).unwrap();
        (t, ws)
    }

    #[test]
    fn detached_symbolic_and_packed_heads() {
        let (_t, ws) = repo();
        assert_eq!(git_head(&ws), None, "no HEAD yet");
        std::fs::write(ws.join(".git/HEAD"), format!("{A}\n")).unwrap();
        assert_eq!(git_head(&ws).as_deref(), Some(A), "detached");
        std::fs::write(ws.join(".git/HEAD"), "ref: refs/heads/main\n").unwrap();
        assert_eq!(git_head(&ws), None, "a branch with no commit yet");
        std::fs::write(
            ws.join(".git/packed-refs"),
            format!("# pack-refs with: peeled fully-peeled sorted\n{B} refs/heads/other\n{A} refs/heads/main\n^{B}\n"),
        )
        .unwrap();
        assert_eq!(git_head(&ws).as_deref(), Some(A), "packed");
        std::fs::write(ws.join(".git/refs/heads/main"), format!("{B}\n")).unwrap();
        assert_eq!(git_head(&ws).as_deref(), Some(B), "loose wins");
        std::fs::create_dir_all(ws.join(".git/refs/heads/feature")).unwrap();
        std::fs::write(ws.join(".git/refs/heads/feature/x"), format!("{A}\n")).unwrap();
        std::fs::write(ws.join(".git/HEAD"), "ref: refs/heads/feature/x\n").unwrap();
        assert_eq!(git_head(&ws).as_deref(), Some(A), "nested branch name");
        let sha256 = "a".repeat(64);
        std::fs::write(ws.join(".git/HEAD"), &sha256).unwrap();
        assert_eq!(git_head(&ws), Some(sha256), "SHA-256 repositories");
    }

    #[test]
    fn hostile_heads_are_no_commit() {
        let (t, ws) = repo();
        // HEAD a link to a host file, and to a file of the workspace.
        std::os::unix::fs::symlink("/etc/passwd", ws.join(".git/HEAD")).unwrap();
        assert_eq!(git_head(&ws), None);
        std::fs::remove_file(ws.join(".git/HEAD")).unwrap();
        let outside = t.path().join("outside");
        std::fs::create_dir_all(outside.join("heads")).unwrap();
        std::fs::write(outside.join("heads/main"), A).unwrap();
        std::fs::write(outside.join("HEAD"), A).unwrap();
        std::os::unix::fs::symlink(outside.join("HEAD"), ws.join(".git/HEAD")).unwrap();
        assert_eq!(git_head(&ws), None, "HEAD through a link");
        std::fs::remove_file(ws.join(".git/HEAD")).unwrap();
        // A ref that climbs out, or whose directory is a link out.
        for r in [
            "refs/../../outside/HEAD",
            "refs/heads/../../../outside/HEAD",
            "/etc/passwd",
            "refs//heads/main",
            "refs/heads/.hidden",
            "refs/heads/main.lock",
            "HEAD",
        ] {
            std::fs::write(ws.join(".git/HEAD"), format!("ref: {r}\n")).unwrap();
            assert_eq!(git_head(&ws), None, "{r}");
        }
        std::fs::remove_dir_all(ws.join(".git/refs/heads")).unwrap();
        std::os::unix::fs::symlink(&outside, ws.join(".git/refs/heads")).unwrap();
        std::fs::write(ws.join(".git/HEAD"), "ref: refs/heads/heads/main\n").unwrap();
        assert_eq!(git_head(&ws), None, "a ref directory that is a link");
        // A huge HEAD, garbage, a FIFO.
        std::fs::write(ws.join(".git/HEAD"), format!("{A}{}", " ".repeat(8192))).unwrap();
        assert_eq!(git_head(&ws), None, "oversized");
        std::fs::write(ws.join(".git/HEAD"), "not a commit\n").unwrap();
        assert_eq!(git_head(&ws), None);
        std::fs::write(ws.join(".git/HEAD"), A.to_uppercase()).unwrap();
        assert_eq!(git_head(&ws), None, "git writes lowercase");
        std::fs::remove_file(ws.join(".git/HEAD")).unwrap();
        let st = std::process::Command::new("mkfifo")
            .arg(ws.join(".git/HEAD"))
            .status()
            .unwrap();
        assert!(st.success());
        assert_eq!(git_head(&ws), None, "a FIFO does not block");
        // .git itself a link to a real repository outside, or a gitdir file.
        let (_t2, other) = repo();
        std::fs::write(other.join(".git/HEAD"), A).unwrap();
        std::fs::remove_dir_all(ws.join(".git")).unwrap();
        std::os::unix::fs::symlink(other.join(".git"), ws.join(".git")).unwrap();
        assert_eq!(git_head(&ws), None, ".git a link");
        std::fs::remove_file(ws.join(".git")).unwrap();
        std::fs::write(
            ws.join(".git"),
            format!("gitdir: {}\n", other.join(".git").display()),
        )
        .unwrap();
        assert_eq!(git_head(&ws), None, ".git a gitdir file");
    }

    fn git(dir: &Path, args: &[&str]) -> String {
        let o = std::process::Command::new("git")
            .arg("-C")
            .arg(dir)
            .args([
                "-c",
                "user.name=t",
                "-c",
                "user.email=t@e",
                "-c",
                "commit.gpgsign=false",
            ])
            .args(args)
            .output()
            .unwrap();
        assert!(o.status.success(), "git {args:?}");
        String::from_utf8_lossy(&o.stdout).trim().to_string()
    }

    /// A `moat wt` worktree: HEAD from the worktree's gitdir, refs from the main `.git`
    /// (loose, then packed); a `.git` file naming anything outside `.git/worktrees/` is
    /// refused.
    #[test]
    fn worktree_heads_come_from_the_repository() {
        let t = tempfile::tempdir().unwrap();
        let repo = t.path().join("repo");
        std::fs::create_dir_all(&repo).unwrap();
        git(&repo, &["init", "-q"]);
        std::fs::write(repo.join("a"), "a").unwrap();
        git(&repo, &["add", "a"]);
        git(&repo, &["commit", "-q", "-m", "a"]);
        let wt = t.path().join("wt");
        git(
            &repo,
            &[
                "worktree",
                "add",
                "-q",
                "-b",
                "feature",
                wt.to_str().unwrap(),
            ],
        );
        assert_eq!(GitDirs::workspace(&wt).head(), None, ".git is a file");
        let d = GitDirs::worktree(&wt, &repo).expect("a worktree of repo");
        assert_eq!(d.head(), Some(git(&wt, &["rev-parse", "HEAD"])));
        std::fs::write(wt.join("b"), "b").unwrap();
        git(&wt, &["add", "b"]);
        git(&wt, &["commit", "-q", "-m", "b"]);
        assert_eq!(
            d.head(),
            Some(git(&wt, &["rev-parse", "HEAD"])),
            "new commit"
        );
        git(&repo, &["pack-refs", "--all"]);
        assert_eq!(d.head(), Some(git(&wt, &["rev-parse", "HEAD"])), "packed");
        // Another repository's .git, or the main .git itself: refused.
        let other = t.path().join("other");
        std::fs::create_dir_all(&other).unwrap();
        git(&other, &["init", "-q"]);
        for target in [
            other.join(".git"),
            repo.join(".git"),
            repo.join(".git/worktrees"),
        ] {
            std::fs::write(wt.join(".git"), format!("gitdir: {}\n", target.display())).unwrap();
            assert_eq!(GitDirs::worktree(&wt, &repo), None, "{}", target.display());
        }
        std::fs::remove_file(wt.join(".git")).unwrap();
        std::os::unix::fs::symlink(repo.join(".git"), wt.join(".git")).unwrap();
        assert_eq!(GitDirs::worktree(&wt, &repo), None, ".git a link");
    }

    #[test]
    fn oversized_packed_refs_are_no_commit() {
        let (_t, ws) = repo();
        std::fs::write(ws.join(".git/HEAD"), "ref: refs/heads/main\n").unwrap();
        let mut p = std::fs::File::create(ws.join(".git/packed-refs")).unwrap();
        std::io::Write::write_all(&mut p, format!("{A} refs/heads/main\n").as_bytes()).unwrap();
        p.set_len(MAX_PACKED + 1).unwrap();
        assert_eq!(git_head(&ws), None);
    }

    #[test]
    fn builds_in_exec_records() {
        let rec = |argv: &str, code: i64, event: &str| {
            format!(
                r#"{{"v":1,"type":"exec","event":"{event}","argv":{argv},"exit_code":{code},"pid":7}}"#
            )
        };
        let b = |s: String| build_of(s.as_bytes());
        assert_eq!(b(rec(r#"["make","-j4"]"#, 0, "exit")), Some("make"));
        assert_eq!(
            b(rec(
                r#"["/usr/bin/cargo","+nightly","build","--release"]"#,
                0,
                "exit"
            )),
            Some("cargo build")
        );
        assert_eq!(
            b(rec(r#"["go","build","./..."]"#, 0, "exit")),
            Some("go build")
        );
        assert_eq!(
            b(rec(r#"["npm","run","build"]"#, 0, "exit")),
            Some("npm run build")
        );
        assert_eq!(b(rec(r#"["yarn","build"]"#, 0, "exit")), Some("yarn build"));
        // Failed, not finished, not a build, malformed.
        assert_eq!(b(rec(r#"["make"]"#, 2, "exit")), None);
        assert_eq!(b(rec(r#"["make"]"#, 0, "start")), None);
        assert_eq!(b(rec(r#"["cargo","test"]"#, 0, "exit")), None);
        assert_eq!(b(rec(r#"["npm","install"]"#, 0, "exit")), None);
        assert_eq!(b(rec(r#"["go","vet"]"#, 0, "exit")), None);
        assert_eq!(b(rec(r#"[]"#, 0, "exit")), None);
        assert_eq!(b(rec(r#"["make",7]"#, 0, "exit")), None);
        assert_eq!(build_of(b"{\"v\":1"), None);
        assert_eq!(
            build_of(br#"{"v":2,"type":"exec","event":"exit","argv":["make"],"exit_code":0}"#),
            None
        );
    }

    /// The build trigger end to end on the host side: a finished `cargo build` appended to
    /// the run's exec.jsonl gives one `build` snapshot, recorded for the audit log; a failed
    /// build and what was traced before watching began give none.
    #[tokio::test]
    async fn a_build_in_the_exec_trace_is_snapshotted() {
        let t = tempfile::tempdir().unwrap();
        let (ws, run) = (t.path().join("ws"), t.path().join("run"));
        std::fs::create_dir_all(&ws).unwrap();
        std::fs::create_dir_all(&run).unwrap();
        std::fs::write(ws.join("main.rs"), "fn main() {}").unwrap();
        let rec = |argv: &str, code: i32| {
            format!(
                "{{\"v\":1,\"type\":\"exec\",\"event\":\"exit\",\"argv\":{argv},\"exit_code\":{code}}}\n"
            )
        };
        std::fs::write(run.join("exec.jsonl"), rec(r#"["make"]"#, 0)).unwrap();
        let spec = SnapshotSpec {
            git_commits: false,
            idle: false,
            ..SnapshotSpec::default()
        };
        let (tx, mut rx) = mpsc::unbounded_channel();
        let h = start(run.clone(), "run_x".into(), ws, None, spec, Some(tx)).unwrap();
        let mut f = std::fs::OpenOptions::new()
            .append(true)
            .open(run.join("exec.jsonl"))
            .unwrap();
        std::io::Write::write_all(&mut f, rec(r#"["cargo","build"]"#, 101).as_bytes()).unwrap();
        tokio::time::sleep(Duration::from_millis(1500)).await;
        assert!(
            crate::snapshot::list(&run).unwrap().is_empty(),
            "a failed build, or one traced before"
        );
        std::io::Write::write_all(&mut f, rec(r#"["cargo","build"]"#, 0).as_bytes()).unwrap();
        tokio::time::sleep(Duration::from_millis(2500)).await;
        h.finish().await;
        let all = crate::snapshot::list(&run).unwrap();
        assert_eq!(all.len(), 1, "{all:?}");
        assert_eq!(all[0].kind, "build");
        assert_eq!(all[0].label.as_deref(), Some("cargo build"));
        let ev = rx.recv().await.unwrap();
        assert!(
            ev.contains("snapshot_created") && ev.contains("\"kind\":\"build\""),
            "{ev}"
        );
    }

    #[test]
    fn the_tail_reads_whole_lines_and_drops_huge_ones() {
        let t = tempfile::tempdir().unwrap();
        let p = t.path().join("exec.jsonl");
        let mut tail = Tail::new(p.clone());
        assert!(tail.lines().is_empty(), "no file yet");
        std::fs::write(&p, "one\ntw").unwrap();
        assert_eq!(tail.lines(), vec![b"one".to_vec()]);
        let mut f = std::fs::OpenOptions::new().append(true).open(&p).unwrap();
        std::io::Write::write_all(&mut f, b"o\n").unwrap();
        assert_eq!(tail.lines(), vec![b"two".to_vec()]);
        std::io::Write::write_all(&mut f, &vec![b'x'; MAX_EXEC_LINE + 10]).unwrap();
        std::io::Write::write_all(&mut f, b"\nthree\n").unwrap();
        assert_eq!(tail.lines(), vec![b"three".to_vec()]);
        // Truncated: read again from the start.
        std::fs::write(&p, "four\n").unwrap();
        assert_eq!(tail.lines(), vec![b"four".to_vec()]);
    }
}
