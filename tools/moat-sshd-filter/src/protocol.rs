//! The SSH agent protocol on raw frames: a u32 length, a type byte, then SSH wire fields.
//! Keys are opaque blobs here (a key's fingerprint is SHA-256 over its blob), so keys and
//! certificates the filter only passes along are never decoded. Parsers take a whole
//! frame, check every length against what is left, and reject trailing bytes; nothing here
//! panics on hostile input.

use base64::Engine as _;
use sha2::{Digest, Sha256};
use std::time::Duration;
use tokio::io::{AsyncRead, AsyncReadExt, AsyncWrite, AsyncWriteExt};

/// The largest message accepted in either direction (OpenSSH's `AGENT_MAX_LEN`).
pub const MAX_MESSAGE: usize = 256 * 1024;

pub const FAILURE: u8 = 5;
pub const SUCCESS: u8 = 6;
pub const REQUEST_IDENTITIES: u8 = 11;
pub const IDENTITIES_ANSWER: u8 = 12;
pub const SIGN_REQUEST: u8 = 13;
pub const SIGN_RESPONSE: u8 = 14;
pub const ADD_IDENTITY: u8 = 17;
pub const REMOVE_IDENTITY: u8 = 18;
pub const REMOVE_ALL_IDENTITIES: u8 = 19;
pub const ADD_SMARTCARD_KEY: u8 = 20;
pub const REMOVE_SMARTCARD_KEY: u8 = 21;
pub const LOCK: u8 = 22;
pub const UNLOCK: u8 = 23;
pub const ADD_ID_CONSTRAINED: u8 = 25;
pub const ADD_SMARTCARD_KEY_CONSTRAINED: u8 = 26;
pub const EXTENSION: u8 = 27;

/// SSH_MSG_USERAUTH_REQUEST (RFC 4252), the first byte after the session id in the data
/// a client asks to have signed for public-key authentication.
pub const USERAUTH_REQUEST: u8 = 50;

/// Sign-request flags (draft-miller-ssh-agent): which RSA hash to use.
pub const RSA_SHA2_256: u32 = 2;
pub const RSA_SHA2_512: u32 = 4;

pub const SESSION_BIND: &str = "session-bind@openssh.com";

#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub enum ParseError {
    #[error("message truncated")]
    Truncated,
    #[error("trailing bytes after the message")]
    Trailing,
    #[error("{0} is not UTF-8")]
    NotUtf8(&'static str),
    #[error("{0}")]
    Invalid(&'static str),
}

/// A cursor over SSH wire data (RFC 4251 §5).
pub struct Wire<'a> {
    buf: &'a [u8],
}

impl<'a> Wire<'a> {
    pub fn new(buf: &'a [u8]) -> Self {
        Wire { buf }
    }
    pub fn u8(&mut self) -> Result<u8, ParseError> {
        let (&b, rest) = self.buf.split_first().ok_or(ParseError::Truncated)?;
        self.buf = rest;
        Ok(b)
    }
    pub fn bool(&mut self) -> Result<bool, ParseError> {
        Ok(self.u8()? != 0)
    }
    pub fn u32(&mut self) -> Result<u32, ParseError> {
        if self.buf.len() < 4 {
            return Err(ParseError::Truncated);
        }
        let (n, rest) = self.buf.split_at(4);
        self.buf = rest;
        Ok(u32::from_be_bytes([n[0], n[1], n[2], n[3]]))
    }
    pub fn string(&mut self) -> Result<&'a [u8], ParseError> {
        let n = self.u32()? as usize;
        if self.buf.len() < n {
            return Err(ParseError::Truncated);
        }
        let (s, rest) = self.buf.split_at(n);
        self.buf = rest;
        Ok(s)
    }
    pub fn text(&mut self, what: &'static str) -> Result<&'a str, ParseError> {
        std::str::from_utf8(self.string()?).map_err(|_| ParseError::NotUtf8(what))
    }
    pub fn rest(&self) -> &'a [u8] {
        self.buf
    }
    pub fn finish(&self) -> Result<(), ParseError> {
        if self.buf.is_empty() {
            Ok(())
        } else {
            Err(ParseError::Trailing)
        }
    }
}

/// Builds one message body; [`frame`] adds the length prefix.
#[derive(Default)]
pub struct Msg(Vec<u8>);

impl Msg {
    pub fn new(kind: u8) -> Self {
        Msg(vec![kind])
    }
    #[cfg(test)]
    pub fn u8(mut self, b: u8) -> Self {
        self.0.push(b);
        self
    }
    pub fn u32(mut self, n: u32) -> Self {
        self.0.extend_from_slice(&n.to_be_bytes());
        self
    }
    pub fn string(mut self, s: &[u8]) -> Self {
        self.0.extend_from_slice(&(s.len() as u32).to_be_bytes());
        self.0.extend_from_slice(s);
        self
    }
    #[cfg(test)]
    pub fn raw(mut self, s: &[u8]) -> Self {
        self.0.extend_from_slice(s);
        self
    }
    pub fn body(self) -> Vec<u8> {
        self.0
    }
}

