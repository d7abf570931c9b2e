//! Network policy: permissive (everything not denied by a rule) or strict (only `--allow`
//! hosts, hosts of injection rules and hosts with `net_rule`s). Per-host rules
//! `allow|deny METHOD /glob` are checked in order, first match wins, no match falls back to
//! the mode. Globs: `*` is one path segment, `**` any number (`/p/**` does not match `/p`).
//! A host pattern without a port matches ports 80 and 443 only.

use moat_core::host::HostPattern;

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Mode {
    Permissive,
    Strict,
}

#[derive(Debug, Clone)]
struct PathRule {
    allow: bool,
    method: String,
    glob: Vec<String>,
    text: String,
}

#[derive(Debug, Clone)]
pub struct NetRule {
    host: HostPattern,
    rules: Vec<PathRule>,
}

impl NetRule {
    pub fn parse(host: &str, rules: &[String]) -> Result<NetRule, String> {
        let host = HostPattern::parse(host).map_err(|e| format!("net_rule host {host:?}: {e}"))?;
        let mut out = Vec::new();
        for r in rules {
            let parts: Vec<&str> = r.split_whitespace().collect();
            let [action, method, path] = parts[..] else {
                return Err(format!(
                    "net_rule {r:?}: expected \"allow|deny METHOD /path\""
                ));
            };
            let allow = match action {
                "allow" => true,
                "deny" => false,
                _ => return Err(format!("net_rule {r:?}: action must be allow or deny")),
            };
            if !path.starts_with('/') {
                return Err(format!("net_rule {r:?}: path must start with /"));
            }
            out.push(PathRule {
                allow,
                method: method.to_ascii_uppercase(),
                glob: path.split('/').map(String::from).collect(),
                text: r.split_whitespace().collect::<Vec<_>>().join(" "),
            });
        }
        Ok(NetRule { host, rules: out })
    }
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Decision {
    Allow,
    /// Denied: `rule` is what the trace records, `kind` goes into `X-Moat-Blocked`.
    Deny {
        rule: String,
        kind: &'static str,
        message: String,
    },
}

pub struct Policy {
    mode: Mode,
    allow: Vec<HostPattern>,
    granted: Vec<HostPattern>,
    net: Vec<NetRule>,
}

fn pattern_matches(p: &HostPattern, host: &str, port: u16) -> bool {
    match p.port() {
        Some(_) => p.matches(host, port),
        None => (port == 443 || port == 80) && p.matches(host, port),
    }
}

impl Policy {
    pub fn new(
        mode: Mode,
        allow: Vec<HostPattern>,
        granted: Vec<HostPattern>,
        net: Vec<NetRule>,
    ) -> Policy {
        Policy {
            mode,
            allow,
            granted,
            net,
        }
    }

    /// Is this host and port explicitly allowed with its port (`--allow host:port`)?
    /// Only such an allowance lets the proxy dial private addresses.
    pub fn explicitly_allows_port(&self, host: &str, port: u16) -> bool {
        self.allow
            .iter()
            .any(|p| p.port() == Some(port) && p.matches(host, port))
    }

