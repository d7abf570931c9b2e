//! Per-request records (`--trace FILE`) and events on stdout (`credential_used`,
//! `policy_denied`, for `moat-audit append`). A record is written when the request is
//! completely done (response body finished or abandoned, upgraded stream closed), so byte
//! counts and durations are final. Nothing here ever sees a header value; URLs are built
//! by the proxy from the canonical host and the path, with secret-looking query values
//! redacted.

use serde::Serialize;
use std::fs::File;
use std::io::{BufWriter, Write};
use std::path::Path;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::mpsc::{Receiver, Sender, SyncSender, channel, sync_channel};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

enum Line {
    Trace(Vec<u8>),
    /// Everything sent before this is written and flushed; then the sender is told.
    Sync(Sender<()>),
}

/// Where records go. Trace records are handed to one writer thread, which writes whatever
/// has queued up with one `write`, and pauses a few milliseconds before it takes the next
/// batch: a record reaches the file within about `GATHER` of its request's end, in order,
/// without a system call (or a lock held across one) on a request's path. Events (credential
/// use, denials) are written at once: they feed the audit log.
pub struct Sinks {
    tx: SyncSender<Line>,
    tracing: bool,
    events: Mutex<std::io::Stdout>,
}

fn writer(rx: Receiver<Line>, trace: Option<File>) {
    let mut trace = trace.map(|f| BufWriter::with_capacity(64 * 1024, f));
    let mut syncs = Vec::new();
    while let Ok(first) = rx.recv() {
        let mut next = Some(first);
        while let Some(l) = next {
            match l {
                Line::Trace(b) => {
                    if let Some(t) = &mut trace {
                        let _ = t.write_all(&b);
                    }
                }
                Line::Sync(s) => syncs.push(s),
            }
            next = rx.try_recv().ok();
        }
        if let Some(t) = &mut trace {
            let _ = t.flush();
        }
        for s in syncs.drain(..) {
            let _ = s.send(());
        }
        // Let records gather: a sender only wakes this thread when it waits in `recv`, so
        // under load there is one wake-up and one write per pause, not per record.
        std::thread::sleep(GATHER);
    }
}

/// Records queued for the writer before a request has to wait.
const QUEUE: usize = 16 * 1024;
/// How long the writer lets records gather after writing a batch.
const GATHER: Duration = Duration::from_millis(5);

impl Sinks {
    pub fn new(trace: Option<&Path>) -> moat_core::Result<Sinks> {
        let file = match trace {
            None => None,
            Some(p) => {
                use std::os::unix::fs::OpenOptionsExt;
                let f = std::fs::OpenOptions::new()
                    .create(true)
                    .append(true)
                    .mode(0o600)
                    .open(p)
                    .map_err(|e| moat_core::Error::io(format!("opening {}", p.display()), e))?;
                Some(f)
            }
        };
        let tracing = file.is_some();
        // Bounded: if stdout's reader stops reading, requests wait (as a direct write
        // would) instead of records piling up in memory.
        let (tx, rx) = sync_channel(QUEUE);
        std::thread::Builder::new()
            .name("moat-proxy-records".into())
            .spawn(move || writer(rx, file))
            .map_err(|e| moat_core::Error::io("starting the record writer", e))?;
        Ok(Sinks {
            tx,
            tracing,
            events: Mutex::new(std::io::stdout()),
        })
    }

    fn send(&self, l: Line) {
        let _ = self.tx.send(l);
    }

    /// Write one event record on stdout and flush it before the request goes on: events
    /// feed the audit log, and a reader sees each one by the time its response is out.
    pub fn event<T: Serialize>(&self, kind: &str, body: &T) {
        if let Some(l) = line(kind, body) {
            let mut out = self.events.lock().unwrap_or_else(|p| p.into_inner());
            let _ = out.write_all(&l).and_then(|_| out.flush());
        }
    }

    /// Wait (up to `limit`) until every record queued so far is written and flushed.
    pub fn sync(&self, limit: Duration) {
        let (tx, rx) = channel();
        self.send(Line::Sync(tx));
        let _ = rx.recv_timeout(limit);
    }

