//! The filter between real OpenSSH programs: `ssh`, `git` and `ssh-add` as clients, a real
//! `ssh-agent` upstream, and two `sshd`s on loopback with different host keys, one of them
//! granted. Grants are on host keys; both servers listen on 127.0.0.1.

mod common;

use common::{Agent, Filter, Key, Sshd, rule, run_limited, ssh, ssh_options, user};
use moat_core::jsonl::Record;
use moat_testkit::TestEnv;
use std::path::PathBuf;
use std::time::Duration;

const LIMIT: Duration = Duration::from_secs(30);

struct World {
    env: TestEnv,
    ed: Key,
    rsa: Key,
    agent: Agent,
    /// Granted (`a.test`).
    a: Sshd,
    /// Not granted.
    b: Sshd,
    known_hosts: PathBuf,
    filter: Filter,
}

/// `grant_rsa`: whether the RSA key is granted for A too (the ed25519 key always is).
fn world(a_host_key: &str, grant_rsa: bool) -> World {
    world_with(a_host_key, |_, ed, rsa, a, _| {
        let mut rules = rule("a.test", ed, &[&a.host_key], &[]);
        if grant_rsa {
            rules += &rule("a.test", rsa, &[&a.host_key], &[]);
        }
        rules
    })
}

/// A world whose rules come from `make_rules(env, ed25519 key, RSA key, sshd A, agent)`.
fn world_with(
    a_host_key: &str,
    make_rules: impl Fn(&TestEnv, &Key, &Key, &Sshd, &Agent) -> String,
) -> World {
    let env = TestEnv::new();
    let d = env.path().to_path_buf();
    let ed = Key::generate(&d, "id_ed25519", "ed25519");
    let rsa = Key::generate(&d, "id_rsa", "rsa");
    let agent = Agent::start(&d, &[&ed, &rsa]);
    let a = Sshd::start(&d, "sshd_a", a_host_key, &[&ed, &rsa]);
    let b = Sshd::start(&d, "sshd_b", "ecdsa", &[&ed, &rsa]);
    // The client trusts both servers: only the filter stands between B and the keys.
    let known_hosts = d.join("known_hosts");
    std::fs::write(
        &known_hosts,
        format!("{}\n{}\n", a.known_hosts_line(), b.known_hosts_line()),
    )
    .unwrap();
    let rules = make_rules(&env, &ed, &rsa, &a, &agent);
    let filter = Filter::start(&env, &rules, &agent.sock);
    World {
        env,
        ed,
        rsa,
        agent,
        a,
        b,
        known_hosts,
        filter,
    }
}

impl World {
    /// `ssh ... root@127.0.0.1 CMD` through the filter, optionally with one identity only.
    fn ssh(&self, sshd: &Sshd, identity: Option<&Key>, cmd: &str) -> (i32, String, String) {
        let mut c = ssh(&self.env, &self.filter.sock, &self.known_hosts, sshd.port);
        if let Some(k) = identity {
            c.arg("-o")
                .arg(format!("IdentityFile={}", k.pub_path.display()))
                .arg("-o")
                .arg("IdentitiesOnly=yes");
        }
        c.arg(format!("{}@127.0.0.1", user())).arg(cmd);
        run_limited(&mut c, LIMIT)
    }

    fn of_kind(&self, kind: &str) -> Vec<Record> {
        self.filter
            .settled_records()
            .into_iter()
            .filter(|r| r.kind == kind)
            .collect()
    }
}

fn allowed(r: &Record) -> bool {
    r.get("allowed") == Some(&serde_json::json!(true))
}

