//! What the proxy, the SSH filter and the launcher do with each grant: `inject` records
//! (hosts, header, value, placeholder), `env` records (the placeholder the container gets
//! in an environment variable), `ssh` and `aws_role` records. The hosts and headers follow
//! REFERENCE §2.7; placeholders are format-valid so clients that check a token's shape
//! accept them, and none of them is a real credential.

use crate::store::Credential;
use base64::Engine;
use base64::engine::general_purpose::STANDARD as B64;
use moat_core::Result;
use moat_core::rules::{
    AwsRole, EnvPlaceholder, Header, InjectRule, SshRule, TYPE_AWS_ROLE, TYPE_ENV, TYPE_INJECT,
    TYPE_SSH,
};
use serde_json::Value;

pub const GITHUB_PLACEHOLDER: &str = "ghp_moatProxyInjectedPlaceholder00000000";
pub const ANTHROPIC_KEY_PLACEHOLDER: &str = "sk-ant-api03-moatProxyInjectedPlaceholder00000000000000000000000000000000000000000000000000000000000000000AA";
pub const CLAUDE_OAUTH_PLACEHOLDER: &str = "sk-ant-oat01-moatProxyInjectedPlaceholder00000000000000000000000000000000000000000000000000000000000000000AA";
pub const OPENAI_PLACEHOLDER: &str =
    "sk-moat-proxy-injected-placeholder-0000000000000000000000000000000000000000";
pub const GEMINI_KEY_PLACEHOLDER: &str = "AIzamoatProxyInjectedPlaceholder0000000";
pub const GOOGLE_OAUTH_PLACEHOLDER: &str = "ya29.moatProxyInjectedPlaceholder";
pub const NPM_PLACEHOLDER: &str = "npm_moatProxyInjected0000000000000000000";

pub const ANTHROPIC_HOST: &str = "api.anthropic.com";
pub const OAUTH_BETA: &str = "oauth-2025-04-20";

fn inject(c: &Credential, hosts: &[&str], header: &str, value: String) -> InjectRule {
    InjectRule {
        grant: c.name.clone(),
        hosts: hosts.iter().map(|h| h.to_string()).collect(),
        header: header.into(),
        value,
        extra_headers: Vec::new(),
        placeholder: None,
        stub_only: false,
    }
}

fn env(c: &Credential, name: &str, value: &str) -> EnvPlaceholder {
    EnvPlaceholder {
        grant: c.name.clone(),
        name: name.into(),
        value: value.into(),
    }
}

fn strs(v: Option<&Value>) -> Vec<String> {
    v.and_then(Value::as_array)
        .map(|a| {
            a.iter()
                .filter_map(Value::as_str)
                .map(String::from)
                .collect()
        })
        .unwrap_or_default()
}

/// The hosts a credential is sent to (for `list`; no secret needed).
pub fn hosts(c: &Credential) -> Vec<String> {
    match (c.provider.as_str(), c.kind.as_str()) {
        ("github", _) => vec!["api.github.com".into(), "github.com".into()],
        ("anthropic", _) => vec![ANTHROPIC_HOST.into()],
        ("openai", "chatgpt") => vec!["chatgpt.com".into()],
        ("openai", _) => vec!["api.openai.com".into()],
        ("gemini", "oauth") => vec![
            "cloudcode-pa.googleapis.com".into(),
            "oauth2.googleapis.com".into(),
        ],
        ("gemini", _) => vec!["generativelanguage.googleapis.com".into()],
        ("npm", _) => strs(c.config.get("registries"))
            .into_iter()
            .map(|r| r.split('/').next().unwrap_or_default().to_string())
            .collect(),
        ("ssh", _) => c.config_str("host").map(String::from).into_iter().collect(),
        ("mcp" | "http", _) => strs(c.config.get("hosts")),
        _ => Vec::new(),
    }
}

