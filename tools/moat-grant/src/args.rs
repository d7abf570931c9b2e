//! The command line: USAGE, HELP and the lexopt loop that turns argv into a [`Command`].
//! Values are checked for shape here (host names, header names, ARNs); what needs the
//! store or the environment is checked by the command itself.

use moat_core::{Error, Result, cli};

pub const USAGE: &str = "\
usage: moat-grant github|anthropic|claude|openai|gemini [--token-stdin] [--no-validate] [--name NAME]
                  [--connect-to HOST:PORT:ADDR:PORT2]... [--extra-ca FILE]...
       moat-grant github [--scope SCOPE[,SCOPE...]] [--device] [--client-id ID] [options as above]
       moat-grant npm [--registry URL] [--token-stdin] [--no-validate] [--name NAME] [--connect-to ...]
       moat-grant ssh --host HOST [--key FINGERPRINT] [--host-key FILE] [--sshsig-namespace NS]...
       moat-grant mcp NAME [--url URL --header HEADER [--prefix PREFIX]] [--token-stdin]
       moat-grant aws --role ARN [--region R] [--session-duration D] [--external-id X] [--name NAME]
       moat-grant http NAME --host HOST[,HOST...] --header HEADER [--prefix PREFIX] [--token-stdin]
       moat-grant decoy NAME --like github|anthropic|openai|aws|npm|http [--no-store]
       moat-grant list [--json]
       moat-grant go-moat
       moat-grant revoke NAME...
       moat-grant rules NAME...
       moat-grant update NAME < JSON
       moat-grant refresh NAME [--if-expiring-within DURATION] [--force] [--connect-to ...] [--extra-ca FILE]";

pub const HELP: &str = "\
Store credentials for moat runs, encrypted, and hand their injection rules to the proxy.

Commands:
    github, anthropic, openai, gemini, npm   import or enter a provider's credential
    claude   the Claude subscription only (an OAuth token; stored as `claude`, provider anthropic)
    ssh      pin a key of the running SSH agent and a host's public keys
    mcp      a token for a remote MCP server (stored as mcp:NAME); what --url, --header
             and --prefix do not give is asked for on a terminal
    aws      an IAM role to assume at run time
    http     a token for any other HTTPS API
    decoy    store a decoy: shaped like a real credential, valid nowhere, bait for runs
    list     show the stored credentials (never their values)
    go-moat  show what of the Go moat's ~/.moat moat uses, and what to grant again
    revoke   remove credentials
    rules    print injection rules as JSON lines (secret; refuses a terminal)
    update   merge refreshed secret values and expiry (JSON on stdin) into a credential
    refresh  renew an OAuth sign-in at its token endpoint before it expires

Options:
    --token-stdin           read the secret from standard input instead of importing or prompting
    --no-validate           store without asking the service whether the credential is good
    --name NAME             store under NAME instead of the provider's name
    --scope S[,S...]        github: the OAuth scopes the token must have (stored as github:S)
    --device                github: sign in with GitHub's device flow (needs a terminal)
    --client-id ID          github: the OAuth app for the device flow (also $MOAT_GITHUB_CLIENT_ID)
    --registry URL          npm: the registry the token is for (with --token-stdin or a prompt)
    --host HOST             ssh: the server; http: comma-separated host patterns
    --key FINGERPRINT       ssh: the agent key to use (SHA256:...)
    --host-key FILE         ssh: pin the host keys in FILE instead of ~/.ssh/known_hosts
    --sshsig-namespace NS   ssh: also let the key make SSHSIG signatures for NS (e.g. git)
    --url URL               mcp: the server's URL
    --header HEADER         mcp, http: the header that carries the secret
    --prefix PREFIX         mcp, http: text put before the secret (e.g. 'Bearer ')
    --role ARN              aws: the role to assume
    --region R              aws: the STS region (default us-east-1)
    --session-duration D    aws: session length, e.g. 15m, 1h (default 15m)
    --external-id X         aws: the external id the role requires
    --like KIND             decoy: the credential it looks like
    --no-store              decoy: print a fresh decoy record (values included), store nothing
    --json                  list: print JSON lines
    --if-expiring-within D  refresh: only when the access token expires within D (default 10m)
    --force                 refresh: even when the access token is not about to expire
    --connect-to H:P:A:P2   connect to A:P2 for H:P, as curl does (also $MOAT_PROXY_CONNECT_TO)
    --extra-ca FILE         also trust the CA certificates in FILE (also $MOAT_PROXY_EXTRA_CA)
    -h, --help              show this help
    -V, --version           show the version
";

