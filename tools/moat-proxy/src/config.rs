//! Arguments plus `MOAT_PROXY_*` environment become one validated [`Config`]. Rules are read
//! here, to EOF or to a `rules_end` record, before the proxy listens; an error names the line
//! and the grant, never a value. After a `rules_end` the pipe stays open: every later batch of
//! records ended by `rules_end` replaces the whole rule set (see [`Rulebook`]).

use crate::args::{ServeArgs, USAGE};
use crate::inject::Injector;
use crate::policy::{Mode, NetRule, Policy};
use moat_core::host::{HostPattern, canonical_authority, canonical_host, split_host_port};
use moat_core::rules::{InjectRule, TYPE_INJECT};
use moat_core::{Error, MoatHome, Result, cli, fsutil, jsonl};
use std::io::{BufRead, Read};
use std::net::SocketAddr;
use std::path::PathBuf;
use std::time::Duration;

pub const TYPE_NET_RULE: &str = "net_rule";
/// Ends one complete rule set on the rules pipe; the pipe may then carry replacements.
pub const TYPE_RULES_END: &str = "rules_end";

/// `--connect-to HOST:PORT:ADDR:PORT2`: requests for HOST:PORT dial ADDR:PORT2.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ConnectTo {
    pub host: String,
    pub port: u16,
    pub addr: String,
    pub addr_port: u16,
}

pub struct Config {
    pub listen: SocketAddr,
    pub token: Option<String>,
    pub injector: Injector,
    pub policy: Policy,
    pub trace: Option<PathBuf>,
    pub connect_to: Vec<ConnectTo>,
    pub extra_ca: Vec<PathBuf>,
    pub ca_dir: PathBuf,
    pub header_timeout: Duration,
    pub max_connections: usize,
    pub handshake_timeout: Duration,
    pub relays: Vec<crate::relay::Relay>,
    /// `--tunnel HOST:PORT`: CONNECT targets passed through uninspected (canonical host).
    pub tunnels: Vec<(String, u16)>,
    /// How a replacement rule set becomes injector, policy and relays.
    pub rulebook: Rulebook,
    /// The rules pipe, still open after a `rules_end`: replacements follow.
    pub updates: Option<Box<dyn BufRead + Send>>,
    /// `decoy` records of the rule set (decoy.rs).
    pub decoys: Option<std::sync::Arc<crate::decoy::Decoys>>,
    /// Budgets and prices for the model APIs (`usage_rules`, see usage.rs).
    pub usage: crate::usage::Settings,
}

/// What a rule set is combined with: the fixed policy mode and allowances and the relays
/// from the command line. A replacement swaps injections, per-host rules and pipe relays;
/// `--allow`, `--relay` and the policy mode stay as started.
#[derive(Clone)]
pub struct Rulebook {
    pub mode: Mode,
    pub allow: Vec<HostPattern>,
    pub cli_relays: Vec<crate::relay::Relay>,
}

impl Rulebook {
    /// Validate a rule set and build what the proxy serves with.
    pub fn build(&self, rules: Rules) -> Result<(Injector, Policy, Vec<crate::relay::Relay>)> {
        let (inject, net_rules, pipe_relays, aws) = rules;
        let psl = moat_core::psl::Suffixes::load();
        for r in &inject {
            for h in &r.hosts {
                if let Ok(p) = HostPattern::parse(moat_core::rules::inject_host(h).1)
                    && p.is_wildcard()
                    && let Some(s) = psl.covered_by(p.host())
                {
                    return Err(Error::data(format!(
                        "grant {}: host pattern {p} covers the public suffix {s}, where anyone can create names; list the hosts instead",
                        r.grant
                    )));
                }
            }
        }
        let mut injector = Injector::new(inject).map_err(Error::data)?;
        injector.aws = match aws {
            Some(a) => Some(std::sync::Arc::new(
                crate::awssign::Signer::new(a).map_err(Error::data)?,
            )),
            None => None,
        };
        let mut relays = crate::relay::defaults();
        relays.extend(pipe_relays);
        relays.extend(self.cli_relays.iter().cloned());
        let policy = Policy::new(
            self.mode,
            self.allow.clone(),
            injector.patterns(),
            net_rules,
        )
        .with_aws(injector.aws.clone());
        Ok((injector, policy, relays))
    }
}

