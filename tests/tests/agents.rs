//! `moat claude` / `moat codex` / `moat gemini` end to end: the real CLIs from their npm
//! packages, installed in the run's image at build time through the build-time proxy, run in
//! a real container against loopback stand-ins for the providers (`moat_standins`), reached
//! through the run's proxy with `MOAT_PROXY_CONNECT_TO` and trusted through
//! `MOAT_PROXY_EXTRA_CA`. The stand-ins answer only the real credential; the container holds
//! placeholders. The image is built once (its tag is a hash of its content, the same for
//! every MOAT_HOME) and shared by every test.

use moat_e2e::agents::{
    ANSWER, assert_reached, canary, epoch_ms_in, grant_signed_in, grant_token, leaves_no_trace,
    no_artifact_holds, says_hello, with_standin,
};
use moat_e2e::{Moat, docker_ready};
use moat_standins::{Kind, Options, Standin};
use std::process::Command;
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

/// `moat grant anthropic`, imported from a Claude Code sign-in in the test's HOME.
fn grant_claude_subscription(m: &Moat, access: &str, refresh: &str, expires_in_secs: i64) {
    grant_signed_in(
        m,
        "anthropic",
        ".claude/.credentials.json",
        &serde_json::json!({"claudeAiOauth": {
            "accessToken": access,
            "refreshToken": refresh,
            "expiresAt": epoch_ms_in(expires_in_secs),
            "scopes": ["user:inference", "user:profile"],
            "subscriptionType": "max"
        }}),
    );
}

/// The container holds the subscription's placeholder and none of `secrets`.
fn container_holds_none(name: &str, secrets: &[&str]) {
    moat_e2e::agents::container_holds_none(name, "sk-ant-oat01-moatProxyInjected", secrets);
}

fn messages_with(st: &Standin, token: &str) -> usize {
    st.requests()
        .iter()
        .filter(|r| r.path_only() == "/v1/messages" && r.contains(token) && r.status == 200)
        .count()
}

#[test]
fn claude_p_with_an_api_key_prints_the_streamed_answer() {
    if !docker_ready() {
        return;
    }
    let real = canary("sk-ant-api03-");
    let (m, st) = with_standin(Options::new(Kind::AnthropicApiKey, &real));
    grant_token(&m, &["anthropic"], &real);
    let r = says_hello(&m, &st, "claude");
    assert!(messages_with(&st, &real) >= 1, "{}", st.request_lines());
    leaves_no_trace(&r, &m, &real);
    // Claude Code's transcript landed in the run directory (sync_logs defaults to on).
    let id = m.run_ids().pop().unwrap();
    let logs = m.moat_home().join("runs").join(&id).join("claude");
    let kept = moat_testkit::files_containing(&logs, b"streamed in pieces");
    assert!(!kept.is_empty(), "no session log under {}", logs.display());
    let s = m.run_timeout("moat", &["claude", "sessions"], None, 60);
    assert_eq!(s.code(), 0, "{}", s.stderr());
    assert!(s.stdout().contains(&id), "{}", s.stdout());
}

/// The seeds' `moat claude --grant github`: naming another provider's grant keeps the
/// agent's own (`anthropic`), so Claude Code is signed in and answers; before, the named
/// grant replaced the default and Claude started signed out.
#[test]
fn claude_with_a_github_grant_keeps_its_own_and_answers() {
    if !docker_ready() {
        return;
    }
    let real = canary("sk-ant-api03-");
    let gh = canary("ghp_");
    let (m, st) = with_standin(Options::new(Kind::AnthropicApiKey, &real));
    grant_token(&m, &["anthropic"], &real);
    grant_token(&m, &["github"], &gh);
    let r = m.run_timeout(
        "moat",
        &[
            "claude",
            "--no-sandbox",
            "--grant",
            "github",
            "-p",
            "say hello",
        ],
        None,
        900,
    );
    assert_eq!(r.code(), 0, "{}\n{}", r.stderr(), st.request_lines());
    assert!(r.stdout().contains(ANSWER), "{}", r.stdout());
    assert!(messages_with(&st, &real) >= 1, "{}", st.request_lines());
    leaves_no_trace(&r, &m, &real);
    leaves_no_trace(&r, &m, &gh);
}

