//! STS over the Query API: `AssumeRole` for a grant's role and `GetCallerIdentity` to show
//! who a set of credentials is. [`CredentialCache`] hands out one role session until five
//! minutes before it expires, refreshing at most once at a time.

use crate::aws::{self, AwsError, Endpoint};
use crate::creds::{Credentials, Source};
use crate::http::{HttpClient, origin};
use crate::secret::Secret;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{Duration, SystemTime, UNIX_EPOCH};

const VERSION: &str = "2011-06-15";

/// Default role session length (as the Go moat: 15 minutes, STS's minimum).
pub const DEFAULT_DURATION: Duration = Duration::from_secs(15 * 60);
/// STS's bounds on `DurationSeconds` (the role's own maximum may be lower).
pub const MIN_DURATION: Duration = Duration::from_secs(15 * 60);
pub const MAX_DURATION: Duration = Duration::from_secs(12 * 60 * 60);
/// Session credentials are replaced this long before they expire.
pub const REFRESH_MARGIN: Duration = Duration::from_secs(5 * 60);

/// Credentials issued by STS. `Debug` shows the key id and expiry only.
#[derive(Clone)]
pub struct SessionCredentials {
    pub access_key_id: String,
    pub secret_access_key: Secret,
    pub session_token: Secret,
    pub expiration: SystemTime,
}

impl std::fmt::Debug for SessionCredentials {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("SessionCredentials")
            .field("access_key_id", &self.access_key_id)
            .field("secret_access_key", &"[redacted]")
            .field("session_token", &"[redacted]")
            .field("expiration", &moat_core::timefmt::rfc3339(self.expiration))
            .finish()
    }
}

impl SessionCredentials {
    /// As credentials to sign further requests with.
    pub fn to_credentials(&self) -> Credentials {
        Credentials::new(
            self.access_key_id.clone(),
            self.secret_access_key.clone(),
            Some(self.session_token.clone()),
            Source::AssumedRole,
        )
    }

    /// The answer a `credential_process` helper prints:
    /// `{"Version":1,"AccessKeyId",…,"Expiration":"RFC 3339"}`. It contains the secret: write
    /// it only to the container's credential helper.
    pub fn credential_process_json(&self) -> String {
        serde_json::json!({
            "Version": 1,
            "AccessKeyId": self.access_key_id,
            "SecretAccessKey": self.secret_access_key.expose(),
            "SessionToken": self.session_token.expose(),
            "Expiration": moat_core::timefmt::rfc3339(self.expiration),
        })
        .to_string()
    }
}

/// The role a grant assumes.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct AssumeRole {
    pub role_arn: String,
    pub session_name: String,
    pub duration: Duration,
    pub external_id: Option<String>,
}

impl AssumeRole {
    /// Session name `moat-<unix seconds>` and the default duration.
    pub fn new(role_arn: impl Into<String>) -> Self {
        AssumeRole {
            role_arn: role_arn.into(),
            session_name: session_name(SystemTime::now()),
            duration: DEFAULT_DURATION,
            external_id: None,
        }
    }
}

/// `moat-<unix seconds>`, the Go moat's session names.
pub fn session_name(now: SystemTime) -> String {
    format!(
        "moat-{}",
        now.duration_since(UNIX_EPOCH).unwrap_or_default().as_secs()
    )
}

/// `sts:AssumeRole` with the host's credentials.
pub async fn assume_role(
    client: &HttpClient,
    host: &Credentials,
    endpoint: &Endpoint,
    role: &AssumeRole,
) -> Result<SessionCredentials, AwsError> {
    Ok(assume_role_dated(client, host, endpoint, role).await?.0)
}

/// [`assume_role`] and the server's `Date`, so the lifetime can be measured in the server's
/// own time (immune to a skewed host clock).
async fn assume_role_dated(
    client: &HttpClient,
    host: &Credentials,
    endpoint: &Endpoint,
    role: &AssumeRole,
) -> Result<(SessionCredentials, Option<SystemTime>), AwsError> {
    let duration = role.duration.as_secs().to_string();
    let mut params = vec![
        ("RoleArn", role.role_arn.as_str()),
        ("RoleSessionName", role.session_name.as_str()),
        ("DurationSeconds", duration.as_str()),
    ];
    if let Some(x) = &role.external_id {
        params.push(("ExternalId", x.as_str()));
    }
    let (doc, date) =
        aws::query_dated(client, host, endpoint, "AssumeRole", VERSION, &params).await?;
    let bad = |what: &str| AwsError::Response {
        service: "sts",
        action: "AssumeRole",
        endpoint: origin(&endpoint.url),
        what: what.to_string(),
    };
    let field = |name: &str| {
        crate::xml::text(&doc, name)
            .filter(|v| !v.is_empty())
            .ok_or_else(|| bad(&format!("no {name} in the answer")))
    };
    let expiration = field("Expiration")?;
    let creds = SessionCredentials {
        access_key_id: field("AccessKeyId")?,
        secret_access_key: Secret::new(field("SecretAccessKey")?),
        session_token: Secret::new(field("SessionToken")?),
        expiration: moat_core::timefmt::parse_rfc3339(&expiration)
            .ok_or_else(|| bad("Expiration is not an RFC 3339 time"))?,
    };
    Ok((creds, date))
}

/// Who a set of credentials is.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct CallerIdentity {
    pub account: String,
    pub arn: String,
    pub user_id: String,
}

