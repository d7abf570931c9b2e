//! `moat-proxy policy-check`: replay trace records against a network policy with the very
//! [`Policy`] the proxy enforces with, so `moat policy check` and `moat policy suggest` never
//! drift from what a run would meet. Standard input carries the rule records a run's rules
//! pipe would carry (`net_rule`; records of other types are ignored, and an `inject` record
//! is refused, since this mode never needs a secret), ended by `rules_end`, then `request`
//! records (a run's `network.jsonl`). One `verdict` record per request goes to stdout.
//!
//! The trace is written about requests the agent chose: every line is capped, a line that is
//! not a request record is skipped with a `verdict` of `skip`, nothing in it is trusted.

use crate::config::{Rulebook, TYPE_RULES_END};
use crate::policy::{Decision, Mode, normalize_path};
use moat_core::host::{HostPattern, canonical_authority};
use moat_core::{Error, Result, jsonl};
use std::io::{BufRead, Read, Write};

/// The longest trace line read; longer lines are skipped (the proxy writes far shorter).
const MAX_LINE: usize = 64 * 1024;

pub struct Args {
    pub mode: Mode,
    pub allow: Vec<HostPattern>,
    pub granted: Vec<HostPattern>,
}

/// Read one line of at most MAX_LINE bytes; a longer one is consumed and returned as None.
fn read_capped<R: BufRead>(r: &mut R) -> std::io::Result<Option<Option<String>>> {
    let mut buf = Vec::new();
    let n = r
        .by_ref()
        .take(MAX_LINE as u64 + 1)
        .read_until(b'\n', &mut buf)?;
    if n == 0 {
        return Ok(None);
    }
    if buf.len() > MAX_LINE && !buf.ends_with(b"\n") {
        // Drop the rest of this line.
        let mut sink = Vec::new();
        loop {
            sink.clear();
            let m = r
                .by_ref()
                .take(MAX_LINE as u64)
                .read_until(b'\n', &mut sink)?;
            if m == 0 || sink.ends_with(b"\n") {
                break;
            }
        }
        return Ok(Some(None));
    }
    Ok(Some(String::from_utf8(buf).ok()))
}

/// `scheme://authority/path?query` → (tls, host, port, path and query).
fn split_url(url: &str) -> Option<(bool, String, u16, String)> {
    let (tls, rest) = if let Some(r) = url.strip_prefix("https://") {
        (true, r)
    } else if let Some(r) = url.strip_prefix("http://") {
        (false, r)
    } else {
        return None;
    };
    let (auth, pq) = match rest.find('/') {
        Some(i) => (&rest[..i], &rest[i..]),
        None => (rest, "/"),
    };
    let (host, port) = canonical_authority(auth, if tls { 443 } else { 80 }).ok()?;
    Some((tls, host, port, pq.to_string()))
}

/// The verdict for one trace line, as a JSON value.
pub fn verdict(policy: &crate::policy::Policy, line: &str) -> serde_json::Value {
    let skip = |why: &str| serde_json::json!({"verdict": "skip", "reason": why});
    let Ok(Some(rec)) = jsonl::parse(line) else {
        return skip("not a moat JSON record");
    };
    if rec.kind != "request" {
        return skip("not a request record");
    }
    let id = rec.str("request_id").unwrap_or_default().to_string();
    let method = rec.str("method").unwrap_or_default().to_ascii_uppercase();
    let url = rec.str("url").unwrap_or_default();
    if method.is_empty() || method == "CONNECT" || !method.bytes().all(|b| b.is_ascii_graphic()) {
        return serde_json::json!({"verdict": "skip", "request_id": id, "reason": "not an HTTP request"});
    }
    let Some((_, host, port, pq)) = split_url(url) else {
        return serde_json::json!({"verdict": "skip", "request_id": id, "reason": "no http(s) URL"});
    };
    let path = pq.split('?').next().unwrap_or("/").to_string();
    let mut d = policy.check(&host, port, &method, &pq);
    if d == Decision::Allow
        && let Some((svc, act)) = rec.str("aws").and_then(|a| a.split_once(':'))
    {
        let act = (act != "?").then_some(act);
        d = policy.check_aws(&host, port, svc, act);
    }
    let (v, rule) = match d {
        Decision::Allow => ("allow", None),
        Decision::Deny { rule, .. } => ("deny", Some(rule)),
    };
    serde_json::json!({
        "verdict": v,
        "request_id": id,
        "method": method,
        "host": crate::policy::display_host(&host, port),
        "path": path,
        "norm": normalize_path(&path),
        "rule": rule,
        "was": rec.str("policy"),
        "grant": rec.str("grant"),
    })
}

