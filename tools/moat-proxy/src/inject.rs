//! Credential injection. For a request whose canonical host and port match a rule's host
//! pattern, the rule's header is set (every client copy of it removed first, placeholder or
//! not) and its extra headers are added. Nothing else is touched: bodies, paths and query
//! strings pass as the client sent them, so a placeholder echoed through a granted host can
//! never be turned into the real value. A pattern injects over HTTPS only, on its port or
//! 443; only a pattern stored with an explicit `http://` scheme injects into plain-HTTP
//! requests (and then only those), on its port or 80. A plain-HTTP request that an HTTPS
//! pattern matches is named by [`Injector::https_only`] so the proxy can refuse it.
//! A `stub_only` rule (a remote MCP server's grant) injects only into a request whose header
//! is exactly the rule's stub, once; any other value, or none, passes untouched.

use crate::redact::Secrets;
use http::header::{HeaderMap, HeaderName, HeaderValue};
use moat_core::host::HostPattern;
use moat_core::rules::InjectRule;
use std::sync::Arc;

struct Compiled {
    grant: String,
    /// (plain HTTP, pattern)
    patterns: Vec<(bool, HostPattern)>,
    header: HeaderName,
    value: HeaderValue,
    extra: Vec<(HeaderName, HeaderValue)>,
    secrets: Arc<Secrets>,
    /// Inject only over this exact client value (a remote MCP server's stub).
    stub: Option<HeaderValue>,
}

pub struct Injector {
    rules: Vec<Compiled>,
    /// An `aws_sign` record: AWS requests signed with the run's placeholder are re-signed.
    pub aws: Option<Arc<crate::awssign::Signer>>,
}

impl Injector {
    /// Compile rules; an error names the grant, never a value.
    pub fn new(rules: Vec<InjectRule>) -> Result<Injector, String> {
        let mut out = Vec::new();
        for r in rules {
            let g = &r.grant;
            if r.hosts.is_empty() {
                return Err(format!("grant {g}: inject rule has no hosts"));
            }
            let mut patterns = Vec::new();
            for h in &r.hosts {
                let (plain, pat) = moat_core::rules::inject_host(h);
                patterns.push((
                    plain,
                    HostPattern::parse(pat).map_err(|e| format!("grant {g}: host {h:?}: {e}"))?,
                ));
            }
            let header = HeaderName::from_bytes(r.header.as_bytes())
                .map_err(|_| format!("grant {g}: bad header name {:?}", r.header))?;
            if header.as_str().starts_with("proxy-") || is_hop_by_hop(&header) {
                return Err(format!(
                    "grant {g}: header {header} cannot carry a credential"
                ));
            }
            let mut value = HeaderValue::from_str(&r.value).map_err(|_| {
                format!("grant {g}: the credential value has characters a header cannot carry")
            })?;
            value.set_sensitive(true);
            let mut extra = Vec::new();
            for h in &r.extra_headers {
                let n = HeaderName::from_bytes(h.name.as_bytes())
                    .map_err(|_| format!("grant {g}: bad extra header name {:?}", h.name))?;
                let v = HeaderValue::from_str(&h.value)
                    .map_err(|_| format!("grant {g}: bad value for extra header {n}"))?;
                extra.push((n, v));
            }
            let secrets = Arc::new(Secrets::new(crate::redact::secrets_of(value.as_bytes())));
            let stub = match (r.stub_only, &r.placeholder) {
                (false, _) => None,
                (true, Some(p)) if !p.is_empty() => {
                    Some(HeaderValue::from_str(p).map_err(|_| {
                        format!("grant {g}: the stub has characters a header cannot carry")
                    })?)
                }
                (true, _) => return Err(format!("grant {g}: stub_only needs a placeholder")),
            };
            out.push(Compiled {
                stub,
                secrets,
                grant: r.grant,
                patterns,
                header,
                value,
                extra,
            });
        }
        Ok(Injector {
            rules: out,
            aws: None,
        })
    }

    /// All host patterns of all rules (strict policy allows them).
    /// The grant names the rules came from, each once (no secrets).
    pub fn grants(&self) -> Vec<String> {
        let mut g: Vec<String> = self.rules.iter().map(|r| r.grant.clone()).collect();
        g.extend(self.aws.iter().map(|a| a.grant.clone()));
        g.dedup();
        g
    }

    /// Not the AWS signer's: it grants only what it signs (see `Policy::with_aws`).
    pub fn patterns(&self) -> Vec<HostPattern> {
        self.rules
            .iter()
            .flat_map(|r| r.patterns.iter().map(|(_, p)| p.clone()))
            .collect()
    }

