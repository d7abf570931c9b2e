//! The agent socket: accept connections, answer each request from the policy, and forward
//! what is allowed to the user's real agent over one upstream connection per client
//! connection (binding state is per connection, so two clients never share one). Every
//! decision is recorded before it is answered. A bad message costs only its own
//! connection; SIGTERM or SIGINT removes the socket and exits 0.

use crate::bind;
use crate::events::Events;
use crate::fields;
use crate::policy::{self, ConnState, Policy, SeenSessions};
use crate::protocol::{self as p, FrameError};
use moat_core::{Error, Result};
use std::os::unix::fs::{FileTypeExt, MetadataExt, PermissionsExt};
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Duration;
use tokio::net::{UnixListener, UnixStream};
use tokio::signal::unix::{SignalKind, signal};

/// Once a message's length has arrived, the rest must follow within this.
const BODY_TIMEOUT: Duration = Duration::from_secs(10);
/// An upstream request (the agent may ask the user to confirm) must finish within this.
const UPSTREAM_TIMEOUT: Duration = Duration::from_secs(60);
const CONNECT_TIMEOUT: Duration = Duration::from_secs(5);
/// Concurrent client connections; more are closed at once (and recorded).
const MAX_CONNECTIONS: usize = 128;
/// Session ids remembered for replay detection.
const SEEN_SESSIONS: usize = 4096;

pub struct Config {
    pub socket: PathBuf,
    pub upstream: PathBuf,
    pub policy: Policy,
}

struct Shared {
    policy: Policy,
    seen: SeenSessions,
    events: Events,
    upstream: PathBuf,
}

pub fn serve(cfg: Config) -> Result<()> {
    let rt = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .map_err(|e| Error::io("starting the runtime", e))?;
    let r = rt.block_on(run(cfg));
    rt.shutdown_timeout(Duration::from_secs(1));
    r
}

async fn run(cfg: Config) -> Result<()> {
    let mut term = signal(SignalKind::terminate()).map_err(|e| Error::io("signals", e))?;
    let mut int = signal(SignalKind::interrupt()).map_err(|e| Error::io("signals", e))?;
    let (listener, ino) = bind_private(&cfg.socket)?;
    let shared = Arc::new(Shared {
        policy: cfg.policy,
        seen: SeenSessions::new(SEEN_SESSIONS),
        events: Events::stdout(),
        upstream: cfg.upstream,
    });
    let sock = cfg.socket.display().to_string();
    let slots = Arc::new(tokio::sync::Semaphore::new(MAX_CONNECTIONS));
    let mut next_id: u64 = 0;
    let result = if !shared.events.emit("listening", fields! {"socket" => &sock}) {
        Err(events_failed())
    } else {
        loop {
            tokio::select! {
                _ = term.recv() => break Ok(()),
                _ = int.recv() => break Ok(()),
                _ = shared.events.on_failure.notified() => break Err(events_failed()),
                r = listener.accept() => match r {
                    Ok((stream, _)) => {
                        next_id += 1;
                        let id = next_id;
                        match slots.clone().try_acquire_owned() {
                            Ok(slot) => {
                                let sh = shared.clone();
                                tokio::spawn(async move {
                                    handle(sh, stream, id).await;
                                    drop(slot);
                                });
                            }
                            Err(_) => {
                                shared.events.emit("ssh_refused", fields! {
                                    "conn" => id, "request" => "connect",
                                    "reason" => format!("more than {MAX_CONNECTIONS} connections"),
                                });
                            }
                        }
                    }
                    // Out of descriptors and the like: back off, keep serving.
                    Err(e) => {
                        eprintln!("moat-sshd-filter: accepting a connection: {}", moat_core::error::io_msg(&e));
                        tokio::time::sleep(Duration::from_millis(100)).await;
                    }
                }
            }
        }
    };
    drop(listener);
    if std::fs::symlink_metadata(&cfg.socket).is_ok_and(|m| m.ino() == ino) {
        let _ = std::fs::remove_file(&cfg.socket);
    }
    result
}

