//! Decoy credentials (issue #21): values that look like real credentials, are valid nowhere,
//! and that no legitimate request of the run carries. The rules pipe names them (`decoy`
//! records); every request is searched for them before anything of it goes upstream: the
//! header values, the path, the query (also percent-decoded), the body as it streams, and
//! the client's WebSocket frames (unmasked). A body is never buffered: the scanner holds
//! back at most (longest pattern − 1) bytes between chunks, so a decoy split across chunks
//! is found before any byte of it leaves. One multi-pattern automaton matches every decoy in
//! every encoding an exfiltration is likely to use: as is, percent-encoded (unreserved
//! characters kept or every byte encoded; upper or lower hex), JSON's `\/`, and base64 and
//! base64url at each of the three alignments (the stable middle part of each).
//!
//! A trip writes a `decoy_tripped` event (host, where, the decoy's name, the encoding; never
//! the value nor the bytes around it). With `on_trip` `stop` (the default) or `block` the
//! request is refused (a header, path or query hit: nothing is sent; a body or frame hit:
//! the upstream request is aborted before the chunk that holds it); `stop` also refuses
//! every later request of the process (the supervisor stops the run). `log` lets it through.
//! Raw `--tunnel` connections (SSH) are not scanned: their bytes are encrypted end to end.

use crate::trace::Sinks;
use aho_corasick::AhoCorasick;
use base64::Engine;
use bytes::Bytes;
use http::HeaderMap;
use hyper::body::{Body as HttpBody, Frame, SizeHint};
use std::collections::VecDeque;
use std::pin::Pin;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::task::{Context, Poll};

pub const TYPE_DECOY: &str = "decoy";
/// A decoy shorter than this would match ordinary text.
const MIN_VALUE: usize = 16;
const MAX_VALUE: usize = 4096;

/// Set once a decoy tripped under `stop`: every later request is refused.
static STOPPED: AtomicBool = AtomicBool::new(false);

#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord)]
pub enum Action {
    Log,
    Block,
    Stop,
}

impl Action {
    fn parse(s: &str) -> Option<Action> {
        match s {
            "log" => Some(Action::Log),
            "block" => Some(Action::Block),
            "stop" => Some(Action::Stop),
            _ => None,
        }
    }
    pub fn as_str(self) -> &'static str {
        match self {
            Action::Log => "log",
            Action::Block => "block",
            Action::Stop => "stop",
        }
    }
}

/// The run's decoys, compiled.
pub struct Decoys {
    ac: AhoCorasick,
    /// Per pattern: the decoy's index in `names` and the encoding.
    pats: Vec<(usize, &'static str)>,
    names: Vec<String>,
    pub action: Action,
    /// Longest pattern − 1: what a stream holds back between chunks.
    hold: usize,
}

/// Which decoy matched, and in which encoding. Never the value.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Hit {
    pub decoy: String,
    pub encoding: &'static str,
}

fn pct(out: &mut Vec<u8>, b: u8, lower: bool) {
    let hex = if lower {
        b"0123456789abcdef"
    } else {
        b"0123456789ABCDEF"
    };
    out.extend_from_slice(&[b'%', hex[usize::from(b >> 4)], hex[usize::from(b & 15)]]);
}

