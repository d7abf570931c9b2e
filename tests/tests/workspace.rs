//! Workspaces and run artifacts with a real Docker engine: worktree runs, snapshots, volumes,
//! promote, and `system images|containers`; plus the errors for bad input.

use moat_e2e::{Moat, docker_out, docker_ready};
use std::path::Path;
use std::process::Command;

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

fn jsonl(s: &str) -> Vec<serde_json::Value> {
    s.lines()
        .filter(|l| !l.trim().is_empty())
        .map(|l| serde_json::from_str(l).unwrap_or_else(|e| panic!("{e}: {l}")))
        .collect()
}

/// Removes the test's Docker volumes however the test ends.
struct VolumeGuard(Vec<String>);

impl Drop for VolumeGuard {
    fn drop(&mut self) {
        for v in &self.0 {
            let _ = Command::new("docker")
                .args(["volume", "rm", "-f", v])
                .output();
        }
    }
}

fn unique(prefix: &str) -> String {
    let n = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap()
        .as_nanos();
    format!("{prefix}{}{:x}", std::process::id(), n & 0xffffff)
}

#[test]
fn a_worktree_run_commits_on_its_branch_and_leaves_the_main_checkout_alone() {
    if !docker_ready() {
        return;
    }
    let m = Moat::new();
    std::fs::write(m.ws.join("moat.yaml"), "name: wtagent\n").unwrap();
    std::fs::write(m.ws.join("README"), "main\n").unwrap();
    git(&m.ws, &["init", "-q"]);
    git(&m.ws, &["add", "."]);
    git(&m.ws, &["commit", "-q", "-m", "first"]);
    let head = git(&m.ws, &["rev-parse", "HEAD"]);
    let config_before = std::fs::read(m.ws.join(".git/config")).unwrap();

    let r = m.launch(&[
        "wt",
        "feature/x",
        "--no-sandbox",
        "--",
        "sh",
        "-c",
        "echo x > f && git add f && git -c user.name=a -c user.email=a@b commit -q -m m && \
         git rev-parse --abbrev-ref HEAD && \
         (git config --local moat.evil 1 2>/dev/null && echo CONFIG-WRITABLE || echo CONFIG-READONLY) && \
         (test -f /workspace/README && echo HAS-README) && \
         c=$(git rev-parse --git-common-dir) && \
         ((echo 'touch /tmp/pwned' > $c/hooks/post-checkout) 2>/dev/null && echo HOOK-WRITTEN || echo HOOK-REFUSED) && \
         ((echo feature/x > $c/HEAD) 2>/dev/null && echo HEAD-WRITTEN || echo HEAD-REFUSED)",
    ]);
    let out = r.stdout();
    assert_eq!(r.code(), 0, "{out}\n{}", r.stderr());
    assert!(out.contains("feature/x"), "{out}");
    assert!(out.contains("CONFIG-READONLY"), "{out}");
    assert!(out.contains("HAS-README"), "{out}");
    // The main repository's hooks and HEAD are out of the run's reach.
    assert!(out.contains("HOOK-REFUSED"), "{out}");
    assert!(out.contains("HEAD-REFUSED"), "{out}");
    assert!(!m.ws.join(".git/hooks/post-checkout").exists());

    // The commit is on the branch...
    assert_eq!(git(&m.ws, &["log", "-1", "--format=%s", "feature/x"]), "m");
    assert_eq!(git(&m.ws, &["show", "feature/x:f"]), "x");
    assert_eq!(git(&m.ws, &["rev-parse", "feature/x~1"]), head);
    // ...and the main checkout is as it was: branch, HEAD, files, index, config.
    assert_eq!(git(&m.ws, &["rev-parse", "--abbrev-ref", "HEAD"]), "main");
    assert_eq!(git(&m.ws, &["rev-parse", "HEAD"]), head);
    assert_eq!(git(&m.ws, &["status", "--porcelain"]), "");
    assert!(!m.ws.join("f").exists());
    assert_eq!(
        std::fs::read(m.ws.join(".git/config")).unwrap(),
        config_before
    );

    let id = m.run_ids().pop().unwrap();
    let meta = m.metadata(&id);
    assert_eq!(meta["name"], "wtagent-feature-x");
    assert_eq!(meta["worktree_branch"], "feature/x");
    let wt = Path::new(meta["workspace"].as_str().unwrap());
    assert!(wt.starts_with(m.moat_home().join("worktrees")), "{wt:?}");
    assert!(wt.ends_with("feature/x"), "{wt:?}");
    assert_eq!(std::fs::read_to_string(wt.join("f")).unwrap(), "x\n");

    // A second run reuses the worktree and sees the first one's commit.
    let r = m.launch(&[
        "run",
        "--worktree",
        "feature/x",
        "--no-sandbox",
        "--",
        "git",
        "log",
        "--format=%s",
    ]);
    assert_eq!(r.code(), 0, "{}", r.stderr());
    assert_eq!(r.stdout().lines().collect::<Vec<_>>(), ["m", "first"]);
}

