//! GitHub's OAuth device flow (`moat-grant github --device`, or when nothing can be
//! imported and a terminal is present): ask `github.com/login/device/code` for a device
//! code and a user code, show the user code and where to enter it on standard error, then
//! poll `github.com/login/oauth/access_token` every `interval` seconds until the person
//! approves, denies, or the code expires.
//!
//! Everything GitHub answers is hostile input here too: the user code and verification
//! URI are shown on a terminal only when they are short printable ASCII, error words are
//! shown only when they are lowercase identifiers, and no message ever carries the device
//! code or the access token.

use crate::net::{Net, Request, form};
use moat_core::{Error, Result, exit};
use serde_json::Value;
use std::time::{Duration, Instant};

/// The client id of an OAuth app moat itself registered: none. moat ships no OAuth app,
/// so the device flow needs `--client-id` or `MOAT_GITHUB_CLIENT_ID` (see the README).
pub const BUILTIN_CLIENT_ID: &str = "";

pub const DEVICE_CODE_URL: &str = "https://github.com/login/device/code";
pub const TOKEN_URL: &str = "https://github.com/login/oauth/access_token";
const GRANT_TYPE: &str = "urn:ietf:params:oauth:grant-type:device_code";

/// The scopes asked for when `--scope` is not given: enough to clone and push.
pub const DEFAULT_SCOPES: &[&str] = &["repo"];

/// The longest the flow waits, whatever `expires_in` says (GitHub's codes last 15 min).
const HARD_CAP: Duration = Duration::from_secs(900);
/// Each request: connect and answer together.
const REQUEST_TIMEOUT: Duration = Duration::from_secs(15);
/// Polls that get no answer in a row before giving up.
const MAX_NETWORK_FAILURES: u32 = 3;

/// Exit status when the code expired before it was approved: try again later.
pub const EXPIRED_EXIT: i32 = exit::TEMPFAIL;

/// What a successful flow yields.
pub struct Token {
    pub access_token: String,
    /// The scopes GitHub says it granted.
    pub scopes: Vec<String>,
    /// Seconds the token lasts, when GitHub says (a GitHub App's expiring user token;
    /// an OAuth app's token does not expire).
    pub expires_in: Option<u64>,
}

/// The client id to use: `--client-id`, else `MOAT_GITHUB_CLIENT_ID`, else the built-in
/// one. An empty result is a configuration error that says how to supply one.
pub fn client_id(flag: Option<&str>) -> Result<String> {
    let (id, from) = match flag {
        Some(f) => (f.to_string(), "--client-id"),
        None => match crate::input::env("MOAT_GITHUB_CLIENT_ID") {
            Some(e) => (e, "MOAT_GITHUB_CLIENT_ID"),
            None => (BUILTIN_CLIENT_ID.to_string(), "built in"),
        },
    };
    let id = id.trim().to_string();
    if id.is_empty() {
        return Err(Error::config(
            "the device flow needs a GitHub OAuth app's client id, and moat ships none",
        )
        .with_hint(
            "register an OAuth app on GitHub with \"Enable Device Flow\" ticked, then set MOAT_GITHUB_CLIENT_ID=ID or pass --client-id ID (or import a token: GH_TOKEN, `gh auth login`, --token-stdin)",
        ));
    }
    let ok = id.len() <= 100
        && id
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || b"._-".contains(&b));
    if !ok {
        return Err(Error::usage(format!(
            "the client id ({from}) must be letters, digits, '.', '_' or '-' (at most 100)"
        )));
    }
    Ok(id)
}

/// Whether a client id is configured (flag or environment or built in), without failing.
pub fn client_id_configured(flag: Option<&str>) -> bool {
    flag.is_some()
        || crate::input::env("MOAT_GITHUB_CLIENT_ID").is_some()
        || !BUILTIN_CLIENT_ID.is_empty()
}

/// An error word from GitHub, shown only when it is a short lowercase identifier.
fn error_word(v: &Value) -> Option<String> {
    let e = v.get("error")?.as_str()?;
    if !e.is_empty() && e.len() <= 64 && e.bytes().all(|b| b.is_ascii_lowercase() || b == b'_') {
        Some(e.to_string())
    } else {
        Some("an unrecognised error".to_string())
    }
}

/// Short printable ASCII with no spaces, or `None`.
fn printable(v: &Value, max: usize) -> Option<&str> {
    let s = v.as_str()?;
    (!s.is_empty() && s.len() <= max && s.bytes().all(|b| (0x21..=0x7e).contains(&b))).then_some(s)
}

/// GitHub's scope list ("repo,read:org" in the token answer, "repo, read:org" in
/// `X-OAuth-Scopes`).
pub fn parse_scopes(s: &str) -> Vec<String> {
    s.split([',', ' '])
        .filter(|x| !x.is_empty())
        .map(String::from)
        .collect()
}