/// Every form of `v` the automaton looks for, with its encoding's name.
pub fn variants(v: &[u8]) -> Vec<(Vec<u8>, &'static str)> {
    let mut out: Vec<(Vec<u8>, &'static str)> = vec![(v.to_vec(), "raw")];
    let unreserved = |b: u8| b.is_ascii_alphanumeric() || b"-_.~".contains(&b);
    for lower in [false, true] {
        for all in [false, true] {
            let mut s = Vec::with_capacity(v.len() * 3);
            for &b in v {
                if !all && unreserved(b) {
                    s.push(b)
                } else {
                    pct(&mut s, b, lower)
                }
            }
            out.push((s, "percent"));
        }
    }
    if v.contains(&b'/') {
        let mut s = Vec::with_capacity(v.len() + 8);
        for &b in v {
            if b == b'/' {
                s.push(b'\\');
            }
            s.push(b);
        }
        out.push((s, "json"));
    }
    use base64::engine::general_purpose::{STANDARD_NO_PAD, URL_SAFE_NO_PAD};
    for (eng, name) in [(STANDARD_NO_PAD, "base64"), (URL_SAFE_NO_PAD, "base64url")] {
        for k in 0..3usize {
            // The decoy after k other bytes: the first group mixes them in (dropped), as
            // does the last, unless it ends on a group boundary.
            let mut buf = vec![0u8; k];
            buf.extend_from_slice(v);
            let enc = eng.encode(&buf);
            let start = if k > 0 { 4 } else { 0 };
            let end = (buf.len() / 3) * 4;
            if end >= start + MIN_VALUE {
                out.push((enc.as_bytes()[start..end].to_vec(), name));
            }
        }
    }
    let mut seen = std::collections::HashSet::new();
    out.retain(|(p, _)| seen.insert(p.clone()));
    out
}

impl Decoys {
    /// `decoys`: (name, values). None when there is nothing to look for.
    pub fn new(decoys: &[(String, Vec<String>)], action: Action) -> Option<Decoys> {
        let mut pats = Vec::new();
        let mut bytes = Vec::new();
        let mut names = Vec::new();
        for (name, values) in decoys {
            let i = names.len();
            names.push(name.clone());
            for v in values {
                for (p, enc) in variants(v.as_bytes()) {
                    bytes.push(p);
                    pats.push((i, enc));
                }
            }
        }
        if bytes.is_empty() {
            return None;
        }
        let hold = bytes.iter().map(Vec::len).max().unwrap_or(1) - 1;
        let ac = AhoCorasick::new(&bytes).ok()?;
        Some(Decoys {
            ac,
            pats,
            names,
            action,
            hold,
        })
    }

    /// The first decoy in `hay`, in any of its encodings.
    pub fn find(&self, hay: &[u8]) -> Option<Hit> {
        let m = self.ac.find(hay)?;
        let (i, enc) = self.pats[m.pattern().as_usize()];
        Some(Hit {
            decoy: self.names[i].clone(),
            encoding: enc,
        })
    }

    /// `find`, then the same text percent-decoded (a value encoded only in part).
    fn find_text(&self, s: &[u8], plus_is_space: bool) -> Option<Hit> {
        if let Some(h) = self.find(s) {
            return Some(h);
        }
        if !s.iter().any(|b| matches!(b, b'%' | b'+' | b'\\')) {
            return None;
        }
        let mut d = pct_decode(s, plus_is_space);
        d.retain(|b| *b != b'\\');
        self.find(&d).map(|h| Hit {
            encoding: "percent",
            ..h
        })
    }

    /// The request's head: header values, then the path, then the query.
    /// Returns (where, header name, hit).
    pub fn check_head(
        &self,
        method: &str,
        pq: &str,
        headers: &HeaderMap,
    ) -> Option<(&'static str, Option<String>, Hit)> {
        // An extension method is any token (`curl -X "$TOKEN"`): most decoys are tokens.
        if let Some(h) = self.find_text(method.as_bytes(), false) {
            return Some(("method", None, h));
        }
        for (k, v) in headers {
            if let Some(h) = self.find_text(v.as_bytes(), false) {
                return Some(("header", Some(k.as_str().to_string()), h));
            }
            // Names arrive lowercased; an all-capitals decoy (an AWS key id) survives
            // that, so the name is searched upper-cased too. The name is not recorded.
            let upper = k.as_str().to_ascii_uppercase();
            if let Some(h) = self
                .find(k.as_str().as_bytes())
                .or_else(|| self.find(upper.as_bytes()))
            {
                return Some(("header-name", None, h));
            }
        }
        let (path, query) = match pq.split_once('?') {
            Some((p, q)) => (p, Some(q)),
            None => (pq, None),
        };
        if let Some(h) = self.find_text(path.as_bytes(), false) {
            return Some(("path", None, h));
        }
        if let Some(q) = query
            && let Some(h) = self.find_text(q.as_bytes(), true)
        {
            return Some(("query", None, h));
        }
        None
    }
}

/// The request method as the trace records it: `[decoy]` when it carries one.
pub fn traced_method<'a>(decoys: Option<&Arc<Decoys>>, m: &'a str) -> std::borrow::Cow<'a, str> {
    match decoys {
        Some(d) if d.find_text(m.as_bytes(), false).is_some() => "[decoy]".into(),
        _ => m.into(),
    }
}

