//! `secrets:` references, parsed and resolved on the host at run start: `op://vault/item/field`
//! through the 1Password CLI, `ssm:///path` (the default region) and `ssm://region/path`
//! through SSM. Every error names the secret (its variable and its reference, never a value)
//! and says what to do.

use crate::aws::{AwsError, Endpoint, Service};
use crate::creds::{self, Credentials, CredsError};
use crate::env::Env;
use crate::http::{HttpClient, HttpError};
use crate::op::{self, OpError};
use crate::secret::Secret;
use crate::ssm;
use std::fmt;
use std::time::Duration;

/// A parsed reference. `Display` gives it back as written.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum SecretRef {
    /// The whole `op://…` reference, handed to `op read` unchanged.
    OnePassword(String),
    /// An SSM parameter; `region` is `None` for `ssm:///…` (the default region).
    Ssm {
        region: Option<String>,
        name: String,
    },
}

impl SecretRef {
    pub fn parse(s: &str) -> Result<SecretRef, String> {
        if let Some(rest) = s.strip_prefix("op://") {
            let path = rest.split('?').next().unwrap_or("");
            let parts: Vec<&str> = path.split('/').collect();
            if parts.len() < 3 || parts.iter().any(|p| p.trim().is_empty()) {
                return Err("a 1Password reference is op://VAULT/ITEM/FIELD".into());
            }
            return Ok(SecretRef::OnePassword(s.to_string()));
        }
        if let Some(rest) = s.strip_prefix("ssm://") {
            let (region, path) = match rest.find('/') {
                Some(i) => (&rest[..i], &rest[i..]),
                None => (rest, ""),
            };
            if path.trim_matches('/').is_empty() {
                return Err("an SSM reference is ssm:///PATH or ssm://REGION/PATH".into());
            }
            if !region.is_empty()
                && !region
                    .bytes()
                    .all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || b == b'-')
            {
                return Err(format!("{region:?} is not an AWS region"));
            }
            return Ok(SecretRef::Ssm {
                region: (!region.is_empty()).then(|| region.to_string()),
                name: path.to_string(),
            });
        }
        Err(
            "unknown secret backend; use op://VAULT/ITEM/FIELD, ssm:///PATH or ssm://REGION/PATH"
                .into(),
        )
    }
}

impl std::str::FromStr for SecretRef {
    type Err = String;
    fn from_str(s: &str) -> Result<Self, String> {
        SecretRef::parse(s)
    }
}

impl fmt::Display for SecretRef {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            SecretRef::OnePassword(r) => f.write_str(r),
            SecretRef::Ssm { region, name } => {
                write!(f, "ssm://{}{name}", region.as_deref().unwrap_or(""))
            }
        }
    }
}