/// The seeds' `moat run -p "prompt"`: with `agent: claude` in the workspace's moat.yaml the
/// prompt goes to Claude Code, non-interactively, as `moat claude -p` does.
#[test]
fn run_p_sends_the_prompt_to_the_workspaces_agent() {
    if !docker_ready() {
        return;
    }
    let real = canary("sk-ant-api03-");
    let (m, st) = with_standin(Options::new(Kind::AnthropicApiKey, &real));
    grant_token(&m, &["anthropic"], &real);
    m.write_config("agent: claude\n");
    // The file picks the CLI and so its credential: a privileged field.
    m.trust(None);
    let r = m.run_timeout(
        "moat",
        &["run", "--no-sandbox", "-p", "say hello"],
        None,
        900,
    );
    assert_eq!(r.code(), 0, "{}\n{}", r.stderr(), st.request_lines());
    assert!(r.stdout().contains(ANSWER), "{}", r.stdout());
    assert!(messages_with(&st, &real) >= 1, "{}", st.request_lines());
    leaves_no_trace(&r, &m, &real);
}

/// The seeds' `claude` grant: `moat grant claude` imports the subscription sign-in, and a
/// workspace with `grants: [claude]` runs Claude Code signed in with it; no `anthropic`
/// grant exists, so the agent's default is not added (it would fail to load).
#[test]
fn the_claude_grant_signs_claude_code_in() {
    if !docker_ready() {
        return;
    }
    let real = canary("sk-ant-oat01-");
    let refresh = canary("sk-ant-ort01-");
    let (m, st) = with_standin(Options::new(Kind::AnthropicOauth, &real));
    grant_signed_in(
        &m,
        "claude",
        ".claude/.credentials.json",
        &serde_json::json!({"claudeAiOauth": {
            "accessToken": real,
            "refreshToken": refresh,
            "expiresAt": epoch_ms_in(30 * 86400),
            "subscriptionType": "max"
        }}),
    );
    m.write_config("grants: [claude]\n");
    m.trust(None);
    let r = m.run_timeout(
        "moat",
        &["claude", "--no-sandbox", "-p", "say hello"],
        None,
        900,
    );
    assert_eq!(r.code(), 0, "{}\n{}", r.stderr(), st.request_lines());
    assert!(r.stdout().contains(ANSWER), "{}", r.stdout());
    assert!(messages_with(&st, &real) >= 1, "{}", st.request_lines());
    let id = m.run_ids().pop().unwrap();
    assert_eq!(m.metadata(&id)["grants"], serde_json::json!(["claude"]));
    leaves_no_trace(&r, &m, &real);
    leaves_no_trace(&r, &m, &refresh);
}

