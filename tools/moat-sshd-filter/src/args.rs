//! Command line: `serve --socket PATH --rules FILE|- [--upstream PATH]`.

use moat_core::{Error, Result, cli};
use std::ffi::OsString;
use std::path::PathBuf;

pub const USAGE: &str = "\
usage: moat-sshd-filter serve --socket PATH --rules FILE|- [--upstream PATH]
       moat-sshd-filter --help | --version";

const HELP: &str = "\
Commands:
    serve    listen on PATH and answer SSH clients, forwarding what the grants
             allow to the real agent; one event record per decision on stdout

Options for serve:
    -s, --socket PATH     the agent socket to create (mode 0600)
    -r, --rules FILE      grants as printed by `moat-grant rules ssh:HOST`; - reads stdin
    -u, --upstream PATH   the real agent's socket (default: $SSH_AUTH_SOCK)

Options:
    -h, --help            show this help
    -V, --version         show the version
";

pub fn help() -> String {
    format!("moat-sshd-filter: an SSH agent that signs only for granted hosts\n\n{USAGE}\n\n{HELP}")
}

#[derive(Debug, PartialEq, Eq)]
pub enum Command {
    Help,
    Version,
    Serve(Serve),
}

#[derive(Debug, PartialEq, Eq)]
pub struct Serve {
    pub socket: PathBuf,
    /// `None` is stdin.
    pub rules: Option<PathBuf>,
    pub upstream: PathBuf,
}

pub fn parse(
    args: impl IntoIterator<Item = OsString>,
    ssh_auth_sock: Option<OsString>,
) -> Result<Command> {
    use lexopt::prelude::*;
    let mut p = lexopt::Parser::from_args(args);
    let err = |e: lexopt::Error| cli::lexopt_error(e, USAGE);
    match p.next().map_err(err)? {
        Some(Short('h') | Long("help")) => Ok(Command::Help),
        Some(Short('V') | Long("version")) => Ok(Command::Version),
        Some(Value(v)) if v == "serve" => parse_serve(p, ssh_auth_sock),
        Some(Value(v)) => Err(cli::usage_error(
            format!("unknown command {:?}", v.to_string_lossy()),
            USAGE,
        )),
        Some(a) => Err(cli::usage_error(a.unexpected().to_string(), USAGE)),
        None => Err(cli::usage_error("a command is required", USAGE)),
    }
}

fn parse_serve(mut p: lexopt::Parser, ssh_auth_sock: Option<OsString>) -> Result<Command> {
    use lexopt::prelude::*;
    let err = |e: lexopt::Error| cli::lexopt_error(e, USAGE);
    let (mut socket, mut rules, mut upstream) = (None, None, None);
    while let Some(a) = p.next().map_err(err)? {
        match a {
            Short('h') | Long("help") => return Ok(Command::Help),
            Short('s') | Long("socket") => socket = Some(PathBuf::from(p.value().map_err(err)?)),
            Short('r') | Long("rules") => rules = Some(PathBuf::from(p.value().map_err(err)?)),
            Short('u') | Long("upstream") => {
                upstream = Some(PathBuf::from(p.value().map_err(err)?))
            }
            _ => return Err(cli::usage_error(a.unexpected().to_string(), USAGE)),
        }
    }
    let socket = socket.ok_or_else(|| cli::usage_error("serve needs --socket PATH", USAGE))?;
    let rules = rules.ok_or_else(|| cli::usage_error("serve needs --rules FILE|-", USAGE))?;
    let rules = (rules.as_os_str() != "-").then_some(rules);
    let upstream =
        match upstream.or_else(|| ssh_auth_sock.filter(|s| !s.is_empty()).map(PathBuf::from)) {
            Some(u) => u,
            None => {
                return Err(Error::config("no upstream agent: SSH_AUTH_SOCK is not set")
                    .with_hint("start ssh-agent, or name its socket with --upstream PATH"));
            }
        };
    Ok(Command::Serve(Serve {
        socket,
        rules,
        upstream,
    }))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn args(a: &[&str]) -> Vec<OsString> {
        a.iter().map(OsString::from).collect()
    }

    #[test]
    fn serve_takes_its_options() {
        let c = parse(
            args(&["serve", "--socket", "/s", "-r", "-"]),
            Some("/agent".into()),
        )
        .unwrap();
        assert_eq!(
            c,
            Command::Serve(Serve {
                socket: "/s".into(),
                rules: None,
                upstream: "/agent".into()
            })
        );
        let c = parse(
            args(&["serve", "-s", "/s", "--rules=/r", "--upstream", "/u"]),
            None,
        )
        .unwrap();
        assert!(matches!(c, Command::Serve(Serve { rules: Some(_), .. })));
    }

    #[test]
    fn mistakes_are_usage_or_config_errors() {
        use moat_core::exit;
        for (a, code) in [
            (&["serve", "--rules", "-"][..], exit::USAGE),
            (&["serve", "--socket", "/s"][..], exit::USAGE),
            (
                &["serve", "--socket", "/s", "--rules", "-", "--bogus"][..],
                exit::USAGE,
            ),
            (&["frobnicate"][..], exit::USAGE),
            (&[][..], exit::USAGE),
            (
                &["serve", "--socket", "/s", "--rules", "-"][..],
                exit::CONFIG,
            ),
        ] {
            assert_eq!(parse(args(a), None).unwrap_err().code, code, "{a:?}");
        }
    }
}
