//! `anthropic`: an API key (`--token-stdin`, `ANTHROPIC_API_KEY`, prompt) or a Claude
//! subscription (an OAuth token, `sk-ant-oat...`), imported from Claude Code's
//! `~/.claude/.credentials.json` (or `$CLAUDE_CONFIG_DIR/.credentials.json`) with its
//! refresh token, expiry and subscription type. One grant name covers both; the stored
//! `kind` (`api_key` or `oauth`) decides how the proxy injects it.

use super::{ms_to_rfc3339, read_json_file, token_from, warn_if_expired};
use crate::args::Grant;
use crate::input;
use crate::store::Credential;
use moat_core::{Error, Result};
use serde_json::Value;

pub const OAUTH_PREFIX: &str = "sk-ant-oat";

pub fn grant(g: &Grant) -> Result<Credential> {
    let mut imported = None;
    let (token, source) = token_from(
        g,
        "Anthropic API key or Claude OAuth token",
        &["ANTHROPIC_API_KEY"],
        || {
            imported = from_claude_code()?;
            Ok(imported
                .as_ref()
                .map(|c: &Credential| (String::new(), c.source.clone())))
        },
        "set ANTHROPIC_API_KEY, sign in to Claude Code (`claude`), or pass --token-stdin",
    )?;
    if let Some(c) = imported {
        return Ok(c);
    }
    if token.starts_with(OAUTH_PREFIX) {
        let mut c = Credential::new("anthropic", "oauth", source);
        c.secret.insert("access_token".into(), token.into());
        return Ok(c);
    }
    if !token.starts_with("sk-ant-") {
        eprintln!("moat-grant: warning: the Anthropic key does not start with sk-ant-");
    }
    let mut c = Credential::new("anthropic", "api_key", source);
    c.secret.insert("api_key".into(), token.into());
    Ok(c)
}

/// `claude`, the seeds' (and the Go moat's) name for the Claude subscription sign-in: an
/// OAuth token only, from Claude Code's sign-in, `CLAUDE_CODE_OAUTH_TOKEN` (what `claude
/// setup-token` prints), `--token-stdin` or a prompt. It is an `anthropic` credential of
/// kind `oauth`, named `claude`, so `grants: [claude]` finds it and the proxy injects it
/// as it injects any Claude subscription. An API key is refused with where it goes.
pub fn subscription(g: &Grant) -> Result<Credential> {
    let mut imported = None;
    let (token, source) = token_from(
        g,
        "Claude OAuth token",
        &["CLAUDE_CODE_OAUTH_TOKEN"],
        || {
            imported = from_claude_code()?;
            Ok(imported
                .as_ref()
                .map(|c: &Credential| (String::new(), c.source.clone())))
        },
        "sign in to Claude Code (`claude`), or pass the token `claude setup-token` prints with --token-stdin or CLAUDE_CODE_OAUTH_TOKEN",
    )?;
    let mut c = match imported {
        Some(c) => c,
        None if token.starts_with(OAUTH_PREFIX) => {
            let mut c = Credential::new("anthropic", "oauth", source);
            c.secret.insert("access_token".into(), token.into());
            c
        }
        None => {
            return Err(Error::usage(
                "that is not a Claude subscription token (they start with sk-ant-oat)",
            )
            .with_hint("an Anthropic API key is stored with `moat grant anthropic`"));
        }
    };
    c.name = "claude".into();
    Ok(c)
}

fn claude_credentials_path() -> Result<std::path::PathBuf> {
    Ok(match input::env("CLAUDE_CONFIG_DIR") {
        Some(d) => std::path::PathBuf::from(d).join(".credentials.json"),
        None => input::home_dir()?.join(".claude").join(".credentials.json"),
    })
}

/// Claude Code's stored subscription sign-in, if there is one.
fn from_claude_code() -> Result<Option<Credential>> {
    let path = claude_credentials_path()?;
    let Some(v) = read_json_file(&path)? else {
        return Ok(None);
    };
    let o = &v["claudeAiOauth"];
    let Some(at) = o["accessToken"].as_str() else {
        return Err(Error::data(format!(
            "{} has no claudeAiOauth.accessToken; sign in to Claude Code again",
            path.display()
        )));
    };
    let at =
        input::check_token(at, "Claude access token").map_err(|e| e.context(path.display()))?;
    let mut c = Credential::new("anthropic", "oauth", format!("file:{}", path.display()));
    c.secret.insert("access_token".into(), at.into());
    if let Some(rt) = o["refreshToken"].as_str() {
        let rt = input::check_token(rt, "Claude refresh token")
            .map_err(|e| e.context(path.display()))?;
        c.secret.insert("refresh_token".into(), rt.into());
    }
    c.expires_at = o["expiresAt"].as_i64().and_then(ms_to_rfc3339);
    if let Some(s) = o["scopes"].as_array() {
        c.scopes = s
            .iter()
            .filter_map(Value::as_str)
            .map(String::from)
            .collect();
    }
    for (from, to) in [
        ("subscriptionType", "subscription_type"),
        ("rateLimitTier", "rate_limit_tier"),
    ] {
        if let Some(s) = o[from].as_str() {
            c.config.insert(to.into(), s.into());
        }
    }
    warn_if_expired(
        "Claude",
        c.expires_at.as_deref(),
        c.secret.contains_key("refresh_token"),
    );
    Ok(Some(c))
}
