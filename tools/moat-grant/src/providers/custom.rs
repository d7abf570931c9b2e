//! Grants defined by flags rather than by a known service: `mcp NAME` (a remote MCP
//! server's token, stored as `mcp:NAME`), `http NAME` (any HTTPS API: hosts, header,
//! prefix) and `aws` (a role to assume at run time; no secret is stored).

use super::check_name;
use crate::args::{Grant, PROVIDERS};
use crate::input;
use crate::store::Credential;
use moat_core::host::HostPattern;
use moat_core::{Error, Result};
use serde_json::Value;

fn secret(g: &Grant, what: &str) -> Result<(String, String)> {
    if g.token_stdin {
        return Ok((input::secret_from_stdin(what)?, "stdin".into()));
    }
    if input::can_prompt() {
        return Ok((
            input::prompt_hidden(&format!("{what}: "), what)?,
            "prompt".into(),
        ));
    }
    Err(
        Error::noinput(format!("no terminal to ask for the {what} on"))
            .with_hint("pass --token-stdin and write the secret to standard input"),
    )
}

/// An HTTP header name: RFC 9110 token characters only.
pub fn check_header(h: &str) -> Result<String> {
    let ok = !h.is_empty()
        && h.len() <= 128
        && h.bytes()
            .all(|b| b.is_ascii_alphanumeric() || b"!#$%&'*+-.^_`|~".contains(&b));
    if !ok {
        return Err(Error::usage(format!(
            "--header {h:?} is not an HTTP header name"
        )));
    }
    let l = h.to_ascii_lowercase();
    if [
        "host",
        "content-length",
        "transfer-encoding",
        "connection",
        "proxy-authorization",
    ]
    .contains(&l.as_str())
    {
        return Err(Error::usage(format!(
            "--header {h}: moat does not inject that header"
        )));
    }
    Ok(h.to_string())
}

/// A prefix such as `Bearer ` or `token `: printable ASCII and spaces only.
fn check_prefix(p: &str) -> Result<String> {
    if p.len() > 64 || !p.bytes().all(|b| (0x20..=0x7e).contains(&b)) {
        return Err(Error::usage(
            "--prefix may hold only printable ASCII and spaces",
        ));
    }
    Ok(p.to_string())
}

/// What `moat grant mcp NAME` was not given on the command line, asked for on a terminal
/// (as the Go moat's `moat grant mcp NAME` does); without one, the flags to use. Nothing is
/// taken from a workspace's moat.yaml: the run's files are not trusted to say where a token
/// may be sent.
fn mcp_asked(g: &Grant, n: &str) -> Result<(String, String, String)> {
    let missing: Vec<&str> = [
        ("--url URL", g.url.is_none()),
        ("--header HEADER", g.header.is_none()),
    ]
    .iter()
    .filter(|(_, m)| *m)
    .map(|(f, _)| *f)
    .collect();
    if missing.is_empty() {
        return Ok((
            g.url.clone().unwrap_or_default(),
            g.header.clone().unwrap_or_default(),
            g.prefix.clone().unwrap_or_default(),
        ));
    }
    // With --token-stdin, standard input holds the token: there is nothing to ask on.
    if g.token_stdin || !input::can_prompt() {
        return Err(Error::usage(format!(
            "mcp {n}: no terminal to ask on; give {}",
            missing.join(" and ")
        ))
        .with_hint(format!(
            "moat grant mcp {n} --url https://HOST/PATH --header HEADER [--prefix 'Bearer '] --token-stdin < TOKEN_FILE"
        )));
    }
    let url = match &g.url {
        Some(u) => u.clone(),
        None => input::prompt_line(&format!("URL of the {n} MCP server (https://...): "))?,
    };
    let header = match &g.header {
        Some(h) => h.clone(),
        None => input::prompt_line("Header that carries the token (e.g. Authorization): ")?,
    };
    let prefix = match &g.prefix {
        Some(p) => p.clone(),
        None if g.header.is_none() => {
            // A word typed here (Bearer) is followed by a space before the token.
            let p = input::prompt_line("Text before the token (e.g. Bearer; empty for none): ")?;
            if p.ends_with(|c: char| c.is_ascii_alphanumeric()) {
                format!("{p} ")
            } else {
                p
            }
        }
        None => String::new(),
    };
    Ok((url, header, prefix))
}

