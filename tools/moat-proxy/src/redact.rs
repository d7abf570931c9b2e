//! Defence in depth against reflection: a granted upstream that echoes the request (an
//! echo endpoint, an error page quoting headers) would hand the injected credential back
//! to the agent. Responses to requests that carried a credential have every occurrence of
//! it (the whole header value and the token after its scheme) masked with `*` of the same
//! length, in headers and in the body, so lengths and framing stay valid. The body is
//! streamed: only a tail that could be the start of a secret is held back until the next
//! chunk. Trailers are masked like headers. Compressed bodies cannot be inspected: a
//! request that carries a credential asks the upstream for `Accept-Encoding: identity`,
//! and a response that comes back with any other content or transfer coding is refused
//! ([`unmaskable_coding`]).

use bytes::Bytes;
use hyper::body::{Body, Frame, SizeHint};
use memchr::memmem;
use std::pin::Pin;
use std::sync::Arc;
use std::task::{Context, Poll};

/// The byte strings to mask for one injected header value.
pub fn secrets_of(value: &[u8]) -> Vec<Vec<u8>> {
    let mut v = vec![value.to_vec()];
    if let Some(i) = value.iter().position(|b| *b == b' ') {
        let tail = value[i + 1..].trim_ascii();
        if tail.len() >= 8 {
            v.push(tail.to_vec());
        }
    }
    v.retain(|s| s.len() >= 8);
    minimal(v)
}

/// Drop every secret that contains another: masking the inner one hides it already
/// (`Bearer ****` for `Bearer TOKEN`), and each body byte is scanned once per secret.
pub fn minimal(mut v: Vec<Vec<u8>>) -> Vec<Vec<u8>> {
    v.sort_by_key(|s| s.len());
    v.dedup();
    let mut out: Vec<Vec<u8>> = Vec::new();
    for s in v {
        if !out.iter().any(|o| memmem::find(&s, o).is_some()) {
            out.push(s);
        }
    }
    out.sort_by_key(|s| std::cmp::Reverse(s.len()));
    out
}

/// The byte strings to mask for one destination, each with a searcher built once (SIMD
/// prefilter on its rarest bytes), so scanning a body costs a small fraction of a cycle
/// per byte even when the secret's first byte is common in the body.
#[derive(Default)]
pub struct Secrets {
    finders: Vec<memmem::Finder<'static>>,
}

impl Secrets {
    /// Secrets to mask (reduced with [`minimal`]).
    pub fn new(v: Vec<Vec<u8>>) -> Secrets {
        Secrets {
            finders: minimal(v)
                .iter()
                .filter(|s| !s.is_empty())
                .map(|s| memmem::Finder::new(s).into_owned())
                .collect(),
        }
    }

    pub fn needles(&self) -> impl Iterator<Item = &[u8]> {
        self.finders.iter().map(|f| f.needle())
    }

    /// Index of the first occurrence of secret `i` in `hay` at or after `from`.
    fn find(&self, i: usize, hay: &[u8], from: usize) -> Option<usize> {
        self.finders[i].find(hay.get(from..)?).map(|p| from + p)
    }

    /// Does `buf` contain any of the secrets?
    pub fn contains(&self, buf: &[u8]) -> bool {
        (0..self.finders.len()).any(|i| self.find(i, buf, 0).is_some())
    }

    /// Mask every occurrence in place; returns whether anything was masked.
    pub fn mask(&self, buf: &mut [u8]) -> bool {
        let mut hit = false;
        for i in 0..self.finders.len() {
            let n = self.finders[i].needle().len();
            let mut from = 0;
            while let Some(p) = self.find(i, buf, from) {
                buf[p..p + n].fill(b'*');
                hit = true;
                from = p + n;
            }
        }
        hit
    }

    /// Length of the longest suffix of `buf` that is a proper prefix of some secret.
    pub(crate) fn held_tail(&self, buf: &[u8]) -> usize {
        let mut best = 0;
        for s in self.needles() {
            let max = (s.len() - 1).min(buf.len());
            for k in (best + 1..=max).rev() {
                if buf[buf.len() - k..] == s[..k] {
                    best = k;
                    break;
                }
            }
        }
        best
    }
}

/// Mask every header value that contains a secret; drop a header whose name contains one.
pub fn mask_headers(secrets: &Secrets, h: &mut http::HeaderMap) {
    let names: Vec<http::HeaderName> = h
        .keys()
        .filter(|n| secrets.contains(n.as_str().as_bytes()))
        .cloned()
        .collect();
    for n in names {
        h.remove(n);
    }
    for v in h.values_mut() {
        if !secrets.contains(v.as_bytes()) {
            continue;
        }
        let mut b = v.as_bytes().to_vec();
        secrets.mask(&mut b);
        *v = http::HeaderValue::from_bytes(&b).unwrap_or(http::HeaderValue::from_static(""));
    }
}

