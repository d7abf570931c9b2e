//! `github`: `--token-stdin`, else `GITHUB_TOKEN`/`GH_TOKEN`, else `gh auth token` (the
//! GitHub CLI's stored sign-in), else GitHub's OAuth device flow on a terminal when an
//! OAuth app's client id is configured (`device.rs`), else a hidden prompt for a personal
//! access token. `--device` goes straight to the device flow.
//!
//! `--scope S[,S...]` asks for a token with those scopes and stores it as `github:S`
//! (several scopes joined with `+`). The device flow requests exactly those scopes; an
//! imported token's scopes are checked against GitHub's `X-OAuth-Scopes` when it is
//! validated (`validate.rs`), and the grant is refused when one is missing.

use super::token_from;
use crate::args::Grant;
use crate::device;
use crate::input;
use crate::net::Net;
use crate::store::Credential;
use moat_core::{Error, Result};
use std::process::Command;
use std::time::Duration;

/// The name a scoped grant is stored under: `github:repo`, `github:repo+read:org`.
pub fn scoped_name(scopes: &[String]) -> String {
    if scopes.is_empty() {
        "github".to_string()
    } else {
        format!("github:{}", scopes.join("+"))
    }
}

pub fn grant(g: &Grant) -> Result<Credential> {
    for s in &g.scopes {
        device::check_scope(s)?;
    }
    if g.device && g.token_stdin {
        return Err(Error::usage(
            "--device and --token-stdin exclude each other",
        ));
    }
    let name = scoped_name(&g.scopes);
    if g.device {
        return from_device(g, name);
    }
    if g.client_id.is_some() && g.token_stdin {
        return Err(Error::usage(
            "--client-id is for the device flow, not --token-stdin",
        ));
    }
    let hint = "set GH_TOKEN, sign in with `gh auth login`, pass --token-stdin, or use the device flow on a terminal (--device, with --client-id or MOAT_GITHUB_CLIENT_ID)";
    // On a terminal with a client id configured, the device flow takes the place of the
    // token prompt once nothing could be imported.
    let device_next = !g.token_stdin
        && input::can_prompt()
        && device::client_id_configured(g.client_id.as_deref());
    let imported = if device_next {
        if let Some(found) = token_from_env_or_gh()? {
            Some(found)
        } else {
            return from_device(g, name);
        }
    } else {
        None
    };
    let (token, source) = match imported {
        Some(found) => found,
        None => token_from(
            g,
            "GitHub token",
            &["GITHUB_TOKEN", "GH_TOKEN"],
            || Ok(from_gh().map(|t| (t, "gh".to_string()))),
            hint,
        )?,
    };
    const PREFIXES: &[&str] = &["ghp_", "gho_", "ghu_", "ghs_", "ghr_", "github_pat_"];
    if !PREFIXES.iter().any(|p| token.starts_with(p)) {
        eprintln!(
            "moat-grant: warning: the GitHub token does not start with a known prefix (ghp_, gho_, github_pat_, ...)"
        );
    }
    let mut c = Credential::new("github", "token", source);
    c.name = name;
    c.secret.insert("token".into(), token.into());
    // The scopes asked for; validation replaces them with what GitHub says the token has.
    c.scopes = g.scopes.clone();
    if !c.scopes.is_empty() && g.no_validate {
        eprintln!(
            "moat-grant: warning: --no-validate: the token's scopes were not checked against {}",
            c.scopes.join(", ")
        );
    }
    Ok(c)
}

/// The environment, then gh, as `token_from` tries them (for the device-flow order).
fn token_from_env_or_gh() -> Result<Option<(String, String)>> {
    for v in ["GITHUB_TOKEN", "GH_TOKEN"] {
        if let Some(t) = input::env(v) {
            let t =
                input::check_token(&t, "GitHub token").map_err(|e| e.context(format!("${v}")))?;
            return Ok(Some((t, format!("env:{v}"))));
        }
    }
    Ok(from_gh().map(|t| (t, "gh".to_string())))
}

fn from_device(g: &Grant, name: String) -> Result<Credential> {
    let id = device::client_id(g.client_id.as_deref())?;
    if !input::can_prompt() {
        return Err(Error::usage(
            "the device flow (--device) needs a terminal to show the code on",
        )
        .with_hint("without a terminal, pass the token with --token-stdin or set GH_TOKEN"));
    }
    let scopes: Vec<String> = if g.scopes.is_empty() {
        device::DEFAULT_SCOPES
            .iter()
            .map(|s| s.to_string())
            .collect()
    } else {
        g.scopes.clone()
    };
    let net = Net::new(&g.connect_to, &g.extra_ca)?;
    let tok = device::run(&net, &id, &scopes)?;
    let lacking = device::missing(&tok.scopes, &scopes);
    if !lacking.is_empty() {
        return Err(Error::noperm(format!(
            "GitHub granted the token without the scope {}; nothing was stored",
            lacking.join(", ")
        )));
    }
    let mut c = Credential::new("github", "token", "device");
    c.name = name;
    c.secret.insert("token".into(), tok.access_token.into());
    c.scopes = tok.scopes;
    c.config.insert("client_id".into(), id.into());
    if let Some(secs) = tok.expires_in {
        // A GitHub App's user token: moat does not renew it, so say when it stops working.
        let at = std::time::SystemTime::now() + std::time::Duration::from_secs(secs.min(1 << 32));
        let at = moat_core::timefmt::rfc3339(at);
        eprintln!(
            "moat-grant: warning: this token expires at {at} and moat does not renew GitHub tokens; grant it again then (an OAuth app's tokens do not expire)"
        );
        c.expires_at = Some(at);
    }
    Ok(c)
}

/// After validation: `X-OAuth-Scopes` (when GitHub sent it) is what the token can do. A
/// scope asked for with `--scope` that it lacks refuses the grant.
pub fn check_scopes(c: &mut Credential, header: Option<&str>) -> Result<()> {
    let Some(h) = header else {
        if c.source != "device" && !c.scopes.is_empty() {
            eprintln!(
                "moat-grant: warning: GitHub did not say the token's scopes (a fine-grained token?); {} was stored without checking {}",
                c.name,
                c.scopes.join(", ")
            );
        }
        return Ok(());
    };
    let granted = device::parse_scopes(h);
    let lacking = device::missing(&granted, &c.scopes);
    if !lacking.is_empty() {
        return Err(Error::noperm(format!(
            "the GitHub token lacks the scope {}; nothing was stored",
            lacking.join(", ")
        ))
        .with_hint("make a token with that scope, or use the device flow (--device)"));
    }
    c.scopes = granted;
    Ok(())
}

/// The token the GitHub CLI holds for github.com, if it is installed and signed in. The
/// environment variables are removed so gh answers from its own store.
fn from_gh() -> Option<String> {
    let mut cmd = Command::new("gh");
    cmd.args(["auth", "token", "--hostname", "github.com"])
        .env_remove("GH_TOKEN")
        .env_remove("GITHUB_TOKEN")
        .env_remove("GH_ENTERPRISE_TOKEN")
        .env_remove("GITHUB_ENTERPRISE_TOKEN")
        .env("GH_PROMPT_DISABLED", "1")
        .env("GH_NO_UPDATE_NOTIFIER", "1");
    let out = input::run_with_timeout(cmd, Duration::from_secs(10))?;
    if !out.status.success() {
        return None;
    }
    let s = String::from_utf8(out.stdout).ok()?;
    input::check_token(&s, "token from gh").ok()
}
