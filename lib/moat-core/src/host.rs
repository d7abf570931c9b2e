//! The one host-name canonicalizer. Injection, policy, SNI, certificate checks and dialing
//! all compare hosts in the form produced here, so "GitHub.COM.", "github.com" and the
//! IDNA form of a Unicode name are one host, and ambiguous numeric forms ("127.1",
//! "0x7f.0.0.1") that resolvers read as addresses are refused rather than guessed.

use std::fmt;
use std::net::{Ipv4Addr, Ipv6Addr};

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct HostError(pub String);

impl fmt::Display for HostError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.0)
    }
}
impl std::error::Error for HostError {}

impl From<HostError> for crate::Error {
    fn from(e: HostError) -> Self {
        crate::Error::data(e.0)
    }
}

fn err(msg: impl Into<String>) -> HostError {
    HostError(msg.into())
}

/// Canonical form of a host: lowercase ASCII (IDNA), no trailing dot, IPv4 as a dotted quad,
/// IPv6 without brackets in its compressed form. No port.
pub fn canonical_host(input: &str) -> Result<String, HostError> {
    let h = input.trim();
    if h.is_empty() {
        return Err(err("empty host name"));
    }
    if let Some(inner) = h.strip_prefix('[') {
        let inner = inner
            .strip_suffix(']')
            .ok_or_else(|| err(format!("bad IPv6 literal {h:?}")))?;
        let ip: Ipv6Addr = inner
            .parse()
            .map_err(|_| err(format!("bad IPv6 literal {h:?}")))?;
        return Ok(ip.to_string());
    }
    if h.contains(':') {
        let ip: Ipv6Addr = h.parse().map_err(|_| err(format!("bad host name {h:?}")))?;
        return Ok(ip.to_string());
    }
    let h = h.strip_suffix('.').unwrap_or(h);
    if h.is_empty() || h.ends_with('.') {
        return Err(err(format!("bad host name {input:?}")));
    }
    let last = h.rsplit('.').next().unwrap_or(h);
    if !last.is_empty() && (last.bytes().all(|b| b.is_ascii_digit()) || looks_hex_number(last)) {
        // Resolvers take numeric last labels as an address; only a plain dotted quad is accepted.
        let ip: Ipv4Addr = h.parse().map_err(|_| {
            err(format!(
                "ambiguous numeric host {input:?}; write the address as a.b.c.d"
            ))
        })?;
        return Ok(ip.to_string());
    }
    let ascii = if h.is_ascii() {
        h.to_ascii_lowercase()
    } else {
        idna::domain_to_ascii(h)
            .map_err(|_| err(format!("bad international host name {input:?}")))?
    };
    if ascii.len() > 253 {
        return Err(err("host name longer than 253 characters"));
    }
    for label in ascii.split('.') {
        if label.is_empty() || label.len() > 63 {
            return Err(err(format!("bad host name {input:?}")));
        }
        if !label
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || b == b'-' || b == b'_')
        {
            return Err(err(format!("bad character in host name {input:?}")));
        }
        if label.starts_with('-') || label.ends_with('-') {
            return Err(err(format!("bad host name {input:?}")));
        }
    }
    Ok(ascii)
}

fn looks_hex_number(label: &str) -> bool {
    let l = label.to_ascii_lowercase();
    l.strip_prefix("0x")
        .is_some_and(|r| r.bytes().all(|b| b.is_ascii_hexdigit()))
}

/// Split an authority ("host", "host:443", "[::1]:8080") into host and optional port.
pub fn split_host_port(authority: &str) -> Result<(&str, Option<u16>), HostError> {
    let a = authority.trim();
    if let Some(rest) = a.strip_prefix('[') {
        let end = rest
            .find(']')
            .ok_or_else(|| err(format!("bad authority {a:?}")))?;
        let host = &a[..end + 2];
        let after = &rest[end + 1..];
        return match after.strip_prefix(':') {
            Some(p) => Ok((host, Some(parse_port(p)?))),
            None if after.is_empty() => Ok((host, None)),
            None => Err(err(format!("bad authority {a:?}"))),
        };
    }
    match a.rsplit_once(':') {
        Some((h, p)) if !h.contains(':') => Ok((h, Some(parse_port(p)?))),
        Some(_) => Ok((a, None)), // bare IPv6
        None => Ok((a, None)),
    }
}

fn parse_port(p: &str) -> Result<u16, HostError> {
    if p.is_empty() || !p.bytes().all(|b| b.is_ascii_digit()) {
        return Err(err(format!("bad port {p:?}")));
    }
    match p.parse::<u16>() {
        Ok(0) | Err(_) => Err(err(format!("bad port {p:?}"))),
        Ok(n) => Ok(n),
    }
}

/// Canonical host and port of an authority, with `default_port` when none is given.
pub fn canonical_authority(authority: &str, default_port: u16) -> Result<(String, u16), HostError> {
    let (h, p) = split_host_port(authority)?;
    Ok((canonical_host(h)?, p.unwrap_or(default_port)))
}

/// A host pattern as users write it in grants and `network.allow`: an exact host
/// (`api.github.com`), or `*.suffix`, which matches every name under the suffix at any
/// depth but not the suffix itself; either may end in `:port` to match that port only.
/// Each further leading `*.` asks for one more label: `*.*.amazonaws.com` (as the Go
/// moat's documents write it) matches `s3.us-east-1.amazonaws.com` and anything deeper,
/// but not `s3.amazonaws.com`. A `*` anywhere else is refused.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub struct HostPattern {
    /// Canonical host, or for a wildcard the canonical suffix without its `*.` labels.
    host: String,
    /// How many leading `*.` labels: 0 for an exact host.
    stars: u8,
    port: Option<u16>,
}

