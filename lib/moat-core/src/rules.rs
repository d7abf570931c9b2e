//! The records `moat-grant rules` prints for the proxy, the SSH filter and the launcher
//! to read on a pipe. These are the only records that carry secret values; they cross
//! host-side pipes only, never a file, argv or the container.

use serde::{Deserialize, Serialize};

/// `{"v":1,"type":"inject",...}`: for requests to `hosts`, set `header: value` (replacing
/// whatever the client sent, placeholder or not) and add `extra_headers`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct InjectRule {
    /// The credential's name, as in `moat grant list` (recorded in traces, never the value).
    pub grant: String,
    /// Host patterns (exact or `*.suffix`, optional `:port`), see [`crate::host::HostPattern`].
    pub hosts: Vec<String>,
    pub header: String,
    pub value: String,
    /// Non-secret headers sent along with the credential (e.g. `anthropic-beta`).
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub extra_headers: Vec<Header>,
    /// The stand-in the container holds for this credential, if it holds one.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub placeholder: Option<String>,
    /// Inject only into a request whose `header` is exactly `placeholder` (the stub a
    /// remote MCP server's entry carries); any other request passes as the client sent it.
    #[serde(default, skip_serializing_if = "std::ops::Not::not")]
    pub stub_only: bool,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Header {
    pub name: String,
    pub value: String,
}

/// `{"v":1,"type":"env",...}`: an environment variable the container gets in place of a
/// credential: a format-valid placeholder, never the real value.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct EnvPlaceholder {
    pub grant: String,
    pub name: String,
    pub value: String,
}

/// `{"v":1,"type":"ssh",...}`: the SSH filter may let the key with `fingerprint`
/// (`SHA256:...`, OpenSSH form) sign for `host`, whose pinned host keys are `host_keys`
/// (OpenSSH public-key lines, `ssh-ed25519 AAAA...`).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct SshRule {
    pub grant: String,
    pub host: String,
    pub fingerprint: String,
    pub host_keys: Vec<String>,
    /// SSHSIG namespaces (e.g. `git`) this key may sign for; empty refuses all.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub sshsig_namespaces: Vec<String>,
}

pub const TYPE_INJECT: &str = "inject";
pub const TYPE_ENV: &str = "env";
pub const TYPE_SSH: &str = "ssh";

/// `{"v":1,"type":"aws_role",...}`: the run assumes `role_arn` with the host's AWS
/// credentials (STS AssumeRole in `region`, sessions of `session_duration_secs`, with
/// `external_id` when the role requires one). No secret: the host's credentials never
/// pass through moat-grant.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct AwsRole {
    pub grant: String,
    pub role_arn: String,
    pub region: String,
    pub session_duration_secs: u64,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub external_id: Option<String>,
}

pub const TYPE_AWS_ROLE: &str = "aws_role";

/// `{"v":1,"type":"aws_sign",...}`: the supervisor hands the proxy the run's AWS placeholder
/// triple (what the container's `credential_process` gets) and the role's real session
/// credentials. For a request to `hosts` over HTTPS signed with the placeholder, the proxy
/// checks the signature with the placeholder secret and signs the same request again with
/// the real key and token. A renewed session arrives as a new rule set; the record carries
/// the session's secret key and token.
/// Its `Debug` shows key ids only.
#[derive(Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct AwsSign {
    pub grant: String,
    /// Host patterns (exact or `*.suffix`), HTTPS on port 443 only.
    pub hosts: Vec<String>,
    pub placeholder_access_key_id: String,
    pub placeholder_secret_access_key: String,
    pub placeholder_session_token: String,
    pub access_key_id: String,
    pub secret_access_key: String,
    pub session_token: String,
    /// RFC 3339; informational (the supervisor renews before it).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub expiration: Option<String>,
}

pub const TYPE_AWS_SIGN: &str = "aws_sign";

impl std::fmt::Debug for AwsSign {
    /// Key ids, hosts and expiry; never a secret or token (placeholder or real).
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("AwsSign")
            .field("grant", &self.grant)
            .field("hosts", &self.hosts)
            .field("placeholder_access_key_id", &self.placeholder_access_key_id)
            .field("access_key_id", &self.access_key_id)
            .field("expiration", &self.expiration)
            .finish_non_exhaustive()
    }
}

/// An inject rule's host entry: a host pattern, optionally after `https://` (the default:
/// the credential goes over HTTPS only) or `http://` (the grant was stored for a plain-HTTP
/// service: the credential goes over plain HTTP only, on the pattern's port or 80).
/// Returns whether the entry is plain HTTP, and the pattern.
pub fn inject_host(entry: &str) -> (bool, &str) {
    let e = entry.trim();
    for (scheme, plain) in [("http://", true), ("https://", false)] {
        if e.len() >= scheme.len() && e[..scheme.len()].eq_ignore_ascii_case(scheme) {
            return (plain, &e[scheme.len()..]);
        }
    }
    (false, e)
}

#[cfg(test)]
mod tests {
    use super::inject_host;

    #[test]
    fn only_an_explicit_http_scheme_means_plain_http() {
        assert_eq!(inject_host("npm.corp:8080"), (false, "npm.corp:8080"));
        assert_eq!(inject_host("https://npm.corp"), (false, "npm.corp"));
        assert_eq!(inject_host("http://npm.corp:8080"), (true, "npm.corp:8080"));
        assert_eq!(inject_host("HTTP://npm.corp"), (true, "npm.corp"));
        assert_eq!(inject_host("httpx://npm.corp"), (false, "httpx://npm.corp"));
    }
}