/// `sts:GetCallerIdentity`: proves credentials work and names them.
pub async fn get_caller_identity(
    client: &HttpClient,
    creds: &Credentials,
    endpoint: &Endpoint,
) -> Result<CallerIdentity, AwsError> {
    let doc = aws::query(client, creds, endpoint, "GetCallerIdentity", VERSION, &[]).await?;
    let get = |n: &str| crate::xml::text(&doc, n).unwrap_or_default();
    let id = CallerIdentity {
        account: get("Account"),
        arn: get("Arn"),
        user_id: get("UserId"),
    };
    if id.arn.is_empty() {
        return Err(AwsError::Response {
            service: "sts",
            action: "GetCallerIdentity",
            endpoint: origin(&endpoint.url),
            what: "no Arn in the answer".into(),
        });
    }
    Ok(id)
}

/// Where the cache reads the time (tests move it).
pub trait Clock: Send + Sync {
    fn now(&self) -> SystemTime;
}

pub struct SystemClock;

impl Clock for SystemClock {
    fn now(&self) -> SystemTime {
        SystemTime::now()
    }
}

/// One role's session credentials, reused until [`REFRESH_MARGIN`] before expiry. Callers
/// share it behind an `Arc`; concurrent `get`s during a refresh wait for that one refresh.
pub struct CredentialCache {
    client: HttpClient,
    host: Credentials,
    endpoint: Endpoint,
    role: AssumeRole,
    clock: Arc<dyn Clock>,
    /// The session and when it expires on `clock`.
    current: tokio::sync::Mutex<Option<(SessionCredentials, SystemTime)>>,
    refreshes: AtomicU64,
}

impl std::fmt::Debug for CredentialCache {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("CredentialCache")
            .field("role", &self.role)
            .field("endpoint", &self.endpoint)
            .field("host", &self.host)
            .finish()
    }
}

impl CredentialCache {
    /// The first session uses `role.session_name`; later ones get `moat-<unix>` from the clock.
    pub fn new(
        client: HttpClient,
        host: Credentials,
        endpoint: Endpoint,
        role: AssumeRole,
        clock: Arc<dyn Clock>,
    ) -> Self {
        CredentialCache {
            client,
            host,
            endpoint,
            role,
            clock,
            current: tokio::sync::Mutex::new(None),
            refreshes: AtomicU64::new(0),
        }
    }

    /// Valid session credentials: the cached ones, or a new session when they are within
    /// five minutes of expiring.
    ///
    /// Expiry is judged on this cache's clock: the session's lifetime is measured in the
    /// server's time (`Expiration` minus the answer's `Date`) and counted from when the request
    /// was sent, so a host clock that is minutes off neither hands out dead credentials nor
    /// refreshes on every call.
    pub async fn get(&self) -> Result<SessionCredentials, AwsError> {
        let mut cur = self.current.lock().await;
        let now = self.clock.now();
        if let Some((c, until)) = cur.as_ref()
            && now + REFRESH_MARGIN < *until
        {
            return Ok(c.clone());
        }
        let mut role = self.role.clone();
        if self.refreshes.load(Ordering::Relaxed) > 0 {
            role.session_name = session_name(now);
        }
        let (fresh, date) =
            assume_role_dated(&self.client, &self.host, &self.endpoint, &role).await?;
        self.refreshes.fetch_add(1, Ordering::Relaxed);
        let until = match date.and_then(|d| fresh.expiration.duration_since(d).ok()) {
            Some(lifetime) => now + lifetime,
            None => fresh.expiration,
        };
        *cur = Some((fresh.clone(), until));
        Ok(fresh)
    }

    /// The cache for a grant as the host sees it: host credentials from `env` (or
    /// `aws_profile` in the shared files), the STS endpoint for `region` (honouring
    /// `AWS_ENDPOINT_URL_STS` / `AWS_ENDPOINT_URL`), the system clock.
    pub fn from_env(
        env: &crate::env::Env,
        aws_profile: Option<&str>,
        region: &str,
        role: AssumeRole,
    ) -> Result<Self, moat_core::Error> {
        let host = crate::creds::load(env, aws_profile)?;
        let client = HttpClient::new(env)?;
        let endpoint = Endpoint::resolve(env, crate::aws::Service::Sts, region)?;
        Ok(Self::new(
            client,
            host,
            endpoint,
            role,
            Arc::new(SystemClock),
        ))
    }

    /// How many times STS was asked (for logs and tests).
    pub fn refreshes(&self) -> u64 {
        self.refreshes.load(Ordering::Relaxed)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    #[test]
    fn form_encoding_escapes_arn_characters() {
        let f = aws::encode_form(&[("RoleArn", "arn:aws:iam::1:role/a b")]);
        assert_eq!(f, "RoleArn=arn%3Aaws%3Aiam%3A%3A1%3Arole%2Fa%20b");
    }
    #[test]
    fn debug_hides_secrets() {
        let s = SessionCredentials {
            access_key_id: "ASIAX".into(),
            secret_access_key: Secret::new("s3cr3t"),
            session_token: Secret::new("t0k3n"),
            expiration: UNIX_EPOCH,
        };
        let d = format!("{s:?} {:?}", s.to_credentials());
        assert!(!d.contains("s3cr3t") && !d.contains("t0k3n"), "{d}");
        assert!(s.credential_process_json().contains("\"Version\":1"));
    }
}
