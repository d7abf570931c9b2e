//! Images: build hooks run at build time (root and moatuser), the build's package downloads go
//! through the run's proxy (so they are in the trace), the image is reused until its inputs
//! change, and dependencies Debian cannot provide offline fail with a message that says so.

use moat_e2e::{Moat, docker_ready};

#[test]
fn build_hooks_run_through_the_proxy_and_the_image_is_reused() {
    if !docker_ready() {
        return;
    }
    let m = Moat::new();
    // A unique hook makes a new image, so this test always builds.
    let nonce = moat_core::hex(&moat_core::random_bytes::<4>());
    std::fs::write(
        m.ws.join("agent.yaml"),
        format!(
            "name: hooks\nhooks:\n  post_build_root: apt-get update -qq && echo root-{nonce} > /etc/moat-hook && id -u > /etc/moat-hook-uid\n  post_build: echo user-$HOME > /home/moatuser/.hooked\n"
        ),
    )
    .unwrap();
    let cmd = [
        "run",
        "--no-sandbox",
        "--",
        "sh",
        "-c",
        "cat /etc/moat-hook /home/moatuser/.hooked /etc/moat-hook-uid",
    ];
    let r = m.launch(&cmd);
    assert_eq!(r.code(), 0, "{}\n{}", r.stdout(), r.stderr());
    assert!(
        r.stdout().contains(&format!("root-{nonce}")),
        "{}",
        r.stdout()
    );
    assert!(r.stdout().contains("user-/home/moatuser"), "{}", r.stdout());
    assert!(
        r.stderr().contains("building image moat/run:"),
        "{}",
        r.stderr()
    );
    let id = m.run_ids().pop().unwrap();
    let dir = m.moat_home().join("runs").join(&id);
    let dockerfile = std::fs::read_to_string(dir.join("Dockerfile")).unwrap();
    assert!(
        dockerfile.contains(&format!("root-{nonce}")),
        "{dockerfile}"
    );
    // The build's apt downloads went through the run's proxy and are in its trace.
    let t = m.launch(&["trace", &id, "--network"]);
    assert!(
        t.stdout().contains("GET http://"),
        "no build traffic in the trace: {}",
        t.stdout()
    );

    // Same inputs: the image is reused; --rebuild forces a build.
    let r = m.launch(&cmd);
    assert_eq!(r.code(), 0, "{}", r.stderr());
    assert!(!r.stderr().contains("building image"), "{}", r.stderr());
    let image = m.metadata(&m.run_ids().pop().unwrap())["image"]
        .as_str()
        .unwrap()
        .to_string();
    // Clean up this test's unique image.
    let _ = std::process::Command::new("docker")
        .args(["rmi", "-f", &image])
        .output();
}

#[test]
fn dependencies_debian_cannot_provide_fail_clearly() {
    if !docker_ready() {
        return;
    }
    let m = Moat::new();
    std::fs::write(m.ws.join("moat.yaml"), "dependencies:\n  - python@3.12\n").unwrap();
    let r = m.launch(&["run", "--no-sandbox", "--", "true"]);
    assert_eq!(r.code(), 69, "{}", r.stderr());
    assert!(r.stderr().contains("python:3.12-slim"), "{}", r.stderr());
    assert!(r.stderr().contains("python 3.11"), "{}", r.stderr());
    let id = m.run_ids().pop().unwrap();
    let meta = m.metadata(&id);
    assert_eq!(meta["state"], "failed");
    assert!(
        meta["reason"]
            .as_str()
            .unwrap()
            .contains("python:3.12-slim"),
        "{meta}"
    );

    // docker:dind is in the registry but refused, with the reason.
    std::fs::write(m.ws.join("moat.yaml"), "dependencies:\n  - docker:dind\n").unwrap();
    let r = m.launch(&["run", "--no-sandbox", "--", "true"]);
    assert_eq!(r.code(), 69, "{}", r.stderr());
    assert!(
        r.stderr().contains("undo the run's firewall"),
        "{}",
        r.stderr()
    );
}

