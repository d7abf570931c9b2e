//! The store's 32-byte key: in the OS keyring (service `moat`, account `encryption-key`) or,
//! where no keyring answers, in `MOAT_HOME/encryption.key` (0600, base64). The choice is made
//! once, when the key is created, and recorded by where the key is: an existing key file is
//! always used, so a keyring that later goes away never leads to a second key.
//! A key is never made while credentials exist: they would become unreadable.

use base64::Engine;
use base64::engine::general_purpose::STANDARD as B64;
use moat_core::lock::FileLock;
use moat_core::{Error, MoatHome, Result, fsutil};
use sha2::{Digest, Sha256};
use std::fmt;
use std::path::Path;

pub const KEYRING_SERVICE: &str = "moat";
pub const KEYRING_ACCOUNT: &str = "encryption-key";

pub struct Key([u8; 32]);

impl Key {
    pub fn bytes(&self) -> &[u8; 32] {
        &self.0
    }
    /// A short public identifier of the key (not the key): lets a reader tell "made with a
    /// different key" from "damaged" without trying to decrypt.
    pub fn id(&self) -> [u8; 8] {
        let mut h = Sha256::new();
        h.update(b"moat-grant key id\0");
        h.update(self.0);
        let d = h.finalize();
        let mut id = [0u8; 8];
        id.copy_from_slice(&d[..8]);
        id
    }
}

impl fmt::Debug for Key {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "Key(id {})", moat_core::hex(&self.id()))
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Mode {
    /// Keyring first, the file where no keyring answers.
    Auto,
    /// `MOAT_KEYRING=file`: never touch the keyring.
    File,
    /// `MOAT_KEYRING=keyring`: the keyring or an error, never the file.
    Keyring,
}

fn mode() -> Result<Mode> {
    match std::env::var("MOAT_KEYRING").unwrap_or_default().as_str() {
        "" | "auto" => Ok(Mode::Auto),
        "file" => Ok(Mode::File),
        "keyring" => Ok(Mode::Keyring),
        other => Err(Error::config(format!(
            "MOAT_KEYRING={other:?} is not one of auto, file, keyring"
        ))),
    }
}

/// The key, if one exists. `credentials` names what is stored, for the error when the key
/// is missing. With `create`, a key is made when none exists and nothing is stored yet.
pub fn obtain(home: &MoatHome, credentials: &[String], create: bool) -> Result<Option<Key>> {
    let mode = mode()?;
    let root = home.root();
    fsutil::create_private_dir(root)?;
    let _lock = FileLock::exclusive(&root.join("key.lock"))?;
    let file = home.encryption_key_file();
    if std::fs::symlink_metadata(&file).is_ok() {
        return read_key_file(&file).map(Some);
    }
    let mut keyring_err = None;
    if mode != Mode::File {
        match keyring_get() {
            Ok(Some(k)) => return Ok(Some(k)),
            Ok(None) => {}
            Err(e) => keyring_err = Some(e),
        }
    }
    if !credentials.is_empty() {
        let mut where_ = format!("{} does not exist", file.display());
        let mut what = "is missing";
        match (&keyring_err, mode) {
            (_, Mode::File) => {}
            (Some(e), _) => {
                what = "could not be read";
                where_ = format!("the keyring failed ({e}) and {where_}");
            }
            (None, _) => where_ = format!("the keyring has no moat key and {where_}"),
        }
        return Err(Error::config(format!(
            "the encryption key {what}: {where_}; {} credential(s) can't be read: {}",
            credentials.len(),
            credentials.join(", ")
        ))
        .with_hint(format!(
            "if the key is gone for good, run `moat-grant revoke {}` and grant them again",
            credentials.join(" ")
        )));
    }
    if !create {
        return Ok(None);
    }
    let key = Key(moat_core::random_bytes::<32>());
    if mode != Mode::File && keyring_err.is_none() {
        match keyring_set(&key) {
            Ok(()) => return Ok(Some(key)),
            Err(e) => keyring_err = Some(e),
        }
    }
    if mode == Mode::Keyring {
        return Err(Error::unavailable(format!(
            "MOAT_KEYRING=keyring but the keyring failed: {}",
            keyring_err.unwrap_or_default()
        )));
    }
    let mut text = B64.encode(key.bytes());
    text.push('\n');
    fsutil::write_secret(&file, text.as_bytes())?;
    let why = match keyring_err {
        Some(e) => format!("no OS keyring answered ({e})"),
        None => "MOAT_KEYRING=file".to_string(),
    };
    eprintln!(
        "moat-grant: note: {why}; the encryption key is kept in {} (mode 0600)",
        file.display()
    );
    Ok(Some(key))
}

fn read_key_file(path: &Path) -> Result<Key> {
    let data = fsutil::read_secret(path)?;
    let text = String::from_utf8(data)
        .map_err(|_| Error::data(format!("{} is not a moat key file", path.display())))?;
    let bytes = B64
        .decode(text.trim())
        .ok()
        .filter(|b| b.len() == 32)
        .ok_or_else(|| {
            Error::data(format!(
                "{} is not a moat key file (want 32 bytes in base64)",
                path.display()
            ))
        })?;
    let mut k = [0u8; 32];
    k.copy_from_slice(&bytes);
    Ok(Key(k))
}