fn events_failed() -> Error {
    Error::new(
        moat_core::exit::IOERR,
        "writing event records failed; stopping so that no decision goes unrecorded",
    )
}

/// Create the socket with mode 0600 before it appears at `path`: bind a temporary name
/// beside it, restrict it, then rename it into place. A stale socket (nobody listening)
/// is replaced; a live one or any other file is left alone.
fn bind_private(path: &Path) -> Result<(UnixListener, u64)> {
    let shown = path.display();
    match std::fs::symlink_metadata(path) {
        Ok(m) if m.file_type().is_socket() => {
            if std::os::unix::net::UnixStream::connect(path).is_ok() {
                return Err(Error::unavailable(format!(
                    "socket {shown} is in use by another process"
                )));
            }
            std::fs::remove_file(path)
                .map_err(|e| Error::io(format!("removing stale socket {shown}"), e))?;
        }
        Ok(_) => {
            return Err(Error::config(format!("{shown} exists and is not a socket")));
        }
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => {}
        Err(e) => return Err(Error::io(format!("checking {shown}"), e)),
    }
    let dir = match path.parent() {
        Some(d) if !d.as_os_str().is_empty() => d.to_path_buf(),
        _ => PathBuf::from("."),
    };
    let tmp = dir.join(format!(".msf{}", std::process::id()));
    let _ = std::fs::remove_file(&tmp);
    let listener =
        UnixListener::bind(&tmp).map_err(|e| Error::io(format!("creating socket {shown}"), e))?;
    let placed = std::fs::set_permissions(&tmp, std::fs::Permissions::from_mode(0o600))
        .and_then(|_| std::fs::rename(&tmp, path))
        .and_then(|_| std::fs::symlink_metadata(path));
    match placed {
        Ok(m) => Ok((listener, m.ino())),
        Err(e) => {
            let _ = std::fs::remove_file(&tmp);
            Err(Error::io(format!("creating socket {shown}"), e))
        }
    }
}

/// One client connection: requests in order, one answer each.
async fn handle(sh: Arc<Shared>, mut client: UnixStream, id: u64) {
    let mut st = ConnState {
        id,
        ..Default::default()
    };
    let mut up: Option<UnixStream> = None;
    loop {
        let body = match p::read_frame(&mut client, BODY_TIMEOUT).await {
            Ok(Some(b)) => b,
            Ok(None) => return,
            Err(FrameError::Io(_)) => return,
            Err(e) => {
                // Oversized, truncated or stalled: refuse and drop this connection only.
                let request = if matches!(e, FrameError::TooLong(_)) {
                    "oversized"
                } else {
                    "malformed"
                };
                sh.events.emit(
                    "ssh_refused",
                    fields! {"conn" => id, "request" => request, "reason" => e.to_string()},
                );
                let _ = p::write_frame(&mut client, &[p::FAILURE]).await;
                return;
            }
        };
        let Some(reply) = respond(&sh, &mut st, &mut up, &body).await else {
            return;
        };
        if p::write_frame(&mut client, &reply).await.is_err() {
            return;
        }
    }
}

/// The answer to one request, or `None` to close the connection (events cannot be
/// written, so nothing may be answered).
async fn respond(
    sh: &Shared,
    st: &mut ConnState,
    up: &mut Option<UnixStream>,
    body: &[u8],
) -> Option<Vec<u8>> {
    let failure = vec![p::FAILURE];
    let Some((&kind, rest)) = body.split_first() else {
        return refuse(sh, st, "malformed", "empty message", None).then_some(failure);
    };
    match kind {
        p::REQUEST_IDENTITIES if rest.is_empty() => list(sh, st, up).await,
        p::REQUEST_IDENTITIES => refuse(
            sh,
            st,
            "malformed",
            "trailing bytes after a list request",
            None,
        )
        .then_some(failure),
        p::SIGN_REQUEST => sign(sh, st, up, body, rest).await,
        p::EXTENSION => extension(sh, st, up, body, rest).await,
        k => {
            let (request, reason) = match p::refused_request_name(k) {
                Some(name) if name.ends_with("_v1") => (
                    name,
                    "SSH protocol 1 requests are not supported".to_string(),
                ),
                Some(name) => (
                    name,
                    "changing the agent's keys or lock is not allowed".to_string(),
                ),
                None => ("unknown", format!("unknown message type {k}")),
            };
            refuse(sh, st, request, &reason, None).then_some(failure)
        }
    }
}

