//! A hand-crafted agent client: raw frames over a UnixStream, so tests can send what no
//! well-behaved client would (forged bindings, replayed ids, oversized messages).

use std::io::{Read, Write};
use std::os::unix::net::UnixStream;
use std::path::Path;
use std::time::Duration;

pub const FAILURE: u8 = 5;
pub const SUCCESS: u8 = 6;
pub const IDENTITIES_ANSWER: u8 = 12;
pub const SIGN_RESPONSE: u8 = 14;

/// SSH wire encoding, just enough to build requests.
#[derive(Default, Clone)]
pub struct Buf(pub Vec<u8>);

impl Buf {
    pub fn new() -> Self {
        Buf(Vec::new())
    }
    pub fn u8(mut self, b: u8) -> Self {
        self.0.push(b);
        self
    }
    pub fn u32(mut self, n: u32) -> Self {
        self.0.extend_from_slice(&n.to_be_bytes());
        self
    }
    pub fn string(mut self, s: impl AsRef<[u8]>) -> Self {
        let s = s.as_ref();
        self.0.extend_from_slice(&(s.len() as u32).to_be_bytes());
        self.0.extend_from_slice(s);
        self
    }
    pub fn raw(mut self, s: &[u8]) -> Self {
        self.0.extend_from_slice(s);
        self
    }
}

/// Read an SSH string at `*at`, advancing.
pub fn take_string(b: &[u8], at: &mut usize) -> Vec<u8> {
    let n = u32::from_be_bytes(b[*at..*at + 4].try_into().unwrap()) as usize;
    let s = b[*at + 4..*at + 4 + n].to_vec();
    *at += 4 + n;
    s
}

pub struct Client {
    pub s: UnixStream,
}

impl Client {
    pub fn connect(path: &Path) -> Client {
        let s = UnixStream::connect(path).expect("connect to the filter");
        s.set_read_timeout(Some(Duration::from_secs(10))).unwrap();
        s.set_write_timeout(Some(Duration::from_secs(10))).unwrap();
        Client { s }
    }

    pub fn send_raw(&mut self, bytes: &[u8]) {
        self.s.write_all(bytes).unwrap();
    }

    /// Read one reply body; `None` when the filter closed the connection.
    pub fn read_reply(&mut self) -> Option<Vec<u8>> {
        let mut len = [0u8; 4];
        self.s.read_exact(&mut len).ok()?;
        let mut body = vec![0u8; u32::from_be_bytes(len) as usize];
        self.s.read_exact(&mut body).ok()?;
        Some(body)
    }

    pub fn request(&mut self, body: &[u8]) -> Vec<u8> {
        let mut f = (body.len() as u32).to_be_bytes().to_vec();
        f.extend_from_slice(body);
        self.send_raw(&f);
        self.read_reply().expect("a reply")
    }

    /// The key blobs the filter lists.
    pub fn list(&mut self) -> Vec<Vec<u8>> {
        let r = self.request(&[11]);
        assert_eq!(r[0], IDENTITIES_ANSWER, "{r:?}");
        let n = u32::from_be_bytes(r[1..5].try_into().unwrap());
        let mut at = 5;
        (0..n)
            .map(|_| {
                let k = take_string(&r, &mut at);
                let _comment = take_string(&r, &mut at);
                k
            })
            .collect()
    }

    /// A sign request: `Ok(signature blob)` or `Err(reply type)`.
    pub fn sign(&mut self, key_blob: &[u8], data: &[u8], flags: u32) -> Result<Vec<u8>, u8> {
        let r = self.request(&Buf::new().u8(13).string(key_blob).string(data).u32(flags).0);
        if r[0] == SIGN_RESPONSE {
            let mut at = 1;
            Ok(take_string(&r, &mut at))
        } else {
            Err(r[0])
        }
    }

    /// session-bind@openssh.com with the given host key blob, id and signature blob.
    pub fn bind_raw(&mut self, host_key: &[u8], sid: &[u8], sig: &[u8], fwd: bool) -> u8 {
        let r = self.request(
            &Buf::new()
                .u8(27)
                .string("session-bind@openssh.com")
                .string(host_key)
                .string(sid)
                .string(sig)
                .u8(fwd as u8)
                .0,
        );
        r[0]
    }

    /// A genuine binding: `host` (a private host key) signs `sid`.
    pub fn bind(&mut self, host: &ssh_key::PrivateKey, sid: &[u8]) -> u8 {
        let hk = host.public_key().to_bytes().unwrap();
        self.bind_raw(&hk, sid, &sign_blob(host, sid), false)
    }
}

/// `signer`'s signature over `msg` as an SSH signature blob.
pub fn sign_blob(signer: &ssh_key::PrivateKey, msg: &[u8]) -> Vec<u8> {
    let sig: ssh_key::Signature = signature::Signer::try_sign(signer, msg).unwrap();
    Buf::new()
        .string(sig.algorithm().as_str())
        .string(sig.as_bytes())
        .0
}

/// The data `ssh` asks an agent to sign for public-key authentication.
pub fn userauth(sid: &[u8], user: &str, algorithm: &str, key_blob: &[u8]) -> Vec<u8> {
    Buf::new()
        .string(sid)
        .u8(50)
        .string(user)
        .string("ssh-connection")
        .string("publickey")
        .u8(1)
        .string(algorithm)
        .string(key_blob)
        .0
}

/// The algorithm name a blob starts with.
pub fn blob_type(blob: &[u8]) -> String {
    let mut at = 0;
    String::from_utf8(take_string(blob, &mut at)).unwrap()
}