#[test]
fn ssh_through_the_filter_reaches_the_granted_host() {
    let w = world("ed25519", true);
    let (code, out, err) = w.ssh(&w.a, Some(&w.ed), "echo hello-from-a");
    assert_eq!(code, 0, "ssh to the granted host failed: {err}");
    assert_eq!(out.trim(), "hello-from-a");

    let binds = w.of_kind("ssh_bind");
    assert!(binds.iter().all(allowed), "{binds:?}");
    assert_eq!(binds[0].str("host"), Some("a.test"));
    assert_eq!(
        binds[0].str("host_key"),
        Some(w.a.host_key.fingerprint.as_str())
    );
    let signs = w.of_kind("ssh_sign");
    assert_eq!(signs.len(), 1, "{signs:?}");
    assert!(allowed(&signs[0]));
    assert_eq!(signs[0].str("host"), Some("a.test"));
    assert_eq!(signs[0].str("fingerprint"), Some(w.ed.fingerprint.as_str()));
    assert_eq!(signs[0].str("algorithm"), Some("ssh-ed25519"));
    assert_eq!(signs[0].str("user"), Some(user().as_str()));
    assert!(!w.of_kind("ssh_list").is_empty());
    let log = w.a.log();
    assert!(
        log.contains(&format!("Accepted publickey for {}", user())),
        "sshd A log: {log}"
    );
}

#[test]
fn rsa_keys_sign_with_sha2_through_the_filter() {
    // A's host key is RSA too, so the binding is verified with an rsa-sha2 signature.
    let w = world("rsa", true);
    let (code, out, err) = w.ssh(&w.a, Some(&w.rsa), "echo rsa-ok");
    assert_eq!(code, 0, "ssh with the RSA key failed: {err}");
    assert_eq!(out.trim(), "rsa-ok");
    let signs = w.of_kind("ssh_sign");
    assert_eq!(signs.len(), 1, "{signs:?}");
    assert!(allowed(&signs[0]), "{signs:?}");
    assert_eq!(
        signs[0].str("fingerprint"),
        Some(w.rsa.fingerprint.as_str())
    );
    let alg = signs[0].str("algorithm").unwrap();
    assert!(alg == "rsa-sha2-512" || alg == "rsa-sha2-256", "{alg}");
    let flags = signs[0].get("flags").and_then(|f| f.as_u64()).unwrap();
    assert_ne!(flags & 6, 0, "the client's SHA-2 flag reached the agent");
    let log = w.a.log();
    assert!(
        log.contains("Accepted publickey")
            && (log.contains("rsa-sha2-512") || log.contains("rsa-sha2-256")),
        "sshd A log: {log}"
    );
}

#[test]
fn git_clone_over_ssh_through_the_filter() {
    let w = world("ed25519", false);
    let d = w.env.path();
    let git = |args: &[&str], dir: &std::path::Path| {
        let mut c = w.env.program("git");
        c.args(args)
            .current_dir(dir)
            .env("GIT_AUTHOR_NAME", "t")
            .env("GIT_AUTHOR_EMAIL", "t@example.com")
            .env("GIT_COMMITTER_NAME", "t")
            .env("GIT_COMMITTER_EMAIL", "t@example.com");
        c
    };
    let bare = d.join("repo.git");
    let work = d.join("work");
    std::fs::create_dir_all(&work).unwrap();
    let init = ["init", "-q", "--bare", bare.to_str().unwrap()];
    assert_eq!(run_limited(&mut git(&init, d), LIMIT).0, 0);
    std::fs::write(work.join("README"), "granted content\n").unwrap();
    for args in [
        &["init", "-q", "-b", "main"][..],
        &["add", "README"],
        &["commit", "-q", "-m", "first"],
        &["push", "-q", bare.to_str().unwrap(), "main"],
    ] {
        let (code, _, err) = run_limited(&mut git(args, &work), LIMIT);
        assert_eq!(code, 0, "git {args:?}: {err}");
    }
    let ssh_cmd = format!(
        "ssh {}",
        ssh_options(&w.filter.sock, &w.known_hosts).join(" ")
    );
    let url = format!("ssh://{}@127.0.0.1:{}{}", user(), w.a.port, bare.display());
    let (code, _, err) = run_limited(
        git(&["clone", "-q", "-b", "main", &url, "clone"], d).env("GIT_SSH_COMMAND", &ssh_cmd),
        LIMIT,
    );
    assert_eq!(code, 0, "git clone over ssh failed: {err}");
    assert_eq!(
        std::fs::read_to_string(d.join("clone/README")).unwrap(),
        "granted content\n"
    );
    // The same clone from the other server is refused.
    let url_b = format!("ssh://{}@127.0.0.1:{}{}", user(), w.b.port, bare.display());
    let (code, _, err) = run_limited(
        git(&["clone", "-q", &url_b, "clone-b"], d).env("GIT_SSH_COMMAND", &ssh_cmd),
        LIMIT,
    );
    assert_ne!(code, 0, "git clone from the ungranted server succeeded");
    assert!(err.contains("Permission denied"), "{err}");
    assert!(
        w.of_kind("ssh_sign")
            .iter()
            .all(|r| r.str("host") == Some("a.test"))
    );
}