fn refuse(sh: &Shared, st: &ConnState, request: &str, reason: &str, ext: Option<&str>) -> bool {
    sh.events.emit(
        "ssh_refused",
        fields! {"conn" => st.id, "request" => request, "extension" => ext, "reason" => reason},
    )
}

fn bound_host<'a>(sh: &'a Shared, st: &ConnState) -> Option<&'a str> {
    st.binding
        .as_ref()
        .and_then(|b| sh.policy.host_of(&b.host_key))
}

async fn list(sh: &Shared, st: &mut ConnState, up: &mut Option<UnixStream>) -> Option<Vec<u8>> {
    let host = bound_host(sh, st);
    let ids = match upstream_call(sh, up, &[p::REQUEST_IDENTITIES]).await {
        Ok(r) => p::parse_identities(&r).map_err(|e| format!("upstream agent's answer: {e}")),
        Err(e) => Err(e),
    };
    let ids = match ids {
        Ok(ids) => ids,
        Err(e) => {
            let ok = sh.events.emit(
                "ssh_list",
                fields! {"conn" => st.id, "host" => host, "keys" => Vec::<String>::new(), "error" => e},
            );
            return ok.then(|| vec![p::FAILURE]);
        }
    };
    let offered = ids.len();
    let mut fps = Vec::new();
    let keep: Vec<p::Identity> = ids
        .into_iter()
        .filter(|id| {
            let fp = p::fingerprint(&id.key_blob);
            let ok = st.poisoned.is_none()
                && match &st.binding {
                    Some(b) => sh.policy.grants_for(&fp, &b.host_key).next().is_some(),
                    None => sh.policy.key_granted(&fp),
                };
            if ok {
                fps.push(fp);
            }
            ok
        })
        .collect();
    let ok = sh.events.emit(
        "ssh_list",
        fields! {"conn" => st.id, "host" => host, "keys" => fps, "offered" => offered},
    );
    ok.then(|| p::identities_answer(&keep))
}

async fn sign(
    sh: &Shared,
    st: &mut ConnState,
    up: &mut Option<UnixStream>,
    body: &[u8],
    rest: &[u8],
) -> Option<Vec<u8>> {
    let failure = vec![p::FAILURE];
    let req = match p::parse_sign_request(rest) {
        Ok(r) => r,
        Err(e) => {
            let ok = sh.events.emit(
                "ssh_sign",
                fields! {"conn" => st.id, "allowed" => false, "host" => bound_host(sh, st),
                "reason" => format!("malformed sign request: {e}")},
            );
            return ok.then_some(failure);
        }
    };
    let fp = p::fingerprint(req.key_blob);
    let d = policy::decide_sign(&sh.policy, &sh.seen, st, &req, &fp);
    let record = |allowed: bool, reason: &str, algorithm: Option<&str>| {
        sh.events.emit(
            "ssh_sign",
            fields! {
                "conn" => st.id, "allowed" => allowed, "host" => &d.host, "fingerprint" => &fp,
                "grant" => &d.grant, "user" => &d.user, "namespace" => &d.namespace, "flags" => req.flags,
                "algorithm" => algorithm, "reason" => reason,
            },
        )
    };
    if !d.allowed {
        return record(false, &d.reason, None).then_some(failure);
    }
    let resp = match upstream_call(sh, up, body).await {
        Ok(r) => r,
        Err(e) => {
            return record(false, &format!("upstream agent failed: {e}"), None).then_some(failure);
        }
    };
    let Some(alg) = p::sign_response_algorithm(&resp) else {
        return record(false, "upstream agent refused to sign", None).then_some(failure);
    };
    if alg == "ssh-rsa" {
        return record(
            false,
            "upstream agent signed with SHA-1 (ssh-rsa)",
            Some(&alg),
        )
        .then_some(failure);
    }
    record(true, &d.reason, Some(&alg)).then_some(resp)
}

