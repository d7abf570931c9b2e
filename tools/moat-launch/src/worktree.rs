//! `moat wt BRANCH` / `run --worktree BRANCH`: the run gets its own git worktree of the
//! workspace's repository, under MOAT_HOME/worktrees/<repo-id>/<branch> (MOAT_WORKTREE_BASE
//! overrides the base), made from HEAD when the branch does not exist. The main checkout's
//! files, HEAD and index are never touched.
//!
//! A worktree's `.git` is a file naming a directory inside the main repository's `.git`, so
//! the container needs that `.git` at the same absolute path. Only the `.git` directory is
//! mounted (not the main checkout's files), and the parts a run has no business changing are
//! mounted read-only over it: `config` and `hooks/` (both can make the host's git run
//! commands), and the main checkout's `HEAD` and `index`.

use crate::config::Bind;
use moat_core::{Error, MoatHome, Result};
use serde::{Deserialize, Serialize};
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};

#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
pub struct Worktree {
    pub branch: String,
    /// The main repository's top level.
    pub repo: PathBuf,
    /// `host/owner/repo` from origin, or `_local/<dir>-<hash>`.
    pub repo_id: String,
    /// The worktree's top level on the host.
    pub path: PathBuf,
    /// Whether this run created the worktree (and whether it created the branch).
    pub created: bool,
    pub created_branch: bool,
}

/// A branch name we accept: git's own rules, plus no whitespace and nothing that could
/// climb out of the worktrees directory once it is a path.
pub fn check_branch(b: &str) -> Result<()> {
    let bad = |why: &str| {
        Err(Error::usage(format!("branch {b:?}: {why}"))
            .with_hint("use letters, digits and '-', '_', '.', '/' (e.g. feature/login)"))
    };
    if b.is_empty() {
        return bad("is empty");
    }
    if b.len() > 200 {
        return bad("is longer than 200 characters");
    }
    if b.contains("..") {
        return bad("must not contain \"..\"");
    }
    if b.chars().any(|c| c.is_whitespace() || c.is_control()) {
        return bad("must not contain spaces or control characters");
    }
    if let Some(c) = b.chars().find(|c| "~^:?*[\\@{}\"'`$|;&<>!#%".contains(*c)) {
        return bad(&format!("must not contain {c:?}"));
    }
    if b.starts_with(['-', '/', '.']) || b.ends_with(['/', '.']) || b.ends_with(".lock") {
        return bad("must not start with '-', '/' or '.', nor end with '/', '.' or \".lock\"");
    }
    if b.split('/')
        .any(|c| c.is_empty() || c.starts_with('.') || c.ends_with(".lock"))
    {
        return bad("has an empty component, or one starting with '.' or ending in \".lock\"");
    }
    if b == "HEAD" {
        return bad("HEAD is not a branch");
    }
    Ok(())
}

fn git(dir: &Path, args: &[&str]) -> Result<String> {
    let o = Command::new("git")
        .arg("-C")
        .arg(dir)
        .args(args)
        .stdin(Stdio::null())
        .output()
        .map_err(|e| {
            Error::io("running git", e).with_hint("worktree runs need git on the host's PATH")
        })?;
    if !o.status.success() {
        let err = String::from_utf8_lossy(&o.stderr);
        return Err(Error::unavailable(format!(
            "git {}: {}",
            args.join(" "),
            err.trim().lines().last().unwrap_or("failed")
        )));
    }
    Ok(String::from_utf8_lossy(&o.stdout).trim_end().to_string())
}

fn git_ok(dir: &Path, args: &[&str]) -> bool {
    Command::new("git")
        .arg("-C")
        .arg(dir)
        .args(args)
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .status()
        .is_ok_and(|s| s.success())
}

/// `git@github.com:o/r.git`, `https://github.com/o/r`, `ssh://git@h:22/o/r.git` → `h/o/r`;
/// every component kept to a safe alphabet so it is a plain relative path.
pub fn repo_id_from_url(url: &str) -> Option<String> {
    let u = url.trim();
    let rest = if let Some((_, r)) = u.split_once("://") {
        r.to_string()
    } else if let Some((host, path)) = u.split_once(':') {
        // scp-like: [user@]host:path
        if host.contains('/') {
            return None;
        }
        format!("{host}/{path}")
    } else {
        return None;
    };
    let rest = rest.rsplit_once('@').map(|(_, r)| r).unwrap_or(&rest);
    let mut parts: Vec<String> = vec![];
    for (i, p) in rest.split('/').enumerate() {
        let p = if i == 0 {
            p.split(':').next().unwrap_or(p)
        } else {
            p
        };
        let p = p.strip_suffix(".git").unwrap_or(p);
        let clean: String = p
            .chars()
            .map(|c| {
                if c.is_ascii_alphanumeric() || "-_.".contains(c) {
                    c
                } else {
                    '_'
                }
            })
            .collect();
        if clean.is_empty() || clean.chars().all(|c| c == '.') {
            continue;
        }
        parts.push(clean.to_ascii_lowercase());
    }
    if parts.len() < 2 {
        return None;
    }
    Some(parts.join("/"))
}

