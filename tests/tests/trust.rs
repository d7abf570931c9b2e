//! Configuration trust, as attacks (THREATS L1, L2, L3, I5; promise 10): what a run can
//! write into its workspace's moat.yaml never widens the next run without the user's
//! approval on the host, a cloned repository's moat.yaml is no approval either, and
//! workspaces or mounts over the host's keys are refused.

use moat_e2e::github::GithubStandIn;
use moat_e2e::{Moat, docker_ready};
use moat_testkit::Terminal;
use std::path::Path;
use std::sync::atomic::Ordering;

const TOKEN: &str = "ghp_TrustL2CanaryTokenDoNotLeak012345678";

fn unique(prefix: &str) -> String {
    let n = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap()
        .as_nanos();
    format!("{prefix}-{n:x}-marker")
}

fn audit_log(m: &Moat, id: &str) -> String {
    std::fs::read_to_string(m.run_dir(id).join("audit/log.jsonl")).unwrap_or_default()
}

/// Every file under the test's directory (MOAT_HOME, the workspace, the run's artifacts)
/// holding `needle`, minus `allowed`.
fn found_in_files(m: &Moat, needle: &str, allowed: &[&Path]) -> Vec<std::path::PathBuf> {
    m.env
        .files_containing(needle.as_bytes())
        .into_iter()
        .filter(|p| !allowed.iter().any(|a| p == a))
        .collect()
}

/// L1: run 1 (unprivileged, so no question) appends a mount of a directory outside the
/// workspace to moat.yaml. The end of run 1 says so on stderr and in the audit log
/// (`config_changed`); run 2, without a terminal, is refused with 77 naming the file and
/// the field, and the marker outside the workspace reaches no output, container or artifact.
#[test]
fn l1_a_mount_the_agent_appends_is_refused_on_the_next_run() {
    if !docker_ready() {
        return;
    }
    let m = Moat::new();
    let outside = m.env.path().join("outside");
    std::fs::create_dir_all(&outside).unwrap();
    let marker = unique("l1-outside");
    let marker_file = outside.join("marker.txt");
    std::fs::write(&marker_file, &marker).unwrap();
    m.write_config("env:\n  GREETING: hello\n");
    // Run 1: the agent edits its own configuration for the next run.
    let script = format!(
        "printf 'mounts: [\"{}:/up\"]\\n' >> /workspace/moat.yaml && echo appended",
        outside.display()
    );
    let r1 = m.sh(&script);
    assert_eq!(r1.code(), 0, "run 1: {}", r1.stderr());
    assert!(r1.stdout().contains("appended"), "{}", r1.stdout());
    assert!(
        r1.stderr()
            .contains("moat.yaml was changed during this run"),
        "run 1 did not report the change: {}",
        r1.stderr()
    );
    let id1 = m.run_ids().pop().unwrap();
    let launch_log =
        std::fs::read_to_string(m.moat_home().join("runs").join(&id1).join("launch.log")).unwrap();
    assert!(launch_log.contains("moat.yaml was changed"), "{launch_log}");
    let audit = audit_log(&m, &id1);
    assert!(
        audit.contains("\"config_changed\"") && audit.contains("moat.yaml"),
        "no config_changed in the audit log: {audit}"
    );
    let before = m.run_ids();
    // Run 2: no terminal. It must not start, let alone mount `outside`.
    let r2 = m.sh("cat /up/marker.txt; echo ran");
    assert_eq!(r2.code(), 77, "run 2: {}\n{}", r2.stdout(), r2.stderr());
    let err = r2.stderr();
    assert!(err.contains("moat.yaml"), "{err}");
    assert!(err.contains("mounts"), "{err}");
    assert!(err.contains(&outside.display().to_string()), "{err}");
    assert!(err.contains("moat trust"), "{err}");
    assert!(!r2.stdout().contains("ran"), "{}", r2.stdout());
    r2.leaks_nothing(&marker);
    assert_eq!(m.run_ids(), before, "a refused run must not be created");
    assert!(
        found_in_files(&m, &marker, &[&marker_file]).is_empty(),
        "the marker was copied somewhere"
    );
}