/// Read one rule set from `r`: lines up to a `rules_end` record (true) or EOF (false).
/// Returns None at EOF with nothing read.
pub fn read_batch(r: &mut dyn BufRead) -> std::io::Result<Option<(String, bool)>> {
    let mut text = String::new();
    let mut any = false;
    loop {
        let mut line = String::new();
        if r.read_line(&mut line)? == 0 {
            return Ok(any.then_some((text, false)));
        }
        any = true;
        if let Ok(Some(rec)) = jsonl::parse(&line)
            && rec.kind == TYPE_RULES_END
        {
            return Ok(Some((text, true)));
        }
        text.push_str(&line);
    }
}

fn env_list(name: &str) -> Vec<String> {
    std::env::var(name)
        .ok()
        .map(|v| {
            v.split(',')
                .map(str::trim)
                .filter(|s| !s.is_empty())
                .map(String::from)
                .collect()
        })
        .unwrap_or_default()
}

fn env_nonempty(name: &str) -> Option<String> {
    std::env::var(name).ok().filter(|v| !v.trim().is_empty())
}

pub fn ca_dir(arg: Option<std::ffi::OsString>) -> Result<PathBuf> {
    match arg {
        Some(d) => Ok(PathBuf::from(d)),
        None => Ok(MoatHome::from_env()?.ca_dir()),
    }
}

