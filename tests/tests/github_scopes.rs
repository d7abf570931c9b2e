//! A scoped GitHub grant end to end, as the seeds write it: `moat grant github --scope repo`
//! stores the token as `github:repo`, and a workspace whose moat.yaml says
//! `grants: [github:repo]` gets it injected by the proxy on api.github.com (a loopback
//! stand-in) while the token never reaches the run's output or the container. A scoped
//! grant that was never stored is refused, naming the command that stores it.
//!
//! THREATS: B5 (a canary token in no output), A (the scoped name resolves to exactly the
//! credential stored under it).

use moat_e2e::github::{GithubStandIn, LOGIN};
use moat_e2e::{Moat, docker_ready};

const TOKEN: &str = "ghp_E2eScopedCanaryT0kenDoNotLeak98765";

#[test]
fn a_github_repo_grant_in_moat_yaml_injects_the_scoped_token() {
    if !docker_ready() {
        return;
    }
    let gh = GithubStandIn::start(TOKEN);
    let mut m = Moat::new();
    m.env
        .env("MOAT_PROXY_CONNECT_TO", gh.connect_to())
        .env("MOAT_PROXY_EXTRA_CA", &gh.ca_file);
    let g = m.run_timeout(
        "moat",
        &[
            "grant",
            "github",
            "--scope",
            "repo",
            "--no-validate",
            "--token-stdin",
        ],
        Some(format!("{TOKEN}\n").as_bytes()),
        60,
    );
    assert_eq!(g.code(), 0, "{}", g.stderr());
    assert!(
        g.stdout().contains("\"name\":\"github:repo\""),
        "{}",
        g.stdout()
    );

    // A scoped grant nobody stored: refused before anything runs, with the way to store it.
    m.write_config("grants: [\"github:admin:org\"]\n");
    m.trust(None);
    let r = m.launch_sh(&[], "echo should-not-run");
    assert_ne!(r.code(), 0, "{}", r.stdout());
    assert!(!r.stdout().contains("should-not-run"), "{}", r.stdout());
    assert!(
        r.stderr().contains("moat grant github --scope admin:org"),
        "{}",
        r.stderr()
    );

    m.write_config("grants: [github:repo]\n");
    m.trust(None);
    let r = m.launch_sh(&[], "curl -s https://api.github.com/user; echo; env");
    assert_eq!(r.code(), 0, "{}\n{}", r.stdout(), r.stderr());
    assert!(r.stdout().contains(LOGIN), "{}", r.stdout());
    assert!(gh.authorized.load(std::sync::atomic::Ordering::SeqCst) >= 1);
    r.leaks_nothing(TOKEN);
}
