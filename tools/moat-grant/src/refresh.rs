//! `refresh NAME`: renew an OAuth sign-in (a Claude subscription, a ChatGPT sign-in, a
//! Google sign-in for the Gemini CLI) at its token endpoint with the refresh token and the
//! CLI's public client id, and write the new tokens back under the store lock.
//!
//! One refresh at a time per credential, across processes: a per-credential lock file is
//! held around the request, and the credential is read again once it is held, so a
//! process that waited behind another's refresh sees the new tokens and does nothing (a
//! refresh token may be single-use; a second request with it would revoke the sign-in).
//! Nothing here prints a token: messages carry names, hosts, statuses and error codes.

use crate::net::{self, Net, Request};
use crate::store::{Credential, Store};
use moat_core::lock::FileLock;
use moat_core::{Error, Result, exit, timefmt};
use serde_json::{Value, json};
use std::time::{Duration, SystemTime};

/// Token endpoints are slower than API listings; still bounded.
const TIMEOUT: Duration = Duration::from_secs(10);

/// Claude Code's OAuth token endpoint and public client id.
const CLAUDE_TOKEN_URL: &str = "https://platform.claude.com/v1/oauth/token";
const CLAUDE_CLIENT_ID: &str = "9d1c250a-e61b-44d9-88ed-5944d1962f5e";
/// The Codex CLI's sign-in issuer and public client id.
const CODEX_TOKEN_URL: &str = "https://auth.openai.com/oauth/token";
const CODEX_CLIENT_ID: &str = "app_EMoamEEZ73f0CkXaXp7hrann";
/// Google's token endpoint and the Gemini CLI's installed-application client. Google
/// documents that an installed application's client secret is not a secret; the Gemini
/// CLI ships it in its source.
const GOOGLE_TOKEN_URL: &str = "https://oauth2.googleapis.com/token";
const GEMINI_CLIENT_ID: &str =
    "681255809395-oo8ft2oprdrnp9e3aqf6av3hmdib135j.apps.googleusercontent.com";
const GEMINI_CLIENT_SECRET: &str = "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";

/// Which sign-ins can be refreshed, and how their token endpoint wants the request.
enum Endpoint {
    Claude,
    Codex,
    Google,
}

impl Endpoint {
    fn of(c: &Credential) -> Option<Endpoint> {
        match (c.provider.as_str(), c.kind.as_str()) {
            ("anthropic", "oauth") => Some(Endpoint::Claude),
            ("openai", "chatgpt") => Some(Endpoint::Codex),
            ("gemini", "oauth") => Some(Endpoint::Google),
            _ => None,
        }
    }
    fn url(&self) -> &'static str {
        match self {
            Endpoint::Claude => CLAUDE_TOKEN_URL,
            Endpoint::Codex => CODEX_TOKEN_URL,
            Endpoint::Google => GOOGLE_TOKEN_URL,
        }
    }
    fn body(&self, rt: &str) -> (&'static str, Vec<u8>) {
        match self {
            Endpoint::Claude => (
                "application/json",
                json!({"grant_type": "refresh_token", "refresh_token": rt, "client_id": CLAUDE_CLIENT_ID})
                    .to_string()
                    .into_bytes(),
            ),
            Endpoint::Codex => (
                "application/json",
                json!({
                    "client_id": CODEX_CLIENT_ID,
                    "grant_type": "refresh_token",
                    "refresh_token": rt,
                    "scope": "openid profile email",
                })
                .to_string()
                .into_bytes(),
            ),
            Endpoint::Google => (
                "application/x-www-form-urlencoded",
                net::form(&[
                    ("grant_type", "refresh_token"),
                    ("refresh_token", rt),
                    ("client_id", GEMINI_CLIENT_ID),
                    ("client_secret", GEMINI_CLIENT_SECRET),
                ]),
            ),
        }
    }
}

/// What `refresh` was asked.
pub struct Options {
    pub within: Duration,
    pub force: bool,
}

