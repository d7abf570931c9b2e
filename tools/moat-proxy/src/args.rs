//! Command-line arguments: the usage text and the lexopt loop. Validation happens in
//! `config`, which also reads the `MOAT_PROXY_*` environment.

use moat_core::{Result, cli};
use std::ffi::OsString;

pub const USAGE: &str =
    "usage: moat-proxy serve --listen ADDR:PORT [--rules FILE|-] [--token-file FILE | --no-auth]
                        [--policy permissive|strict] [--allow HOST]... [--trace FILE]
                        [--connect-to HOST:PORT:ADDR:PORT2]... [--extra-ca FILE]... [--ca-dir DIR]
                        [--relay [mcp:]NAME=URL]... [--tunnel HOST:PORT]...
       moat-proxy ca-path
       moat-proxy policy-check [--policy permissive|strict] [--allow HOST]... [--granted HOST]...
       moat-proxy start|stop|router [--port PORT]
       moat-proxy status [--port PORT] [--json]
       moat-proxy [--help] [--version]";

pub const HELP: &str = "moat-proxy: the TLS-intercepting proxy that injects credentials, enforces network policy and traces requests

Commands:
    serve      read injection rules, then serve as an HTTP(S) forward proxy
    ca-path    create the interception CA if needed and print the path of its certificate
    policy-check  read net_rule records up to rules_end, then request records (a run's
               network.jsonl) on stdin; print one verdict record per request, decided by
               the same policy code serve enforces with
    start      start the hostname router in the background (no-op if it runs)
    stop       stop the hostname router
    status     say whether the router runs, where, and the routes it serves
    router     serve the hostname router in the foreground

The hostname router sends https://ENDPOINT.NAME.localhost:PORT (and plain http on the
same port) to the endpoint ENDPOINT (from ports: in moat.yaml) of the running agent NAME;
http(s)://localhost:PORT lists the running agents. It listens on 127.0.0.1 only.