#[test]
fn worktree_errors_are_clear() {
    if !docker_ready() {
        return;
    }
    let m = Moat::new();
    for bad in ["a..b", "has space", "-x", "x.lock"] {
        let r = m.launch(&["wt", bad, "--no-sandbox", "--", "true"]);
        assert_eq!(r.code(), 64, "{bad}: {}", r.stderr());
        assert!(r.stderr().contains("branch"), "{bad}: {}", r.stderr());
    }
    // Not a repository.
    let r = m.launch(&["wt", "feature", "--no-sandbox", "--", "true"]);
    assert_eq!(r.code(), 64, "{}", r.stderr());
    assert!(
        r.stderr().contains("not inside a git repository"),
        "{}",
        r.stderr()
    );
    let r = m.launch(&["wt"]);
    assert_eq!(r.code(), 64, "{}", r.stderr());
    assert!(m.run_ids().is_empty(), "a refused run left a run behind");
}

#[test]
fn a_snapshot_restores_what_the_run_deleted() {
    if !docker_ready() {
        return;
    }
    let m = Moat::new();
    std::fs::create_dir_all(m.ws.join("sub")).unwrap();
    std::fs::write(m.ws.join("sub/data.txt"), "precious\n").unwrap();
    std::fs::write(m.ws.join("keep.txt"), "original\n").unwrap();
    std::fs::write(m.ws.join("debug.log"), "log\n").unwrap();
    std::fs::write(
        m.ws.join("moat.yaml"),
        "name: snapper\nsnapshots:\n  exclude:\n    additional: [\"*.log\"]\n",
    )
    .unwrap();
    let r = m.launch_sh(
        &[],
        "rm sub/data.txt debug.log && echo new > added.txt && echo changed > keep.txt",
    );
    assert_eq!(r.code(), 0, "{}", r.stderr());
    assert!(!m.ws.join("sub/data.txt").exists());
    let id = m.run_ids().pop().unwrap();

    let l = m.launch(&["snapshot", "list", &id, "--json"]);
    assert_eq!(l.code(), 0, "{}", l.stderr());
    let snaps = jsonl(&l.stdout());
    assert_eq!(snaps.len(), 1, "{}", l.stdout());
    assert_eq!(snaps[0]["kind"], "pre-run");
    let snap = snaps[0]["id"].as_str().unwrap().to_string();

    let r = m.launch(&["snapshot", "restore", &id, &snap]);
    assert_eq!(r.code(), 0, "{}", r.stderr());
    let out = r.stdout();
    assert!(out.contains("created   sub/data.txt"), "{out}");
    assert!(out.contains("restored  keep.txt"), "{out}");
    assert!(out.contains("removed   added.txt"), "{out}");
    assert!(
        !out.contains("debug.log"),
        "an excluded file was touched: {out}"
    );
    assert_eq!(
        std::fs::read_to_string(m.ws.join("sub/data.txt")).unwrap(),
        "precious\n"
    );
    assert_eq!(
        std::fs::read_to_string(m.ws.join("keep.txt")).unwrap(),
        "original\n"
    );
    assert!(!m.ws.join("added.txt").exists());
    assert!(!m.ws.join("debug.log").exists(), "excluded: not restored");

    // A manual snapshot; the safety snapshot of the restore is listed too.
    let s = m.launch(&["snapshot", &id, "--label", "by hand"]);
    assert_eq!(s.code(), 0, "{}", s.stderr());
    let kinds: Vec<String> = jsonl(&m.launch(&["snapshot", "list", &id, "--json"]).stdout())
        .iter()
        .map(|v| v["kind"].as_str().unwrap().to_string())
        .collect();
    assert_eq!(kinds, ["pre-run", "safety", "manual"]);

    // Bad input.
    let r = m.launch(&["snapshot", "restore", &id, "snap_000000000000"]);
    assert_eq!(r.code(), 66, "{}", r.stderr());
    assert!(r.stderr().contains("no snapshot"), "{}", r.stderr());
    let r = m.launch(&["snapshot", "restore", &id, "../../etc"]);
    assert_eq!(r.code(), 64, "{}", r.stderr());
    let r = m.launch(&["snapshot", "list", "no-such-run"]);
    assert_eq!(r.code(), 66, "{}", r.stderr());
    let r = m.launch(&["snapshot", "restore", &id]);
    assert_eq!(r.code(), 64, "{}", r.stderr());

    // A running run's workspace is not restored under it without --force.
    let live = m.detached(&["--no-snapshots", "--", "sleep", "60"]);
    let s = m.launch(&["snapshot", &live]);
    assert_eq!(s.code(), 0, "{}", s.stderr());
    let sid = s.stdout().trim().to_string();
    let r = m.launch(&["snapshot", "restore", &live, &sid]);
    assert_eq!(r.code(), 75, "{}", r.stderr());
    assert!(r.stderr().contains("moat stop"), "{}", r.stderr());
    // The ended run's snapshot too: the workspace is the same.
    let r = m.launch(&["snapshot", "restore", &id, &snap]);
    assert_eq!(r.code(), 75, "{}", r.stderr());
    assert!(r.stderr().contains(&live), "{}", r.stderr());
    assert_eq!(m.launch(&["stop", &live]).code(), 0);
    let r = m.launch(&["snapshot", "restore", &id, &snap]);
    assert_eq!(r.code(), 0, "{}", r.stderr());
}