/// Every record for one credential, as (type, body). Fails, naming the credential, if a
/// field the provider needs is missing.
pub fn records(c: &Credential) -> Result<Vec<(&'static str, Value)>> {
    let mut out: Vec<(&'static str, Value)> = Vec::new();
    let mut push_inject = |r: InjectRule| -> Result<()> {
        out.push((TYPE_INJECT, serde_json::to_value(r)?));
        Ok(())
    };
    let mut envs = Vec::new();
    match (c.provider.as_str(), c.kind.as_str()) {
        ("github", _) => {
            let t = c.need_secret("token")?;
            let mut api = inject(
                c,
                &["api.github.com"],
                "Authorization",
                format!("Bearer {t}"),
            );
            api.placeholder = Some(GITHUB_PLACEHOLDER.into());
            push_inject(api)?;
            // git's smart HTTP refuses Bearer; it takes Basic with this fixed user name.
            let basic = B64.encode(format!("x-access-token:{t}"));
            let mut git = inject(
                c,
                &["github.com"],
                "Authorization",
                format!("Basic {basic}"),
            );
            git.placeholder = Some(GITHUB_PLACEHOLDER.into());
            push_inject(git)?;
            envs.push(env(c, "GH_TOKEN", GITHUB_PLACEHOLDER));
        }
        ("anthropic", "oauth") => {
            let t = c.need_secret("access_token")?;
            let mut r = inject(c, &[ANTHROPIC_HOST], "Authorization", format!("Bearer {t}"));
            r.extra_headers.push(Header {
                name: "anthropic-beta".into(),
                value: OAUTH_BETA.into(),
            });
            r.placeholder = Some(CLAUDE_OAUTH_PLACEHOLDER.into());
            push_inject(r)?;
        }
        ("anthropic", _) => {
            let k = c.need_secret("api_key")?;
            let mut r = inject(c, &[ANTHROPIC_HOST], "x-api-key", k.into());
            r.placeholder = Some(ANTHROPIC_KEY_PLACEHOLDER.into());
            push_inject(r)?;
            envs.push(env(c, "ANTHROPIC_API_KEY", ANTHROPIC_KEY_PLACEHOLDER));
        }
        ("openai", "chatgpt") => {
            let t = c.need_secret("access_token")?;
            let mut r = inject(c, &["chatgpt.com"], "Authorization", format!("Bearer {t}"));
            if let Some(a) = c.config_str("account_id") {
                r.extra_headers.push(Header {
                    name: "chatgpt-account-id".into(),
                    value: a.into(),
                });
            }
            push_inject(r)?;
        }
        ("openai", _) => {
            let k = c.need_secret("api_key")?;
            let mut r = inject(
                c,
                &["api.openai.com"],
                "Authorization",
                format!("Bearer {k}"),
            );
            r.placeholder = Some(OPENAI_PLACEHOLDER.into());
            push_inject(r)?;
            envs.push(env(c, "OPENAI_API_KEY", OPENAI_PLACEHOLDER));
        }
        ("gemini", "oauth") => {
            let t = c.need_secret("access_token")?;
            let mut r = inject(
                c,
                // The Gemini CLI checks its token at oauth2.googleapis.com/tokeninfo (with
                // the token as a bearer) before anything else.
                &["cloudcode-pa.googleapis.com", "oauth2.googleapis.com"],
                "Authorization",
                format!("Bearer {t}"),
            );
            r.placeholder = Some(GOOGLE_OAUTH_PLACEHOLDER.into());
            push_inject(r)?;
        }
        ("gemini", _) => {
            let k = c.need_secret("api_key")?;
            let mut r = inject(
                c,
                &["generativelanguage.googleapis.com"],
                "x-goog-api-key",
                k.into(),
            );
            r.placeholder = Some(GEMINI_KEY_PLACEHOLDER.into());
            push_inject(r)?;
            envs.push(env(c, "GEMINI_API_KEY", GEMINI_KEY_PLACEHOLDER));
        }
        ("npm", _) => {
            let regs = c
                .secret
                .get("registries")
                .and_then(Value::as_array)
                .ok_or_else(|| {
                    moat_core::Error::data(format!(
                        "credential {}: the stored npm has no registries",
                        c.name
                    ))
                })?;
            for r in regs {
                let (Some(h), Some(t)) = (r["host"].as_str(), r["token"].as_str()) else {
                    return Err(moat_core::Error::data(format!(
                        "credential {}: a stored npm registry is incomplete",
                        c.name
                    )));
                };
                let mut rule = inject(c, &[h], "Authorization", format!("Bearer {t}"));
                rule.placeholder = Some(NPM_PLACEHOLDER.into());
                push_inject(rule)?;
            }
        }
        ("mcp" | "http", _) => {
            let t = c.need_secret("token")?;
            let hosts = strs(c.config.get("hosts"));
            let header = c.need_config("header")?;
            let prefix = c.config_str("prefix").unwrap_or("");
            let hs: Vec<&str> = hosts.iter().map(String::as_str).collect();
            let mut r = inject(c, &hs, header, format!("{prefix}{t}"));
            if c.provider == "mcp" {
                // The CLI's entry for the server carries this stub; the proxy swaps it for
                // the credential and leaves any other value the client sends alone.
                r.placeholder = Some(format!("moat-stub-{}", c.name));
                r.stub_only = true;
            }
            push_inject(r)?;
        }
        ("ssh", _) => {
            let r = SshRule {
                grant: c.name.clone(),
                host: c.need_config("host")?.into(),
                fingerprint: c.need_config("fingerprint")?.into(),
                host_keys: strs(c.config.get("host_keys")),
                sshsig_namespaces: strs(c.config.get("sshsig_namespaces")),
            };
            out.push((TYPE_SSH, serde_json::to_value(r)?));
        }
        ("aws", _) => {
            let r = AwsRole {
                grant: c.name.clone(),
                role_arn: c.need_config("role_arn")?.into(),
                region: c.config_str("region").unwrap_or("us-east-1").into(),
                session_duration_secs: c
                    .config
                    .get("session_duration_secs")
                    .and_then(Value::as_u64)
                    .unwrap_or(900),
                external_id: c.config_str("external_id").map(String::from),
            };
            out.push((TYPE_AWS_ROLE, serde_json::to_value(r)?));
        }
        (crate::decoy::PROVIDER, _) => {
            out.push((crate::decoy::TYPE_DECOY, crate::decoy::record(c)?))
        }
        (p, _) => {
            return Err(moat_core::Error::data(format!(
                "credential {}: unknown provider {p:?}",
                c.name
            )));
        }
    }
    for e in envs {
        out.push((TYPE_ENV, serde_json::to_value(e)?));
    }
    Ok(out)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn placeholders_have_the_real_formats() {
        assert_eq!(GITHUB_PLACEHOLDER.len(), 4 + 36);
        assert_eq!(NPM_PLACEHOLDER.len(), 4 + 36);
        assert_eq!(GEMINI_KEY_PLACEHOLDER.len(), 39);
        assert_eq!(ANTHROPIC_KEY_PLACEHOLDER.len(), 108);
        assert_eq!(CLAUDE_OAUTH_PLACEHOLDER.len(), 108);
        assert_eq!(OPENAI_PLACEHOLDER.len(), 35 + 40);
    }

    #[test]
    fn github_gets_bearer_and_git_basic() {
        let mut c = Credential::new("github", "token", "stdin");
        c.secret.insert("token".into(), "ghp_T".into());
        let r = records(&c).unwrap();
        assert_eq!(r.len(), 3);
        assert_eq!(r[0].1["value"], "Bearer ghp_T");
        assert_eq!(r[1].1["hosts"][0], "github.com");
        assert_eq!(
            r[1].1["value"],
            format!("Basic {}", B64.encode("x-access-token:ghp_T"))
        );
        assert_eq!(r[2].0, "env");
        assert_eq!(r[2].1["name"], "GH_TOKEN");
    }

    #[test]
    fn subscriptions_add_the_beta_header() {
        let mut c = Credential::new("anthropic", "oauth", "stdin");
        c.secret
            .insert("access_token".into(), "sk-ant-oat01-x".into());
        let r = records(&c).unwrap();
        assert_eq!(r.len(), 1);
        assert_eq!(r[0].1["extra_headers"][0]["value"], OAUTH_BETA);
        let c = Credential::new("anthropic", "api_key", "stdin");
        assert!(records(&c).unwrap_err().msg.contains("no api_key"));
    }
}
