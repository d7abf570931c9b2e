//! The credential store: one file per credential, `credentials/<name>.enc`.
//!
//! File layout (format 1): `version (1 byte) ‖ key id (8) ‖ nonce (12) ‖ AES-256-GCM
//! ciphertext ‖ tag (16)`. The associated data binds the format, the key id and the
//! credential's name, so a file renamed to another credential's name, a changed header or
//! a single flipped bit fails authentication. Every write gets a fresh random nonce and
//! replaces the file atomically while holding `credentials/.lock`.

use crate::gomoat::{self, Unusable};
use crate::key::Key;
use aes_gcm::aead::{Aead, KeyInit, Payload};
use aes_gcm::{Aes256Gcm, Nonce};
use moat_core::lock::FileLock;
use moat_core::{Error, MoatHome, Result, fsutil, home};
use serde::{Deserialize, Serialize};
use serde_json::{Map, Value};
use std::fmt;
use std::path::PathBuf;

pub const FORMAT: u8 = 1;
const HEADER: usize = 1 + 8 + 12;
const TAG: usize = 16;

/// The plaintext of a credential file. `secret` holds the values moat injects and is
/// never printed except by `rules`; `config` holds provider settings that are not secret
/// (hosts, header names, fingerprints, role ARNs) and is shown by `list --json`.
#[derive(Clone, Serialize, Deserialize)]
pub struct Credential {
    pub format: u32,
    pub name: String,
    pub provider: String,
    /// What the secret is: token, api_key, oauth, chatgpt, registries, agent_key, role, header.
    pub kind: String,
    /// Where it came from: env:VAR, gh, file:PATH, npmrc, agent, stdin, prompt, flags.
    pub source: String,
    pub created_at: String,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub expires_at: Option<String>,
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub scopes: Vec<String>,
    #[serde(default)]
    pub secret: Map<String, Value>,
    #[serde(default)]
    pub config: Map<String, Value>,
}

impl fmt::Debug for Credential {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Credential")
            .field("name", &self.name)
            .field("provider", &self.provider)
            .field("kind", &self.kind)
            .field("secret", &"<redacted>")
            .finish_non_exhaustive()
    }
}

impl Credential {
    pub fn new(provider: &str, kind: &str, source: impl Into<String>) -> Self {
        Credential {
            format: u32::from(FORMAT),
            name: provider.to_string(),
            provider: provider.to_string(),
            kind: kind.to_string(),
            source: source.into(),
            created_at: moat_core::timefmt::now_rfc3339(),
            expires_at: None,
            scopes: Vec::new(),
            secret: Map::new(),
            config: Map::new(),
        }
    }
    pub fn secret_str(&self, k: &str) -> Option<&str> {
        self.secret
            .get(k)
            .and_then(Value::as_str)
            .filter(|s| !s.is_empty())
    }
    pub fn config_str(&self, k: &str) -> Option<&str> {
        self.config
            .get(k)
            .and_then(Value::as_str)
            .filter(|s| !s.is_empty())
    }
    /// A required secret field; its absence is damage, named without the value.
    pub fn need_secret(&self, k: &str) -> Result<&str> {
        self.secret_str(k).ok_or_else(|| {
            Error::data(format!(
                "credential {}: the stored {} has no {k}",
                self.name, self.provider
            ))
        })
    }
    pub fn need_config(&self, k: &str) -> Result<&str> {
        self.config_str(k).ok_or_else(|| {
            Error::data(format!(
                "credential {}: the stored {} has no {k}",
                self.name, self.provider
            ))
        })
    }
}

/// A credential file, by whose it is.
pub enum Loaded {
    Ours(Credential),
    /// The Go moat's, mapped onto ours in memory.
    Go(Credential),
    /// The Go moat's (or not ours and not readable), with the command that re-grants it.
    GoUnusable(Unusable),
}

/// Our format: the version byte, and (given the key) the key's id. Anything else in
/// `credentials/` is treated as the Go moat's and is never replaced without a copy.
pub fn is_ours(data: &[u8], key: Option<&Key>) -> bool {
    data.len() >= HEADER + TAG && data[0] == FORMAT && key.is_none_or(|k| data[1..9] == k.id())
}

