//! An `ssh:HOST` grant: the run gets moat-sshd-filter's socket at /run/moat/ssh/agent.sock
//! (SSH_AUTH_SOCK), which shows only the granted key of the user's real agent, and `ssh`
//! (and git over SSH) reaches port 22 of the granted host through the proxy's tunnel,
//! checking the host key the grant pinned.

use moat_e2e::{Moat, docker_ready, run_with_deadline};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

/// Kills and reaps a helper process (ssh-agent, sshd) when the test ends, pass or fail.
struct Reap(Child);
impl Drop for Reap {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

fn ok(c: &mut Command) -> String {
    let o = c.output().unwrap();
    assert!(
        o.status.success(),
        "{c:?}: {}",
        String::from_utf8_lossy(&o.stderr)
    );
    String::from_utf8_lossy(&o.stdout).into_owned()
}

fn wait_for(limit: Duration, mut f: impl FnMut() -> bool) -> bool {
    let end = Instant::now() + limit;
    while Instant::now() < end {
        if f() {
            return true;
        }
        std::thread::sleep(Duration::from_millis(50));
    }
    false
}

/// An ssh-agent holding two fresh ed25519 keys, `granted` and `other`; the agent, its
/// socket and the granted key's fingerprint.
fn agent_with_two_keys(dir: &Path) -> (Reap, PathBuf, String) {
    let sock = dir.join("agent.sock");
    let agent = Command::new("ssh-agent")
        .arg("-D")
        .arg("-a")
        .arg(&sock)
        .stdout(Stdio::null())
        .spawn()
        .expect("ssh-agent (Debian package openssh-client)");
    let agent = Reap(agent);
    assert!(wait_for(Duration::from_secs(5), || sock.exists()));
    for k in ["granted", "other"] {
        ok(Command::new("ssh-keygen")
            .args(["-q", "-t", "ed25519", "-N", "", "-C", k, "-f"])
            .arg(dir.join(k)));
        ok(Command::new("ssh-add")
            .arg("-q")
            .arg(dir.join(k))
            .env("SSH_AUTH_SOCK", &sock));
    }
    let fp = ok(Command::new("ssh-keygen")
        .arg("-lf")
        .arg(dir.join("granted.pub")));
    let fp = fp.split_whitespace().nth(1).unwrap().to_string();
    (agent, sock, fp)
}

/// A host key, and a known_hosts file naming `host` with it; the public key line.
fn host_key(dir: &Path, host: &str) -> String {
    ok(Command::new("ssh-keygen")
        .args(["-q", "-t", "ed25519", "-N", "", "-f"])
        .arg(dir.join("hostkey")));
    let hk = std::fs::read_to_string(dir.join("hostkey.pub")).unwrap();
    let hk: Vec<&str> = hk.split_whitespace().take(2).collect();
    std::fs::write(
        dir.join("known_hosts"),
        format!("{host} {} {}\n", hk[0], hk[1]),
    )
    .unwrap();
    format!("{} {}", hk[0], hk[1])
}

fn grant_ssh(m: &Moat, dir: &Path, host: &str, fp: &str) {
    let mut c = m.env.cmd("moat-grant");
    c.args(["ssh", "--host", host, "--key", fp, "--host-key"])
        .arg(dir.join("known_hosts"))
        .arg("--no-validate");
    let g = run_with_deadline(c, "moat-grant ssh".into(), None, 60);
    assert_eq!(g.code(), 0, "{}", g.stderr());
}

#[test]
fn an_ssh_grant_exposes_only_the_granted_key() {
    if !docker_ready() {
        return;
    }
    let mut m = Moat::new();
    let dir = m.env.path().to_path_buf();
    let (_agent, agent_sock, fp) = agent_with_two_keys(&dir);
    host_key(&dir, "github.com");
    m.env.env("SSH_AUTH_SOCK", &agent_sock);
    grant_ssh(&m, &dir, "github.com", &fp);

    let r = m.launch_sh(
        &["--grant", "ssh:github.com"],
        "echo sock=$SSH_AUTH_SOCK; ssh-add -l",
    );
    let out = r.stdout();
    assert_eq!(r.code(), 0, "{out}\n{}", r.stderr());
    assert!(out.contains("sock=/run/moat/ssh/agent.sock"), "{out}");
    assert!(out.contains(&fp) && out.contains("granted"), "{out}");
    assert!(!out.contains("other"), "an ungranted key is visible: {out}");
}

#[test]
fn git_over_ssh_reaches_the_granted_host_through_the_proxy_tunnel() {
    if !docker_ready() {
        return;
    }
    let mut m = Moat::new();
    let dir = m.env.path().to_path_buf();
    let (_agent, agent_sock, fp) = agent_with_two_keys(&dir);
    host_key(&dir, "git.test");

    // A bare repository with one commit, served by a real sshd on loopback that accepts
    // only the granted key.
    let user = ok(Command::new("id").arg("-un")).trim().to_string();
    let repo = dir.join("repo.git");
    ok(Command::new("git")
        .args(["init", "-q", "--bare"])
        .arg(&repo));
    let seed = dir.join("seed");
    ok(Command::new("git").args(["init", "-q"]).arg(&seed));
    std::fs::write(seed.join("README"), "over ssh\n").unwrap();
    let git = |args: &[&str]| {
        ok(Command::new("git")
            .arg("-C")
            .arg(&seed)
            .args(["-c", "user.name=t", "-c", "user.email=t@t"])
            .args(args))
    };
    git(&["add", "README"]);
    git(&["commit", "-qm", "tunnelled-commit-subject"]);
    git(&["push", "-q", repo.to_str().unwrap(), "HEAD:refs/heads/main"]);
    ok(Command::new("git").arg("--git-dir").arg(&repo).args([
        "symbolic-ref",
        "HEAD",
        "refs/heads/main",
    ]));
    std::fs::copy(dir.join("granted.pub"), dir.join("authorized_keys")).unwrap();
    let _ = std::fs::create_dir_all("/run/sshd");
    let port = std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port();
    std::fs::write(
        dir.join("sshd_config"),
        format!(
            "ListenAddress 127.0.0.1\nPort {port}\nHostKey {}\nPidFile none\n\
             AuthorizedKeysFile {}\nStrictModes no\nUsePAM no\n\
             PermitRootLogin prohibit-password\nPasswordAuthentication no\n\
             KbdInteractiveAuthentication no\nLogLevel VERBOSE\n",
            dir.join("hostkey").display(),
            dir.join("authorized_keys").display()
        ),
    )
    .unwrap();
    let log = dir.join("sshd.log");
    let sshd = Command::new("/usr/sbin/sshd")
        .args(["-D", "-e", "-f"])
        .arg(dir.join("sshd_config"))
        .stderr(std::fs::File::create(&log).unwrap())
        .spawn()
        .expect("sshd (Debian package openssh-server)");
    let _sshd = Reap(sshd);
    assert!(
        wait_for(Duration::from_secs(10), || std::net::TcpStream::connect((
            "127.0.0.1",
            port
        ))
        .is_ok()),
        "sshd did not start: {}",
        std::fs::read_to_string(&log).unwrap_or_default()
    );

    m.env.env("SSH_AUTH_SOCK", &agent_sock);
    m.env.env(
        "MOAT_PROXY_CONNECT_TO",
        format!("git.test:22:127.0.0.1:{port}"),
    );
    grant_ssh(&m, &dir, "git.test", &fp);
    std::fs::write(m.ws.join("moat.yaml"), "dependencies: [git]\n").unwrap();
    let script = format!(
        "git clone -q {user}@git.test:{} /tmp/clone && git -C /tmp/clone log --format=SUBJECT=%s; \
         ssh -o BatchMode=yes {user}@elsewhere.test true; echo other=$?",
        repo.display()
    );
    let r = m.run_timeout(
        "moat-launch",
        &[
            "run",
            "--no-sandbox",
            "--grant",
            "ssh:git.test",
            "--",
            "sh",
            "-c",
            &script,
        ],
        None,
        600,
    );
    let (out, err) = (r.stdout(), r.stderr());
    let sshd_log = std::fs::read_to_string(&log).unwrap_or_default();
    assert_eq!(r.code(), 0, "{out}\n{err}\nsshd: {sshd_log}");
    assert!(
        out.contains("SUBJECT=tunnelled-commit-subject"),
        "{out}\n{err}\nsshd: {sshd_log}"
    );
    // The granted key signed, checked by sshd; the other key never did.
    assert!(
        sshd_log.contains("Accepted publickey") && sshd_log.contains(&fp),
        "{sshd_log}"
    );
    // A host outside the grants is refused with a message, not a hang.
    assert!(out.contains("other=255"), "{out}");
    assert!(
        err.contains("ssh to elsewhere.test is not granted"),
        "{err}"
    );
    // The proxy traced the tunnel with its byte counts.
    let id = m.run_ids().pop().unwrap();
    let trace = std::fs::read_to_string(m.moat_home().join("runs").join(&id).join("network.jsonl"))
        .unwrap();
    let rec: serde_json::Value = trace
        .lines()
        .map(|l| serde_json::from_str::<serde_json::Value>(l).unwrap())
        .find(|v| v["url"] == "tcp://git.test:22")
        .unwrap_or_else(|| panic!("no tunnel in the trace: {trace}"));
    assert_eq!(rec["status"], 200, "{rec}");
    assert!(rec["bytes_out"].as_u64().unwrap() > 1000, "{rec}");
}
