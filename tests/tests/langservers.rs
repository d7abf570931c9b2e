//! `language_servers:` from the dependency registry: the server (and its runtime) installed
//! from Debian at image build, answering inside the run.

use moat_e2e::{Moat, docker_ready};

#[test]
fn a_go_language_server_is_installed_and_answers_inside_the_run() {
    if !docker_ready() {
        return;
    }
    let m = Moat::new();
    std::fs::write(m.ws.join("moat.yaml"), "language_servers: [go]\n").unwrap();
    let r = m.sh("command -v gopls && gopls version && go version");
    let out = r.stdout();
    assert_eq!(r.code(), 0, "{out}\n{}", r.stderr());
    assert!(out.contains("/usr/bin/gopls"), "{out}");
    assert!(out.contains("golang.org/x/tools/gopls"), "{out}");
    assert!(out.contains("go version go1."), "{out}");
    let id = m.run_ids().pop().unwrap();
    let df =
        std::fs::read_to_string(m.moat_home().join("runs").join(&id).join("Dockerfile")).unwrap();
    assert!(df.contains("gopls"), "{df}");

    // An unknown one is refused with what is available.
    std::fs::write(m.ws.join("moat.yaml"), "language_servers: [rust]\n").unwrap();
    let r = m.launch(&["run", "--no-sandbox", "--", "true"]);
    assert_eq!(r.code(), 78, "{}", r.stderr());
    assert!(r.stderr().contains("moat.yaml:1"), "{}", r.stderr());
    assert!(
        r.stderr().contains("go, typescript, python"),
        "{}",
        r.stderr()
    );
}

/// typescript and python: the servers from npm, fetched at image build through the
/// build-time proxy (trusting the moat CA), answering inside the run.
#[test]
fn npm_language_servers_are_installed_through_the_build_proxy() {
    if !docker_ready() {
        return;
    }
    let m = Moat::new();
    std::fs::write(
        m.ws.join("moat.yaml"),
        "language_servers: [typescript, python]\n",
    )
    .unwrap();
    let r = m.run_timeout(
        "moat-launch",
        &[
            "run",
            "--no-sandbox",
            "--",
            "sh",
            "-c",
            "typescript-language-server --version && tsc --version && pyright --version",
        ],
        None,
        900,
    );
    let out = r.stdout();
    assert_eq!(r.code(), 0, "{out}\n{}", r.stderr());
    assert!(out.contains("Version "), "tsc answered: {out}");
    assert!(out.contains("pyright "), "pyright answered: {out}");
    let first = out.lines().next().unwrap_or_default();
    assert!(
        first.split('.').count() == 3 && first.chars().all(|c| c.is_ascii_digit() || c == '.'),
        "typescript-language-server answered a version: {out}"
    );
}
