//! `moat policy suggest RUN` and `moat policy check RUN`: least privilege learned from a
//! run's trace (`network.jsonl`).
//!
//! `suggest` writes a strict `network:` section that allows what the run did: each host it
//! reached, and for a host that saw at most [`MAX_PAIRS`] distinct method and path-prefix
//! pairs, method and path rules ending in `deny * /**`. Hosts collapse into `*.parent` only
//! when [`MIN_SIBLINGS`] or more sibling names were reached, no request under the parent was
//! denied, and the parent is not and does not hold a public suffix. Requests the run was
//! denied are never allowed (they are listed as comments).
//!
//! `check` replays the trace against a policy with `moat-proxy policy-check`: the same
//! code the proxy enforces with, never a second matcher here. `suggest` replays its own
//! suggestion the same way before printing it.
//!
//! The trace describes requests the agent chose, so it is hostile input: reading is capped,
//! every value written into YAML is a double-quoted scalar with everything outside printable
//! ASCII escaped, comments hold only such quoted values, and only plain paths (letters,
//! digits, `-._~` between single slashes) ever become rules.

use moat_core::host::canonical_authority;
use moat_core::{Error, Result, cli};
use std::collections::{BTreeMap, BTreeSet};
use std::io::{BufRead, Read, Write};
use std::path::Path;
use std::process::{Command, Stdio};

/// A host with at most this many distinct method and path-prefix pairs gets path rules.
pub const MAX_PAIRS: usize = 5;
/// Sibling names needed before they collapse into `*.parent`.
pub const MIN_SIBLINGS: usize = 3;
/// The most of a trace read, and the longest line used.
const MAX_TRACE: u64 = 64 << 20;
const MAX_LINE: usize = 16 * 1024;
/// A host that was also denied gets exact path rules; past this many it is left out.
const MAX_EXACT: usize = 50;
/// Entries listed in a comment before "and N more".
const MAX_LISTED: usize = 50;

/// One request of a trace, as `suggest` uses it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Req {
    pub method: String,
    pub host: String,
    pub port: u16,
    pub path: String,
    /// The rule that denied it; None when allowed.
    pub denied: Option<String>,
    pub grant: Option<String>,
}

/// Read a run's trace: at most MAX_TRACE bytes, lines of at most MAX_LINE. Returns the lines
/// kept and how many were dropped.
pub fn read_trace(path: &Path) -> Result<(Vec<String>, usize)> {
    read_trace_capped(path, MAX_TRACE)
}

fn read_trace_capped(path: &Path, max: u64) -> Result<(Vec<String>, usize)> {
    let f = match std::fs::File::open(path) {
        Ok(f) => f,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok((vec![], 0)),
        Err(e) => return Err(Error::io(format!("reading {}", path.display()), e)),
    };
    let mut r = std::io::BufReader::new(f.take(max));
    let (mut out, mut dropped) = (vec![], 0);
    loop {
        let mut buf = Vec::new();
        let n = r
            .by_ref()
            .take(MAX_LINE as u64 + 1)
            .read_until(b'\n', &mut buf)
            .map_err(|e| Error::io(format!("reading {}", path.display()), e))?;
        if n == 0 {
            break;
        }
        if buf.len() > MAX_LINE {
            dropped += 1;
            if !buf.ends_with(b"\n") {
                let mut rest = Vec::new();
                let _ = r.read_until(b'\n', &mut rest);
            }
            continue;
        }
        match String::from_utf8(buf) {
            Ok(s) if !s.trim().is_empty() => out.push(s.trim_end().to_string()),
            Ok(_) => {}
            Err(_) => dropped += 1,
        }
    }
    Ok((out, dropped))
}

/// A trace line as a request; None for CONNECT, tunnels and anything malformed.
pub fn parse_req(line: &str) -> Option<Req> {
    let v: serde_json::Value = serde_json::from_str(line).ok()?;
    let method = v["method"].as_str()?.to_ascii_uppercase();
    if method == "CONNECT" {
        return None;
    }
    let url = v["url"].as_str()?;
    let (tls, rest) = if let Some(r) = url.strip_prefix("https://") {
        (true, r)
    } else {
        (false, url.strip_prefix("http://")?)
    };
    let (auth, pq) = match rest.find('/') {
        Some(i) => (&rest[..i], &rest[i..]),
        None => (rest, "/"),
    };
    let (host, port) = canonical_authority(auth, if tls { 443 } else { 80 }).ok()?;
    let policy = v["policy"].as_str().unwrap_or("allowed");
    Some(Req {
        method,
        host,
        port,
        path: pq.split('?').next().unwrap_or("/").to_string(),
        denied: (policy != "allowed" && policy != "tunnel").then(|| policy.to_string()),
        grant: v["grant"].as_str().map(String::from),
    })
}