/// The request target as the trace records it: a path or query that carries a decoy is
/// replaced by `[decoy]`, so no record of the run holds the value.
pub fn traced<'a>(decoys: Option<&Arc<Decoys>>, pq: &'a str) -> std::borrow::Cow<'a, str> {
    let Some(d) = decoys else {
        return pq.into();
    };
    let (path, query) = match pq.split_once('?') {
        Some((p, q)) => (p, Some(q)),
        None => (pq, None),
    };
    let path_hit = d.find_text(path.as_bytes(), false).is_some();
    let query_hit = query.is_some_and(|q| d.find_text(q.as_bytes(), true).is_some());
    if !path_hit && !query_hit {
        return pq.into();
    }
    let path = if path_hit { "/[decoy]" } else { path };
    match (query, query_hit) {
        (Some(_), true) => format!("{path}?[decoy]").into(),
        (Some(q), false) => format!("{path}?{q}").into(),
        (None, _) => path.to_string().into(),
    }
}

fn unhex(b: u8) -> Option<u8> {
    match b {
        b'0'..=b'9' => Some(b - b'0'),
        b'a'..=b'f' => Some(b - b'a' + 10),
        b'A'..=b'F' => Some(b - b'A' + 10),
        _ => None,
    }
}

pub fn pct_decode(s: &[u8], plus_is_space: bool) -> Vec<u8> {
    let mut out = Vec::with_capacity(s.len());
    let mut i = 0;
    while i < s.len() {
        match s[i] {
            b'%' if i + 2 < s.len() => match (unhex(s[i + 1]), unhex(s[i + 2])) {
                (Some(a), Some(b)) => {
                    out.push(a << 4 | b);
                    i += 3;
                    continue;
                }
                _ => out.push(b'%'),
            },
            b'+' if plus_is_space => out.push(b' '),
            b => out.push(b),
        }
        i += 1;
    }
    out
}

/// Parse the `decoy` records of a rule set: `{"type":"decoy","name":N,"values":[...],
/// "on_trip":"stop|block|log"}`. The strictest `on_trip` wins. Errors name the line, never
/// a value.
pub fn parse(text: &str, src: &str) -> moat_core::Result<Option<Arc<Decoys>>> {
    let mut all = Vec::new();
    let mut action = None;
    for (i, line) in text.lines().enumerate() {
        let Ok(Some(rec)) = moat_core::jsonl::parse(line) else {
            continue;
        };
        if rec.kind != TYPE_DECOY {
            continue;
        }
        let bad = |why: &str| {
            moat_core::Error::data(format!("rules {src} line {}: decoy record: {why}", i + 1))
        };
        let name = rec
            .str("name")
            .filter(|n| !n.is_empty() && n.len() <= 128)
            .ok_or_else(|| bad("needs a name"))?
            .to_string();
        let values: Vec<String> = rec
            .get("values")
            .and_then(|v| serde_json::from_value(v.clone()).ok())
            .ok_or_else(|| bad("needs \"values\", a list of strings"))?;
        if values.is_empty()
            || values
                .iter()
                .any(|v| v.len() < MIN_VALUE || v.len() > MAX_VALUE)
        {
            return Err(bad(&format!(
                "each value must be {MIN_VALUE} to {MAX_VALUE} bytes"
            )));
        }
        let a = match rec.str("on_trip") {
            None => Action::Stop,
            Some(s) => Action::parse(s).ok_or_else(|| bad("on_trip is stop, block or log"))?,
        };
        action = Some(action.map_or(a, |b: Action| b.max(a)));
        all.push((name, values));
    }
    Ok(action.and_then(|a| Decoys::new(&all, a).map(Arc::new)))
}

/// A request's trip reporter: what the event names besides where and what.
pub struct Trip {
    pub sinks: Arc<Sinks>,
    pub host: String,
    pub method: String,
    pub request_id: String,
    pub action: Action,
}