    /// The injected values for a destination, as byte strings to mask in responses
    /// (computed once per rule; merged only when several rules match).
    pub fn secrets(&self, host: &str, port: u16, tls: bool) -> Arc<Secrets> {
        let s = self.inject_secrets(host, port, tls);
        match &self.aws {
            Some(a) if a.covers(host, port, tls) => {
                let mut v: Vec<Vec<u8>> = s.needles().map(<[u8]>::to_vec).collect();
                v.extend(a.secrets.needles().map(<[u8]>::to_vec));
                Arc::new(Secrets::new(v))
            }
            _ => s,
        }
    }

    fn inject_secrets(&self, host: &str, port: u16, tls: bool) -> Arc<Secrets> {
        let mut matching = self
            .rules
            .iter()
            .filter(|r| rule_matches(&r.patterns, host, port, tls));
        let Some(first) = matching.next() else {
            return Arc::default();
        };
        let mut rest = matching.peekable();
        if rest.peek().is_none() {
            return first.secrets.clone();
        }
        let mut v: Vec<Vec<u8>> = first.secrets.needles().map(<[u8]>::to_vec).collect();
        for r in rest {
            v.extend(r.secrets.needles().map(<[u8]>::to_vec));
        }
        Arc::new(Secrets::new(v))
    }

    /// Inject into `headers` for a request to `host:port`; returns the grants used.
    /// When two rules set the same header, the first one (in rules order) wins.
    pub fn apply(&self, headers: &mut HeaderMap, host: &str, port: u16, tls: bool) -> Vec<String> {
        let mut set: Vec<HeaderName> = Vec::new();
        let mut grants = Vec::new();
        for r in &self.rules {
            if !rule_matches(&r.patterns, host, port, tls) || set.contains(&r.header) {
                continue;
            }
            if !r.stub_sent(headers) {
                continue;
            }
            headers.remove(&r.header);
            headers.insert(r.header.clone(), r.value.clone());
            set.push(r.header.clone());
            for (n, v) in &r.extra {
                if !set.contains(n) {
                    headers.insert(n.clone(), v.clone());
                }
            }
            if !grants.contains(&r.grant) {
                grants.push(r.grant.clone());
            }
        }
        grants
    }
}

impl Injector {
    /// For a plain-HTTP request to `host:port`: the grants that would be injected were it
    /// HTTPS (and are not, since their host was not stored with `http://`).
    pub fn https_only(&self, headers: &HeaderMap, host: &str, port: u16) -> Vec<String> {
        let mut out = Vec::new();
        for r in &self.rules {
            if rule_matches(&r.patterns, host, port, true)
                && !rule_matches(&r.patterns, host, port, false)
                && r.stub_sent(headers)
                && !out.contains(&r.grant)
            {
                out.push(r.grant.clone());
            }
        }
        out
    }
}

impl Compiled {
    /// A stub-only rule applies only when the client sent exactly its stub, once.
    fn stub_sent(&self, headers: &HeaderMap) -> bool {
        let Some(stub) = &self.stub else { return true };
        let mut sent = headers.get_all(&self.header).iter();
        sent.next() == Some(stub) && sent.next().is_none()
    }
}

/// Does a rule inject into a request to `host:port` over TLS (`tls`) or plain HTTP?
fn rule_matches(patterns: &[(bool, HostPattern)], host: &str, port: u16, tls: bool) -> bool {
    patterns.iter().any(|(plain, p)| {
        let want = p.port().unwrap_or(if *plain { 80 } else { 443 });
        *plain != tls && port == want && p.matches(host, port)
    })
}

/// Hop-by-hop headers (RFC 9110 7.6.1) plus the legacy ones proxies must not forward.
pub fn is_hop_by_hop(n: &HeaderName) -> bool {
    matches!(
        n.as_str(),
        "connection"
            | "keep-alive"
            | "proxy-connection"
            | "proxy-authenticate"
            | "proxy-authorization"
            | "te"
            | "trailer"
            | "transfer-encoding"
            | "upgrade"
    )
}

#[cfg(test)]
mod tests {
    use super::*;
    use moat_core::rules::Header;

    fn rule(grant: &str, hosts: &[&str], header: &str, value: &str) -> InjectRule {
        InjectRule {
            grant: grant.into(),
            hosts: hosts.iter().map(|s| s.to_string()).collect(),
            header: header.into(),
            value: value.into(),
            extra_headers: vec![],
            placeholder: None,
            stub_only: false,
        }
    }

