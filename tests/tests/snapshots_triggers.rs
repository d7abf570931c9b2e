//! Automatic snapshots with a real Docker engine: a commit in the workspace while the run
//! lives is snapshotted under its commit id, an idle spell gets one snapshot, a commit loop
//! is rate-limited and retention holds, and the switches turn the triggers off.
//!
//! The commits are made from the host side while the run sleeps (the base image has no
//! git); the trigger watches the workspace's `.git` either way. A build is seen in the
//! run's real exec trace.

use moat_e2e::{Moat, docker_ready};
use serde_json::Value;
use std::path::Path;
use std::process::Command;
use std::time::{Duration, Instant};

fn git(dir: &Path, args: &[&str]) -> String {
    let o = Command::new("git")
        .arg("-C")
        .arg(dir)
        .args([
            "-c",
            "user.name=t",
            "-c",
            "user.email=t@e",
            "-c",
            "init.defaultBranch=main",
            "-c",
            "commit.gpgsign=false",
        ])
        .args(args)
        .output()
        .expect("git");
    assert!(
        o.status.success(),
        "git {args:?}: {}",
        String::from_utf8_lossy(&o.stderr)
    );
    String::from_utf8_lossy(&o.stdout).trim().to_string()
}

/// Commit a new file; the commit's id.
fn commit(ws: &Path, name: &str) -> String {
    std::fs::write(ws.join(name), format!("{name}\n")).unwrap();
    git(ws, &["add", name]);
    git(ws, &["commit", "-q", "-m", name]);
    git(ws, &["rev-parse", "HEAD"])
}

fn snapshots(m: &Moat, id: &str) -> Vec<Value> {
    let l = m.launch(&["snapshot", "list", id, "--json"]);
    assert_eq!(l.code(), 0, "{}", l.stderr());
    l.stdout()
        .lines()
        .filter(|l| !l.trim().is_empty())
        .map(|l| serde_json::from_str(l).unwrap())
        .collect()
}

fn kinds(s: &[Value]) -> Vec<String> {
    s.iter()
        .map(|v| v["kind"].as_str().unwrap().to_string())
        .collect()
}

fn audit_snapshots(m: &Moat, id: &str) -> Vec<Value> {
    std::fs::read_to_string(m.run_dir(id).join("audit").join("log.jsonl"))
        .unwrap_or_default()
        .lines()
        .filter_map(|l| serde_json::from_str::<Value>(l).ok())
        .map(|v| v["event"].clone())
        .filter(|e| e["type"] == "snapshot_created")
        .collect()
}

/// Wait (bounded) until the run has a snapshot of `kind`.
fn wait_kind(m: &Moat, id: &str, kind: &str, secs: u64) {
    let deadline = Instant::now() + Duration::from_secs(secs);
    while !kinds(&snapshots(m, id)).iter().any(|k| k == kind) {
        assert!(
            Instant::now() < deadline,
            "no {kind} snapshot within {secs}s: {:?}",
            snapshots(m, id)
        );
        std::thread::sleep(Duration::from_millis(300));
    }
}

fn stop(m: &Moat, id: &str) {
    let r = m.launch(&["stop", id]);
    assert_eq!(r.code(), 0, "{}", r.stderr());
    m.wait_state(id, &["stopped", "failed"], 120);
}

/// Two commits while the run sleeps: two `git` snapshots labelled with the commit ids; the
/// second, made inside the rate limit's window, is snapshotted when the run ends. The
/// commit the run started from is in the pre-run snapshot, not a git one.
#[test]
fn each_new_commit_is_snapshotted_under_its_id() {
    if !docker_ready() {
        return;
    }
    let m = Moat::new();
    git(&m.ws, &["init", "-q"]);
    m.write_config("name: committer\nsnapshots:\n  triggers:\n    disable_idle: true\n");
    commit(&m.ws, "base.txt");
    let id = m.detached(&["--", "sleep", "120"]);
    let c1 = commit(&m.ws, "one.txt");
    wait_kind(&m, &id, "git", 20);
    let c2 = commit(&m.ws, "two.txt");
    std::thread::sleep(Duration::from_millis(1500));
    stop(&m, &id);

    let s = snapshots(&m, &id);
    assert_eq!(kinds(&s), ["pre-run", "git", "git"], "{s:?}");
    assert_eq!(s[1]["label"], format!("commit {}", &c1[..12]), "{s:?}");
    assert_eq!(s[2]["label"], format!("commit {}", &c2[..12]), "{s:?}");
    // Each holds the workspace as it was at its commit.
    let files = |v: &Value| v["files"].as_u64().unwrap();
    assert_eq!(files(&s[1]) + 1, files(&s[2]), "{s:?}");
    // The audit log records both, with kind and label.
    let ev = audit_snapshots(&m, &id);
    let labels: Vec<&str> = ev
        .iter()
        .filter(|e| e["kind"] == "git")
        .map(|e| e["label"].as_str().unwrap())
        .collect();
    assert_eq!(
        labels,
        [
            format!("commit {}", &c1[..12]),
            format!("commit {}", &c2[..12])
        ],
        "{ev:?}"
    );
    let a = m.run_timeout("moat", &["audit", &id], None, 60);
    assert_eq!(a.code(), 0, "{}{}", a.stdout(), a.stderr());
    // The plain list shows the type and the label.
    let l = m.launch(&["snapshot", "list", &id]);
    assert!(
        l.stdout().contains("  git  ") && l.stdout().contains(&format!("commit {}", &c2[..12])),
        "{}",
        l.stdout()
    );
}