impl Trip {
    /// Record the trip; true when the request must be stopped.
    pub fn record(&self, place: &str, header: Option<&str>, hit: &Hit) -> bool {
        #[derive(serde::Serialize)]
        struct Tripped<'a> {
            host: &'a str,
            method: &'a str,
            #[serde(rename = "where")]
            place: &'a str,
            #[serde(skip_serializing_if = "Option::is_none")]
            header: Option<&'a str>,
            decoy: &'a str,
            encoding: &'a str,
            action: &'a str,
            request_id: &'a str,
        }
        self.sinks.event(
            "decoy_tripped",
            &Tripped {
                host: &self.host,
                method: &self.method,
                place,
                header,
                decoy: &hit.decoy,
                encoding: hit.encoding,
                action: self.action.as_str(),
                request_id: &self.request_id,
            },
        );
        if self.action == Action::Stop {
            STOPPED.store(true, Ordering::SeqCst);
        }
        self.action != Action::Log
    }
}

/// A decoy tripped under `stop` earlier: this process refuses everything.
pub fn stopped() -> bool {
    STOPPED.load(Ordering::Relaxed)
}

/// The text of a refusal.
pub fn refusal(place: &str, decoy: Option<&str>) -> String {
    match decoy {
        Some(d) => format!(
            "Moat: request stopped: its {place} carries the decoy credential {d:?}, which no legitimate request of this run uses.\nThe attempt is recorded in the run's audit log.\n"
        ),
        None => "Moat: request refused: this run used a decoy credential and is being stopped.\n"
            .to_string(),
    }
}

/// A 403 naming the decoy (or the run's stop), with the request id, for `ctx`.
pub fn refused(
    ctx: &crate::trace::ReqCtx,
    place: &str,
    decoy: Option<&str>,
) -> http::Response<crate::proxy::Body> {
    use http_body_util::BodyExt;
    ctx.set_policy(format!("decoy:{}", decoy.unwrap_or("stopped")));
    ctx.set_status(403);
    let body = http_body_util::Full::new(Bytes::from(refusal(place, decoy)))
        .map_err(|never| match never {})
        .boxed_unsync();
    let mut r = http::Response::new(body);
    *r.status_mut() = http::StatusCode::FORBIDDEN;
    let h = r.headers_mut();
    h.insert(
        http::header::CONTENT_TYPE,
        http::HeaderValue::from_static("text/plain; charset=utf-8"),
    );
    h.insert("x-moat-blocked", http::HeaderValue::from_static("decoy"));
    if let Ok(v) = http::HeaderValue::from_str(&ctx.id) {
        h.insert("x-moat-request-id", v);
    }
    r
}

/// The proxy's hook before a request goes anywhere: refused when the run was stopped by a
/// decoy, or when its head carries one (unless `log`).
pub fn check_head(
    decoys: Option<&Arc<Decoys>>,
    trip: impl FnOnce(Action) -> Trip,
    ctx: &crate::trace::ReqCtx,
    method: &str,
    pq: &str,
    headers: &HeaderMap,
) -> Option<http::Response<crate::proxy::Body>> {
    if stopped() {
        return Some(refused(ctx, "request", None));
    }
    let d = decoys?;
    let (place, header, hit) = d.check_head(method, pq, headers)?;
    let what = match &header {
        Some(h) => format!("header {h}"),
        None => place.to_string(),
    };
    trip(d.action)
        .record(place, header.as_deref(), &hit)
        .then(|| refused(ctx, &what, Some(&hit.decoy)))
}

/// The body hook: the request body, scanned as it streams when the run has decoys.
pub fn scan_body(
    body: crate::proxy::Body,
    decoys: Option<&Arc<Decoys>>,
    trip: impl FnOnce(Action) -> Trip,
) -> crate::proxy::Body {
    use http_body_util::BodyExt;
    match decoys {
        None => body,
        Some(d) => ScanBody::new(body, d.clone(), trip(d.action)).boxed_unsync(),
    }
}

