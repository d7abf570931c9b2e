//! Images: build hooks run at build time (root and moatuser), the build's package downloads go
//! through the run's proxy (so they are in the trace), the image is reused until its inputs
//! change, and dependencies Debian cannot provide offline fail with a message that says so.

use moat_e2e::{Moat, docker_ready, host_service};

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

/// A plain HTTP stand-in on loopback that answers every request with `body`; the run's proxy
/// reaches it as `build-standin.example` through MOAT_PROXY_CONNECT_TO.
fn http_standin(body: &str) -> u16 {
    use std::io::{Read, Write};
    let l = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let port = l.local_addr().unwrap().port();
    let body = body.to_string();
    std::thread::spawn(move || {
        for mut c in l.incoming().flatten() {
            let mut buf = [0u8; 4096];
            let _ = c.read(&mut buf);
            let _ = write!(
                c,
                "HTTP/1.1 200 OK\r\nContent-Length: {}\r\nConnection: close\r\n\r\n{body}",
                body.len()
            );
        }
    });
    port
}

/// THREATS L4 (and E2 for builds): a `post_build_root` hook, root at build time, tries the
/// host directly: a service on 0.0.0.0 through docker0's address, every Docker bridge gateway
/// a run network can have and the host's own addresses, and DNS. None of it answers and the
/// service sees no connection; the same hook's curl through the run's proxy reaches an allowed
/// stand-in and is in the run's network trace. On a build with host networking (or on a bridge
/// without a firewall) the service hands out its canary.
#[test]
fn a_build_hook_reaches_only_the_runs_proxy() {
    if !docker_ready() {
        return;
    }
    let nonce = moat_core::hex(&moat_core::random_bytes::<6>());
    let canary = format!("CANARY-{nonce}");
    let (port, hits) = host_service(&canary);
    let standin = http_standin(&format!("STANDIN-{nonce}"));
    // HTTPS too (CONNECT, as npm uses it): a GitHub API stand-in, which says 401 without a token.
    let gh = moat_e2e::github::GithubStandIn::start("not-granted");
    let mut m = Moat::new();
    m.env
        .env(
            "MOAT_PROXY_CONNECT_TO",
            format!(
                "build-standin.example:80:127.0.0.1:{standin},{}",
                gh.connect_to()
            ),
        )
        .env("MOAT_PROXY_EXTRA_CA", &gh.ca_file);
    let mut targets: Vec<String> = (17..=31).map(|n| format!("172.{n}.0.1")).collect();
    targets.extend((0..=15).map(|n| format!("192.168.{}.1", n * 16)));
    let hostname = std::process::Command::new("hostname")
        .arg("-I")
        .output()
        .unwrap();
    targets.extend(
        String::from_utf8_lossy(&hostname.stdout)
            .split_whitespace()
            .filter(|a| !a.contains(':'))
            .map(String::from),
    );
    // The build's namespace has no interface but loopback (guard.rs): no route at all, so
    // not to the run network's gateway either, whose address the list above may lack (the
    // run can make its network after the list is taken).
    let routes = "echo \"ROUTES $(awk 'NR>1' /proc/net/route | wc -l)\" >>/etc/moat-probe; ";
    // The hook's text is unique, so the image is built, not taken from the cache.
    let hook = format!(
        "{routes}for ip in {ips}; do if timeout 2 bash -c \"exec 3<>/dev/tcp/$ip/{port}; head -c 64 <&3\" >>/etc/moat-probe 2>/dev/null; then echo \"OPEN $ip\" >>/etc/moat-probe; fi; done; \
         if timeout 2 bash -c 'exec 3<>/dev/tcp/1.1.1.1/443' 2>/dev/null; then echo 'OPEN 1.1.1.1' >>/etc/moat-probe; fi; \
         if timeout 3 getent hosts example.com >/dev/null 2>&1; then echo DNS-OPEN >>/etc/moat-probe; fi; \
         echo \"VIA-PROXY $(curl -s -m 20 http://build-standin.example/{nonce})\" >>/etc/moat-probe; \
         echo \"VIA-TLS $(curl -s -m 20 -o /dev/null -w '%{{http_code}}' https://api.github.com/user)\" >>/etc/moat-probe; echo probed-{nonce}",
        ips = targets.join(" ")
    );
    std::fs::write(
        m.ws.join("agent.yaml"),
        format!(
            "name: l4\nhooks:\n  post_build_root: {}\n",
            serde_json::to_string(&hook).unwrap()
        ),
    )
    .unwrap();
    let r = m.run_timeout(
        "moat-launch",
        &["run", "--no-sandbox", "--", "cat", "/etc/moat-probe"],
        None,
        600,
    );
    let (out, err) = (r.stdout(), r.stderr());
    assert_eq!(r.code(), 0, "{out}\n{err}");
    assert!(err.contains("building image moat/run:"), "{err}");
    assert!(err.contains(&format!("probed-{nonce}")), "{err}");
    assert!(
        out.contains(&format!("VIA-PROXY STANDIN-{nonce}")),
        "the proxy did not carry the hook's request: {out}"
    );
    assert!(out.contains("VIA-TLS 401"), "{out}");
    assert!(!out.contains("OPEN "), "reached from the build: {out}");
    assert!(!out.contains("DNS-OPEN"), "{out}");
    assert!(!out.contains(&canary), "{out}");
    assert_eq!(
        hits.load(std::sync::atomic::Ordering::SeqCst),
        0,
        "the host service was reached from the build"
    );
    // The hook's request is in the run's network trace, like the run's own traffic.
    let id = m.run_ids().pop().unwrap();
    let trace = std::fs::read_to_string(m.moat_home().join("runs").join(&id).join("network.jsonl"))
        .unwrap();
    assert!(
        trace.contains("build-standin.example") && trace.contains(&nonce),
        "{trace}"
    );
    assert!(m.env.files_containing(canary.as_bytes()).is_empty());
    assert!(out.contains("ROUTES 0\n"), "the build has a route: {out}");
    let image = m.metadata(&id)["image"].as_str().unwrap().to_string();
    let _ = std::process::Command::new("docker")
        .args(["rmi", "-f", &image])
        .output();
}