const CURL_USER: &str = "command: [curl, -s, https://api.github.com/user]\n";

/// L2 and approval: a fresh workspace (a cloned repository) whose moat.yaml grants the
/// github credential is refused without a terminal, and the stand-in never sees the canary
/// token. `moat trust` then lets the same run through; a changed privileged field asks
/// again; a changed `env:` does not.
#[test]
fn l2_a_cloned_grant_needs_approval_and_only_privileged_changes_ask_again() {
    if !docker_ready() {
        return;
    }
    let gh = GithubStandIn::start(TOKEN);
    let m = Moat::with_github(&gh, TOKEN);
    m.write_config(&format!("grants: [github]\n{CURL_USER}"));
    let r = m.launch(&["run", "--no-sandbox"]);
    assert_eq!(r.code(), 77, "{}\n{}", r.stdout(), r.stderr());
    assert!(r.stderr().contains("moat.yaml"), "{}", r.stderr());
    assert!(r.stderr().contains("grants"), "{}", r.stderr());
    assert!(r.stderr().contains("github credential"), "{}", r.stderr());
    assert!(!r.stdout().contains(moat_e2e::github::LOGIN));
    r.leaks_nothing(TOKEN);
    assert_eq!(
        gh.authorized.load(Ordering::SeqCst),
        0,
        "the token was sent"
    );
    assert!(m.run_ids().is_empty());

    // The user approves (no terminal: running `moat trust` is the approval); `moat trust
    // --list` shows it; the same run goes through.
    let t = m.run_timeout("moat", &["trust"], None, 60);
    assert_eq!(t.code(), 0, "{}", t.stderr());
    assert!(t.stderr().contains("github credential"), "{}", t.stderr());
    let l = m.run_timeout("moat", &["trust", "--list"], None, 60);
    assert!(l.stdout().contains("moat.yaml"), "{}", l.stdout());
    assert!(l.stdout().contains("github credential"), "{}", l.stdout());
    let j = m.run_timeout("moat", &["trust", "--list", "--json"], None, 60);
    let rec: serde_json::Value = serde_json::from_str(j.stdout().trim()).unwrap();
    assert_eq!(rec["file"], "moat.yaml");
    assert_eq!(rec["sha256"].as_str().unwrap().len(), 64);
    let approvals = m.moat_home().join("trust.json");
    use std::os::unix::fs::PermissionsExt;
    let mode = std::fs::metadata(&approvals).unwrap().permissions().mode();
    assert_eq!(mode & 0o777, 0o600);
    let r = m.launch(&["run", "--no-sandbox"]);
    assert_eq!(r.code(), 0, "{}", r.stderr());
    assert!(
        r.stdout().contains(moat_e2e::github::LOGIN),
        "{}",
        r.stdout()
    );
    r.leaks_nothing(TOKEN);
    let sent = gh.authorized.load(Ordering::SeqCst);
    assert!(sent >= 1);

    // env is not privileged: no new question.
    m.write_config(&format!(
        "grants: [github]\nenv:\n  EDITED: yes\n{CURL_USER}"
    ));
    let r = m.launch(&["run", "--no-sandbox"]);
    assert_eq!(r.code(), 0, "an env change asked again: {}", r.stderr());
    let sent = gh.authorized.load(Ordering::SeqCst);

    // A privileged change (a second credential) asks again, and nothing is sent.
    m.write_config(&format!(
        "grants: [github, npm]\nenv:\n  EDITED: yes\n{CURL_USER}"
    ));
    let r = m.launch(&["run", "--no-sandbox"]);
    assert_eq!(r.code(), 77, "{}", r.stderr());
    assert!(
        r.stderr().contains("changed since it was approved"),
        "{}",
        r.stderr()
    );
    assert_eq!(gh.authorized.load(Ordering::SeqCst), sent);

    // Revoked: the original file is refused again.
    m.write_config(&format!("grants: [github]\n{CURL_USER}"));
    let v = m.run_timeout("moat", &["trust", "--revoke"], None, 60);
    assert_eq!(v.code(), 0, "{}", v.stderr());
    let v = m.run_timeout("moat", &["trust", "--revoke"], None, 60);
    assert_eq!(v.code(), 66, "nothing left to revoke: {}", v.stderr());
    let r = m.launch(&["run", "--no-sandbox"]);
    assert_eq!(r.code(), 77, "{}", r.stderr());
    assert_eq!(gh.authorized.load(Ordering::SeqCst), sent);
    // Nothing under the test's directory holds the token in the clear.
    assert!(found_in_files(&m, TOKEN, &[]).is_empty());
}

