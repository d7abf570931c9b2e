//! moat-grant against the providers' stand-ins (lib/moat-standins), reached the way the
//! end-to-end runs reach them: MOAT_PROXY_CONNECT_TO and MOAT_PROXY_EXTRA_CA. Validation
//! asks the stand-ins' /user and /v1/models; `refresh` renews each sign-in at the
//! stand-in's token endpoint in that provider's wire format, and the store then holds the
//! token the stand-in issued.

mod common;

use common::*;
use moat_standins::{Kind, Options, Standin};
use moat_testkit::{TestEnv, files_containing};
use serde_json::json;

fn route(s: &Standin) -> [(String, String); 2] {
    [
        ("MOAT_PROXY_CONNECT_TO".into(), s.connect_to().join(",")),
        (
            "MOAT_PROXY_EXTRA_CA".into(),
            s.ca_pem_path().to_str().unwrap().into(),
        ),
    ]
}

fn via(t: &TestEnv, s: &Standin, args: &[&str], stdin: &[u8]) -> moat_testkit::Run {
    let r = route(s);
    let envs: Vec<(&str, &str)> = r.iter().map(|(k, v)| (k.as_str(), v.as_str())).collect();
    grant(t, args, &envs, stdin)
}

fn injected(t: &TestEnv, name: &str) -> String {
    rules(t, &[name])
        .iter()
        .find(|r| r.kind == "inject")
        .and_then(|r| r.str("value"))
        .unwrap()
        .to_string()
}

fn past_ms() -> i64 {
    let now = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap()
        .as_millis() as i64;
    now - 60_000
}

#[test]
fn keys_are_validated_against_the_stand_ins() {
    let t = TestEnv::new();
    let gh = canary("ghp_");
    let s = Standin::start(Kind::GitHub, &gh);
    via(&t, &s, &["github", "--token-stdin"], gh.as_bytes())
        .success()
        .stderr_has("Authenticated as: moat-standin")
        .leaks_nothing(&gh);
    via(
        &t,
        &s,
        &["github", "--name", "other", "--token-stdin"],
        b"ghp_wrong",
    )
    .exit(1)
    .stderr_has("HTTP 401");
    for (kind, provider, key) in [
        (Kind::AnthropicApiKey, "anthropic", canary("sk-ant-api03-")),
        (Kind::OpenAiApiKey, "openai", canary("sk-proj-")),
    ] {
        let s = Standin::start(kind, &key);
        via(&t, &s, &[provider, "--token-stdin"], key.as_bytes())
            .success()
            .stderr_lacks("could not validate");
        assert!(
            s.requests()
                .iter()
                .any(|r| r.path_only() == "/v1/models" && r.status == 200),
            "{}",
            s.request_lines()
        );
    }
    assert_eq!(listed(&t), vec!["anthropic", "github", "openai"]);
}

