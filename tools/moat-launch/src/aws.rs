//! An `aws` grant inside a run: the supervisor assumes the grant's role with the host's own
//! AWS credentials (moat-secrets' cache: one session until five minutes before it expires) and
//! answers the container's `credential_process` over a unix socket in the run's sockets
//! directory, mounted at /run/moat/aws with the AWS config file and the helper script. The
//! socket needs no network; each request must carry the run's proxy token.
//!
//! Two modes (`aws.mode` in moat.yaml):
//!
//! - `sign` (the default): the container's credential_process gets a per-run placeholder
//!   triple in the real shapes ([`Placeholder`]: an `ASIA` access key id, a 40-character
//!   secret, a long session token), so the AWS CLI and SDKs sign as usual with it. The role's
//!   real session credentials go to the proxy only, in an `aws_sign` record on the rules pipe
//!   (with the placeholder, so the proxy can check a request's signature before it signs it
//!   again with the real key: moat-proxy's awssign.rs). [`keep_signing`] renews the session
//!   before it expires and hands the proxy a new rule set, as refresh.rs does for OAuth
//!   tokens; the container keeps its placeholder throughout. Nothing in the container can
//!   use AWS except through this run's proxy.
//! - `session-credentials` (a privileged field, approved with `moat trust`): the container's
//!   credential_process gets the role's real session credentials, for tools that sign in
//!   ways the proxy cannot re-sign (chunk-signed `aws-chunked` uploads, presigned URLs handed
//!   to something outside the run, SigV4a, or AWS traffic not sent through the proxy).
//!
//! Promise: the host's long-lived keys stay in this process; in `sign` mode the role's
//! session credentials stay on the host too (this process and the proxy).

use crate::unix_http::{self, Reply};
use moat_core::rules::AwsRole;
use moat_core::{Error, Result};
use moat_secrets::sts::{AssumeRole, CredentialCache};
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Duration;
use tokio::sync::mpsc;

/// The AWS hosts the proxy signs for (HTTPS on 443): every service, region, bucket, FIPS
/// and dual-stack name.
pub const SIGN_HOSTS: &[&str] = &["*.amazonaws.com", "*.amazonaws.com.cn", "*.api.aws"];

/// The run's stand-in credentials: random, in the shapes AWS's own have.
#[derive(Clone)]
pub struct Placeholder {
    pub access_key_id: String,
    pub secret_access_key: String,
    pub session_token: String,
}

fn random_chars(n: usize, alphabet: &[u8]) -> String {
    let mut out = String::with_capacity(n);
    while out.len() < n {
        for b in moat_core::random_bytes::<32>() {
            // Unbiased: alphabets here are 32 or 64 long.
            out.push(alphabet[b as usize % alphabet.len()] as char);
            if out.len() == n {
                break;
            }
        }
    }
    out
}

impl Placeholder {
    pub fn new() -> Placeholder {
        const B32: &[u8] = b"ABCDEFGHIJKLMNOPQRSTUVWXYZ234567";
        const B64: &[u8] = b"ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789+/";
        Placeholder {
            access_key_id: format!("ASIA{}", random_chars(16, B32)),
            secret_access_key: random_chars(40, B64),
            session_token: random_chars(400, B64),
        }
    }
}

/// What [`keep_signing`] needs: the session cache and the run's placeholder.
pub struct Signing {
    grant: String,
    cache: Arc<CredentialCache>,
    pub placeholder: Placeholder,
}

impl Signing {
    /// The `aws_sign` record for the current session, and when the session expires.
    pub async fn record(&self) -> Result<(String, std::time::SystemTime)> {
        let c = self
            .cache
            .get()
            .await
            .map_err(|e| Error::unavailable(format!("aws grant: {e}")))?;
        let r = moat_core::rules::AwsSign {
            grant: self.grant.clone(),
            hosts: SIGN_HOSTS.iter().map(|s| s.to_string()).collect(),
            placeholder_access_key_id: self.placeholder.access_key_id.clone(),
            placeholder_secret_access_key: self.placeholder.secret_access_key.clone(),
            placeholder_session_token: self.placeholder.session_token.clone(),
            access_key_id: c.access_key_id.clone(),
            secret_access_key: c.secret_access_key.expose().to_string(),
            session_token: c.session_token.expose().to_string(),
            expiration: Some(moat_core::timefmt::rfc3339(c.expiration)),
        };
        Ok((
            moat_core::jsonl::line(moat_core::rules::TYPE_AWS_SIGN, &r)
                .map_err(|e| Error::software(format!("aws_sign record: {e}")))?,
            c.expiration,
        ))
    }
}