#[test]
fn the_other_server_is_refused_though_the_real_agent_would_sign() {
    let w = world("ed25519", true);
    // B is a real server the client trusts, but no grant pins its host key.
    let (code, _, err) = w.ssh(&w.b, None, "true");
    assert_ne!(code, 0, "ssh to the ungranted server succeeded");
    assert!(err.contains("Permission denied"), "{err}");
    let binds = w.of_kind("ssh_bind");
    let b_bind = binds
        .iter()
        .find(|r| r.str("host_key") == Some(w.b.host_key.fingerprint.as_str()))
        .expect("a record of B's binding");
    assert!(!allowed(b_bind));
    assert!(
        b_bind.str("reason").unwrap().contains("not pinned"),
        "{b_bind:?}"
    );
    // Its connection was offered no keys, and nothing was signed.
    let lists = w.of_kind("ssh_list");
    let conn = b_bind.get("conn").unwrap();
    let b_list: Vec<&Record> = lists
        .iter()
        .filter(|r| r.get("conn") == Some(conn))
        .collect();
    assert!(!b_list.is_empty());
    assert!(
        b_list
            .iter()
            .all(|r| r.get("keys").unwrap().as_array().unwrap().is_empty())
    );
    assert!(w.of_kind("ssh_sign").iter().all(|r| !allowed(r)));
    assert!(!w.b.log().contains("Accepted publickey"), "{}", w.b.log());

    // Directly against the real agent, the same ssh gets in: the refusal is the filter's.
    let mut c = ssh(&w.env, &w.agent.sock, &w.known_hosts, w.b.port);
    c.arg(format!("{}@127.0.0.1", user())).arg("true");
    assert_eq!(run_limited(&mut c, LIMIT).0, 0);

    // After B, A still works through the same filter.
    let (code, _, err) = w.ssh(&w.a, None, "true");
    assert_eq!(code, 0, "{err}");
}

#[test]
fn a_changed_host_key_on_the_granted_address_is_refused() {
    // The grant pins A's key; a server with another key on the same name and port the
    // client trusts (say, its known_hosts was changed in the container) gets nothing.
    let w = world("ed25519", true);
    let kh = w.env.path().join("known_hosts_b_as_a");
    std::fs::write(
        &kh,
        format!("[127.0.0.1]:{} {}\n", w.b.port, w.b.host_key.pub_key()),
    )
    .unwrap();
    let mut c = ssh(&w.env, &w.filter.sock, &kh, w.b.port);
    c.arg(format!("{}@127.0.0.1", user())).arg("true");
    let (code, _, err) = run_limited(&mut c, LIMIT);
    assert_ne!(code, 0);
    assert!(err.contains("Permission denied"), "{err}");
}