/// Refused by the proxy whatever the policy (a credential over plain HTTP, a bad AWS
/// signature): such a denial does not narrow the suggestion.
fn policy_independent(rule: &str) -> bool {
    rule.starts_with("https-only") || rule == "aws-sign"
}

/// A YAML double-quoted scalar: printable ASCII as is (but `"` and `\`), all else escaped.
pub fn yq(s: &str) -> String {
    let mut o = String::with_capacity(s.len() + 2);
    o.push('"');
    for c in s.chars() {
        match c {
            '"' => o.push_str("\\\""),
            '\\' => o.push_str("\\\\"),
            ' '..='~' => o.push(c),
            c if (c as u32) < 0x100 => o.push_str(&format!("\\x{:02X}", c as u32)),
            c if (c as u32) < 0x10000 => o.push_str(&format!("\\u{:04X}", c as u32)),
            c => o.push_str(&format!("\\U{:08X}", c as u32)),
        }
    }
    o.push('"');
    o
}

/// `host` or `host:port` as a host pattern names it (ports 80 and 443 need none).
fn shown(host: &str, port: u16) -> String {
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

/// Letters, digits and `-._~` between single slashes (not `.` or `..`): a path that is its
/// own normal form and holds no glob.
fn plain_path(p: &str) -> bool {
    p == "/"
        || (p.starts_with('/')
            && p[1..].split('/').all(|s| {
                !s.is_empty()
                    && s != "."
                    && s != ".."
                    && s.bytes().all(|b| {
                        b.is_ascii_alphanumeric() || matches!(b, b'-' | b'.' | b'_' | b'~')
                    })
            }))
}

fn token(m: &str) -> bool {
    !m.is_empty() && m.len() <= 32 && m.bytes().all(|b| b.is_ascii_uppercase() || b == b'-')
}

/// The rule path of a plain path: itself up to two segments, else `/a/b/**`.
fn prefix(p: &str) -> String {
    let segs: Vec<&str> = p.split('/').filter(|s| !s.is_empty()).collect();
    if segs.len() <= 2 {
        p.to_string()
    } else {
        format!("/{}/{}/**", segs[0], segs[1])
    }
}

#[derive(Default)]
struct HostStats {
    allowed: usize,
    /// (method, rule path) → count, for plain paths with token methods.
    pairs: BTreeMap<(String, String), usize>,
    /// (method, exact path) → count, for plain paths with token methods.
    exact: BTreeMap<(String, String), usize>,
    /// Allowed requests no rule can name (odd method or path).
    unplain: usize,
    /// (method, path, rule) → count.
    denied: BTreeMap<(String, String, String), usize>,
    grants: BTreeSet<String>,
}

enum Entry {
    Allow,
    Rules(Vec<String>),
}

pub struct Suggestion {
    pub yaml: String,
}

fn list_more(out: &mut String, n: usize) {
    if n > MAX_LISTED {
        out.push_str(&format!("#   ... and {} more\n", n - MAX_LISTED));
    }
}

/// The suggestion for these requests. `about` names the run in the heading (escaped here).
pub fn suggest(reqs: &[Req], about: &str, psl: &moat_core::psl::Suffixes) -> Suggestion {
    let mut hosts: BTreeMap<String, HostStats> = BTreeMap::new();
    let mut bare: BTreeMap<String, (String, u16)> = BTreeMap::new();
    for r in reqs {
        let key = shown(&r.host, r.port);
        bare.insert(key.clone(), (r.host.clone(), r.port));
        let h = hosts.entry(key).or_default();
        match &r.denied {
            Some(rule) if !policy_independent(rule) => {
                *h.denied
                    .entry((r.method.clone(), r.path.clone(), rule.clone()))
                    .or_default() += 1;
            }
            Some(_) => {}
            None => {
                h.allowed += 1;
                if let Some(g) = &r.grant {
                    h.grants.insert(g.clone());
                }
                if plain_path(&r.path) && token(&r.method) {
                    *h.pairs
                        .entry((r.method.clone(), prefix(&r.path)))
                        .or_default() += 1;
                    *h.exact
                        .entry((r.method.clone(), r.path.clone()))
                        .or_default() += 1;
                } else {
                    h.unplain += 1;
                }
            }
        }
    }

    let mut entries: BTreeMap<String, (Entry, String)> = BTreeMap::new();
    let mut left_out: Vec<String> = vec![];
    for (key, h) in &hosts {
        if h.allowed == 0 {
            continue;
        }
        let grants = if h.grants.is_empty() {
            String::new()
        } else {
            let g: Vec<String> = h.grants.iter().map(|g| yq(g)).collect();
            format!(", with grant {}", g.join(", "))
        };
        let why = format!("{} request(s){grants}", h.allowed);
        if !h.denied.is_empty() {
            // Denied here too: only exact paths that were allowed, then deny the rest.
            if h.exact.len() > MAX_EXACT {
                left_out.push(format!(
                    "{}: {} distinct paths beside denied requests; add it by hand",
                    yq(key),
                    h.exact.len()
                ));
                continue;
            }
            let mut rules: Vec<String> = h
                .exact
                .keys()
                .filter(|(m, p)| !h.denied.keys().any(|(dm, dp, _)| dm == m && dp == p))
                .map(|(m, p)| format!("allow {m} {p}"))
                .collect();
            rules.push("deny * /**".into());
            let mut why = format!("{why}; {} denied", h.denied.values().sum::<usize>());
            if h.unplain > 0 {
                why.push_str(&format!(
                    "; {} request(s) with paths no rule can name are not allowed",
                    h.unplain
                ));
            }
            entries.insert(key.clone(), (Entry::Rules(rules), why));
        } else if h.unplain == 0 && h.pairs.len() <= MAX_PAIRS {
            let mut rules: Vec<String> = h
                .pairs
                .iter()
                .map(|((m, p), _)| format!("allow {m} {p}"))
                .collect();
            rules.push("deny * /**".into());
            let counts: Vec<String> = h
                .pairs
                .iter()
                .map(|((m, p), n)| format!("{m} {p}: {n}"))
                .collect();
            entries.insert(
                key.clone(),
                (
                    Entry::Rules(rules),
                    format!("{why} ({})", yq(&counts.join(", "))),
                ),
            );
        } else {
            let distinct = h.pairs.len() + usize::from(h.unplain > 0);
            entries.insert(
                key.clone(),
                (
                    Entry::Allow,
                    format!("{why}, {}+ distinct method and path prefixes", distinct),
                ),
            );
        }
    }

    // Wildcards: plain allowed names (no port, not an address) grouped by parent.
    let denied_hosts: Vec<&String> = hosts
        .iter()
        .filter(|(_, h)| !h.denied.is_empty())
        .map(|(k, _)| k)
        .collect();
    let mut by_parent: BTreeMap<String, Vec<String>> = BTreeMap::new();
    for (key, (e, _)) in &entries {
        let (host, port) = &bare[key];
        if !matches!(e, Entry::Allow)
            || !(*port == 443 || *port == 80)
            || host.contains(':')
            || host.parse::<std::net::Ipv4Addr>().is_ok()
        {
            continue;
        }
        if let Some((_, parent)) = host.split_once('.')
            && parent.contains('.')
        {
            by_parent
                .entry(parent.to_string())
                .or_default()
                .push(key.clone());
        }
    }
    let mut wild: Vec<(String, String)> = vec![];
    let mut refused: Vec<String> = vec![];
    for (parent, names) in by_parent {
        if names.len() < MIN_SIBLINGS {
            continue;
        }
        let dotted = format!(".{parent}");
        if let Some(s) = psl.covered_by(&parent) {
            refused.push(format!(
                "{} names under {} not collapsed: it is or holds the public suffix {}",
                names.len(),
                yq(&parent),
                yq(&s)
            ));
            continue;
        }
        if denied_hosts.iter().any(|d| {
            let h = &bare[*d].0;
            h.ends_with(&dotted) || *h == parent
        }) {
            refused.push(format!(
                "{} names under {} not collapsed: a request under it was denied",
                names.len(),
                yq(&parent)
            ));
            continue;
        }
        let total: usize = names.iter().map(|n| hosts[n].allowed).sum();
        for n in &names {
            entries.remove(n);
        }
        wild.push((
            format!("*.{parent}"),
            format!(
                "{total} request(s) to {} sibling names: {}",
                names.len(),
                yq(&names.join(", "))
            ),
        ));
    }

    let mut y = String::new();
    y.push_str(&format!(
        "# Suggested by `moat policy suggest` from {}.\n",
        yq(about)
    ));
    y.push_str("# Paste it into moat.yaml in place of its network: section. network.rules, and\n");
    y.push_str("# allow entries with a port or a private address, are privileged: if it has\n");
    y.push_str("# any, `moat trust` will ask you to approve them.\n");
    y.push_str("network:\n  policy: strict\n");
    let allow: Vec<(&String, &String)> = wild
        .iter()
        .map(|(a, b)| (a, b))
        .chain(
            entries
                .iter()
                .filter(|(_, (e, _))| matches!(e, Entry::Allow))
                .map(|(k, (_, w))| (k, w)),
        )
        .collect();
    if allow.is_empty() {
        y.push_str("  allow: []\n");
    } else {
        y.push_str("  allow:\n");
        for (h, why) in allow {
            y.push_str(&format!("    # {why}\n    - {}\n", yq(h)));
        }
    }
    let rules: Vec<(&String, &Vec<String>, &String)> = entries
        .iter()
        .filter_map(|(k, (e, w))| match e {
            Entry::Rules(r) => Some((k, r, w)),
            Entry::Allow => None,
        })
        .collect();
    if rules.is_empty() {
        y.push_str("  rules: []\n");
    } else {
        y.push_str("  rules:\n");
        for (h, list, why) in rules {
            y.push_str(&format!("    # {why}\n    - {}:\n", yq(h)));
            for r in list {
                y.push_str(&format!("        - {}\n", yq(r)));
            }
        }
    }
    for r in &refused {
        y.push_str(&format!("# {r}\n"));
    }
    for l in &left_out {
        y.push_str(&format!("# Left out: {l}\n"));
    }
    let denied: Vec<String> = hosts
        .iter()
        .flat_map(|(k, h)| {
            h.denied.iter().map(move |((m, p, rule), n)| {
                format!(
                    "{} {} {} ({n} request(s), rule {})",
                    yq(m),
                    yq(k),
                    yq(p),
                    yq(rule)
                )
            })
        })
        .collect();
    if !denied.is_empty() {
        y.push_str("# Denied in the run, and not allowed here:\n");
        for d in denied.iter().take(MAX_LISTED) {
            y.push_str(&format!("#   {d}\n"));
        }
        list_more(&mut y, denied.len());
    }
    Suggestion { yaml: y }
}

/// The policy a `network:` section describes, as `moat-proxy policy-check` takes it.
pub struct PolicySpec {
    pub mode: String,
    pub allow: Vec<String>,
    pub net_rules: Vec<serde_json::Value>,
}

impl PolicySpec {
    pub fn from_config(c: &crate::config::Config) -> Result<PolicySpec> {
        Ok(PolicySpec {
            mode: c
                .network
                .policy
                .clone()
                .unwrap_or_else(|| "permissive".into()),
            allow: c.network.allow.clone(),
            net_rules: crate::config::net_rules(&c.network.rules)
                .map_err(|m| Error::config(format!("network.rules: {m}")))?,
        })
    }
}

/// Hosts (`host` or `host:port`) the run reached with a grant and was not denied.
fn granted_hosts(lines: &[String]) -> BTreeSet<String> {
    lines
        .iter()
        .filter_map(|l| parse_req(l))
        .filter(|r| r.grant.is_some() && r.denied.is_none())
        .map(|r| shown(&r.host, r.port))
        .collect()
}

/// Replay `lines` against `spec` with `moat-proxy policy-check`; one verdict per line.
/// Hosts the run reached with a grant count as granted, as they would be again.
pub fn replay(spec: &PolicySpec, lines: &[String]) -> Result<Vec<serde_json::Value>> {
    let granted = granted_hosts(lines);
    let mut cmd = Command::new(crate::run::tool("moat-proxy"));
    cmd.arg("policy-check").arg("--policy").arg(&spec.mode);
    for a in &spec.allow {
        cmd.arg("--allow").arg(a);
    }
    for g in &granted {
        cmd.arg("--granted").arg(g);
    }
    let mut child = cmd
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::inherit())
        .spawn()
        .map_err(|e| Error::io("running moat-proxy policy-check", e))?;
    let mut input = String::new();
    for r in &spec.net_rules {
        input.push_str(&serde_json::to_string(r)?);
        input.push('\n');
    }
    input.push_str("{\"v\":1,\"type\":\"rules_end\"}\n");
    for l in lines {
        input.push_str(l);
        input.push('\n');
    }
    let mut stdin = child.stdin.take().expect("piped");
    let writer = std::thread::spawn(move || {
        let _ = stdin.write_all(input.as_bytes());
    });
    let mut out = Vec::new();
    let mut stdout = child.stdout.take().expect("piped");
    stdout
        .read_to_end(&mut out)
        .map_err(|e| Error::io("reading moat-proxy policy-check", e))?;
    let _ = writer.join();
    let st = child
        .wait()
        .map_err(|e| Error::io("running moat-proxy policy-check", e))?;
    if !st.success() {
        return Err(Error::new(
            st.code().unwrap_or(moat_core::exit::SOFTWARE),
            "moat-proxy policy-check refused the policy",
        ));
    }
    String::from_utf8_lossy(&out)
        .lines()
        .map(|l| {
            serde_json::from_str(l).map_err(|_| Error::software("moat-proxy printed a bad verdict"))
        })
        .collect()
}