/// What to do.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Command {
    Grant(Box<Grant>),
    List {
        json: bool,
    },
    Revoke(Vec<String>),
    Rules(Vec<String>),
    Update(String),
    Refresh(Box<Refresh>),
    /// `decoy NAME --like KIND [--no-store]` (decoy.rs).
    Decoy {
        name: String,
        like: String,
        no_store: bool,
    },
    /// `go-moat`: the Go moat's state, as the first-use notice tells it (gomoat.rs).
    GoMoat,
    Help,
    Version,
}

/// A `moat-grant PROVIDER ...` invocation: the provider and every option it may take.
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub struct Grant {
    pub provider: String,
    /// The positional NAME of `mcp` and `http`.
    pub arg_name: Option<String>,
    pub name: Option<String>,
    pub token_stdin: bool,
    pub no_validate: bool,
    pub registry: Option<String>,
    pub hosts: Vec<String>,
    pub key: Option<String>,
    pub host_key: Option<String>,
    pub sshsig_namespaces: Vec<String>,
    pub url: Option<String>,
    pub header: Option<String>,
    pub prefix: Option<String>,
    pub role: Option<String>,
    pub region: Option<String>,
    pub session_duration: Option<String>,
    pub external_id: Option<String>,
    pub connect_to: Vec<String>,
    pub extra_ca: Vec<String>,
    /// github: `--device`, `--client-id`, `--scope` (see `device.rs`).
    pub device: bool,
    pub client_id: Option<String>,
    pub scopes: Vec<String>,
}

/// A `moat-grant refresh NAME ...` invocation.
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub struct Refresh {
    pub name: String,
    pub within: Option<String>,
    pub force: bool,
    pub connect_to: Vec<String>,
    pub extra_ca: Vec<String>,
}

pub const PROVIDERS: &[&str] = &[
    "github",
    "anthropic",
    // The Claude subscription: stored as an `anthropic` credential named `claude`.
    "claude",
    "openai",
    "gemini",
    "npm",
    "ssh",
    "mcp",
    "aws",
    "http",
    crate::decoy::PROVIDER,
];

fn usage(msg: impl Into<String>) -> Error {
    cli::usage_error(msg, USAGE)
}

pub fn parse_from_env() -> Result<Command> {
    parse(lexopt::Parser::from_env())
}

#[cfg(test)]
pub fn parse_args<I: IntoIterator<Item = &'static str>>(args: I) -> Result<Command> {
    parse(lexopt::Parser::from_args(args))
}

fn parse(mut p: lexopt::Parser) -> Result<Command> {
    use lexopt::prelude::*;
    let first = p.next().map_err(|e| cli::lexopt_error(e, USAGE))?;
    let cmd = match first {
        None => return Err(usage("a command is required")),
        Some(Short('h') | Long("help")) => return Ok(Command::Help),
        Some(Short('V') | Long("version")) => return Ok(Command::Version),
        Some(Value(v)) => v
            .into_string()
            .map_err(|_| usage("the command is not valid UTF-8"))?,
        Some(a) => return Err(usage(a.unexpected().to_string())),
    };
    match cmd.as_str() {
        "go-moat" => {
            if let Some(a) = p.next().map_err(|e| cli::lexopt_error(e, USAGE))? {
                return match a {
                    Short('h') | Long("help") => Ok(Command::Help),
                    _ => Err(usage(a.unexpected().to_string())),
                };
            }
            Ok(Command::GoMoat)
        }
        "list" => {
            let mut json = false;
            while let Some(a) = p.next().map_err(|e| cli::lexopt_error(e, USAGE))? {
                match a {
                    Long("json") => json = true,
                    Short('h') | Long("help") => return Ok(Command::Help),
                    _ => return Err(usage(a.unexpected().to_string())),
                }
            }
            Ok(Command::List { json })
        }
        "revoke" | "rules" => {
            let mut names = Vec::new();
            while let Some(a) = p.next().map_err(|e| cli::lexopt_error(e, USAGE))? {
                match a {
                    Value(v) => names.push(
                        v.into_string()
                            .map_err(|_| usage("a name is not valid UTF-8"))?,
                    ),
                    Short('h') | Long("help") => return Ok(Command::Help),
                    _ => return Err(usage(a.unexpected().to_string())),
                }
            }
            if names.is_empty() {
                return Err(usage(format!("{cmd}: name a credential")));
            }
            Ok(if cmd == "revoke" {
                Command::Revoke(names)
            } else {
                Command::Rules(names)
            })
        }
        "update" => {
            let mut name = None;
            while let Some(a) = p.next().map_err(|e| cli::lexopt_error(e, USAGE))? {
                match a {
                    Value(v) if name.is_none() => {
                        name = Some(
                            v.into_string()
                                .map_err(|_| usage("the name is not valid UTF-8"))?,
                        )
                    }
                    Short('h') | Long("help") => return Ok(Command::Help),
                    _ => return Err(usage(a.unexpected().to_string())),
                }
            }
            Ok(Command::Update(
                name.ok_or_else(|| usage("update: name a credential"))?,
            ))
        }
        "refresh" => parse_refresh(p),
        "decoy" => parse_decoy(p),
        c if PROVIDERS.contains(&c) => parse_grant(c, p),
        c if c.starts_with("github:") => Err(usage(format!(
            "{c:?} is the name a scoped grant is stored under: store it with `moat grant github --scope {}`",
            &c["github:".len()..]
        ))),
        other => Err(usage(format!(
            "unknown command or provider {other:?} (providers: {})",
            PROVIDERS.join(", ")
        ))),
    }
}

