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

use moat_core::{Error, Result};
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex};
use std::time::Duration;
use tokio::io::{AsyncReadExt, AsyncWriteExt};

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
    let sock = dir.join(SOCKET);
    let _ = std::fs::remove_file(&sock);
    let listener = tokio::net::UnixListener::bind(&sock)
        .map_err(|e| Error::io(format!("listening on {}", sock.display()), e))?;
    let held = Arc::new(Mutex::new(Some(body(secrets))));
    let want = format!("Bearer {token}");
    let task = tokio::spawn(async move {
        loop {
            let Ok((conn, _)) = listener.accept().await else {
                tokio::time::sleep(Duration::from_millis(50)).await;
                continue;
            };
            let (held, want) = (held.clone(), want.clone());
            tokio::spawn(async move {
                let _ =
                    tokio::time::timeout(Duration::from_secs(30), answer(conn, &held, &want)).await;
            });
        }
    });
    Ok((dir, task))
}

/// One HTTP/1.1 exchange, then close: `GET /secrets` with the token, once.
async fn answer(mut conn: tokio::net::UnixStream, held: &Mutex<Option<String>>, want: &str) {
    let mut head = Vec::with_capacity(1024);
    let mut buf = [0u8; 1024];
    while !head.windows(4).any(|w| w == b"\r\n\r\n") {
        match conn.read(&mut buf).await {
            Ok(0) | Err(_) => return,
            Ok(n) => head.extend_from_slice(&buf[..n]),
        }
        if head.len() > 16 * 1024 {
            let _ = respond(&mut conn, 431, "request head too large\n").await;
            return;
        }
    }
    let text = String::from_utf8_lossy(&head);
    let mut lines = text.split("\r\n");
    let mut parts = lines.next().unwrap_or_default().split_whitespace();
    let (method, path) = (parts.next().unwrap_or(""), parts.next().unwrap_or(""));
    let auth = lines
        .filter_map(|l| l.split_once(':'))
        .find(|(k, _)| k.trim().eq_ignore_ascii_case("authorization"))
        .map(|(_, v)| v.trim().to_string())
        .unwrap_or_default();
    if !ct_eq(auth.as_bytes(), want.as_bytes()) {
        let _ = respond(&mut conn, 401, "the run's secrets token is required\n").await;
        return;
    }
    if method != "GET" || path != "/secrets" {
        let _ = respond(&mut conn, 404, "GET /secrets\n").await;
        return;
    }
    let taken = held.lock().ok().and_then(|mut g| g.take());
    match taken {
        Some(b) => {
            let _ = respond(&mut conn, 200, &b).await;
        }
        None => {
            let _ = respond(
                &mut conn,
                410,
                "the run's secrets were handed out already\n",
            )
            .await;
        }
    }
}

fn ct_eq(a: &[u8], b: &[u8]) -> bool {
    a.len() == b.len() && a.iter().zip(b).fold(0u8, |acc, (x, y)| acc | (x ^ y)) == 0
}

async fn respond(
    conn: &mut tokio::net::UnixStream,
    status: u16,
    body: &str,
) -> std::io::Result<()> {
    let reason = match status {
        200 => "OK",
        401 => "Unauthorized",
        404 => "Not Found",
        410 => "Gone",
        _ => "Request Header Fields Too Large",
    };
    let msg = format!(
        "HTTP/1.1 {status} {reason}\r\ncontent-type: text/plain\r\ncontent-length: {}\r\nconnection: close\r\n\r\n{body}",
        body.len()
    );
    conn.write_all(msg.as_bytes()).await?;
    conn.shutdown().await
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
