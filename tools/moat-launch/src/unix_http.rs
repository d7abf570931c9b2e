//! The supervisor's small endpoints on unix sockets (the run's secrets for moat-init, an aws
//! grant's session credentials for the container's `credential_process`): a connection
//! carries one HTTP/1.1 request, gets one answer and is closed. A request without the run's
//! bearer token gets 401 (the token is compared in constant time), any request but
//! `GET <path>` gets 404, and only then does the endpoint's handler answer. A request head
//! over 16 KiB gets 431; a connection that says nothing is dropped after 30 seconds.

use moat_core::{Error, Result};
use std::future::Future;
use std::path::Path;
use std::sync::Arc;
use std::time::Duration;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{UnixListener, UnixStream};

/// What one endpoint answers to.
#[derive(Clone, Copy)]
pub struct Endpoint {
    /// The one path answered, to `GET` only.
    pub path: &'static str,
    /// The body of the 401 for a request without the token.
    pub unauthorized: &'static str,
}

/// The handler's answer to an authorised `GET <path>`.
pub struct Reply {
    pub status: u16,
    pub content_type: &'static str,
    pub body: String,
}

impl Reply {
    pub fn text(status: u16, body: impl Into<String>) -> Self {
        Reply {
            status,
            content_type: "text/plain",
            body: body.into(),
        }
    }
}

/// Listen on `sock` (a stale socket file is replaced) and answer every connection with
/// `handle` once it passed the token and path checks. Returns the serving task.
pub fn serve<F, Fut>(
    sock: &Path,
    token: &str,
    endpoint: Endpoint,
    handle: F,
) -> Result<tokio::task::JoinHandle<()>>
where
    F: Fn() -> Fut + Send + Sync + 'static,
    Fut: Future<Output = Reply> + Send + 'static,
{
    let _ = std::fs::remove_file(sock);
    let listener = UnixListener::bind(sock)
        .map_err(|e| Error::io(format!("listening on {}", sock.display()), e))?;
    let want: Arc<str> = format!("Bearer {token}").into();
    let handle = Arc::new(handle);
    Ok(tokio::spawn(async move {
        loop {
            let Ok((conn, _)) = listener.accept().await else {
                tokio::time::sleep(Duration::from_millis(50)).await;
                continue;
            };
            let (want, handle) = (want.clone(), handle.clone());
            tokio::spawn(async move {
                let _ = tokio::time::timeout(
                    Duration::from_secs(30),
                    answer(conn, &want, endpoint, &*handle),
                )
                .await;
            });
        }
    }))
}

