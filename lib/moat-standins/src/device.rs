//! GitHub's OAuth device flow on the GitHub stand-in ([`crate::Options::device`]):
//! `POST github.com/login/device/code` hands out the configured device and user codes,
//! and `POST github.com/login/oauth/access_token` answers each poll with the next entry
//! of [`DeviceFlow::answers`] (`authorization_pending`, `slow_down`, `expired_token`,
//! `access_denied`, or `token` for success; the last entry repeats). Requests with the
//! wrong client id, device code or grant type get GitHub's error words, so a client that
//! sends them wrong never gets a token.

use serde_json::{Value, json};

/// What the device-flow endpoints hand out and answer.
#[derive(Debug, Clone)]
pub struct DeviceFlow {
    pub client_id: String,
    pub device_code: String,
    pub user_code: String,
    pub verification_uri: String,
    pub expires_in: u64,
    pub interval: u64,
    /// One answer per poll, in order; the last one repeats.
    pub answers: Vec<String>,
    /// The token issued on `token` (then accepted by the stand-in's API).
    pub access_token: String,
    /// The `scope` of the token answer (GitHub's comma-separated form).
    pub scope: String,
    /// `expires_in` of the token answer (a GitHub App's expiring user token).
    pub token_expires_in: Option<u64>,
}

impl DeviceFlow {
    pub fn new(client_id: &str, access_token: &str) -> Self {
        DeviceFlow {
            client_id: client_id.into(),
            device_code: "standin-device-code".into(),
            user_code: "WDJB-MJHT".into(),
            verification_uri: "https://github.com/login/device".into(),
            expires_in: 900,
            interval: 1,
            answers: vec!["token".into()],
            access_token: access_token.into(),
            scope: "repo".into(),
            token_expires_in: None,
        }
    }
}

/// Answer a device-flow request: (status, JSON body, token issued if any). `polls` is
/// how many token polls came before this one.
pub(crate) fn answer(
    flow: &DeviceFlow,
    path: &str,
    form: impl Fn(&str) -> Option<String>,
    polls: usize,
) -> (u16, Value, Option<String>) {
    if form("client_id").as_deref() != Some(flow.client_id.as_str()) {
        return (401, json!({"error": "incorrect_client_credentials"}), None);
    }
    if path == "/login/device/code" {
        return (
            200,
            json!({
                "device_code": flow.device_code,
                "user_code": flow.user_code,
                "verification_uri": flow.verification_uri,
                "expires_in": flow.expires_in,
                "interval": flow.interval,
            }),
            None,
        );
    }
    if form("grant_type").as_deref() != Some("urn:ietf:params:oauth:grant-type:device_code") {
        return (200, json!({"error": "unsupported_grant_type"}), None);
    }
    if form("device_code").as_deref() != Some(flow.device_code.as_str()) {
        return (200, json!({"error": "incorrect_device_code"}), None);
    }
    let a = flow
        .answers
        .get(polls)
        .or(flow.answers.last())
        .map(String::as_str)
        .unwrap_or("token");
    match a {
        "token" => {
            let mut v = json!({"access_token": flow.access_token, "token_type": "bearer", "scope": flow.scope});
            if let Some(e) = flow.token_expires_in {
                v["expires_in"] = e.into();
            }
            (200, v, Some(flow.access_token.clone()))
        }
        other => (200, json!({"error": other}), None),
    }
}