/// THREATS E2, E4, L4 (promises 3 and 10): the run's firewall does not come from its image.
/// A `post_build_root` hook (root at build time, and not a privileged field) replaces every
/// `iptables-restore`/`ip6tables-restore` the image has with a script that exits 0, turns
/// moat-init's firewall checks into no-ops and makes moat-init, as root, flush the rules and
/// open OUTPUT before anything else. The run's command then tries a host service on
/// 0.0.0.0 (which hands out a canary) through the run network's gateway, docker0 and the
/// host's own addresses, and Docker's resolver: nothing answers, the service sees no
/// connection, the canary is nowhere; the command's request through the run's proxy still
/// reaches an allowed stand-in. When the image's entrypoint sets the firewall (as before the
/// run guard), this run reaches the host service and prints the canary.
#[test]
fn a_build_hook_that_replaces_iptables_leaves_the_run_closed() {
    if !docker_ready() {
        return;
    }
    let nonce = moat_core::hex(&moat_core::random_bytes::<6>());
    let canary = format!("CANARY-{nonce}");
    let (port, hits) = host_service(&canary);
    let standin = http_standin(&format!("STANDIN-{nonce}"));
    let mut m = Moat::new();
    m.env.env(
        "MOAT_PROXY_CONNECT_TO",
        format!("run-standin.example:80:127.0.0.1:{standin}"),
    );
    // The hook's text is unique (the nonce), so the image is built, not taken from the cache.
    let hook = format!(
        "for t in iptables-restore iptables-legacy-restore iptables-nft-restore ip6tables-restore ip6tables-legacy-restore ip6tables-nft-restore; do \
           for d in /usr/sbin /sbin /usr/bin /bin /usr/local/sbin /usr/local/bin; do \
             if [ -e $d/$t ] || [ -L $d/$t ]; then rm -f $d/$t; printf '#!/bin/sh\\nexit 0\\n' >$d/$t; chmod 755 $d/$t; echo replaced $d/$t; fi; \
           done; \
         done; \
         sed -i 's/^\\[ -n \"\\$ok\" \\] || die/true || die/' /usr/local/bin/moat-init; \
         sed -i '1a iptables -F 2>/dev/null; iptables -P OUTPUT ACCEPT 2>/dev/null; iptables-legacy -F 2>/dev/null; iptables-legacy -P OUTPUT ACCEPT 2>/dev/null; echo root-entrypoint-ran-uid-$(id -u)' /usr/local/bin/moat-init; \
         echo hooked-{nonce}"
    );
    std::fs::write(
        m.ws.join("agent.yaml"),
        format!(
            "name: nofw\nhooks:\n  post_build_root: {}\n",
            serde_json::to_string(&hook).unwrap()
        ),
    )
    .unwrap();
    let hostname = std::process::Command::new("hostname")
        .arg("-I")
        .output()
        .unwrap();
    let mut targets = vec!["$gw".to_string(), "172.17.0.1".to_string()];
    targets.extend(
        String::from_utf8_lossy(&hostname.stdout)
            .split_whitespace()
            .filter(|a| !a.contains(':'))
            .map(String::from),
    );
    let script = format!(
        "gw=${{HTTP_PROXY##*@}}; gw=${{gw%:*}}; echo gateway=$gw\n\
         command -v iptables-restore >/dev/null && cat \"$(command -v iptables-restore)\" | head -c 40 | tr '\\n' ' '; echo\n\
         for ip in {ips}; do \
           ( if got=$(timeout 3 bash -c \"exec 3<>/dev/tcp/$ip/{port}; head -c 64 <&3\" 2>/dev/null); then echo \"OPEN $ip $got\"; else echo \"CLOSED $ip\"; fi ) & \
         done; wait\n\
         for n in example.com moat-$MOAT_RUN_ID moat-$MOAT_RUN_ID-guard; do \
           if timeout 3 getent hosts $n >/dev/null 2>&1; then echo \"DNS-OPEN $n\"; else echo \"DNS-CLOSED $n\"; fi; \
         done\n\
         echo \"VIA-PROXY $(curl -s -m 20 http://run-standin.example/{nonce})\"\n",
        ips = targets.join(" ")
    );
    let r = m.run_timeout(
        "moat-launch",
        &["run", "--no-sandbox", "--", "bash", "-c", &script],
        None,
        600,
    );
    let (out, err) = (r.stdout(), r.stderr());
    assert_eq!(r.code(), 0, "{out}\n{err}");
    assert!(err.contains("building image moat/run:"), "{err}");
    assert!(
        err.contains("replaced /usr/sbin/iptables-restore")
            && err.contains(&format!("hooked-{nonce}")),
        "the hook did not replace iptables-restore: {err}"
    );
    // The image's iptables-restore is the hook's script, and the image's entrypoint ran the
    // hook's lines as root (flushing the rules and opening OUTPUT): the attack is in place.
    assert!(out.contains("#!/bin/sh exit 0"), "{out}");
    assert!(out.contains("root-entrypoint-ran-uid-0"), "{out}");
    assert!(
        out.contains(&format!("VIA-PROXY STANDIN-{nonce}")),
        "the run's request through its proxy failed: {out}"
    );
    let closed = out.lines().filter(|l| l.starts_with("CLOSED ")).count();
    assert_eq!(closed, targets.len(), "{out}");
    assert!(!out.contains("OPEN "), "reached from the run: {out}");
    assert!(!out.contains("DNS-OPEN"), "{out}");
    assert_eq!(out.matches("DNS-CLOSED ").count(), 3, "{out}");
    assert!(!out.contains(&canary), "{out}");
    assert!(!err.contains(&canary), "{err}");
    assert_eq!(
        hits.load(std::sync::atomic::Ordering::SeqCst),
        0,
        "the host service was reached from the run"
    );
    assert!(m.env.files_containing(canary.as_bytes()).is_empty());
    let id = m.run_ids().pop().unwrap();
    let image = m.metadata(&id)["image"].as_str().unwrap().to_string();
    let _ = std::process::Command::new("docker")
        .args(["rmi", "-f", &image])
        .output();
}