    pub fn check(&self, host: &str, port: u16, method: &str, path: &str) -> Decision {
        let shown = display_host(host, port);
        let rules: Vec<&NetRule> = self
            .net
            .iter()
            .filter(|n| pattern_matches(&n.host, host, port))
            .collect();
        if !rules.is_empty() {
            if rules.iter().any(|n| !n.rules.is_empty()) && ambiguous_path(path) {
                return Decision::Deny {
                    rule: "ambiguous path".into(),
                    kind: "request-rule",
                    message: format!(
                        "Moat: request blocked by network policy.\nHost \"{shown}\" has path rules and the path is ambiguous (dot segments, encoded slashes or dots, backslashes).\nSend the path in its plain form.\n"
                    ),
                };
            }
            for n in &rules {
                for r in &n.rules {
                    if (r.method == "*" || r.method == method) && glob_match(&r.glob, path) {
                        if r.allow {
                            return Decision::Allow;
                        }
                        return Decision::Deny {
                            rule: r.text.clone(),
                            kind: "request-rule",
                            message: format!(
                                "Moat: request blocked by network policy.\nHost \"{shown}\": {method} {} is denied by rule \"{}\".\nTo allow this request, update network.rules for {shown} in moat.yaml.\n",
                                path_only(path),
                                r.text
                            ),
                        };
                    }
                }
            }
        }
        if self.mode == Mode::Permissive
            || !rules.is_empty()
            || self.allow.iter().any(|p| pattern_matches(p, host, port))
            || self.granted.iter().any(|p| pattern_matches(p, host, port))
        {
            return Decision::Allow;
        }
        Decision::Deny {
            rule: "strict: host not in allow list".into(),
            kind: "host-not-allowed",
            message: format!(
                "Moat: request blocked by network policy.\nHost \"{shown}\" is not in the allow list.\nAdd it to network.allow in moat.yaml, or use --allow {shown}.\n"
            ),
        }
    }
}

pub fn display_host(host: &str, port: u16) -> String {
    let h = if host.contains(':') {
        format!("[{host}]")
    } else {
        host.to_string()
    };
    if port == 443 || port == 80 {
        h
    } else {
        format!("{h}:{port}")
    }
}

fn path_only(p: &str) -> &str {
    p.split('?').next().unwrap_or(p)
}

fn ambiguous_path(p: &str) -> bool {
    let p = path_only(p);
    let l = p.to_ascii_lowercase();
    l.contains("%2e")
        || l.contains("%2f")
        || l.contains("%5c")
        || p.contains('\\')
        || p.split('/').any(|s| s == "." || s == "..")
}

fn glob_match(glob: &[String], path: &str) -> bool {
    let segs: Vec<&str> = path_only(path).split('/').collect();
    // "/p/**" does not match "/p": a trailing ** needs at least one segment.
    fn m(g: &[String], s: &[&str]) -> bool {
        match g.split_first() {
            None => s.is_empty(),
            Some((h, rest)) if h == "**" => {
                let min = if rest.is_empty() { 1 } else { 0 };
                (min..=s.len()).any(|i| m(rest, &s[i..]))
            }
            Some((h, rest)) => match s.split_first() {
                Some((x, srest)) => (h == "*" || h == x) && m(rest, srest),
                None => false,
            },
        }
    }
    m(glob, &segs)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn gl(p: &str) -> Vec<String> {
        p.split('/').map(String::from).collect()
    }

    #[test]
    fn globs() {
        assert!(glob_match(&gl("/repos/**"), "/repos/a/b"));
        assert!(glob_match(&gl("/repos/**"), "/repos/"));
        assert!(!glob_match(&gl("/repos/**"), "/repos"));
        assert!(glob_match(&gl("/**"), "/"));
        assert!(glob_match(&gl("/**"), "/x/y?q=1"));
        assert!(glob_match(&gl("/a/*/c"), "/a/b/c"));
        assert!(!glob_match(&gl("/a/*/c"), "/a/b/d/c"));
        assert!(glob_match(&gl("/a/**/c"), "/a/c"));
        assert!(glob_match(&gl("/a/**/c"), "/a/x/y/c"));
    }

    #[test]
    fn first_match_wins_and_strict_default() {
        let n = NetRule::parse(
            "api.github.com",
            &["allow GET /repos/**".into(), "deny * /**".into()],
        )
        .unwrap();
        let p = Policy::new(
            Mode::Strict,
            vec![HostPattern::parse("ok.example").unwrap()],
            vec![],
            vec![n],
        );
        assert_eq!(
            p.check("api.github.com", 443, "GET", "/repos/x"),
            Decision::Allow
        );
        assert!(matches!(
            p.check("api.github.com", 443, "POST", "/repos/x"),
            Decision::Deny { .. }
        ));
        assert!(matches!(
            p.check("api.github.com", 443, "GET", "/repos/../admin"),
            Decision::Deny { .. }
        ));
        assert_eq!(p.check("ok.example", 443, "GET", "/"), Decision::Allow);
        assert!(matches!(
            p.check("ok.example", 8080, "GET", "/"),
            Decision::Deny { .. }
        ));
        match p.check("evil.example", 443, "GET", "/") {
            Decision::Deny { message, .. } => {
                assert!(message.contains("Host \"evil.example\" is not in the allow list"));
                assert!(message.contains("--allow evil.example"));
            }
            d => panic!("{d:?}"),
        }
        let perm = Policy::new(Mode::Permissive, vec![], vec![], vec![]);
        assert_eq!(perm.check("evil.example", 443, "GET", "/"), Decision::Allow);
    }
}