fn parse_grant(provider: &str, mut p: lexopt::Parser) -> Result<Command> {
    use lexopt::prelude::*;
    let mut g = Grant {
        provider: provider.to_string(),
        ..Grant::default()
    };
    let s = |p: &mut lexopt::Parser| -> Result<String> {
        let v = p.value().map_err(|e| cli::lexopt_error(e, USAGE))?;
        v.into_string()
            .map_err(|_| usage("an option value is not valid UTF-8"))
    };
    // Which options a provider takes; anything else is a usage error, so a typo never
    // silently changes what gets stored.
    let allowed: &[&str] = match provider {
        "github" => &[
            "name",
            "token-stdin",
            "no-validate",
            "connect-to",
            "extra-ca",
            "device",
            "client-id",
            "scope",
        ],
        "anthropic" | "claude" | "openai" | "gemini" => &[
            "name",
            "token-stdin",
            "no-validate",
            "connect-to",
            "extra-ca",
        ],
        "npm" => &[
            "name",
            "token-stdin",
            "no-validate",
            "registry",
            "connect-to",
            "extra-ca",
        ],
        "ssh" => &["host", "key", "host-key", "sshsig-namespace", "no-validate"],
        "mcp" => &["url", "header", "prefix", "token-stdin", "no-validate"],
        "aws" => &[
            "role",
            "region",
            "session-duration",
            "external-id",
            "name",
            "no-validate",
        ],
        "http" => &["host", "header", "prefix", "token-stdin", "no-validate"],
        _ => &[],
    };
    while let Some(a) = p.next().map_err(|e| cli::lexopt_error(e, USAGE))? {
        if let Long(l) = &a
            && !allowed.contains(l)
            && *l != "help"
        {
            return Err(usage(format!("{provider} does not take --{l}")));
        }
        match a {
            Short('h') | Long("help") => return Ok(Command::Help),
            Long("name") => g.name = Some(s(&mut p)?),
            Long("token-stdin") => g.token_stdin = true,
            Long("no-validate") => g.no_validate = true,
            Long("registry") => g.registry = Some(s(&mut p)?),
            Long("host") => {
                for h in s(&mut p)?.split(',') {
                    if !h.trim().is_empty() {
                        g.hosts.push(h.trim().to_string());
                    }
                }
            }
            Long("key") => g.key = Some(s(&mut p)?),
            Long("host-key") => g.host_key = Some(s(&mut p)?),
            Long("sshsig-namespace") => g.sshsig_namespaces.push(s(&mut p)?),
            Long("url") => g.url = Some(s(&mut p)?),
            Long("header") => g.header = Some(s(&mut p)?),
            Long("prefix") => g.prefix = Some(s(&mut p)?),
            Long("role") => g.role = Some(s(&mut p)?),
            Long("region") => g.region = Some(s(&mut p)?),
            Long("session-duration") => g.session_duration = Some(s(&mut p)?),
            Long("external-id") => g.external_id = Some(s(&mut p)?),
            Long("connect-to") => g.connect_to.push(s(&mut p)?),
            Long("extra-ca") => g.extra_ca.push(s(&mut p)?),
            Long("device") => g.device = true,
            Long("client-id") => g.client_id = Some(s(&mut p)?),
            Long("scope") => {
                for sc in s(&mut p)?.split([',', ' ']) {
                    if !sc.is_empty() && !g.scopes.iter().any(|x| x == sc) {
                        g.scopes.push(sc.to_string());
                    }
                }
            }
            Value(v) if (provider == "mcp" || provider == "http") && g.arg_name.is_none() => {
                g.arg_name = Some(
                    v.into_string()
                        .map_err(|_| usage("the name is not valid UTF-8"))?,
                )
            }
            _ => return Err(usage(a.unexpected().to_string())),
        }
    }
    match provider {
        "ssh" if g.hosts.len() != 1 => {
            return Err(usage("ssh needs exactly one --host HOST"));
        }
        "mcp" | "http" if g.arg_name.is_none() => {
            return Err(usage(format!("{provider} needs a NAME")));
        }
        "http" if g.hosts.is_empty() => return Err(usage("http needs --host HOST[,HOST...]")),
        "http" if g.header.is_none() => return Err(usage("http needs --header HEADER")),
        "aws" if g.role.is_none() => return Err(usage("aws needs --role ARN")),
        _ => {}
    }
    Ok(Command::Grant(Box::new(g)))
}

