//! Files that survive crashes and keep secrets private: atomic replacement (temp file in the
//! same directory, fsync, rename, fsync of the directory), 0700 directories, and reads of
//! secret files that refuse symlinks and group- or world-readable modes.

use crate::error::{Error, Result};
use std::fs::{self, File, OpenOptions};
use std::io::{Read, Write};
use std::os::unix::fs::{DirBuilderExt, MetadataExt, OpenOptionsExt, PermissionsExt};
use std::path::Path;

/// Create `dir` and its missing parents with mode 0700. An existing directory is left as it is.
pub fn create_private_dir(dir: &Path) -> Result<()> {
    fs::DirBuilder::new()
        .recursive(true)
        .mode(0o700)
        .create(dir)
        .map_err(|e| Error::io(format!("creating {}", dir.display()), e))
}

/// Replace `path` with `data` atomically: readers see the old file or the new one, never a
/// mix, and after a crash the file is one of the two. The new file gets `mode`.
pub fn write_atomic(path: &Path, data: &[u8], mode: u32) -> Result<()> {
    let dir = path
        .parent()
        .ok_or_else(|| Error::software(format!("{} has no parent directory", path.display())))?;
    let name = path.file_name().and_then(|n| n.to_str()).unwrap_or("file");
    let tmp = dir.join(format!(
        ".{name}.{}.tmp",
        crate::hex(&crate::random_bytes::<6>())
    ));
    let res = (|| -> std::io::Result<()> {
        let mut f = OpenOptions::new()
            .write(true)
            .create_new(true)
            .mode(mode)
            .open(&tmp)?;
        // The umask may have narrowed the mode; set it exactly.
        f.set_permissions(fs::Permissions::from_mode(mode))?;
        f.write_all(data)?;
        f.sync_all()?;
        fs::rename(&tmp, path)?;
        File::open(dir)?.sync_all()
    })();
    if let Err(e) = res {
        let _ = fs::remove_file(&tmp);
        return Err(Error::io(format!("writing {}", path.display()), e));
    }
    Ok(())
}

/// Write a secret (0600) atomically.
pub fn write_secret(path: &Path, data: &[u8]) -> Result<()> {
    write_atomic(path, data, 0o600)
}

/// Read a file that holds a secret. Refuses a symlink, anything but a regular file, and a
/// file that group or others can read or write, naming the fix.
pub fn read_secret(path: &Path) -> Result<Vec<u8>> {
    check_secret_file(path)?;
    let mut f = OpenOptions::new()
        .read(true)
        .custom_flags(libc_o_nofollow())
        .open(path)
        .map_err(|e| Error::io(format!("reading {}", path.display()), e))?;
    let mut buf = Vec::new();
    f.read_to_end(&mut buf)
        .map_err(|e| Error::io(format!("reading {}", path.display()), e))?;
    Ok(buf)
}

/// Check the permissions rule of [`read_secret`] without reading.
pub fn check_secret_file(path: &Path) -> Result<()> {
    let md = fs::symlink_metadata(path)
        .map_err(|e| Error::io(format!("reading {}", path.display()), e))?;
    if md.file_type().is_symlink() {
        return Err(Error::noperm(format!(
            "{} is a symlink; refusing to read a secret through it",
            path.display()
        )));
    }
    if !md.file_type().is_file() {
        return Err(Error::noperm(format!(
            "{} is not a regular file",
            path.display()
        )));
    }
    let mode = md.mode() & 0o777;
    if mode & 0o077 != 0 {
        return Err(Error::noperm(format!(
            "{} has mode {mode:04o}, readable by others; run: chmod 600 {}",
            path.display(),
            path.display()
        )));
    }
    Ok(())
}

// O_NOFOLLOW is 0o400000 on Linux (all architectures moat targets except some exotic ones)
// and 0x100 on macOS/BSD. std exposes no constant and we avoid a libc dependency here.
pub(crate) fn libc_o_nofollow() -> i32 {
    if cfg!(any(
        target_os = "macos",
        target_os = "freebsd",
        target_os = "openbsd",
        target_os = "netbsd"
    )) {
        0x100
    } else if cfg!(all(
        target_os = "linux",
        any(target_arch = "aarch64", target_arch = "arm")
    )) {
        0o100000
    } else {
        0o400000
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn atomic_write_replaces_and_sets_mode() {
        let d = tempfile::tempdir().unwrap();
        let p = d.path().join("x.json");
        write_atomic(&p, b"one", 0o644).unwrap();
        write_secret(&p, b"two").unwrap();
        assert_eq!(fs::read(&p).unwrap(), b"two");
        assert_eq!(fs::metadata(&p).unwrap().mode() & 0o777, 0o600);
        let leftovers: Vec<_> = fs::read_dir(d.path()).unwrap().collect();
        assert_eq!(leftovers.len(), 1, "no temp files left behind");
    }

    #[test]
    fn secrets_refuse_loose_modes_and_symlinks() {
        let d = tempfile::tempdir().unwrap();
        let p = d.path().join("k");
        write_secret(&p, b"k").unwrap();
        assert_eq!(read_secret(&p).unwrap(), b"k");
        fs::set_permissions(&p, fs::Permissions::from_mode(0o644)).unwrap();
        let e = read_secret(&p).unwrap_err();
        assert!(e.msg.contains("mode 0644"), "{}", e.msg);
        fs::set_permissions(&p, fs::Permissions::from_mode(0o600)).unwrap();
        let l = d.path().join("link");
        std::os::unix::fs::symlink(&p, &l).unwrap();
        let e = read_secret(&l).unwrap_err();
        assert!(e.msg.contains("symlink"), "{}", e.msg);
    }

    #[test]
    fn private_dirs_are_0700() {
        let d = tempfile::tempdir().unwrap();
        let p = d.path().join("a/b");
        create_private_dir(&p).unwrap();
        assert_eq!(fs::metadata(&p).unwrap().mode() & 0o777, 0o700);
    }
}