/// Prefix a message body with its length.
pub fn frame(body: &[u8]) -> Vec<u8> {
    let mut v = Vec::with_capacity(body.len() + 4);
    v.extend_from_slice(&(body.len() as u32).to_be_bytes());
    v.extend_from_slice(body);
    v
}

#[derive(Debug, thiserror::Error)]
pub enum FrameError {
    #[error("message of {0} bytes is over the {MAX_MESSAGE}-byte limit")]
    TooLong(usize),
    #[error("connection closed in the middle of a message")]
    Truncated,
    #[error("timed out in the middle of a message")]
    Timeout,
    #[error("{0}")]
    Io(#[from] std::io::Error),
}

/// Read one message body. `Ok(None)` is a clean end of stream before a new message. Once
/// the length has arrived the rest must follow within `body_timeout`.
pub async fn read_frame<R: AsyncRead + Unpin>(
    r: &mut R,
    body_timeout: Duration,
) -> Result<Option<Vec<u8>>, FrameError> {
    let mut len = [0u8; 4];
    let first = r.read(&mut len).await?;
    if first == 0 {
        return Ok(None);
    }
    let body = async {
        if first < 4 {
            r.read_exact(&mut len[first..]).await?;
        }
        let n = u32::from_be_bytes(len) as usize;
        if n > MAX_MESSAGE {
            return Err(FrameError::TooLong(n));
        }
        let mut body = vec![0u8; n];
        r.read_exact(&mut body).await?;
        Ok(body)
    };
    match tokio::time::timeout(body_timeout, body).await {
        Ok(Ok(b)) => Ok(Some(b)),
        Ok(Err(FrameError::Io(e))) if e.kind() == std::io::ErrorKind::UnexpectedEof => {
            Err(FrameError::Truncated)
        }
        Ok(Err(e)) => Err(e),
        Err(_) => Err(FrameError::Timeout),
    }
}

pub async fn write_frame<W: AsyncWrite + Unpin>(w: &mut W, body: &[u8]) -> std::io::Result<()> {
    w.write_all(&frame(body)).await?;
    w.flush().await
}

/// `SHA256:` and the unpadded base64 of SHA-256 over the key blob, as `ssh-add -l` prints.
pub fn fingerprint(key_blob: &[u8]) -> String {
    let d = Sha256::digest(key_blob);
    format!(
        "SHA256:{}",
        base64::engine::general_purpose::STANDARD_NO_PAD.encode(d.as_slice())
    )
}

/// The algorithm name a key or signature blob starts with (`ssh-ed25519`, `rsa-sha2-512`).
pub fn blob_type(blob: &[u8]) -> Option<&str> {
    let mut w = Wire::new(blob);
    std::str::from_utf8(w.string().ok()?).ok()
}

/// One identity in an `IDENTITIES_ANSWER`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Identity {
    pub key_blob: Vec<u8>,
    pub comment: Vec<u8>,
}

/// Parse an `IDENTITIES_ANSWER` body (type byte included).
pub fn parse_identities(body: &[u8]) -> Result<Vec<Identity>, ParseError> {
    let mut w = Wire::new(body);
    if w.u8()? != IDENTITIES_ANSWER {
        return Err(ParseError::Invalid("not an identities answer"));
    }
    let n = w.u32()?;
    let mut ids = Vec::new();
    for _ in 0..n {
        let key_blob = w.string()?.to_vec();
        let comment = w.string()?.to_vec();
        ids.push(Identity { key_blob, comment });
    }
    w.finish()?;
    Ok(ids)
}

pub fn identities_answer(ids: &[Identity]) -> Vec<u8> {
    let mut m = Msg::new(IDENTITIES_ANSWER).u32(ids.len() as u32);
    for id in ids {
        m = m.string(&id.key_blob).string(&id.comment);
    }
    m.body()
}

/// A `SIGN_REQUEST`: which key, what data, which flags.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SignRequest<'a> {
    pub key_blob: &'a [u8],
    pub data: &'a [u8],
    pub flags: u32,
}

/// Parse a `SIGN_REQUEST` body after its type byte.
pub fn parse_sign_request(rest: &[u8]) -> Result<SignRequest<'_>, ParseError> {
    let mut w = Wire::new(rest);
    let key_blob = w.string()?;
    let data = w.string()?;
    let flags = w.u32()?;
    w.finish()?;
    Ok(SignRequest {
        key_blob,
        data,
        flags,
    })
}