/// `script(1)` gives the command a terminal; answer `input` once `prompt` shows.
fn on_terminal(m: &Moat, cmd: &str, prompt: &str, input: &str) -> (i32, String) {
    let how = Terminal {
        dir: Some(&m.ws),
        limit_secs: 600,
        prompt_secs: 60,
        hold_input: true,
    };
    m.env.on_terminal(cmd, prompt, input, &how)
}

/// L1/L2 on a terminal: the unapproved request is shown and asked about; `n` refuses
/// (77, nothing runs), `y` records the approval and runs.
#[test]
fn on_a_terminal_the_request_is_asked_about() {
    if !docker_ready() {
        return;
    }
    let m = Moat::new();
    let outside = m.env.path().join("shared-data");
    std::fs::create_dir_all(&outside).unwrap();
    let marker = unique("pty");
    std::fs::write(outside.join("m.txt"), &marker).unwrap();
    m.write_config(&format!("mounts: [\"{}:/data:ro\"]\n", outside.display()));
    // `moat trust` on a terminal asks too; n records nothing.
    let (code, text) = on_terminal(&m, "moat-launch trust", "[y/N]", "n\n");
    assert_eq!(code, 77, "{text}");
    assert!(text.contains("/data"), "{text}");
    assert!(!m.moat_home().join("trust.json").exists());
    let cmd = "moat-launch run --no-sandbox -- cat /data/m.txt";
    let (code, text) = on_terminal(&m, cmd, "[y/N]", "n\n");
    assert_eq!(code, 77, "{text}");
    assert!(text.contains("Trust this configuration?"), "{text}");
    assert!(text.contains("read-only"), "{text}");
    assert!(!text.contains(&marker), "{text}");
    assert!(m.run_ids().is_empty());
    let (code, text) = on_terminal(&m, cmd, "[y/N]", "y\n");
    assert_eq!(code, 0, "{text}");
    assert!(text.contains(&marker), "{text}");
    // Approved now: no terminal needed any more.
    let r = m.launch(&["run", "--no-sandbox", "--", "cat", "/data/m.txt"]);
    assert_eq!(r.code(), 0, "{}", r.stderr());
}

