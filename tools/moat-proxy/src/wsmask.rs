//! Masking for a WebSocket to a host that got a credential on its upgrade request: the
//! upstream's frames are parsed as they stream to the client, and every occurrence of the
//! credential in a message's payload (across fragments and reads) or in a control frame's
//! payload is overwritten with `*` of the same length, so frame lengths stay valid. Only
//! a tail of the current message that could start the credential is held back. A frame
//! the proxy cannot read as plain payload (a reserved bit set, as with a compression
//! extension, or a masked server frame) ends the connection; the upgrade request goes
//! upstream without `Sec-WebSocket-Extensions`, so a compliant upstream negotiates none.

use crate::redact::Secrets;
use std::sync::Arc;

pub struct WsMasker {
    secrets: Arc<Secrets>,
    /// Header bytes of the frame being read.
    hdr: Vec<u8>,
    /// Payload bytes left in the current frame (`None`: reading a header).
    remaining: Option<u64>,
    control: bool,
    fin: bool,
    /// Bytes not yet released to the client.
    out: Vec<u8>,
    /// Indices in `out` of the current data message's payload bytes not yet released.
    msg: Vec<usize>,
    /// Indices in `out` of the current control frame's payload.
    ctrl: Vec<usize>,
    /// Where the current, incomplete control frame starts in `out`.
    ctrl_start: Option<usize>,
}

/// The upstream sent a frame whose payload cannot be read as sent.
#[derive(Debug)]
pub struct Unreadable;

impl WsMasker {
    pub fn new(secrets: Arc<Secrets>) -> Self {
        WsMasker {
            secrets,
            hdr: Vec::new(),
            remaining: None,
            control: false,
            fin: true,
            out: Vec::new(),
            msg: Vec::new(),
            ctrl: Vec::new(),
            ctrl_start: None,
        }
    }