impl Config {
    pub fn from_args(a: ServeArgs) -> Result<Config> {
        let listen_s = a
            .listen
            .ok_or_else(|| cli::usage_error("serve needs --listen ADDR:PORT", USAGE))?;
        let listen: SocketAddr = listen_s.parse().map_err(|_| {
            cli::usage_error(
                format!("--listen {listen_s:?}: expected IP:PORT, e.g. 127.0.0.1:0"),
                USAGE,
            )
        })?;
        let token_file = a
            .token_file
            .map(PathBuf::from)
            .or_else(|| env_nonempty("MOAT_PROXY_TOKEN_FILE").map(PathBuf::from));
        let token = match (token_file, a.no_auth) {
            (Some(_), true) => {
                return Err(cli::usage_error(
                    "--token-file and --no-auth exclude each other",
                    USAGE,
                ));
            }
            (Some(f), false) => {
                let raw = fsutil::read_secret(&f)?;
                let t = String::from_utf8(raw)
                    .map_err(|_| Error::data(format!("{}: token is not UTF-8", f.display())))?;
                let t = t.trim().to_string();
                if t.len() < 16 || t.bytes().any(|b| !b.is_ascii_graphic()) {
                    return Err(Error::data(format!(
                        "{}: the token must be at least 16 printable characters",
                        f.display()
                    )));
                }
                Some(t)
            }
            (None, true) => {
                if !listen.ip().is_loopback() {
                    return Err(cli::usage_error(
                        format!("--no-auth needs a loopback --listen address, not {listen}"),
                        USAGE,
                    ));
                }
                None
            }
            (None, false) => {
                return Err(cli::usage_error(
                    "clients must authenticate: give --token-file FILE (or --no-auth with a loopback --listen)",
                    USAGE,
                ));
            }
        };
        let mode = match a.policy.or_else(|| env_nonempty("MOAT_PROXY_POLICY")) {
            None => Mode::Permissive,
            Some(p) => match p.trim() {
                "permissive" => Mode::Permissive,
                "strict" => Mode::Strict,
                other => {
                    return Err(cli::usage_error(
                        format!("--policy {other:?}: expected permissive or strict"),
                        USAGE,
                    ));
                }
            },
        };
        let mut allow = Vec::new();
        for s in env_list("MOAT_PROXY_ALLOW").into_iter().chain(a.allow) {
            allow.push(
                HostPattern::parse(&s)
                    .map_err(|e| cli::usage_error(format!("--allow {s:?}: {e}"), USAGE))?,
            );
        }
        let mut connect_to = Vec::new();
        for s in env_list("MOAT_PROXY_CONNECT_TO")
            .into_iter()
            .chain(a.connect_to)
        {
            connect_to.push(
                parse_connect_to(&s)
                    .map_err(|e| cli::usage_error(format!("--connect-to {s:?}: {e}"), USAGE))?,
            );
        }
        let mut tunnels = Vec::new();
        for s in env_list("MOAT_PROXY_TUNNEL").into_iter().chain(a.tunnel) {
            let bad = |why: &str| cli::usage_error(format!("--tunnel {s:?}: {why}"), USAGE);
            let Some((_, p)) = s.rsplit_once(':') else {
                return Err(bad("expected HOST:PORT, such as github.com:22"));
            };
            if p.parse::<u16>().map_or(true, |p| p == 0) {
                return Err(bad("the port must be 1 to 65535"));
            }
            let (h, port) = canonical_authority(&s, 0).map_err(|e| bad(&e.to_string()))?;
            tunnels.push((h, port));
        }
        let mut extra_ca: Vec<PathBuf> = env_list("MOAT_PROXY_EXTRA_CA")
            .into_iter()
            .map(PathBuf::from)
            .collect();
        extra_ca.extend(a.extra_ca.into_iter().map(PathBuf::from));
        let trace = a
            .trace
            .map(PathBuf::from)
            .or_else(|| env_nonempty("MOAT_PROXY_TRACE").map(PathBuf::from));

        let mut updates: Option<Box<dyn BufRead + Send>> = None;
        let mut decoys = None;
        let mut usage = crate::usage::Settings::default();
        let rules = match a.rules.as_deref() {
            None => (Vec::new(), Vec::new(), Vec::new(), None),
            Some("-") => {
                let mut input: Box<dyn BufRead + Send> =
                    Box::new(std::io::BufReader::new(std::io::stdin()));
                let (s, ended) = read_batch(&mut input)
                    .map_err(|e| Error::io("reading rules from stdin", e))?
                    .unwrap_or_default();
                if ended {
                    updates = Some(input);
                }
                decoys = crate::decoy::parse(&s, "stdin")?;
                usage = crate::usage::Settings::from_rules(&s, "stdin")?;
                parse_rules(&s, "stdin")?
            }
            Some(f) => {
                let mut data = Vec::new();
                std::fs::File::open(f)
                    .and_then(|mut h| h.read_to_end(&mut data))
                    .map_err(|e| Error::io(format!("reading {f}"), e))?;
                let s = String::from_utf8(data)
                    .map_err(|_| Error::data(format!("{f}: rules are not UTF-8")))?;
                decoys = crate::decoy::parse(&s, f)?;
                usage = crate::usage::Settings::from_rules(&s, f)?;
                parse_rules(&s, f)?
            }
        };
        let mut cli_relays = Vec::new();
        for s in a.relay {
            cli_relays.push(
                crate::relay::parse_spec(&s)
                    .map_err(|e| cli::usage_error(format!("--relay {s:?}: {e}"), USAGE))?,
            );
        }
        let rulebook = Rulebook {
            mode,
            allow,
            cli_relays,
        };
        let (injector, policy, relays) = rulebook.build(rules)?;
        Ok(Config {
            listen,
            token,
            injector,
            policy,
            trace,
            connect_to,
            extra_ca,
            ca_dir: ca_dir(a.ca_dir)?,
            header_timeout: Duration::from_secs(a.header_timeout.unwrap_or(30).max(1)),
            max_connections: a.max_connections.unwrap_or(1024).max(1),
            handshake_timeout: match a.handshake_timeout {
                None => Duration::from_secs(5),
                Some(0) => return Err(Error::usage("--handshake-timeout must be at least 1")),
                Some(n) => Duration::from_secs(n),
            },
            relays,
            tunnels,
            rulebook,
            updates,
            decoys,
            usage,
        })
    }
}