/// A body aborted for a decoy: the error chain of a failed upstream request holds it.
pub fn tripped_in(e: &(dyn std::error::Error + 'static)) -> Option<String> {
    let mut src = Some(e);
    while let Some(s) = src {
        if let Some(t) = s.downcast_ref::<Tripped>() {
            return Some(t.decoy.clone());
        }
        src = s.source();
    }
    None
}

/// The error a body ends with when it carried a decoy: the upstream request is aborted.
#[derive(Debug)]
pub struct Tripped {
    pub decoy: String,
}

impl std::fmt::Display for Tripped {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(
            f,
            "the request body carries the decoy credential {:?}",
            self.decoy
        )
    }
}
impl std::error::Error for Tripped {}

/// A request body scanned as it streams, holding back at most `hold` bytes.
pub struct ScanBody<B> {
    inner: B,
    decoys: Arc<Decoys>,
    trip: Option<Trip>,
    held: Vec<u8>,
    trailers: Option<HeaderMap>,
    ended: bool,
    /// After a hit under `log`: the rest passes unscanned.
    passthrough: bool,
}

impl<B> ScanBody<B> {
    pub fn new(inner: B, decoys: Arc<Decoys>, trip: Trip) -> Self {
        ScanBody {
            inner,
            decoys,
            trip: Some(trip),
            held: Vec::new(),
            trailers: None,
            ended: false,
            passthrough: false,
        }
    }
}

type BoxError = Box<dyn std::error::Error + Send + Sync>;