    fn mask_at(&mut self, idx: &[usize]) {
        let mut buf: Vec<u8> = idx.iter().map(|&i| self.out[i]).collect();
        if self.secrets.mask(&mut buf) {
            for (k, &i) in idx.iter().enumerate() {
                self.out[i] = buf[k];
            }
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

    fn end_frame(&mut self) {
        if self.control {
            let idx = std::mem::take(&mut self.ctrl);
            self.mask_at(&idx);
            self.ctrl_start = None;
        } else if self.fin {
            let idx = std::mem::take(&mut self.msg);
            self.mask_at(&idx);
        }
        self.remaining = None;
    }

    /// Take bytes from the upstream; returns the bytes that may go to the client now.
    pub fn push(&mut self, mut data: &[u8]) -> Result<Vec<u8>, Unreadable> {
        while !data.is_empty() {
            match self.remaining {
                None => {
                    self.hdr.push(data[0]);
                    data = &data[1..];
                    let Some(n) = self.header_len() else { continue };
                    if self.hdr[0] & 0x70 != 0 || self.hdr[1] & 0x80 != 0 {
                        return Err(Unreadable);
                    }
                    if self.hdr.len() < n {
                        continue;
                    }
                    let h = std::mem::take(&mut self.hdr);
                    let len = match h[1] & 0x7f {
                        126 => u64::from(u16::from_be_bytes([h[2], h[3]])),
                        127 => u64::from_be_bytes(h[2..10].try_into().unwrap_or_default()),
                        l => u64::from(l),
                    };
                    self.fin = h[0] & 0x80 != 0;
                    self.control = h[0] & 0x08 != 0;
                    self.out.extend_from_slice(&h);
                    if self.control {
                        self.ctrl_start = Some(self.out.len() - h.len());
                    }
                    self.remaining = Some(len);
                    if len == 0 {
                        self.end_frame();
                    }
                }
                Some(left) => {
                    let n = (left.min(data.len() as u64)) as usize;
                    let start = self.out.len();
                    self.out.extend_from_slice(&data[..n]);
                    let idx = start..start + n;
                    if self.control {
                        self.ctrl.extend(idx);
                    } else {
                        self.msg.extend(idx);
                    }
                    data = &data[n..];
                    self.remaining = Some(left - n as u64);
                    if left == n as u64 {
                        self.end_frame();
                    }
                }
            }
        }
        // Mask what the current message holds so far; keep back a tail that could start
        // the credential, and an incomplete control frame.
        let idx = self.msg.clone();
        self.mask_at(&idx);
        let buf: Vec<u8> = self.msg.iter().map(|&i| self.out[i]).collect();
        let hold = self.secrets.held_tail(&buf);
        let mut cut = self.out.len();
        if hold > 0 {
            cut = cut.min(self.msg[self.msg.len() - hold]);
        }
        if let Some(c) = self.ctrl_start {
            cut = cut.min(c);
        }
        let rest = self.out.split_off(cut);
        let ready = std::mem::replace(&mut self.out, rest);
        self.msg = self
            .msg
            .iter()
            .filter(|&&i| i >= cut)
            .map(|i| i - cut)
            .collect();
        self.ctrl = self.ctrl.iter().map(|i| i - cut).collect();
        self.ctrl_start = self.ctrl_start.map(|c| c - cut);
        Ok(ready)
    }

    /// The upstream closed: whatever is still held goes out.
    pub fn finish(&mut self) -> Vec<u8> {
        std::mem::take(&mut self.out)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn frame(fin: bool, opcode: u8, payload: &[u8]) -> Vec<u8> {
        let mut f = vec![if fin { 0x80 } else { 0 } | opcode];
        match payload.len() {
            n if n < 126 => f.push(n as u8),
            n if n < 65536 => {
                f.push(126);
                f.extend_from_slice(&(n as u16).to_be_bytes());
            }
            n => {
                f.push(127);
                f.extend_from_slice(&(n as u64).to_be_bytes());
            }
        }
        f.extend_from_slice(payload);
        f
    }

    /// Frames back to payloads: (opcode, payload) per frame.
    fn parse(mut b: &[u8]) -> Vec<(u8, Vec<u8>)> {
        let mut v = Vec::new();
        while b.len() >= 2 {
            let op = b[0] & 0x0f;
            let (len, off) = match b[1] & 0x7f {
                126 => (u16::from_be_bytes([b[2], b[3]]) as usize, 4),
                127 => (
                    u64::from_be_bytes(b[2..10].try_into().unwrap()) as usize,
                    10,
                ),
                l => (l as usize, 2),
            };
            v.push((op, b[off..off + len].to_vec()));
            b = &b[off + len..];
        }
        v
    }

    #[test]
    fn masks_across_fragments_reads_and_control_frames() {
        let secret = b"CANARY-0123456789abcdef";
        let s = Arc::new(Secrets::new(vec![secret.to_vec()]));
        let mut wire = Vec::new();
        wire.extend(frame(false, 1, b"hello CANARY-0123"));
        wire.extend(frame(true, 9, b"ping CANARY-0123456789abcdef"));
        wire.extend(frame(false, 0, b"456789"));
        wire.extend(frame(true, 0, b"abcdef bye"));
        let big = [&[b'x'; 70000][..], secret, b"!"].concat();
        wire.extend(frame(true, 2, &big));
        wire.extend(frame(true, 1, b"plain"));
        for step in [1usize, 3, 7, 64, 1000, wire.len()] {
            let mut m = WsMasker::new(s.clone());
            let mut got = Vec::new();
            for c in wire.chunks(step) {
                got.extend(m.push(c).unwrap());
            }
            got.extend(m.finish());
            assert_eq!(got.len(), wire.len(), "step {step}");
            let frames = parse(&got);
            assert_eq!(frames.len(), 6);
            let msg: Vec<u8> = [&frames[0].1[..], &frames[2].1, &frames[3].1].concat();
            let stars = "*".repeat(secret.len());
            assert_eq!(msg, format!("hello {stars} bye").as_bytes(), "step {step}");
            assert_eq!(frames[1].1, format!("ping {stars}").as_bytes());
            assert!(frames[4].1.ends_with(format!("{stars}!").as_bytes()));
            assert_eq!(frames[5].1, b"plain");
        }
    }

    #[test]
    fn unreadable_frames_end_the_stream() {
        let s = Arc::new(Secrets::new(vec![b"CANARY-0123456789".to_vec()]));
        let mut compressed = frame(true, 1, b"x");
        compressed[0] |= 0x40;
        assert!(WsMasker::new(s.clone()).push(&compressed).is_err());
        let mut masked = frame(true, 1, b"x");
        masked[1] |= 0x80;
        assert!(WsMasker::new(s).push(&masked).is_err());
    }
}
