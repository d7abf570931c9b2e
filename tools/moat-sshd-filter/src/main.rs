//! moat-sshd-filter: an SSH agent that exposes only granted keys and signs only for the
//! hosts they are granted for, proven by the server's own signature over the session
//! (OpenSSH's `session-bind@openssh.com`). Private keys stay in the user's real agent.
#![forbid(unsafe_code)]

mod args;
mod bind;
mod events;
mod policy;
mod protocol;
mod server;

use moat_core::{Error, Result, cli};

const TOOL: &str = "moat-sshd-filter";

fn main() {
    cli::run_main(TOOL, run)
}

fn run() -> Result<()> {
    let cmd = args::parse(
        std::env::args_os().skip(1),
        std::env::var_os("SSH_AUTH_SOCK"),
    )?;
    match cmd {
        args::Command::Help => cli::write_stdout(args::help().as_bytes()),
        args::Command::Version => cli::print_version(TOOL),
        args::Command::Serve(s) => {
            let policy = match &s.rules {
                None => policy::Policy::load(std::io::stdin().lock(), "-")?,
                Some(p) => {
                    let f = std::fs::File::open(p)
                        .map_err(|e| Error::io(format!("opening rules {}", p.display()), e))?;
                    policy::Policy::load(std::io::BufReader::new(f), &p.display().to_string())?
                }
            };
            server::serve(server::Config {
                socket: s.socket,
                upstream: s.upstream,
                policy,
            })
        }
    }
}
