//! Rule replacement: rules ended by a `rules_end` record keep the pipe open, and each later
//! complete set replaces the rules in force (a renewed subscription token), while a set that
//! does not validate is refused and leaves the old rules in force.

mod common;
use common::*;
use moat_testkit::TestEnv;
use std::io::Write;
use std::time::{Duration, Instant};

const END: &str = "{\"v\":1,\"type\":\"rules_end\"}\n";

fn wait_event(p: &Proxy, kind: &str, n: usize) -> serde_json::Value {
    let end = Instant::now() + Duration::from_secs(10);
    loop {
        let evs: Vec<_> = p
            .events()
            .into_iter()
            .filter(|e| e["type"] == kind)
            .collect();
        if evs.len() >= n {
            return evs[n - 1].clone();
        }
        assert!(Instant::now() < end, "no {kind} event: {:?}", p.events());
        std::thread::sleep(Duration::from_millis(20));
    }
}

#[test]
fn a_new_rule_set_replaces_the_old_and_a_bad_one_is_refused() {
    let env = TestEnv::new();
    let (old, new) = (canary(), canary());
    let (up, ca) = granted_upstream(&env, "api.anthropic.com", &[b"http/1.1"]);
    let ct = format!("api.anthropic.com:443:127.0.0.1:{}", up.port());
    let first = inject_rule(
        "claude",
        &["api.anthropic.com"],
        "Authorization",
        &format!("Bearer {old}"),
    ) + END;
    let mut p = Proxy::start(
        &env,
        &first,
        &["--connect-to", &ct, "--extra-ca", ca.to_str().unwrap()],
    );
    let url = format!("http://{}/relay/{}/anthropic/v1/messages", p.addr, p.token);
    let call = |env: &TestEnv| {
        let r = curl(env, &["-H", "Authorization: Bearer placeholder", &url]);
        assert_eq!(r.code, 0, "{}", r.stderr);
    };
    call(&env);
    assert_eq!(
        up.seen()[0].header_all("authorization"),
        vec![format!("Bearer {old}")]
    );

    // A complete new set: the next request carries the new token.
    let second = inject_rule(
        "claude",
        &["api.anthropic.com"],
        "Authorization",
        &format!("Bearer {new}"),
    ) + END;
    let stdin = p
        .stdin
        .as_mut()
        .expect("the pipe stays open after rules_end");
    stdin.write_all(second.as_bytes()).unwrap();
    stdin.flush().unwrap();
    let ev = wait_event(&p, "rules_replaced", 1);
    assert_eq!(ev["grants"], serde_json::json!(["claude"]));
    call(&env);
    assert_eq!(
        up.seen()[1].header_all("authorization"),
        vec![format!("Bearer {new}")]
    );

    // A set that does not validate is refused, naming the line, never the value; the
    // rules in force stay.
    let bad = format!(
        "{{\"v\":1,\"type\":\"inject\",\"grant\":\"claude\",\"hosts\":[],\"header\":\"Authorization\",\"value\":\"Bearer {old}\"}}\n{END}"
    );
    let stdin = p.stdin.as_mut().unwrap();
    stdin.write_all(bad.as_bytes()).unwrap();
    stdin.flush().unwrap();
    let ev = wait_event(&p, "rules_refused", 1);
    assert!(!ev.to_string().contains(&old), "{ev}");
    call(&env);
    assert_eq!(
        up.seen()[2].header_all("authorization"),
        vec![format!("Bearer {new}")]
    );
    // Rules without rules_end still mean read-to-EOF (the pipe is closed).
    let q = Proxy::start(
        &env,
        &inject_rule("g", &["api.anthropic.com"], "x", "y"),
        &[],
    );
    assert!(q.stdin.is_none());
}
