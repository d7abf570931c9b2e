//! `MOAT_HOME` (default `~/.moat`) roots every file moat writes. Directories are created
//! 0700; nothing here follows a symlink for a secret.

use crate::error::{Error, Result};
use crate::fsutil;
use std::path::{Path, PathBuf};

#[derive(Debug, Clone)]
pub struct MoatHome {
    root: PathBuf,
}

impl MoatHome {
    /// `MOAT_HOME` if set (must be absolute), else `$HOME/.moat`.
    pub fn from_env() -> Result<Self> {
        if let Some(v) = std::env::var_os("MOAT_HOME").filter(|v| !v.is_empty()) {
            let p = PathBuf::from(v);
            if !p.is_absolute() {
                return Err(Error::config(format!(
                    "MOAT_HOME must be an absolute path, not {}",
                    p.display()
                )));
            }
            return Ok(MoatHome { root: p });
        }
        match std::env::var_os("HOME").filter(|v| !v.is_empty()) {
            Some(h) => Ok(MoatHome {
                root: PathBuf::from(h).join(".moat"),
            }),
            None => Err(Error::config("neither MOAT_HOME nor HOME is set")),
        }
    }

    pub fn at(root: impl Into<PathBuf>) -> Self {
        MoatHome { root: root.into() }
    }

    pub fn root(&self) -> &Path {
        &self.root
    }
    pub fn credentials_dir(&self) -> PathBuf {
        self.root.join("credentials")
    }
    pub fn credential_file(&self, name: &str) -> PathBuf {
        self.credentials_dir()
            .join(format!("{}.enc", encode_name(name)))
    }
    pub fn encryption_key_file(&self) -> PathBuf {
        self.root.join("encryption.key")
    }
    pub fn ca_dir(&self) -> PathBuf {
        self.root.join("proxy").join("ca")
    }
    pub fn runs_dir(&self) -> PathBuf {
        self.root.join("runs")
    }
    pub fn run_dir(&self, run_id: &str) -> PathBuf {
        self.runs_dir().join(run_id)
    }
    pub fn run_audit_dir(&self, run_id: &str) -> PathBuf {
        self.run_dir(run_id).join("audit")
    }
    pub fn audit_dir(&self) -> PathBuf {
        self.root.join("audit")
    }
    pub fn volumes_dir(&self) -> PathBuf {
        self.root.join("volumes")
    }

    /// Create a directory (and parents under the root) with mode 0700.
    pub fn ensure_dir(&self, dir: &Path) -> Result<()> {
        fsutil::create_private_dir(dir)
    }
}

/// Credential names may contain `:` (`ssh:github.com`); file names keep them readable but
/// can't contain `/` or start with `.`. Anything outside `[A-Za-z0-9._:@-]` is %-encoded.
pub fn encode_name(name: &str) -> String {
    let mut s = String::new();
    for (i, b) in name.bytes().enumerate() {
        let ok = b.is_ascii_alphanumeric() || b"_:@-".contains(&b) || (b == b'.' && i > 0);
        if ok {
            s.push(b as char);
        } else {
            s.push_str(&format!("%{b:02X}"));
        }
    }
    s
}

/// The inverse of [`encode_name`]; `None` for a name that is not well-formed.
pub fn decode_name(file_stem: &str) -> Option<String> {
    let bytes = file_stem.as_bytes();
    let mut out = Vec::new();
    let mut i = 0;
    while i < bytes.len() {
        if bytes[i] == b'%' {
            let h = file_stem.get(i + 1..i + 3)?;
            out.push(u8::from_str_radix(h, 16).ok()?);
            i += 3;
        } else {
            out.push(bytes[i]);
            i += 1;
        }
    }
    String::from_utf8(out).ok()
}

#[cfg(test)]
mod tests {
    use super::*;
    #[test]
    fn names_round_trip_and_stay_in_their_directory() {
        for n in [
            "github",
            "ssh:github.com",
            "../etc/passwd",
            ".hidden",
            "a b/c",
            "mcp-ctx7",
        ] {
            let e = encode_name(n);
            assert!(!e.contains('/') && !e.starts_with('.'), "{e}");
            assert_eq!(decode_name(&e).as_deref(), Some(n));
        }
        assert_eq!(encode_name("ssh:github.com"), "ssh:github.com");
    }

    #[test]
    fn layout_is_rooted_at_moat_home() {
        let h = MoatHome::at("/tmp/mh");
        assert_eq!(
            h.credential_file("github"),
            PathBuf::from("/tmp/mh/credentials/github.enc")
        );
        assert_eq!(h.ca_dir(), PathBuf::from("/tmp/mh/proxy/ca"));
        assert_eq!(
            h.run_audit_dir("run_0123456789ab"),
            PathBuf::from("/tmp/mh/runs/run_0123456789ab/audit")
        );
    }
}