impl HostPattern {
    pub fn parse(s: &str) -> Result<Self, HostError> {
        let s = s.trim();
        if s == "*" {
            return Err(err("pattern \"*\" would match every host; name the hosts"));
        }
        let (h, port) = split_host_port(s)?;
        let mut stars = 0u8;
        let mut h = h;
        while let Some(rest) = h.strip_prefix("*.") {
            if stars == 8 {
                return Err(err(format!("bad host pattern {s:?}: too many '*.' labels")));
            }
            stars += 1;
            h = rest;
        }
        if h.contains('*') {
            return Err(err(format!(
                "bad host pattern {s:?}: '*' may only stand for whole leading labels, as in *.example.com"
            )));
        }
        let host = canonical_host(h)?;
        if stars > 0 && !host.contains('.') {
            return Err(err(format!("pattern {s:?} is too broad; write *.name.tld")));
        }
        Ok(HostPattern { host, stars, port })
    }

    /// Does this pattern match a canonical host and port?
    pub fn matches(&self, host: &str, port: u16) -> bool {
        if self.port.is_some_and(|p| p != port) {
            return false;
        }
        if self.stars == 0 {
            return host == self.host;
        }
        if !(host.len() > self.host.len() + 1
            && host.ends_with(&self.host)
            && host.as_bytes()[host.len() - self.host.len() - 1] == b'.')
        {
            return false;
        }
        // The labels in front of the suffix: at least one per `*`, none of them empty
        // (a canonical host has no empty labels).
        let prefix = &host[..host.len() - self.host.len() - 1];
        prefix.split('.').count() >= usize::from(self.stars)
    }

    pub fn is_wildcard(&self) -> bool {
        self.stars > 0
    }
    pub fn host(&self) -> &str {
        &self.host
    }
    pub fn port(&self) -> Option<u16> {
        self.port
    }
}

impl fmt::Display for HostPattern {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        for _ in 0..self.stars {
            f.write_str("*.")?;
        }
        if self.host.contains(':') {
            write!(f, "[{}]", self.host)?;
        } else {
            f.write_str(&self.host)?;
        }
        if let Some(p) = self.port {
            write!(f, ":{p}")?;
        }
        Ok(())
    }
}

impl std::str::FromStr for HostPattern {
    type Err = HostError;
    fn from_str(s: &str) -> Result<Self, HostError> {
        HostPattern::parse(s)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn one_canonical_form() {
        for (i, o) in [
            ("GitHub.COM.", "github.com"),
            ("api.github.com", "api.github.com"),
            ("bücher.example", "xn--bcher-kva.example"),
            ("127.0.0.1", "127.0.0.1"),
            ("[::1]", "::1"),
            ("0:0:0:0:0:0:0:1", "::1"),
        ] {
            assert_eq!(canonical_host(i).unwrap(), o, "{i}");
        }
        for bad in [
            "",
            ".",
            "a..b",
            "127.1",
            "0x7f.0.0.1",
            "2130706433",
            "a b",
            "evil.com/x",
            "-a.com",
            "a%2e.com",
            "x.com..",
            "a@b.com",
        ] {
            assert!(canonical_host(bad).is_err(), "{bad:?} should be refused");
        }
    }

    #[test]
    fn patterns_match_exactly_what_they_say() {
        let p = HostPattern::parse("*.github.com").unwrap();
        assert!(p.matches("api.github.com", 443));
        assert!(p.matches("a.b.github.com", 443));
        assert!(!p.matches("github.com", 443));
        assert!(!p.matches("evilgithub.com", 443));
        assert!(!p.matches("github.com.evil.com", 443));
        let e = HostPattern::parse("API.GitHub.com:8443").unwrap();
        assert!(e.matches("api.github.com", 8443));
        assert!(!e.matches("api.github.com", 443));
        assert_eq!(e.to_string(), "api.github.com:8443");
        assert!(HostPattern::parse("*").is_err());
        assert!(HostPattern::parse("*.com").is_err());
        assert!(HostPattern::parse("a.*.com").is_err());
    }

    #[test]
    fn each_leading_star_asks_for_one_more_label() {
        let p = HostPattern::parse("*.*.AmazonAWS.com").unwrap();
        assert_eq!(p.to_string(), "*.*.amazonaws.com");
        assert!(p.is_wildcard());
        assert!(p.matches("s3.us-east-1.amazonaws.com", 443));
        assert!(p.matches("a.b.c.amazonaws.com", 443));
        assert!(!p.matches("s3.amazonaws.com", 443));
        assert!(!p.matches("amazonaws.com", 443));
        assert!(!p.matches("s3.us-east-1.evilamazonaws.com", 443));
        assert_eq!(HostPattern::parse(&p.to_string()).unwrap(), p);
        assert!(HostPattern::parse("*.*.com").is_err());
        assert!(HostPattern::parse("*.*").is_err());
        assert!(HostPattern::parse("*.a*.example.com").is_err());
        assert!(HostPattern::parse("*.*.*.*.*.*.*.*.*.example.com").is_err());
        assert!(HostPattern::parse("*.*.*.*.*.*.*.*.example.com").is_ok());
    }

    #[test]
    fn authorities_split() {
        assert_eq!(split_host_port("h:80").unwrap(), ("h", Some(80)));
        assert_eq!(split_host_port("[::1]:80").unwrap(), ("[::1]", Some(80)));
        assert_eq!(split_host_port("h").unwrap(), ("h", None));
        assert!(split_host_port("h:0").is_err());
        assert!(split_host_port("h:99999").is_err());
        assert!(split_host_port("h:+80").is_err());
        assert_eq!(
            canonical_authority("API.github.com", 443).unwrap(),
            ("api.github.com".into(), 443)
        );
    }
}