/// Parse the rules pipe: `inject` and `net_rule` records; every other type is skipped.
/// Errors name the line (and grant), never the line's content: it carries secrets.
/// What the rules pipe carries for the proxy: injections, per-host rules, relays.
pub type Rules = (
    Vec<InjectRule>,
    Vec<NetRule>,
    Vec<crate::relay::Relay>,
    Option<moat_core::rules::AwsSign>,
);

pub fn parse_rules(text: &str, src: &str) -> Result<Rules> {
    let mut inject = Vec::new();
    let mut net = Vec::new();
    let mut relays = Vec::new();
    let mut aws = None;
    for (i, line) in text.lines().enumerate() {
        let n = i + 1;
        let rec = match jsonl::parse(line) {
            Ok(Some(r)) => r,
            Ok(None) => continue,
            Err(_) => {
                return Err(Error::data(format!(
                    "rules {src} line {n}: not a moat JSON record"
                )));
            }
        };
        if rec.kind == TYPE_INJECT {
            let r: InjectRule = rec
                .decode()
                .map_err(|_| Error::data(format!("rules {src} line {n}: bad inject record")))?;
            inject.push(r);
        } else if rec.kind == moat_core::rules::TYPE_AWS_SIGN {
            if aws.is_some() {
                return Err(Error::data(format!(
                    "rules {src} line {n}: a second aws_sign record"
                )));
            }
            aws =
                Some(rec.decode().map_err(|_| {
                    Error::data(format!("rules {src} line {n}: bad aws_sign record"))
                })?);
        } else if rec.kind == crate::relay::TYPE_RELAY {
            let (name, url) = (
                rec.str("name").unwrap_or_default(),
                rec.str("url").unwrap_or_default(),
            );
            let mut relay = crate::relay::parse_url(name, url)
                .map_err(|e| Error::data(format!("rules {src} line {n}: {e}")))?;
            relay.mcp = match rec.str("kind") {
                None | Some("relay") => false,
                Some("mcp") => true,
                Some(k) => {
                    return Err(Error::data(format!(
                        "rules {src} line {n}: relay kind {k:?} is neither relay nor mcp"
                    )));
                }
            };
            relays.push(relay);
        } else if rec.kind == TYPE_NET_RULE {
            let host = rec.str("host").unwrap_or_default().to_string();
            let rules: Vec<String> = rec
                .get("rules")
                .and_then(|v| serde_json::from_value(v.clone()).ok())
                .ok_or_else(|| {
                    Error::data(format!("rules {src} line {n}: net_rule needs \"rules\""))
                })?;
            net.push(
                NetRule::parse(&host, &rules)
                    .map_err(|e| Error::data(format!("rules {src} line {n}: {e}")))?,
            );
        }
    }
    Ok((inject, net, relays, aws))
}

pub fn parse_connect_to(s: &str) -> std::result::Result<ConnectTo, String> {
    // HOST:PORT:ADDR:PORT2; HOST and ADDR may be bracketed IPv6 literals.
    let (host, rest) = take_host(s)?;
    let (port, rest) = rest
        .split_once(':')
        .ok_or("expected HOST:PORT:ADDR:PORT2")?;
    let (addr, rest) = take_host(rest)?;
    let addr_port = rest;
    let (host, port) = canonical_authority(&format!("{}:{port}", bracket(host)), 443)
        .map_err(|e| e.to_string())?;
    let (_, ap) =
        split_host_port(&format!("{}:{addr_port}", bracket(addr))).map_err(|e| e.to_string())?;
    let addr = canonical_host(addr).map_err(|e| e.to_string())?;
    Ok(ConnectTo {
        host,
        port,
        addr,
        addr_port: ap.ok_or("missing PORT2")?,
    })
}

fn bracket(h: &str) -> String {
    if h.contains(':') {
        format!("[{h}]")
    } else {
        h.to_string()
    }
}

