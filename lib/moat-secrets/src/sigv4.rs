//! AWS Signature Version 4 for headers-signed requests: canonical request, string to sign,
//! derived key, `Authorization`. Checked against AWS's published test suite
//! (tests/sigv4-suite). Paths are normalized and encoded once more (every service but S3 wants
//! that); the secret key never leaves [`signing_key`] and the token travels only in its header.

use crate::creds::Credentials;
use sha2::{Digest, Sha256};
use std::time::SystemTime;
use time::OffsetDateTime;

pub const ALGORITHM: &str = "AWS4-HMAC-SHA256";
pub const UNSIGNED_PAYLOAD: &str = "UNSIGNED-PAYLOAD";

/// What the body contributes to the signature. No `Debug`: a body can carry a secret
/// (`PutParameter`).
#[derive(Clone, Copy)]
pub enum Payload<'a> {
    /// The body's bytes, hashed into the canonical request.
    Bytes(&'a [u8]),
    /// `UNSIGNED-PAYLOAD` (S3-style streaming uploads).
    Unsigned,
}

/// A request as it will go on the wire. `path` and `query` are the raw request-target parts
/// (`query` without `?`); `headers` are every header to sign, `host` included. No `Debug`:
/// the headers may hold a session token.
#[derive(Clone)]
pub struct Request<'a> {
    pub method: &'a str,
    pub path: &'a str,
    pub query: &'a str,
    pub headers: Vec<(String, String)>,
    pub payload: Payload<'a>,
    /// Also send (and sign) `x-amz-content-sha256`, as S3 requires.
    pub content_sha256_header: bool,
}

/// The result of signing: the headers to add to the request (`x-amz-date`, the session
/// token, `authorization`) and the intermediate strings the suite checks. No `Debug`: the
/// canonical request carries the session token.
pub struct Signed {
    pub canonical_request: String,
    pub string_to_sign: String,
    pub signature: String,
    pub authorization: String,
    /// Headers to add, `authorization` last. Names are lowercase.
    pub headers: Vec<(String, String)>,
}

/// `20150830T123600Z`.
pub fn amz_date(t: SystemTime) -> String {
    let d = OffsetDateTime::from(t);
    format!(
        "{:04}{:02}{:02}T{:02}{:02}{:02}Z",
        d.year(),
        d.month() as u8,
        d.day(),
        d.hour(),
        d.minute(),
        d.second()
    )
}

/// Parse `20150830T123600Z`.
pub fn parse_amz_date(s: &str) -> Option<SystemTime> {
    let b = s.as_bytes();
    if b.len() != 16 || b[8] != b'T' || b[15] != b'Z' {
        return None;
    }
    let num = |r: std::ops::Range<usize>| s.get(r)?.parse::<u32>().ok();
    let month = time::Month::try_from(num(4..6)? as u8).ok()?;
    let date = time::Date::from_calendar_date(num(0..4)? as i32, month, num(6..8)? as u8).ok()?;
    let t = time::Time::from_hms(num(9..11)? as u8, num(11..13)? as u8, num(13..15)? as u8).ok()?;
    Some(SystemTime::from(date.with_time(t).assume_utc()))
}

