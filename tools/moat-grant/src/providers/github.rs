//! `github`: `GITHUB_TOKEN`/`GH_TOKEN`, then `gh auth token` (the GitHub CLI's stored
//! sign-in), then a hidden prompt for a personal access token.

use super::token_from;
use crate::args::Grant;
use crate::input;
use crate::store::Credential;
use moat_core::Result;
use std::process::Command;
use std::time::Duration;

pub fn grant(g: &Grant) -> Result<Credential> {
    let (token, source) = token_from(
        g,
        "GitHub token",
        &["GITHUB_TOKEN", "GH_TOKEN"],
        || Ok(from_gh().map(|t| (t, "gh".to_string()))),
        "set GH_TOKEN, sign in with `gh auth login`, or pass --token-stdin",
    )?;
    const PREFIXES: &[&str] = &["ghp_", "gho_", "ghu_", "ghs_", "ghr_", "github_pat_"];
    if !PREFIXES.iter().any(|p| token.starts_with(p)) {
        eprintln!(
            "moat-grant: warning: the GitHub token does not start with a known prefix (ghp_, gho_, github_pat_, ...)"
        );
    }
    let mut c = Credential::new("github", "token", source);
    c.secret.insert("token".into(), token.into());
    Ok(c)
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