/// The content or transfer coding (other than `identity` and `chunked`) a response's
/// body arrives in, if any: masking cannot see into it, so such a response to a request
/// that carried a credential is refused.
pub fn unmaskable_coding(h: &http::HeaderMap) -> Option<String> {
    let codings = |name| {
        h.get_all(name)
            .iter()
            .flat_map(|v| {
                String::from_utf8_lossy(v.as_bytes())
                    .split(',')
                    .map(|t| t.trim().to_ascii_lowercase())
                    .filter(|t| !t.is_empty())
                    .collect::<Vec<_>>()
            })
            .collect::<Vec<_>>()
    };
    // Only a known coding's name is shown: the value is the upstream's, and an echo could
    // put the credential there.
    let shown = |c: String| match c.as_str() {
        "gzip" | "x-gzip" | "deflate" | "br" | "zstd" | "compress" | "x-compress" => c,
        _ => "an unknown coding".to_string(),
    };
    let ce = codings(http::header::CONTENT_ENCODING);
    if let Some(c) = ce.into_iter().find(|c| c != "identity") {
        return Some(format!("Content-Encoding: {}", shown(c)));
    }
    let te = codings(http::header::TRANSFER_ENCODING);
    te.into_iter()
        .find(|c| c != "chunked" && c != "identity")
        .map(|c| format!("Transfer-Encoding: {}", shown(c)))
}

pub struct Redact<B> {
    pub inner: B,
    pub secrets: Arc<Secrets>,
    carry: Vec<u8>,
    pending: Option<Frame<Bytes>>,
    ended: bool,
}

impl<B> Redact<B> {
    pub fn new(inner: B, secrets: Arc<Secrets>) -> Self {
        Redact {
            inner,
            secrets,
            carry: Vec::new(),
            pending: None,
            ended: false,
        }
    }
}