    fn trace(&self, rec: &Record<'_>) {
        if !self.tracing {
            return;
        }
        if let Some(l) = line("request", rec) {
            self.send(Line::Trace(l));
        }
    }
}

/// `{"v":1,"type":KIND,` then the fields of `body` (a struct or map without `v` and
/// `type`), and a newline: what moat_core::jsonl::line makes, without building a map first.
fn line<T: Serialize>(kind: &str, body: &T) -> Option<Vec<u8>> {
    let mut b = Vec::with_capacity(384);
    b.extend_from_slice(br#"{"v":1,"type":"#);
    serde_json::to_writer(&mut b, kind).ok()?;
    let at = b.len();
    serde_json::to_writer(&mut b, body).ok()?;
    match b.get(at..) {
        Some(b"{}") => {
            b.truncate(at);
            b.push(b'}');
        }
        Some([b'{', ..]) => b[at] = b',',
        _ => return None,
    }
    b.push(b'\n');
    Some(b)
}

#[derive(Serialize, Clone)]
pub struct TraceError {
    pub side: &'static str,
    pub message: String,
}

#[derive(Default)]
struct Mutable {
    status: Option<u16>,
    ttfb_ms: Option<f64>,
    grant: Option<String>,
    policy: Option<String>,
    error: Option<TraceError>,
    aws: Option<String>,
}

/// One request's trace record in the making; written on drop of the last reference.
pub struct ReqCtx {
    sinks: Arc<Sinks>,
    pub id: String,
    ts: String,
    method: String,
    url: String,
    start: Instant,
    pub bytes_in: AtomicU64,
    pub bytes_out: AtomicU64,
    m: Mutex<Mutable>,
}

#[derive(Serialize)]
struct Record<'a> {
    ts: &'a str,
    request_id: &'a str,
    method: &'a str,
    url: &'a str,
    status: Option<u16>,
    duration_ms: f64,
    ttfb_ms: Option<f64>,
    bytes_in: u64,
    bytes_out: u64,
    grant: Option<&'a str>,
    policy: &'a str,
    error: Option<&'a TraceError>,
    /// `service:Action` of an AWS request the proxy signed (`sts:GetCallerIdentity`).
    #[serde(skip_serializing_if = "Option::is_none")]
    aws: Option<&'a str>,
}

/// `req_` and 16 hex digits, unique within the process (a bijective mix of a counter and a
/// random key chosen at start, so ids do not repeat across runs either) without a system
/// call per request.
pub fn new_request_id() -> String {
    use std::sync::OnceLock;
    static KEY: OnceLock<u64> = OnceLock::new();
    static NEXT: AtomicU64 = AtomicU64::new(0);
    let key = *KEY.get_or_init(|| u64::from_le_bytes(moat_core::random_bytes::<8>()));
    // splitmix64's finalizer: a bijection on u64
    let mut z = key.wrapping_add(
        NEXT.fetch_add(1, Ordering::Relaxed)
            .wrapping_mul(0x9e37_79b9_7f4a_7c15),
    );
    z = (z ^ (z >> 30)).wrapping_mul(0xbf58_476d_1ce4_e5b9);
    z = (z ^ (z >> 27)).wrapping_mul(0x94d0_49bb_1331_11eb);
    z ^= z >> 31;
    format!("req_{z:016x}")
}

impl ReqCtx {
    pub fn new(sinks: Arc<Sinks>, method: &str, url: String) -> Arc<ReqCtx> {
        Arc::new(ReqCtx {
            sinks,
            id: new_request_id(),
            ts: moat_core::timefmt::now_rfc3339(),
            method: method.to_string(),
            url,
            start: Instant::now(),
            bytes_in: AtomicU64::new(0),
            bytes_out: AtomicU64::new(0),
            m: Mutex::new(Mutable::default()),
        })
    }
    fn m(&self) -> std::sync::MutexGuard<'_, Mutable> {
        self.m.lock().unwrap_or_else(|p| p.into_inner())
    }
    pub fn set_status(&self, s: u16) {
        let mut m = self.m();
        m.status = Some(s);
        if m.ttfb_ms.is_none() {
            m.ttfb_ms = Some(ms(self.start.elapsed()));
        }
    }
    pub fn set_grant(&self, g: String) {
        self.m().grant = Some(g);
    }
    pub fn set_aws(&self, a: String) {
        self.m().aws = Some(a);
    }
    pub fn set_policy(&self, p: String) {
        self.m().policy = Some(p);
    }
    pub fn set_error(&self, side: &'static str, message: String) {
        self.m().error = Some(TraceError { side, message });
    }
    pub fn add_in(&self, n: u64) {
        self.bytes_in.fetch_add(n, Ordering::Relaxed);
    }
    pub fn add_out(&self, n: u64) {
        self.bytes_out.fetch_add(n, Ordering::Relaxed);
    }
}