/// A run that commits in a loop (50 commits) gets at most one git snapshot per 10 seconds
/// plus the last one at its end, and retention keeps max_count (the pre-run one stays).
#[test]
fn a_commit_loop_is_rate_limited_and_retention_holds() {
    if !docker_ready() {
        return;
    }
    let m = Moat::new();
    git(&m.ws, &["init", "-q"]);
    m.write_config(
        "name: looper\nsnapshots:\n  triggers:\n    disable_idle: true\n  retention:\n    max_count: 2\n",
    );
    commit(&m.ws, "base.txt");
    let id = m.detached(&["--", "sleep", "120"]);
    let t0 = Instant::now();
    let mut last = String::new();
    for i in 0..50 {
        last = commit(&m.ws, &format!("f{i}.txt"));
        if i == 24 {
            std::thread::sleep(Duration::from_secs(2));
        }
    }
    std::thread::sleep(Duration::from_secs(2));
    stop(&m, &id);
    let elapsed = t0.elapsed().as_secs();

    let made = audit_snapshots(&m, &id)
        .into_iter()
        .filter(|e| e["kind"] == "git")
        .count() as u64;
    assert!(made >= 2, "the loop's first and last commits: {made}");
    assert!(
        made <= 2 + elapsed / 10,
        "{made} git snapshots in {elapsed}s: not rate-limited"
    );
    let s = snapshots(&m, &id);
    assert_eq!(kinds(&s), ["pre-run", "git"], "max_count 2: {s:?}");
    assert_eq!(s[1]["label"], format!("commit {}", &last[..12]), "{s:?}");
    let on_disk = std::fs::read_dir(m.run_dir(&id).join("snapshots"))
        .unwrap()
        .count();
    assert_eq!(
        on_disk, 2,
        "snapshots removed by retention are gone from disk"
    );
}

/// idle_threshold_seconds: 2: output, then a quiet spell of several thresholds gives one
/// idle snapshot; new output and another spell give the next.
#[test]
fn an_idle_spell_gets_one_snapshot() {
    if !docker_ready() {
        return;
    }
    let m = Moat::new();
    m.write_config(
        "name: idler\nsnapshots:\n  triggers:\n    disable_git_commits: true\n    idle_threshold_seconds: 2\n",
    );
    let r = m.launch_sh(
        &[],
        "echo working; echo one > one.txt; sleep 9; echo again; echo two > two.txt; sleep 9",
    );
    assert_eq!(r.code(), 0, "{}", r.stderr());
    let id = m.newest_run();
    let s = snapshots(&m, &id);
    assert_eq!(kinds(&s), ["pre-run", "idle", "idle"], "{s:?}");
    assert_eq!(s[1]["label"], "idle 2s");
    let files = |v: &Value| v["files"].as_u64().unwrap();
    assert_eq!(files(&s[1]) + 1, files(&s[2]), "{s:?}");
    let ev = audit_snapshots(&m, &id);
    assert_eq!(
        ev.iter().filter(|e| e["kind"] == "idle").count(),
        2,
        "{ev:?}"
    );
}

