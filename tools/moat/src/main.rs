//! `moat`: the git-style dispatcher. `moat X ARGS` execs the tool that owns `X` with ARGS
//! untouched, or `moat-X` (a user extension) from beside this binary or from PATH.
#![forbid(unsafe_code)]

mod commands;
mod complete;
mod dispatch;
mod manpage;

use moat_core::cli;

fn main() {
    cli::run_main("moat", dispatch::main)
}