#[test]
fn volumes_persist_across_runs_and_rm_removes_them() {
    if !docker_ready() {
        return;
    }
    let agent = unique("vol");
    let _guard = VolumeGuard(vec![format!("moat_{agent}_state")]);
    let m = Moat::new();
    std::fs::write(
        m.ws.join("moat.yaml"),
        format!(
            "name: {agent}\nvolumes:\n  - name: state\n    target: /home/moatuser/.state\n    type: volume\n  - name: files\n    target: /srv/files\ncommand: [\"sh\", \"-c\", \"cat /home/moatuser/.state/n /srv/files/n 2>/dev/null; echo run >> /home/moatuser/.state/n; echo file >> /srv/files/n\"]\n"
        ),
    )
    .unwrap();
    m.trust(None);
    let r = m.launch(&["run", "--no-sandbox"]);
    assert_eq!(r.code(), 0, "{}", r.stderr());
    assert_eq!(r.stdout().trim(), "");
    let r = m.launch(&["run", "--no-sandbox"]);
    assert_eq!(r.code(), 0, "{}", r.stderr());
    assert_eq!(r.stdout().lines().collect::<Vec<_>>(), ["run", "file"]);

    let dv = format!("moat_{agent}_state");
    let labels = Command::new("docker")
        .args(["volume", "inspect", "--format", "{{json .Labels}}", &dv])
        .output()
        .unwrap();
    assert!(labels.status.success());
    let labels: serde_json::Value = serde_json::from_slice(&labels.stdout).unwrap();
    assert_eq!(labels["moat.volume"], "1");
    assert_eq!(labels["moat.agent"], agent.as_str());
    assert_eq!(labels["moat.home"], m.moat_home().to_str().unwrap());

    let ls = m.launch(&["volumes", "ls", "--json"]);
    assert_eq!(ls.code(), 0, "{}", ls.stderr());
    let mut got: Vec<(String, String, String)> = jsonl(&ls.stdout())
        .iter()
        .map(|v| {
            assert_eq!(v["runs"], 2, "{v}");
            (
                v["agent"].as_str().unwrap().into(),
                v["volume"].as_str().unwrap().into(),
                v["kind"].as_str().unwrap().into(),
            )
        })
        .collect();
    got.sort();
    assert_eq!(
        got,
        [
            (agent.clone(), "files".into(), "bind".into()),
            (agent.clone(), "state".into(), "volume".into())
        ]
    );

    // prune asks nobody without a terminal; and volumes of recorded runs are not pruned.
    let r = m.launch(&["volumes", "prune"]);
    assert_eq!(r.code(), 0, "{}", r.stderr());
    assert!(r.stderr().contains("nothing to prune"), "{}", r.stderr());
    let r = m.launch(&["volumes", "prune", "--all"]);
    assert_eq!(r.code(), 64, "{}", r.stderr());
    assert!(r.stderr().contains("--force"), "{}", r.stderr());

    let r = m.launch(&["volumes", "rm", &format!("{agent}/nope")]);
    assert_eq!(r.code(), 66, "{}", r.stderr());
    let r = m.launch(&["volumes", "rm", &agent]);
    assert_eq!(r.code(), 0, "{}", r.stderr());
    let gone = Command::new("docker")
        .args(["volume", "inspect", &dv])
        .output()
        .unwrap();
    assert!(!gone.status.success(), "the Docker volume is still there");
    assert!(!m.moat_home().join("volumes").join(&agent).exists());
    assert!(jsonl(&m.launch(&["volumes", "ls", "--json"]).stdout()).is_empty());
}

