//! Claude Code (the real npm CLI) through the real moat-proxy to the Anthropic stand-in,
//! with a subscription (OAuth) and with an API key; the container side holds placeholders.

mod common;

use std::path::Path;

use common::*;
use moat_standins::{Kind, Standin};

const PLACEHOLDER_OAT: &str = "sk-ant-oat01-moat-proxy-injected-placeholder-not-a-real-token";
const PLACEHOLDER_ORT: &str = "sk-ant-ort01-moat-proxy-injected-placeholder-not-a-real-token";
const PLACEHOLDER_KEY: &str = "sk-ant-api03-moatProxyInjectedPlaceholder000000000000000000000000000000000000000000000000000000000000000-000000AA";

/// ~/.claude.json with onboarding done and the workspace trusted; with `oauth`, also
/// ~/.claude/.credentials.json holding a placeholder subscription token.
fn claude_home(home: &Path, workspace: &Path, oauth: bool, expires_days: i64) {
    if oauth {
        write(
            &home.join(".claude/.credentials.json"),
            &serde_json::json!({"claudeAiOauth": {
                "accessToken": PLACEHOLDER_OAT,
                "refreshToken": PLACEHOLDER_ORT,
                "expiresAt": epoch_ms_in(expires_days),
                "scopes": ["user:file_upload","user:inference","user:mcp_servers","user:profile","user:sessions:claude_code"],
                "subscriptionType": "max"
            }})
            .to_string(),
        );
    }
    write(
        &home.join(".claude.json"),
        &serde_json::json!({
            "hasCompletedOnboarding": true,
            "theme": "dark",
            "projects": {workspace.to_str().unwrap(): {"hasTrustDialogAccepted": true}}
        })
        .to_string(),
    );
}

fn oauth_rules(real: &str) -> String {
    inject(
        "claude",
        &["api.anthropic.com"],
        "Authorization",
        &format!("Bearer {real}"),
        &[("anthropic-beta", "oauth-2025-04-20")],
    )
}

#[test]
fn claude_p_with_subscription_gets_streamed_answer_and_never_holds_the_token() {
    let clis = agent_clis();
    let real = canary("sk-ant-oat01-");
    let s = Scenario::new(
        Standin::start(Kind::AnthropicOauth, &real),
        &oauth_rules(&real),
    );
    claude_home(s.home(), &s.ws, true, 365);
    let run = s.run(&clis.join("claude"), &["-p", "hi"], &[]);
    s.assert_answered(
        &run,
        "api.anthropic.com",
        "/v1/messages",
        &real,
        PLACEHOLDER_OAT,
        &["api.anthropic.com"],
    );
    // Every request Claude Code made went to api.anthropic.com through the proxy, and
    // each one carried the subscription beta header with the real token.
    for r in s.standin.requests() {
        assert_eq!(r.host, "api.anthropic.com", "{}", s.context(&run));
        assert!(r.contains(&real), "{} without the token", r.line());
    }
    let msgs: Vec<_> = s
        .standin
        .requests()
        .into_iter()
        .filter(|r| r.path_only() == "/v1/messages")
        .collect();
    let body: serde_json::Value = serde_json::from_slice(&msgs[0].body).unwrap();
    assert_eq!(body["stream"], true, "Claude Code streams /v1/messages");
}

#[test]
fn claude_p_with_api_key_gets_streamed_answer_and_never_holds_the_key() {
    let clis = agent_clis();
    let real = canary("sk-ant-api03-");
    let s = Scenario::new(
        Standin::start(Kind::AnthropicApiKey, &real),
        &inject("anthropic", &["api.anthropic.com"], "x-api-key", &real, &[]),
    );
    claude_home(s.home(), &s.ws, false, 0);
    let run = s.run(
        &clis.join("claude"),
        &["-p", "hi"],
        &[("ANTHROPIC_API_KEY", PLACEHOLDER_KEY.into())],
    );
    s.assert_answered(
        &run,
        "api.anthropic.com",
        "/v1/messages",
        &real,
        PLACEHOLDER_KEY,
        &["api.anthropic.com"],
    );
}