    #[test]
    fn replaces_client_copies_and_matches_only_granted_hosts() {
        let mut r = rule(
            "github",
            &["api.github.com"],
            "Authorization",
            "Bearer CANARY",
        );
        r.extra_headers.push(Header {
            name: "x-extra".into(),
            value: "1".into(),
        });
        let inj = Injector::new(vec![r]).unwrap();
        let mut h = HeaderMap::new();
        h.append(
            "authorization",
            HeaderValue::from_static("Bearer ghp_placeholder"),
        );
        h.append("Authorization", HeaderValue::from_static("Basic other"));
        assert_eq!(
            inj.apply(&mut h, "api.github.com", 443, true),
            vec!["github"]
        );
        let all: Vec<_> = h.get_all("authorization").iter().collect();
        assert_eq!(all, vec!["Bearer CANARY"]);
        assert_eq!(h["x-extra"], "1");
        for (host, port, tls) in [
            ("api.github.com", 8443, true),
            ("api.github.com", 443, false),
            ("api.github.com", 80, false),
            ("github.com", 443, true),
            ("api.github.com.evil.com", 443, true),
        ] {
            let mut h = HeaderMap::new();
            assert!(
                inj.apply(&mut h, host, port, tls).is_empty(),
                "{host}:{port}"
            );
            assert!(h.is_empty());
        }
    }

    #[test]
    fn a_stub_only_rule_replaces_the_stub_and_nothing_else() {
        let mut r = rule("mcp:docs", &["mcp.example"], "X-Docs-Key", "CANARY");
        r.placeholder = Some("moat-stub-mcp:docs".into());
        r.stub_only = true;
        let inj = Injector::new(vec![r]).unwrap();
        let mut h = HeaderMap::new();
        h.insert("x-docs-key", HeaderValue::from_static("moat-stub-mcp:docs"));
        assert_eq!(
            inj.apply(&mut h, "mcp.example", 443, true),
            vec!["mcp:docs"]
        );
        assert_eq!(h["x-docs-key"], "CANARY");
        for sent in [
            &[][..],
            &["the-users-own-key"][..],
            &["moat-stub-mcp:other"][..],
            &["moat-stub-mcp:docs", "moat-stub-mcp:docs"][..],
            &["Moat-Stub-Mcp:Docs"][..],
        ] {
            let mut h = HeaderMap::new();
            for v in sent {
                h.append("x-docs-key", HeaderValue::from_str(v).unwrap());
            }
            assert!(inj.apply(&mut h, "mcp.example", 443, true).is_empty());
            let now: Vec<_> = h.get_all("x-docs-key").iter().collect();
            assert_eq!(now.len(), sent.len(), "{sent:?}");
            assert!(now.iter().all(|v| v.as_bytes() != b"CANARY"));
        }
        let mut r = rule("mcp:x", &["mcp.example"], "X-Key", "V");
        r.stub_only = true;
        assert!(Injector::new(vec![r]).is_err());
    }

    /// THREATS A6: a port in a pattern does not open plain HTTP; only `http://` does.
    #[test]
    fn explicit_ports_and_bad_values() {
        let inj = Injector::new(vec![
            rule("port", &["npm.corp:8443"], "x-api-key", "K"),
            rule(
                "plain",
                &["http://ws.example:8080", "HTTP://bare.example"],
                "x-k",
                "K",
            ),
        ])
        .unwrap();
        for (host, port, tls, want, refused) in [
            ("npm.corp", 8443, true, Some("port"), None),
            ("npm.corp", 8443, false, None, Some("port")),
            ("npm.corp", 443, true, None, None),
            ("npm.corp", 80, false, None, None),
            ("ws.example", 8080, false, Some("plain"), None),
            ("ws.example", 8080, true, None, None),
            ("ws.example", 80, false, None, None),
            ("bare.example", 80, false, Some("plain"), None),
            ("bare.example", 443, true, None, None),
        ] {
            let mut h = HeaderMap::new();
            let got = inj.apply(&mut h, host, port, tls);
            assert_eq!(got.first().map(String::as_str), want, "{host}:{port} {tls}");
            assert_eq!(h.is_empty(), want.is_none());
            let r = if tls {
                vec![]
            } else {
                inj.https_only(&h, host, port)
            };
            assert_eq!(
                r.first().map(String::as_str),
                refused,
                "{host}:{port} {tls}"
            );
        }
        let e = Injector::new(vec![rule("g", &["a.example"], "x", "bad\r\nSECRET")])
            .err()
            .unwrap();
        assert!(!e.contains("SECRET"));
        assert!(
            Injector::new(vec![rule("g", &["a.example"], "Proxy-Authorization", "v")]).is_err()
        );
    }