#[test]
fn promote_survives_clean_and_the_audit_log_verifies_from_the_copy() {
    if !docker_ready() {
        return;
    }
    let m = Moat::new();
    let r = m.launch(&["run", "--no-sandbox", "--", "echo", "promoted-output"]);
    assert_eq!(r.code(), 0, "{}", r.stderr());
    let id = m.run_ids().pop().unwrap();

    // Bad input first.
    let r = m.launch(&["promote", "run_ffffffffffff"]);
    assert_eq!(r.code(), 66, "{}", r.stderr());
    let inside = m.moat_home().join("runs").join("keep");
    let r = m.launch(&["promote", &id, "--to", inside.to_str().unwrap()]);
    assert_eq!(r.code(), 64, "{}", r.stderr());
    assert!(r.stderr().contains("moat clean"), "{}", r.stderr());
    let r = m.launch(&["promote"]);
    assert_eq!(r.code(), 64, "{}", r.stderr());

    let r = m.launch(&["promote", &id]);
    assert_eq!(r.code(), 0, "{}", r.stderr());
    let dir = m.moat_home().join("promoted").join(&id);
    assert_eq!(r.stdout().trim(), dir.to_str().unwrap());
    // Twice needs --force.
    assert_eq!(m.launch(&["promote", &id]).code(), 73);
    assert_eq!(m.launch(&["promote", &id, "--force"]).code(), 0);
    // --force replaces a promoted copy, never a directory of the user's.
    let mine = m.env.path().join("mine");
    std::fs::create_dir_all(&mine).unwrap();
    std::fs::write(mine.join("thesis.tex"), "years of work").unwrap();
    let r = m.launch(&["promote", &id, "--to", mine.to_str().unwrap(), "--force"]);
    assert_eq!(r.code(), 73, "{}", r.stderr());
    assert!(r.stderr().contains("not a promoted run"), "{}", r.stderr());
    assert_eq!(
        std::fs::read_to_string(mine.join("thesis.tex")).unwrap(),
        "years of work"
    );
    let elsewhere = m.env.path().join("kept");
    let r = m.launch(&["promote", &id, "--to", elsewhere.to_str().unwrap()]);
    assert_eq!(r.code(), 0, "{}", r.stderr());

    let c = m.launch(&["clean", "--force"]);
    assert_eq!(c.code(), 0, "{}", c.stderr());
    assert!(!m.moat_home().join("runs").join(&id).exists());

    for f in [
        "metadata.json",
        "spec.json",
        "Dockerfile",
        "logs.jsonl",
        "audit/log.jsonl",
        "audit/checkpoints",
        "bundle.json",
        "signing.pub",
        "promoted.json",
    ] {
        assert!(dir.join(f).is_file(), "{f} was not promoted");
    }
    assert!(!dir.join("proxy.token").exists());
    assert!(
        std::fs::read_to_string(dir.join("logs.jsonl"))
            .unwrap()
            .contains("promoted-output")
    );
    let v = m.run_timeout("moat-audit", &["verify", dir.to_str().unwrap()], None, 60);
    assert_eq!(v.code(), 0, "{}\n{}", v.stdout(), v.stderr());
    let v = m.run_timeout(
        "moat-audit",
        &["verify-bundle", dir.join("bundle.json").to_str().unwrap()],
        None,
        60,
    );
    assert_eq!(v.code(), 0, "{}\n{}", v.stdout(), v.stderr());

    let l = m.launch(&["list", "--promoted", "--json"]);
    assert_eq!(l.code(), 0, "{}", l.stderr());
    let rows = jsonl(&l.stdout());
    assert_eq!(rows.len(), 2, "{}", l.stdout());
    assert!(
        rows.iter()
            .all(|r| r["id"] == id.as_str() && r["audit_verified"] == true)
    );

    // The verification reads the promoted copy: a change there is caught.
    let log = dir.join("audit/log.jsonl");
    let text = std::fs::read_to_string(&log).unwrap();
    std::fs::write(&log, text.replacen("\"run\"", "\"rum\"", 1)).unwrap();
    let v = m.run_timeout("moat-audit", &["verify", dir.to_str().unwrap()], None, 60);
    assert_eq!(v.code(), 1, "{}\n{}", v.stdout(), v.stderr());
}

