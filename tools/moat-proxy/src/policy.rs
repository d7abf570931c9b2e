//! Network policy: permissive (everything not denied by a rule) or strict (only `--allow`
//! hosts, hosts of injection rules and hosts with `net_rule`s). Per-host rules
//! `allow|deny METHOD /glob` are checked in order, first match wins, no match falls back to
//! the mode. Globs: `*` is one path segment, `**` any number (`/p/**` does not match `/p`).
//! A host pattern without a port matches ports 80 and 443 only.
//!
//! Rules see one normalised form of the request (THREATS A5): the method upper-cased; the
//! path without its query, with percent-encoded unreserved characters decoded, `;params`
//! cut from segments, empty segments collapsed and dot segments resolved. A deny matches
//! that form case-insensitively, with or without a trailing slash; an allow matches it
//! exactly. A path that cannot be normalised safely (an encoded slash, backslash or NUL, a
//! bad escape) is refused on a host with rules. The request is forwarded as sent.
//!
//! For AWS requests the proxy signs (awssign.rs), a host's rules may also name the API
//! action: `allow|deny service:Action`, where either part may be `*` and an action may end
//! in `*` (`deny iam:*`, `allow s3:Get*`), matched case-insensitively against the service
//! of the signature's scope and the action worked out from the request; checked in order
//! after the path rules, first match wins, no match allows. Resource ARNs are not matched.

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

/// `allow|deny service:Action` (lowercased; `*` or a trailing `*` as wildcards).
#[derive(Debug, Clone)]
struct ActionRule {
    allow: bool,
    service: String,
    action: String,
    text: String,
}

fn wild_eq(pattern: &str, v: &str) -> bool {
    match pattern.strip_suffix('*') {
        Some(prefix) => v.starts_with(prefix),
        None => pattern == v,
    }
}

#[derive(Debug, Clone)]
pub struct NetRule {
    host: HostPattern,
    rules: Vec<PathRule>,
    actions: Vec<ActionRule>,
}