pub struct Store {
    home: MoatHome,
}

impl Store {
    pub fn new(home: MoatHome) -> Self {
        Store { home }
    }
    pub fn home(&self) -> &MoatHome {
        &self.home
    }
    pub fn path(&self, name: &str) -> PathBuf {
        self.home.credential_file(name)
    }
    fn lock(&self) -> Result<FileLock> {
        let dir = self.home.credentials_dir();
        fsutil::create_private_dir(&dir)?;
        FileLock::exclusive(&dir.join(".lock"))
    }

    /// The names of stored credentials, sorted. Temporary files of interrupted writes
    /// (`.NAME.enc.XXXX.tmp`) are not credentials.
    pub fn names(&self) -> Result<Vec<String>> {
        let dir = self.home.credentials_dir();
        let rd = match std::fs::read_dir(&dir) {
            Ok(rd) => rd,
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(Vec::new()),
            Err(e) => return Err(Error::io(format!("reading {}", dir.display()), e)),
        };
        let mut names = Vec::new();
        for ent in rd {
            let ent = ent.map_err(|e| Error::io(format!("reading {}", dir.display()), e))?;
            let f = ent.file_name();
            let Some(f) = f.to_str() else { continue };
            if f.starts_with('.') {
                continue;
            }
            if let Some(stem) = f.strip_suffix(".enc")
                && let Some(n) = home::decode_name(stem)
            {
                names.push(n);
            }
        }
        names.sort();
        Ok(names)
    }

    pub fn exists(&self, name: &str) -> bool {
        std::fs::symlink_metadata(self.path(name)).is_ok()
    }

    /// Read and decrypt one credential: ours, or the Go moat's mapped onto ours. A Go file
    /// moat cannot use is an error that names the command that grants it again.
    pub fn load(&self, name: &str, key: &Key) -> Result<Credential> {
        match self.load_any(name, key)? {
            Loaded::Ours(c) | Loaded::Go(c) => Ok(c),
            Loaded::GoUnusable(u) => Err(Error::config(format!(
                "credential {name}: {} is the Go moat's and moat cannot use it: {}",
                self.home.root().join(&u.file).display(),
                u.why
            ))
            .with_hint(format!(
                "grant it again with `{}` (the Go moat's file is kept)",
                u.regrant
            ))),
        }
    }

    /// Read one credential file and say whose it is. Never writes.
    pub fn load_any(&self, name: &str, key: &Key) -> Result<Loaded> {
        let path = self.path(name);
        let data = match fsutil::read_secret(&path) {
            Ok(d) => d,
            Err(e) if e.code == moat_core::exit::NOINPUT => {
                return Err(Error::noinput(format!("no credential named {name:?}"))
                    .with_hint("see `moat-grant list` for what is stored"));
            }
            Err(e) => return Err(e.context(format!("credential {name}"))),
        };
        let ours_err =
            |m: String| Error::data(format!("credential {name}: {}: {m}", path.display()));
        if is_ours(&data, Some(key)) {
            return open(name, key, &data).map(Loaded::Ours).map_err(ours_err);
        }
        let file = format!(
            "credentials/{}",
            path.file_name().unwrap_or_default().to_string_lossy()
        );
        let unusable = |why: String| Unusable {
            name: name.to_string(),
            file: file.clone(),
            why,
            regrant: gomoat::regrant_command(name),
        };
        if let Some(pt) = gomoat::decrypt(key, &data) {
            return Ok(match gomoat::map(name, &pt) {
                Ok(c) => Loaded::Go(c),
                Err(why) => Loaded::GoUnusable(unusable(why)),
            });
        }
        // Neither ours nor the Go moat's under this key: ours damaged (or under another
        // key), or the Go moat's under another key. Unreadable either way.
        let msg = open(name, key, &data).err().unwrap_or_default();
        if data.first().is_none_or(|b| *b == FORMAT) {
            return Err(ours_err(msg));
        }
        Err(ours_err(format!(
            "{msg}, nor does it decrypt as a Go moat credential with the current key \
             (if the Go moat wrote it with another key, grant it again with `{}`; its file is kept)",
            gomoat::regrant_command(name)
        )))
    }