/// Sign `req` for `region`/`service` at `when`.
pub fn sign(
    req: &Request<'_>,
    creds: &Credentials,
    region: &str,
    service: &str,
    when: SystemTime,
) -> Signed {
    let date_time = amz_date(when);
    let date = &date_time[..8];
    let payload_hash = match req.payload {
        Payload::Bytes(b) => hex(&Sha256::digest(b)),
        Payload::Unsigned => UNSIGNED_PAYLOAD.to_string(),
    };

    let has = |name: &str| {
        req.headers
            .iter()
            .any(|(n, _)| n.eq_ignore_ascii_case(name))
    };
    let mut added: Vec<(String, String)> = Vec::new();
    if !has("x-amz-date") {
        added.push(("x-amz-date".into(), date_time.clone()));
    }
    if let Some(token) = creds.session_token()
        && !has("x-amz-security-token")
    {
        added.push(("x-amz-security-token".into(), token.to_string()));
    }
    if req.content_sha256_header && !has("x-amz-content-sha256") {
        added.push(("x-amz-content-sha256".into(), payload_hash.clone()));
    }

    let all: Vec<(&str, &str)> = req
        .headers
        .iter()
        .chain(added.iter())
        .map(|(n, v)| (n.as_str(), v.as_str()))
        .collect();
    let (canonical_headers, signed_headers) = canonical_headers(&all);
    let canonical_request = format!(
        "{}\n{}\n{}\n{}\n{}\n{}",
        req.method,
        canonical_uri(req.path),
        canonical_query(req.query),
        canonical_headers,
        signed_headers,
        payload_hash
    );
    let scope = format!("{date}/{region}/{service}/aws4_request");
    let string_to_sign = format!(
        "{ALGORITHM}\n{date_time}\n{scope}\n{}",
        hex(&Sha256::digest(canonical_request.as_bytes()))
    );
    let key = signing_key(creds.secret_access_key(), date, region, service);
    let signature = hex(&hmac_sha256(&key, string_to_sign.as_bytes()));
    let authorization = format!(
        "{ALGORITHM} Credential={}/{scope}, SignedHeaders={signed_headers}, Signature={signature}",
        creds.access_key_id
    );
    added.push(("authorization".into(), authorization.clone()));
    Signed {
        canonical_request,
        string_to_sign,
        signature,
        authorization,
        headers: added,
    }
}

/// kSigning = HMAC(HMAC(HMAC(HMAC("AWS4" + secret, date), region), service), "aws4_request").
pub fn signing_key(secret: &str, date: &str, region: &str, service: &str) -> [u8; 32] {
    let k = hmac_sha256(format!("AWS4{secret}").as_bytes(), date.as_bytes());
    let k = hmac_sha256(&k, region.as_bytes());
    let k = hmac_sha256(&k, service.as_bytes());
    hmac_sha256(&k, b"aws4_request")
}

/// HMAC-SHA256 (RFC 2104) over sha2.
pub fn hmac_sha256(key: &[u8], msg: &[u8]) -> [u8; 32] {
    const BLOCK: usize = 64;
    let mut k = [0u8; BLOCK];
    if key.len() > BLOCK {
        k[..32].copy_from_slice(&Sha256::digest(key));
    } else {
        k[..key.len()].copy_from_slice(key);
    }
    let mut ipad = [0x36u8; BLOCK];
    let mut opad = [0x5cu8; BLOCK];
    for i in 0..BLOCK {
        ipad[i] ^= k[i];
        opad[i] ^= k[i];
    }
    let inner = Sha256::new()
        .chain_update(ipad)
        .chain_update(msg)
        .finalize();
    let outer = Sha256::new()
        .chain_update(opad)
        .chain_update(inner)
        .finalize();
    let mut out = [0u8; 32];
    out.copy_from_slice(&outer);
    out
}

pub fn hex(bytes: &[u8]) -> String {
    const HEX: &[u8; 16] = b"0123456789abcdef";
    let mut s = String::with_capacity(bytes.len() * 2);
    for b in bytes {
        s.push(HEX[(b >> 4) as usize] as char);
        s.push(HEX[(b & 15) as usize] as char);
    }
    s
}

/// `sha256(body)` in lowercase hex.
pub fn sha256_hex(bytes: &[u8]) -> String {
    hex(&Sha256::digest(bytes))
}

fn is_unreserved(b: u8) -> bool {
    b.is_ascii_alphanumeric() || matches!(b, b'-' | b'_' | b'.' | b'~')
}

/// AWS's URI encoding: everything but the unreserved set as `%XX` (uppercase), `/` kept
/// when `keep_slash`.
pub fn uri_encode(s: &[u8], keep_slash: bool) -> String {
    let mut out = String::with_capacity(s.len());
    for &b in s {
        if is_unreserved(b) || (keep_slash && b == b'/') {
            out.push(b as char);
        } else {
            out.push_str(&format!("%{b:02X}"));
        }
    }
    out
}

