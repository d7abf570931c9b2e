//! Relay endpoints for clients that cannot use a proxy: `/relay/<token>/<name>/<path>` (a
//! relay) and `/mcp/<token>/<name>[/<path>]` (a remote MCP server's relay; the two kinds
//! never answer for each other) are forwarded to the relay's base URL, with the same
//! injection, policy and tracing as proxied requests. The token is the proxy token (any
//! token when the proxy runs with `--no-auth`); it is never forwarded or recorded.

use moat_core::host::canonical_authority;

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Relay {
    pub name: String,
    pub tls: bool,
    pub host: String,
    pub port: u16,
    /// Path prefix without a trailing slash ("" for the root).
    pub base: String,
    /// A remote MCP server: served at `/mcp/TOKEN/NAME` only; other relays only at
    /// `/relay/TOKEN/NAME`, so neither kind can stand in for the other.
    pub mcp: bool,
}

pub const TYPE_RELAY: &str = "relay";

/// The relay `claude.base_url` uses unless another with the same name is configured.
pub fn defaults() -> Vec<Relay> {
    vec![parse_url("anthropic", "https://api.anthropic.com").expect("built-in relay")]
}

/// `NAME=URL`, or `mcp:NAME=URL` for a remote MCP server.
pub fn parse_spec(spec: &str) -> Result<Relay, String> {
    let (name, url) = spec
        .split_once('=')
        .ok_or("expected NAME=URL or mcp:NAME=URL")?;
    match name.strip_prefix("mcp:") {
        Some(n) => parse_url(n, url).map(|r| Relay { mcp: true, ..r }),
        None => parse_url(name, url),
    }
}

pub fn parse_url(name: &str, url: &str) -> Result<Relay, String> {
    if name.is_empty()
        || !name
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || b == b'-' || b == b'_' || b == b'.')
    {
        return Err(format!("bad relay name {name:?}"));
    }
    let uri: http::Uri = url.parse().map_err(|_| format!("bad relay URL {url:?}"))?;
    let tls = match uri.scheme_str() {
        Some("https") => true,
        Some("http") => false,
        _ => return Err(format!("relay URL {url:?} must be http:// or https://")),
    };
    let auth = uri
        .authority()
        .ok_or_else(|| format!("relay URL {url:?} has no host"))?;
    let (host, port) = canonical_authority(auth.as_str(), if tls { 443 } else { 80 })
        .map_err(|e| e.to_string())?;
    if uri.query().is_some() {
        return Err(format!("relay URL {url:?} must not have a query"));
    }
    Ok(Relay {
        name: name.to_string(),
        tls,
        host,
        port,
        base: uri.path().trim_end_matches('/').to_string(),
        mcp: false,
    })
}

/// A relay request path.
#[derive(Debug, PartialEq, Eq)]
pub struct RelayPath<'a> {
    pub mcp: bool,
    pub token: &'a str,
    pub name: &'a str,
    /// The rest, with its leading slash, or "".
    pub tail: &'a str,
}

/// Split a relay request path: `/relay/TOKEN/NAME/...` or `/mcp/TOKEN/NAME[/...]`.
pub fn split_path(path: &str) -> Option<RelayPath<'_>> {
    let (mcp, rest) = match path.strip_prefix("/relay/") {
        Some(r) => (false, r),
        None => (true, path.strip_prefix("/mcp/")?),
    };
    let (token, rest) = rest.split_once('/')?;
    let (name, tail) = match rest.find('/') {
        Some(i) => (&rest[..i], &rest[i..]),
        None => (rest, ""),
    };
    (!token.is_empty() && !name.is_empty()).then_some(RelayPath {
        mcp,
        token,
        name,
        tail,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn specs_and_paths() {
        let r = parse_spec("docs=https://MCP.example:8443/mcp/").unwrap();
        assert_eq!(
            (r.host.as_str(), r.port, r.base.as_str(), r.tls),
            ("mcp.example", 8443, "/mcp", true)
        );
        assert!(!r.mcp);
        assert!(parse_spec("mcp:docs=https://mcp.example/mcp").unwrap().mcp);
        assert!(parse_spec("x=ftp://a").is_err());
        assert!(parse_spec("bad name=https://a").is_err());
        assert_eq!(
            split_path("/relay/T/anthropic/v1/messages"),
            Some(RelayPath {
                mcp: false,
                token: "T",
                name: "anthropic",
                tail: "/v1/messages"
            })
        );
        assert_eq!(
            split_path("/mcp/T/docs"),
            Some(RelayPath {
                mcp: true,
                token: "T",
                name: "docs",
                tail: ""
            })
        );
        assert_eq!(split_path("/mcp/T/"), None);
        assert_eq!(split_path("/other"), None);
    }
}
