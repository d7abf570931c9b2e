//! `runs/.names`: one line `RUN_ID NAME` per run created, appended by `moat-launch` when it
//! makes the run's directory. Shell completion reads it with one directory listing instead
//! of opening every run's `metadata.json`; the listing decides which runs exist, so lines of
//! removed runs are ignored, and a run missing from the file is read from its metadata.
//! Nothing else trusts the file: it is a cache of names, never of state.

use crate::home::MoatHome;
use std::io::{Read, Write};

pub const FILE: &str = ".names";

/// At most this many bytes of the file are read (about 100,000 runs).
pub const MAX_BYTES: u64 = 8 << 20;

/// Is `id` shaped like a run id (`run_` and 12 lowercase hex digits)?
pub fn is_run_id(id: &str) -> bool {
    id.len() == 16
        && id.starts_with("run_")
        && id[4..]
            .bytes()
            .all(|b| b.is_ascii_digit() || (b'a'..=b'f').contains(&b))
}

/// Is `name` a run name as moat-launch accepts it (1-63 of `A-Za-z0-9-_.`)?
pub fn is_run_name(name: &str) -> bool {
    !name.is_empty()
        && name.len() <= 63
        && name
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || b"-_.".contains(&b))
}

/// Append `id name` (best effort: completion falls back to the metadata).
pub fn record(home: &MoatHome, id: &str, name: &str) {
    if !is_run_id(id) || !is_run_name(name) {
        return;
    }
    use std::os::unix::fs::OpenOptionsExt;
    let path = home.runs_dir().join(FILE);
    let f = std::fs::OpenOptions::new()
        .create(true)
        .append(true)
        .mode(0o600)
        .custom_flags(crate::fsutil::libc_o_nofollow())
        .open(path);
    if let Ok(mut f) = f {
        // One write of a short line: appends from concurrent runs do not interleave.
        let _ = f.write_all(format!("{id} {name}\n").as_bytes());
    }
}

/// The `(id, name)` pairs in the file, in file order, keeping only well-formed lines.
pub fn read(home: &MoatHome) -> Vec<(String, String)> {
    let path = home.runs_dir().join(FILE);
    let mut buf = Vec::new();
    if let Ok(f) = std::fs::File::open(path) {
        let _ = f.take(MAX_BYTES).read_to_end(&mut buf);
    }
    parse(&buf)
}

fn parse(buf: &[u8]) -> Vec<(String, String)> {
    let text = String::from_utf8_lossy(buf);
    text.lines()
        .filter_map(|l| {
            let (id, name) = l.split_once(' ')?;
            (is_run_id(id) && is_run_name(name)).then(|| (id.to_string(), name.to_string()))
        })
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn lines_round_trip_and_junk_is_dropped() {
        let d = tempfile::tempdir().unwrap();
        let h = MoatHome::at(d.path());
        std::fs::create_dir_all(h.runs_dir()).unwrap();
        record(&h, "run_0123456789ab", "alpha");
        record(&h, "run_0123456789ac", "bad name");
        record(&h, "../etc", "x");
        record(&h, "run_ffffffffffff", "beta.2");
        let mut f = std::fs::OpenOptions::new()
            .append(true)
            .open(h.runs_dir().join(FILE))
            .unwrap();
        f.write_all(b"run_aaaaaaaaaaaa $(reboot)\nnonsense\n")
            .unwrap();
        assert_eq!(
            read(&h),
            [
                ("run_0123456789ab".to_string(), "alpha".to_string()),
                ("run_ffffffffffff".to_string(), "beta.2".to_string())
            ]
        );
    }
}