/// The command a person runs to sign in again.
fn regrant_hint(c: &Credential) -> String {
    let mut cmd = format!("moat grant {}", c.provider);
    if c.name != c.provider {
        cmd.push_str(&format!(" --name {}", c.name));
    }
    format!("sign in again with the provider's CLI, then run `{cmd}`")
}

fn expiring(c: &Credential, within: Duration) -> bool {
    let Some(t) = c.expires_at.as_deref().and_then(timefmt::parse_rfc3339) else {
        // Unknown expiry: only a refresh can tell.
        return true;
    };
    t <= SystemTime::now() + within
}

/// The refresh itself. Returns the updated credential, or `None` when nothing was done
/// (the reason is on standard error).
pub fn refresh(
    store: &Store,
    key: &crate::key::Key,
    name: &str,
    opts: &Options,
    net: &Net,
) -> Result<Option<Credential>> {
    let before = store.load(name, key)?;
    let Some(endpoint) = Endpoint::of(&before) else {
        return Err(Error::data(format!(
            "{name} is a {} {}; only OAuth sign-ins (anthropic oauth, openai chatgpt, gemini oauth) can be refreshed",
            before.provider, before.kind
        )));
    };
    if before.secret_str("refresh_token").is_none() {
        return Err(
            Error::data(format!("{name} has no refresh token to refresh with"))
                .with_hint(regrant_hint(&before)),
        );
    }
    let not_due = |c: &Credential| {
        eprintln!(
            "moat-grant: {name} does not expire within {} ({}); not refreshed",
            timefmt::short_age(opts.within),
            c.expires_at.as_deref().unwrap_or("no expiry")
        );
    };
    if !opts.force && !expiring(&before, opts.within) {
        not_due(&before);
        return Ok(None);
    }
    let dir = store.home().credentials_dir();
    let _guard = FileLock::exclusive(&dir.join(format!(
        ".refresh.{}.lock",
        moat_core::home::encode_name(name)
    )))?;
    let cur = store.load(name, key)?;
    if cur.secret != before.secret {
        eprintln!("moat-grant: {name} was refreshed by another process meanwhile");
        return Ok(None);
    }
    if !opts.force && !expiring(&cur, opts.within) {
        not_due(&cur);
        return Ok(None);
    }
    let rt = cur.need_secret("refresh_token")?.to_string();
    let url = endpoint.url();
    let (host, _, _) = net::split_url(url)?;
    let tls = net.tls()?;
    let answer = net.send(
        &tls,
        Request {
            method: "POST",
            url,
            headers: Vec::new(),
            body: Some(endpoint.body(&rt)),
            timeout: TIMEOUT,
        },
    )?;
    let r = answer.map_err(|why| {
        Error::unavailable(format!("refreshing {name}: no answer from {host}: {why}"))
    })?;
    if r.status >= 500 {
        return Err(Error::unavailable(format!(
            "refreshing {name}: {host} answered HTTP {}; try again later",
            r.status
        )));
    }
    let v = r.json();
    if !(200..300).contains(&r.status) {
        let code = error_code(&v);
        if is_dead_grant(code.as_deref()) {
            return Err(Error::no(format!(
                "refreshing {name}: {host} refused the refresh token ({}); the grant must be redone",
                code.as_deref().unwrap_or("invalid_grant")
            ))
            .with_hint(regrant_hint(&cur)));
        }
        return Err(Error::no(format!(
            "refreshing {name}: {host} refused the request: HTTP {}{}",
            r.status,
            code.map(|c| format!(" ({c})")).unwrap_or_default()
        )));
    }
    let bad = |what: &str| {
        Error::unavailable(format!(
            "refreshing {name}: {host} answered without a usable {what}"
        ))
    };
    let new_at = v["access_token"]
        .as_str()
        .and_then(|s| crate::input::check_token(s, "access token").ok())
        .ok_or_else(|| bad("access_token"))?;
    let mut secret = vec![("access_token".to_string(), new_at.clone())];
    for k in ["refresh_token", "id_token"] {
        if let Some(s) = v[k].as_str() {
            let s = crate::input::check_token(s, k).map_err(|_| bad(k))?;
            if k == "id_token" && !cur.secret.contains_key(k) {
                continue;
            }
            secret.push((k.to_string(), s));
        }
    }
    let expires = match v["expires_in"].as_u64() {
        Some(s) => Some(timefmt::rfc3339(SystemTime::now() + Duration::from_secs(s))),
        None if matches!(endpoint, Endpoint::Codex) => {
            crate::providers::openai::jwt_expiry(&new_at)
        }
        None => None,
    };
    // Services may narrow what a refreshed token may do; `list` should say so.
    let scope = v["scope"].as_str().map(|s| {
        s.split_whitespace()
            .filter(|w| w.bytes().all(|b| (0x21..=0x7e).contains(&b)))
            .map(String::from)
            .collect::<Vec<_>>()
    });
    let updated = store.update(name, key, |c| {
        // We hold the refresh lock, so only a hand-run `update` could have changed it.
        if c.secret_str("refresh_token") != Some(rt.as_str()) {
            return Err(Error::new(
                exit::TEMPFAIL,
                format!("{name} changed while it was being refreshed; run refresh again"),
            ));
        }
        if let Some(scope) = scope {
            c.scopes = scope;
        }
        merge(c, secret, Some(expires), true)
    })?;
    Ok(Some(updated))
}

