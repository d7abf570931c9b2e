//! The command line and the socket's life: usage, rule and configuration errors with
//! their exit codes, socket creation rules, an unavailable upstream agent, and stopping
//! when event records cannot be written.

mod common;

use common::client::{Client, FAILURE};
use common::{Filter, Key, rule, wait_until};
use moat_testkit::TestEnv;
use std::io::{BufRead, BufReader, Write};
use std::process::Stdio;
use std::time::Duration;

fn rules(env: &TestEnv) -> String {
    let user = Key::generate(env.path(), "id_ed25519", "ed25519");
    let host = Key::generate(env.path(), "host", "ed25519");
    rule("git.example.com", &user, &[&host], &[])
}

#[test]
fn help_and_version() {
    let env = TestEnv::new();
    for a in ["--help", "-h"] {
        env.run("moat-sshd-filter", &[a])
            .success()
            .stdout_has("serve --socket PATH --rules FILE|-")
            .stdout_has("--upstream PATH");
    }
    env.run("moat-sshd-filter", &["serve", "--help"])
        .success()
        .stdout_has("--socket");
    env.run("moat-sshd-filter", &["--version"])
        .success()
        .stdout_has("moat-sshd-filter 0.");
}

#[test]
fn usage_mistakes_exit_64_with_the_usage() {
    let env = TestEnv::new();
    for args in [
        &[][..],
        &["frobnicate"],
        &["serve"],
        &["serve", "--socket", "s"],
        &["serve", "--rules", "-"],
        &["serve", "--socket", "s", "--rules", "-", "--nope"],
        &["serve", "--socket"],
    ] {
        env.run("moat-sshd-filter", args)
            .exit(64)
            .stderr_has("usage: moat-sshd-filter serve")
            .stdout_empty();
    }
}

#[test]
fn configuration_and_rule_errors_have_their_codes() {
    let mut env = TestEnv::new();
    let sock = env.path().join("f.sock");
    let s = sock.to_str().unwrap();
    // No upstream agent at all.
    env.run_stdin(
        "moat-sshd-filter",
        &["serve", "--socket", s, "--rules", "-"],
        b"",
    )
    .exit(78)
    .stderr_has("SSH_AUTH_SOCK");
    env.env("SSH_AUTH_SOCK", env.path().join("agent.sock"));
    let args = ["serve", "--socket", s, "--rules", "-"];
    env.run_stdin("moat-sshd-filter", &args, b"")
        .exit(65)
        .stderr_has("no ssh records");
    env.run_stdin(
        "moat-sshd-filter",
        &args,
        b"{\"v\":1,\"type\":\"inject\",\"grant\":\"github\"}\n",
    )
    .exit(65)
    .stderr_has("no ssh records");
    env.run_stdin("moat-sshd-filter", &args, b"not json\n")
        .exit(65)
        .stderr_has("line 1");
    env.run_stdin(
        "moat-sshd-filter",
        &args,
        b"{\"v\":1,\"type\":\"ssh\",\"grant\":\"g\"}\n",
    )
    .exit(65);
    env.run(
        "moat-sshd-filter",
        &["serve", "--socket", s, "--rules", "/nonexistent/rules"],
    )
    .exit(66);
    // A regular file where the socket should go is left alone.
    let good = rules(&env);
    std::fs::write(&sock, "precious").unwrap();
    env.run_stdin("moat-sshd-filter", &args, good.as_bytes())
        .exit(78)
        .stderr_has("not a socket");
    assert_eq!(std::fs::read_to_string(&sock).unwrap(), "precious");
    assert!(!sock.exists() || std::fs::metadata(&sock).unwrap().is_file());
}

#[test]
fn a_live_socket_is_kept_and_a_stale_one_replaced() {
    let env = TestEnv::new();
    let good = rules(&env);
    let upstream = env.path().join("no-agent.sock");
    let first = Filter::start(&env, &good, &upstream);
    // A second filter on the same path refuses to take it over.
    let s = first.sock.to_str().unwrap();
    env.run_stdin(
        "moat-sshd-filter",
        &["serve", "--socket", s, "--rules", "-", "--upstream", "/x"],
        good.as_bytes(),
    )
    .exit(69)
    .stderr_has("in use");
    drop(first); // SIGKILL: the socket file stays behind, stale
    let sock = env.path().join("filter.sock");
    assert!(sock.exists());
    let second = Filter::start(&env, &good, &upstream);
    assert_eq!(second.sock, sock);
    Client::connect(&sock); // answers
}

#[test]
fn an_unavailable_upstream_agent_is_a_refusal_not_a_crash() {
    let env = TestEnv::new();
    let f = Filter::start(&env, &rules(&env), &env.path().join("no-agent.sock"));
    for _ in 0..2 {
        let mut c = Client::connect(&f.sock);
        assert_eq!(c.request(&[11]), vec![FAILURE]);
    }
    let list = f.wait_records("ssh_list", 2);
    assert!(
        list[0].str("error").unwrap().contains("connecting"),
        "{list:?}"
    );
}

#[test]
fn the_filter_stops_when_its_records_cannot_be_written() {
    let env = TestEnv::new();
    let sock = env.path().join("f.sock");
    let mut child = env
        .cmd("moat-sshd-filter")
        .args([
            "serve",
            "--rules",
            "-",
            "--upstream",
            "/nonexistent",
            "--socket",
        ])
        .arg(&sock)
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    let mut stdin = child.stdin.take().unwrap();
    stdin.write_all(rules(&env).as_bytes()).unwrap();
    drop(stdin);
    let mut out = BufReader::new(child.stdout.take().unwrap());
    let mut first = String::new();
    out.read_line(&mut first).unwrap();
    assert!(first.contains("\"listening\""), "{first}");
    drop(out); // the audit reader went away
    let mut c = Client::connect(&sock);
    c.send_raw(&[0, 0, 0, 1, 11]);
    assert_eq!(c.read_reply(), None, "no answer without a record");
    assert!(wait_until(Duration::from_secs(10), || matches!(
        child.try_wait(),
        Ok(Some(_))
    )));
    let out = child.wait_with_output().unwrap();
    assert_eq!(out.status.code(), Some(74));
    assert!(String::from_utf8_lossy(&out.stderr).contains("event records"));
    assert!(!sock.exists());
}