impl<B> HttpBody for ScanBody<B>
where
    B: HttpBody<Data = Bytes, Error = BoxError> + Unpin,
{
    type Data = Bytes;
    type Error = BoxError;

    fn poll_frame(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<Bytes>, BoxError>>> {
        let this = self.get_mut();
        loop {
            if this.ended {
                if !this.held.is_empty() {
                    let h = std::mem::take(&mut this.held);
                    return Poll::Ready(Some(Ok(Frame::data(Bytes::from(h)))));
                }
                return Poll::Ready(this.trailers.take().map(|t| Ok(Frame::trailers(t))));
            }
            let f = match Pin::new(&mut this.inner).poll_frame(cx) {
                Poll::Pending => return Poll::Pending,
                Poll::Ready(None) => {
                    this.ended = true;
                    continue;
                }
                Poll::Ready(Some(Err(e))) => return Poll::Ready(Some(Err(e))),
                Poll::Ready(Some(Ok(f))) => f,
            };
            let d = match f.into_data() {
                Ok(d) => d,
                Err(f) => {
                    if let Ok(t) = f.into_trailers() {
                        this.trailers = Some(t);
                    }
                    continue;
                }
            };
            if this.passthrough && this.held.is_empty() {
                return Poll::Ready(Some(Ok(Frame::data(d))));
            }
            let mut buf = std::mem::take(&mut this.held);
            buf.extend_from_slice(&d);
            if !this.passthrough
                && let Some(hit) = this.decoys.find(&buf)
            {
                let stop = this
                    .trip
                    .take()
                    .is_none_or(|t| t.record("body", None, &hit));
                if stop {
                    this.ended = true;
                    this.trailers = None;
                    return Poll::Ready(Some(Err(Box::new(Tripped { decoy: hit.decoy }))));
                }
                this.passthrough = true;
                return Poll::Ready(Some(Ok(Frame::data(Bytes::from(buf)))));
            }
            if this.passthrough {
                return Poll::Ready(Some(Ok(Frame::data(Bytes::from(buf)))));
            }
            let keep = this.decoys.hold.min(buf.len());
            this.held = buf.split_off(buf.len() - keep);
            if !buf.is_empty() {
                return Poll::Ready(Some(Ok(Frame::data(Bytes::from(buf)))));
            }
        }
    }

    fn is_end_stream(&self) -> bool {
        self.ended && self.held.is_empty() && self.trailers.is_none()
    }

    fn size_hint(&self) -> SizeHint {
        self.inner.size_hint()
    }
}

/// Why a client's WebSocket stream was cut.
#[derive(Debug)]
pub enum WsStop {
    Hit(Hit),
    /// A frame with a reserved bit (a compression extension): its payload cannot be read.
    Unreadable,
}

/// The client's side of a WebSocket: frames are unmasked and each data message (across
/// fragments and reads) and control frame is searched; a tail of the current message that
/// could start a decoy, and an incomplete control frame, are held back.
pub struct WsScan {
    decoys: Arc<Decoys>,
    hdr: Vec<u8>,
    remaining: Option<u64>,
    key: [u8; 4],
    kpos: usize,
    control: bool,
    fin: bool,
    /// Wire bytes not yet released.
    out: Vec<u8>,
    /// The current message's unmasked payload not yet cleared (at most `hold` after a push).
    win: Vec<u8>,
    /// Where each byte of `win` is in `out`.
    idx: VecDeque<usize>,
    ctrl: Vec<u8>,
    ctrl_start: Option<usize>,
}

impl WsScan {
    pub fn new(decoys: Arc<Decoys>) -> Self {
        WsScan {
            decoys,
            hdr: Vec::new(),
            remaining: None,
            key: [0; 4],
            kpos: 0,
            control: false,
            fin: true,
            out: Vec::new(),
            win: Vec::new(),
            idx: VecDeque::new(),
            ctrl: Vec::new(),
            ctrl_start: None,
        }
    }

    fn header_len(&self) -> Option<usize> {
        if self.hdr.len() < 2 {
            return None;
        }
        let ext = match self.hdr[1] & 0x7f {
            126 => 2,
            127 => 8,
            _ => 0,
        };
        let mask = if self.hdr[1] & 0x80 != 0 { 4 } else { 0 };
        Some(2 + ext + mask)
    }

    fn end_frame(&mut self) -> Result<(), WsStop> {
        if self.control {
            if let Some(h) = self.decoys.find(&self.ctrl) {
                return Err(WsStop::Hit(h));
            }
            self.ctrl.clear();
            self.ctrl_start = None;
        } else if self.fin {
            if let Some(h) = self.decoys.find(&self.win) {
                return Err(WsStop::Hit(h));
            }
            self.win.clear();
            self.idx.clear();
        }
        self.remaining = None;
        Ok(())
    }

    /// Take bytes from the client; returns the bytes that may go upstream now.
    pub fn push(&mut self, mut data: &[u8]) -> Result<Vec<u8>, WsStop> {
        while !data.is_empty() {
            match self.remaining {
                None => {
                    self.hdr.push(data[0]);
                    data = &data[1..];
                    let Some(n) = self.header_len() else { continue };
                    if self.hdr[0] & 0x70 != 0 {
                        return Err(WsStop::Unreadable);
                    }
                    if self.hdr.len() < n {
                        continue;
                    }
                    let h = std::mem::take(&mut self.hdr);
                    let (len, at) = match h[1] & 0x7f {
                        126 => (u64::from(u16::from_be_bytes([h[2], h[3]])), 4),
                        127 => (
                            u64::from_be_bytes(h[2..10].try_into().unwrap_or_default()),
                            10,
                        ),
                        l => (u64::from(l), 2),
                    };
                    self.key = if h[1] & 0x80 != 0 {
                        [h[at], h[at + 1], h[at + 2], h[at + 3]]
                    } else {
                        [0; 4]
                    };
                    self.kpos = 0;
                    self.fin = h[0] & 0x80 != 0;
                    self.control = h[0] & 0x08 != 0;
                    // RFC 6455: a control frame carries at most 125 bytes. A longer one
                    // would be held whole here (it is scanned at its end): refused.
                    if self.control && len > 125 {
                        return Err(WsStop::Unreadable);
                    }
                    if self.control {
                        self.ctrl_start = Some(self.out.len());
                    }
                    self.out.extend_from_slice(&h);
                    self.remaining = Some(len);
                    if len == 0 {
                        self.end_frame()?;
                    }
                }
                Some(left) => {
                    let n = (left.min(data.len() as u64)) as usize;
                    let start = self.out.len();
                    self.out.extend_from_slice(&data[..n]);
                    for (i, b) in data[..n].iter().enumerate() {
                        let u = b ^ self.key[(self.kpos + i) % 4];
                        if self.control {
                            self.ctrl.push(u);
                        } else {
                            self.win.push(u);
                            self.idx.push_back(start + i);
                        }
                    }
                    self.kpos = (self.kpos + n) % 4;
                    data = &data[n..];
                    self.remaining = Some(left - n as u64);
                    if left == n as u64 {
                        self.end_frame()?;
                    }
                }
            }
        }
        if let Some(h) = self.decoys.find(&self.win) {
            return Err(WsStop::Hit(h));
        }
        let excess = self.win.len().saturating_sub(self.decoys.hold);
        self.win.drain(..excess);
        self.idx.drain(..excess);
        let mut cut = self.out.len();
        if let Some(&i) = self.idx.front() {
            cut = cut.min(i);
        }
        if let Some(c) = self.ctrl_start {
            cut = cut.min(c);
        }
        let rest = self.out.split_off(cut);
        let ready = std::mem::replace(&mut self.out, rest);
        for i in self.idx.iter_mut() {
            *i -= cut;
        }
        self.ctrl_start = self.ctrl_start.map(|c| c - cut);
        Ok(ready)
    }

    /// The client closed: what is held was searched already and may go.
    pub fn finish(&mut self) -> Vec<u8> {
        std::mem::take(&mut self.out)
    }
}

/// Copy the client's side of an upgraded WebSocket upstream through a [`WsScan`]; a decoy
/// (or an unreadable frame) ends the copy before its bytes are written. Returns the bytes
/// copied.
pub async fn pump_scanned<R, W>(r: &mut R, w: &mut W, mut scan: WsScan, trip: Trip) -> u64
where
    R: tokio::io::AsyncRead + Unpin,
    W: tokio::io::AsyncWrite + Unpin,
{
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    let mut buf = vec![0u8; 16 * 1024];
    let mut n = 0u64;
    let mut passthrough = false;
    loop {
        match r.read(&mut buf).await {
            Ok(0) | Err(_) => {
                let rest = scan.finish();
                if w.write_all(&rest).await.is_ok() {
                    n += rest.len() as u64;
                }
                break;
            }
            Ok(k) => {
                let out = if passthrough {
                    buf[..k].to_vec()
                } else {
                    match scan.push(&buf[..k]) {
                        Ok(o) => o,
                        Err(WsStop::Unreadable) => break,
                        Err(WsStop::Hit(h)) => {
                            if trip.record("websocket", None, &h) {
                                break;
                            }
                            passthrough = true;
                            [scan.finish(), buf[..k].to_vec()].concat()
                        }
                    }
                };
                if w.write_all(&out).await.is_err() {
                    break;
                }
                n += out.len() as u64;
            }
        }
    }
    let _ = w.shutdown().await;
    n
}

#[cfg(test)]
mod tests {
    use super::*;

    const V: &str = "AKIAZ7QX2M4PL0V8NE3R/wJalrXUtnFEMI+K7MDENG/bPxRfiCYQ3Xq9";

    fn ds() -> Decoys {
        Decoys::new(&[("aws-decoy".into(), vec![V.into()])], Action::Stop).unwrap()
    }

    /// Every encoding is found inside other text, at every base64 alignment.
    #[test]
    fn finds_every_encoding() {
        use base64::engine::general_purpose::{STANDARD, URL_SAFE};
        let d = ds();
        for pre in ["", "x", "xy", "xyz"] {
            for (eng, name) in [(STANDARD, "base64"), (URL_SAFE, "base64url")] {
                let e = eng.encode(format!("{pre}{V}!!"));
                let hit = d.find(format!("data={e}&x=1").as_bytes()).expect(name);
                assert_eq!(hit.decoy, "aws-decoy");
            }
        }
        let json = V.replace('/', "\\/");
        assert_eq!(d.find(json.as_bytes()).unwrap().encoding, "json");
        let mut full = Vec::new();
        for b in V.bytes() {
            pct(&mut full, b, true);
        }
        assert_eq!(d.find(&full).unwrap().encoding, "percent");
        assert!(d.find(b"nothing to see here").is_none());
        // Encoded in part only: the head's decoding finds it.
        let partial = V.replace('/', "%2f").replace('+', "%2B");
        let mut h = HeaderMap::new();
        h.insert("x-a", "ok".parse().unwrap());
        let (w, _, hit) = d.check_head("GET", &format!("/p?q={partial}"), &h).unwrap();
        assert_eq!((w, hit.encoding), ("query", "percent"));
        h.insert("x-b", format!("t {V}").parse().unwrap());
        let (w, n, _) = d.check_head("GET", "/p", &h).unwrap();
        assert_eq!((w, n.as_deref()), ("header", Some("x-b")));
        assert!(d.check_head("GET", "/p?q=1", &HeaderMap::new()).is_none());
        // In the method (`curl -X "$TOKEN"`), and in a header name.
        let (w, _, _) = d.check_head(V, "/p", &HeaderMap::new()).unwrap();
        assert_eq!(w, "method");
        assert_eq!(traced_method(Some(&Arc::new(ds())), V), "[decoy]");
        assert_eq!(traced_method(Some(&Arc::new(ds())), "GET"), "GET");
    }

    fn frame(fin: bool, opcode: u8, payload: &[u8], key: [u8; 4]) -> Vec<u8> {
        let mut f = vec![if fin { 0x80 } else { 0 } | opcode];
        match payload.len() {
            n if n < 126 => f.push(0x80 | n as u8),
            n => {
                f.push(0x80 | 126);
                f.extend_from_slice(&(n as u16).to_be_bytes());
            }
        }
        f.extend_from_slice(&key);
        f.extend(payload.iter().enumerate().map(|(i, b)| b ^ key[i % 4]));
        f
    }

    /// A decoy split across fragments and reads is found before any of its bytes are
    /// released; clean traffic passes byte for byte.
    #[test]
    fn websocket_frames_are_unmasked_and_searched() {
        let d = Arc::new(ds());
        let (a, b) = V.split_at(20);
        let mut wire = frame(true, 1, b"hello", [1, 2, 3, 4]);
        let clean = wire.clone();
        wire.extend(frame(false, 1, format!("x{a}").as_bytes(), [9, 8, 7, 6]));
        wire.extend(frame(true, 9, b"ping", [5, 5, 5, 5]));
        wire.extend(frame(true, 0, format!("{b}y").as_bytes(), [3, 1, 4, 1]));
        for step in [1usize, 5, 13, wire.len()] {
            let mut s = WsScan::new(d.clone());
            let mut sent = Vec::new();
            let mut hit = None;
            for c in wire.chunks(step) {
                match s.push(c) {
                    Ok(o) => sent.extend(o),
                    Err(e) => {
                        hit = Some(e);
                        break;
                    }
                }
            }
            assert!(matches!(hit, Some(WsStop::Hit(_))), "step {step}");
            // Nothing of the decoy's first fragment left: at most the clean frame, the
            // header of the next.
            assert!(sent.len() <= clean.len() + 6, "step {step}: {}", sent.len());
        }
        let mut s = WsScan::new(d);
        let mut sent = Vec::new();
        for c in clean.chunks(3) {
            sent.extend(s.push(c).unwrap());
        }
        sent.extend(s.finish());
        assert_eq!(sent, clean);
        // A control frame that declares more than 125 bytes is refused at its header,
        // before anything of it is held: a "ping" of 2^40 bytes cannot grow the proxy.
        let mut big = vec![0x89u8, 0x80 | 127];
        big.extend((1u64 << 40).to_be_bytes());
        big.extend([0, 0, 0, 0]);
        let mut s = WsScan::new(Arc::new(ds()));
        assert!(matches!(s.push(&big), Err(WsStop::Unreadable)));
    }

    #[test]
    fn records_never_carry_values() {
        let e = parse(
            "{\"v\":1,\"type\":\"decoy\",\"name\":\"d\",\"values\":[\"SHORTSECRET\"]}\n",
            "stdin",
        )
        .err()
        .unwrap();
        assert!(!e.msg.contains("SHORTSECRET"), "{}", e.msg);
        let d = parse(
            &format!(
                "{{\"v\":1,\"type\":\"decoy\",\"name\":\"a\",\"values\":[\"{V}\"],\"on_trip\":\"log\"}}\n{{\"v\":1,\"type\":\"decoy\",\"name\":\"b\",\"values\":[\"ghp_0123456789abcdefghijABCDEFGHIJ0123456\"],\"on_trip\":\"block\"}}\n"
            ),
            "stdin",
        )
        .unwrap()
        .unwrap();
        assert_eq!(d.action, Action::Block);
        assert!(parse("", "stdin").unwrap().is_none());
    }
}
