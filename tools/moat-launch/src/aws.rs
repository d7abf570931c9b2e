//! An `aws` grant inside a run: the supervisor assumes the grant's role with the host's own
//! AWS credentials (moat-secrets' cache: one session until five minutes before it expires) and
//! answers the container's `credential_process` over a unix socket in the run's sockets
//! directory, mounted at /run/moat/aws with the AWS config file and the helper script. The
//! socket needs no network; each request must carry the run's proxy token.
//!
//! Promise: the host's long-lived keys stay in this process; only the role's session
//! credentials (the documented exception) leave it, and only to a caller with the token.

use crate::unix_http::{self, Reply};
use moat_core::rules::AwsRole;
use moat_core::{Error, Result};
use moat_secrets::sts::{AssumeRole, CredentialCache};
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Duration;
use tokio::sync::mpsc;

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
/// serve. Returns the directory to mount and the serving task.
pub async fn start(
    sockets: &Path,
    role: &AwsRole,
    token: &str,
    audit: Option<mpsc::UnboundedSender<String>>,
) -> Result<(PathBuf, tokio::task::JoinHandle<()>)> {
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
    let endpoint = unix_http::Endpoint {
        path: "/credentials",
        unauthorized: "the run's token is required\n",
    };
    let task = unix_http::serve(&dir.join(SOCKET), token, endpoint, move || {
        credentials(cache.clone(), arn.clone(), audit.clone())
    })?;
    Ok((dir, task))
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

/// The answer to `GET /credentials` with the token: the role's session credentials in
/// `credential_process` form (and a `credential_used` audit line), or 502 when assuming fails.
async fn credentials(
    cache: Arc<CredentialCache>,
    arn: String,
    audit: Option<mpsc::UnboundedSender<String>>,
) -> Reply {
    match cache.get().await {
        Ok(c) => {
            if let Some(tx) = audit
                && let Ok(l) = moat_core::jsonl::line(
                    "credential_used",
                    &serde_json::json!({"grant": "aws", "role_arn": arn, "via": "credential_process", "access_key_id": c.access_key_id}),
                )
            {
                let _ = tx.send(l);
            }
            Reply {
                status: 200,
                content_type: "application/json",
                body: c.credential_process_json(),
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