pub fn mcp(g: &Grant) -> Result<Credential> {
    let n = g.arg_name.as_deref().unwrap_or_default();
    check_name(n)?;
    let (url, header, prefix) = mcp_asked(g, n)?;
    let url = url.as_str();
    let authority = url
        .strip_prefix("https://")
        .ok_or_else(|| Error::usage(format!("--url {url:?} must start with https://")))?
        .split(['/', '?', '#'])
        .next()
        .unwrap_or_default();
    // The URL is shown by `list`; a secret belongs in the header, never in the URL.
    if authority.contains('@') || url.contains('?') || url.contains('#') {
        return Err(Error::usage(
            "--url must not carry user information, a query or a fragment; put the token in --header",
        ));
    }
    let host = HostPattern::parse(authority).map_err(|e| Error::usage(format!("--url: {e}")))?;
    if host.is_wildcard() {
        return Err(Error::usage("--url must name one host"));
    }
    let header = check_header(&header)?;
    let prefix = check_prefix(&prefix)?;
    let (token, source) = secret(g, "MCP server token")?;
    let mut c = Credential::new("mcp", "header", source);
    c.name = format!("mcp:{n}");
    c.secret.insert("token".into(), token.into());
    c.config.insert("url".into(), url.into());
    c.config
        .insert("hosts".into(), Value::Array(vec![host.to_string().into()]));
    c.config.insert("header".into(), header.into());
    c.config.insert("prefix".into(), prefix.into());
    Ok(c)
}

pub fn http(g: &Grant) -> Result<Credential> {
    let n = g.arg_name.as_deref().unwrap_or_default();
    check_name(n)?;
    if PROVIDERS.contains(&n) {
        return Err(Error::usage(format!(
            "{n:?} is a provider's name; choose another name for an http grant"
        )));
    }
    let mut hosts = Vec::new();
    for h in &g.hosts {
        // `http://HOST` stores a plain-HTTP grant; otherwise the credential goes over HTTPS only.
        let (plain, pat) = moat_core::rules::inject_host(h);
        if pat.contains("://") {
            return Err(Error::usage(format!(
                "--host {h:?}: the scheme must be http:// or https://"
            )));
        }
        let p = HostPattern::parse(pat).map_err(|e| Error::usage(format!("--host: {e}")))?;
        let scheme = if plain { "http://" } else { "" };
        hosts.push(Value::String(format!("{scheme}{p}")));
    }
    let header = check_header(g.header.as_deref().unwrap_or_default())?;
    let prefix = check_prefix(g.prefix.as_deref().unwrap_or_default())?;
    let (token, source) = secret(g, &format!("token for {n}"))?;
    let mut c = Credential::new("http", "header", source);
    c.name = n.to_string();
    c.secret.insert("token".into(), token.into());
    c.config.insert("hosts".into(), Value::Array(hosts));
    c.config.insert("header".into(), header.into());
    c.config.insert("prefix".into(), prefix.into());
    Ok(c)
}

pub fn aws(g: &Grant) -> Result<Credential> {
    let arn = g.role.as_deref().unwrap_or_default();
    check_role_arn(arn)?;
    let region = g.region.clone().unwrap_or_else(|| "us-east-1".into());
    check_region(&region)?;
    let secs = match &g.session_duration {
        Some(d) => parse_duration(d)?,
        None => 900,
    };
    if !(900..=43200).contains(&secs) {
        return Err(Error::usage(format!(
            "--session-duration must be between 15m and 12h, not {secs}s"
        )));
    }
    let mut c = Credential::new("aws", "role", "flags");
    c.config.insert("role_arn".into(), arn.into());
    c.config.insert("region".into(), region.into());
    c.config
        .insert("session_duration_secs".into(), Value::from(secs));
    if let Some(x) = &g.external_id {
        let ok = (2..=1224).contains(&x.len())
            && x.bytes()
                .all(|b| b.is_ascii_alphanumeric() || b"+=,.@:/-_".contains(&b));
        if !ok {
            return Err(Error::usage(
                "--external-id: 2 to 1224 of A-Z a-z 0-9 +=,.@:/-_",
            ));
        }
        c.config.insert("external_id".into(), x.clone().into());
    }
    Ok(c)
}