/// A subscription whose access token expires a few seconds into the run: the supervisor
/// renews it on the host at the stand-in's token endpoint, the store keeps the new tokens,
/// the proxy takes the new rule set, and Claude Code (started after a pre_run pause)
/// reaches the API with the new token injected; the container never holds either token.
#[test]
fn claude_subscription_is_renewed_during_the_run_and_never_enters_the_container() {
    if !docker_ready() {
        return;
    }
    let real = canary("sk-ant-oat01-");
    let refresh = canary("sk-ant-ort01-");
    let mut o = Options::new(Kind::AnthropicOauth, &real);
    o.refresh_token = Some(refresh.clone());
    let (m, st) = with_standin(o);
    // Renewed 5 minutes before expiry: 12 s after the grant.
    grant_claude_subscription(&m, &real, &refresh, 5 * 60 + 12);
    std::fs::write(m.ws.join("moat.yaml"), "hooks:\n  pre_run: sleep 35\n").unwrap();
    let r = m.run_timeout(
        "moat",
        &["claude", "--no-sandbox", "-d", "-p", "say hello"],
        None,
        900,
    );
    assert_eq!(
        r.code(),
        0,
        "stdout: {}\nstderr: {}",
        r.stdout(),
        r.stderr()
    );
    let id = r.stdout().trim().to_string();
    m.wait_state(&id, &["running"], 600);
    let name = format!("moat-{id}");
    // Wait for the renewal (bounded), then look inside while pre_run still sleeps.
    let t0 = Instant::now();
    let deadline = t0 + Duration::from_secs(40);
    while st.refreshes().is_empty() && Instant::now() < deadline {
        std::thread::sleep(Duration::from_millis(200));
    }
    let refreshes = st.refreshes();
    assert_eq!(refreshes.len(), 1, "one renewal: {}", st.request_lines());
    eprintln!("renewed {:?} after the run started", t0.elapsed());
    assert_eq!(refreshes[0].refresh_token, refresh);
    let new_access = refreshes[0].new_access_token.clone();
    let new_refresh = refreshes[0].new_refresh_token.clone();
    let dir = m.moat_home().join("runs").join(&id);
    assert_eq!(
        m.metadata(&id)["state"],
        "running",
        "{}\n{}",
        std::fs::read_to_string(dir.join("launch.log")).unwrap_or_default(),
        std::fs::read_to_string(dir.join("logs.jsonl")).unwrap_or_default()
    );
    container_holds_none(&name, &[&real, &refresh, &new_access, &new_refresh]);

    let end = m.wait_state(&id, &["stopped", "failed"], 300);
    let logs = std::fs::read_to_string(m.moat_home().join("runs").join(&id).join("logs.jsonl"))
        .unwrap_or_default();
    assert_eq!(end["state"], "stopped", "{logs}\n{}", st.request_lines());
    assert!(logs.contains(ANSWER), "{logs}\n{}", st.request_lines());
    // Claude Code's calls after the renewal carried the new token, none the old one.
    assert!(
        messages_with(&st, &new_access) >= 1,
        "{}",
        st.request_lines()
    );
    assert_eq!(messages_with(&st, &real), 0, "{}", st.request_lines());
    // The store holds the new tokens.
    let rules = Command::new(moat_testkit::bin("moat-grant"))
        .args(["rules", "anthropic"])
        .env("HOME", &m.env.home)
        .env("MOAT_HOME", m.moat_home())
        .output()
        .unwrap();
    let text = String::from_utf8_lossy(&rules.stdout);
    assert!(
        text.contains(&new_access),
        "the store has the renewed token"
    );
    assert!(!text.contains(&real));
    // The audit log says so; nothing under MOAT_HOME holds any of the tokens.
    let audit =
        std::fs::read_to_string(m.moat_home().join("runs").join(&id).join("audit/log.jsonl"))
            .unwrap_or_default();
    assert!(audit.contains("grant_refreshed"), "{audit}");
    for s in [&real, &refresh, &new_access, &new_refresh] {
        no_artifact_holds(&m, s);
    }
}

#[test]
fn codex_exec_with_an_api_key_prints_the_streamed_answer() {
    if !docker_ready() {
        return;
    }
    let real = canary("sk-proj-");
    let (m, st) = with_standin(Options::new(Kind::OpenAiApiKey, &real));
    grant_token(&m, &["openai"], &real);
    let r = says_hello(&m, &st, "codex");
    // The answer came from api.openai.com with the real key injected; never on chatgpt.com.
    assert_reached(&st, "api.openai.com", |p| p == "/v1/responses", &real);
    assert!(
        !st.requests()
            .iter()
            .any(|q| q.host.ends_with("chatgpt.com") && q.contains(&real)),
        "the API key went to chatgpt.com"
    );
    leaves_no_trace(&r, &m, &real);
}