impl NetRule {
    pub fn parse(host: &str, rules: &[String]) -> Result<NetRule, String> {
        let host = HostPattern::parse(host).map_err(|e| format!("net_rule host {host:?}: {e}"))?;
        let mut out = Vec::new();
        let mut actions = Vec::new();
        for r in rules {
            let parts: Vec<&str> = r.split_whitespace().collect();
            if let [verb, sa] = parts[..]
                && let Some((service, action)) = sa.split_once(':')
            {
                let allow = match verb {
                    "allow" => true,
                    "deny" => false,
                    _ => return Err(format!("net_rule {r:?}: action must be allow or deny")),
                };
                let ok = |s: &str, extra: &[char]| {
                    !s.is_empty()
                        && s.trim_end_matches('*')
                            .chars()
                            .all(|c| c.is_ascii_alphanumeric() || extra.contains(&c))
                        && !s.trim_end_matches('*').contains('*')
                };
                if !ok(service, &['-']) || !ok(action, &[]) {
                    return Err(format!(
                        "net_rule {r:?}: expected \"allow|deny service:Action\" (e.g. deny iam:*)"
                    ));
                }
                actions.push(ActionRule {
                    allow,
                    service: service.to_ascii_lowercase(),
                    action: action.to_ascii_lowercase(),
                    text: format!("{verb} {sa}"),
                });
                continue;
            }
            let [action, method, path] = parts[..] else {
                return Err(format!(
                    "net_rule {r:?}: expected \"allow|deny METHOD /path\" or \"allow|deny service:Action\""
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
        Ok(NetRule {
            host,
            rules: out,
            actions,
        })
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
    /// An `aws_sign` record grants only what it signs: HTTPS to the hosts it covers.
    aws: Option<std::sync::Arc<crate::awssign::Signer>>,
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
            aws: None,
        }
    }

    /// THREATS A8: the AWS signer's hosts are granted for TLS on the ports it signs for
    /// ([`crate::awssign::Signer::covers`]), never for port 80 or names AWS customers run.
    pub fn with_aws(mut self, aws: Option<std::sync::Arc<crate::awssign::Signer>>) -> Policy {
        self.aws = aws;
        self
    }

    /// Hosts allowed as a grant's (`moat-proxy policy-check --granted`, replaying a run).
    pub fn with_granted(mut self, granted: Vec<HostPattern>) -> Policy {
        self.granted.extend(granted);
        self
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
        let method = &method.to_ascii_uppercase();
        let method = method.as_str();
        let rules: Vec<&NetRule> = self
            .net
            .iter()
            .filter(|n| pattern_matches(&n.host, host, port))
            .collect();
        if !rules.is_empty() {
            let Some(norm) = normalize_path(path_only(path)) else {
                if rules.iter().all(|n| n.rules.is_empty()) {
                    return Decision::Allow;
                }
                return Decision::Deny {
                    rule: "ambiguous path".into(),
                    kind: "request-rule",
                    message: format!(
                        "Moat: request blocked by network policy.\nHost \"{shown}\" has path rules and the path is ambiguous (encoded slashes or backslashes, NUL, bad escapes).\nSend the path in its plain form.\n"
                    ),
                };
            };
            let lower = norm.to_ascii_lowercase();
            let trimmed = match lower.trim_end_matches('/') {
                "" => "/",
                t => t,
            };
            for n in &rules {
                for r in &n.rules {
                    let hit = if r.allow {
                        glob_match(&r.glob, &norm)
                    } else {
                        let g: Vec<String> =
                            r.glob.iter().map(|x| x.to_ascii_lowercase()).collect();
                        glob_match(&g, &lower) || glob_match(&g, trimmed)
                    };
                    if (r.method == "*" || r.method == method) && hit {
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
            || self
                .aws
                .as_ref()
                .is_some_and(|a| a.covers(host, port, true))
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

impl Policy {
    /// `allow|deny service:Action` rules of the host, for an AWS request the proxy signed.
    pub fn check_aws(
        &self,
        host: &str,
        port: u16,
        service: &str,
        action: Option<&str>,
    ) -> Decision {
        let (service, action) = (
            service.to_ascii_lowercase(),
            action.unwrap_or("").to_ascii_lowercase(),
        );
        for n in self
            .net
            .iter()
            .filter(|n| pattern_matches(&n.host, host, port))
        {
            for r in &n.actions {
                // An action not worked out matches only `*`; a rule of its service that
                // names actions is reached first: refused, the rule cannot be applied.
                if action.is_empty() && r.action != "*" && wild_eq(&r.service, &service) {
                    let shown = display_host(host, port);
                    return Decision::Deny {
                        rule: r.text.clone(),
                        kind: "request-rule",
                        message: format!(
                            "Moat: request blocked by network policy.\nHost \"{shown}\": the AWS action of this {service} request could not be determined, and rule \"{}\" names actions.\nSend the request as the AWS SDK or CLI does, or use a {service}:* rule.\n",
                            r.text
                        ),
                    };
                }
                let act = r.action == "*" || (!action.is_empty() && wild_eq(&r.action, &action));
                if wild_eq(&r.service, &service) && act {
                    if r.allow {
                        return Decision::Allow;
                    }
                    let shown = display_host(host, port);
                    return Decision::Deny {
                        rule: r.text.clone(),
                        kind: "request-rule",
                        message: format!(
                            "Moat: request blocked by network policy.\nHost \"{shown}\": the AWS action {service}:{} is denied by rule \"{}\".\nTo allow this request, update network.rules for {shown} in moat.yaml.\n",
                            if action.is_empty() {
                                "?"
                            } else {
                                action.as_str()
                            },
                            r.text
                        ),
                    };
                }
            }
        }
        Decision::Allow
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

/// The one form path rules are checked against (see the module comment), or `None` when
/// the path cannot be normalised safely.
pub fn normalize_path(p: &str) -> Option<String> {
    if !p.starts_with('/') || p.contains('\\') {
        return None;
    }
    // Decode escapes of unreserved characters; keep every other escape (upper-case hex).
    let b = p.as_bytes();
    let mut dec = String::with_capacity(p.len());
    let mut i = 0;
    while i < b.len() {
        if b[i] != b'%' {
            dec.push(b[i] as char);
            i += 1;
            continue;
        }
        let hex = |c: u8| (c as char).to_digit(16);
        let (Some(h), Some(l)) = (
            b.get(i + 1).copied().and_then(hex),
            b.get(i + 2).copied().and_then(hex),
        ) else {
            return None;
        };
        let c = (h * 16 + l) as u8;
        match c {
            b'/' | b'\\' | 0 => return None,
            c if c.is_ascii_alphanumeric() || matches!(c, b'-' | b'.' | b'_' | b'~') => {
                dec.push(c as char)
            }
            c => dec.push_str(&format!("%{c:02X}")),
        }
        i += 3;
    }
    let trailing = dec.ends_with('/') || dec.ends_with("/.") || dec.ends_with("/..");
    let mut out: Vec<&str> = Vec::new();
    for seg in dec.split('/') {
        let seg = seg.split(';').next().unwrap_or("");
        match seg {
            "" | "." => {}
            ".." => {
                out.pop();
            }
            s => out.push(s),
        }
    }
    let mut n = String::from("/");
    n.push_str(&out.join("/"));
    if trailing && !out.is_empty() {
        n.push('/');
    }
    Some(n)
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

    fn aws_signer() -> std::sync::Arc<crate::awssign::Signer> {
        let r = moat_core::rules::AwsSign {
            grant: "aws".into(),
            hosts: vec![
                "*.amazonaws.com".into(),
                "*.amazonaws.com.cn".into(),
                "*.api.aws".into(),
            ],
            placeholder_access_key_id: "ASIAPLACEHOLDER00001".into(),
            placeholder_secret_access_key: "placeholder-secret".into(),
            placeholder_session_token: "placeholder-token".into(),
            access_key_id: "ASIAREALKEY000000002".into(),
            secret_access_key: "real-secret".into(),
            session_token: "real-token".into(),
            expiration: None,
        };
        std::sync::Arc::new(crate::awssign::Signer::new(r).unwrap())
    }

    /// THREATS A8 (issue #23 review): under strict policy an AWS grant reaches only what it
    /// signs (HTTPS on 443 to AWS API names), not port 80 and not names whose servers AWS
    /// customers run (EC2, load balancers, S3 websites, API Gateway, Lambda URLs, ...).
    #[test]
    fn an_aws_grant_allows_only_what_it_signs() {
        let p = Policy::new(Mode::Strict, vec![], vec![], vec![]).with_aws(Some(aws_signer()));
        for h in [
            "sts.us-east-1.amazonaws.com",
            "bucket.s3.us-east-1.amazonaws.com",
            "iam.amazonaws.com.cn",
            "sts.us-east-1.api.aws",
        ] {
            assert_eq!(p.check(h, 443, "GET", "/"), Decision::Allow, "{h}");
            assert!(
                matches!(p.check(h, 80, "GET", "/"), Decision::Deny { .. }),
                "{h}:80"
            );
        }
        for h in [
            "ec2-203-0-113-5.compute-1.amazonaws.com",
            "my-lb-1.us-east-1.elb.amazonaws.com",
            "bucket.s3-website-us-east-1.amazonaws.com",
            "abc123.execute-api.us-east-1.amazonaws.com",
            "abc123.lambda-url.us-east-1.on.aws",
            "app.eu-west-1.elasticbeanstalk.com",
            "abc.appsync-api.us-east-1.amazonaws.com",
        ] {
            assert!(
                matches!(p.check(h, 443, "GET", "/"), Decision::Deny { .. }),
                "{h}"
            );
        }
        // An explicit allow still reaches them.
        let p = Policy::new(
            Mode::Strict,
            vec![HostPattern::parse("abc123.execute-api.us-east-1.amazonaws.com").unwrap()],
            vec![],
            vec![],
        )
        .with_aws(Some(aws_signer()));
        assert_eq!(
            p.check(
                "abc123.execute-api.us-east-1.amazonaws.com",
                443,
                "GET",
                "/"
            ),
            Decision::Allow
        );
    }

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
        assert_eq!(
            perm.check("evil.example", 443, "GET", "/%2F"),
            Decision::Allow
        );
        assert_eq!(perm.check("evil.example", 443, "GET", "/"), Decision::Allow);
    }

    #[test]
    fn normal_forms() {
        for (i, o) in [
            ("/", Some("/")),
            ("/s%65cret", Some("/secret")),
            ("/S%45CRET", Some("/SECRET")),
            ("//secret", Some("/secret")),
            ("/a//b///c", Some("/a/b/c")),
            ("/secret;x", Some("/secret")),
            ("/secret;x=1/y;z", Some("/secret/y")),
            ("/a/../secret", Some("/secret")),
            ("/a/%2e%2E/secret", Some("/secret")),
            ("/./secret/.", Some("/secret/")),
            ("/../../secret", Some("/secret")),
            ("/secret/", Some("/secret/")),
            ("/a%20b%2a", Some("/a%20b%2A")),
            ("/%7euser", Some("/~user")),
            ("/a%2Fb", None),
            ("/a%2fb", None),
            ("/a%5Cb", None),
            ("/a\\b", None),
            ("/a%00", None),
            ("/a%zz", None),
            ("/a%6", None),
            ("*", None),
        ] {
            assert_eq!(normalize_path(i).as_deref(), o, "{i}");
        }
    }

    /// THREATS A5: other spellings of a denied path and method are denied too.
    #[test]
    fn deny_holds_against_other_spellings() {
        let n = NetRule::parse(
            "api.example",
            &[
                "allow GET /public/**".into(),
                "deny * /secret".into(),
                "deny DELETE /**".into(),
            ],
        )
        .unwrap();
        let p = Policy::new(Mode::Permissive, vec![], vec![], vec![n]);
        for (m, path) in [
            ("GET", "/secret"),
            ("GET", "/s%65cret"),
            ("GET", "//secret"),
            ("GET", "/secret;x"),
            ("GET", "/SECRET"),
            ("GET", "/Secret/"),
            ("get", "/secret"),
            ("GET", "/public/../secret"),
            ("GET", "/public/%2e%2e/secret"),
            ("GET", "/public/..%2Fsecret"),
            ("GET", "/secret?x=1"),
            ("delete", "/public/x"),
            ("Delete", "/x"),
        ] {
            assert!(
                matches!(p.check("api.example", 443, m, path), Decision::Deny { .. }),
                "{m} {path}"
            );
        }
        for (m, path) in [
            ("GET", "/public/x"),
            ("get", "/public/a;b"),
            ("GET", "/secrets"),
            ("GET", "/other"),
        ] {
            assert_eq!(
                p.check("api.example", 443, m, path),
                Decision::Allow,
                "{m} {path}"
            );
        }
        // An allow is case-sensitive: /PUBLIC is not /public, and falls to the mode.
        let n = NetRule::parse(
            "api.example",
            &["allow GET /public/**".into(), "deny * /**".into()],
        )
        .unwrap();
        let p = Policy::new(Mode::Permissive, vec![], vec![], vec![n]);
        assert!(matches!(
            p.check("api.example", 443, "GET", "/PUBLIC/x"),
            Decision::Deny { .. }
        ));
        assert_eq!(
            p.check("api.example", 443, "GET", "/public/x"),
            Decision::Allow
        );
    }

    /// THREATS A5 (review of #23: rules walked around): an action moat could not work out never slips past a
    /// rule that names actions; it is refused with a message that says so. A `service:*`
    /// rule reached first still decides.
    #[test]
    fn aws_unknown_action_fails_closed() {
        let n = NetRule::parse(
            "*.amazonaws.com",
            &[
                "deny iam:Delete*".into(),
                "allow s3:*".into(),
                "allow *:*".into(),
            ],
        )
        .unwrap();
        let p = Policy::new(Mode::Permissive, vec![], vec![], vec![n]);
        let Decision::Deny { rule, message, .. } =
            p.check_aws("iam.amazonaws.com", 443, "iam", None)
        else {
            panic!("an unknown iam action passed deny iam:Delete*");
        };
        assert_eq!(rule, "deny iam:Delete*");
        assert!(message.contains("could not be determined"), "{message}");
        assert_eq!(
            p.check_aws("iam.amazonaws.com", 443, "iam", Some("ListRoles")),
            Decision::Allow
        );
        assert_eq!(
            p.check_aws("s3.amazonaws.com", 443, "s3", None),
            Decision::Allow
        );
        assert_eq!(
            p.check_aws("lambda.us-east-1.amazonaws.com", 443, "lambda", None),
            Decision::Allow
        );
        let n = NetRule::parse("*.amazonaws.com", &["deny *:Delete*".into()]).unwrap();
        let p = Policy::new(Mode::Permissive, vec![], vec![], vec![n]);
        assert!(matches!(
            p.check_aws("lambda.us-east-1.amazonaws.com", 443, "lambda", None),
            Decision::Deny { .. }
        ));
    }

    /// Issue #23: `service:Action` rules for AWS requests (THREATS A5-style: a rule cannot be
    /// walked around by case).
    #[test]
    fn aws_action_rules_first_match_wins() {
        let n = NetRule::parse(
            "*.amazonaws.com",
            &[
                "allow s3:GetObject".into(),
                "deny s3:*".into(),
                "deny iam:*".into(),
                "deny *:Delete*".into(),
            ],
        )
        .unwrap();
        let p = Policy::new(Mode::Permissive, vec![], vec![], vec![n]);
        let h = "bucket.s3.us-east-1.amazonaws.com";
        assert_eq!(
            p.check_aws(h, 443, "s3", Some("GetObject")),
            Decision::Allow
        );
        assert_eq!(
            p.check_aws(h, 443, "S3", Some("getobject")),
            Decision::Allow
        );
        let Decision::Deny { rule, message, .. } = p.check_aws(h, 443, "s3", Some("PutObject"))
        else {
            panic!("PutObject allowed");
        };
        assert_eq!(rule, "deny s3:*");
        assert!(message.contains("s3:putobject"), "{message}");
        assert_ne!(
            p.check_aws("iam.amazonaws.com", 443, "iam", None),
            Decision::Allow
        );
        assert_ne!(
            p.check_aws(
                "dynamodb.us-east-1.amazonaws.com",
                443,
                "dynamodb",
                Some("DeleteTable")
            ),
            Decision::Allow
        );
        assert_eq!(
            p.check_aws(
                "dynamodb.us-east-1.amazonaws.com",
                443,
                "dynamodb",
                Some("GetItem")
            ),
            Decision::Allow
        );
        // Another host's rules do not apply; path checks ignore action rules.
        assert_eq!(
            p.check_aws("example.com", 443, "s3", Some("PutObject")),
            Decision::Allow
        );
        assert_eq!(p.check(h, 443, "PUT", "/k"), Decision::Allow);
        for bad in [
            "deny s3",
            "deny :x",
            "deny s3:Get*Object",
            "block s3:x",
            "deny s_3:x",
        ] {
            assert!(NetRule::parse("a.example", &[bad.into()]).is_err(), "{bad}");
        }
    }
}