#[test]
fn claude_without_injection_sends_only_the_placeholder_and_is_refused() {
    // The negative control: with no rule, the stand-in sees the placeholder, answers
    // 401 in Anthropic's format, and Claude Code fails.
    let clis = agent_clis();
    let real = canary("sk-ant-oat01-");
    let s = Scenario::new(Standin::start(Kind::AnthropicOauth, &real), "");
    claude_home(s.home(), &s.ws, true, 365);
    let run = s.run(&clis.join("claude"), &["-p", "hi"], &[]);
    let answer = moat_standins::Options::new(Kind::AnthropicOauth, "").answer;
    assert!(
        run.code != Some(0) || !run.stdout.contains(&answer),
        "{}",
        s.context(&run)
    );
    // Claude Code checks the profile first; on 401 it tries to refresh (with the
    // placeholder refresh token, refused) and gives up before /v1/messages.
    let api: Vec<_> = s
        .standin
        .requests()
        .into_iter()
        .filter(|r| r.host == "api.anthropic.com")
        .collect();
    assert!(!api.is_empty(), "{}", s.context(&run));
    for m in &api {
        assert_eq!(m.status, 401, "{}", s.context(&run));
        let auth = m.header("authorization");
        assert!(
            auth.is_none() || auth == Some(format!("Bearer {PLACEHOLDER_OAT}").as_str()),
            "{}: {auth:?}",
            m.line()
        );
        assert!(!m.contains(&real));
    }
    assert!(
        api.iter().any(|m| m.header("authorization").is_some()),
        "{}",
        s.context(&run)
    );
    assert_ne!(run.code, Some(0), "{}", s.context(&run));
}

#[test]
fn claude_with_expired_placeholder_tries_to_refresh_and_the_refresh_is_refused() {
    // An expired subscription in the container makes Claude Code refresh by itself with
    // the placeholder refresh token, which the token endpoint refuses: the launcher
    // must write a far expiry and refresh on the host instead.
    let clis = agent_clis();
    let real = canary("sk-ant-oat01-");
    let mut o = moat_standins::Options::new(Kind::AnthropicOauth, &real);
    o.refresh_token = Some(canary("sk-ant-ort01-"));
    let s = Scenario::new(Standin::start_with(o), &oauth_rules(&real));
    claude_home(s.home(), &s.ws, true, -1);
    let run = s.run(&clis.join("claude"), &["-p", "hi"], &[]);
    let refreshes: Vec<_> = s
        .standin
        .requests()
        .into_iter()
        .filter(|r| r.path_only() == "/v1/oauth/token")
        .collect();
    assert!(
        !refreshes.is_empty(),
        "no refresh attempt\n{}",
        s.context(&run)
    );
    for r in &refreshes {
        assert!(r.contains(PLACEHOLDER_ORT), "{}", s.context(&run));
        assert_eq!(r.status, 400);
    }
    assert!(s.standin.refreshes().is_empty());
    assert_ne!(run.code, Some(0), "{}", s.context(&run));
}

#[test]
fn claude_p_through_the_proxys_relay_as_base_url_without_a_proxy() {
    // claude.base_url: Claude Code talks plain HTTP to the proxy's relay
    // (/relay/TOKEN/anthropic), no HTTPS_PROXY at all; the relay injects the credential
    // and forwards to the upstream (here the stand-in, by --connect-to).
    let clis = agent_clis();
    let real = canary("sk-ant-oat01-");
    let s = Scenario::new(
        Standin::start(Kind::AnthropicOauth, &real),
        &oauth_rules(&real),
    );
    claude_home(s.home(), &s.ws, true, 365);
    let base = format!("http://{}/relay/{}/anthropic", s.proxy.addr, s.proxy.token);
    let no_proxy: Vec<(&str, String)> = ["HTTPS_PROXY", "https_proxy", "HTTP_PROXY", "http_proxy"]
        .iter()
        .map(|k| (*k, String::new()))
        .chain([("ANTHROPIC_BASE_URL", base)])
        .collect();
    let run = s.run(&clis.join("claude"), &["-p", "hi"], &no_proxy);
    s.assert_answered(
        &run,
        "api.anthropic.com",
        "/v1/messages",
        &real,
        PLACEHOLDER_OAT,
        &["api.anthropic.com"],
    );
    assert!(
        !s.proxy.all_output().contains(&s.proxy.token),
        "the relay token is never recorded"
    );
}
