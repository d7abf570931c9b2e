//! Checkpoints: a C2SP `tlog-checkpoint` body (origin, tree size, base64 root hash) inside a
//! C2SP `signed-note` with an Ed25519 signature. Keys are named; a signature line carries the
//! 4-byte key id `SHA-256(name || 0x0A || 0x01 || public key)[..4]`, and a verifier key is
//! written `name+hexid+base64(0x01 || public key)`. Verification is strict (`verify_strict`)
//! and trusts only the one key it is given.

use crate::merkle::Hash;
use base64::Engine as _;
use base64::engine::general_purpose::STANDARD as B64;
use ed25519_dalek::{Signature, Signer as _, SigningKey, VerifyingKey};
use sha2::{Digest, Sha256};

const ALG_ED25519: u8 = 0x01;
const DASH: &str = "\u{2014} ";

pub fn key_id(name: &str, public: &[u8; 32]) -> [u8; 4] {
    let mut h = Sha256::new();
    h.update(name.as_bytes());
    h.update([b'\n', ALG_ED25519]);
    h.update(public);
    let d = h.finalize();
    [d[0], d[1], d[2], d[3]]
}

pub fn valid_key_name(name: &str) -> bool {
    !name.is_empty() && !name.contains('+') && !name.chars().any(|c| c.is_whitespace())
}

/// A signing key with its name.
pub struct NoteSigner {
    pub name: String,
    key: SigningKey,
    id: [u8; 4],
}

impl NoteSigner {
    pub fn new(name: &str, seed: [u8; 32]) -> Self {
        let key = SigningKey::from_bytes(&seed);
        let id = key_id(name, &key.verifying_key().to_bytes());
        NoteSigner {
            name: name.to_string(),
            key,
            id,
        }
    }

    pub fn seed(&self) -> [u8; 32] {
        self.key.to_bytes()
    }

    pub fn verifier(&self) -> VerifierKey {
        VerifierKey {
            name: self.name.clone(),
            id: self.id,
            key: self.key.verifying_key(),
        }
    }

    /// The private key in the signed-note signer-key form:
    /// `PRIVATE+KEY+name+hexid+base64(0x01 || seed)`.
    pub fn to_private_string(&self) -> String {
        let mut b = vec![ALG_ED25519];
        b.extend_from_slice(&self.key.to_bytes());
        format!(
            "PRIVATE+KEY+{}+{}+{}",
            self.name,
            moat_core::hex(&self.id),
            B64.encode(b)
        )
    }

    pub fn from_private_string(s: &str) -> Result<Self, String> {
        let rest = s
            .trim()
            .strip_prefix("PRIVATE+KEY+")
            .ok_or("not a signer key (no PRIVATE+KEY+ prefix)")?;
        // Names never contain '+', base64 may: split from the left.
        let mut parts = rest.splitn(3, '+');
        let (name, idhex, b64) = match (parts.next(), parts.next(), parts.next()) {
            (Some(n), Some(i), Some(b)) => (n, i, b),
            _ => return Err("malformed signer key".into()),
        };
        let raw = B64.decode(b64).map_err(|_| "malformed signer key")?;
        if raw.len() != 33 || raw[0] != ALG_ED25519 || !valid_key_name(name) {
            return Err("malformed signer key".into());
        }
        let seed: [u8; 32] = raw[1..].try_into().expect("length checked");
        let s = NoteSigner::new(name, seed);
        if moat_core::hex(&s.id) != idhex {
            return Err("signer key id does not match the key".into());
        }
        Ok(s)
    }

    /// Sign a note body (which must end in a newline) into a complete signed note.
    pub fn sign(&self, body: &str) -> String {
        debug_assert!(body.ends_with('\n'));
        let sig = self.key.sign(body.as_bytes());
        let mut b = self.id.to_vec();
        b.extend_from_slice(&sig.to_bytes());
        format!("{body}\n{DASH}{} {}\n", self.name, B64.encode(b))
    }
}

/// A public key that verifies notes.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct VerifierKey {
    pub name: String,
    pub id: [u8; 4],
    pub key: VerifyingKey,
}

impl std::fmt::Display for VerifierKey {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        let mut b = vec![ALG_ED25519];
        b.extend_from_slice(&self.key.to_bytes());
        write!(
            f,
            "{}+{}+{}",
            self.name,
            moat_core::hex(&self.id),
            B64.encode(b)
        )
    }
}

