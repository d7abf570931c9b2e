//! What every moat tool shares: where files live (`MOAT_HOME`), how they are written
//! (atomically, with the right permissions, under a lock), the JSON-lines envelope of
//! machine output, exit codes, errors that carry them, and the one host-name canonicalizer.
//!
//! This crate has no async dependencies on purpose: every tool links it.
#![forbid(unsafe_code)]

pub mod cli;
pub mod error;
pub mod exit;
pub mod fsutil;
pub mod home;
pub mod host;
pub mod jsonl;
pub mod lock;
pub mod psl;
pub mod routes;
pub mod rules;
pub mod run_names;
pub mod timefmt;

pub use error::{Error, Result};
pub use home::MoatHome;

/// The version every tool reports with `--version`.
pub const VERSION: &str = env!("CARGO_PKG_VERSION");

/// A fresh run id: `run_` followed by 12 lowercase hex digits from the OS's randomness.
pub fn new_run_id() -> String {
    let mut b = [0u8; 6];
    getrandom::fill(&mut b).expect("the OS random source failed");
    format!("run_{}", hex(&b))
}

/// Lowercase hex of some bytes.
pub fn hex(bytes: &[u8]) -> String {
    const DIGITS: &[u8; 16] = b"0123456789abcdef";
    let mut s = String::with_capacity(bytes.len() * 2);
    for b in bytes {
        s.push(DIGITS[(b >> 4) as usize] as char);
        s.push(DIGITS[(b & 15) as usize] as char);
    }
    s
}

/// Random bytes from the OS, for keys, nonces and tokens.
pub fn random_bytes<const N: usize>() -> [u8; N] {
    let mut b = [0u8; N];
    getrandom::fill(&mut b).expect("the OS random source failed");
    b
}

/// Levenshtein distance, in characters: how far a typo is from a known word (for "did you
/// mean" hints).
pub fn edit_distance(a: &str, b: &str) -> usize {
    let a: Vec<char> = a.chars().collect();
    let b: Vec<char> = b.chars().collect();
    let mut prev: Vec<usize> = (0..=b.len()).collect();
    for i in 1..=a.len() {
        let mut cur = vec![i; b.len() + 1];
        for j in 1..=b.len() {
            let cost = usize::from(a[i - 1] != b[j - 1]);
            cur[j] = (prev[j] + 1).min(cur[j - 1] + 1).min(prev[j - 1] + cost);
        }
        prev = cur;
    }
    prev[b.len()]
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn edit_distance_counts_characters() {
        assert_eq!(edit_distance("kitten", "sitting"), 3);
        assert_eq!(edit_distance("", "abc"), 3);
        assert_eq!(edit_distance("grnat", "grant"), 2);
        assert_eq!(edit_distance("über", "uber"), 1);
    }

    #[test]
    fn run_ids_have_the_documented_shape() {
        let a = new_run_id();
        let b = new_run_id();
        assert_eq!(a.len(), 16);
        assert!(a.starts_with("run_"));
        assert!(
            a[4..]
                .chars()
                .all(|c| c.is_ascii_hexdigit() && !c.is_ascii_uppercase())
        );
        assert_ne!(a, b);
    }

    #[test]
    fn hex_is_lowercase_and_complete() {
        assert_eq!(hex(&[0, 0x0f, 0xa0, 0xff]), "000fa0ff");
    }
}
