//! Prompts on a real pseudo-terminal (script(1) from util-linux): the secret is read with
//! echo off, and a choice among agent keys is asked for when there is a terminal.

mod common;

use common::*;
use moat_testkit::{Terminal, TestEnv};

/// Run `cmd` under script(1), wait for `prompt` to show on the terminal, then type `input`.
fn on_terminal(t: &TestEnv, cmd: &str, prompt: &str, input: &str) -> (i32, String) {
    let how = Terminal {
        dir: None,
        limit_secs: 30,
        prompt_secs: 20,
        hold_input: false,
    };
    t.on_terminal(cmd, prompt, input, &how)
}

#[test]
fn secrets_typed_at_the_prompt_are_not_echoed() {
    let t = TestEnv::new();
    let secret = canary("tok_");
    let (code, text) = on_terminal(
        &t,
        "moat-grant http typed --host api.example --header X-Key",
        "token for typed:",
        &format!("{secret}\n"),
    );
    assert_eq!(code, 0, "{text}");
    assert!(text.contains("token for typed:"), "{text}");
    assert!(!text.contains(&secret), "the secret was echoed: {text}");
    let recs = rules(&t, &["typed"]);
    assert_eq!(recs[0].str("value"), Some(secret.as_str()));
    // --token-stdin on a terminal asks the same way instead of waiting for end of file.
    let (code, text) = on_terminal(
        &t,
        "moat-grant github --token-stdin --no-validate",
        "GitHub token:",
        "ghp_typed\n",
    );
    assert_eq!(code, 0, "{text}");
    assert!(!text.contains("ghp_typed"), "{text}");
    assert_eq!(
        rules(&t, &["github"])[0].str("value"),
        Some("Bearer ghp_typed")
    );
}

#[test]
fn several_agent_keys_are_offered_on_a_terminal() {
    let t = TestEnv::new();
    let agent = Agent::start(&t);
    let fp1 = agent.add_key(&t, "id_a");
    let fp2 = agent.add_key(&t, "id_b");
    let hk = host_key(&t, "hk");
    std::fs::create_dir_all(t.home.join(".ssh")).unwrap();
    std::fs::write(
        t.home.join(".ssh/known_hosts"),
        format!("github.com {hk}\n"),
    )
    .unwrap();
    let cmd = format!(
        "SSH_AUTH_SOCK={} moat-grant ssh --host github.com",
        agent.sock.display()
    );
    let (code, text) = on_terminal(&t, &cmd, "Key to use [1-2]:", "2\n");
    assert_eq!(code, 0, "{text}");
    assert!(text.contains(&fp1) && text.contains(&fp2), "{text}");
    let second = text
        .lines()
        .find_map(|l| l.trim().strip_prefix("2) "))
        .and_then(|l| l.split_whitespace().next())
        .unwrap_or_else(|| panic!("no choice 2 shown: {text}"))
        .to_string();
    assert_eq!(
        rules(&t, &["ssh:github.com"])[0].str("fingerprint"),
        Some(second.as_str())
    );
}

#[test]
fn mcp_asks_on_a_terminal_for_what_the_flags_did_not_give() {
    let t = TestEnv::new();
    let secret = canary("mcp_");
    let how = Terminal {
        dir: None,
        limit_secs: 30,
        prompt_secs: 20,
        hold_input: true,
    };
    let (code, text) = t.on_terminal_dialog(
        "moat-grant mcp context7",
        &[
            (
                "URL of the context7 MCP server",
                "https://mcp.context7.example/mcp\n",
            ),
            ("Header that carries the token", "Authorization\n"),
            ("Text before the token", "Bearer\n"),
            ("MCP server token:", &format!("{secret}\n")),
        ],
        &how,
    );
    assert_eq!(code, 0, "{text}");
    assert!(!text.contains(&secret), "the token was echoed: {text}");
    let recs = rules(&t, &["mcp:context7"]);
    let inject = |recs: &[moat_core::jsonl::Record]| {
        recs.iter()
            .find(|r| r.kind == "inject")
            .unwrap_or_else(|| panic!("no inject record: {recs:?}"))
            .clone()
    };
    let r = inject(&recs);
    assert_eq!(r.str("value"), Some(format!("Bearer {secret}").as_str()));
    assert_eq!(r.str("header"), Some("Authorization"));
    assert_eq!(
        r.get("hosts"),
        Some(&serde_json::json!(["mcp.context7.example"]))
    );
    // Given flags are not asked again: only the token is.
    let (code, text) = t.on_terminal_dialog(
        "moat-grant mcp other --url https://other.example/mcp --header X-Api-Key",
        &[("MCP server token:", "tok_other\n")],
        &how,
    );
    assert_eq!(code, 0, "{text}");
    assert!(!text.contains("Header that carries"), "{text}");
    let r = inject(&rules(&t, &["mcp:other"]));
    assert_eq!(r.str("value"), Some("tok_other"));
    assert_eq!(r.str("header"), Some("X-Api-Key"));
}

#[test]
fn mcp_without_a_terminal_names_the_flags_it_needs() {
    let t = TestEnv::new();
    let r = t.run("moat-grant", &["mcp", "context7"]);
    assert_eq!(r.code(), 64, "{}", r.stderr());
    assert!(
        r.stderr().contains("--url URL and --header HEADER"),
        "{}",
        r.stderr()
    );
    let listed = t.run("moat-grant", &["list", "--json"]);
    assert!(
        !listed.stdout().contains("mcp:context7"),
        "{}",
        listed.stdout()
    );
}