#[test]
fn gemini_p_with_an_api_key_prints_the_streamed_answer() {
    if !docker_ready() {
        return;
    }
    let real = canary("AIza");
    let (m, st) = with_standin(Options::new(Kind::GeminiApiKey, &real));
    grant_token(&m, &["gemini"], &real);
    let r = says_hello(&m, &st, "gemini");
    let streamed = |p: &str| p.contains(":streamGenerateContent");
    assert_reached(&st, "generativelanguage.googleapis.com", streamed, &real);
    leaves_no_trace(&r, &m, &real);
}

#[test]
fn codex_exec_with_a_chatgpt_sign_in_prints_the_streamed_answer() {
    if !docker_ready() {
        return;
    }
    let exp = SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .unwrap()
        .as_secs()
        + 10 * 86400;
    let real = moat_standins::fake_jwt(&serde_json::json!({"exp": exp, "canary": canary("c")}));
    let (m, st) = with_standin(Options::new(Kind::ChatGpt, &real));
    grant_signed_in(
        &m,
        "openai",
        ".codex/auth.json",
        &serde_json::json!({"OPENAI_API_KEY": null, "tokens": {
            "id_token": moat_standins::chatgpt_id_token(),
            "access_token": real,
            "refresh_token": canary("rt_"),
            "account_id": "00000000-0000-4000-8000-00000000c0de"
        }, "last_refresh": "2026-01-01T00:00:00Z"}),
    );
    let r = says_hello(&m, &st, "codex");
    let responses = |p: &str| p.starts_with("/backend-api/codex/responses");
    assert_reached(&st, "chatgpt.com", responses, &real);
    leaves_no_trace(&r, &m, &real);
}

#[test]
fn gemini_p_with_a_google_sign_in_prints_the_streamed_answer() {
    if !docker_ready() {
        return;
    }
    let real = canary("ya29.");
    let (m, st) = with_standin(Options::new(Kind::GoogleOauth, &real));
    grant_signed_in(
        &m,
        "gemini",
        ".gemini/oauth_creds.json",
        &serde_json::json!({"access_token": real, "refresh_token": canary("1//"), "token_type": "Bearer",
            "scope": "https://www.googleapis.com/auth/cloud-platform openid",
            "expiry_date": epoch_ms_in(10 * 86400)}),
    );
    let r = says_hello(&m, &st, "gemini");
    let streamed = |p: &str| p.contains(":streamGenerateContent");
    assert_reached(&st, "cloudcode-pa.googleapis.com", streamed, &real);
    leaves_no_trace(&r, &m, &real);
}

/// `claude.base_url`: Claude Code talks to the proxy's relay (ANTHROPIC_BASE_URL), which
/// forwards to the configured URL with the subscription injected. The URL here is the
/// stand-in's own host (the only one with a certificate the proxy trusts) under a path
/// prefix, as a gateway would be: only the relay puts the prefix in front of the API's
/// paths, so a Messages request under it shows the traffic took the relay.
#[test]
fn claude_base_url_goes_through_the_relay_with_the_key_injected() {
    if !docker_ready() {
        return;
    }
    let real = canary("sk-ant-oat01-");
    let mut o = Options::new(Kind::AnthropicOauth, &real);
    o.base_path = Some("/gateway".into());
    let (m, st) = with_standin(o);
    grant_claude_subscription(&m, &real, &canary("sk-ant-ort01-"), 30 * 86400);
    std::fs::write(
        m.ws.join("moat.yaml"),
        "claude:\n  base_url: https://api.anthropic.com/gateway\n  sync_logs: false\n",
    )
    .unwrap();
    let r = says_hello(&m, &st, "claude");
    assert!(
        st.requests()
            .iter()
            .any(|q| q.path_only() == "/gateway/v1/messages"
                && q.status == 200
                && q.contains(&real)),
        "no Messages request through the relay:\n{}",
        st.request_lines()
    );
    leaves_no_trace(&r, &m, &real);
    // sync_logs: false keeps no session logs.
    let id = m.run_ids().pop().unwrap();
    assert!(!m.moat_home().join("runs").join(&id).join("claude").exists());
}