    /// Before `path` is replaced or removed: if it is not ours (the Go moat's), keep a
    /// byte-for-byte copy under `go-moat/credentials/`. An error means: do not write.
    fn keep_go_file(&self, name: &str, key: Option<&Key>) -> Result<()> {
        let path = self.path(name);
        let data = match std::fs::symlink_metadata(&path) {
            Ok(m) if m.is_file() => std::fs::read(&path)
                .map_err(|e| Error::io(format!("reading {}", path.display()), e))?,
            _ => return Ok(()),
        };
        if is_ours(&data, key) {
            return Ok(());
        }
        let dst = gomoat::preserve(&self.home, &path, &data).map_err(|e| {
            e.context(format!(
                "not replacing {}: it is not a moat credential (the Go moat's?) and no copy could be kept",
                path.display()
            ))
        })?;
        eprintln!(
            "moat-grant: {} was not written by moat (the Go moat's file?); the original is kept at {}",
            path.display(),
            dst.display()
        );
        Ok(())
    }

    /// Encrypt and write one credential (replacing any with the same name).
    pub fn save(&self, cred: &Credential, key: &Key) -> Result<()> {
        let sealed = seal(&cred.name, key, &serde_json::to_vec(cred)?)?;
        let _lock = self.lock()?;
        self.keep_go_file(&cred.name, Some(key))?;
        self.remove_stale_temps();
        fsutil::write_secret(&self.path(&cred.name), &sealed)
    }

    /// Read, change and write back one credential while holding the store lock, so two
    /// updaters (two token refreshes) never lose each other's write.
    pub fn update(
        &self,
        name: &str,
        key: &Key,
        change: impl FnOnce(&mut Credential) -> Result<()>,
    ) -> Result<Credential> {
        let _lock = self.lock()?;
        let mut cred = self.load(name, key)?;
        change(&mut cred)?;
        let sealed = seal(&cred.name, key, &serde_json::to_vec(&cred)?)?;
        self.keep_go_file(name, Some(key))?;
        self.remove_stale_temps();
        fsutil::write_secret(&self.path(name), &sealed)?;
        Ok(cred)
    }

    /// Remove one credential. Works without a key, so a damaged file can always be removed;
    /// with one, a file that is ours is told apart from the Go moat's more surely.
    pub fn remove(&self, name: &str, key: Option<&Key>) -> Result<()> {
        let _lock = self.lock()?;
        let path = self.path(name);
        self.keep_go_file(name, key)?;
        match std::fs::remove_file(&path) {
            Ok(()) => Ok(()),
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => {
                Err(Error::noinput(format!("no credential named {name:?}"))
                    .with_hint("see `moat-grant list` for what is stored"))
            }
            Err(e) => Err(Error::io(format!("removing {}", path.display()), e)),
        }
    }

    /// Under the store lock no write is in progress, so any temporary file left in the
    /// directory belongs to a writer that died.
    fn remove_stale_temps(&self) {
        let dir = self.home.credentials_dir();
        if let Ok(rd) = std::fs::read_dir(&dir) {
            for ent in rd.flatten() {
                let f = ent.file_name();
                let f = f.to_string_lossy();
                if f.starts_with('.') && f.ends_with(".tmp") {
                    let _ = std::fs::remove_file(ent.path());
                }
            }
        }
    }
}

fn aad(name: &str, header: &[u8]) -> Vec<u8> {
    let mut a = b"moat-credential\0".to_vec();
    a.extend_from_slice(header);
    a.extend_from_slice(name.as_bytes());
    a
}

/// Encrypt a plaintext for credential `name`.
pub fn seal(name: &str, key: &Key, plaintext: &[u8]) -> Result<Vec<u8>> {
    let nonce: [u8; 12] = moat_core::random_bytes();
    let mut out = Vec::with_capacity(HEADER + plaintext.len() + TAG);
    out.push(FORMAT);
    out.extend_from_slice(&key.id());
    out.extend_from_slice(&nonce);
    let cipher =
        Aes256Gcm::new_from_slice(key.bytes()).map_err(|_| Error::software("bad key length"))?;
    let ct = cipher
        .encrypt(
            &Nonce::from(nonce),
            Payload {
                msg: plaintext,
                aad: &aad(name, &out[..HEADER]),
            },
        )
        .map_err(|_| Error::software("encryption failed"))?;
    out.extend_from_slice(&ct);
    Ok(out)
}

