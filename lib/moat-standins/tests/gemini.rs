//! Gemini CLI (the real npm CLI) through the real moat-proxy to the Google stand-in, with
//! an API key and with a Google sign-in; the container side holds placeholders.

mod common;

use std::path::Path;

use common::*;
use moat_standins::{Kind, Standin};

const PLACEHOLDER_KEY: &str = "AIzamoatProxyInjectedPlaceholder0000000";
const PLACEHOLDER_TOKEN: &str = "moat-proxy-injected";

fn gemini_home(home: &Path, ws: &Path, auth: &str) {
    write(
        &home.join(".gemini/settings.json"),
        &serde_json::json!({"security": {"auth": {"selectedType": auth}}}).to_string(),
    );
    // Headless runs refuse an untrusted folder.
    write(
        &home.join(".gemini/trustedFolders.json"),
        &serde_json::json!({ws.to_str().unwrap(): "TRUST_FOLDER"}).to_string(),
    );
}

#[test]
fn gemini_p_with_api_key_gets_streamed_answer_and_never_holds_the_key() {
    let clis = agent_clis();
    let real = canary("AIza");
    let s = Scenario::new(
        Standin::start(Kind::GeminiApiKey, &real),
        &inject(
            "gemini",
            &["generativelanguage.googleapis.com"],
            "x-goog-api-key",
            &real,
            &[],
        ),
    );
    gemini_home(s.home(), &s.ws, "gemini-api-key");
    let run = s.run(
        &clis.join("gemini"),
        &["-p", "hi"],
        &[("GEMINI_API_KEY", PLACEHOLDER_KEY.into())],
    );
    s.assert_answered(
        &run,
        "generativelanguage.googleapis.com",
        "/v1beta/models/",
        &real,
        PLACEHOLDER_KEY,
        &["generativelanguage.googleapis.com"],
    );
    assert!(
        s.standin
            .requests()
            .iter()
            .any(|r| r.path.contains(":streamGenerateContent") && r.path.contains("alt=sse")),
        "{}",
        s.standin.request_lines()
    );
}

#[test]
fn gemini_p_with_google_sign_in_gets_streamed_answer_and_never_holds_the_token() {
    let clis = agent_clis();
    let real = canary("ya29.");
    let s = Scenario::new(
        Standin::start(Kind::GoogleOauth, &real),
        &inject(
            "gemini",
            // The CLI validates its token with POST oauth2.googleapis.com/tokeninfo,
            // the token in an Authorization header: inject there too.
            &["cloudcode-pa.googleapis.com", "oauth2.googleapis.com"],
            "Authorization",
            &format!("Bearer {real}"),
            &[],
        ),
    );
    gemini_home(s.home(), &s.ws, "oauth-personal");
    write(
        &s.home().join(".gemini/oauth_creds.json"),
        &serde_json::json!({
            "access_token": PLACEHOLDER_TOKEN,
            "refresh_token": PLACEHOLDER_TOKEN,
            "token_type": "Bearer",
            "scope": "https://www.googleapis.com/auth/cloud-platform https://www.googleapis.com/auth/userinfo.email https://www.googleapis.com/auth/userinfo.profile openid",
            "expiry_date": epoch_ms_in(365)
        })
        .to_string(),
    );
    let run = s.run(&clis.join("gemini"), &["-p", "hi"], &[]);
    s.assert_answered(
        &run,
        "cloudcode-pa.googleapis.com",
        "/v1internal:",
        &real,
        PLACEHOLDER_TOKEN,
        &["cloudcode-pa.googleapis.com", "oauth2.googleapis.com"],
    );
}