fn run_trace(run: Option<&str>) -> Result<(crate::store::Metadata, Vec<String>, usize)> {
    let store = crate::commands::store()?;
    let m = store.resolve(run)?;
    let (lines, dropped) = read_trace(&store.dir(&m.id).join("network.jsonl"))?;
    if dropped > 0 {
        eprintln!("moat: {dropped} trace line(s) too long or not UTF-8 were skipped");
    }
    Ok((m, lines, dropped))
}

/// `moat policy suggest`.
pub fn suggest_cmd(run: Option<&str>, out: Option<&Path>) -> Result<()> {
    let (m, lines, _) = run_trace(run)?;
    let reqs: Vec<Req> = lines.iter().filter_map(|l| parse_req(l)).collect();
    if reqs.is_empty() {
        return Err(Error::noinput(format!(
            "no HTTP requests recorded for {} ({}): nothing to learn from",
            m.name, m.id
        )));
    }
    let psl = moat_core::psl::Suffixes::load();
    let s = suggest(
        &reqs,
        &format!("run {} ({}), {} request(s)", m.name, m.id, reqs.len()),
        &psl,
    );
    // Replay the run against the suggestion with the proxy's own policy code.
    let (c, _) = crate::config::parse(&s.yaml, "the suggestion")
        .map_err(|e| Error::software(format!("the suggestion does not parse: {}", e.msg)))?;
    let verdicts = replay(&PolicySpec::from_config(&c)?, &lines)?;
    let mut yaml = s.yaml;
    let mut widened = 0;
    let mut narrowed = vec![];
    for v in &verdicts {
        let was = v["was"].as_str().unwrap_or("allowed");
        let denied_before = was != "allowed" && was != "tunnel" && !policy_independent(was);
        match v["verdict"].as_str() {
            Some("allow") if denied_before => widened += 1,
            Some("deny") if !denied_before && was == "allowed" => narrowed.push(format!(
                "{} {} {}",
                yq(v["method"].as_str().unwrap_or("")),
                yq(v["host"].as_str().unwrap_or("")),
                yq(v["path"].as_str().unwrap_or(""))
            )),
            _ => {}
        }
    }
    if widened > 0 {
        return Err(Error::software(format!(
            "the suggestion would allow {widened} request(s) the run was denied; not written"
        )));
    }
    if !narrowed.is_empty() {
        yaml.push_str("# Allowed in the run but not by this policy (paths no rule names):\n");
        for n in narrowed.iter().take(MAX_LISTED) {
            yaml.push_str(&format!("#   {n}\n"));
        }
        list_more(&mut yaml, narrowed.len());
    }
    match out {
        Some(p) => {
            // A bare file name is in the current directory.
            let p = &match p.parent() {
                Some(d) if !d.as_os_str().is_empty() => p.to_path_buf(),
                _ => Path::new(".").join(p),
            };
            moat_core::fsutil::write_atomic(p, yaml.as_bytes(), 0o644)?;
            eprintln!(
                "wrote {} ({} requests of {} read); put its network: section in moat.yaml (`moat trust` asks to approve network.rules)",
                p.display(),
                reqs.len(),
                m.name
            );
            Ok(())
        }
        None => cli::write_stdout(yaml.as_bytes()),
    }
}