Options for serve:
    -l, --listen ADDR:PORT   address to listen on (port 0 picks a free port)
    -r, --rules FILE         read inject and net_rule records from FILE (- for stdin) until EOF
    --token-file FILE        clients must send this token as proxy credentials (file mode 0600)
    --no-auth                accept clients without a token (loopback --listen only)
    --policy MODE            permissive (default) or strict
    --allow HOST             allow HOST (exact, *.suffix, optional :port); repeatable
    --trace FILE             append one JSON record per request to FILE
    --connect-to H:P:A:P2    dial A:P2 for requests to H:P (as curl's); repeatable
    --extra-ca FILE          also trust the CA certificates in FILE upstream; repeatable
    --ca-dir DIR             interception CA directory (default MOAT_HOME/proxy/ca)
    --header-timeout SECS    time a client has to send request headers (default 30)
    --handshake-timeout SECS time from accept to the first byte, and from CONNECT to the end
                             of the TLS handshake inside it (default 5)
    --max-connections N      client connections open at once (default 1024); when all are
                             taken, the oldest that has not yet sent a request or finished
                             its tunnel's TLS handshake is closed to make room
    --relay NAME=URL         serve /relay/TOKEN/NAME/... from URL; with mcp:NAME=URL, a
                             remote MCP server at /mcp/TOKEN/NAME[/...]; repeatable
    --tunnel HOST:PORT       pass CONNECT to HOST:PORT through as raw bytes, not intercepted
                             (SSH to a granted host); repeatable

Options for policy-check:
    --policy MODE            permissive (default) or strict
    --allow HOST             allow HOST, as serve's --allow; repeatable
    --granted HOST           allow HOST as a grant's host would be; repeatable

Options for start, stop, status and router:
    --port PORT              the router's port (default MOAT_PROXY_PORT, else 8080)
    --json                   status: one JSON object instead of text

Other options:
    -h, --help               show this help
    -V, --version            show the version

Environment: MOAT_HOME, MOAT_PROXY_POLICY, MOAT_PROXY_ALLOW, MOAT_PROXY_CONNECT_TO,
MOAT_PROXY_EXTRA_CA, MOAT_PROXY_TRACE, MOAT_PROXY_TOKEN_FILE, MOAT_PROXY_TUNNEL, MOAT_PROXY_PORT,
SSL_CERT_FILE.
";

#[derive(Debug, Default)]
pub struct ServeArgs {
    pub listen: Option<String>,
    pub rules: Option<String>,
    pub token_file: Option<OsString>,
    pub no_auth: bool,
    pub policy: Option<String>,
    pub allow: Vec<String>,
    pub trace: Option<OsString>,
    pub connect_to: Vec<String>,
    pub extra_ca: Vec<OsString>,
    pub ca_dir: Option<OsString>,
    pub header_timeout: Option<u64>,
    pub max_connections: Option<usize>,
    pub handshake_timeout: Option<u64>,
    pub relay: Vec<String>,
    pub tunnel: Vec<String>,
}

#[derive(Debug, Clone, Copy, PartialEq)]
pub enum RouterCmd {
    Start,
    Stop,
    Status,
    Serve,
}

pub enum Command {
    Serve(Box<ServeArgs>),
    PolicyCheck(crate::policycheck::Args),
    CaPath {
        ca_dir: Option<OsString>,
    },
    Router {
        cmd: RouterCmd,
        port: Option<String>,
        json: bool,
    },
    Done,
}

fn string(v: OsString, what: &str) -> Result<String> {
    v.into_string()
        .map_err(|_| cli::usage_error(format!("{what}: not valid UTF-8"), USAGE))
}

pub fn parse() -> Result<Command> {
    use lexopt::prelude::*;
    let mut p = lexopt::Parser::from_env();
    let le = |e: lexopt::Error| cli::lexopt_error(e, USAGE);
    match p.next().map_err(le)? {
        Some(Short('h') | Long("help")) => {
            cli::write_stdout(HELP.as_bytes())?;
            Ok(Command::Done)
        }
        Some(Short('V') | Long("version")) => {
            cli::print_version("moat-proxy")?;
            Ok(Command::Done)
        }
        Some(Value(v)) if v == "serve" => parse_serve(&mut p).map(|a| Command::Serve(Box::new(a))),
        Some(Value(v)) if v == "policy-check" => {
            parse_policy_check(&mut p).map(Command::PolicyCheck)
        }
        Some(Value(v)) if v == "ca-path" => {
            let mut ca_dir = None;
            while let Some(a) = p.next().map_err(le)? {
                match a {
                    Long("ca-dir") => ca_dir = Some(p.value().map_err(le)?),
                    _ => return Err(cli::usage_error(a.unexpected().to_string(), USAGE)),
                }
            }
            Ok(Command::CaPath { ca_dir })
        }
        Some(Value(v))
            if ["start", "stop", "status", "router"]
                .iter()
                .any(|c| v == *c) =>
        {
            let cmd = match v.to_str() {
                Some("start") => RouterCmd::Start,
                Some("stop") => RouterCmd::Stop,
                Some("status") => RouterCmd::Status,
                _ => RouterCmd::Serve,
            };
            let (mut port, mut json) = (None, false);
            while let Some(a) = p.next().map_err(le)? {
                match a {
                    Long("port") => port = Some(string(p.value().map_err(le)?, "--port")?),
                    Long("json") if cmd == RouterCmd::Status => json = true,
                    Short('h') | Long("help") => {
                        cli::write_stdout(HELP.as_bytes())?;
                        return Ok(Command::Done);
                    }
                    _ => return Err(cli::usage_error(a.unexpected().to_string(), USAGE)),
                }
            }
            Ok(Command::Router { cmd, port, json })
        }
        Some(Value(v)) => Err(cli::usage_error(
            format!("unknown command {:?}", v.to_string_lossy()),
            USAGE,
        )),
        Some(a) => Err(cli::usage_error(a.unexpected().to_string(), USAGE)),
        None => Err(cli::usage_error("a command is required", USAGE)),
    }
}

fn parse_serve(p: &mut lexopt::Parser) -> Result<ServeArgs> {
    use lexopt::prelude::*;
    let le = |e: lexopt::Error| cli::lexopt_error(e, USAGE);
    let mut a = ServeArgs::default();
    while let Some(arg) = p.next().map_err(le)? {
        match arg {
            Short('l') | Long("listen") => {
                a.listen = Some(string(p.value().map_err(le)?, "--listen")?)
            }
            Short('r') | Long("rules") => {
                a.rules = Some(string(p.value().map_err(le)?, "--rules")?)
            }
            Long("token-file") => a.token_file = Some(p.value().map_err(le)?),
            Long("no-auth") => a.no_auth = true,
            Long("policy") => a.policy = Some(string(p.value().map_err(le)?, "--policy")?),
            Long("allow") => a.allow.push(string(p.value().map_err(le)?, "--allow")?),
            Long("trace") => a.trace = Some(p.value().map_err(le)?),
            Long("connect-to") => a
                .connect_to
                .push(string(p.value().map_err(le)?, "--connect-to")?),
            Long("extra-ca") => a.extra_ca.push(p.value().map_err(le)?),
            Long("ca-dir") => a.ca_dir = Some(p.value().map_err(le)?),
            Long("header-timeout") => {
                a.header_timeout = Some(p.value().map_err(le)?.parse().map_err(le)?)
            }
            Long("handshake-timeout") => {
                a.handshake_timeout = Some(p.value().map_err(le)?.parse().map_err(le)?)
            }
            Long("max-connections") => {
                a.max_connections = Some(p.value().map_err(le)?.parse().map_err(le)?)
            }
            Long("relay") => a.relay.push(string(p.value().map_err(le)?, "--relay")?),
            Long("tunnel") => a.tunnel.push(string(p.value().map_err(le)?, "--tunnel")?),
            Short('h') | Long("help") => {
                cli::write_stdout(HELP.as_bytes())?;
                std::process::exit(0);
            }
            _ => return Err(cli::usage_error(arg.unexpected().to_string(), USAGE)),
        }
    }
    Ok(a)
}

fn parse_policy_check(p: &mut lexopt::Parser) -> Result<crate::policycheck::Args> {
    use lexopt::prelude::*;
    let le = |e: lexopt::Error| cli::lexopt_error(e, USAGE);
    let mut a = crate::policycheck::Args {
        mode: crate::policy::Mode::Permissive,
        allow: vec![],
        granted: vec![],
    };
    let host = |s: String, what: &str| {
        moat_core::host::HostPattern::parse(&s)
            .map_err(|e| cli::usage_error(format!("{what} {s:?}: {e}"), USAGE))
    };
    while let Some(arg) = p.next().map_err(le)? {
        match arg {
            Long("policy") => {
                a.mode = match string(p.value().map_err(le)?, "--policy")?.as_str() {
                    "permissive" => crate::policy::Mode::Permissive,
                    "strict" => crate::policy::Mode::Strict,
                    o => {
                        return Err(cli::usage_error(
                            format!("--policy {o:?}: expected permissive or strict"),
                            USAGE,
                        ));
                    }
                }
            }
            Long("allow") => a
                .allow
                .push(host(string(p.value().map_err(le)?, "--allow")?, "--allow")?),
            Long("granted") => a.granted.push(host(
                string(p.value().map_err(le)?, "--granted")?,
                "--granted",
            )?),
            Short('h') | Long("help") => {
                cli::write_stdout(HELP.as_bytes())?;
                std::process::exit(0);
            }
            _ => return Err(cli::usage_error(arg.unexpected().to_string(), USAGE)),
        }
    }
    Ok(a)
}
