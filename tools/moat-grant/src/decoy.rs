//! Decoy credentials (issue #21): `moat-grant decoy NAME --like KIND` makes a value shaped
//! like a real credential of KIND (prefix, length, alphabet, and the checksum where the
//! format has one), from the OS random source, so it is valid nowhere. The value carries no
//! moat marker (a marker would tell an attacker it is bait); the stored credential says it
//! is a decoy (provider `decoy`, `config.decoy: true`). Decoys are not secret, but are
//! stored like every credential. `--no-store` prints a fresh decoy record for one run and
//! stores nothing (`decoys: auto`).

use crate::store::Credential;
use moat_core::{Error, MoatHome, Result, cli, jsonl};
use serde_json::{Value, json};

pub const PROVIDER: &str = "decoy";
pub const TYPE_DECOY: &str = "decoy";
pub const KINDS: &[&str] = &["github", "anthropic", "openai", "aws", "npm", "http"];

const BASE62: &[u8] = b"0123456789ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz";
const B64URL: &[u8] = b"ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789-_";
const B64: &[u8] = b"ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789+/";
const BASE32: &[u8] = b"ABCDEFGHIJKLMNOPQRSTUVWXYZ234567";

/// `n` characters drawn uniformly from `alphabet` (rejection sampling over OS random bytes).
fn random_from(alphabet: &[u8], n: usize) -> String {
    let limit = 256 - (256 % alphabet.len());
    let mut out = String::with_capacity(n);
    while out.len() < n {
        for b in moat_core::random_bytes::<64>() {
            if (b as usize) < limit && out.len() < n {
                out.push(alphabet[b as usize % alphabet.len()] as char);
            }
        }
    }
    out
}

/// CRC-32 (IEEE 802.3, reflected, polynomial 0xEDB88320), as zlib computes it.
pub fn crc32(data: &[u8]) -> u32 {
    let mut c = !0u32;
    for &b in data {
        c ^= u32::from(b);
        for _ in 0..8 {
            c = if c & 1 != 0 {
                (c >> 1) ^ 0xEDB8_8320
            } else {
                c >> 1
            };
        }
    }
    !c
}

/// `n` in base 62 (digits, then upper, then lower case), left-padded with `0` to 6.
pub fn base62_6(mut n: u32) -> String {
    let mut s = Vec::new();
    while n > 0 {
        s.push(BASE62[(n % 62) as usize]);
        n /= 62;
    }
    while s.len() < 6 {
        s.push(b'0');
    }
    s.reverse();
    String::from_utf8(s).unwrap_or_default()
}

/// GitHub's token layout: a prefix, 30 random base62 characters, and the CRC-32 of those
/// 30 characters in base 62 (6 characters).
fn checksummed(prefix: &str) -> String {
    let body = random_from(BASE62, 30);
    format!("{prefix}{body}{}", base62_6(crc32(body.as_bytes())))
}

/// Does a `ghp_`/`npm_`-style token's checksum hold?
#[cfg(test)]
pub fn checksum_ok(token: &str, prefix: &str) -> bool {
    let Some(rest) = token.strip_prefix(prefix) else {
        return false;
    };
    rest.len() == 36 && {
        let (body, sum) = rest.split_at(30);
        base62_6(crc32(body.as_bytes())) == sum
    }
}

/// The values of one fresh decoy of `kind`: one, or for `aws` the access key id and the
/// secret access key.
pub fn values(kind: &str) -> Result<Vec<String>> {
    Ok(match kind {
        "github" => vec![checksummed("ghp_")],
        // npm's granular tokens: `npm_` and 36 characters; given GitHub's checksum layout.
        "npm" => vec![checksummed("npm_")],
        "anthropic" => vec![format!("sk-ant-api03-{}AA", random_from(B64URL, 93))],
        "openai" => vec![format!(
            "sk-proj-{}T3BlbkFJ{}",
            random_from(B64URL, 64),
            random_from(B64URL, 64)
        )],
        "aws" => vec![
            format!("AKIA{}", random_from(BASE32, 16)),
            random_from(B64, 40),
        ],
        "http" => vec![random_from(BASE62, 48)],
        other => {
            return Err(Error::usage(format!(
                "--like {other:?}: expected one of {}",
                KINDS.join(", ")
            )));
        }
    })
}

/// The stored form: provider `decoy`, kind = what it looks like.
pub fn credential(name: &str, kind: &str) -> Result<Credential> {
    let vals = values(kind)?;
    let mut c = Credential::new(PROVIDER, kind, "generated");
    c.name = name.to_string();
    c.secret.insert("values".into(), json!(vals));
    c.config.insert("decoy".into(), Value::Bool(true));
    c.config.insert("like".into(), kind.into());
    Ok(c)
}

/// The `decoy` record a run's launcher reads (and hands the proxy).
pub fn record(c: &Credential) -> Result<Value> {
    let vals = c
        .secret
        .get("values")
        .and_then(Value::as_array)
        .filter(|a| !a.is_empty() && a.iter().all(Value::is_string))
        .ok_or_else(|| {
            Error::data(format!(
                "credential {}: the stored decoy has no values",
                c.name
            ))
        })?;
    Ok(json!({"name": c.name, "like": c.kind, "values": vals}))
}

