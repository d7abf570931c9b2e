//! Online validation: before a credential is stored, ask its service whether it is good.
//! A definite no (401; 403 unless it is a rate limit or OpenAI's "this restricted key may
//! not list models") refuses the grant and nothing is stored; no answer (the
//! service unreachable, slow, or failing with 5xx) only warns, because a grant made
//! offline is still useful. Subscriptions (OAuth sign-ins) are not checked here: their
//! access token may have expired while the refresh token is good, and `refresh` is the
//! call that proves them. Messages name the service and status, never a value.

use crate::net::{Net, Request};
use crate::store::Credential;
use moat_core::{Error, Result};
use serde_json::Value;
use std::time::Duration;

/// Connect and answer, together: a grant should not hang on a dead network.
const TIMEOUT: Duration = Duration::from_secs(5);

/// One question to a service about a credential.
struct Probe {
    /// The service, for messages ("api.github.com").
    service: String,
    url: String,
    headers: Vec<(&'static str, String)>,
    /// Google answers a bad API key with 400 API_KEY_INVALID.
    rejects_on_400: bool,
    /// OpenAI answers 403 for a restricted key without the models permission, which
    /// may still be good for what the agent does: only 401 is a no there.
    rejects_on_403: bool,
    /// Where the account name is in a good answer, if the service says.
    login: Option<&'static str>,
}

fn probe(service: &str, url: String, headers: Vec<(&'static str, String)>) -> Probe {
    Probe {
        service: service.into(),
        url,
        headers,
        rejects_on_400: false,
        rejects_on_403: true,
        login: None,
    }
}

fn probes(c: &Credential) -> Result<Vec<Probe>> {
    Ok(match (c.provider.as_str(), c.kind.as_str()) {
        ("github", _) => {
            let t = c.need_secret("token")?;
            let mut p = probe(
                "api.github.com",
                "https://api.github.com/user".into(),
                vec![
                    ("authorization", format!("Bearer {t}")),
                    ("accept", "application/vnd.github+json".into()),
                    ("x-github-api-version", "2022-11-28".into()),
                ],
            );
            p.login = Some("login");
            vec![p]
        }
        ("anthropic", "api_key") => vec![probe(
            "api.anthropic.com",
            "https://api.anthropic.com/v1/models".into(),
            vec![
                ("x-api-key", c.need_secret("api_key")?.to_string()),
                ("anthropic-version", "2023-06-01".into()),
            ],
        )],
        ("openai", "api_key") => {
            let mut p = probe(
                "api.openai.com",
                "https://api.openai.com/v1/models".into(),
                vec![(
                    "authorization",
                    format!("Bearer {}", c.need_secret("api_key")?),
                )],
            );
            p.rejects_on_403 = false;
            vec![p]
        }
        ("gemini", "api_key") => {
            let mut p = probe(
                "generativelanguage.googleapis.com",
                "https://generativelanguage.googleapis.com/v1beta/models".into(),
                vec![("x-goog-api-key", c.need_secret("api_key")?.to_string())],
            );
            p.rejects_on_400 = true;
            vec![p]
        }
        ("npm", _) => {
            let regs = c
                .secret
                .get("registries")
                .and_then(Value::as_array)
                .cloned()
                .unwrap_or_default();
            let mut out = Vec::new();
            for r in regs {
                let (Some(h), Some(p), Some(t)) =
                    (r["host"].as_str(), r["path"].as_str(), r["token"].as_str())
                else {
                    continue;
                };
                if h.starts_with("http://") {
                    // A plain-HTTP registry: the token is not sent in clear to check it.
                    continue;
                }
                let mut pr = probe(
                    h,
                    format!("https://{h}{p}-/whoami"),
                    vec![("authorization", format!("Bearer {t}"))],
                );
                pr.login = Some("username");
                out.push(pr);
            }
            out
        }
        _ => Vec::new(),
    })
}

/// Check a credential with its service. `Ok` when it was accepted or could not be asked
/// (with one warning line); an `exit 1` error when the service said no.
pub fn check(c: &mut Credential, net: &Net) -> Result<()> {
    let probes = probes(c)?;
    if probes.is_empty() {
        return Ok(());
    }
    let tls = net.tls()?;
    for p in probes {
        let answer = net.send(
            &tls,
            Request {
                method: "GET",
                url: &p.url,
                headers: p.headers,
                body: None,
                timeout: TIMEOUT,
            },
        )?;
        let warn = |why: &str| {
            eprintln!(
                "moat-grant: warning: could not validate the {} {} with {}: {why}; stored anyway",
                c.provider,
                kind_phrase(c),
                p.service
            );
            if c.provider == "github" && !c.scopes.is_empty() && c.source != "device" {
                eprintln!(
                    "moat-grant: warning: the token's scopes were not checked against {}",
                    c.scopes.join(", ")
                );
            }
        };
        match answer {
            Ok(r) if (200..300).contains(&r.status) => {
                if c.provider == "github" {
                    crate::providers::github::check_scopes(c, r.oauth_scopes.as_deref())?;
                }
                if let Some(field) = p.login
                    && let Some(login) = r.json()[field].as_str().and_then(account_name)
                {
                    eprintln!("moat-grant: Authenticated as: {login} ({})", p.service);
                    if c.provider == "github" {
                        c.config.insert("login".into(), login.into());
                    }
                }
            }
            Ok(r)
                if r.status == 401
                    || (p.rejects_on_403 && r.status == 403 && !r.rate_limited)
                    || (p.rejects_on_400 && r.status == 400) =>
            {
                return Err(Error::no(format!(
                    "{}: {} rejected the {}: HTTP {}; nothing was stored",
                    c.provider,
                    p.service,
                    kind_phrase(c),
                    r.status
                ))
                .with_hint(
                    "check the credential, or pass --no-validate to store it without asking",
                ));
            }
            Ok(r) if r.rate_limited => warn(&format!("HTTP {} (rate limited)", r.status)),
            Ok(r) => warn(&format!("HTTP {}", r.status)),
            Err(why) => warn(&why),
        }
    }
    Ok(())
}

fn kind_phrase(c: &Credential) -> &'static str {
    match c.kind.as_str() {
        "api_key" => "API key",
        _ => "token",
    }
}

/// An account name as services spell them; anything else is not shown.
fn account_name(s: &str) -> Option<&str> {
    (!s.is_empty()
        && s.len() <= 100
        && s.bytes()
            .all(|b| b.is_ascii_alphanumeric() || b"-_.@".contains(&b)))
    .then_some(s)
}