async fn extension(
    sh: &Shared,
    st: &mut ConnState,
    up: &mut Option<UnixStream>,
    body: &[u8],
    rest: &[u8],
) -> Option<Vec<u8>> {
    let failure = vec![p::FAILURE];
    let (name, contents) = match p::parse_extension(rest) {
        Ok(x) => x,
        Err(e) => {
            return refuse(
                sh,
                st,
                "extension",
                &format!("malformed extension: {e}"),
                None,
            )
            .then_some(failure);
        }
    };
    if name != p::SESSION_BIND {
        return refuse(
            sh,
            st,
            "extension",
            "extension is not supported",
            Some(name),
        )
        .then_some(failure);
    }
    let decided = match bind::parse(contents) {
        Ok(b) => policy::decide_bind(&sh.policy, &sh.seen, st, &b)
            .map_err(|(reason, host)| (reason, host, Some(p::fingerprint(b.host_key)))),
        Err(e) => Err((e.to_string(), None, None)),
    };
    match decided {
        Ok(binding) => {
            let host = sh.policy.host_of(&binding.host_key).map(str::to_string);
            let hk = p::fingerprint(&binding.host_key);
            st.binding = Some(binding);
            // Pass the binding on, so keys the user restricted with `ssh-add -h` keep
            // working; the real agent's answer does not change ours.
            let _ = upstream_call(sh, up, body).await;
            let ok = sh.events.emit(
                "ssh_bind",
                fields! {"conn" => st.id, "allowed" => true, "host" => host, "host_key" => hk,
                "reason" => "host key signature verified and pinned"},
            );
            ok.then(|| vec![p::SUCCESS])
        }
        Err((reason, host, hk)) => {
            if st.poisoned.is_none() {
                st.poisoned = Some(reason.clone());
            }
            let ok = sh.events.emit(
                "ssh_bind",
                fields! {"conn" => st.id, "allowed" => false, "host" => host, "host_key" => hk,
                "reason" => reason},
            );
            ok.then_some(failure)
        }
    }
}

/// One request to the real agent and its answer, on this connection's own upstream
/// connection (opened on first use). Any failure drops that connection.
async fn upstream_call(
    sh: &Shared,
    up: &mut Option<UnixStream>,
    body: &[u8],
) -> std::result::Result<Vec<u8>, String> {
    if up.is_none() {
        let c = tokio::time::timeout(CONNECT_TIMEOUT, UnixStream::connect(&sh.upstream)).await;
        match c {
            Ok(Ok(s)) => *up = Some(s),
            Ok(Err(e)) => return Err(format!("connecting: {}", moat_core::error::io_msg(&e))),
            Err(_) => return Err("connecting: timed out".into()),
        }
    }
    let Some(s) = up.as_mut() else {
        return Err("not connected".into());
    };
    let exchange = async {
        p::write_frame(s, body).await?;
        p::read_frame(s, BODY_TIMEOUT).await
    };
    let r = match tokio::time::timeout(UPSTREAM_TIMEOUT, exchange).await {
        Ok(Ok(Some(r))) if !r.is_empty() => Ok(r),
        Ok(Ok(_)) => Err("connection closed".to_string()),
        Ok(Err(e)) => Err(e.to_string()),
        Err(_) => Err("timed out".to_string()),
    };
    if r.is_err() {
        *up = None;
    }
    r
}
