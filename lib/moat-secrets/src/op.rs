//! `op read op://vault/item/field` through the 1Password CLI found on `PATH`. The value is
//! op's stdout minus one trailing newline; errors quote the first line of op's stderr and
//! never its stdout. The child is killed when the timeout passes.

use crate::env::Env;
use crate::secret::Secret;
use std::path::{Path, PathBuf};
use std::process::Stdio;
use std::time::Duration;

pub const DEFAULT_TIMEOUT: Duration = Duration::from_secs(60);

#[derive(Debug, thiserror::Error)]
pub enum OpError {
    #[error("the 1Password CLI (op) is not on PATH; install it and sign in (`op signin`)")]
    Missing,
    #[error("op read {reference} failed (exit {code}): {stderr}")]
    Failed {
        reference: String,
        code: String,
        stderr: String,
    },
    #[error("op read {reference} did not finish within {secs} s (is op waiting for sign-in?)")]
    Timeout { reference: String, secs: u64 },
    #[error("running op read {reference}: {msg}")]
    Spawn { reference: String, msg: String },
    #[error("op read {reference} printed a value that is not UTF-8")]
    NotUtf8 { reference: String },
}

impl OpError {
    pub fn exit_code(&self) -> i32 {
        use moat_core::exit;
        match self {
            OpError::Missing => exit::UNAVAILABLE,
            OpError::Failed { .. } => exit::NOINPUT,
            OpError::Timeout { .. } => exit::TEMPFAIL,
            OpError::Spawn { .. } => exit::OSERR,
            OpError::NotUtf8 { .. } => exit::DATAERR,
        }
    }
}

impl From<OpError> for moat_core::Error {
    fn from(e: OpError) -> Self {
        moat_core::Error::new(e.exit_code(), e.to_string())
    }
}

/// `name` in the directories of `env`'s PATH, if it is an executable file there.
pub fn find_on_path(env: &Env, name: &str) -> Option<PathBuf> {
    use std::os::unix::fs::PermissionsExt;
    let path = env.get("PATH")?;
    path.split(':')
        .filter(|d| !d.is_empty())
        .map(|d| Path::new(d).join(name))
        .find(|p| {
            std::fs::metadata(p)
                .map(|m| m.is_file() && m.permissions().mode() & 0o111 != 0)
                .unwrap_or(false)
        })
}

/// Run `op read <reference>` with `env` as op's whole environment (op needs HOME and its
/// session variables; the caller passes [`Env::process`] in production).
pub async fn read(env: &Env, reference: &str, timeout: Duration) -> Result<Secret, OpError> {
    let op = find_on_path(env, "op").ok_or(OpError::Missing)?;
    let mut cmd = tokio::process::Command::new(&op);
    cmd.arg("read")
        .arg(reference)
        .env_clear()
        .envs(env.vars())
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .kill_on_drop(true);
    let child = cmd.spawn().map_err(|e| match e.kind() {
        std::io::ErrorKind::NotFound => OpError::Missing,
        _ => OpError::Spawn {
            reference: reference.to_string(),
            msg: moat_core::error::io_msg(&e),
        },
    })?;
    let out = match tokio::time::timeout(timeout, child.wait_with_output()).await {
        Ok(r) => r.map_err(|e| OpError::Spawn {
            reference: reference.to_string(),
            msg: moat_core::error::io_msg(&e),
        })?,
        Err(_) => {
            return Err(OpError::Timeout {
                reference: reference.to_string(),
                secs: timeout.as_secs(),
            });
        }
    };
    if !out.status.success() {
        let stderr = String::from_utf8_lossy(&out.stderr);
        let first = stderr
            .lines()
            .map(str::trim)
            .find(|l| !l.is_empty())
            .unwrap_or("no message on stderr");
        let code = match out.status.code() {
            Some(c) => c.to_string(),
            None => "by a signal".to_string(),
        };
        return Err(OpError::Failed {
            reference: reference.to_string(),
            code,
            stderr: first.chars().take(300).collect(),
        });
    }
    let mut value = String::from_utf8(out.stdout).map_err(|_| OpError::NotUtf8 {
        reference: reference.to_string(),
    })?;
    if value.ends_with('\n') {
        value.pop();
        if value.ends_with('\r') {
            value.pop();
        }
    }
    Ok(Secret::new(value))
}