/// Merge new secret values and an expiry into a credential: the one path both `update`
/// and `refresh` write through. Without `allow_new`, only fields the credential already
/// has may be given.
pub fn merge(
    c: &mut Credential,
    secret: Vec<(String, String)>,
    expires: Option<Option<String>>,
    allow_new: bool,
) -> Result<()> {
    for (k, v) in secret {
        if !allow_new && !c.secret.contains_key(&k) {
            return Err(Error::data(format!(
                "credential {}: has no secret field {k:?} to update",
                c.name
            )));
        }
        c.secret.insert(k, Value::String(v));
    }
    if let Some(e) = expires {
        c.expires_at = e;
    }
    Ok(())
}

/// The OAuth error code of a refused request: `error` as a string (RFC 6749), or
/// OpenAI's `error.code`. Only a short identifier is kept; descriptions are not shown.
fn error_code(v: &Value) -> Option<String> {
    let s = v["error"]
        .as_str()
        .or_else(|| v["error"]["code"].as_str())
        .or_else(|| v["error"]["type"].as_str())?;
    (!s.is_empty() && s.len() <= 64 && s.bytes().all(|b| b.is_ascii_alphanumeric() || b == b'_'))
        .then(|| s.to_string())
}

/// Codes that mean the refresh token is dead and only a new sign-in helps.
fn is_dead_grant(code: Option<&str>) -> bool {
    matches!(
        code,
        Some(
            "invalid_grant"
                | "refresh_token_reused"
                | "refresh_token_expired"
                | "refresh_token_invalidated"
        )
    )
}

/// `--if-expiring-within`: the window, like `10m` or `1h30m`.
pub fn parse_window(s: &str) -> Result<Duration> {
    crate::providers::custom::parse_duration(s)
        .map(Duration::from_secs)
        .map_err(|e| Error::usage(format!("--if-expiring-within: {}", e.msg)))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn error_codes_are_identifiers_only() {
        assert_eq!(
            error_code(&json!({"error": "invalid_grant", "error_description": "x"})).as_deref(),
            Some("invalid_grant")
        );
        assert_eq!(
            error_code(&json!({"error": {"code": "refresh_token_reused", "message": "m"}}))
                .as_deref(),
            Some("refresh_token_reused")
        );
        assert_eq!(error_code(&json!({"error": "has spaces sk-ant-x"})), None);
        assert!(is_dead_grant(Some("invalid_grant")));
        assert!(!is_dead_grant(Some("invalid_client")));
    }

    #[test]
    fn expiry_windows() {
        let mut c = Credential::new("anthropic", "oauth", "stdin");
        assert!(expiring(&c, Duration::from_secs(600)), "unknown expiry");
        c.expires_at = Some(timefmt::rfc3339(
            SystemTime::now() + Duration::from_secs(3600),
        ));
        assert!(!expiring(&c, Duration::from_secs(600)));
        assert!(expiring(&c, Duration::from_secs(7200)));
    }
}