/// The signature blob's algorithm name in a `SIGN_RESPONSE` body (type byte included).
pub fn sign_response_algorithm(body: &[u8]) -> Option<String> {
    let mut w = Wire::new(body);
    if w.u8().ok()? != SIGN_RESPONSE {
        return None;
    }
    let sig = w.string().ok()?;
    blob_type(sig).map(str::to_string)
}

/// The data a client signs to authenticate with a public key (RFC 4252 §7, and OpenSSH's
/// `publickey-hostbound-v00@openssh.com`, which adds the server's host key).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Userauth<'a> {
    pub session_id: &'a [u8],
    pub user: &'a str,
    pub service: &'a str,
    pub method: &'a str,
    pub algorithm: &'a str,
    pub key_blob: &'a [u8],
    pub host_key: Option<&'a [u8]>,
}

pub const METHOD_PUBLICKEY: &str = "publickey";
pub const METHOD_HOSTBOUND: &str = "publickey-hostbound-v00@openssh.com";

/// Parse data to be signed as a public-key userauth request; anything else is an error.
pub fn parse_userauth(data: &[u8]) -> Result<Userauth<'_>, ParseError> {
    let mut w = Wire::new(data);
    let session_id = w.string()?;
    if w.u8()? != USERAUTH_REQUEST {
        return Err(ParseError::Invalid("not an SSH_MSG_USERAUTH_REQUEST"));
    }
    let user = w.text("user name")?;
    let service = w.text("service name")?;
    let method = w.text("method name")?;
    if method != METHOD_PUBLICKEY && method != METHOD_HOSTBOUND {
        return Err(ParseError::Invalid(
            "authentication method is not publickey",
        ));
    }
    if !w.bool()? {
        return Err(ParseError::Invalid("userauth request carries no signature"));
    }
    let algorithm = w.text("algorithm name")?;
    let key_blob = w.string()?;
    let host_key = if method == METHOD_HOSTBOUND {
        Some(w.string()?)
    } else {
        None
    };
    w.finish()?;
    Ok(Userauth {
        session_id,
        user,
        service,
        method,
        algorithm,
        key_blob,
        host_key,
    })
}

/// `Some(namespace)` when the data is an SSHSIG signed-data blob (as `ssh-keygen -Y sign`
/// and git hand to the agent); `Some(Err)` when it starts like one but does not parse.
pub fn sshsig_namespace(data: &[u8]) -> Option<Result<String, ParseError>> {
    let rest = data.strip_prefix(b"SSHSIG")?;
    Some((|| {
        let mut w = Wire::new(rest);
        let ns = w.text("namespace")?.to_string();
        let _reserved = w.string()?;
        let _hash_alg = w.string()?;
        let _hash = w.string()?;
        w.finish()?;
        Ok(ns)
    })())
}

/// A parsed extension request: its name and the bytes after it.
pub fn parse_extension(rest: &[u8]) -> Result<(&str, &[u8]), ParseError> {
    let mut w = Wire::new(rest);
    let name = w.text("extension name")?;
    Ok((name, w.rest()))
}

