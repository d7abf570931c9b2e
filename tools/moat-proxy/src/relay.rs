//! Relay endpoints for clients that cannot use a proxy: `/relay/<token>/<name>/<path>` and
//! `/mcp/<token>/<name>[/<path>]` are forwarded to the relay's base URL, with the same
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
}

pub const TYPE_RELAY: &str = "relay";

/// The relay `claude.base_url` uses unless another with the same name is configured.
pub fn defaults() -> Vec<Relay> {
    vec![parse_url("anthropic", "https://api.anthropic.com").expect("built-in relay")]
}

/// `NAME=URL`
pub fn parse_spec(spec: &str) -> Result<Relay, String> {
    let (name, url) = spec.split_once('=').ok_or("expected NAME=URL")?;
    parse_url(name, url)
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
    })
}

/// Split a relay request path: (token, name, rest-with-leading-slash-or-empty).
pub fn split_path(path: &str) -> Option<(&str, &str, &str)> {
    let rest = path
        .strip_prefix("/relay/")
        .or_else(|| path.strip_prefix("/mcp/"))?;
    let (token, rest) = rest.split_once('/')?;
    let (name, tail) = match rest.find('/') {
        Some(i) => (&rest[..i], &rest[i..]),
        None => (rest, ""),
    };
    (!token.is_empty() && !name.is_empty()).then_some((token, name, tail))
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
        assert!(parse_spec("x=ftp://a").is_err());
        assert!(parse_spec("bad name=https://a").is_err());
        assert_eq!(
            split_path("/relay/T/anthropic/v1/messages"),
            Some(("T", "anthropic", "/v1/messages"))
        );
        assert_eq!(split_path("/mcp/T/docs"), Some(("T", "docs", "")));
        assert_eq!(split_path("/mcp/T/"), None);
        assert_eq!(split_path("/other"), None);
    }
}