/// A keyring error as one short line, never carrying secret bytes (keyring's
/// `BadEncoding`/`BadDataFormat` hold the raw value; we only print their kind).
fn keyring_msg(e: &keyring::Error) -> String {
    use keyring::Error as E;
    match e {
        E::BadEncoding(_) | E::BadDataFormat(..) => "the stored key is malformed".into(),
        E::Ambiguous(v) => format!("{} keyring entries match", v.len()),
        other => {
            let s = other.to_string();
            let s = s.lines().next().unwrap_or("").to_string();
            let mut c = s.chars();
            match c.next() {
                Some(f) => f.to_lowercase().collect::<String>() + c.as_str(),
                None => s,
            }
        }
    }
}

fn entry() -> std::result::Result<keyring::Entry, String> {
    // Why the platform store failed to start says more than "no default store".
    if let Err(e) = keyring::Entry::store_status() {
        return Err(keyring_msg(e));
    }
    keyring::Entry::new(KEYRING_SERVICE, KEYRING_ACCOUNT).map_err(|e| keyring_msg(&e))
}

/// How long a keyring call may take. A locked Secret Service with no one to show its
/// unlock prompt (a headless machine) never answers; moat-grant must not hang with it.
const KEYRING_TIMEOUT: std::time::Duration = std::time::Duration::from_secs(10);

/// Run a keyring call on its own thread and give up after [`KEYRING_TIMEOUT`]. A call that
/// is given up on is left behind; the process ends soon after.
fn bounded<T: Send + 'static>(
    f: impl FnOnce() -> std::result::Result<T, String> + Send + 'static,
) -> std::result::Result<T, String> {
    let (tx, rx) = std::sync::mpsc::channel();
    std::thread::spawn(move || {
        let _ = tx.send(f());
    });
    rx.recv_timeout(KEYRING_TIMEOUT).unwrap_or_else(|_| {
        Err(format!(
            "the keyring did not answer within {} s (is it locked?)",
            KEYRING_TIMEOUT.as_secs()
        ))
    })
}

fn keyring_get() -> std::result::Result<Option<Key>, String> {
    bounded(keyring_get_now)
}

fn keyring_set(key: &Key) -> std::result::Result<(), String> {
    let bytes = *key.bytes();
    bounded(move || keyring_set_now(&Key(bytes)))
}

fn keyring_get_now() -> std::result::Result<Option<Key>, String> {
    let e = entry()?;
    match e.get_secret() {
        Ok(b) if b.len() == 32 => {
            let mut k = [0u8; 32];
            k.copy_from_slice(&b);
            Ok(Some(Key(k)))
        }
        // The Go moat keeps the same entry as base64 text (REFERENCE §3.2): the same key.
        Ok(b) => from_base64_text(&b).map(Some).ok_or_else(|| {
            format!(
                "the keyring's moat key has {} bytes, not 32 (nor 32 in base64)",
                b.len()
            )
        }),
        Err(keyring::Error::NoEntry) => Ok(None),
        Err(e) => Err(keyring_msg(&e)),
    }
}

/// 32 bytes written as base64 text, as the Go moat stores its key in the keyring.
fn from_base64_text(b: &[u8]) -> Option<Key> {
    let text = std::str::from_utf8(b).ok()?;
    let bytes = B64.decode(text.trim()).ok().filter(|d| d.len() == 32)?;
    let mut k = [0u8; 32];
    k.copy_from_slice(&bytes);
    Some(Key(k))
}

/// Store the key and read it back: a keyring that accepts a write but returns something
/// else must not become the key's home.
fn keyring_set_now(key: &Key) -> std::result::Result<(), String> {
    let e = entry()?;
    e.set_secret(key.bytes()).map_err(|e| keyring_msg(&e))?;
    match keyring_get_now()? {
        Some(k) if k.bytes() == key.bytes() => Ok(()),
        _ => Err("the keyring did not return the key just stored".into()),
    }
}

#[cfg(test)]
pub fn tests_key(b: u8) -> Key {
    Key([b; 32])
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn key_ids_differ_and_debug_hides_the_key() {
        let a = Key([1; 32]);
        let b = Key([2; 32]);
        assert_ne!(a.id(), b.id());
        let d = format!("{a:?}");
        assert!(d.starts_with("Key(id ") && !d.contains("0101010101"), "{d}");
    }

    #[test]
    fn key_files_are_checked() {
        let d = tempfile::tempdir().unwrap();
        let p = d.path().join("encryption.key");
        fsutil::write_secret(&p, b"bm90IGEga2V5\n").unwrap();
        assert!(
            read_key_file(&p)
                .unwrap_err()
                .msg
                .contains("not a moat key")
        );
        let good = B64.encode([7u8; 32]);
        fsutil::write_secret(&p, good.as_bytes()).unwrap();
        assert_eq!(read_key_file(&p).unwrap().bytes(), &[7u8; 32]);
        // The Go moat's rule too: a key file others may read is refused, not used.
        use std::os::unix::fs::PermissionsExt;
        std::fs::set_permissions(&p, std::fs::Permissions::from_mode(0o644)).unwrap();
        assert!(read_key_file(&p).is_err());
        std::fs::set_permissions(&p, std::fs::Permissions::from_mode(0o640)).unwrap();
        assert!(read_key_file(&p).is_err());
    }

    #[test]
    fn a_keyring_value_in_base64_is_the_go_moats_key() {
        let text = format!("{}\n", B64.encode([9u8; 32]));
        assert_eq!(
            from_base64_text(text.as_bytes()).unwrap().bytes(),
            &[9u8; 32]
        );
        assert!(from_base64_text(B64.encode([9u8; 31]).as_bytes()).is_none());
        assert!(from_base64_text(&[0xff; 44]).is_none());
    }
}
