//! Defence in depth against reflection: a granted upstream that echoes the request (an
//! echo endpoint, an error page quoting headers) would hand the injected credential back
//! to the agent. Responses to requests that carried a credential have every occurrence of
//! it (the whole header value and the token after its scheme) masked with `*` of the same
//! length, in headers and in the body, so lengths and framing stay valid. The body is
//! streamed: only a tail that could be the start of a secret is held back until the next
//! chunk. Compressed bodies are not inspected.

use bytes::Bytes;
use hyper::body::{Body, Frame, SizeHint};
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
    v.sort_by_key(|s| std::cmp::Reverse(s.len()));
    v
}

/// Mask every occurrence in place; returns whether anything was masked.
pub fn mask(buf: &mut [u8], secrets: &[Vec<u8>]) -> bool {
    let mut hit = false;
    for s in secrets {
        let mut i = 0;
        while i + s.len() <= buf.len() {
            if &buf[i..i + s.len()] == s.as_slice() {
                buf[i..i + s.len()].fill(b'*');
                hit = true;
                i += s.len();
            } else {
                i += 1;
            }
        }
    }
    hit
}

/// Length of the longest suffix of `buf` that is a proper prefix of some secret.
fn held_tail(buf: &[u8], secrets: &[Vec<u8>]) -> usize {
    let mut best = 0;
    for s in secrets {
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

pub struct Redact<B> {
    pub inner: B,
    pub secrets: Arc<Vec<Vec<u8>>>,
    carry: Vec<u8>,
    pending: Option<Frame<Bytes>>,
    ended: bool,
}

impl<B> Redact<B> {
    pub fn new(inner: B, secrets: Arc<Vec<Vec<u8>>>) -> Self {
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
                    Ok(data) => {
                        let mut buf = std::mem::take(&mut this.carry);
                        buf.extend_from_slice(&data);
                        mask(&mut buf, &this.secrets);
                        let hold = held_tail(&buf, &this.secrets);
                        this.carry = buf.split_off(buf.len() - hold);
                        if buf.is_empty() {
                            continue;
                        }
                        return Poll::Ready(Some(Ok(Frame::data(Bytes::from(buf)))));
                    }
                    Err(other) => {
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
    fn masks_across_chunk_boundaries_without_holding_unrelated_bytes() {
        let secrets = Arc::new(secrets_of(b"Bearer SECRET-TOKEN-123"));
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
