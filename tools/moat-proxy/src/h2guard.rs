//! A guard against HTTP/2 control-frame floods (THREATS D4) on client connections inside a
//! tunnel. hyper/h2 already bound CONTINUATION floods, header list sizes, concurrent
//! streams and streams reset before they are accepted; what they leave open is a client
//! that sends PING, SETTINGS, RST_STREAM, PRIORITY or empty DATA frames as fast as it can
//! (each is cheap to answer but costs CPU without end, and a reset of an accepted stream
//! may cost an upstream request). This wrapper reads the frame headers of the decrypted
//! client stream as they go past (it never changes a byte) and charges each such frame to
//! a token bucket; when the bucket runs dry the connection is told to go away (GOAWAY) and
//! reads stop, so the flood is not processed further. Connections that do not start with
//! the HTTP/2 preface are not inspected.

use std::io;
use std::pin::Pin;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::task::{Context, Poll};
use std::time::Instant;
use tokio::io::{AsyncRead, ReadBuf};
use tokio::sync::Notify;

const PREFACE: &[u8] = b"PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n";
/// Control frames a connection may send at once ...
pub const BURST: f64 = 1000.0;
/// ... and per second after that.
pub const RATE: f64 = 100.0;

/// Shared between the wrapper and the task serving the connection.
#[derive(Default)]
pub struct Tripped {
    flag: AtomicBool,
    notify: Notify,
}

impl Tripped {
    pub fn is_set(&self) -> bool {
        self.flag.load(Ordering::Acquire)
    }
    /// Resolves once the connection has been found abusive.
    pub async fn wait(&self) {
        loop {
            let n = self.notify.notified();
            if self.is_set() {
                return;
            }
            n.await;
        }
    }
    fn set(&self) {
        self.flag.store(true, Ordering::Release);
        self.notify.notify_waiters();
    }
}

enum Parse {
    Preface(usize),
    Head([u8; 9], usize),
    Payload(u32),
    Off,
}

pub struct Guarded<S> {
    inner: S,
    parse: Parse,
    tokens: f64,
    last: Instant,
    tripped: Arc<Tripped>,
}

impl<S> Guarded<S> {
    pub fn new(inner: S, tripped: Arc<Tripped>) -> Self {
        Guarded {
            inner,
            parse: Parse::Preface(0),
            tokens: BURST,
            last: Instant::now(),
            tripped,
        }
    }

    fn charge(&mut self) {
        let now = Instant::now();
        let dt = now.duration_since(self.last).as_secs_f64();
        self.last = now;
        self.tokens = (self.tokens + dt * RATE).min(BURST) - 1.0;
        if self.tokens < 0.0 && !self.tripped.is_set() {
            self.tripped.set();
        }
    }

    fn frame(&mut self, h: &[u8; 9]) {
        let len = u32::from_be_bytes([0, h[0], h[1], h[2]]);
        let (kind, flags) = (h[3], h[4]);
        let control = match kind {
            // DATA without payload that does not end the stream
            0x0 => len == 0 && flags & 0x1 == 0,
            // PRIORITY, RST_STREAM
            0x2 | 0x3 => true,
            // SETTINGS, PING (acknowledgements are answers, not requests)
            0x4 | 0x6 => flags & 0x1 == 0,
            _ => false,
        };
        if control {
            self.charge();
        }
    }

    fn scan(&mut self, mut b: &[u8]) {
        while !b.is_empty() {
            match &mut self.parse {
                Parse::Off => return,
                Parse::Preface(n) => {
                    let k = (PREFACE.len() - *n).min(b.len());
                    if b[..k] != PREFACE[*n..*n + k] {
                        self.parse = Parse::Off;
                        return;
                    }
                    *n += k;
                    b = &b[k..];
                    if *n == PREFACE.len() {
                        self.parse = Parse::Head([0; 9], 0);
                    }
                }
                Parse::Head(h, n) => {
                    let k = (9 - *n).min(b.len());
                    h[*n..*n + k].copy_from_slice(&b[..k]);
                    *n += k;
                    b = &b[k..];
                    if *n == 9 {
                        let h = *h;
                        let len = u32::from_be_bytes([0, h[0], h[1], h[2]]);
                        self.parse = if len == 0 {
                            Parse::Head([0; 9], 0)
                        } else {
                            Parse::Payload(len)
                        };
                        self.frame(&h);
                    }
                }
                Parse::Payload(left) => {
                    let k = (*left as usize).min(b.len());
                    *left -= k as u32;
                    b = &b[k..];
                    if *left == 0 {
                        self.parse = Parse::Head([0; 9], 0);
                    }
                }
            }
        }
    }
}

impl<S: AsyncRead + Unpin> AsyncRead for Guarded<S> {
    fn poll_read(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<io::Result<()>> {
        let this = self.get_mut();
        if this.tripped.is_set() {
            // Stop taking frames in; the serving task sends GOAWAY and closes.
            return Poll::Pending;
        }
        let before = buf.filled().len();
        let r = Pin::new(&mut this.inner).poll_read(cx, buf);
        if let Poll::Ready(Ok(())) = r
            && !matches!(this.parse, Parse::Off)
        {
            this.scan(&buf.filled()[before..]);
        }
        r
    }
}

writes_pass_through!(Guarded);

#[cfg(test)]
mod tests {
    use super::*;

    fn frame(kind: u8, flags: u8, len: usize) -> Vec<u8> {
        let mut v = vec![
            (len >> 16) as u8,
            (len >> 8) as u8,
            len as u8,
            kind,
            flags,
            0,
            0,
            0,
            1,
        ];
        v.resize(9 + len, 0);
        v
    }

    #[test]
    fn counts_control_frames_across_split_reads_and_ignores_http1() {
        let t = Arc::new(Tripped::default());
        let mut g = Guarded::new((), t.clone());
        let mut all = PREFACE.to_vec();
        all.extend(frame(0x4, 0, 6));
        all.extend(frame(0x1, 0x4, 40));
        all.extend(frame(0x0, 0x1, 100));
        for _ in 0..(BURST as usize - 10) {
            all.extend(frame(0x6, 0, 8));
            all.extend(frame(0x6, 0x1, 8)); // acks are free
        }
        for c in all.chunks(7) {
            g.scan(c);
        }
        assert!(!t.is_set());
        let mut more = Vec::new();
        for _ in 0..50 {
            more.extend(frame(0x3, 0, 4));
        }
        g.scan(&more);
        assert!(t.is_set());

        let t = Arc::new(Tripped::default());
        let mut g = Guarded::new((), t.clone());
        g.scan(b"GET / HTTP/1.1\r\n\r\n");
        assert!(matches!(g.parse, Parse::Off));
    }
}