#[test]
fn gvisor_asked_for_and_missing_is_said_and_apple_is_refused() {
    if !docker_ready() {
        return;
    }
    let m = Moat::new();
    let runsc = std::process::Command::new("docker")
        .args(["info", "--format", "{{json .Runtimes}}"])
        .output()
        .map(|o| String::from_utf8_lossy(&o.stdout).contains("runsc"))
        .unwrap_or(false);
    if !runsc {
        let r = m.launch(&["run", "--", "true"]);
        assert_eq!(r.code(), 0, "{}", r.stderr());
        assert!(
            r.stderr().contains("gVisor (runsc) is not registered"),
            "{}",
            r.stderr()
        );
        let r = m.launch(&["run", "--no-sandbox", "--", "true"]);
        assert!(!r.stderr().contains("gVisor"), "{}", r.stderr());
    }
    std::fs::write(m.ws.join("moat.yaml"), "runtime: apple\n").unwrap();
    let r = m.launch(&["run", "--", "true"]);
    assert_eq!(r.code(), 78, "{}", r.stderr());
    assert!(
        r.stderr().contains("apple containers need macOS"),
        "{}",
        r.stderr()
    );
}

#[test]
fn status_and_the_dispatcher() {
    if !docker_ready() {
        return;
    }
    let m = Moat::new();
    // `moat run` reaches moat-launch through the dispatcher.
    let r = m.run_timeout(
        "moat",
        &[
            "run",
            "--no-sandbox",
            "-n",
            "via-moat",
            "--",
            "echo",
            "dispatched",
        ],
        None,
        300,
    );
    assert_eq!(r.code(), 0, "{}", r.stderr());
    assert!(r.stdout().contains("dispatched"));
    let s = m.run_timeout("moat", &["status"], None, 60);
    assert_eq!(s.code(), 0, "{}", s.stderr());
    assert!(s.stdout().contains("Docker:   ok"), "{}", s.stdout());
    assert!(s.stdout().contains("1 stopped"), "{}", s.stdout());
    let j = m.run_timeout("moat", &["status", "--json"], None, 60);
    let v: serde_json::Value = serde_json::from_str(j.stdout().trim()).unwrap();
    assert_eq!(v["type"], "status");
    assert_eq!(v["stopped_runs"], 1);
    assert_eq!(v["ca"]["ok"], true);
    let l = m.run_timeout("moat", &["list"], None, 60);
    assert!(l.stdout().contains("via-moat"), "{}", l.stdout());
}

#[test]
fn a_runtime_debian_carries_is_installed_from_debian_packages() {
    if !docker_ready() {
        return;
    }
    // python:3.11-slim is not here and no registry answers: bookworm's python3 is 3.11.
    let have = std::process::Command::new("docker")
        .args(["image", "inspect", "python:3.11-slim"])
        .output()
        .map(|o| o.status.success())
        .unwrap_or(false);
    if have {
        eprintln!("SKIPPED: python:3.11-slim is present, the Debian path is not taken");
        return;
    }
    let m = Moat::new();
    std::fs::write(m.ws.join("moat.yaml"), "dependencies:\n  - python@3.11\n").unwrap();
    let r = m.run_timeout(
        "moat-launch",
        &[
            "run",
            "--no-sandbox",
            "--",
            "python3",
            "-c",
            "import sys; print('py', sys.version_info[:2])",
        ],
        None,
        600,
    );
    assert_eq!(r.code(), 0, "{}\n{}", r.stdout(), r.stderr());
    assert!(r.stdout().contains("py (3, 11)"), "{}", r.stdout());
}

#[test]
fn git_dependency_imports_the_hosts_identity() {
    if !docker_ready() {
        return;
    }
    let m = Moat::new();
    let mut c = m.env.program("git");
    c.args(["config", "--global", "user.name", "Moat E2E"]);
    assert!(c.status().unwrap().success());
    let mut c = m.env.program("git");
    c.args(["config", "--global", "user.email", "e2e@example.org"]);
    assert!(c.status().unwrap().success());
    std::fs::write(m.ws.join("moat.yaml"), "dependencies: [git]\n").unwrap();
    let r = m.launch(&[
        "run",
        "--no-sandbox",
        "--",
        "sh",
        "-c",
        "git --version && env | grep GIT_AUTHOR",
    ]);
    assert_eq!(r.code(), 0, "{}", r.stderr());
    r.stdout_has("git version")
        .stdout_has("GIT_AUTHOR_NAME=Moat E2E")
        .stdout_has("GIT_AUTHOR_EMAIL=e2e@example.org");
}
