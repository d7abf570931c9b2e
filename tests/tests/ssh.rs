//! An `ssh:HOST` grant: the run gets moat-sshd-filter's socket at /run/moat/ssh/agent.sock
//! (SSH_AUTH_SOCK), which shows only the granted key of the user's real agent.

use moat_e2e::{Moat, docker_ready, run_with_deadline};
use std::process::Command;

#[test]
fn an_ssh_grant_exposes_only_the_granted_key() {
    if !docker_ready() {
        return;
    }
    let mut m = Moat::new();
    let dir = m.env.path().to_path_buf();
    let agent_sock = dir.join("agent.sock");
    let agent = Command::new("ssh-agent")
        .arg("-D")
        .arg("-a")
        .arg(&agent_sock)
        .spawn();
    let Ok(mut agent) = agent else {
        eprintln!("SKIPPED: no ssh-agent");
        return;
    };
    for _ in 0..100 {
        if agent_sock.exists() {
            break;
        }
        std::thread::sleep(std::time::Duration::from_millis(50));
    }
    for k in ["granted", "other"] {
        let st = Command::new("ssh-keygen")
            .args(["-q", "-t", "ed25519", "-N", "", "-C", k, "-f"])
            .arg(dir.join(k))
            .status()
            .unwrap();
        assert!(st.success());
        let st = Command::new("ssh-add")
            .arg("-q")
            .arg(dir.join(k))
            .env("SSH_AUTH_SOCK", &agent_sock)
            .status()
            .unwrap();
        assert!(st.success());
    }
    let fp = Command::new("ssh-keygen")
        .arg("-lf")
        .arg(dir.join("granted.pub"))
        .output()
        .unwrap();
    let fp = String::from_utf8_lossy(&fp.stdout)
        .split_whitespace()
        .nth(1)
        .unwrap()
        .to_string();
    let st = Command::new("ssh-keygen")
        .args(["-q", "-t", "ed25519", "-N", "", "-f"])
        .arg(dir.join("hostkey"))
        .status()
        .unwrap();
    assert!(st.success());
    let hk = std::fs::read_to_string(dir.join("hostkey.pub")).unwrap();
    let hk: Vec<&str> = hk.split_whitespace().take(2).collect();
    std::fs::write(
        dir.join("known_hosts"),
        format!("github.com {} {}\n", hk[0], hk[1]),
    )
    .unwrap();
    m.env.env("SSH_AUTH_SOCK", &agent_sock);

    let mut c = m.env.cmd("moat-grant");
    c.args(["ssh", "--host", "github.com", "--key", &fp, "--host-key"])
        .arg(dir.join("known_hosts"))
        .arg("--no-validate");
    let g = run_with_deadline(c, "moat-grant ssh".into(), None, 60);
    assert_eq!(g.code(), 0, "{}", g.stderr());

    let r = m.launch(&[
        "run",
        "--no-sandbox",
        "--grant",
        "ssh:github.com",
        "--",
        "sh",
        "-c",
        "echo sock=$SSH_AUTH_SOCK; ssh-add -l",
    ]);
    let _ = agent.kill();
    let _ = agent.wait();
    let out = r.stdout();
    assert_eq!(r.code(), 0, "{out}\n{}", r.stderr());
    assert!(out.contains("sock=/run/moat/ssh/agent.sock"), "{out}");
    assert!(out.contains(&fp) && out.contains("granted"), "{out}");
    assert!(!out.contains("other"), "an ungranted key is visible: {out}");
}