fn take_host(s: &str) -> std::result::Result<(&str, &str), String> {
    if let Some(r) = s.strip_prefix('[') {
        let end = r.find(']').ok_or("unclosed [")?;
        let rest = r[end + 1..].strip_prefix(':').ok_or("expected : after ]")?;
        Ok((&r[..end], rest))
    } else {
        s.split_once(':')
            .ok_or_else(|| "expected HOST:PORT:ADDR:PORT2".to_string())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn connect_to_forms() {
        let c = parse_connect_to("API.github.com:443:127.0.0.1:8443").unwrap();
        assert_eq!(
            c,
            ConnectTo {
                host: "api.github.com".into(),
                port: 443,
                addr: "127.0.0.1".into(),
                addr_port: 8443
            }
        );
        let c = parse_connect_to("a.example:80:[::1]:9000").unwrap();
        assert_eq!(c.addr, "::1");
        assert!(parse_connect_to("a.example:443:127.0.0.1").is_err());
        assert!(parse_connect_to("a.example:0:127.0.0.1:1").is_err());
    }

    #[test]
    fn rule_errors_never_echo_values() {
        let e = parse_rules(
            "{\"v\":1,\"type\":\"inject\",\"grant\":\"g\",\"value\":\"SECRET\"}\n",
            "stdin",
        )
        .unwrap_err();
        assert!(!e.msg.contains("SECRET"), "{}", e.msg);
        let e = parse_rules("SECRET-not-json\n", "stdin").unwrap_err();
        assert!(!e.msg.contains("SECRET"), "{}", e.msg);
        let (i, n, _, _) = parse_rules(
            "{\"v\":1,\"type\":\"env\",\"grant\":\"g\",\"name\":\"X\",\"value\":\"y\"}\n\
             {\"v\":1,\"type\":\"net_rule\",\"host\":\"api.github.com\",\"rules\":[\"allow GET /**\"]}\n",
            "stdin",
        )
        .unwrap();
        assert!(i.is_empty());
        assert_eq!(n.len(), 1);
    }

    /// An aws_sign record: its secrets never in an error; two in one set refused; its hosts
    /// are granted hosts, which a strict policy allows.
    #[test]
    fn aws_sign_records() {
        let rec = |secret: &str| {
            format!(
                "{}\n",
                serde_json::json!({"v":1,"type":"aws_sign","grant":"aws","hosts":["*.amazonaws.com"],
                    "placeholder_access_key_id":"ASIAPLACEHOLDER00000","placeholder_secret_access_key":"p",
                    "placeholder_session_token":"pt","access_key_id":"ASIAREAL000000000000",
                    "secret_access_key":secret,"session_token":"SECRET-token"})
            )
        };
        let e = parse_rules(&(rec("SECRET-a") + &rec("SECRET-b")), "stdin").unwrap_err();
        assert!(e.msg.contains("second aws_sign"), "{}", e.msg);
        assert!(!e.msg.contains("SECRET"), "{}", e.msg);
        let e = parse_rules(
            "{\"v\":1,\"type\":\"aws_sign\",\"secret_access_key\":\"SECRET\"}\n",
            "stdin",
        )
        .unwrap_err();
        assert!(e.msg.contains("bad aws_sign record") && !e.msg.contains("SECRET"));
        let book = Rulebook {
            mode: Mode::Strict,
            allow: vec![],
            cli_relays: vec![],
        };
        let (inj, policy, _) = book
            .build(parse_rules(&rec("SECRET-a"), "stdin").unwrap())
            .unwrap();
        assert_eq!(inj.grants(), vec!["aws".to_string()]);
        assert!(inj.aws.is_some());
        use crate::policy::Decision;
        assert_eq!(
            policy.check("sts.us-east-1.amazonaws.com", 443, "POST", "/"),
            Decision::Allow
        );
        assert_ne!(
            policy.check("example.com", 443, "GET", "/"),
            Decision::Allow
        );
        // A placeholder equal to the real key is refused, naming the grant only.
        let same = rec("p");
        let e = book
            .build(parse_rules(&same, "stdin").unwrap())
            .err()
            .unwrap();
        assert!(
            e.msg.contains("grant aws") && e.msg.contains("placeholder"),
            "{}",
            e.msg
        );
    }
}
