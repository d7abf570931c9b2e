//! Prompts on a real pseudo-terminal (script(1) from util-linux): the secret is read with
//! echo off, and a choice among agent keys is asked for when there is a terminal.

mod common;

use common::*;
use moat_testkit::TestEnv;
use std::io::Write;
use std::process::Stdio;
use std::time::Duration;

/// Run `cmd` under script(1) and type `input` after a pause (once the prompt is up).
fn on_terminal(t: &TestEnv, cmd: &str, envs: &[(&str, &str)], input: &str) -> (i32, String) {
    let mut c = t.program("timeout");
    c.args(["30", "script", "-qec", cmd, "/dev/null"])
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped());
    for (k, v) in envs {
        c.env(k, v);
    }
    let mut child = c.spawn().expect("script (Debian util-linux / bsdutils)");
    let mut stdin = child.stdin.take().unwrap();
    std::thread::sleep(Duration::from_millis(700));
    stdin.write_all(input.as_bytes()).unwrap();
    std::thread::sleep(Duration::from_millis(300));
    drop(stdin);
    let out = child.wait_with_output().unwrap();
    let text =
        String::from_utf8_lossy(&out.stdout).to_string() + &String::from_utf8_lossy(&out.stderr);
    (out.status.code().unwrap_or(-1), text)
}

#[test]
fn secrets_typed_at_the_prompt_are_not_echoed() {
    let t = TestEnv::new();
    let secret = canary("tok_");
    let (code, text) = on_terminal(
        &t,
        "moat-grant http typed --host api.example --header X-Key",
        &[],
        &format!("{secret}\n"),
    );
    assert_eq!(code, 0, "{text}");
    assert!(text.contains("token for typed:"), "{text}");
    assert!(!text.contains(&secret), "the secret was echoed: {text}");
    let recs = rules(&t, &["typed"]);
    assert_eq!(recs[0].str("value"), Some(secret.as_str()));
    // --token-stdin on a terminal asks the same way instead of waiting for end of file.
    let (code, text) = on_terminal(&t, "moat-grant github --token-stdin", &[], "ghp_typed\n");
    assert_eq!(code, 0, "{text}");
    assert!(!text.contains("ghp_typed"), "{text}");
    assert_eq!(
        rules(&t, &["github"])[0].str("value"),
        Some("Bearer ghp_typed")
    );
}
