//! The Responses API over WebSocket, as Codex speaks it: after the RFC 6455 handshake
//! the client sends `{"type":"response.create",...}` text messages and gets the same
//! events the SSE stream carries, one text message each. No extensions are accepted,
//! so frames are plain; client frames are masked, server frames are not.

use std::time::Duration;

use base64::Engine;
use hyper::upgrade::OnUpgrade;
use hyper_util::rt::TokioIo;
use serde_json::Value;
use tokio::io::{AsyncReadExt, AsyncWriteExt};

const GUID: &str = "258EAFA5-E914-47DA-95CA-C5AB0DC85B11";
const MAX_MESSAGE: usize = 64 << 20;

pub(crate) fn accept_key(key: &str) -> String {
    let d = ring::digest::digest(
        &ring::digest::SHA1_FOR_LEGACY_USE_ONLY,
        format!("{key}{GUID}").as_bytes(),
    );
    base64::engine::general_purpose::STANDARD.encode(d.as_ref())
}

/// Serve one upgraded connection: answer each `response.create` with `events(request)`.
pub(crate) fn spawn(
    on: OnUpgrade,
    delay: Duration,
    events: impl Fn(&Value) -> Vec<Value> + Send + 'static,
) {
    tokio::spawn(async move {
        let Ok(up) = on.await else { return };
        let mut io = TokioIo::new(up);
        loop {
            let Ok(Some((opcode, payload))) = read_message(&mut io).await else {
                return;
            };
            match opcode {
                0x1 => {
                    let v: Value = serde_json::from_slice(&payload).unwrap_or(Value::Null);
                    if v.get("type").and_then(Value::as_str) != Some("response.create") {
                        continue;
                    }
                    for (i, e) in events(&v).iter().enumerate() {
                        if i > 0 {
                            tokio::time::sleep(delay).await;
                        }
                        if write_frame(&mut io, 0x1, e.to_string().as_bytes())
                            .await
                            .is_err()
                        {
                            return;
                        }
                    }
                }
                0x8 => {
                    let _ = write_frame(&mut io, 0x8, &payload[..payload.len().min(2)]).await;
                    return;
                }
                0x9 if write_frame(&mut io, 0xA, &payload).await.is_err() => return,
                _ => {}
            }
        }
    });
}

/// One whole message (continuations joined): its opcode and unmasked payload.
async fn read_message<R: AsyncReadExt + Unpin>(
    r: &mut R,
) -> std::io::Result<Option<(u8, Vec<u8>)>> {
    let mut msg_opcode = None;
    let mut msg = Vec::new();
    loop {
        let mut h = [0u8; 2];
        if r.read_exact(&mut h).await.is_err() {
            return Ok(None);
        }
        let fin = h[0] & 0x80 != 0;
        let opcode = h[0] & 0x0f;
        let masked = h[1] & 0x80 != 0;
        let mut len = u64::from(h[1] & 0x7f);
        if len == 126 {
            let mut b = [0u8; 2];
            r.read_exact(&mut b).await?;
            len = u64::from(u16::from_be_bytes(b));
        } else if len == 127 {
            let mut b = [0u8; 8];
            r.read_exact(&mut b).await?;
            len = u64::from_be_bytes(b);
        }
        if len as usize > MAX_MESSAGE || msg.len() + len as usize > MAX_MESSAGE {
            return Ok(None);
        }
        let mut mask = [0u8; 4];
        if masked {
            r.read_exact(&mut mask).await?;
        }
        let mut payload = vec![0u8; len as usize];
        r.read_exact(&mut payload).await?;
        if masked {
            for (i, b) in payload.iter_mut().enumerate() {
                *b ^= mask[i % 4];
            }
        }
        if opcode >= 0x8 {
            // Control frames may come between fragments; answer them as whole messages.
            return Ok(Some((opcode, payload)));
        }
        if opcode != 0 {
            msg_opcode = Some(opcode);
        }
        msg.extend_from_slice(&payload);
        if fin {
            return Ok(Some((msg_opcode.unwrap_or(0x1), msg)));
        }
    }
}

async fn write_frame<W: AsyncWriteExt + Unpin>(
    w: &mut W,
    opcode: u8,
    payload: &[u8],
) -> std::io::Result<()> {
    let mut f = Vec::with_capacity(payload.len() + 10);
    f.push(0x80 | opcode);
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
    w.write_all(&f).await?;
    w.flush().await
}

#[cfg(test)]
mod tests {
    #[test]
    fn accept_key_matches_rfc_6455() {
        assert_eq!(
            super::accept_key("dGhlIHNhbXBsZSBub25jZQ=="),
            "s3pPLMBiTxaQ9kYGzzhZRbK+xOo="
        );
    }
}