fn check_name(name: &str) -> Result<()> {
    let ok = !name.is_empty()
        && name.len() <= 64
        && name
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || b"-_.".contains(&b))
        && !name.starts_with('.');
    if ok {
        Ok(())
    } else {
        Err(Error::usage(format!(
            "decoy name {name:?}: use 1 to 64 letters, digits, '-', '_' or '.'"
        )))
    }
}

/// `moat-grant decoy NAME --like KIND [--no-store]`.
pub fn command(name: &str, kind: &str, no_store: bool) -> Result<()> {
    check_name(name)?;
    let cred = credential(name, kind)?;
    if no_store {
        return cli::write_stdout(jsonl::line(TYPE_DECOY, &record(&cred)?)?.as_bytes());
    }
    let store = crate::store::Store::new(MoatHome::from_env()?);
    if store.exists(name) {
        return Err(Error::new(
            moat_core::exit::CANTCREAT,
            format!("a credential named {name:?} exists already"),
        )
        .with_hint(format!("`moat revoke {name}` first, or pick another name")));
    }
    let names = store.names()?;
    let key = crate::key::obtain(store.home(), &names, true)?
        .ok_or_else(|| Error::software("no key was made"))?;
    store.save(&cred, &key)?;
    eprintln!(
        "moat-grant: stored decoy {name} (looks like {kind}; valid nowhere, give it to a run with --decoy {name})"
    );
    cli::write_stdout(jsonl::line("grant", &crate::list::record(&cred))?.as_bytes())
}

#[cfg(test)]
mod tests {
    use super::*;

    /// GitHub's published example checksum: CRC-32 of "123456789" is 0xCBF43926.
    #[test]
    fn crc32_and_base62_are_the_standard_ones() {
        assert_eq!(crc32(b"123456789"), 0xCBF4_3926);
        assert_eq!(base62_6(0), "000000");
        assert_eq!(base62_6(61), "00000z");
        assert_eq!(base62_6(62), "000010");
        assert_eq!(base62_6(u32::MAX), "4gfFC3");
    }

    /// Each kind has its real format's prefix, length and alphabet; GitHub and npm tokens
    /// carry a checksum that verifies, and a changed character breaks it.
    #[test]
    fn values_have_the_real_formats() {
        let all = |s: &str, f: fn(u8) -> bool| s.bytes().all(f);
        let b62 = |b: u8| b.is_ascii_alphanumeric();
        let b64url = |b: u8| b.is_ascii_alphanumeric() || b == b'-' || b == b'_';
        for _ in 0..50 {
            let g = &values("github").unwrap()[0];
            assert_eq!(g.len(), 40);
            assert!(g.starts_with("ghp_") && all(&g[4..], b62));
            assert!(checksum_ok(g, "ghp_"), "{g}");
            let mut bad = g.clone().into_bytes();
            bad[10] = if bad[10] == b'a' { b'b' } else { b'a' };
            assert!(!checksum_ok(&String::from_utf8(bad).unwrap(), "ghp_"));
            let n = &values("npm").unwrap()[0];
            assert!(n.starts_with("npm_") && n.len() == 40 && checksum_ok(n, "npm_"));
            let a = &values("anthropic").unwrap()[0];
            assert!(a.starts_with("sk-ant-api03-") && a.ends_with("AA") && a.len() == 108);
            assert!(all(&a[13..], b64url));
            let o = &values("openai").unwrap()[0];
            assert!(o.starts_with("sk-proj-") && o.contains("T3BlbkFJ"));
            assert!(all(&o[8..], b64url));
            let w = values("aws").unwrap();
            assert_eq!(w.len(), 2);
            assert!(w[0].starts_with("AKIA") && w[0].len() == 20);
            assert!(all(&w[0][4..], |b| b.is_ascii_uppercase()
                || (b'2'..=b'7').contains(&b)));
            assert_eq!(w[1].len(), 40);
            assert!(all(&w[1], |b| b.is_ascii_alphanumeric()
                || b == b'+'
                || b == b'/'));
            let h = &values("http").unwrap()[0];
            assert!(h.len() == 48 && all(h, b62));
        }
        // Fresh every time, and nothing in a value says moat.
        let (x, y) = (values("github").unwrap(), values("github").unwrap());
        assert_ne!(x, y);
        for k in KINDS {
            for v in values(k).unwrap() {
                assert!(!v.to_lowercase().contains("moat"), "{k}: {v}");
            }
        }
        assert_eq!(values("gitlab").unwrap_err().code, 64);
    }

    #[test]
    fn stored_form_says_decoy() {
        let c = credential("bait", "aws").unwrap();
        assert_eq!(c.provider, "decoy");
        assert_eq!(c.config["decoy"], true);
        let r = record(&c).unwrap();
        assert_eq!(r["values"].as_array().unwrap().len(), 2);
        assert!(check_name("../x").is_err() && check_name("bait-1").is_ok());
    }
}