/// One HTTP/1.1 exchange, then close.
async fn answer<F, Fut>(mut conn: UnixStream, want: &str, endpoint: Endpoint, handle: &F)
where
    F: Fn() -> Fut,
    Fut: Future<Output = Reply>,
{
    let mut head = Vec::with_capacity(1024);
    let mut buf = [0u8; 1024];
    while !head.windows(4).any(|w| w == b"\r\n\r\n") {
        match conn.read(&mut buf).await {
            Ok(0) | Err(_) => return,
            Ok(n) => head.extend_from_slice(&buf[..n]),
        }
        if head.len() > 16 * 1024 {
            let _ = respond(&mut conn, &Reply::text(431, "request head too large\n")).await;
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
    let reply = if !ct_eq(auth.as_bytes(), want.as_bytes()) {
        Reply::text(401, endpoint.unauthorized)
    } else if method != "GET" || path != endpoint.path {
        Reply::text(404, format!("GET {}\n", endpoint.path))
    } else {
        handle().await
    };
    let _ = respond(&mut conn, &reply).await;
}

/// Equal without telling how much matched by how long it took.
pub(crate) fn ct_eq(a: &[u8], b: &[u8]) -> bool {
    a.len() == b.len() && a.iter().zip(b).fold(0u8, |acc, (x, y)| acc | (x ^ y)) == 0
}

async fn respond(conn: &mut UnixStream, r: &Reply) -> std::io::Result<()> {
    let reason = match r.status {
        200 => "OK",
        401 => "Unauthorized",
        404 => "Not Found",
        410 => "Gone",
        431 => "Request Header Fields Too Large",
        _ => "Bad Gateway",
    };
    let msg = format!(
        "HTTP/1.1 {} {reason}\r\ncontent-type: {}\r\ncontent-length: {}\r\nconnection: close\r\n\r\n{}",
        r.status,
        r.content_type,
        r.body.len(),
        r.body
    );
    conn.write_all(msg.as_bytes()).await?;
    conn.shutdown().await
}

#[cfg(test)]
mod tests {
    use super::*;

    async fn ask(sock: &Path, req: &[u8]) -> String {
        let mut c = UnixStream::connect(sock).await.unwrap();
        c.write_all(req).await.unwrap();
        // Read what comes until the close; a close with the request unread (431) may end in
        // a reset after the answer.
        let (mut out, mut buf) = (Vec::new(), [0u8; 4096]);
        while let Ok(n) = c.read(&mut buf).await
            && n > 0
        {
            out.extend_from_slice(&buf[..n]);
        }
        String::from_utf8(out).unwrap()
    }

    /// The checks before the handler: no token, a wrong token, another path or method and an
    /// oversized head never reach it; the right request does, and gets its reply verbatim.
    #[tokio::test]
    async fn only_get_path_with_the_token_reaches_the_handler() {
        let dir = tempfile::tempdir().unwrap();
        let sock = dir.path().join("t.sock");
        std::fs::write(&sock, b"stale").unwrap();
        let calls = Arc::new(std::sync::atomic::AtomicUsize::new(0));
        let seen = calls.clone();
        let ep = Endpoint {
            path: "/thing",
            unauthorized: "token please\n",
        };
        let task = serve(&sock, "tok-1", ep, move || {
            seen.fetch_add(1, std::sync::atomic::Ordering::SeqCst);
            async {
                Reply {
                    status: 200,
                    content_type: "application/json",
                    body: "{\"ok\":1}".into(),
                }
            }
        })
        .unwrap();

        let r = ask(&sock, b"GET /thing HTTP/1.1\r\nhost: x\r\n\r\n").await;
        assert!(r.starts_with("HTTP/1.1 401 Unauthorized\r\n"), "{r}");
        assert!(r.ends_with("\r\n\r\ntoken please\n"), "{r}");
        let r = ask(
            &sock,
            b"GET /thing HTTP/1.1\r\nauthorization: Bearer tok-2\r\n\r\n",
        )
        .await;
        assert!(r.starts_with("HTTP/1.1 401 "), "{r}");
        let r = ask(
            &sock,
            b"POST /thing HTTP/1.1\r\nAuthorization: Bearer tok-1\r\n\r\n",
        )
        .await;
        assert!(r.starts_with("HTTP/1.1 404 Not Found\r\n"), "{r}");
        assert!(r.ends_with("\r\n\r\nGET /thing\n"), "{r}");
        let r = ask(
            &sock,
            b"GET /other HTTP/1.1\r\nAuthorization: Bearer tok-1\r\n\r\n",
        )
        .await;
        assert!(r.starts_with("HTTP/1.1 404 "), "{r}");
        let mut big = b"GET /thing HTTP/1.1\r\nAuthorization: Bearer tok-1\r\nx: ".to_vec();
        big.extend(std::iter::repeat_n(b'a', 17 * 1024));
        let r = ask(&sock, &big).await;
        assert!(
            r.starts_with("HTTP/1.1 431 Request Header Fields Too Large\r\n"),
            "{r}"
        );
        assert_eq!(calls.load(std::sync::atomic::Ordering::SeqCst), 0);

        let r = ask(
            &sock,
            b"GET /thing HTTP/1.1\r\nAuthorization:  Bearer tok-1 \r\n\r\n",
        )
        .await;
        assert_eq!(
            r,
            "HTTP/1.1 200 OK\r\ncontent-type: application/json\r\ncontent-length: 8\r\nconnection: close\r\n\r\n{\"ok\":1}"
        );
        assert_eq!(calls.load(std::sync::atomic::Ordering::SeqCst), 1);
        task.abort();
    }
}