pub fn run(a: Args) -> Result<()> {
    let stdin = std::io::stdin();
    let mut input = stdin.lock();
    let mut text = String::new();
    loop {
        match read_capped(&mut input).map_err(|e| Error::io("reading rules", e))? {
            None => return Err(Error::data("the rules ended without a rules_end record")),
            Some(None) => return Err(Error::data("a rule record is too long or not UTF-8")),
            Some(Some(l)) => {
                if let Ok(Some(r)) = jsonl::parse(&l) {
                    if r.kind == TYPE_RULES_END {
                        break;
                    }
                    if r.kind == moat_core::rules::TYPE_INJECT
                        || r.kind == moat_core::rules::TYPE_AWS_SIGN
                    {
                        return Err(Error::usage(
                            "policy-check takes no credentials: send net_rule records only",
                        ));
                    }
                }
                text.push_str(&l);
                if !l.ends_with('\n') {
                    text.push('\n');
                }
            }
        }
    }
    let rules = crate::config::parse_rules(&text, "stdin")?;
    let book = Rulebook {
        mode: a.mode,
        allow: a.allow,
        cli_relays: vec![],
    };
    let (_, policy, _) = book.build(rules)?;
    let policy = policy.with_granted(a.granted);
    let mut out = std::io::BufWriter::new(std::io::stdout().lock());
    loop {
        let v = match read_capped(&mut input).map_err(|e| Error::io("reading the trace", e))? {
            None => break,
            Some(None) => {
                serde_json::json!({"verdict": "skip", "reason": "line too long or not UTF-8"})
            }
            Some(Some(l)) if l.trim().is_empty() => continue,
            Some(Some(l)) => verdict(&policy, &l),
        };
        let mut m = serde_json::Map::new();
        m.insert("v".into(), 1.into());
        m.insert("type".into(), "verdict".into());
        if let serde_json::Value::Object(body) = v {
            m.extend(body);
        }
        let mut line = serde_json::to_vec(&m)?;
        line.push(b'\n');
        out.write_all(&line)
            .map_err(|e| Error::io("writing verdicts", e))?;
    }
    out.flush().map_err(|e| Error::io("writing verdicts", e))
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::policy::{NetRule, Policy};

    fn rec(method: &str, url: &str) -> String {
        serde_json::json!({"v":1,"type":"request","request_id":"req_1","method":method,"url":url,"policy":"allowed"}).to_string()
    }

    /// The replay gives the proxy's own decisions: strict hosts, per-host rules (first match
    /// wins, other spellings of a denied path denied: THREATS A5), granted hosts, ports.
    #[test]
    fn verdicts_are_the_proxys_decisions() {
        let n = NetRule::parse(
            "api.example.com",
            &["allow GET /repos/**".into(), "deny * /**".into()],
        )
        .unwrap();
        let p = Policy::new(
            Mode::Strict,
            vec![HostPattern::parse("ok.example.com").unwrap()],
            vec![],
            vec![n],
        )
        .with_granted(vec![HostPattern::parse("granted.example.com").unwrap()]);
        let v = |m: &str, u: &str| verdict(&p, &rec(m, u));
        assert_eq!(
            v("GET", "https://api.example.com/repos/a?x=1")["verdict"],
            "allow"
        );
        let d = v("POST", "https://api.example.com/repos/a");
        assert_eq!(d["verdict"], "deny");
        assert_eq!(d["rule"], "deny * /**");
        assert_eq!(d["host"], "api.example.com");
        assert_eq!(d["path"], "/repos/a");
        assert_eq!(
            v("GET", "https://api.example.com/repos/../x")["verdict"],
            "deny"
        );
        assert_eq!(v("GET", "https://OK.example.com./")["verdict"], "allow");
        assert_eq!(v("GET", "https://ok.example.com:8443/")["verdict"], "deny");
        assert_eq!(v("GET", "https://granted.example.com/")["verdict"], "allow");
        let d = v("GET", "http://new.example.com/");
        assert_eq!(d["rule"], "strict: host not in allow list");
        assert_eq!(v("CONNECT", "tcp://github.com:22")["verdict"], "skip");
        assert_eq!(v("GET", "file:///etc/passwd")["verdict"], "skip");
        assert_eq!(verdict(&p, "{\"not\":1}")["verdict"], "skip");
        // A granted host's rules apply before the grant's allowance.
        let n = NetRule::parse("granted.example.com", &["deny * /**".into()]).unwrap();
        let p = Policy::new(Mode::Strict, vec![], vec![], vec![n])
            .with_granted(vec![HostPattern::parse("granted.example.com").unwrap()]);
        assert_eq!(
            verdict(&p, &rec("GET", "https://granted.example.com/"))["verdict"],
            "deny"
        );
    }

    #[test]
    fn long_lines_are_skipped_not_read_whole() {
        let long = "x".repeat(MAX_LINE * 3);
        let data = format!("{long}\nshort\n");
        let mut r = std::io::BufReader::new(data.as_bytes());
        assert_eq!(read_capped(&mut r).unwrap(), Some(None));
        assert_eq!(read_capped(&mut r).unwrap(), Some(Some("short\n".into())));
        assert_eq!(read_capped(&mut r).unwrap(), None);
    }
}
