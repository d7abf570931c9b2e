//! Grant providers: each turns a `moat-grant PROVIDER ...` invocation into a [`Credential`],
//! importing from where the user already has the secret, else `--token-stdin`, else a
//! hidden prompt on the terminal. Without a terminal nothing is asked: the command names
//! the flag to pass.
//!
//! What is built here is checked online afterwards (`validate`) unless `--no-validate`
//! is given; providers themselves only check a secret's form.

pub mod anthropic;
pub mod custom;
pub mod gemini;
pub mod github;
pub mod npm;
pub mod openai;
pub mod ssh;

use crate::args::Grant;
use crate::input;
use crate::store::Credential;
use moat_core::{Error, Result};

/// Build the credential for a grant invocation (not yet stored).
pub fn build(g: &Grant) -> Result<Credential> {
    let mut cred = match g.provider.as_str() {
        "github" => github::grant(g)?,
        "anthropic" => anthropic::grant(g)?,
        "claude" => anthropic::subscription(g)?,
        "openai" => openai::grant(g)?,
        "gemini" => gemini::grant(g)?,
        "npm" => npm::grant(g)?,
        "ssh" => ssh::grant(g)?,
        "mcp" => custom::mcp(g)?,
        "http" => custom::http(g)?,
        "aws" => custom::aws(g)?,
        other => return Err(Error::usage(format!("unknown provider {other:?}"))),
    };
    if let Some(n) = &g.name {
        check_name(n)?;
        cred.name = n.clone();
    }
    Ok(cred)
}

/// Names people choose (`--name`, the NAME of mcp and http): a letter or digit, then
/// letters, digits, `.`, `_`, `-`; at most 64. `:` is kept for `ssh:` and `mcp:`.
pub fn check_name(n: &str) -> Result<()> {
    let ok = !n.is_empty()
        && n.len() <= 64
        && n.as_bytes()[0].is_ascii_alphanumeric()
        && n.bytes()
            .all(|b| b.is_ascii_alphanumeric() || b"._-".contains(&b));
    if ok {
        Ok(())
    } else {
        Err(Error::usage(format!(
            "bad name {n:?}: use letters, digits, '.', '_' and '-' (at most 64), starting with a letter or digit"
        )))
    }
}

/// The secret for providers that take one token: `--token-stdin`, else the first set
/// environment variable, else `import` (a file or program), else a hidden prompt.
/// Returns the value and where it came from.
pub fn token_from(
    g: &Grant,
    what: &str,
    env_vars: &[&str],
    import: impl FnOnce() -> Result<Option<(String, String)>>,
    hint: &str,
) -> Result<(String, String)> {
    if g.token_stdin {
        return Ok((input::secret_from_stdin(what)?, "stdin".into()));
    }
    for v in env_vars {
        if let Some(t) = input::env(v) {
            let t = input::check_token(&t, what).map_err(|e| e.context(format!("${v}")))?;
            return Ok((t, format!("env:{v}")));
        }
    }
    if let Some(found) = import()? {
        return Ok(found);
    }
    if input::can_prompt() {
        let t = input::prompt_hidden(&format!("{what}: "), what)?;
        return Ok((t, "prompt".into()));
    }
    Err(
        Error::noinput(format!("no {what} found and no terminal to ask on"))
            .with_hint(hint.to_string()),
    )
}

/// Read a JSON file the user's own tools wrote. Errors name the file, never its contents.
pub fn read_json_file(path: &std::path::Path) -> Result<Option<serde_json::Value>> {
    let data = match std::fs::read(path) {
        Ok(d) => d,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(None),
        Err(e) => return Err(Error::io(format!("reading {}", path.display()), e)),
    };
    serde_json::from_slice(&data).map(Some).map_err(|e| {
        Error::data(format!(
            "{} is not valid JSON (line {} column {})",
            path.display(),
            e.line(),
            e.column()
        ))
    })
}

/// Milliseconds since the epoch (as Claude Code and the Gemini CLI store expiry) to RFC 3339.
pub fn ms_to_rfc3339(ms: i64) -> Option<String> {
    if ms <= 0 {
        return None;
    }
    let t = std::time::UNIX_EPOCH.checked_add(std::time::Duration::from_millis(ms as u64))?;
    Some(moat_core::timefmt::rfc3339(t))
}

/// Say when an imported token has already expired: with its refresh token it is still
/// good, and `refresh` (or the run's supervisor) renews it.
pub fn warn_if_expired(name: &str, expires_at: Option<&str>, refreshable: bool) {
    if let Some(e) = expires_at
        && let Some(t) = moat_core::timefmt::parse_rfc3339(e)
        && t < std::time::SystemTime::now()
    {
        let how = if refreshable {
            "; `moat-grant refresh` renews it with the refresh token"
        } else {
            ", and there is no refresh token to renew it with"
        };
        eprintln!("moat-grant: warning: the imported {name} access token expired at {e}{how}");
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn names_are_checked() {
        for ok in ["work", "gh-2", "a.b_c"] {
            check_name(ok).unwrap();
        }
        for bad in ["", "-x", ".x", "a/b", "a:b", "a b", &"x".repeat(65)] {
            assert!(check_name(bad).is_err(), "{bad}");
        }
    }

    #[test]
    fn milliseconds_become_rfc3339() {
        assert_eq!(
            ms_to_rfc3339(1_700_000_000_000).as_deref(),
            Some("2023-11-14T22:13:20.000Z")
        );
        assert_eq!(ms_to_rfc3339(0), None);
    }
}