#[test]
fn system_lists_exactly_the_images_and_containers_of_this_home() {
    if !docker_ready() {
        return;
    }
    let m = Moat::new();
    let id = m.detached(&["--no-snapshots", "--", "sleep", "60"]);
    let meta = m.metadata(&id);

    let c = m.launch(&["system", "containers", "--json"]);
    assert_eq!(c.code(), 0, "{}", c.stderr());
    let rows = jsonl(&c.stdout());
    // The run's container and the guard whose network namespace it joins (its own, or a
    // spare guard made before the run and claimed by it).
    assert_eq!(rows.len(), 2, "{}", c.stdout());
    let joined = docker_out(&[
        "inspect",
        "--format",
        "{{.HostConfig.NetworkMode}}",
        &format!("moat-{id}"),
    ]);
    let guard = joined
        .trim()
        .strip_prefix("container:")
        .unwrap()
        .to_string();
    let mut ids: Vec<&str> = rows.iter().map(|r| r["id"].as_str().unwrap()).collect();
    ids.sort();
    let run_c = docker_out(&["inspect", "--format", "{{.Id}}", &format!("moat-{id}")]);
    let mut want = vec![run_c.trim(), guard.as_str()];
    want.sort();
    assert_eq!(ids, want, "{}", c.stdout());
    for r in &rows {
        assert_eq!(r["run"], id.as_str());
        assert_eq!(r["state"], "running");
        assert_eq!(r["home"], m.moat_home().to_str().unwrap());
    }

    let i = m.launch(&["system", "images", "--json"]);
    assert_eq!(i.code(), 0, "{}", i.stderr());
    let rows = jsonl(&i.stdout());
    assert_eq!(rows.len(), 1, "{}", i.stdout());
    assert!(
        rows[0]["tags"]
            .as_array()
            .unwrap()
            .iter()
            .any(|t| *t == meta["image"]),
        "{}",
        i.stdout()
    );
    assert_eq!(rows[0]["runs"], serde_json::json!([id]));
    assert!(rows[0]["bytes"].as_u64().unwrap() > 0);

    let s = m.launch(&["status"]);
    assert!(
        s.stdout()
            .contains("Containers: 2 moat container(s), 2 running"),
        "{}",
        s.stdout()
    );
    let t = m.launch(&["system", "containers"]);
    assert!(t.stdout().contains(&id), "{}", t.stdout());

    assert_eq!(m.launch(&["stop", &id]).code(), 0);
    let c = m.launch(&["system", "containers", "--json"]);
    assert!(jsonl(&c.stdout()).is_empty(), "{}", c.stdout());
    let r = m.launch(&["system", "volumes"]);
    assert_eq!(r.code(), 64, "{}", r.stderr());
}

