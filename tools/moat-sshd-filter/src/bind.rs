//! `session-bind@openssh.com`: the client tells the agent which server this connection
//! authenticates to, by passing the server's host key, the session id, and the server's
//! signature over that id. A binding is accepted only when that signature verifies with
//! that host key, so a container cannot claim a destination it has no live session with.

use crate::protocol::{ParseError, Wire};

/// The longest session id accepted (OpenSSH's own limit; real ids are hash outputs).
pub const MAX_SESSION_ID: usize = 128;

/// A session-bind request as sent.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SessionBind<'a> {
    pub host_key: &'a [u8],
    pub session_id: &'a [u8],
    pub signature: &'a [u8],
    pub is_forwarding: bool,
}

/// What a connection is bound to, once verified.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Binding {
    pub host_key: Vec<u8>,
    pub session_id: Vec<u8>,
}

#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub enum BindError {
    #[error("malformed session-bind: {0}")]
    Malformed(#[from] ParseError),
    #[error("session id is empty or longer than {MAX_SESSION_ID} bytes")]
    SessionIdLength,
    #[error("host key cannot be used: {0}")]
    HostKey(String),
    #[error("host key signature over the session id does not verify")]
    BadSignature,
}

/// Parse the bytes after the extension name.
pub fn parse(contents: &[u8]) -> Result<SessionBind<'_>, BindError> {
    let mut w = Wire::new(contents);
    let host_key = w.string()?;
    let session_id = w.string()?;
    let signature = w.string()?;
    let is_forwarding = w.bool()?;
    w.finish()?;
    Ok(SessionBind {
        host_key,
        session_id,
        signature,
        is_forwarding,
    })
}

impl SessionBind<'_> {
    /// Check the host key's signature over the session id. RSA host keys must sign with
    /// rsa-sha2-256 or -512 (ssh-key has no SHA-1 verification, so `ssh-rsa` fails here).
    pub fn verify(&self) -> Result<Binding, BindError> {
        if self.session_id.is_empty() || self.session_id.len() > MAX_SESSION_ID {
            return Err(BindError::SessionIdLength);
        }
        let key = ssh_key::PublicKey::from_bytes(self.host_key)
            .map_err(|e| BindError::HostKey(e.to_string()))?;
        let sig =
            ssh_key::Signature::try_from(self.signature).map_err(|_| BindError::BadSignature)?;
        signature::Verifier::verify(key.key_data(), self.session_id, &sig)
            .map_err(|_| BindError::BadSignature)?;
        Ok(Binding {
            host_key: self.host_key.to_vec(),
            session_id: self.session_id.to_vec(),
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::protocol::Msg;
    use signature::Signer as _;
    use ssh_key::private::{Ed25519Keypair, KeypairData};

    fn host(seed: u8) -> ssh_key::PrivateKey {
        let kp = Ed25519Keypair::from_seed(&[seed; 32]);
        ssh_key::PrivateKey::new(KeypairData::Ed25519(kp), "").unwrap()
    }

    fn bind_bytes(
        key: &ssh_key::PrivateKey,
        signer: &ssh_key::PrivateKey,
        sid: &[u8],
        fwd: u8,
    ) -> Vec<u8> {
        let sig: ssh_key::Signature = signer.try_sign(sid).unwrap();
        let sig_blob = Msg::default()
            .string(sig.algorithm().as_str().as_bytes())
            .string(sig.as_bytes())
            .body();
        let hk = key.public_key().to_bytes().unwrap();
        let mut m = Msg::default().string(&hk).string(sid).string(&sig_blob);
        m = m.u8(fwd);
        m.body()
    }

    #[test]
    fn a_binding_verifies_only_with_its_own_host_key() {
        let k = host(1);
        let good = bind_bytes(&k, &k, &[7; 32], 0);
        let b = parse(&good).unwrap();
        assert!(!b.is_forwarding);
        assert_eq!(b.verify().unwrap().session_id, vec![7; 32]);
        // signed by another key
        let forged = bind_bytes(&k, &host(2), &[7; 32], 0);
        assert_eq!(
            parse(&forged).unwrap().verify(),
            Err(BindError::BadSignature)
        );
        // signature over another session id
        let mut other = parse(&good).unwrap();
        other.session_id = &[8; 32];
        assert_eq!(other.verify(), Err(BindError::BadSignature));
        // lengths and garbage
        assert_eq!(
            parse(&bind_bytes(&k, &k, &[7; 129], 0)).unwrap().verify(),
            Err(BindError::SessionIdLength)
        );
        assert!(
            parse(&bind_bytes(&k, &k, &[7; 32], 1))
                .unwrap()
                .is_forwarding
        );
        for n in 0..good.len() {
            assert!(parse(&good[..n]).is_err());
        }
        let mut junk = good.clone();
        junk[10] ^= 0xff;
        assert!(parse(&junk).map_or(true, |b| b.verify().is_err()));
    }
}