/// L3/I5: a workspace that is the home directory, and mounts of MOAT_HOME or ~/.ssh, are
/// refused with the reason; `--allow-sensitive-mount` runs with a warning; the same mount
/// in moat.yaml is still refused without the flag, and with it still needs approval.
#[test]
fn l3_i5_sensitive_workspaces_and_mounts_are_refused() {
    if !docker_ready() {
        return;
    }
    let m = Moat::new();
    let home = m.env.home.clone();
    std::fs::create_dir_all(m.moat_home()).unwrap();
    let ssh = home.join(".ssh");
    std::fs::create_dir_all(&ssh).unwrap();
    let key = unique("ssh-key");
    std::fs::write(ssh.join("id_ed25519"), &key).unwrap();
    let cat = [
        "--",
        "sh",
        "-c",
        "cat /s/id_ed25519 /m/* 2>/dev/null; echo ran",
    ];
    let home_s = home.to_string_lossy().into_owned();
    let mh_mount = format!("{}:/m", m.moat_home().display());
    let ssh_mount = format!("{}:/s", ssh.display());
    for (args, reason) in [
        (
            vec!["run", "--no-sandbox", home_s.as_str()],
            "home directory",
        ),
        (
            vec!["run", "--no-sandbox", "-m", mh_mount.as_str()],
            "MOAT_HOME",
        ),
        (
            vec!["run", "--no-sandbox", "-m", ssh_mount.as_str()],
            "~/.ssh",
        ),
    ] {
        let mut a = args.clone();
        a.extend_from_slice(&cat);
        let r = m.launch(&a);
        assert_eq!(r.code(), 77, "{a:?}: {}\n{}", r.stdout(), r.stderr());
        assert!(r.stderr().contains(reason), "{a:?}: {}", r.stderr());
        assert!(!r.stdout().contains("ran"));
        r.leaks_nothing(&key);
    }
    assert!(m.run_ids().is_empty());
    // The user's own flag overrides, with a warning.
    let mut a = vec![
        "run",
        "--no-sandbox",
        "--allow-sensitive-mount",
        "-m",
        ssh_mount.as_str(),
    ];
    a.extend_from_slice(&cat);
    let r = m.launch(&a);
    assert_eq!(r.code(), 0, "{}", r.stderr());
    assert!(r.stdout().contains(&key), "{}", r.stdout());
    assert!(
        r.stderr().contains("WARNING: --allow-sensitive-mount"),
        "{}",
        r.stderr()
    );
    // In moat.yaml: refused as sensitive; with the flag, it still needs approval.
    m.write_config(&format!("mounts: [\"{ssh_mount}\"]\n"));
    let r = m.launch(&["run", "--no-sandbox", "--", "cat", "/s/id_ed25519"]);
    assert_eq!(r.code(), 77, "{}", r.stderr());
    assert!(r.stderr().contains("~/.ssh"), "{}", r.stderr());
    r.leaks_nothing(&key);
    let r = m.launch(&[
        "run",
        "--no-sandbox",
        "--allow-sensitive-mount",
        "--",
        "cat",
        "/s/id_ed25519",
    ]);
    assert_eq!(r.code(), 77, "{}", r.stderr());
    assert!(r.stderr().contains("not approved"), "{}", r.stderr());
    r.leaks_nothing(&key);
}

/// A newcomer's first run: a moat.yaml with only unprivileged fields (env, command,
/// hooks, dependencies, a mount inside the workspace, a strict policy with a plain host)
/// runs without a terminal and without a question.
#[test]
fn unprivileged_config_runs_without_a_question() {
    if !docker_ready() {
        return;
    }
    let m = Moat::new();
    std::fs::create_dir_all(m.ws.join("data")).unwrap();
    std::fs::write(m.ws.join("data/x.txt"), "inside").unwrap();
    m.write_config("name: newcomer\nenv:\n  GREETING: hello-newcomer\nmounts: [\"./data:/data:ro\"]\nnetwork:\n  policy: strict\n  allow: [api.example.com]\ncommand: [sh, -c, \"echo $GREETING; cat /data/x.txt\"]\n",
    );
    let r = m.launch(&["run", "--no-sandbox"]);
    assert_eq!(r.code(), 0, "{}", r.stderr());
    assert!(r.stdout().contains("hello-newcomer"), "{}", r.stdout());
    assert!(r.stdout().contains("inside"), "{}", r.stdout());
    assert!(!r.stderr().contains("Trust"), "{}", r.stderr());
    assert!(!m.moat_home().join("trust.json").exists());
    let t = m.run_timeout("moat", &["trust"], None, 60);
    assert_eq!(t.code(), 0, "{}", t.stderr());
    assert!(
        t.stdout().contains("asks for nothing privileged"),
        "{}",
        t.stdout()
    );
    assert!(!m.moat_home().join("trust.json").exists());
    // Flags are the user's own: a mount from outside the workspace on the command line
    // needs no approval.
    let outside = m.env.path().join("mine");
    std::fs::create_dir_all(&outside).unwrap();
    std::fs::write(outside.join("f"), "from-my-flag").unwrap();
    let mount = format!("{}:/o:ro", outside.display());
    let r = m.launch(&["run", "--no-sandbox", "-m", &mount, "--", "cat", "/o/f"]);
    assert_eq!(r.code(), 0, "{}", r.stderr());
    assert!(r.stdout().contains("from-my-flag"), "{}", r.stdout());
}