#[derive(Debug, thiserror::Error)]
pub enum Cause {
    #[error("{0}")]
    BadReference(String),
    #[error(transparent)]
    Op(#[from] OpError),
    #[error(transparent)]
    Aws(#[from] AwsError),
    #[error(transparent)]
    Creds(#[from] CredsError),
    #[error(transparent)]
    Http(#[from] HttpError),
    #[error("no AWS region for an ssm:/// reference")]
    NoRegion,
}

/// Which secret failed and why. `Display` is one line; [`ResolveError::hint`] says what to do.
#[derive(Debug, thiserror::Error)]
#[error("secret {name} ({reference}): {cause}")]
pub struct ResolveError {
    pub name: String,
    pub reference: String,
    #[source]
    pub cause: Cause,
}

impl ResolveError {
    pub fn hint(&self) -> String {
        let r = &self.reference;
        match &self.cause {
            Cause::BadReference(_) => {
                format!("fix {} under secrets: in agent.yaml", self.name)
            }
            Cause::Op(OpError::Missing) => {
                "install the 1Password CLI and sign in, or remove the op:// secret".into()
            }
            Cause::Op(OpError::Timeout { .. }) => {
                "sign in first (`op signin`), or set OP_SERVICE_ACCOUNT_TOKEN".into()
            }
            Cause::Op(_) => format!(
                "check the reference with `op read '{r}'` and that you are signed in (`op signin`)"
            ),
            Cause::Aws(e) => match e.code() {
                Some("ParameterNotFound") => format!(
                    "create the parameter (`aws ssm put-parameter --name ... --type SecureString`) or fix {r} in agent.yaml"
                ),
                Some(c) if e.exit_code() == moat_core::exit::NOPERM => format!(
                    "AWS said {c}: the host's AWS identity needs ssm:GetParameter (and kms:Decrypt for SecureString) on the parameter"
                ),
                _ => "check the SSM endpoint (AWS_ENDPOINT_URL_SSM, AWS_ENDPOINT_URL) and the network".into(),
            },
            Cause::Creds(_) => {
                "give the host AWS credentials (AWS_ACCESS_KEY_ID/AWS_SECRET_ACCESS_KEY or ~/.aws/credentials)".into()
            }
            Cause::Http(_) => {
                "check AWS_ENDPOINT_URL_SSM / AWS_ENDPOINT_URL / AWS_CA_BUNDLE".into()
            }
            Cause::NoRegion => format!(
                "set AWS_REGION, or name the region in the reference: ssm://REGION{}",
                r.strip_prefix("ssm://").unwrap_or("")
            ),
        }
    }

    pub fn exit_code(&self) -> i32 {
        use moat_core::exit;
        match &self.cause {
            Cause::BadReference(_) | Cause::NoRegion => exit::CONFIG,
            Cause::Op(e) => e.exit_code(),
            Cause::Aws(e) => e.exit_code(),
            Cause::Creds(e) => e.exit_code(),
            Cause::Http(e) => e.exit_code(),
        }
    }
}

impl From<ResolveError> for moat_core::Error {
    fn from(e: ResolveError) -> Self {
        let hint = e.hint();
        moat_core::Error::new(e.exit_code(), e.to_string()).with_hint(hint)
    }
}

/// Resolves references with one environment; the HTTP client and host AWS credentials are
/// made on first SSM use and shared by later ones.
pub struct Resolver {
    env: Env,
    op_timeout: Duration,
    aws_profile: Option<String>,
    aws: tokio::sync::OnceCell<(HttpClient, Credentials)>,
}

impl fmt::Debug for Resolver {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Resolver")
            .field("op_timeout", &self.op_timeout)
            .field("aws_profile", &self.aws_profile)
            .finish()
    }
}

impl Resolver {
    pub fn new(env: Env) -> Self {
        Resolver {
            env,
            op_timeout: op::DEFAULT_TIMEOUT,
            aws_profile: None,
            aws: tokio::sync::OnceCell::new(),
        }
    }

    pub fn op_timeout(mut self, d: Duration) -> Self {
        self.op_timeout = d;
        self
    }

    /// Read AWS credentials from this profile of the shared files instead of the default chain.
    pub fn aws_profile(mut self, profile: Option<String>) -> Self {
        self.aws_profile = profile;
        self
    }

    /// One secret: `name` is the variable the config gives it (for messages).
    pub async fn resolve(&self, name: &str, reference: &str) -> Result<Secret, ResolveError> {
        let err = |cause: Cause| ResolveError {
            name: name.to_string(),
            reference: reference.to_string(),
            cause,
        };
        match SecretRef::parse(reference).map_err(|m| err(Cause::BadReference(m)))? {
            SecretRef::OnePassword(r) => op::read(&self.env, &r, self.op_timeout)
                .await
                .map_err(|e| err(e.into())),
            SecretRef::Ssm {
                region,
                name: param,
            } => {
                let region = region
                    .or_else(|| creds::region(&self.env, self.aws_profile.as_deref()))
                    .ok_or_else(|| err(Cause::NoRegion))?;
                let endpoint = Endpoint::resolve(&self.env, Service::Ssm, &region)
                    .map_err(|e| err(e.into()))?;
                let (client, host) = self
                    .aws
                    .get_or_try_init(|| async {
                        let host = creds::load(&self.env, self.aws_profile.as_deref())
                            .map_err(Cause::from)?;
                        let client = HttpClient::new(&self.env).map_err(Cause::from)?;
                        Ok::<_, Cause>((client, host))
                    })
                    .await
                    .map_err(err)?;
                ssm::get_parameter(client, host, &endpoint, &param, true)
                    .await
                    .map_err(|e| err(e.into()))
            }
        }
    }

    /// Every `(NAME, reference)` pair, in order; the first failure stops the run.
    pub async fn resolve_all<I, K, V>(
        &self,
        secrets: I,
    ) -> Result<Vec<(String, Secret)>, ResolveError>
    where
        I: IntoIterator<Item = (K, V)>,
        K: AsRef<str>,
        V: AsRef<str>,
    {
        let mut out = Vec::new();
        for (name, reference) in secrets {
            let value = self.resolve(name.as_ref(), reference.as_ref()).await?;
            out.push((name.as_ref().to_string(), value));
        }
        Ok(out)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_the_documented_forms() {
        assert_eq!(
            SecretRef::parse("op://Dev/OpenAI/api-key").unwrap(),
            SecretRef::OnePassword("op://Dev/OpenAI/api-key".into())
        );
        assert_eq!(
            SecretRef::parse("ssm:///production/database/url").unwrap(),
            SecretRef::Ssm {
                region: None,
                name: "/production/database/url".into()
            }
        );
        let r = SecretRef::parse("ssm://us-west-2/prod/db/url").unwrap();
        assert_eq!(
            r,
            SecretRef::Ssm {
                region: Some("us-west-2".into()),
                name: "/prod/db/url".into()
            }
        );
        assert_eq!(r.to_string(), "ssm://us-west-2/prod/db/url");
        for bad in [
            "op://Dev/OpenAI",
            "op://Dev//f",
            "ssm://",
            "ssm:///",
            "ssm://us-west-2",
            "ssm://US WEST/x",
            "vault://x",
            "plain",
        ] {
            assert!(SecretRef::parse(bad).is_err(), "{bad}");
        }
    }
}