    /// A deliberately naive reference: the only spellings of the granted host that may
    /// receive the credential are ASCII case changes, one trailing dot and port 443.
    fn reference_inject(authority: &str) -> bool {
        // Surrounding whitespace is optional whitespace around a header value.
        let a = authority.trim().to_ascii_lowercase();
        let (h, port) = match a.rsplit_once(':') {
            Some((h, p)) => (h.trim().to_string(), p.trim().to_string()),
            None => (a.clone(), "443".to_string()),
        };
        let h = h.strip_suffix('.').unwrap_or(&h).to_string();
        // Digits only; leading zeros name the same port.
        let port_443 = !port.is_empty()
            && port.bytes().all(|b| b.is_ascii_digit())
            && port.parse::<u32>() == Ok(443);
        h == "api.github.com" && port_443
            || h.ends_with(".githubusercontent.com")
                && h.len() > ".githubusercontent.com".len()
                && h[..h.len() - ".githubusercontent.com".len()]
                    .split('.')
                    .all(|l| {
                        !l.is_empty() && l.bytes().all(|b| b.is_ascii_alphanumeric() || b == b'-')
                    })
                && port_443
    }

    #[test]
    fn host_matching_table_never_leaks() {
        let inj = Injector::new(vec![rule(
            "github",
            &["api.github.com", "*.githubusercontent.com"],
            "Authorization",
            "Bearer CANARY",
        )])
        .unwrap();
        let bases = [
            "api.github.com",
            "API.GITHUB.COM",
            "Api.GitHub.Com",
            "api.github.com.",
            "api.github.com..",
            "api.github.com.evil.com",
            "evilapi.github.com",
            "evil-api.github.com",
            "apigithub.com",
            "api.github.co",
            "api.github.comm",
            "api-github.com",
            "github.com",
            "www.github.com",
            "api.github.com@evil.com",
            "evil.com@api.github.com",
            "api.github.com\\@evil.com",
            "api.github.com%2eevil.com",
            "api%2egithub.com",
            "api.github.com%00",
            "api.github.com\u{0}",
            "api.github.com\t",
            " api.github.com",
            "api.github.com ",
            "api.github.com/evil",
            "api.github.com#@evil.com",
            "api.github.com?x",
            "api.githu\u{0299}.com",
            "api.github\u{ff0e}com",
            "xn--api-github.com",
            "api.xn--github-.com",
            "\u{0430}pi.github.com",
            "api.g\u{0131}thub.com",
            "raw.githubusercontent.com",
            "a.b.githubusercontent.com",
            "githubusercontent.com",
            "evilgithubusercontent.com",
            "raw.githubusercontent.com.evil.com",
            "githubusercontent.com.evil.com",
            ".githubusercontent.com",
            "..githubusercontent.com",
            "*.githubusercontent.com",
            "127.0.0.1",
            "127.1",
            "2130706433",
            "0x7f.0.0.1",
            "[::1]",
            "[::ffff:127.0.0.1]",
            "140.82.112.5",
            "[fe80::1%25eth0]",
            "api.github.com\r\nX-Evil: 1",
            "api.github.com;evil.com",
            "api.github.com,evil.com",
        ];
        let ports = [
            "", ":443", ":0443", ":+443", ":443 ", ":80", ":8443", ":0", ":65536", ":", ":44 3",
        ];
        let mut cases = 0;
        let mut injected = 0;
        for b in bases {
            for p in ports {
                let authority = format!("{b}{p}");
                cases += 1;
                let got = match moat_core::host::canonical_authority(&authority, 443) {
                    Ok((h, port)) => {
                        let mut hm = HeaderMap::new();
                        !inj.apply(&mut hm, &h, port, true).is_empty()
                    }
                    Err(_) => false,
                };
                if got {
                    injected += 1;
                }
                if b.is_ascii() {
                    assert_eq!(got, reference_inject(&authority), "{authority:?}");
                } else if got {
                    // Only IDNA mappings of the granted name itself may inject.
                    let (h, _) = moat_core::host::canonical_authority(&authority, 443).unwrap();
                    assert!(
                        h == "api.github.com" || h.ends_with(".githubusercontent.com"),
                        "{authority:?} -> {h}"
                    );
                }
            }
        }
        assert!(cases >= 200, "{cases}");
        assert!(
            injected >= 6,
            "the table must also contain granted spellings ({injected})"
        );
    }
}
