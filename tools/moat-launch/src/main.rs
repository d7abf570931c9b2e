//! moat-launch: runs. Config, image build, the container's lifecycle through the Docker Engine
//! API, and the wiring of moat-grant, moat-proxy and moat-audit for one run; plus list, logs,
//! trace, stop, destroy, clean and status.
#![forbid(unsafe_code)]

mod agent;
mod agent_run;
mod args;
mod attach;
mod audit_writer;
mod aws;
mod budget;
mod commands;
mod config;
mod decoys;
mod deps;
mod docker;
mod exectrace;
mod guard;
mod image;
mod local_mcp;
mod log_chunks;
mod mcp;
mod network;
mod plugins;
mod policy;
mod progress;
mod promote;
mod refresh;
mod report;
mod run;
mod secrets_socket;
mod services;
mod snapshot;
mod ssh_client;
mod store;
mod system;
mod timings;
mod triggers;
mod trust;
mod tty;
mod unix_http;
mod volumes;
mod worktree;
mod yaml_lines;

use args::Command;
use moat_core::{Error, Result, cli};

fn main() {
    cli::run_main("moat-launch", real_main)
}

fn runtime() -> Result<tokio::runtime::Runtime> {
    tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .map_err(|e| Error::io("starting the runtime", e))
}

fn exit_with(code: i32) -> ! {
    use std::io::Write;
    let _ = std::io::stdout().flush();
    std::process::exit(code)
}

fn real_main() -> Result<()> {
    match args::parse_from(std::env::args_os().skip(1))? {
        Command::Help => cli::write_stdout(format!("{}\n\n{}", args::USAGE, args::HELP).as_bytes()),
        Command::Version => cli::print_version("moat-launch"),
        Command::Run(r) => exit_with(run::start(*r)?),
        Command::Supervise(id) => runtime()?.block_on(run::supervise(&id)),
        Command::Sessions { cli, json } => commands::sessions(&cli, json),
        Command::Attach { run, interactive } => {
            let store = commands::store()?;
            commands::reconcile_all(&store)?;
            let m = store.resolve(run.as_deref())?;
            if m.state.is_terminal() {
                return Err(Error::no(format!(
                    "{} ({}) has ended ({}); see `moat logs {}`",
                    m.name,
                    m.id,
                    m.state.as_str(),
                    m.id
                )));
            }
            // An interactive run's TTY takes this terminal; without one on stdin (a pipe,
            // a script) the output is followed as for any run, unless -i insists.
            let take_tty = match interactive {
                Some(i) => i,
                None => cli::stdin_is_terminal(),
            };
            if m.interactive && take_tty {
                exit_with(tty::attach(&store, &m.id, false)?)
            }
            if m.interactive && interactive.is_none() {
                eprintln!(
                    "moat: {} has a TTY, and stdin is not a terminal: following its output (`moat attach -i {}` takes the TTY)",
                    m.name, m.id
                );
            }
            exit_with(attach::follow(&store, &m.id, false)?)
        }
        Command::List { json, promoted } => commands::list(json, promoted),
        Command::Status { json } => commands::status(json),
        Command::Logs { run, lines, follow } => commands::logs(run.as_deref(), lines, follow),
        Command::Trace {
            run,
            json,
            usage: true,
            ..
        } => budget::trace_usage(run.as_deref(), json),
        Command::Trace {
            run,
            json,
            exec: true,
            ..
        } => exectrace::command(run.as_deref(), json),
        Command::Trace {
            run, verbose, json, ..
        } => commands::trace(run.as_deref(), verbose, json),
        Command::Report { run, output } => report::command(run.as_deref(), output.as_deref()),
        Command::Stop(run) => commands::stop(run.as_deref()),
        Command::Destroy(run) => commands::destroy(run.as_deref()),
        Command::Clean { force } => commands::clean(force),
        Command::Volumes(v) => {
            // A run whose supervisor died must not count as using its volumes.
            let store = commands::store()?;
            commands::reconcile_all(&store)?;
            volumes::command(&store, v)
        }
        Command::Snapshot(s) => commands::snapshot(s),
        Command::Promote { run, to, force } => {
            let store = commands::store()?;
            commands::reconcile_all(&store)?;
            promote::promote(&store, &run, to.as_deref(), force)
        }
        Command::System {
            containers,
            json,
            all,
        } => {
            let store = commands::store()?;
            commands::reconcile_all(&store)?;
            system::command(&store, containers, json, all)
        }
        Command::Deps(args::DepsCmd::List { json }) => deps::list(json),
        Command::Deps(args::DepsCmd::Info { name, json }) => deps::info(&name, json),
        Command::Trust(t) => trust::command(t),
        Command::Policy(args::PolicyCmd::Suggest { run, out }) => {
            policy::suggest_cmd(run.as_deref(), out.as_deref())
        }
        Command::Policy(args::PolicyCmd::Check { run, config }) => {
            exit_with(policy::check_cmd(run.as_deref(), config.as_deref())?)
        }
        Command::Bootstrap { force } => runtime()?.block_on(image::bootstrap(force)),
    }
}