/// The name of a request the filter refuses outright, for its records.
pub fn refused_request_name(kind: u8) -> Option<&'static str> {
    Some(match kind {
        ADD_IDENTITY => "add_identity",
        ADD_ID_CONSTRAINED => "add_identity_constrained",
        REMOVE_IDENTITY => "remove_identity",
        REMOVE_ALL_IDENTITIES => "remove_all_identities",
        ADD_SMARTCARD_KEY => "add_smartcard_key",
        ADD_SMARTCARD_KEY_CONSTRAINED => "add_smartcard_key_constrained",
        REMOVE_SMARTCARD_KEY => "remove_smartcard_key",
        LOCK => "lock",
        UNLOCK => "unlock",
        // Protocol 1 requests, which `ssh-add -D` still sends alongside the new one.
        1 => "list_v1",
        3 => "rsa_challenge_v1",
        7 => "add_identity_v1",
        8 => "remove_identity_v1",
        9 => "remove_all_identities_v1",
        24 => "add_identity_constrained_v1",
        _ => return None,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn userauth(method: &str, key: &[u8], extra: Option<&[u8]>) -> Vec<u8> {
        let mut m = Msg::default()
            .string(b"sid")
            .u8(USERAUTH_REQUEST)
            .string(b"git")
            .string(b"ssh-connection")
            .string(method.as_bytes())
            .u8(1)
            .string(b"ssh-ed25519")
            .string(key);
        if let Some(h) = extra {
            m = m.string(h);
        }
        m.body()
    }

    #[test]
    fn userauth_requests_parse_and_nothing_else_does() {
        let d = userauth(METHOD_PUBLICKEY, b"KEY", None);
        let u = parse_userauth(&d).unwrap();
        assert_eq!(u.session_id, b"sid");
        assert_eq!(u.user, "git");
        assert_eq!(u.key_blob, b"KEY");
        assert_eq!(u.host_key, None);
        let d = userauth(METHOD_HOSTBOUND, b"KEY", Some(b"HOST"));
        assert_eq!(parse_userauth(&d).unwrap().host_key, Some(&b"HOST"[..]));
        // trailing bytes, truncation at every length, other methods
        let mut t = userauth(METHOD_PUBLICKEY, b"KEY", None);
        t.push(0);
        assert_eq!(parse_userauth(&t), Err(ParseError::Trailing));
        for n in 0..d.len() {
            assert!(parse_userauth(&d[..n]).is_err());
        }
        assert!(parse_userauth(&userauth("password", b"KEY", None)).is_err());
        assert!(parse_userauth(b"SSHSIG").is_err());
    }

    #[test]
    fn frames_and_identities_round_trip() {
        let ids = vec![
            Identity {
                key_blob: b"a".to_vec(),
                comment: b"x".to_vec(),
            },
            Identity {
                key_blob: b"b".to_vec(),
                comment: vec![],
            },
        ];
        assert_eq!(parse_identities(&identities_answer(&ids)).unwrap(), ids);
        let mut bad = identities_answer(&ids);
        bad[4] = 9; // claims 9 keys
        assert!(parse_identities(&bad).is_err());
        assert_eq!(frame(b"\x0b"), b"\0\0\0\x01\x0b");
    }

    #[test]
    fn fingerprints_have_the_openssh_shape() {
        // (the integration tests compare against `ssh-keygen -lf` on real keys)
        let b = base64::engine::general_purpose::STANDARD
            .decode("AAAAC3NzaC1lZDI1NTE5AAAAIFFG9JfPGvDaFcZmyBXThHmUVHpk2bJBf4bFtXwl29e+")
            .unwrap();
        assert_eq!(blob_type(&b), Some("ssh-ed25519"));
        assert!(fingerprint(&b).starts_with("SHA256:"));
        assert_eq!(fingerprint(&b).len(), 7 + 43);
    }

    #[test]
    fn sshsig_namespaces_are_read() {
        let d = Msg::default()
            .raw(b"SSHSIG")
            .string(b"git")
            .string(b"")
            .string(b"sha512")
            .string(&[1; 64])
            .body();
        assert_eq!(sshsig_namespace(&d), Some(Ok("git".to_string())));
        assert!(matches!(sshsig_namespace(b"SSHSIGxx"), Some(Err(_))));
        assert_eq!(sshsig_namespace(b"\0\0\0\x20"), None);
    }

    /// Random and mutated input never panics a parser (a small, deterministic fuzz).
    #[test]
    fn parsers_survive_random_input() {
        let mut x: u64 = 0x9e3779b97f4a7c15;
        let mut next = || {
            x ^= x << 13;
            x ^= x >> 7;
            x ^= x << 17;
            x
        };
        let seeds = [
            userauth(METHOD_HOSTBOUND, b"KEY", Some(b"HOST")),
            identities_answer(&[Identity {
                key_blob: b"k".to_vec(),
                comment: b"c".to_vec(),
            }]),
            Msg::default().string(b"k").string(b"d").u32(4).body(),
        ];
        for i in 0..20_000 {
            let mut d = if i % 2 == 0 {
                seeds[i % seeds.len()].clone()
            } else {
                (0..(next() % 64)).map(|_| next() as u8).collect()
            };
            if !d.is_empty() {
                for _ in 0..(next() % 4) {
                    let at = (next() as usize) % d.len();
                    d[at] = next() as u8;
                }
                d.truncate((next() as usize) % (d.len() + 1));
            }
            let _ = parse_userauth(&d);
            let _ = parse_identities(&d);
            let _ = parse_sign_request(&d);
            let _ = parse_extension(&d);
            let _ = sshsig_namespace(&d);
            let _ = sign_response_algorithm(&d);
            if let Ok(b) = crate::bind::parse(&d) {
                let _ = b.verify();
            }
        }
    }

    #[tokio::test]
    async fn oversized_and_truncated_frames_are_errors() {
        let t = Duration::from_secs(1);
        let mut big: &[u8] = &[0, 0x10, 0, 0, 1];
        assert!(matches!(
            read_frame(&mut big, t).await,
            Err(FrameError::TooLong(_))
        ));
        let mut short: &[u8] = &[0, 0, 0, 5, 1];
        assert!(matches!(
            read_frame(&mut short, t).await,
            Err(FrameError::Truncated)
        ));
        let mut empty: &[u8] = &[];
        assert!(read_frame(&mut empty, t).await.unwrap().is_none());
        let mut ok: &[u8] = &[0, 0, 0, 1, 11];
        assert_eq!(read_frame(&mut ok, t).await.unwrap().unwrap(), vec![11]);
    }
}