fn percent_decode(s: &str) -> Vec<u8> {
    let b = s.as_bytes();
    let mut out = Vec::with_capacity(b.len());
    let mut i = 0;
    while i < b.len() {
        if b[i] == b'%'
            && i + 2 < b.len()
            && let (Some(h), Some(l)) = (hexval(b[i + 1]), hexval(b[i + 2]))
        {
            out.push(h << 4 | l);
            i += 3;
            continue;
        }
        out.push(b[i]);
        i += 1;
    }
    out
}

fn hexval(c: u8) -> Option<u8> {
    match c {
        b'0'..=b'9' => Some(c - b'0'),
        b'a'..=b'f' => Some(c - b'a' + 10),
        b'A'..=b'F' => Some(c - b'A' + 10),
        _ => None,
    }
}

/// The path with dot segments removed and empty segments dropped (RFC 3986 5.2.4 plus
/// slash collapsing), then encoded: the path as written is encoded once more, as every
/// service but S3 expects.
pub fn canonical_uri(path: &str) -> String {
    let mut segs: Vec<&str> = Vec::new();
    for seg in path.split('/') {
        match seg {
            "" | "." => {}
            ".." => {
                segs.pop();
            }
            s => segs.push(s),
        }
    }
    let mut out = String::from("/");
    out.push_str(&segs.join("/"));
    if !segs.is_empty() && (path.ends_with('/') || path.ends_with("/.") || path.ends_with("/..")) {
        out.push('/');
    }
    uri_encode(out.as_bytes(), true)
}

/// Parameters decoded, re-encoded with AWS's rules and sorted by name, then value.
pub fn canonical_query(query: &str) -> String {
    let mut pairs: Vec<(String, String)> = query
        .split('&')
        .filter(|p| !p.is_empty())
        .map(|p| {
            let (k, v) = p.split_once('=').unwrap_or((p, ""));
            (
                uri_encode(&percent_decode(k), false),
                uri_encode(&percent_decode(v), false),
            )
        })
        .collect();
    pairs.sort();
    pairs
        .iter()
        .map(|(k, v)| format!("{k}={v}"))
        .collect::<Vec<_>>()
        .join("&")
}

/// (`name:value\n`…, `name;name…`): names lowercased and sorted, values trimmed with inner
/// runs of white space collapsed, repeated headers joined with `,` in their original order.
pub fn canonical_headers(headers: &[(&str, &str)]) -> (String, String) {
    let mut merged: Vec<(String, String)> = Vec::new();
    for (name, value) in headers {
        let name = name.to_ascii_lowercase();
        let value = value.split_whitespace().collect::<Vec<_>>().join(" ");
        match merged.iter_mut().find(|(n, _)| *n == name) {
            Some((_, v)) => {
                v.push(',');
                v.push_str(&value);
            }
            None => merged.push((name, value)),
        }
    }
    merged.sort_by(|a, b| a.0.cmp(&b.0));
    let canonical = merged.iter().map(|(n, v)| format!("{n}:{v}\n")).collect();
    let signed = merged
        .iter()
        .map(|(n, _)| n.as_str())
        .collect::<Vec<_>>()
        .join(";");
    (canonical, signed)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn hmac_matches_rfc4231_case_2() {
        let mac = hmac_sha256(b"Jefe", b"what do ya want for nothing?");
        assert_eq!(
            hex(&mac),
            "5bdcc146bf60754e6a042426089575c75a003f089d2739839dec58b964ec3843"
        );
    }

    #[test]
    fn hmac_long_key_rfc4231_case_6() {
        let key = [0xaau8; 131];
        let mac = hmac_sha256(
            &key,
            b"Test Using Larger Than Block-Size Key - Hash Key First",
        );
        assert_eq!(
            hex(&mac),
            "60e431591ee0b67f0d8a26aacbf5b77f8e0bc6213728c5140546040f0ee37f54"
        );
    }

    #[test]
    fn amz_dates_round_trip() {
        let t = parse_amz_date("20150830T123600Z").unwrap();
        assert_eq!(amz_date(t), "20150830T123600Z");
        assert!(parse_amz_date("2015-08-30").is_none());
    }

    #[test]
    fn query_decodes_before_encoding() {
        assert_eq!(canonical_query("b=%2f&a=x y&c"), "a=x%20y&b=%2F&c=");
    }
}
