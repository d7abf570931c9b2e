//! Per-request records (`--trace FILE`) and events on stdout (`credential_used`,
//! `policy_denied`, for `moat-audit append`). A record is written when the request is
//! completely done (response body finished or abandoned, upgraded stream closed), so byte
//! counts and durations are final. Nothing here ever sees a header value; URLs are built
//! by the proxy from the canonical host and the path, with secret-looking query values
//! redacted.

use serde::Serialize;
use std::fs::File;
use std::io::Write;
use std::path::Path;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Instant;

pub struct Sinks {
    trace: Option<Mutex<File>>,
    events: Mutex<std::io::Stdout>,
}

impl Sinks {
    pub fn new(trace: Option<&Path>) -> moat_core::Result<Sinks> {
        let trace = match trace {
            None => None,
            Some(p) => {
                use std::os::unix::fs::OpenOptionsExt;
                let f = std::fs::OpenOptions::new()
                    .create(true)
                    .append(true)
                    .mode(0o600)
                    .open(p)
                    .map_err(|e| moat_core::Error::io(format!("opening {}", p.display()), e))?;
                Some(Mutex::new(f))
            }
        };
        Ok(Sinks {
            trace,
            events: Mutex::new(std::io::stdout()),
        })
    }

    /// Write one event record on stdout and flush it.
    pub fn event<T: Serialize>(&self, kind: &str, body: &T) {
        let mut out = self.events.lock().unwrap_or_else(|p| p.into_inner());
        let _ = moat_core::jsonl::emit(&mut *out, kind, body);
    }

    fn trace<T: Serialize>(&self, body: &T) {
        if let Some(f) = &self.trace
            && let Ok(l) = moat_core::jsonl::line("request", body)
        {
            let mut f = f.lock().unwrap_or_else(|p| p.into_inner());
            let _ = f.write_all(l.as_bytes());
        }
    }
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
}

pub fn new_request_id() -> String {
    format!("req_{}", moat_core::hex(&moat_core::random_bytes::<8>()))
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