/// A read-only workspace (`workspace: ro`, `--read-only-workspace`) and `SRC:DST:ro` in
/// `mounts:`: the run reads them, its writes fail with EROFS, and the host files keep their
/// bytes (no marker the run tried to write reaches the host). The pre-run snapshot still
/// works, since it only reads. THREATS L1: with `workspace: ro` the run cannot rewrite the
/// moat.yaml the next run reads.
#[test]
fn a_read_only_workspace_and_ro_mounts_refuse_writes() {
    if !docker_ready() {
        return;
    }
    let m = Moat::new();
    let marker = unique("ro-marker-");
    std::fs::write(m.ws.join("data.txt"), "host bytes\n").unwrap();
    std::fs::create_dir_all(m.ws.join("extra")).unwrap();
    std::fs::write(m.ws.join("extra/e.txt"), "extra bytes\n").unwrap();
    let yaml = "name: roagent\nworkspace: ro\nmounts:\n  - ./extra:/extra:ro\n";
    std::fs::write(m.ws.join("moat.yaml"), yaml).unwrap();
    let script = format!(
        "cat /workspace/data.txt /extra/e.txt; \
         for f in /workspace/data.txt /workspace/new.txt /workspace/moat.yaml /extra/e.txt /extra/new.txt; do \
           if echo {marker} > $f 2>/tmp/err; then echo WROTE $f; else echo REFUSED $f; cat /tmp/err; fi; \
         done; mkdir /workspace/.claude 2>&1 || echo MKDIR_REFUSED"
    );
    let r = m.launch_sh(&[], &script);
    assert_eq!(r.code(), 0, "{}", r.stderr());
    let out = r.stdout();
    assert!(
        out.contains("host bytes") && out.contains("extra bytes"),
        "{out}"
    );
    assert!(!out.contains("WROTE"), "{out}");
    for f in ["data.txt", "new.txt", "moat.yaml"] {
        assert!(out.contains(&format!("REFUSED /workspace/{f}")), "{out}");
    }
    assert!(out.contains("REFUSED /extra/e.txt"), "{out}");
    assert!(out.contains("Read-only file system"), "{out}");
    assert!(out.contains("MKDIR_REFUSED"), "{out}");
    assert_eq!(
        std::fs::read_to_string(m.ws.join("data.txt")).unwrap(),
        "host bytes\n"
    );
    assert_eq!(
        std::fs::read_to_string(m.ws.join("extra/e.txt")).unwrap(),
        "extra bytes\n"
    );
    assert!(!m.ws.join("new.txt").exists() && !m.ws.join("extra/new.txt").exists());
    assert!(!m.ws.join(".claude").exists());
    assert_eq!(
        std::fs::read(m.ws.join("moat.yaml")).unwrap(),
        yaml.as_bytes()
    );
    let id = m.run_ids().pop().unwrap();
    let l = m.launch(&["snapshot", "list", &id, "--json"]);
    assert_eq!(l.code(), 0, "{}", l.stderr());
    assert_eq!(jsonl(&l.stdout())[0]["kind"], "pre-run", "{}", l.stdout());

    // The flag does the same for a workspace whose file says nothing; without either the
    // same write lands (so the refusal above is the setting's doing).
    std::fs::write(m.ws.join("moat.yaml"), "name: roagent\n").unwrap();
    let w = format!("echo {marker} > /workspace/data.txt && echo WROTE");
    let r = m.launch_sh(&["--read-only-workspace"], &w);
    assert_ne!(r.code(), 0, "{}", r.stdout());
    assert!(!r.stdout().contains("WROTE"), "{}", r.stdout());
    assert_eq!(
        std::fs::read_to_string(m.ws.join("data.txt")).unwrap(),
        "host bytes\n"
    );
    let r = m.launch_sh(&[], &w);
    assert_eq!(r.code(), 0, "{}", r.stderr());
    assert_eq!(
        std::fs::read_to_string(m.ws.join("data.txt")).unwrap(),
        format!("{marker}\n")
    );
}