#[test]
fn ssh_add_sees_only_granted_keys_and_cannot_change_them() {
    let w = world("ed25519", false);
    let add = |args: &[&str]| {
        let mut c = w.env.program("ssh-add");
        c.args(args).env("SSH_AUTH_SOCK", &w.filter.sock);
        run_limited(&mut c, LIMIT)
    };
    let (code, out, err) = add(&["-l"]);
    assert_eq!(code, 0, "{err}");
    assert_eq!(out.lines().count(), 1, "{out}");
    assert!(out.contains(&w.ed.fingerprint), "{out}");
    assert!(!out.contains(&w.rsa.fingerprint), "{out}");
    let list = w.of_kind("ssh_list");
    assert_eq!(list[0].get("offered"), Some(&serde_json::json!(2)));
    assert_eq!(
        list[0].get("keys"),
        Some(&serde_json::json!([w.ed.fingerprint]))
    );

    let extra = Key::generate(w.env.path(), "id_extra", "ed25519");
    let (code, _, _) = add(&[extra.path.to_str().unwrap()]);
    assert_ne!(code, 0, "ssh-add KEY through the filter succeeded");
    let (code, _, _) = add(&["-d", w.ed.pub_path.to_str().unwrap()]);
    assert_ne!(code, 0, "ssh-add -d through the filter succeeded");
    let (code, _, _) = add(&["-D"]);
    assert_ne!(code, 0, "ssh-add -D through the filter succeeded");
    let refused: Vec<String> = w
        .of_kind("ssh_refused")
        .iter()
        .map(|r| r.str("request").unwrap().to_string())
        .collect();
    assert!(refused.contains(&"add_identity".to_string()), "{refused:?}");
    assert!(
        refused.contains(&"remove_identity".to_string()),
        "{refused:?}"
    );
    assert!(
        refused.contains(&"remove_all_identities".to_string()),
        "{refused:?}"
    );
    // The real agent is untouched.
    let mut c = w.env.program("ssh-add");
    c.arg("-l").env("SSH_AUTH_SOCK", &w.agent.sock);
    let (_, out, _) = run_limited(&mut c, LIMIT);
    assert_eq!(out.lines().count(), 2, "{out}");
}

#[test]
fn sigterm_stops_the_filter_and_removes_its_socket() {
    let mut w = world("ed25519", false);
    let sock = w.filter.sock.clone();
    assert!(sock.exists());
    let status = w.filter.terminate().expect("the filter exits on SIGTERM");
    assert_eq!(status.code(), Some(0), "{}", w.filter.stderr());
    assert!(!sock.exists(), "the socket is removed");
    let _ = (&w.rsa, &w.b);
}

#[test]
fn moat_grant_rules_feed_the_filter() {
    // The real pipeline: `moat-grant ssh` pins A's host key for the ed25519 key, and
    // `moat-grant rules ssh:127.0.0.1 | moat-sshd-filter serve --rules -`.
    // Needs moat-grant built: the workspace run (`cargo nextest run --workspace`) builds it,
    // and testkit's `bin` fails with that hint otherwise. A skip would hide a gap in CI.
    moat_testkit::bin("moat-grant");
    let w = world_with("ed25519", |env, ed, _, a, agent| {
        let grant = env
            .cmd("moat-grant")
            .args([
                "ssh",
                "--host",
                "127.0.0.1",
                "--key",
                &ed.fingerprint,
                "--host-key",
            ])
            .arg(&a.host_key.pub_path)
            .env("SSH_AUTH_SOCK", &agent.sock)
            .stdin(std::process::Stdio::null())
            .output()
            .expect("moat-grant");
        assert!(
            grant.status.success(),
            "moat-grant ssh: {}",
            String::from_utf8_lossy(&grant.stderr)
        );
        let rules = env.run("moat-grant", &["rules", "ssh:127.0.0.1"]);
        rules.success();
        rules.stdout()
    });
    let (code, _, err) = w.ssh(&w.a, None, "true");
    assert_eq!(code, 0, "ssh to the granted host failed: {err}");
    let signs = w.of_kind("ssh_sign");
    assert!(signs.iter().any(|r| allowed(r)
        && r.str("host") == Some("127.0.0.1")
        && r.str("fingerprint") == Some(w.ed.fingerprint.as_str())));
    let (code, _, err) = w.ssh(&w.b, None, "true");
    assert_ne!(code, 0, "ssh to the ungranted host succeeded");
    assert!(err.contains("Permission denied"), "{err}");
    assert!(
        w.of_kind("ssh_sign")
            .iter()
            .filter(|r| allowed(r))
            .all(|r| r.str("host") == Some("127.0.0.1"))
    );
}
