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

const ACCOUNT_ID: &str = "00000000-0000-4000-8000-00000000c0de";

/// The placeholder access token: JWT-shaped with a far expiry, so Codex does not try to
/// refresh it; unsigned, so nobody could mistake it for a real one.
fn placeholder_access_token() -> String {
    moat_standins::fake_jwt(&serde_json::json!({
        "iss": "https://auth.openai.com",
        "sub": "moat-proxy-injected-placeholder",
        "exp": epoch_ms_in(365) / 1000,
        "https://api.openai.com/auth": {"chatgpt_account_id": ACCOUNT_ID, "chatgpt_plan_type": "pro"}
    }))
}

#[test]
fn codex_exec_with_chatgpt_sign_in_gets_streamed_answer_and_never_holds_the_token() {
    let clis = agent_clis();
    let real = canary("eyJrealaccess");
    let s = Scenario::new(
        Standin::start(Kind::ChatGpt, &real),
        &inject(
            "codex",
            &["chatgpt.com"],
            "Authorization",
            &format!("Bearer {real}"),
            &[],
        ),
    );
    let placeholder = placeholder_access_token();
    let now = time::OffsetDateTime::now_utc()
        .format(&time::format_description::well_known::Rfc3339)
        .unwrap();
    write(
        &s.home().join(".codex/auth.json"),
        &serde_json::json!({
            "OPENAI_API_KEY": null,
            "tokens": {
                "id_token": moat_standins::chatgpt_id_token(),
                "access_token": placeholder,
                "refresh_token": "rt_moat_proxy_injected_placeholder",
                "account_id": ACCOUNT_ID
            },
            "last_refresh": now
        })
        .to_string(),
    );
    codex_config(s.home(), &s.ws);
    let run = s.run(
        &clis.join("codex"),
        &["exec", "--skip-git-repo-check", "hi"],
        &[],
    );
    s.assert_answered(
        &run,
        "chatgpt.com",
        "/backend-api/codex/responses",
        &real,
        &placeholder,
        &["chatgpt.com"],
    );
    let resp = s
        .standin
        .requests()
        .into_iter()
        .find(|r| r.path_only() == "/backend-api/codex/responses" && r.contains(&real))
        .unwrap();
    assert_eq!(resp.header("chatgpt-account-id"), Some(ACCOUNT_ID));
    assert!(
        s.standin
            .requests()
            .iter()
            .any(|r| r.path_only() == "/backend-api/wham/accounts/check" && r.status == 200),
        "Codex discovers its workspace routing first"
    );
}