/// `moat policy check`: the exit code (0 nothing blocked, 1 something would be).
pub fn check_cmd(run: Option<&str>, config: Option<&Path>) -> Result<i32> {
    let (m, lines, _) = run_trace(run)?;
    let (c, what) = match config {
        Some(p) => {
            let text = std::fs::read_to_string(p)
                .map_err(|e| Error::io(format!("reading {}", p.display()), e))?;
            (
                crate::config::parse(&text, &p.display().to_string())?.0,
                p.display().to_string(),
            )
        }
        None => {
            let l = crate::config::load(&m.workspace)?;
            let what = l
                .file
                .as_ref()
                .map(|f| f.display().to_string())
                .unwrap_or_else(|| format!("{} (no moat.yaml)", m.workspace.display()));
            (l.config, what)
        }
    };
    let spec = PolicySpec::from_config(&c)?;
    let verdicts = replay(&spec, &lines)?;
    let mut blocked: BTreeMap<(String, String, String, String), usize> = BTreeMap::new();
    let mut checked = 0;
    for v in &verdicts {
        match v["verdict"].as_str() {
            Some("deny") => {
                let s = |k: &str| v[k].as_str().unwrap_or("").to_string();
                *blocked
                    .entry((s("method"), s("host"), s("path"), s("rule")))
                    .or_default() += 1;
                checked += 1;
            }
            Some("allow") => checked += 1,
            _ => {}
        }
    }
    let mut out = String::new();
    if blocked.is_empty() {
        out.push_str(&format!(
            "{}: nothing of run {} ({}) would be blocked ({checked} requests checked)\n",
            what, m.name, m.id
        ));
        cli::write_stdout(out.as_bytes())?;
        return Ok(0);
    }
    let n: usize = blocked.values().sum();
    out.push_str(&format!(
        "{}: would block {n} of {checked} requests of run {} ({}):\n",
        what, m.name, m.id
    ));
    for ((method, host, path, rule), k) in &blocked {
        // Trace values are the agent's: shown escaped, never raw.
        out.push_str(&format!(
            "  {} {} {}  {k} time(s)  rule {}\n",
            yq(method),
            yq(host),
            yq(path),
            yq(rule)
        ));
    }
    cli::write_stdout(out.as_bytes())?;
    Ok(1)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn req(m: &str, host: &str, path: &str) -> Req {
        Req {
            method: m.into(),
            host: host.into(),
            port: 443,
            path: path.into(),
            denied: None,
            grant: None,
        }
    }

    fn denied(m: &str, host: &str, path: &str, rule: &str) -> Req {
        Req {
            denied: Some(rule.into()),
            ..req(m, host, path)
        }
    }

    fn psl() -> moat_core::psl::Suffixes {
        moat_core::psl::Suffixes::load()
    }

    /// The suggestion as moat-launch reads a moat.yaml: (allow, rules by host).
    fn parsed(y: &str) -> (Vec<String>, BTreeMap<String, Vec<String>>) {
        let (c, _) = crate::config::parse(y, "s.yaml").unwrap();
        assert_eq!(c.network.policy.as_deref(), Some("strict"));
        let mut rules = BTreeMap::new();
        for r in crate::config::net_rules(&c.network.rules).unwrap() {
            rules.insert(
                r["host"].as_str().unwrap().to_string(),
                serde_json::from_value(r["rules"].clone()).unwrap(),
            );
        }
        (c.network.allow, rules)
    }

    #[test]
    fn few_paths_get_rules_many_get_the_host() {
        let mut rs = vec![
            req("GET", "api.example.com", "/repos/a/b/pulls"),
            req("GET", "api.example.com", "/repos/a/b/issues"),
            req("POST", "api.example.com", "/graphql"),
            req("GET", "api.example.com", "/"),
        ];
        for i in 0..6 {
            rs.push(req("GET", "cdn.example.org", &format!("/f{i}")));
        }
        let s = suggest(&rs, "t", &psl());
        let (allow, rules) = parsed(&s.yaml);
        assert_eq!(allow, vec!["cdn.example.org"]);
        assert_eq!(
            rules["api.example.com"],
            vec![
                "allow GET /",
                "allow GET /repos/a/**",
                "allow POST /graphql",
                "deny * /**"
            ]
        );
        assert!(s.yaml.contains("# 4 request(s)"), "{}", s.yaml);
        assert!(s.yaml.contains("GET /repos/a/**: 2"), "{}", s.yaml);
        assert!(s.yaml.contains("# 6 request(s)"), "{}", s.yaml);
    }

    #[test]
    fn wildcards_need_three_siblings() {
        let two = [
            req("GET", "a.svc.example.com", "/x"),
            req("GET", "b.svc.example.com", "/x"),
        ];
        let many: Vec<Req> = (0..6)
            .map(|i| req("GET", "a.svc.example.com", &format!("/{i}")))
            .collect();
        let mut rs: Vec<Req> = two.to_vec();
        rs.extend(many.clone());
        let (allow, rules) = parsed(&suggest(&rs, "t", &psl()).yaml);
        assert!(allow.iter().all(|a| !a.contains('*')), "{allow:?}");
        assert!(rules.contains_key("b.svc.example.com"));
        // Three siblings, each reached with many paths: one wildcard.
        let mut rs = vec![];
        for h in ["a", "b", "c"] {
            for i in 0..6 {
                rs.push(req(
                    "GET",
                    &format!("{h}.svc.example.com"),
                    &format!("/{i}"),
                ));
            }
        }
        let s = suggest(&rs, "t", &psl());
        let (allow, _) = parsed(&s.yaml);
        assert_eq!(allow, vec!["*.svc.example.com"]);
        assert!(
            s.yaml.contains("18 request(s) to 3 sibling names"),
            "{}",
            s.yaml
        );
    }

    /// THREATS A8, L6: a crafted trace cannot earn a wildcard over a public suffix
    /// (names anyone can register), nor over a parent under which something was denied.
    #[test]
    fn no_wildcard_across_a_public_suffix_or_a_denial() {
        let mut rs = vec![];
        for h in ["evil1", "evil2", "evil3"] {
            for i in 0..6 {
                rs.push(req("GET", &format!("{h}.github.io"), &format!("/{i}")));
                rs.push(req("GET", &format!("{h}.co.uk"), &format!("/{i}")));
                rs.push(req(
                    "GET",
                    &format!("{h}.svc.example.com"),
                    &format!("/{i}"),
                ));
            }
        }
        rs.push(denied(
            "GET",
            "admin.svc.example.com",
            "/",
            "strict: host not in allow list",
        ));
        let s = suggest(&rs, "t", &psl());
        let (allow, rules) = parsed(&s.yaml);
        assert!(allow.iter().all(|a| !a.contains('*')), "{allow:?}");
        assert_eq!(allow.len(), 9);
        assert!(!allow.iter().any(|a| a.contains("admin")));
        assert!(!rules.contains_key("admin.svc.example.com"));
        assert!(s.yaml.contains("public suffix"), "{}", s.yaml);
        assert!(
            s.yaml.contains("a request under it was denied"),
            "{}",
            s.yaml
        );
    }

    #[test]
    fn denied_requests_are_not_allowed() {
        let rs = vec![
            req("GET", "api.example.com", "/repos/a/b/c"),
            req("GET", "api.example.com", "/repos/a/b/d"),
            denied(
                "DELETE",
                "api.example.com",
                "/repos/a/b/c",
                "deny DELETE /**",
            ),
            denied(
                "GET",
                "api.example.com",
                "/repos/a/secret",
                "deny * /repos/a/secret",
            ),
            denied(
                "GET",
                "new.example.net",
                "/",
                "strict: host not in allow list",
            ),
            // Refused whatever the policy: does not narrow anything.
            Req {
                port: 80,
                ..denied("GET", "plain.example.net", "/", "https-only: g")
            },
            Req {
                port: 80,
                ..req("GET", "plain.example.net", "/ok")
            },
        ];
        let s = suggest(&rs, "t", &psl());
        let (allow, rules) = parsed(&s.yaml);
        // Exact paths only on a host with denials: no prefix covers /repos/a/secret.
        assert_eq!(
            rules["api.example.com"],
            vec![
                "allow GET /repos/a/b/c",
                "allow GET /repos/a/b/d",
                "deny * /**"
            ]
        );
        assert!(!allow.contains(&"new.example.net".to_string()));
        assert!(!rules.contains_key("new.example.net"));
        assert!(rules.contains_key("plain.example.net"));
        assert!(
            s.yaml
                .contains("# Denied in the run, and not allowed here:")
        );
        assert!(s.yaml.contains("\"new.example.net\""));
    }

    /// THREATS L6. Hostile trace values: paths with newlines, `#`, `: `, `*`, quotes never become rules
    /// or YAML structure; the parsed suggestion has exactly the keys it should.
    #[test]
    fn crafted_paths_cannot_inject_yaml() {
        let evil = [
            "/x\n  allow:\n    - \"*.com\"",
            "/a: b",
            "/#x",
            "/a/**",
            "/*",
            "/\"q\\",
            "/a\u{2028}policy: permissive",
            "/x\r\nnetwork:",
        ];
        let mut rs: Vec<Req> = evil
            .iter()
            .map(|p| req("GET", "api.example.com", p))
            .collect();
        rs.extend(
            evil.iter()
                .map(|p| denied("POST", "api.example.com", p, &format!("deny {p}"))),
        );
        rs.push(req("GET\n- x", "odd.example.com", "/"));
        let s = suggest(&rs, "run \"x\"\nnetwork: {policy: permissive}", &psl());
        let (allow, rules) = parsed(&s.yaml);
        // A method no rule can name: the host, without rules; the paths: nothing allowed.
        assert_eq!(allow, vec!["odd.example.com"], "{}", s.yaml);
        assert_eq!(rules["api.example.com"], vec!["deny * /**"], "{}", s.yaml);
        let v: serde_json::Value = serde_saphyr::from_str(&s.yaml).unwrap();
        let keys: Vec<&String> = v.as_object().unwrap().keys().collect();
        assert_eq!(keys, vec!["network"]);
        let mut nk: Vec<&String> = v["network"].as_object().unwrap().keys().collect();
        nk.sort();
        assert_eq!(nk, vec!["allow", "policy", "rules"]);
        assert_eq!(v["network"]["policy"], "strict");
        for l in s.yaml.lines() {
            assert!(
                l.starts_with('#') || l.starts_with("network:") || l.starts_with("  "),
                "{l:?}"
            );
            assert!(l.bytes().all(|b| (b' '..=b'~').contains(&b)), "{l:?}");
        }
    }

    #[test]
    fn quoting() {
        assert_eq!(yq("a\"b\\c"), "\"a\\\"b\\\\c\"");
        assert_eq!(yq("x\ny\u{7f}"), "\"x\\x0Ay\\x7F\"");
        assert_eq!(yq("\u{2028}\u{1F600}"), "\"\\u2028\\U0001F600\"");
        let v: String = serde_saphyr::from_str(&yq("a: #b\n\u{2028}\"\\")).unwrap();
        assert_eq!(v, "a: #b\n\u{2028}\"\\");
    }

    #[test]
    fn traces_are_read_capped() {
        let d = tempfile::tempdir().unwrap();
        let p = d.path().join("network.jsonl");
        let ok = r#"{"v":1,"type":"request","method":"GET","url":"https://Api.Example.com:443/a?token=REDACTED","policy":"allowed","grant":"gh"}"#;
        let long = format!("{{\"pad\":\"{}\"}}", "x".repeat(MAX_LINE * 2));
        std::fs::write(&p, format!("{ok}\n{long}\n\n{ok}\n")).unwrap();
        let (lines, dropped) = read_trace(&p).unwrap();
        assert_eq!((lines.len(), dropped), (2, 1));
        let r = parse_req(&lines[0]).unwrap();
        assert_eq!(
            r,
            Req {
                method: "GET".into(),
                host: "api.example.com".into(),
                port: 443,
                path: "/a".into(),
                denied: None,
                grant: Some("gh".into()),
            }
        );
        assert!(
            parse_req(r#"{"method":"CONNECT","url":"tcp://h:22","policy":"tunnel"}"#).is_none()
        );
        // At most `max` bytes are read: the second record is cut, the third never seen.
        let (lines, _) = read_trace_capped(&p, ok.len() as u64 + 10).unwrap();
        assert_eq!(lines.len(), 2);
        assert!(parse_req(&lines[1]).is_none());
    }

    #[test]
    fn hosts_reached_with_a_grant_count_as_granted() {
        let l = |url: &str, grant: &str, policy: &str| {
            serde_json::json!({"method":"GET","url":url,"grant":grant,"policy":policy}).to_string()
        };
        let lines = vec![
            l("https://api.github.com/user", "github", "allowed"),
            l("https://uploads.example.com:8443/x", "up", "allowed"),
            l("https://denied.example.com/", "g", "deny * /**"),
            r#"{"method":"GET","url":"https://plain.example.com/","grant":null,"policy":"allowed"}"#
                .to_string(),
        ];
        assert_eq!(
            granted_hosts(&lines).into_iter().collect::<Vec<_>>(),
            vec!["api.github.com", "uploads.example.com:8443"]
        );
    }
}
