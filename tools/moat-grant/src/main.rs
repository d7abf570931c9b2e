//! moat-grant: the encrypted credential store and its providers. `main` only wires: parse
//! the command line, run the command, and let `moat_core::cli` turn errors into exit codes.
#![forbid(unsafe_code)]

mod args;
mod commands;
mod decoy;
mod device;
mod gomoat;
mod input;
mod key;
mod list;
mod net;
mod providers;
mod refresh;
mod rules;
mod store;
mod validate;

use args::Command;
use moat_core::{Result, cli};

fn main() {
    cli::run_main("moat-grant", run)
}

fn run() -> Result<()> {
    let cmd = args::parse_from_env()?;
    // `list --json` is read by programs, which may not show its standard error.
    if !matches!(
        cmd,
        Command::Help | Command::Version | Command::GoMoat | Command::List { json: true }
    ) {
        gomoat::notice_once();
    }
    match cmd {
        Command::Help => cli::write_stdout(format!("{}\n\n{}", args::USAGE, args::HELP).as_bytes()),
        Command::Version => cli::print_version("moat-grant"),
        Command::Grant(g) => commands::grant(&g),
        Command::List { json } => list::list(json),
        Command::GoMoat => gomoat::command(),
        Command::Revoke(names) => commands::revoke(&names),
        Command::Rules(names) => commands::rules(&names),
        Command::Update(name) => commands::update(&name),
        Command::Refresh(r) => commands::refresh(&r),
        Command::Decoy {
            name,
            like,
            no_store,
        } => decoy::command(&name, &like, no_store),
    }
}