/// `arn:PARTITION:iam::ACCOUNT:role/PATH/NAME`.
pub fn check_role_arn(arn: &str) -> Result<()> {
    let bad = || {
        Error::usage(format!(
            "--role {arn:?} is not an IAM role ARN (arn:aws:iam::123456789012:role/NAME)"
        ))
    };
    let parts: Vec<&str> = arn.splitn(6, ':').collect();
    if parts.len() != 6
        || parts[0] != "arn"
        || !parts[1].starts_with("aws")
        || parts[2] != "iam"
        || !parts[3].is_empty()
        || parts[4].len() != 12
        || !parts[4].bytes().all(|b| b.is_ascii_digit())
    {
        return Err(bad());
    }
    let name = parts[5].strip_prefix("role/").ok_or_else(bad)?;
    if name.is_empty()
        || name.len() > 512
        || !name
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || b"+=,.@_-/".contains(&b))
    {
        return Err(bad());
    }
    Ok(())
}

pub fn check_region(r: &str) -> Result<()> {
    let parts: Vec<&str> = r.split('-').collect();
    let ok = parts.len() >= 3
        && parts.iter().all(|p| {
            !p.is_empty()
                && p.bytes()
                    .all(|b| b.is_ascii_lowercase() || b.is_ascii_digit())
        })
        && parts
            .last()
            .is_some_and(|p| p.bytes().all(|b| b.is_ascii_digit()));
    if ok {
        Ok(())
    } else {
        Err(Error::usage(format!(
            "--region {r:?} is not an AWS region (like us-east-1)"
        )))
    }
}

/// `900`, `900s`, `15m`, `1h`, `1h30m`.
pub fn parse_duration(s: &str) -> Result<u64> {
    let bad = || {
        Error::usage(format!(
            "bad duration {s:?}: write 15m, 1h, 1h30m or seconds"
        ))
    };
    if !s.is_empty() && s.bytes().all(|b| b.is_ascii_digit()) {
        return s.parse().map_err(|_| bad());
    }
    let (mut total, mut num) = (0u64, String::new());
    for ch in s.chars() {
        if ch.is_ascii_digit() {
            num.push(ch);
            continue;
        }
        let n: u64 = num.parse().map_err(|_| bad())?;
        num.clear();
        let unit = match ch {
            's' => 1,
            'm' => 60,
            'h' => 3600,
            _ => return Err(bad()),
        };
        total = total
            .checked_add(n.checked_mul(unit).ok_or_else(bad)?)
            .ok_or_else(bad)?;
    }
    if !num.is_empty() || s.is_empty() {
        return Err(bad());
    }
    Ok(total)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn durations() {
        assert_eq!(parse_duration("15m").unwrap(), 900);
        assert_eq!(parse_duration("1h30m").unwrap(), 5400);
        assert_eq!(parse_duration("900").unwrap(), 900);
        for b in ["", "m", "15x", "1h5", "-1"] {
            assert!(parse_duration(b).is_err(), "{b}");
        }
    }

    #[test]
    fn arns_and_headers() {
        check_role_arn("arn:aws:iam::123456789012:role/moat/agent").unwrap();
        for b in [
            "arn:aws:iam::1234:role/x",
            "arn:aws:s3:::bucket",
            "arn:aws:iam::123456789012:user/x",
        ] {
            assert!(check_role_arn(b).is_err(), "{b}");
        }
        check_header("X-Api-Key").unwrap();
        for b in ["X Key", "X:Key", "", "Host", "a\r\nb"] {
            assert!(check_header(b).is_err(), "{b:?}");
        }
    }

    #[test]
    fn http_hosts_take_only_http_or_https_schemes() {
        for h in ["ftp://x.example", "ws://x.example", "http://", "http://*"] {
            let g = Grant {
                provider: "http".into(),
                arg_name: Some("corp".into()),
                hosts: vec![h.into()],
                header: Some("X-Api-Key".into()),
                ..Grant::default()
            };
            let e = http(&g).err().unwrap();
            assert_eq!(e.code, moat_core::exit::USAGE, "{h}");
        }
    }
}
