//! The host's AWS credentials: the environment (`AWS_ACCESS_KEY_ID` …), then the shared
//! files (`~/.aws/credentials`, `~/.aws/config`) for the chosen profile, and the region.
//! Profiles that need a program run or a browser (SSO, `credential_process`, role chains) are
//! refused with a message that says what to do; the secret key never appears in `Debug`.

use crate::env::Env;
use crate::secret::Secret;
use std::collections::BTreeMap;
use std::fmt;
use std::path::{Path, PathBuf};

/// Where a set of credentials came from (for messages: never the values).
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Source {
    Environment,
    SharedFile {
        path: PathBuf,
        profile: String,
    },
    /// Issued by STS AssumeRole.
    AssumedRole,
    /// Given directly (tests, callers with their own credentials).
    Static,
}

impl fmt::Display for Source {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Source::Environment => f.write_str("environment (AWS_ACCESS_KEY_ID)"),
            Source::SharedFile { path, profile } => {
                write!(f, "profile {profile} in {}", path.display())
            }
            Source::AssumedRole => f.write_str("assumed role"),
            Source::Static => f.write_str("static credentials"),
        }
    }
}

#[derive(Clone)]
pub struct Credentials {
    pub access_key_id: String,
    secret_access_key: Secret,
    session_token: Option<Secret>,
    pub source: Source,
}

impl Credentials {
    pub fn new(
        access_key_id: impl Into<String>,
        secret_access_key: impl Into<Secret>,
        session_token: Option<Secret>,
        source: Source,
    ) -> Self {
        Credentials {
            access_key_id: access_key_id.into(),
            secret_access_key: secret_access_key.into(),
            session_token: session_token.filter(|t| !t.is_empty()),
            source,
        }
    }
    pub fn secret_access_key(&self) -> &str {
        self.secret_access_key.expose()
    }
    pub fn session_token(&self) -> Option<&str> {
        self.session_token.as_ref().map(Secret::expose)
    }
}

impl fmt::Debug for Credentials {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Credentials")
            .field("access_key_id", &self.access_key_id)
            .field("secret_access_key", &"[redacted]")
            .field(
                "session_token",
                &self.session_token.as_ref().map(|_| "[redacted]"),
            )
            .field("source", &self.source)
            .finish()
    }
}

#[derive(Debug, thiserror::Error)]
pub enum CredsError {
    #[error(
        "no AWS credentials found: set AWS_ACCESS_KEY_ID and AWS_SECRET_ACCESS_KEY, or add profile {profile} to {credentials}"
    )]
    NotFound {
        profile: String,
        credentials: String,
    },
    #[error("AWS_ACCESS_KEY_ID is set but AWS_SECRET_ACCESS_KEY is not; set both")]
    HalfEnv,
    #[error("profile {profile} in {path} has aws_access_key_id but no aws_secret_access_key")]
    HalfProfile { profile: String, path: String },
    #[error(
        "profile {profile} uses {what}, which moat does not run itself; export the credentials first (e.g. `eval \"$(aws configure export-credentials --profile {profile} --format env)\"`)"
    )]
    Unsupported { profile: String, what: &'static str },
    #[error("reading {path}: {msg}")]
    Read { path: String, msg: String },
}

impl CredsError {
    pub fn exit_code(&self) -> i32 {
        use moat_core::exit;
        match self {
            CredsError::Read { .. } => exit::IOERR,
            _ => exit::CONFIG,
        }
    }
}

impl From<CredsError> for moat_core::Error {
    fn from(e: CredsError) -> Self {
        moat_core::Error::new(e.exit_code(), e.to_string())
    }
}

/// The profile in use: `explicit`, else `AWS_PROFILE`, else `default`.
pub fn profile_name(env: &Env, explicit: Option<&str>) -> String {
    explicit
        .filter(|p| !p.is_empty())
        .or_else(|| env.get("AWS_PROFILE"))
        .unwrap_or("default")
        .to_string()
}

fn shared_credentials_path(env: &Env) -> Option<PathBuf> {
    env.get("AWS_SHARED_CREDENTIALS_FILE")
        .map(PathBuf::from)
        .or_else(|| env.home().map(|h| h.join(".aws/credentials")))
}

fn config_path(env: &Env) -> Option<PathBuf> {
    env.get("AWS_CONFIG_FILE")
        .map(PathBuf::from)
        .or_else(|| env.home().map(|h| h.join(".aws/config")))
}

