//! The seeds' quick start, end to end against a real Docker engine: grant github, run curl
//! against (a loopback stand-in for) the GitHub API, see the token injected by the proxy and
//! never inside the container; the trace shows the request; the audit log verifies; and the
//! token appears nowhere: not in MOAT_HOME, the container's filesystem, environment or
//! `docker inspect`.

use moat_e2e::github::{GithubStandIn, LOGIN};
use moat_e2e::{Moat, docker_ready};
use std::process::Command;

const TOKEN: &str = "ghp_E2eCanaryT0kenDoNotLeak0123456789abc";

fn github_env() -> (Moat, GithubStandIn) {
    let gh = GithubStandIn::start(TOKEN);
    // `moat grant github`, token from the environment.
    let m = Moat::with_github(&gh, TOKEN);
    (m, gh)
}

#[test]
fn quick_start_injects_the_token_and_records_the_request() {
    if !docker_ready() {
        return;
    }
    let (m, gh) = github_env();
    let r = m.run_timeout(
        "moat",
        &[
            "run",
            "--no-sandbox",
            "--grant",
            "github",
            "--",
            "curl",
            "-s",
            "https://api.github.com/user",
        ],
        None,
        300,
    );
    assert_eq!(
        r.code(),
        0,
        "stdout: {}\nstderr: {}",
        r.stdout(),
        r.stderr()
    );
    assert!(
        r.stdout().contains(LOGIN),
        "stdout: {}\nstderr: {}",
        r.stdout(),
        r.stderr()
    );
    assert!(gh.authorized.load(std::sync::atomic::Ordering::SeqCst) >= 1);
    r.leaks_nothing(TOKEN);
    let id = m.run_ids().pop().unwrap();
    assert_eq!(m.metadata(&id)["state"], "stopped");

    // The trace shows the request.
    let t = m.run_timeout("moat", &["trace", "--network"], None, 60);
    assert_eq!(t.code(), 0, "{}", t.stderr());
    assert!(
        t.stdout().contains("GET https://api.github.com/user 200"),
        "{}",
        t.stdout()
    );
    assert!(t.stdout().starts_with('['), "{}", t.stdout());

    let v = m.launch(&["trace", "--network", "-v"]);
    assert!(v.stdout().contains("grant: github"), "{}", v.stdout());
    let j = m.launch(&["trace", "--json"]);
    // (a first run also traces its image build's package downloads)
    let rec: serde_json::Value = j
        .stdout()
        .lines()
        .map(|l| serde_json::from_str::<serde_json::Value>(l).unwrap())
        .find(|r| r["url"] == "https://api.github.com/user")
        .expect("the request in trace --json");
    assert_eq!(rec["v"], 1);
    assert_eq!(rec["status"], 200);

    // The audit log verifies, and holds the run's own events.
    let log = std::fs::read_to_string(m.moat_home().join("runs").join(&id).join("audit/log.jsonl"))
        .unwrap_or_default();
    for kind in ["run_started", "run_ended"] {
        assert!(log.contains(kind), "no {kind} in the audit log:\n{log}");
    }
    // The audit log verifies.
    let a = m.run_timeout("moat", &["audit", &id], None, 60);
    assert_eq!(a.code(), 0, "moat-audit: {}\n{}", a.stdout(), a.stderr());

    // The container's environment has only the placeholder.
    let e = m.launch(&["run", "--no-sandbox", "--grant", "github", "--", "env"]);
    assert_eq!(e.code(), 0, "{}", e.stderr());
    assert!(e.stdout().contains("GH_TOKEN=ghp_"), "{}", e.stdout());
    assert!(
        e.stdout().contains("HTTPS_PROXY=http://moat:"),
        "{}",
        e.stdout()
    );
    e.leaks_nothing(TOKEN);

    assert!(
        m.env.files_containing(TOKEN.as_bytes()).is_empty(),
        "token found in {:?}",
        m.env.files_containing(TOKEN.as_bytes())
    );
}

#[test]
fn the_token_is_nowhere_in_the_container() {
    if !docker_ready() {
        return;
    }
    let (m, _gh) = github_env();
    let r = m.launch_sh(
        &["-d", "--grant", "github"],
        "curl -s https://api.github.com/user > /tmp/out.json; echo ready; sleep 60",
    );
    assert_eq!(r.code(), 0, "{}", r.stderr());
    let id = r.stdout().trim().to_string();
    m.wait_log(&id, "ready", 60);
    let name = format!("moat-{id}");

    let inspect = Command::new("docker")
        .args(["inspect", &name])
        .output()
        .unwrap();
    assert!(inspect.status.success());
    assert!(
        !String::from_utf8_lossy(&inspect.stdout).contains(TOKEN),
        "token in docker inspect"
    );

    // Every file of the container's filesystem, its environment and its processes.
    let export = Command::new("sh")
        .arg("-c")
        .arg(format!("docker export {name} | grep -a -c {TOKEN} || true"))
        .output()
        .unwrap();
    assert_eq!(
        String::from_utf8_lossy(&export.stdout).trim(),
        "0",
        "token in the container's files"
    );
    let env = Command::new("docker")
        .args([
            "exec",
            &name,
            "sh",
            "-c",
            "cat /proc/*/environ /proc/*/cmdline 2>/dev/null | tr '\\0' '\\n'; cat /tmp/out.json",
        ])
        .output()
        .unwrap();
    let out = String::from_utf8_lossy(&env.stdout);
    assert!(out.contains(LOGIN), "the request inside worked: {out}");
    assert!(!out.contains(TOKEN), "token in the container's processes");

    let s = m.launch(&["stop", &id]);
    assert_eq!(s.code(), 0, "{}", s.stderr());
    assert_eq!(m.metadata(&id)["state"], "stopped");
    assert!(m.env.files_containing(TOKEN.as_bytes()).is_empty());
}

#[test]
fn strict_policy_blocks_with_the_policy_message() {
    if !docker_ready() {
        return;
    }
    let (m, _gh) = github_env();
    let r = m.launch_sh(
        &["--policy", "strict", "--grant", "github"],
        "curl -s http://blocked.example.com/; echo; curl -s https://api.github.com/user",
    );
    assert_eq!(r.code(), 0, "{}", r.stderr());
    let out = r.stdout();
    assert!(out.contains("request blocked by network policy"), "{out}");
    assert!(out.contains("blocked.example.com"), "{out}");
    // The grant's host is allowed under strict.
    assert!(out.contains(LOGIN), "{out}\n{}", r.stderr());
}

#[test]
fn network_rules_reach_the_proxy() {
    if !docker_ready() {
        return;
    }
    let (m, _gh) = github_env();
    std::fs::write(
        m.ws.join("moat.yaml"),
        "grants: [github]\nnetwork:\n  rules:\n    - api.github.com:\n        - allow GET /user\n        - deny GET /**\n",
    )
    .unwrap();
    m.trust(None);
    let r = m.launch_sh(
        &[],
        "curl -s https://api.github.com/user; echo; curl -s https://api.github.com/repos/x/y",
    );
    assert_eq!(r.code(), 0, "{}", r.stderr());
    let out = r.stdout();
    assert!(out.contains(LOGIN), "{out}");
    assert!(out.contains("request blocked by network policy"), "{out}");
    let t = m.launch(&["trace", "--network"]);
    assert!(
        t.stdout()
            .contains("GET https://api.github.com/repos/x/y 403"),
        "{}",
        t.stdout()
    );
}