/// The switches: `disable_git_commits: true` takes no git snapshot, `--no-snapshots` takes
/// none at all, and asking for build snapshots (which need exec tracing) is refused.
#[test]
fn switched_off_triggers_take_nothing() {
    if !docker_ready() {
        return;
    }
    let m = Moat::new();
    git(&m.ws, &["init", "-q"]);
    m.write_config(
        "name: quiet\nsnapshots:\n  triggers:\n    disable_git_commits: true\n    disable_idle: true\n",
    );
    let id = m.detached(&["--", "sh", "-c", "echo hi; sleep 120"]);
    commit(&m.ws, "one.txt");
    std::thread::sleep(Duration::from_secs(3));
    stop(&m, &id);
    assert_eq!(kinds(&snapshots(&m, &id)), ["pre-run"]);

    m.write_config("name: quiet\nsnapshots:\n  triggers:\n    idle_threshold_seconds: 1\n");
    let id = m.detached(&["--no-snapshots", "--", "sh", "-c", "echo hi; sleep 120"]);
    commit(&m.ws, "two.txt");
    std::thread::sleep(Duration::from_secs(4));
    stop(&m, &id);
    assert!(snapshots(&m, &id).is_empty(), "--no-snapshots took one");
    assert!(audit_snapshots(&m, &id).is_empty());

    // Build snapshots with the exec trace switched off could never see a build.
    m.write_config(
        "name: quiet\ntracing:\n  disable_exec: true\nsnapshots:\n  triggers:\n    disable_builds: false\n",
    );
    let r = m.launch_sh(&[], "true");
    assert_eq!(r.code(), 78, "{}", r.stderr());
    assert!(
        r.stderr().contains("snapshots.triggers.disable_builds")
            && r.stderr().contains("disable_exec: true switches off"),
        "{}",
        r.stderr()
    );
}

/// A `moat wt` run commits twice with git inside the container: the worktree's HEAD is
/// followed into the repository's `.git/worktrees/` entry, and each commit gets a `git`
/// snapshot under its id (the second, inside the rate limit's window, as the run ends).
#[test]
fn commits_inside_a_worktree_run_are_snapshotted() {
    if !docker_ready() {
        return;
    }
    let m = Moat::new();
    m.write_config("name: wtsnap\nsnapshots:\n  triggers:\n    disable_idle: true\n");
    git(&m.ws, &["init", "-q"]);
    git(&m.ws, &["add", "."]);
    git(&m.ws, &["commit", "-q", "-m", "first"]);
    let r = m.launch(&[
        "wt",
        "snap",
        "--no-sandbox",
        "--",
        "sh",
        "-c",
        "set -e; g='git -c user.name=a -c user.email=a@b'; \
         echo 1 > one && git add one && $g commit -q -m one && sleep 3 && \
         echo 2 > two && git add two && $g commit -q -m two",
    ]);
    assert_eq!(r.code(), 0, "{}{}", r.stdout(), r.stderr());
    let id = m.run_ids().pop().unwrap();
    let one = git(&m.ws, &["rev-parse", "snap~1"]);
    let two = git(&m.ws, &["rev-parse", "snap"]);
    let s = snapshots(&m, &id);
    assert_eq!(kinds(&s), ["pre-run", "git", "git"], "{s:?}");
    assert_eq!(s[1]["label"], format!("commit {}", &one[..12]), "{s:?}");
    assert_eq!(s[2]["label"], format!("commit {}", &two[..12]), "{s:?}");
}

/// A finished build seen in the run's real exec trace (the tracer in the container, not a
/// written exec.jsonl): a `make` that exits 0 gives one `build` snapshot labelled `make`; a
/// failed `gmake` gives none.
#[test]
fn a_finished_build_in_the_exec_trace_is_snapshotted() {
    if !docker_ready() {
        return;
    }
    let m = Moat::new();
    m.write_config(
        "name: builder\nsnapshots:\n  triggers:\n    disable_git_commits: true\n    disable_idle: true\n",
    );
    let id = m.detached(&[
        "--",
        "sh",
        "-c",
        "ln -s /bin/false /tmp/gmake; /tmp/gmake; ln -s /bin/true /tmp/make; /tmp/make -j2 all; sleep 120",
    ]);
    wait_kind(&m, &id, "build", 30);
    stop(&m, &id);
    let s = snapshots(&m, &id);
    assert_eq!(kinds(&s), ["pre-run", "build"], "{s:?}");
    assert_eq!(s[1]["label"], "make", "{s:?}");
    // The trace the trigger followed holds both, with their exit codes.
    let t = m.launch(&["trace", "--exec", &id, "--json"]);
    assert_eq!(t.code(), 0, "{}", t.stderr());
    assert!(
        t.stdout().contains("/tmp/gmake") && t.stdout().contains("/tmp/make"),
        "{}",
        t.stdout()
    );
    let ev = audit_snapshots(&m, &id);
    assert!(
        ev.iter()
            .any(|e| e["kind"] == "build" && e["label"] == "make"),
        "{ev:?}"
    );
}