fn parse_decoy(mut p: lexopt::Parser) -> Result<Command> {
    use lexopt::prelude::*;
    let (mut name, mut like, mut no_store) = (None, None, false);
    while let Some(a) = p.next().map_err(|e| cli::lexopt_error(e, USAGE))? {
        match a {
            Short('h') | Long("help") => return Ok(Command::Help),
            Long("like") => {
                let v = p.value().map_err(|e| cli::lexopt_error(e, USAGE))?;
                like = Some(
                    v.into_string()
                        .map_err(|_| usage("--like is not valid UTF-8"))?,
                )
            }
            Long("no-store") => no_store = true,
            Value(v) if name.is_none() => {
                name = Some(
                    v.into_string()
                        .map_err(|_| usage("the name is not valid UTF-8"))?,
                )
            }
            _ => return Err(usage(a.unexpected().to_string())),
        }
    }
    let like = like.ok_or_else(|| {
        usage(format!(
            "decoy needs --like {}",
            crate::decoy::KINDS.join("|")
        ))
    })?;
    if !crate::decoy::KINDS.contains(&like.as_str()) {
        return Err(usage(format!(
            "--like {like:?}: expected one of {}",
            crate::decoy::KINDS.join(", ")
        )));
    }
    Ok(Command::Decoy {
        name: name.ok_or_else(|| usage("decoy needs a NAME"))?,
        like,
        no_store,
    })
}

fn parse_refresh(mut p: lexopt::Parser) -> Result<Command> {
    use lexopt::prelude::*;
    let mut r = Refresh::default();
    let mut name = None;
    let s = |p: &mut lexopt::Parser| -> Result<String> {
        let v = p.value().map_err(|e| cli::lexopt_error(e, USAGE))?;
        v.into_string()
            .map_err(|_| usage("an option value is not valid UTF-8"))
    };
    while let Some(a) = p.next().map_err(|e| cli::lexopt_error(e, USAGE))? {
        match a {
            Short('h') | Long("help") => return Ok(Command::Help),
            Long("if-expiring-within") => r.within = Some(s(&mut p)?),
            Long("force") => r.force = true,
            Long("connect-to") => r.connect_to.push(s(&mut p)?),
            Long("extra-ca") => r.extra_ca.push(s(&mut p)?),
            Value(v) if name.is_none() => {
                name = Some(
                    v.into_string()
                        .map_err(|_| usage("the name is not valid UTF-8"))?,
                )
            }
            _ => return Err(usage(a.unexpected().to_string())),
        }
    }
    r.name = name.ok_or_else(|| usage("refresh: name a credential"))?;
    Ok(Command::Refresh(Box::new(r)))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn providers_and_commands_parse() {
        assert_eq!(
            parse_args(["list", "--json"]).unwrap(),
            Command::List { json: true }
        );
        assert_eq!(
            parse_args(["revoke", "ssh:github.com"]).unwrap(),
            Command::Revoke(vec!["ssh:github.com".into()])
        );
        let Command::Grant(g) = parse_args([
            "http",
            "dd",
            "--host",
            "a.example,*.b.example",
            "--header",
            "DD-API-KEY",
        ])
        .unwrap() else {
            panic!()
        };
        assert_eq!(g.arg_name.as_deref(), Some("dd"));
        assert_eq!(g.hosts, vec!["a.example", "*.b.example"]);
        let Command::Grant(g) = parse_args([
            "github",
            "--scope",
            "repo,read:org",
            "--scope",
            "repo",
            "--device",
            "--client-id",
            "abc",
        ])
        .unwrap() else {
            panic!()
        };
        assert_eq!(g.scopes, vec!["repo", "read:org"]);
        assert!(g.device);
        assert_eq!(g.client_id.as_deref(), Some("abc"));
    }

    #[test]
    fn bad_command_lines_are_usage_errors() {
        for args in [
            &["frobnicate"][..],
            &["rules"],
            &["github", "--host", "x"],
            &["ssh"],
            &["http", "x", "--header", "X"],
            &["aws"],
            &["mcp", "--url", "https://a"],
            &["refresh"],
            &["refresh", "a", "b"],
            &["refresh", "a", "--if-expiring-within"],
            &["ssh", "--host", "h", "--connect-to", "a:1:b:2"],
            &["decoy", "x"],
            &["decoy", "--like", "github"],
            &["decoy", "x", "--like", "gitlab"],
            &["anthropic", "--scope", "repo"],
            &["github:repo"],
            &["openai", "--device"],
        ] {
            let e = parse_args(args.iter().copied()).unwrap_err();
            assert_eq!(e.code, 64, "{args:?}: {}", e.msg);
        }
    }
}