fn post(
    net: &Net,
    tls: &std::sync::Arc<rustls::ClientConfig>,
    url: &str,
    body: Vec<u8>,
) -> Result<std::result::Result<(u16, Value), String>> {
    let r = net.send(
        tls,
        Request {
            method: "POST",
            url,
            headers: Vec::new(),
            body: Some(("application/x-www-form-urlencoded", body)),
            timeout: REQUEST_TIMEOUT,
        },
    )?;
    Ok(r.map(|r| (r.status, r.json())))
}

/// A refusal of the client id or the request itself: the configuration is wrong.
fn refused(word: &str) -> Error {
    let hint = match word {
        "device_flow_disabled" => "enable \"Device Flow\" in the OAuth app's settings on GitHub",
        "incorrect_client_credentials" | "unauthorized_client" => {
            "check the client id (--client-id or MOAT_GITHUB_CLIENT_ID)"
        }
        _ => "check the client id and the scopes, then run it again",
    };
    Error::config(format!("GitHub refused the device flow: {word}")).with_hint(hint.to_string())
}

/// Run the flow: request codes, show the user code, poll until an answer.
pub fn run(net: &Net, client_id: &str, scopes: &[String]) -> Result<Token> {
    let tls = net.tls()?;
    let scope = scopes.join(" ");
    let body = form(&[("client_id", client_id), ("scope", &scope)]);
    let (status, v) = match post(net, &tls, DEVICE_CODE_URL, body)? {
        Ok(x) => x,
        Err(why) => {
            return Err(Error::unavailable(format!(
                "could not reach github.com for a device code: {why}"
            )));
        }
    };
    if let Some(word) = error_word(&v) {
        return Err(refused(&word));
    }
    if !(200..300).contains(&status) {
        return Err(Error::unavailable(format!(
            "github.com answered the device code request with HTTP {status}"
        )));
    }
    let bad = |what: &str| {
        Error::data(format!(
            "github.com's device code answer has no valid {what}"
        ))
    };
    let device_code = printable(&v["device_code"], 512)
        .ok_or_else(|| bad("device_code"))?
        .to_string();
    let user_code = printable(&v["user_code"], 32)
        .filter(|c| c.bytes().all(|b| b.is_ascii_alphanumeric() || b == b'-'))
        .ok_or_else(|| bad("user_code"))?
        .to_string();
    let uri = printable(&v["verification_uri"], 200)
        .filter(|u| u.starts_with("https://"))
        .ok_or_else(|| bad("verification_uri"))?
        .to_string();
    let expires = v["expires_in"]
        .as_u64()
        .filter(|&e| e > 0)
        .map(Duration::from_secs)
        .unwrap_or(HARD_CAP)
        .min(HARD_CAP);
    let mut interval = v["interval"].as_u64().unwrap_or(5).clamp(1, 120);

    eprintln!("To authorize, visit: {uri}");
    eprintln!("Enter code: {user_code}");
    eprintln!(
        "moat-grant: waiting for the approval (up to {} min)...",
        expires.as_secs().div_ceil(60)
    );

    let deadline = Instant::now() + expires;
    let expired = || {
        Error::new(
            EXPIRED_EXIT,
            "the device code expired before it was approved; nothing was stored",
        )
        .with_hint("run `moat grant github` again and enter the new code")
    };
    let mut failures = 0;
    loop {
        let wait = Duration::from_secs(interval);
        if Instant::now() + wait > deadline {
            return Err(expired());
        }
        std::thread::sleep(wait);
        let body = form(&[
            ("client_id", client_id),
            ("device_code", &device_code),
            ("grant_type", GRANT_TYPE),
        ]);
        let (status, v) = match post(net, &tls, TOKEN_URL, body)? {
            Ok(x) => {
                failures = 0;
                x
            }
            Err(why) => {
                failures += 1;
                if failures >= MAX_NETWORK_FAILURES {
                    return Err(Error::unavailable(format!(
                        "could not reach github.com to finish the sign-in: {why}"
                    )));
                }
                continue;
            }
        };
        if let Some(t) = v.get("access_token") {
            let t = t
                .as_str()
                .ok_or_else(|| Error::data("github.com's token answer is not valid"))?;
            let access_token = crate::input::check_token(t, "GitHub access token")?;
            let scopes = v["scope"].as_str().map(parse_scopes).unwrap_or_default();
            return Ok(Token {
                access_token,
                scopes,
                expires_in: v["expires_in"].as_u64().filter(|&e| e > 0),
            });
        }
        match error_word(&v).as_deref() {
            Some("authorization_pending") => {}
            Some("slow_down") => {
                interval = v["interval"]
                    .as_u64()
                    .filter(|&i| i > interval)
                    .unwrap_or(interval + 5)
                    .min(120);
            }
            Some("expired_token") => return Err(expired()),
            Some("access_denied") => {
                return Err(Error::noperm(
                    "the authorization was denied on GitHub; nothing was stored",
                ));
            }
            Some(word) => return Err(refused(word)),
            None => {
                return Err(Error::unavailable(format!(
                    "github.com answered the token request with HTTP {status} and no token"
                )));
            }
        }
    }
}