/// L2 (review findings): a cloned moat.yaml whose remote MCP server has no `auth` but a URL
/// on the host's loopback (which the proxy would let the agent dial) needs approval (77,
/// nothing runs, the loopback listener is never reached); `env: MOAT_DOCKER_GID` is a
/// configuration error at its line (78); and L3: a mount of `~/.netrc`, or of a symlink to
/// `~/.ssh`, is refused (77) and the canary in it reaches no output.
#[test]
fn review_findings_are_refused_before_anything_runs() {
    if !docker_ready() {
        return;
    }
    let m = Moat::new();
    std::fs::create_dir_all(m.moat_home()).unwrap();
    let listener = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    listener.set_nonblocking(true).unwrap();
    let port = listener.local_addr().unwrap().port();
    m.write_config(&format!(
        "mcp:\n  - name: local\n    url: http://127.0.0.1:{port}/\ncommand: [sh, -c, \"echo ran\"]\n"
    ));
    let r = m.launch(&["run", "--no-sandbox"]);
    assert_eq!(r.code(), 77, "{}\n{}", r.stdout(), r.stderr());
    assert!(r.stderr().contains("mcp.local"), "{}", r.stderr());
    assert!(
        r.stderr().contains(&format!("127.0.0.1:{port}")),
        "{}",
        r.stderr()
    );
    assert!(!r.stdout().contains("ran"));
    assert!(m.run_ids().is_empty());
    assert!(listener.accept().is_err(), "the loopback port was reached");

    m.write_config("env:\n  MOAT_DOCKER_GID: \"0\"\ncommand: [id]\n");
    let r = m.launch(&["run", "--no-sandbox"]);
    assert_eq!(r.code(), 78, "{}\n{}", r.stdout(), r.stderr());
    assert!(
        r.stderr().contains("moat.yaml:2") && r.stderr().contains("MOAT_DOCKER_GID"),
        "{}",
        r.stderr()
    );
    assert!(m.run_ids().is_empty());

    std::fs::remove_file(m.ws.join("moat.yaml")).unwrap();
    let home = m.env.home.clone();
    let canary = unique("netrc");
    std::fs::write(home.join(".netrc"), &canary).unwrap();
    std::fs::create_dir_all(home.join(".ssh")).unwrap();
    std::fs::write(home.join(".ssh/id_ed25519"), &canary).unwrap();
    let other = m.ws.parent().unwrap().join("innocent-link");
    std::os::unix::fs::symlink(home.join(".ssh"), &other).unwrap();
    for (src, reason) in [(home.join(".netrc"), "~/.netrc"), (other.clone(), "~/.ssh")] {
        let mount = format!("{}:/s", src.display());
        let r = m.launch(&[
            "run",
            "--no-sandbox",
            "-m",
            &mount,
            "--",
            "sh",
            "-c",
            "cat /s /s/* 2>/dev/null; echo ran",
        ]);
        assert_eq!(r.code(), 77, "{mount}: {}\n{}", r.stdout(), r.stderr());
        assert!(r.stderr().contains(reason), "{mount}: {}", r.stderr());
        assert!(!r.stdout().contains("ran"));
        r.leaks_nothing(&canary);
    }
    assert!(m.run_ids().is_empty());
}