fn ms(d: std::time::Duration) -> f64 {
    (d.as_secs_f64() * 1000.0 * 1000.0).round() / 1000.0
}

impl Drop for ReqCtx {
    fn drop(&mut self) {
        let m = self.m();
        let rec = Record {
            ts: &self.ts,
            request_id: &self.id,
            method: &self.method,
            url: &self.url,
            status: m.status,
            duration_ms: ms(self.start.elapsed()),
            ttfb_ms: m.ttfb_ms,
            bytes_in: self.bytes_in.load(Ordering::Relaxed),
            bytes_out: self.bytes_out.load(Ordering::Relaxed),
            grant: m.grant.as_deref(),
            policy: m.policy.as_deref().unwrap_or("allowed"),
            error: m.error.as_ref(),
            aws: m.aws.as_deref(),
        };
        self.sinks.trace(&rec);
    }
}

/// Query parameter names whose values are never recorded.
fn secret_name(name: &str) -> bool {
    let n = name.to_ascii_lowercase();
    [
        "token",
        "key",
        "secret",
        "password",
        "passwd",
        "sig",
        "auth",
        "credential",
        "session",
        "code",
    ]
    .iter()
    .any(|s| n.contains(s))
}

/// `scheme://host[:port]/path?query` with secret-looking query values replaced by
/// `REDACTED`.
pub fn trace_url(scheme: &str, host: &str, port: u16, path_and_query: &str) -> String {
    let h = if host.contains(':') {
        format!("[{host}]")
    } else {
        host.to_string()
    };
    let default = (scheme == "https" && port == 443) || (scheme == "http" && port == 80);
    let hp = if default { h } else { format!("{h}:{port}") };
    let (path, query) = match path_and_query.split_once('?') {
        Some((p, q)) => (p, Some(q)),
        None => (path_and_query, None),
    };
    let path = if path.is_empty() { "/" } else { path };
    let mut url = format!("{scheme}://{hp}{path}");
    if let Some(q) = query {
        let parts: Vec<String> = q
            .split('&')
            .map(|kv| match kv.split_once('=') {
                Some((k, _)) if secret_name(k) => format!("{k}=REDACTED"),
                _ => kv.to_string(),
            })
            .collect();
        url.push('?');
        url.push_str(&parts.join("&"));
    }
    url
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn lines_match_the_shared_envelope() {
        #[derive(Serialize)]
        struct Empty {}
        for (kind, body) in [
            ("request", serde_json::json!({"a": 1, "b": "x\"y"})),
            ("credential_used", serde_json::json!({"grant": "g"})),
        ] {
            assert_eq!(
                String::from_utf8(line(kind, &body).unwrap()).unwrap(),
                moat_core::jsonl::line(kind, &body).unwrap()
            );
        }
        assert_eq!(
            String::from_utf8(line("x", &Empty {}).unwrap()).unwrap(),
            moat_core::jsonl::line("x", &Empty {}).unwrap()
        );
        assert!(line("x", &3).is_none());
    }

    #[test]
    fn urls_redact_secret_looking_params() {
        assert_eq!(
            trace_url(
                "https",
                "api.github.com",
                443,
                "/x?a=1&access_token=S&sig=T"
            ),
            "https://api.github.com/x?a=1&access_token=REDACTED&sig=REDACTED"
        );
        assert_eq!(trace_url("http", "::1", 8080, ""), "http://[::1]:8080/");
    }
}
