//! Codex (the real npm CLI, a native binary) through the real moat-proxy to the OpenAI
//! stand-in, with an API key and with a ChatGPT sign-in; the container holds placeholders.

mod common;

use std::path::Path;

use common::*;
use moat_standins::{Kind, Standin};

const PLACEHOLDER_KEY: &str =
    "sk-moat-proxy-injected-placeholder-0000000000000000000000000000000000000000";

fn codex_config(home: &Path, ws: &Path) {
    write(
        &home.join(".codex/config.toml"),
        &format!(
            "approval_policy = \"never\"\nsandbox_mode = \"danger-full-access\"\n\
             [shell_environment_policy]\ninherit = \"all\"\n\
             [projects.\"{}\"]\ntrust_level = \"trusted\"\n",
            ws.display()
        ),
    );
}

#[test]
fn codex_exec_with_api_key_gets_streamed_answer_and_never_holds_the_key() {
    let clis = agent_clis();
    let real = canary("sk-proj-");
    let s = Scenario::new(
        Standin::start(Kind::OpenAiApiKey, &real),
        &inject(
            "openai",
            &["api.openai.com"],
            "Authorization",
            &format!("Bearer {real}"),
            &[],
        ),
    );
    write(
        &s.home().join(".codex/auth.json"),
        &serde_json::json!({"OPENAI_API_KEY": PLACEHOLDER_KEY}).to_string(),
    );
    codex_config(s.home(), &s.ws);
    let run = s.run(
        &clis.join("codex"),
        &["exec", "--skip-git-repo-check", "hi"],
        &[("OPENAI_API_KEY", PLACEHOLDER_KEY.into())],
    );
    s.assert_answered(
        &run,
        "api.openai.com",
        "/v1/responses",
        &real,
        PLACEHOLDER_KEY,
        &["api.openai.com"],
    );
    // Codex asks for the Responses API over WebSocket first; the proxy passes the
    // upgrade with the key injected, and the answer streams over the socket.
    let ws: Vec<_> = s
        .standin
        .requests()
        .into_iter()
        .filter(|r| r.path_only() == "/v1/responses" && r.status == 101)
        .collect();
    assert!(!ws.is_empty(), "{}", s.context(&run));
    assert!(ws[0].contains(&real));
    assert!(
        !run.stderr.contains("Falling back from WebSockets"),
        "{}",
        s.context(&run)
    );
}