#[test]
fn each_sign_in_is_refreshed_at_its_stand_in() {
    let t = TestEnv::new();
    // Claude subscription from Claude Code's file.
    let (at, rt) = (canary("sk-ant-oat01-"), canary("sk-ant-ort01-"));
    let mut o = Options::new(Kind::AnthropicOauth, &at);
    o.refresh_token = Some(rt.clone());
    let claude = Standin::start_with(o);
    std::fs::create_dir_all(t.home.join(".claude")).unwrap();
    std::fs::write(
        t.home.join(".claude/.credentials.json"),
        json!({"claudeAiOauth": {"accessToken": at, "refreshToken": rt, "expiresAt": past_ms()}})
            .to_string(),
    )
    .unwrap();
    grant(&t, &["anthropic"], &[], b"").success();
    // ChatGPT sign-in from Codex's file, with an expired access token.
    let codex_home = t.path().join("codex");
    std::fs::create_dir_all(&codex_home).unwrap();
    let crt = canary("rt_");
    let cat = moat_standins::fake_jwt(&json!({"exp": 1_700_000_000}));
    std::fs::write(
        codex_home.join("auth.json"),
        json!({"tokens": {"access_token": cat, "refresh_token": crt,
            "id_token": moat_standins::chatgpt_id_token(), "account_id": "acct"}})
        .to_string(),
    )
    .unwrap();
    grant(
        &t,
        &["openai"],
        &[("CODEX_HOME", codex_home.to_str().unwrap())],
        b"",
    )
    .success();
    let mut o = Options::new(Kind::ChatGpt, &cat);
    o.refresh_token = Some(crt.clone());
    let chatgpt = Standin::start_with(o);
    // Google sign-in from the Gemini CLI's file.
    let (gat, grt) = (format!("ya29.{}", canary("")), format!("1//{}", canary("")));
    std::fs::create_dir_all(t.home.join(".gemini")).unwrap();
    std::fs::write(
        t.home.join(".gemini/oauth_creds.json"),
        json!({"access_token": gat, "refresh_token": grt, "expiry_date": past_ms()}).to_string(),
    )
    .unwrap();
    grant(&t, &["gemini"], &[], b"").success();
    let mut o = Options::new(Kind::GoogleOauth, &gat);
    o.refresh_token = Some(grt.clone());
    let google = Standin::start_with(o);

    for (name, s, old) in [
        ("anthropic", &claude, &at),
        ("openai", &chatgpt, &cat),
        ("gemini", &google, &gat),
    ] {
        let r = via(&t, s, &["refresh", name], b"");
        r.success().stderr_has(&format!("refreshed {name}"));
        let refreshes = s.refreshes();
        assert_eq!(refreshes.len(), 1, "{name}: {}", s.request_lines());
        let new = &refreshes[0].new_access_token;
        assert_eq!(injected(&t, name), format!("Bearer {new}"), "{name}");
        for secret in [
            old,
            new,
            &refreshes[0].refresh_token,
            &refreshes[0].new_refresh_token,
        ] {
            r.leaks_nothing(secret);
            assert!(files_containing(&t.moat_home, secret.as_bytes()).is_empty());
        }
        // Not due again for hours: no second request.
        via(&t, s, &["refresh", name], b"")
            .success()
            .stderr_has("not refreshed");
        assert_eq!(s.refreshes().len(), 1);
    }
    // Anthropic and OpenAI rotate: the stored refresh token is the one they issued.
    let r = via(&t, &claude, &["refresh", "anthropic", "--force"], b"");
    r.success();
    assert_eq!(
        claude.refreshes()[1].refresh_token,
        claude.refreshes()[0].new_refresh_token
    );
}

#[test]
fn a_refresh_token_the_stand_in_does_not_know_means_granting_again() {
    let t = TestEnv::new();
    let at = canary("sk-ant-oat01-");
    std::fs::create_dir_all(t.home.join(".claude")).unwrap();
    std::fs::write(
        t.home.join(".claude/.credentials.json"),
        json!({"claudeAiOauth": {"accessToken": at, "refreshToken": "sk-ant-ort01-revoked", "expiresAt": past_ms()}})
            .to_string(),
    )
    .unwrap();
    grant(&t, &["anthropic"], &[], b"").success();
    let s = Standin::start(Kind::AnthropicOauth, &at);
    via(&t, &s, &["refresh", "anthropic"], b"")
        .exit(1)
        .stderr_has("invalid_grant")
        .stderr_has("moat grant anthropic");
    // OpenAI's refusal of a reused refresh token is the same answer in its own format.
    let codex_home = t.path().join("codex");
    std::fs::create_dir_all(&codex_home).unwrap();
    let cat = moat_standins::fake_jwt(&json!({"exp": 1_700_000_000}));
    std::fs::write(
        codex_home.join("auth.json"),
        json!({"tokens": {"access_token": cat, "refresh_token": "rt_used"}}).to_string(),
    )
    .unwrap();
    grant(
        &t,
        &["openai"],
        &[("CODEX_HOME", codex_home.to_str().unwrap())],
        b"",
    )
    .success();
    let s = Standin::start(Kind::ChatGpt, &cat);
    via(&t, &s, &["refresh", "openai"], b"")
        .exit(1)
        .stderr_has("refresh_token_reused")
        .stderr_has("moat grant openai");
}
