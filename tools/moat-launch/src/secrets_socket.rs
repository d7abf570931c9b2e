//! `secrets:` values reach the run at start, not through its configuration. The supervisor
//! resolves them on the host and serves them once over a unix socket in a private directory
//! of the run's sockets directory, mounted read-only at /run/moat/secrets. moat-init (as root,
//! before it drops privileges) fetches them with the run's one-time secrets token and exports
//! them into the environment of the pre_run hook and the command. So the container's
//! configuration (`docker inspect`, the engine's data directory) never holds a value.
//!
//! The body is one `NAME=BASE64` per line: base64 survives any value (newlines, quotes, `$`)
//! and has no character the shell splits on. The endpoint answers once; after that (and for
//! a request without the token) it says 410 or 401, and the values are dropped from memory.
//! The token is no credential: it opens nothing once moat-init has used it.

use crate::unix_http::{self, Reply};
use moat_core::Result;
use std::path::{Path, PathBuf};
use std::sync::Mutex;

/// Where the directory is mounted in the container.
pub const MOUNT: &str = "/run/moat/secrets";
const SOCKET: &str = "secrets.sock";
/// The variable that carries the one-time token to moat-init.
pub const TOKEN_VAR: &str = "MOAT_SECRETS_TOKEN";

/// The body moat-init reads.
fn body(secrets: &[(String, String)]) -> String {
    use base64::Engine;
    let mut s = String::new();
    for (k, v) in secrets {
        s.push_str(k);
        s.push('=');
        s.push_str(&base64::engine::general_purpose::STANDARD.encode(v.as_bytes()));
        s.push('\n');
    }
    s
}

/// Serve `secrets` once. Returns the directory to mount (read-only) and the serving task.
pub fn start(
    sockets: &Path,
    secrets: &[(String, String)],
    token: &str,
) -> Result<(PathBuf, tokio::task::JoinHandle<()>)> {
    let dir = sockets.join("secrets");
    moat_core::fsutil::create_private_dir(&dir)?;
    let held = Mutex::new(Some(body(secrets)));
    let endpoint = unix_http::Endpoint {
        path: "/secrets",
        unauthorized: "the run's secrets token is required\n",
    };
    // `GET /secrets` with the token, once.
    let task = unix_http::serve(&dir.join(SOCKET), token, endpoint, move || {
        let taken = held.lock().ok().and_then(|mut g| g.take());
        async move {
            match taken {
                Some(b) => Reply::text(200, b),
                None => Reply::text(410, "the run's secrets were handed out already\n"),
            }
        }
    })?;
    Ok((dir, task))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn every_value_is_one_shell_word() {
        let b = body(&[
            ("A".into(), "two\nlines and 'quotes' \"and\" $HOME\n".into()),
            ("B".into(), String::new()),
        ]);
        let lines: Vec<&str> = b.lines().collect();
        assert_eq!(lines.len(), 2);
        for l in &lines {
            assert!(!l.contains([' ', '\t', '\'', '"', '$']), "{l}");
        }
        assert_eq!(lines[1], "B=");
        use base64::Engine;
        let v = base64::engine::general_purpose::STANDARD
            .decode(lines[0].strip_prefix("A=").unwrap())
            .unwrap();
        assert_eq!(v, b"two\nlines and 'quotes' \"and\" $HOME\n");
    }
}
