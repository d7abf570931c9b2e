//! moat-audit (skeleton: the tool's own issue fills it in).
#![forbid(unsafe_code)]

use moat_core::{Result, cli};

const USAGE: &str = "usage: moat-audit [--help] [--version] COMMAND [ARGS...]";

fn main() {
    cli::run_main("moat-audit", run)
}

fn run() -> Result<()> {
    use lexopt::prelude::*;
    let mut p = lexopt::Parser::from_env();
    match p.next().map_err(|e| cli::lexopt_error(e, USAGE))? {
        Some(Short('h') | Long("help")) => cli::write_stdout(format!("{USAGE}\n\nOptions:\n    -h, --help     show this help\n    -V, --version  show the version\n").as_bytes()),
        Some(Short('V') | Long("version")) => cli::print_version("moat-audit"),
        Some(a) => Err(cli::usage_error(a.unexpected().to_string(), USAGE)),
        None => Err(cli::usage_error("a command is required", USAGE)),
    }
}