impl std::str::FromStr for VerifierKey {
    type Err = String;
    fn from_str(s: &str) -> Result<Self, String> {
        let s = s.trim();
        // Names never contain '+', base64 may: split from the left.
        let mut parts = s.splitn(3, '+');
        let (name, idhex, b64) = match (parts.next(), parts.next(), parts.next()) {
            (Some(n), Some(i), Some(b)) => (n, i, b),
            _ => return Err("a verifier key looks like NAME+KEYID+BASE64".into()),
        };
        if !valid_key_name(name) {
            return Err(format!("{name:?} is not a valid key name"));
        }
        let raw = B64
            .decode(b64)
            .map_err(|_| "the verifier key's last part is not base64")?;
        if raw.len() != 33 || raw[0] != ALG_ED25519 {
            return Err("the verifier key is not an Ed25519 key".into());
        }
        let pk: [u8; 32] = raw[1..].try_into().expect("length checked");
        let key =
            VerifyingKey::from_bytes(&pk).map_err(|_| "the verifier key is not a valid point")?;
        let id = key_id(name, &pk);
        if moat_core::hex(&id) != idhex.to_ascii_lowercase() {
            return Err("the verifier key's id does not match its key".into());
        }
        Ok(VerifierKey {
            name: name.to_string(),
            id,
            key,
        })
    }
}

#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Checkpoint {
    pub origin: String,
    pub size: u64,
    pub root: Hash,
}

impl Checkpoint {
    pub fn body(&self) -> String {
        format!(
            "{}\n{}\n{}\n",
            self.origin,
            self.size,
            B64.encode(self.root)
        )
    }
}

#[derive(Clone, Debug, PartialEq, Eq)]
pub enum NoteError {
    /// Not a well-formed signed note or checkpoint.
    Malformed(String),
    /// No signature line from the pinned key (it may be signed by another key).
    UnknownKey(Vec<String>),
    /// A signature line claims the pinned key but does not verify.
    BadSignature,
}

impl std::fmt::Display for NoteError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            NoteError::Malformed(m) => write!(f, "malformed checkpoint: {m}"),
            NoteError::UnknownKey(names) if names.is_empty() => {
                write!(f, "no signature by the pinned key")
            }
            NoteError::UnknownKey(names) => write!(
                f,
                "no signature by the pinned key (signed by {})",
                names.join(", ")
            ),
            NoteError::BadSignature => {
                write!(f, "the signature by the pinned key does not verify")
            }
        }
    }
}

fn malformed(m: &str) -> NoteError {
    NoteError::Malformed(m.into())
}

/// Split a signed note into its body (with final newline) and signature lines.
pub fn split_note(text: &str) -> Result<(&str, Vec<&str>), NoteError> {
    if text.len() > 1 << 16 {
        return Err(malformed("note too large"));
    }
    if text.chars().any(|c| c.is_control() && c != '\n') {
        return Err(malformed("control characters in the note"));
    }
    let i = text
        .find("\n\n")
        .ok_or_else(|| malformed("no signature block"))?;
    let body = &text[..i + 1];
    let sigs = &text[i + 2..];
    if !sigs.ends_with('\n') {
        return Err(malformed("signature block does not end in a newline"));
    }
    let lines: Vec<&str> = sigs[..sigs.len() - 1].split('\n').collect();
    if lines.is_empty() || lines.iter().any(|l| !l.starts_with(DASH)) {
        return Err(malformed("bad signature line"));
    }
    Ok((body, lines))
}

/// Parse a checkpoint body.
pub fn parse_checkpoint(body: &str) -> Result<Checkpoint, NoteError> {
    let mut lines = body.split_terminator('\n');
    let origin = lines.next().unwrap_or("");
    let size = lines.next().unwrap_or("");
    let root = lines.next().unwrap_or("");
    if origin.is_empty() {
        return Err(malformed("empty origin"));
    }
    if size.is_empty()
        || !size.bytes().all(|b| b.is_ascii_digit())
        || (size.len() > 1 && size.starts_with('0'))
    {
        return Err(malformed("bad tree size"));
    }
    let size: u64 = size.parse().map_err(|_| malformed("bad tree size"))?;
    let root: Hash = B64
        .decode(root)
        .ok()
        .and_then(|r| r.try_into().ok())
        .ok_or_else(|| malformed("bad root hash"))?;
    if lines.any(str::is_empty) {
        return Err(malformed("empty extension line"));
    }
    Ok(Checkpoint {
        origin: origin.to_string(),
        size,
        root,
    })
}