/// Does a token with `granted` scopes have everything in `wanted`? GitHub's parent
/// scopes include their children (`repo` covers `public_repo`, `admin:org` covers
/// `read:org`, ...).
pub fn covers(granted: &[String], wanted: &str) -> bool {
    const PARENTS: &[(&str, &[&str])] = &[
        (
            "repo",
            &[
                "repo:status",
                "repo_deployment",
                "public_repo",
                "repo:invite",
                "security_events",
            ],
        ),
        ("admin:org", &["write:org", "manage_runners:org"]),
        ("write:org", &["read:org"]),
        ("admin:public_key", &["write:public_key", "read:public_key"]),
        ("write:public_key", &["read:public_key"]),
        ("admin:repo_hook", &["write:repo_hook", "read:repo_hook"]),
        ("write:repo_hook", &["read:repo_hook"]),
        ("user", &["read:user", "user:email", "user:follow"]),
        ("write:packages", &["read:packages"]),
        ("admin:gpg_key", &["write:gpg_key", "read:gpg_key"]),
        ("write:gpg_key", &["read:gpg_key"]),
        (
            "admin:ssh_signing_key",
            &["write:ssh_signing_key", "read:ssh_signing_key"],
        ),
        ("write:ssh_signing_key", &["read:ssh_signing_key"]),
        (
            "admin:enterprise",
            &[
                "manage_runners:enterprise",
                "manage_billing:enterprise",
                "read:enterprise",
            ],
        ),
        ("project", &["read:project"]),
        ("write:discussion", &["read:discussion"]),
    ];
    fn implies(g: &str, wanted: &str, depth: u32) -> bool {
        g == wanted
            || (depth < 4
                && PARENTS
                    .iter()
                    .filter(|(p, _)| *p == g)
                    .any(|(_, kids)| kids.iter().any(|k| implies(k, wanted, depth + 1))))
    }
    granted.iter().any(|g| implies(g, wanted, 0))
}

/// The scopes of `wanted` a token with `granted` lacks.
pub fn missing(granted: &[String], wanted: &[String]) -> Vec<String> {
    wanted
        .iter()
        .filter(|w| !covers(granted, w))
        .cloned()
        .collect()
}

/// A scope as GitHub spells them: lowercase letters, digits, `:` and `_`.
pub fn check_scope(s: &str) -> Result<()> {
    let ok = !s.is_empty()
        && s.len() <= 40
        && s.as_bytes()[0].is_ascii_lowercase()
        && s.bytes()
            .all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || b":_".contains(&b));
    if ok {
        Ok(())
    } else {
        Err(Error::usage(format!(
            "bad scope {s:?}: GitHub scopes are lowercase words such as repo, read:org, workflow"
        )))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn v(s: &[&str]) -> Vec<String> {
        s.iter().map(|x| x.to_string()).collect()
    }

    #[test]
    fn parent_scopes_cover_their_children() {
        assert!(covers(&v(&["repo"]), "repo"));
        assert!(covers(&v(&["repo", "gist"]), "public_repo"));
        assert!(covers(&v(&["admin:org"]), "read:org"));
        assert!(!covers(&v(&["read:org"]), "admin:org"));
        assert!(!covers(&v(&["public_repo"]), "repo"));
        assert!(!covers(&v(&[]), "repo"));
        assert_eq!(missing(&v(&["gist"]), &v(&["repo", "gist"])), v(&["repo"]));
        assert_eq!(parse_scopes("repo, read:org"), v(&["repo", "read:org"]));
        assert_eq!(parse_scopes("repo,gist"), v(&["repo", "gist"]));
    }

    #[test]
    fn scopes_and_client_ids_are_checked() {
        for ok in ["repo", "read:org", "admin:repo_hook", "write:packages"] {
            check_scope(ok).unwrap();
        }
        for bad in ["", "Repo", "re po", "a/b", ":x", &"x".repeat(41)] {
            assert_eq!(check_scope(bad).unwrap_err().code, 64, "{bad}");
        }
        assert_eq!(client_id(Some("Ov23li.abc_D-1")).unwrap(), "Ov23li.abc_D-1");
        assert_eq!(client_id(Some("a b")).unwrap_err().code, 64);
        assert_eq!(client_id(Some("x\u{1b}[2J")).unwrap_err().code, 64);
        assert_eq!(client_id(Some(" ")).unwrap_err().code, 78);
    }

    #[test]
    fn error_words_are_shown_only_when_plain() {
        let j = |s: &str| serde_json::from_str::<Value>(s).unwrap();
        assert_eq!(
            error_word(&j(r#"{"error":"slow_down"}"#)).as_deref(),
            Some("slow_down")
        );
        assert_eq!(
            error_word(&j(r#"{"error":"\u001b[31mgho_x"}"#)).as_deref(),
            Some("an unrecognised error")
        );
        assert_eq!(error_word(&j(r#"{"x":1}"#)), None);
    }
}