fn base_dir(home: &MoatHome) -> PathBuf {
    match std::env::var_os("MOAT_WORKTREE_BASE") {
        Some(b) if !b.is_empty() => PathBuf::from(b),
        _ => home.root().join("worktrees"),
    }
}

/// Find or make the worktree for `branch` of the repository holding `workspace`.
pub fn prepare(home: &MoatHome, workspace: &Path, branch: &str) -> Result<Worktree> {
    check_branch(branch)?;
    if !git_ok(workspace, &["rev-parse", "--is-inside-work-tree"]) {
        return Err(Error::usage(format!(
            "{} is not inside a git repository; a worktree run needs one",
            workspace.display()
        ))
        .with_hint("run `git init` there first, or drop --worktree"));
    }
    if !git_ok(
        workspace,
        &[
            "check-ref-format",
            "--branch",
            &format!("refs/heads/{branch}"),
        ],
    ) && !git_ok(workspace, &["check-ref-format", "--branch", branch])
    {
        return Err(Error::usage(format!(
            "branch {branch:?}: git does not accept it as a branch name"
        )));
    }
    let top = PathBuf::from(git(workspace, &["rev-parse", "--show-toplevel"])?);
    // The workspace must be the main checkout, not another worktree.
    let common = common_dir(&top)?;
    let main_top = common
        .parent()
        .map(Path::to_path_buf)
        .unwrap_or(top.clone());
    if !git_ok(&top, &["rev-parse", "--verify", "-q", "HEAD"]) {
        return Err(Error::usage(format!(
            "{} has no commit yet; a worktree branches from HEAD",
            top.display()
        ))
        .with_hint("make a first commit"));
    }
    let repo_id = match git(&main_top, &["remote", "get-url", "origin"])
        .ok()
        .and_then(|u| repo_id_from_url(&u))
    {
        Some(id) => id,
        None => {
            let dir = main_top
                .file_name()
                .map(|n| n.to_string_lossy().to_string())
                .unwrap_or_else(|| "repo".into());
            let dir: String = dir
                .chars()
                .map(|c| {
                    if c.is_ascii_alphanumeric() || "-_".contains(c) {
                        c
                    } else {
                        '_'
                    }
                })
                .collect();
            // Two local repositories with the same directory name stay apart.
            let h = moat_core::hex(&sha(main_top.as_os_str().as_encoded_bytes()));
            format!("_local/{dir}-{}", &h[..8])
        }
    };
    let path = base_dir(home).join(&repo_id).join(branch);
    if path.exists() {
        // Ours from an earlier run: it must be a worktree of this repository on this branch.
        let theirs = common_dir(&path).map_err(|_| {
            Error::usage(format!(
                "{} exists but is not a git worktree; move it away",
                path.display()
            ))
        })?;
        if theirs != common {
            return Err(Error::usage(format!(
                "{} is a worktree of another repository ({})",
                path.display(),
                theirs.display()
            )));
        }
        let on = git(&path, &["rev-parse", "--abbrev-ref", "HEAD"]).unwrap_or_default();
        if on != branch {
            return Err(Error::usage(format!(
                "the worktree {} has {on:?} checked out, not {branch:?}",
                path.display()
            ))
            .with_hint("check the branch out there again, or remove the worktree"));
        }
        return Ok(Worktree {
            branch: branch.into(),
            repo: main_top,
            repo_id,
            path,
            created: false,
            created_branch: false,
        });
    }
    let branch_exists = git_ok(
        &main_top,
        &[
            "show-ref",
            "--verify",
            "-q",
            &format!("refs/heads/{branch}"),
        ],
    );
    if let Some(parent) = path.parent() {
        std::fs::create_dir_all(parent)
            .map_err(|e| Error::io(format!("creating {}", parent.display()), e))?;
    }
    let p = path.to_string_lossy().to_string();
    let r = if branch_exists {
        git(&main_top, &["worktree", "add", "--quiet", &p, branch])
    } else {
        git(
            &main_top,
            &["worktree", "add", "--quiet", "-b", branch, &p, "HEAD"],
        )
    };
    r.map_err(|e| {
        let mut e = Error::unavailable(format!("creating the worktree for {branch:?}: {}", e.msg));
        if branch_exists {
            e = e.with_hint(format!(
                "is {branch:?} checked out elsewhere (`git worktree list`)?"
            ));
        }
        e
    })?;
    Ok(Worktree {
        branch: branch.into(),
        repo: main_top,
        repo_id,
        path,
        created: true,
        created_branch: !branch_exists,
    })
}

fn sha(b: &[u8]) -> Vec<u8> {
    use sha2::Digest;
    sha2::Sha256::digest(b).to_vec()
}