/// Open a signed checkpoint with the one trusted key.
pub fn open_checkpoint(text: &str, key: &VerifierKey) -> Result<Checkpoint, NoteError> {
    let (body, sigs) = split_note(text)?;
    let cp = parse_checkpoint(body)?;
    let mut others = Vec::new();
    let mut claimed = false;
    for line in sigs {
        let rest = &line[DASH.len()..];
        let (name, b64) = rest
            .split_once(' ')
            .ok_or_else(|| malformed("bad signature line"))?;
        let raw = B64
            .decode(b64)
            .map_err(|_| malformed("signature is not base64"))?;
        if raw.len() < 4 {
            return Err(malformed("signature too short"));
        }
        if name != key.name || raw[..4] != key.id {
            others.push(format!("{name}+{}", moat_core::hex(&raw[..4])));
            continue;
        }
        claimed = true;
        let Ok(sig) = <[u8; 64]>::try_from(&raw[4..]) else {
            continue;
        };
        if key
            .key
            .verify_strict(body.as_bytes(), &Signature::from_bytes(&sig))
            .is_ok()
        {
            return Ok(cp);
        }
    }
    if claimed {
        Err(NoteError::BadSignature)
    } else {
        Err(NoteError::UnknownKey(others))
    }
}

/// Split the `checkpoints` file into its notes. A file ends with a complete note followed by
/// a blank line; a torn last note (a crash mid-write) is returned separately as the byte
/// offset where it starts, so callers can ignore or cut it.
pub fn split_checkpoints_file(data: &str) -> (Vec<&str>, Option<usize>) {
    let mut notes = Vec::new();
    let mut pos = 0;
    while pos < data.len() {
        let rest = &data[pos..];
        // body ends at the first blank line, the signature block at the next one.
        let Some(b) = rest.find("\n\n") else {
            return (notes, Some(pos));
        };
        let Some(s) = rest[b + 2..].find("\n\n") else {
            return (notes, Some(pos));
        };
        let end = b + 2 + s + 1;
        notes.push(&rest[..end]);
        pos += end + 1;
    }
    (notes, None)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn sign_open_and_refuse() {
        let s = NoteSigner::new("moat-audit", [7u8; 32]);
        let v = s.verifier();
        let cp = Checkpoint {
            origin: "moat-audit/run_x".into(),
            size: 3,
            root: [9u8; 32],
        };
        let note = s.sign(&cp.body());
        assert_eq!(open_checkpoint(&note, &v).unwrap(), cp);
        let vs = v.to_string();
        assert_eq!(vs.parse::<VerifierKey>().unwrap(), v);
        let back = NoteSigner::from_private_string(&s.to_private_string()).unwrap();
        assert_eq!(back.verifier(), v);

        let forged = note.replacen("\n3\n", "\n4\n", 1);
        assert_eq!(open_checkpoint(&forged, &v), Err(NoteError::BadSignature));
        let other = NoteSigner::new("moat-audit", [8u8; 32]);
        let note2 = other.sign(&cp.body());
        assert!(matches!(
            open_checkpoint(&note2, &v),
            Err(NoteError::UnknownKey(_))
        ));
        assert!(matches!(
            open_checkpoint("x\n", &v),
            Err(NoteError::Malformed(_))
        ));
    }

    #[test]
    fn keys_round_trip_whatever_their_base64() {
        for i in 0..200u8 {
            let s = NoteSigner::new("moat-audit", [i; 32]);
            let v = s.verifier();
            assert_eq!(v.to_string().parse::<VerifierKey>().unwrap(), v);
            let back = NoteSigner::from_private_string(&s.to_private_string()).unwrap();
            assert_eq!(back.verifier(), v);
        }
        assert!("moat-audit+00000000+AAAA".parse::<VerifierKey>().is_err());
        assert!("no-plus".parse::<VerifierKey>().is_err());
    }

    #[test]
    fn checkpoint_file_splits_and_finds_a_torn_tail() {
        let s = NoteSigner::new("k", [1u8; 32]);
        let a = s.sign("o\n1\nAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAA=\n");
        let mut file = format!("{a}\n{a}\n");
        let (notes, torn) = split_checkpoints_file(&file);
        assert_eq!(notes, vec![a.as_str(), a.as_str()]);
        assert_eq!(torn, None);
        let full = file.len();
        file.push_str(&a[..10]);
        let (notes, torn) = split_checkpoints_file(&file);
        assert_eq!(notes.len(), 2);
        assert_eq!(torn, Some(full));
    }
}
