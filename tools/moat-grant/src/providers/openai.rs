//! `openai`: an API key (`--token-stdin`, `OPENAI_API_KEY`, prompt) or what Codex stored in
//! `~/.codex/auth.json` (or `$CODEX_HOME/auth.json`): its API key, or its ChatGPT sign-in
//! tokens (kind `chatgpt`: access, refresh and id token plus the account id).

use super::{read_json_file, token_from, warn_if_expired};
use crate::args::Grant;
use crate::input;
use crate::store::Credential;
use base64::Engine;
use moat_core::{Error, Result};

pub fn grant(g: &Grant) -> Result<Credential> {
    let mut imported = None;
    let (token, source) = token_from(
        g,
        "OpenAI API key",
        &["OPENAI_API_KEY"],
        || {
            imported = from_codex()?;
            Ok(imported
                .as_ref()
                .map(|c: &Credential| (String::new(), c.source.clone())))
        },
        "set OPENAI_API_KEY, sign in to Codex (`codex login`), or pass --token-stdin",
    )?;
    if let Some(c) = imported {
        return Ok(c);
    }
    Ok(api_key(token, source))
}

fn api_key(token: String, source: String) -> Credential {
    if !token.starts_with("sk-") {
        eprintln!("moat-grant: warning: the OpenAI key does not start with sk-");
    }
    let mut c = Credential::new("openai", "api_key", source);
    c.secret.insert("api_key".into(), token.into());
    c
}

fn from_codex() -> Result<Option<Credential>> {
    let path = match input::env("CODEX_HOME") {
        Some(d) => std::path::PathBuf::from(d).join("auth.json"),
        None => input::home_dir()?.join(".codex").join("auth.json"),
    };
    let Some(v) = read_json_file(&path)? else {
        return Ok(None);
    };
    let source = format!("file:{}", path.display());
    if let Some(k) = v["OPENAI_API_KEY"].as_str().filter(|k| !k.is_empty()) {
        let k = input::check_token(k, "OpenAI API key").map_err(|e| e.context(path.display()))?;
        return Ok(Some(api_key(k, source)));
    }
    let t = &v["tokens"];
    let Some(at) = t["access_token"].as_str() else {
        return Err(Error::data(format!(
            "{} holds neither an API key nor ChatGPT sign-in tokens",
            path.display()
        )));
    };
    let mut c = Credential::new("openai", "chatgpt", source);
    for (k, what) in [
        ("access_token", "ChatGPT access token"),
        ("refresh_token", "ChatGPT refresh token"),
        ("id_token", "ChatGPT id token"),
    ] {
        if let Some(s) = t[k].as_str() {
            let s = input::check_token(s, what).map_err(|e| e.context(path.display()))?;
            c.secret.insert(k.into(), s.into());
        }
    }
    if let Some(a) = t["account_id"].as_str() {
        c.config.insert("account_id".into(), a.into());
    }
    c.expires_at = jwt_expiry(at);
    warn_if_expired(
        "ChatGPT",
        c.expires_at.as_deref(),
        c.secret.contains_key("refresh_token"),
    );
    Ok(Some(c))
}

/// The `exp` claim of a JWT, read without verifying (only to show when it expires).
pub fn jwt_expiry(jwt: &str) -> Option<String> {
    let payload = jwt.split('.').nth(1)?;
    let b = base64::engine::general_purpose::URL_SAFE_NO_PAD
        .decode(payload.trim_end_matches('='))
        .ok()?;
    let v: serde_json::Value = serde_json::from_slice(&b).ok()?;
    let exp = v["exp"].as_u64()?;
    super::ms_to_rfc3339(i64::try_from(exp.checked_mul(1000)?).ok()?)
}

#[cfg(test)]
mod tests {
    #[test]
    fn jwt_expiry_is_read() {
        // {"exp":1700000000}
        let jwt = "e30.eyJleHAiOjE3MDAwMDAwMDB9.sig";
        assert_eq!(
            super::jwt_expiry(jwt).as_deref(),
            Some("2023-11-14T22:13:20.000Z")
        );
        assert_eq!(super::jwt_expiry("nope"), None);
    }
}