/// Decrypt and parse a credential file's bytes; the error is a short phrase that never
/// quotes the contents.
pub fn open(name: &str, key: &Key, data: &[u8]) -> std::result::Result<Credential, String> {
    if data.is_empty() {
        return Err("the file is empty".into());
    }
    if data[0] != FORMAT {
        return Err(format!(
            "format version {} is not one this moat-grant reads (1)",
            data[0]
        ));
    }
    if data.len() < HEADER + TAG {
        return Err(format!("the file is truncated ({} bytes)", data.len()));
    }
    if data[1..9] != key.id() {
        return Err(
            "it was encrypted with a different key than the current one \
                    (or its header is damaged)"
                .into(),
        );
    }
    let cipher = Aes256Gcm::new_from_slice(key.bytes()).map_err(|_| "bad key length")?;
    let mut nonce = [0u8; 12];
    nonce.copy_from_slice(&data[9..HEADER]);
    let pt = cipher
        .decrypt(
            &Nonce::from(nonce),
            Payload {
                msg: &data[HEADER..],
                aad: &aad(name, &data[..HEADER]),
            },
        )
        .map_err(|_| {
            "it does not decrypt: the file was modified, truncated, or copied from \
             another credential's file"
                .to_string()
        })?;
    let cred: Credential = serde_json::from_slice(&pt).map_err(|e| {
        // serde_json's messages can quote values; say only where and what kind.
        format!(
            "the decrypted contents are not a valid credential ({:?} error at line {} column {})",
            e.classify(),
            e.line(),
            e.column()
        )
        .to_lowercase()
    })?;
    if cred.format != u32::from(FORMAT) {
        return Err(format!("unsupported credential format {}", cred.format));
    }
    if cred.name != name {
        return Err("the credential inside belongs to another name".into());
    }
    if !crate::args::PROVIDERS.contains(&cred.provider.as_str()) {
        return Err("the credential names an unknown provider".into());
    }
    Ok(cred)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn key(b: u8) -> Key {
        crate::key::tests_key(b)
    }

    #[test]
    fn sealed_files_open_only_under_their_own_name_and_key() {
        let mut c = Credential::new("github", "token", "stdin");
        c.secret.insert("token".into(), "ghp_canary".into());
        let data = seal("github", &key(1), &serde_json::to_vec(&c).unwrap()).unwrap();
        assert_eq!(open("github", &key(1), &data).unwrap().name, "github");
        assert!(
            open("npm", &key(1), &data)
                .unwrap_err()
                .contains("does not decrypt")
        );
        assert!(
            open("github", &key(2), &data)
                .unwrap_err()
                .contains("different key")
        );
        for i in 0..data.len() {
            let mut d = data.clone();
            d[i] ^= 0x01;
            assert!(
                open("github", &key(1), &d).is_err(),
                "bit flip at {i} accepted"
            );
        }
        for n in [0, 1, 20, 36, data.len() - 1] {
            assert!(open("github", &key(1), &data[..n]).is_err());
        }
        let again = seal("github", &key(1), &serde_json::to_vec(&c).unwrap()).unwrap();
        assert_ne!(data[9..21], again[9..21], "fresh nonce per write");
    }

    #[test]
    fn garbage_inside_is_named_without_quoting_it() {
        let data = seal("x", &key(1), b"{\"format\": \"SECRETVALUE\"}").unwrap();
        let e = open("x", &key(1), &data).unwrap_err();
        assert!(e.contains("not a valid credential"), "{e}");
        assert!(!e.to_lowercase().contains("secretvalue"), "{e}");
    }

    #[test]
    fn debug_redacts_secrets() {
        let mut c = Credential::new("github", "token", "stdin");
        c.secret.insert("token".into(), "ghp_canary".into());
        assert!(!format!("{c:?}").contains("canary"));
    }
}