/// Run-long: shortly before the session would be replaced (five minutes before it expires,
/// moat-secrets' cache), assume the role again and hand the proxy the new session as a new
/// rule set (looking at most every minute, at least ten seconds apart). A failure is
/// retried; the proxy keeps the current session meanwhile.
pub async fn keep_signing(
    s: Signing,
    first_expiry: std::time::SystemTime,
    pipe: crate::refresh::SharedPipe,
    audit: Option<mpsc::UnboundedSender<String>>,
) {
    let mut expiry = first_expiry;
    loop {
        let renew_at = expiry
            .checked_sub(moat_secrets::sts::REFRESH_MARGIN)
            .unwrap_or(expiry);
        let wait = renew_at
            .duration_since(std::time::SystemTime::now())
            .unwrap_or_default()
            .clamp(Duration::from_secs(10), Duration::from_secs(60));
        tokio::time::sleep(wait).await;
        if std::time::SystemTime::now() < renew_at {
            continue;
        }
        match s.record().await {
            Ok((line, exp)) if exp != expiry => {
                expiry = exp;
                let mut p = pipe.lock().await;
                p.aws = Some(line);
                if !p.send().await {
                    eprintln!(
                        "moat: warning: the proxy's rules pipe is closed; the renewed AWS session was not handed over"
                    );
                    return;
                }
                eprintln!("moat: renewed the AWS session for {}", s.grant);
                if let Some(tx) = &audit
                    && let Ok(l) = moat_core::jsonl::line(
                        "grant_refreshed",
                        &serde_json::json!({"grant": s.grant, "expires_at": moat_core::timefmt::rfc3339(exp)}),
                    )
                {
                    let _ = tx.send(l);
                }
            }
            Ok(_) => {}
            Err(e) => {
                eprintln!(
                    "moat: warning: renewing the AWS session: {}; the proxy keeps the current one",
                    e.msg
                );
                tokio::time::sleep(Duration::from_secs(10)).await;
            }
        }
    }
}

/// Where the directory is mounted in the container.
pub const MOUNT: &str = "/run/moat/aws";
const HELPER: &str = "moat-aws-credentials";
const SOCKET: &str = "creds.sock";

/// The container's credential_process: the session credentials from the supervisor, or a
/// failure the AWS CLI reports. The socket is reached directly (no proxy, no network).
fn helper_script() -> String {
    format!(
        "#!/bin/sh\n\
         # moat: AWS credential_process helper; asks the run's supervisor for the role's\n\
         # short-lived session credentials.\n\
         exec curl -sf --noproxy '*' --max-time 10 --unix-socket {MOUNT}/{SOCKET} \\\n\
         \x20 -H \"Authorization: Bearer ${{MOAT_AWS_CREDENTIAL_TOKEN:-}}\" http://moat/credentials\n"
    )
}

fn config_file(region: &str) -> String {
    format!("[default]\ncredential_process = {MOUNT}/{HELPER}\nregion = {region}\n")
}

/// The variables the container gets for an aws grant (besides the token).
pub fn container_env(role: &AwsRole) -> Vec<String> {
    vec![
        format!("AWS_CONFIG_FILE={MOUNT}/config"),
        "AWS_SHARED_CREDENTIALS_FILE=/dev/null".into(),
        format!("AWS_REGION={}", role.region),
        format!("AWS_DEFAULT_REGION={}", role.region),
        "AWS_PAGER=".into(),
        // The system bundle, to which the entrypoint appends the moat CA: the CLI's HTTPS goes
        // through the proxy, which presents moat-signed certificates.
        "AWS_CA_BUNDLE=/etc/ssl/certs/ca-certificates.crt".into(),
    ]
}