/// The repository's common `.git` directory, absolute and canonical.
fn common_dir(dir: &Path) -> Result<PathBuf> {
    let c = git(dir, &["rev-parse", "--git-common-dir"])?;
    let p = if Path::new(&c).is_absolute() {
        PathBuf::from(c)
    } else {
        dir.join(c)
    };
    std::fs::canonicalize(&p).map_err(|e| Error::io(format!("resolving {}", p.display()), e))
}

/// The mounts that make git work in the container: the main `.git` at its own path, with
/// config, hooks, HEAD and index read-only over it.
pub fn binds(wt: &Worktree) -> Result<Vec<Bind>> {
    let common = common_dir(&wt.path)?;
    // The worktree's .git file must point inside that directory (git wrote it so).
    let dotgit = std::fs::read_to_string(wt.path.join(".git"))
        .map_err(|e| Error::io(format!("reading {}/.git", wt.path.display()), e))?;
    let gitdir = dotgit
        .strip_prefix("gitdir:")
        .map(str::trim)
        .ok_or_else(|| Error::data(format!("{}/.git is not a gitdir file", wt.path.display())))?;
    let gitdir = if Path::new(gitdir).is_absolute() {
        PathBuf::from(gitdir)
    } else {
        wt.path.join(gitdir)
    };
    let gitdir = std::fs::canonicalize(&gitdir)
        .map_err(|e| Error::io(format!("resolving {}", gitdir.display()), e))?;
    if !gitdir.starts_with(&common) {
        return Err(Error::data(format!(
            "{}/.git points outside the repository's .git ({})",
            wt.path.display(),
            gitdir.display()
        )));
    }
    // Mounted at its own path: that path must fit Docker's SRC:DST syntax and must not land
    // on a path the container already uses.
    let c = common.to_string_lossy();
    if c.contains(':') || c.contains(',') {
        return Err(Error::usage(format!(
            "{c}: a repository whose path holds ':' or ',' cannot be mounted for a worktree run"
        )));
    }
    for taken in [
        "/workspace",
        "/run/moat",
        "/home/moatuser",
        "/proc",
        "/sys",
        "/dev",
        "/etc",
        "/usr",
    ] {
        if common.starts_with(taken) {
            return Err(Error::usage(format!(
                "{c}: the repository's .git would be mounted over {taken} in the container; move the repository"
            )));
        }
    }
    let hooks = common.join("hooks");
    if !hooks.exists() {
        std::fs::create_dir_all(&hooks)
            .map_err(|e| Error::io(format!("creating {}", hooks.display()), e))?;
    }
    let target = |p: &Path| p.to_string_lossy().to_string();
    let mut out = vec![Bind {
        source: common.clone(),
        target: target(&common),
        readonly: false,
    }];
    for name in ["config", "hooks", "HEAD", "index"] {
        let p = common.join(name);
        if p.exists() {
            out.push(Bind {
                source: p.clone(),
                target: target(&p),
                readonly: true,
            });
        }
    }
    Ok(out)
}

/// `{name}-{branch}` (or the branch), made a valid run name.
pub fn run_name(config_name: Option<&str>, branch: &str) -> String {
    let b: String = branch
        .chars()
        .map(|c| {
            if c.is_ascii_alphanumeric() || "-_.".contains(c) {
                c
            } else {
                '-'
            }
        })
        .collect();
    let n = match config_name {
        Some(n) => format!("{n}-{b}"),
        None => b,
    };
    let n: String = n.chars().take(63).collect();
    n.trim_end_matches(['-', '.']).to_string()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn branch_names() {
        for ok in ["main", "feature/login", "fix-1.2", "a_b"] {
            check_branch(ok).unwrap();
        }
        for bad in [
            "", "a..b", "../x", "a b", "-x", "/x", "x/", "x.lock", "a//b", "a/.b", "HEAD", "a~1",
            "a:b", "a\tb", "$(x)",
        ] {
            let e = check_branch(bad).unwrap_err();
            assert_eq!(e.code, moat_core::exit::USAGE, "{bad:?}");
        }
    }

    #[test]
    fn repo_ids() {
        assert_eq!(
            repo_id_from_url("git@github.com:Owner/Repo.git").as_deref(),
            Some("github.com/owner/repo")
        );
        assert_eq!(
            repo_id_from_url("https://github.com/o/r").as_deref(),
            Some("github.com/o/r")
        );
        assert_eq!(
            repo_id_from_url("ssh://git@h.example:2222/o/r.git").as_deref(),
            Some("h.example/o/r")
        );
        assert_eq!(
            repo_id_from_url("https://h/../../etc/x").as_deref(),
            Some("h/etc/x")
        );
        assert_eq!(repo_id_from_url("/local/path"), None);
    }

    #[test]
    fn names() {
        assert_eq!(run_name(Some("agent"), "feature/x"), "agent-feature-x");
        assert_eq!(run_name(None, "main"), "main");
        assert!(run_name(Some(&"a".repeat(60)), "branch").len() <= 63);
    }
}