/// The host's credentials. With no explicit profile the environment wins (as in the AWS
/// SDKs); with one (`moat grant aws --aws-profile`), the shared files are read for it.
pub fn load(env: &Env, explicit_profile: Option<&str>) -> Result<Credentials, CredsError> {
    if explicit_profile.is_none() {
        match (
            env.get("AWS_ACCESS_KEY_ID"),
            env.get("AWS_SECRET_ACCESS_KEY"),
        ) {
            (Some(id), Some(secret)) => {
                return Ok(Credentials::new(
                    id,
                    secret,
                    env.get("AWS_SESSION_TOKEN").map(Secret::from),
                    Source::Environment,
                ));
            }
            (Some(_), None) => return Err(CredsError::HalfEnv),
            _ => {}
        }
    }
    let profile = profile_name(env, explicit_profile);
    let cred_path = shared_credentials_path(env);
    if let Some(path) = &cred_path
        && let Some(sections) = read_ini(path)?
        && let Some(sec) = sections.get(&profile)
        && let Some(c) = from_section(sec, &profile, path)?
    {
        return Ok(c);
    }
    if let Some(path) = config_path(env)
        && let Some(sections) = read_ini(&path)?
    {
        let key = if profile == "default" {
            "default".to_string()
        } else {
            format!("profile {profile}")
        };
        if let Some(sec) = sections.get(&key).or_else(|| sections.get(&profile)) {
            if let Some(c) = from_section(sec, &profile, &path)? {
                return Ok(c);
            }
            for (k, what) in [
                ("credential_process", "credential_process"),
                ("sso_session", "AWS SSO"),
                ("sso_start_url", "AWS SSO"),
                ("role_arn", "role_arn (a role chain)"),
                ("web_identity_token_file", "web identity"),
            ] {
                if sec.contains_key(k) {
                    return Err(CredsError::Unsupported { profile, what });
                }
            }
        }
    }
    Err(CredsError::NotFound {
        profile,
        credentials: cred_path
            .map(|p| p.display().to_string())
            .unwrap_or_else(|| "~/.aws/credentials".into()),
    })
}

/// The region: `AWS_REGION`, `AWS_DEFAULT_REGION`, then `region` in the profile's config.
pub fn region(env: &Env, explicit_profile: Option<&str>) -> Option<String> {
    if let Some(r) = env
        .get("AWS_REGION")
        .or_else(|| env.get("AWS_DEFAULT_REGION"))
    {
        return Some(r.to_string());
    }
    let profile = profile_name(env, explicit_profile);
    let sections = read_ini(&config_path(env)?).ok()??;
    let key = if profile == "default" {
        "default".to_string()
    } else {
        format!("profile {profile}")
    };
    sections
        .get(&key)
        .or_else(|| sections.get(&profile))?
        .get("region")
        .filter(|r| !r.is_empty())
        .cloned()
}

fn from_section(
    sec: &BTreeMap<String, String>,
    profile: &str,
    path: &Path,
) -> Result<Option<Credentials>, CredsError> {
    let id = sec.get("aws_access_key_id").filter(|v| !v.is_empty());
    let secret = sec.get("aws_secret_access_key").filter(|v| !v.is_empty());
    match (id, secret) {
        (Some(id), Some(secret)) => Ok(Some(Credentials::new(
            id.clone(),
            secret.as_str(),
            sec.get("aws_session_token")
                .map(|t| Secret::from(t.as_str())),
            Source::SharedFile {
                path: path.to_path_buf(),
                profile: profile.to_string(),
            },
        ))),
        (Some(_), None) => Err(CredsError::HalfProfile {
            profile: profile.to_string(),
            path: path.display().to_string(),
        }),
        _ => Ok(None),
    }
}

type Ini = BTreeMap<String, BTreeMap<String, String>>;

/// `[section]` / `key = value` files as the AWS CLI writes them. A missing file is `None`;
/// indented lines (nested settings such as `s3 =` blocks) and comments are skipped.
fn read_ini(path: &Path) -> Result<Option<Ini>, CredsError> {
    let text = match std::fs::read_to_string(path) {
        Ok(t) => t,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(None),
        Err(e) => {
            return Err(CredsError::Read {
                path: path.display().to_string(),
                msg: moat_core::error::io_msg(&e),
            });
        }
    };
    Ok(Some(parse_ini(&text)))
}

fn parse_ini(text: &str) -> Ini {
    let mut out = Ini::new();
    let mut current: Option<String> = None;
    for line in text.lines() {
        if line.starts_with([' ', '\t']) {
            continue;
        }
        let line = line.trim();
        if line.is_empty() || line.starts_with('#') || line.starts_with(';') {
            continue;
        }
        if let Some(name) = line.strip_prefix('[').and_then(|l| l.strip_suffix(']')) {
            let name = name.split_whitespace().collect::<Vec<_>>().join(" ");
            out.entry(name.clone()).or_default();
            current = Some(name);
            continue;
        }
        if let (Some(sec), Some((k, v))) = (&current, line.split_once('=')) {
            out.entry(sec.clone())
                .or_default()
                .insert(k.trim().to_ascii_lowercase(), v.trim().to_string());
        }
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn ini_sections_and_nested_blocks() {
        let ini = parse_ini(
            "# c\n[default]\naws_access_key_id = A\n s3 =\n  max = 1\n[profile  dev]\nregion=eu-west-1\n; x\n",
        );
        assert_eq!(ini["default"]["aws_access_key_id"], "A");
        assert!(!ini["default"].contains_key("max"));
        assert_eq!(ini["profile dev"]["region"], "eu-west-1");
    }
}