impl<B> Body for Redact<B>
where
    B: Body<Data = Bytes> + Unpin,
{
    type Data = Bytes;
    type Error = B::Error;

    fn poll_frame(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<Bytes>, B::Error>>> {
        let this = self.get_mut();
        if let Some(f) = this.pending.take() {
            return Poll::Ready(Some(Ok(f)));
        }
        if this.ended {
            return Poll::Ready(None);
        }
        loop {
            match Pin::new(&mut this.inner).poll_frame(cx) {
                Poll::Pending => return Poll::Pending,
                Poll::Ready(Some(Err(e))) => return Poll::Ready(Some(Err(e))),
                Poll::Ready(Some(Ok(frame))) => match frame.into_data() {
                    // The common case: nothing to mask and nothing held back; the chunk
                    // passes without a copy (a tail that could start a secret waits).
                    Ok(data) if this.carry.is_empty() && !this.secrets.contains(&data) => {
                        let hold = this.secrets.held_tail(&data);
                        if hold == 0 {
                            return Poll::Ready(Some(Ok(Frame::data(data))));
                        }
                        this.carry = data[data.len() - hold..].to_vec();
                        let head = data.slice(..data.len() - hold);
                        if head.is_empty() {
                            continue;
                        }
                        return Poll::Ready(Some(Ok(Frame::data(head))));
                    }
                    Ok(data) => {
                        let mut buf = std::mem::take(&mut this.carry);
                        buf.extend_from_slice(&data);
                        this.secrets.mask(&mut buf);
                        let hold = this.secrets.held_tail(&buf);
                        this.carry = buf.split_off(buf.len() - hold);
                        if buf.is_empty() {
                            continue;
                        }
                        return Poll::Ready(Some(Ok(Frame::data(Bytes::from(buf)))));
                    }
                    Err(other) => {
                        let other = match other.into_trailers() {
                            Ok(mut t) => {
                                mask_headers(&this.secrets, &mut t);
                                Frame::trailers(t)
                            }
                            Err(f) => f,
                        };
                        if this.carry.is_empty() {
                            return Poll::Ready(Some(Ok(other)));
                        }
                        this.pending = Some(other);
                        let c = std::mem::take(&mut this.carry);
                        return Poll::Ready(Some(Ok(Frame::data(Bytes::from(c)))));
                    }
                },
                Poll::Ready(None) => {
                    this.ended = true;
                    if this.carry.is_empty() {
                        return Poll::Ready(None);
                    }
                    let c = std::mem::take(&mut this.carry);
                    return Poll::Ready(Some(Ok(Frame::data(Bytes::from(c)))));
                }
            }
        }
    }

    fn is_end_stream(&self) -> bool {
        self.ended && self.pending.is_none() && self.carry.is_empty()
    }

    fn size_hint(&self) -> SizeHint {
        self.inner.size_hint()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use http_body_util::{BodyExt, StreamBody};

    #[test]
    fn search_finds_every_occurrence_at_every_offset() {
        let secret = b"tok-SECRET-1234".to_vec();
        let one = Secrets::new(vec![secret.clone()]);
        for len in [0usize, 1, 31, 32, 33, 64, 100, 1000] {
            for at in 0..len.saturating_sub(secret.len()) {
                let mut buf = vec![b't'; len];
                buf[at..at + secret.len()].copy_from_slice(&secret);
                assert_eq!(one.find(0, &buf, 0), Some(at), "len {len} at {at}");
                assert!(one.contains(&buf));
                assert!(one.mask(&mut buf));
                assert!(buf[at..at + secret.len()].iter().all(|b| *b == b'*'));
                assert!(!one.contains(&buf));
            }
        }
        let abcd = Secrets::new(vec![b"abcd".to_vec()]);
        assert_eq!(abcd.find(0, b"abc", 0), None);
        let abc = Secrets::new(vec![b"abc".to_vec()]);
        assert_eq!(abc.find(0, b"xxabcabc", 3), Some(5));
        assert_eq!(abc.find(0, b"xxabcabc", 9), None);
        // several occurrences and several secrets, overlapping and adjacent
        let two = Secrets::new(vec![b"SECRET-A".to_vec(), b"TOKEN-BBB".to_vec()]);
        let mut buf = b"SECRET-ASECRET-A TOKEN-BBB..TOKEN-BBBx SECRET-".to_vec();
        assert!(two.mask(&mut buf));
        assert_eq!(
            String::from_utf8(buf).unwrap(),
            "**************** *********..*********x SECRET-"
        );
    }

    #[test]
    fn codings_that_hide_the_body_are_named_without_echoing_the_upstream() {
        let mut h = http::HeaderMap::new();
        assert_eq!(unmaskable_coding(&h), None);
        h.insert("content-encoding", "identity".parse().unwrap());
        h.insert("transfer-encoding", "chunked".parse().unwrap());
        assert_eq!(unmaskable_coding(&h), None);
        h.insert("transfer-encoding", "gzip, chunked".parse().unwrap());
        assert_eq!(
            unmaskable_coding(&h).as_deref(),
            Some("Transfer-Encoding: gzip")
        );
        h.insert("content-encoding", "identity, BR".parse().unwrap());
        assert_eq!(
            unmaskable_coding(&h).as_deref(),
            Some("Content-Encoding: br")
        );
        h.insert("content-encoding", "Bearer CANARY-echoed".parse().unwrap());
        let got = unmaskable_coding(&h).unwrap();
        assert!(!got.to_ascii_lowercase().contains("canary"), "{got}");
    }

    #[test]
    fn masks_across_chunk_boundaries_without_holding_unrelated_bytes() {
        let secrets = Arc::new(Secrets::new(secrets_of(b"Bearer SECRET-TOKEN-123")));
        let chunks: Vec<&[u8]> = vec![
            b"data: first\n\n",
            b"echo: Bearer SEC",
            b"RET-TOKEN-123 and SECRET-TO",
            b"KEN-123!",
            b"tail SECR",
        ];
        let s = futures_util::stream::iter(
            chunks
                .into_iter()
                .map(|c| Ok::<_, std::convert::Infallible>(Frame::data(Bytes::from_static(c)))),
        );
        let body = Redact::new(StreamBody::new(s), secrets);
        let rt = tokio::runtime::Builder::new_current_thread()
            .build()
            .unwrap();
        let frames: Vec<Bytes> = rt.block_on(async {
            let mut b = body;
            let mut out = Vec::new();
            while let Some(f) = b.frame().await {
                out.push(f.unwrap().into_data().unwrap());
            }
            out
        });
        assert_eq!(frames[0], "data: first\n\n", "unrelated bytes pass at once");
        let all: Vec<u8> = frames.concat();
        let s = String::from_utf8(all).unwrap();
        assert!(!s.contains("SECRET-TOKEN-123"), "{s}");
        assert_eq!(
            s.len(),
            "data: first\n\necho: Bearer SECRET-TOKEN-123 and SECRET-TOKEN-123!tail SECR".len()
        );
        assert!(s.ends_with("!tail SECR"));
    }
}