/// Assume the role once (so a denied role fails the run before the container starts), then
/// serve. Returns the directory to mount, the serving task, and in `sign` mode (not
/// `session_credentials`) what the proxy's signing needs.
pub async fn start(
    sockets: &Path,
    role: &AwsRole,
    token: &str,
    audit: Option<mpsc::UnboundedSender<String>>,
    session_credentials: bool,
) -> Result<(PathBuf, tokio::task::JoinHandle<()>, Option<Signing>)> {
    let mut assume = AssumeRole::new(&role.role_arn);
    if role.session_duration_secs > 0 {
        assume.duration = Duration::from_secs(role.session_duration_secs);
    }
    assume.external_id = role.external_id.clone();
    let env = moat_secrets::Env::process();
    let profile = env.get("AWS_PROFILE").map(String::from);
    let cache = CredentialCache::from_env(&env, profile.as_deref(), &role.region, assume)
        .map_err(|e| {
            let msg = format!("aws grant ({}): {}", role.role_arn, e.msg);
            Error::new(e.code, msg).with_hint(
                "give the host AWS credentials (AWS_ACCESS_KEY_ID/AWS_SECRET_ACCESS_KEY, AWS_PROFILE or ~/.aws/credentials)",
            )
        })?;
    cache.get().await.map_err(|e| assume_error(role, &e))?;

    let dir = sockets.join("aws");
    moat_core::fsutil::create_private_dir(&dir)?;
    moat_core::fsutil::write_atomic(
        &dir.join("config"),
        config_file(&role.region).as_bytes(),
        0o644,
    )?;
    moat_core::fsutil::write_atomic(&dir.join(HELPER), helper_script().as_bytes(), 0o755)?;
    let cache = Arc::new(cache);
    let arn = role.role_arn.clone();
    let signing = (!session_credentials).then(|| Signing {
        grant: role.grant.clone(),
        cache: cache.clone(),
        placeholder: Placeholder::new(),
    });
    let ph = signing.as_ref().map(|s| Arc::new(s.placeholder.clone()));
    let endpoint = unix_http::Endpoint {
        path: "/credentials",
        unauthorized: "the run's token is required\n",
    };
    let task = unix_http::serve(&dir.join(SOCKET), token, endpoint, move || {
        credentials(cache.clone(), arn.clone(), audit.clone(), ph.clone())
    })?;
    Ok((dir, task, signing))
}

fn assume_error(role: &AwsRole, e: &moat_secrets::AwsError) -> Error {
    let hint = match e.code() {
        Some(c) if e.exit_code() == moat_core::exit::NOPERM => format!(
            "AWS said {c}: the host's AWS identity needs sts:AssumeRole on {}, and the role's trust policy must allow it",
            role.role_arn
        ),
        Some(_) => format!(
            "check the role with `moat grant aws --role {}` and the host's AWS credentials",
            role.role_arn
        ),
        None => {
            "check the STS endpoint (AWS_ENDPOINT_URL_STS, AWS_ENDPOINT_URL) and the network".into()
        }
    };
    Error::new(
        e.exit_code(),
        format!("aws grant: assuming {}: {e}", role.role_arn),
    )
    .with_hint(hint)
}

/// The answer to `GET /credentials` with the token, in `credential_process` form (and a
/// `credential_used` audit line): the run's placeholder in `sign` mode, the role's session
/// credentials in `session-credentials` mode; 502 when assuming the role fails.
async fn credentials(
    cache: Arc<CredentialCache>,
    arn: String,
    audit: Option<mpsc::UnboundedSender<String>>,
    placeholder: Option<Arc<Placeholder>>,
) -> Reply {
    match cache.get().await {
        Ok(c) => {
            if let Some(tx) = audit
                && let Ok(l) = moat_core::jsonl::line(
                    "credential_used",
                    &serde_json::json!({"grant": "aws", "role_arn": arn, "via": "credential_process", "access_key_id": c.access_key_id, "placeholder": placeholder.is_some()}),
                )
            {
                let _ = tx.send(l);
            }
            let body = match placeholder.as_deref() {
                // The session's expiry, so the SDK asks again as it would; the answer stays
                // the placeholder.
                Some(p) => serde_json::json!({
                    "Version": 1,
                    "AccessKeyId": p.access_key_id,
                    "SecretAccessKey": p.secret_access_key,
                    "SessionToken": p.session_token,
                    "Expiration": moat_core::timefmt::rfc3339(c.expiration),
                })
                .to_string(),
                None => c.credential_process_json(),
            };
            Reply {
                status: 200,
                content_type: "application/json",
                body,
            }
        }
        Err(e) => {
            eprintln!("moat: aws grant: assuming {arn}: {e}");
            Reply::text(502, format!("assuming {arn}: {e}\n"))
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    #[test]
    fn config_names_the_helper_and_region() {
        let c = config_file("eu-west-1");
        assert!(c.starts_with("[default]\n"));
        assert!(c.contains("credential_process = /run/moat/aws/moat-aws-credentials\n"));
        assert!(c.contains("region = eu-west-1\n"));
        let h = helper_script();
        assert!(h.starts_with("#!/bin/sh\n"));
        assert!(h.contains("--unix-socket /run/moat/aws/creds.sock"));
        assert!(h.contains("Bearer ${MOAT_AWS_CREDENTIAL_TOKEN:-}"));
    }
}
