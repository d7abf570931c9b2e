//! Advisory locks (flock) so concurrent moat processes never interleave writes to one
//! file. The lock is released when the guard drops or the process dies.

use crate::error::{Error, Result};
use std::fs::{File, OpenOptions};
use std::os::unix::fs::OpenOptionsExt;
use std::path::{Path, PathBuf};

#[derive(Debug)]
pub struct FileLock {
    _file: File,
    path: PathBuf,
}

impl FileLock {
    fn open(path: &Path) -> Result<File> {
        OpenOptions::new()
            .read(true)
            .write(true)
            .create(true)
            .truncate(false)
            .mode(0o600)
            .open(path)
            .map_err(|e| Error::io(format!("opening lock {}", path.display()), e))
    }

    /// Wait for an exclusive lock on `path` (created if missing).
    pub fn exclusive(path: &Path) -> Result<Self> {
        let f = Self::open(path)?;
        f.lock()
            .map_err(|e| Error::io(format!("locking {}", path.display()), e))?;
        Ok(FileLock {
            _file: f,
            path: path.to_path_buf(),
        })
    }

    /// Take an exclusive lock only if nobody holds one; `Ok(None)` when it is held.
    pub fn try_exclusive(path: &Path) -> Result<Option<Self>> {
        let f = Self::open(path)?;
        match f.try_lock() {
            Ok(()) => Ok(Some(FileLock {
                _file: f,
                path: path.to_path_buf(),
            })),
            Err(std::fs::TryLockError::WouldBlock) => Ok(None),
            Err(std::fs::TryLockError::Error(e)) => {
                Err(Error::io(format!("locking {}", path.display()), e))
            }
        }
    }

    /// Wait for a shared lock.
    pub fn shared(path: &Path) -> Result<Self> {
        let f = Self::open(path)?;
        f.lock_shared()
            .map_err(|e| Error::io(format!("locking {}", path.display()), e))?;
        Ok(FileLock {
            _file: f,
            path: path.to_path_buf(),
        })
    }

    pub fn path(&self) -> &Path {
        &self.path
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    #[test]
    fn a_held_lock_refuses_a_second_taker() {
        let d = tempfile::tempdir().unwrap();
        let p = d.path().join("l.lock");
        let a = FileLock::try_exclusive(&p).unwrap();
        assert!(a.is_some());
        assert!(FileLock::try_exclusive(&p).unwrap().is_none());
        drop(a);
        assert!(FileLock::try_exclusive(&p).unwrap().is_some());
    }
}
