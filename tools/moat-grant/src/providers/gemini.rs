//! `gemini`: an API key (`--token-stdin`, `GEMINI_API_KEY`, prompt) or the Gemini CLI's
//! Google sign-in, `~/.gemini/oauth_creds.json` (kind `oauth`: access and refresh token,
//! expiry).

use super::{ms_to_rfc3339, read_json_file, token_from, warn_if_expired};
use crate::args::Grant;
use crate::input;
use crate::store::Credential;
use moat_core::{Error, Result};

pub fn grant(g: &Grant) -> Result<Credential> {
    let mut imported = None;
    let (token, source) = token_from(
        g,
        "Gemini API key",
        &["GEMINI_API_KEY"],
        || {
            imported = from_gemini_cli()?;
            Ok(imported
                .as_ref()
                .map(|c: &Credential| (String::new(), c.source.clone())))
        },
        "set GEMINI_API_KEY, sign in to the Gemini CLI (`gemini`), or pass --token-stdin",
    )?;
    if let Some(c) = imported {
        return Ok(c);
    }
    if !token.starts_with("AIza") {
        eprintln!("moat-grant: warning: the Gemini API key does not start with AIza");
    }
    let mut c = Credential::new("gemini", "api_key", source);
    c.secret.insert("api_key".into(), token.into());
    Ok(c)
}

fn from_gemini_cli() -> Result<Option<Credential>> {
    let path = input::home_dir()?.join(".gemini").join("oauth_creds.json");
    let Some(v) = read_json_file(&path)? else {
        return Ok(None);
    };
    let Some(at) = v["access_token"].as_str() else {
        return Err(Error::data(format!(
            "{} has no access_token; sign in to the Gemini CLI again",
            path.display()
        )));
    };
    let mut c = Credential::new("gemini", "oauth", format!("file:{}", path.display()));
    let at =
        input::check_token(at, "Gemini access token").map_err(|e| e.context(path.display()))?;
    c.secret.insert("access_token".into(), at.into());
    if let Some(rt) = v["refresh_token"].as_str() {
        let rt = input::check_token(rt, "Gemini refresh token")
            .map_err(|e| e.context(path.display()))?;
        c.secret.insert("refresh_token".into(), rt.into());
    }
    c.expires_at = v["expiry_date"].as_i64().and_then(ms_to_rfc3339);
    if let Some(s) = v["scope"].as_str() {
        c.scopes = s.split_whitespace().map(String::from).collect();
    }
    warn_if_expired(
        "Gemini",
        c.expires_at.as_deref(),
        c.secret.contains_key("refresh_token"),
    );
    Ok(Some(c))
}
