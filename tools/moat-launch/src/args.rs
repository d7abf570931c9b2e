//! Command line: USAGE, HELP and the lexopt loop. Each subcommand hands the parser to its
//! own function; the result is a `Command` that `main` dispatches. Nothing here touches the
//! filesystem or Docker.

use lexopt::prelude::*;
use moat_core::{Error, Result, cli};
use std::ffi::OsString;
use std::path::PathBuf;

pub const USAGE: &str = "usage: moat-launch run [OPTIONS] [PATH] [-- COMMAND...]
       moat-launch wt BRANCH [OPTIONS] [PATH] [-- COMMAND...]
       moat-launch claude|codex|gemini [OPTIONS] [-p PROMPT] [PATH] [-- CLI ARGS...]
       moat-launch claude|codex|gemini sessions [--json]
       moat-launch attach|logs|trace|stop|destroy [OPTIONS] [RUN]
       moat-launch report [RUN] [-o FILE]
       moat-launch list [--json] [--promoted]
       moat-launch status|clean [OPTIONS]
       moat-launch snapshot [RUN] [--label TEXT] | snapshot list [RUN] [--json]
       moat-launch snapshot restore RUN SNAPSHOT [--force] [--json]
       moat-launch promote RUN [--to DIR] [--force]
       moat-launch system images|containers [--json] [--all]
       moat-launch image bootstrap [--force]
       moat-launch volumes [ls [--json] | rm NAME... [--force] | prune [--all] [--force]]
       moat-launch deps [list [--json] | info NAME [--json]]
       moat-launch trust [PATH] [--yes] | trust --list [--json] | trust --revoke [PATH]
       moat-launch policy suggest [RUN] [-o FILE] | policy check [RUN] [--config FILE]";

pub const HELP: &str =
    "Run a command or agent in a container whose only network path is moat's proxy.

Commands:
    run [PATH] [-- CMD...]   start a run in workspace PATH (default: .)
    wt BRANCH [PATH] [-- CMD...]  run on a git worktree of PATH for BRANCH
    claude|codex|gemini [PATH] [-- ARGS...]
                             run Claude Code, Codex or the Gemini CLI in PATH
    claude|codex|gemini sessions  list the runs whose session logs were kept
    attach [-i[=false]] [RUN]  follow a run (Ctrl+C detaches, twice stops); an interactive
                             run's TTY when stdin is a terminal (Ctrl-/ d detaches)
    list                     list runs (--promoted: the promoted copies)
    status                   show runs, images, Docker and CA health
    logs [RUN]               print a run's output
    trace [RUN]              print a run's network requests
    report [RUN]             write one HTML file showing what a run did (-o FILE)
    stop [RUN]               stop a run
    destroy [RUN]            stop a run and delete its directory
    clean                    delete stopped runs and unused moat images
    snapshot [RUN]           snapshot a run's workspace (list, restore RUN SNAPSHOT)
    promote RUN              copy a run's artifacts out of runs/ for keeps
    system images|containers the Docker images and containers moat created
    image bootstrap          build debian:bookworm-slim from Debian packages
    volumes [ls|rm NAME|prune]  list or delete the volumes kept per agent
    deps [list]              list the dependencies a run can name (kind, versions, what each gives)
    deps info NAME           show one dependency in full (image, packages, variables, ports)
    trust [PATH]             approve what PATH's moat.yaml asks for (--list, --revoke)
    policy suggest [RUN]     print the strict network: section that allows what RUN did
    policy check [RUN]       list what a policy would have blocked of RUN's requests
                             (exit 1 when something would be)

RUN is a run id, an id prefix or a name; it defaults to the latest run.

Run options:
    -g, --grant NAME         grant a stored credential (repeatable, adds to the file's)
    -e, --env KEY=VALUE      set an environment variable (repeatable)
    -m, --mount SRC:DST[:ro] bind-mount a host path (repeatable)
    -n, --name NAME          name the run
    -d, --detach             start the run and return (with -i, or an agent's CLI
                             without -p, it keeps its TTY for `attach`)
    -i, --interactive        a TTY on this terminal (Ctrl-/ d detaches, Ctrl-/ k stops)
    --rebuild                rebuild the image even if it is current
    --no-sandbox             do not use gVisor
    --policy POLICY          network policy: permissive or strict
    --allow-host HOST        allow HOST under the strict policy (repeatable)
    --decoy NAME             give the run a stored decoy credential, or `auto` (repeatable)
    --on-decoy ACTION        when a request carries a decoy: stop (default), block or log
    --runtime RUNTIME        container runtime: docker
    -w, --worktree BRANCH    run on a git worktree for BRANCH (also --wt)
    --no-snapshots           no pre-run or automatic snapshots of the workspace
    --read-only-workspace    mount the workspace read-only (also `workspace: ro`)
    --no-audit               run without an audit log (warned; recorded in metadata)
    --budget tokens=N,cost=USD,rpm=N
                             stop model requests (429) once the run has used N tokens
                             or USD dollars, or past N model requests a minute
    --allow-sensitive-mount  run even if the workspace or a mount overlaps MOAT_HOME,
                             ~/.ssh, ~/.aws or another key directory (warns)
    --timings                print each start-up stage and its duration on stderr
                             (also MOAT_TIMINGS=1)

Agent options (claude, codex, gemini; with the run options):
    -p, --prompt PROMPT      answer PROMPT and exit (non-interactive); `moat run -p`
                             runs the CLI named by the workspace's `agent:`
    --keep-prompts           keep the CLI's own permission and trust prompts
    --resume RUN             continue the session kept by RUN (needs sync_logs)

Other options:
    -n, --lines N            logs: print the last N lines
    -f, --follow             logs: keep printing until the run ends
    --network                trace: show network requests (the default)
    --usage                  trace: model token usage and spend, per model and request
    --exec                   trace: the commands the run executed (TIME PID EXIT COMMAND)
    -v, --verbose            trace: show grant, policy and errors
    --json                   list, trace, status, snapshot, system, volumes, deps: JSON lines
    --promoted               list: the promoted runs
    -o, --output FILE        report: where to write ('-': standard output; default:
                             moat-report-RUN.html on a terminal, else standard output);
                             policy suggest: write to FILE instead of standard output
    --label TEXT             snapshot: a note kept with the snapshot
    --to DIR                 promote: where to copy (default MOAT_HOME/promoted/RUN)
    --all                    system: every moat object on the engine; volumes prune: all
    --force                  clean, volumes rm|prune: do not ask; snapshot restore: even
                             while the run runs; promote: replace an earlier promoted
                             copy; image bootstrap: rebuild
    -y, --yes                trust: record the approval without asking
    --config FILE            policy check: the policy of FILE's network: section
                             (default: the run's workspace moat.yaml)
    --list                   trust: list the approvals
    --revoke                 trust: remove PATH's approval
    -h, --help               show this help
    -V, --version            show the version
";

#[derive(Debug, Default, Clone)]
pub struct RunArgs {
    pub path: Option<PathBuf>,
    pub command: Option<Vec<String>>,
    pub grants: Vec<String>,
    pub env: Vec<String>,
    pub mounts: Vec<String>,
    pub name: Option<String>,
    pub detach: bool,
    pub interactive: bool,
    pub rebuild: bool,
    pub no_sandbox: bool,
    pub policy: Option<String>,
    pub allow_hosts: Vec<String>,
    pub runtime: Option<String>,
    pub worktree: Option<String>,
    pub no_snapshots: bool,
    /// `--read-only-workspace`: mount /workspace read-only.
    pub read_only_workspace: bool,
    /// `--no-audit`: run without an audit log (loudly).
    pub no_audit: bool,
    /// `claude`, `codex` or `gemini` for the agent subcommands.
    pub agent: Option<String>,
    pub prompt: Option<String>,
    pub keep_prompts: bool,
    pub resume: Option<String>,
    /// `--allow-sensitive-mount`: only ever from the command line.
    pub allow_sensitive_mount: bool,
    /// `--decoy NAME` (repeatable; `auto`) and `--on-decoy ACTION` (decoys.rs).
    pub decoys: Vec<String>,
    pub on_decoy: Option<String>,
    /// `--budget tokens=N,cost=USD,rpm=N` (repeatable; budget.rs).
    pub budget: Vec<String>,
    /// `--timings`: start-up stages on stderr (timings.rs).
    pub timings: bool,
}

#[derive(Debug)]
pub enum PolicyCmd {
    Suggest {
        run: Option<String>,
        out: Option<PathBuf>,
    },
    Check {
        run: Option<String>,
        config: Option<PathBuf>,
    },
}

#[derive(Debug)]
pub enum Command {
    Policy(PolicyCmd),
    Help,
    Version,
    Run(Box<RunArgs>),
    Supervise(String),
    Sessions {
        cli: String,
        json: bool,
    },
    Attach {
        run: Option<String>,
        interactive: Option<bool>,
    },
    List {
        json: bool,
        promoted: bool,
    },
    Status {
        json: bool,
    },
    Logs {
        run: Option<String>,
        lines: Option<usize>,
        follow: bool,
    },
    Trace {
        run: Option<String>,
        verbose: bool,
        json: bool,
        /// `--usage`: model usage and spend instead of requests.
        usage: bool,
        /// `--exec`: the commands the run executed instead of requests.
        exec: bool,
    },
    Report {
        run: Option<String>,
        output: Option<String>,
    },
    Stop(Option<String>),
    Destroy(Option<String>),
    Clean {
        force: bool,
    },
    Bootstrap {
        force: bool,
    },
    Volumes(VolumesCmd),
    Snapshot(SnapshotCmd),
    Promote {
        run: String,
        to: Option<PathBuf>,
        force: bool,
    },
    System {
        containers: bool,
        json: bool,
        all: bool,
    },
    Deps(DepsCmd),
    Trust(crate::trust::TrustCmd),
}

#[derive(Debug)]
pub enum DepsCmd {
    List { json: bool },
    Info { name: String, json: bool },
}

#[derive(Debug)]
pub enum VolumesCmd {
    Ls { json: bool },
    Rm { names: Vec<String>, force: bool },
    Prune { force: bool, all: bool },
}

#[derive(Debug)]
pub enum SnapshotCmd {
    Create {
        run: Option<String>,
        label: Option<String>,
    },
    List {
        run: Option<String>,
        json: bool,
    },
    Restore {
        run: String,
        snapshot: String,
        force: bool,
        json: bool,
    },
}

fn usage(msg: impl Into<String>) -> Error {
    cli::usage_error(msg, USAGE)
}

fn lex(e: lexopt::Error) -> Error {
    cli::lexopt_error(e, USAGE)
}

fn string(v: OsString, what: &str) -> Result<String> {
    v.into_string()
        .map_err(|_| usage(format!("{what} is not valid UTF-8")))
}

pub fn parse_from<I>(args: I) -> Result<Command>
where
    I: IntoIterator,
    I::Item: Into<OsString>,
{
    let mut p = lexopt::Parser::from_args(args);
    match p.next().map_err(lex)? {
        Some(Short('h') | Long("help")) => Ok(Command::Help),
        Some(Short('V') | Long("version")) => Ok(Command::Version),
        Some(Value(v)) => {
            let sub = string(v, "command")?;
            match sub.as_str() {
                "run" => parse_run(&mut p).map(|r| Command::Run(Box::new(r))),
                "wt" | "worktree" => {
                    let branch = match p.next().map_err(lex)? {
                        Some(Value(v)) => string(v, "branch")?,
                        Some(Short('h') | Long("help")) => return Ok(Command::Help),
                        _ => {
                            return Err(usage(
                                "wt: name the branch first: moat wt BRANCH [PATH] [-- COMMAND...]",
                            ));
                        }
                    };
                    let mut r = parse_run(&mut p)?;
                    if r.worktree.is_some() {
                        return Err(usage("wt: the branch is given twice (--worktree)"));
                    }
                    r.worktree = Some(branch);
                    Ok(Command::Run(Box::new(r)))
                }
                "claude" | "codex" | "gemini" => parse_agent(&mut p, &sub),
                "__supervise" => {
                    let id = one_run(&mut p)?.ok_or_else(|| usage("__supervise needs a run id"))?;
                    Ok(Command::Supervise(id))
                }
                "attach" => parse_attach(&mut p),
                "list" | "ls" => {
                    let (mut json, mut promoted) = (false, false);
                    while let Some(a) = p.next().map_err(lex)? {
                        match a {
                            Long("json") => json = true,
                            Long("promoted") => promoted = true,
                            Short('h') | Long("help") => return Err(help_exit()),
                            _ => return Err(usage(a.unexpected().to_string())),
                        }
                    }
                    Ok(Command::List { json, promoted })
                }
                "status" => Ok(Command::Status {
                    json: json_only(&mut p)?,
                }),
                "logs" => parse_logs(&mut p),
                "trace" => parse_trace(&mut p),
                "report" => parse_report(&mut p),
                "stop" => one_run(&mut p).map(Command::Stop),
                "destroy" | "rm" => one_run(&mut p).map(Command::Destroy),
                "clean" => {
                    let mut force = false;
                    while let Some(a) = p.next().map_err(lex)? {
                        match a {
                            Short('f') | Long("force") => force = true,
                            Short('h') | Long("help") => return Ok(Command::Help),
                            _ => return Err(usage(a.unexpected().to_string())),
                        }
                    }
                    Ok(Command::Clean { force })
                }
                "image" => parse_image(&mut p),
                "volumes" => parse_volumes(&mut p),
                "snapshot" | "snapshots" => parse_snapshot(&mut p),
                "promote" => parse_promote(&mut p),
                "system" => parse_system(&mut p),
                "deps" => parse_deps(&mut p),
                "trust" => parse_trust(&mut p),
                "policy" => parse_policy(&mut p),
                other => Err(usage(format!("unknown command {other:?}"))),
            }
        }
        Some(a) => Err(usage(a.unexpected().to_string())),
        None => Err(usage("a command is required")),
    }
}

fn parse_agent(p: &mut lexopt::Parser, cli: &str) -> Result<Command> {
    if let Ok(mut raw) = p.raw_args()
        && raw.peek() == Some("sessions".as_ref())
    {
        raw.next();
        let json = json_only(p)?;
        return Ok(Command::Sessions {
            cli: cli.to_string(),
            json,
        });
    }
    let mut r = RunArgs {
        agent: Some(cli.to_string()),
        ..Default::default()
    };
    parse_run_into(p, &mut r)?;
    if r.interactive && r.prompt.is_some() {
        return Err(usage("-p answers one prompt without a terminal; drop -i"));
    }
    if r.prompt.is_none() {
        // Without a prompt the CLI is interactive: it gets a TTY, on this terminal or, with
        // -d, for a later `moat attach`.
        r.interactive = true;
    }
    Ok(Command::Run(Box::new(r)))
}

fn parse_run(p: &mut lexopt::Parser) -> Result<RunArgs> {
    let mut r = RunArgs::default();
    parse_run_into(p, &mut r)?;
    Ok(r)
}

fn parse_run_into(p: &mut lexopt::Parser, r: &mut RunArgs) -> Result<()> {
    let agent = r.agent.is_some();
    loop {
        // `--` ends the options; everything after it is the command, verbatim.
        if let Ok(mut raw) = p.raw_args()
            && raw.peek() == Some("--".as_ref())
        {
            raw.next();
            let cmd: Vec<String> = raw.map(|s| string(s, "command")).collect::<Result<_>>()?;
            if cmd.is_empty() && !agent {
                return Err(usage("no command after --"));
            }
            r.command = Some(cmd);
            break;
        }
        let Some(a) = p.next().map_err(lex)? else {
            break;
        };
        match a {
            Short('g') | Long("grant") => r.grants.push(string(p.value().map_err(lex)?, "grant")?),
            Short('e') | Long("env") => r.env.push(string(p.value().map_err(lex)?, "-e")?),
            Short('m') | Long("mount") => {
                r.mounts.push(string(p.value().map_err(lex)?, "--mount")?)
            }
            Short('n') | Long("name") => r.name = Some(string(p.value().map_err(lex)?, "--name")?),
            Short('d') | Long("detach") => r.detach = true,
            Short('i') | Long("interactive") => r.interactive = true,
            Long("rebuild") => r.rebuild = true,
            Long("no-sandbox") => r.no_sandbox = true,
            Long("policy") => r.policy = Some(string(p.value().map_err(lex)?, "--policy")?),
            Long("allow-host") | Long("allow") => r
                .allow_hosts
                .push(string(p.value().map_err(lex)?, "--allow-host")?),
            Long("runtime") => r.runtime = Some(string(p.value().map_err(lex)?, "--runtime")?),
            Short('w') | Long("worktree") | Long("wt") => {
                r.worktree = Some(string(p.value().map_err(lex)?, "--worktree")?)
            }
            Long("no-snapshots") => r.no_snapshots = true,
            Long("read-only-workspace") => r.read_only_workspace = true,
            Long("no-audit") => r.no_audit = true,
            Long("decoy") => r.decoys.push(string(p.value().map_err(lex)?, "--decoy")?),
            Long("on-decoy") => r.on_decoy = Some(string(p.value().map_err(lex)?, "--on-decoy")?),
            Long("allow-sensitive-mount") => r.allow_sensitive_mount = true,
            Long("budget") => r.budget.push(string(p.value().map_err(lex)?, "--budget")?),
            Long("timings") => r.timings = true,
            Short('p') | Long("prompt") => {
                r.prompt = Some(string(p.value().map_err(lex)?, "--prompt")?)
            }
            Long("keep-prompts") if agent => r.keep_prompts = true,
            Long("resume") if agent => {
                r.resume = Some(string(p.value().map_err(lex)?, "--resume")?)
            }
            Short('h') | Long("help") => return Err(help_exit()),
            Value(v) if r.path.is_none() => r.path = Some(PathBuf::from(v)),
            Value(v) => {
                return Err(usage(format!(
                    "unexpected argument {:?}; put the command after --",
                    v.to_string_lossy()
                )));
            }
            _ => return Err(usage(a.unexpected().to_string())),
        }
    }
    Ok(())
}

fn help_exit() -> Error {
    let _ = cli::write_stdout(format!("{USAGE}\n\n{HELP}").as_bytes());
    Error::new(0, "")
}

fn one_run(p: &mut lexopt::Parser) -> Result<Option<String>> {
    let mut run = None;
    while let Some(a) = p.next().map_err(lex)? {
        match a {
            Value(v) if run.is_none() => run = Some(string(v, "run")?),
            Short('f') | Long("force") => {}
            Short('h') | Long("help") => return Err(help_exit()),
            _ => return Err(usage(a.unexpected().to_string())),
        }
    }
    Ok(run)
}

fn parse_attach(p: &mut lexopt::Parser) -> Result<Command> {
    let (mut run, mut interactive) = (None, None);
    while let Some(a) = p.next().map_err(lex)? {
        match a {
            Value(v) if run.is_none() => run = Some(string(v, "run")?),
            Short('i') | Long("interactive") => {
                interactive = Some(match p.optional_value() {
                    None => true,
                    Some(v) => match string(v, "-i")?.as_str() {
                        "true" => true,
                        "false" => false,
                        other => return Err(usage(format!("-i={other}: want true or false"))),
                    },
                });
            }
            Short('h') | Long("help") => return Err(help_exit()),
            _ => return Err(usage(a.unexpected().to_string())),
        }
    }
    Ok(Command::Attach { run, interactive })
}

fn json_only(p: &mut lexopt::Parser) -> Result<bool> {
    let mut json = false;
    while let Some(a) = p.next().map_err(lex)? {
        match a {
            Long("json") => json = true,
            Short('h') | Long("help") => return Err(help_exit()),
            _ => return Err(usage(a.unexpected().to_string())),
        }
    }
    Ok(json)
}

fn parse_logs(p: &mut lexopt::Parser) -> Result<Command> {
    let (mut run, mut lines, mut follow) = (None, None, false);
    while let Some(a) = p.next().map_err(lex)? {
        match a {
            Short('n') | Long("lines") => {
                let v = string(p.value().map_err(lex)?, "-n")?;
                lines = Some(
                    v.parse()
                        .map_err(|_| usage(format!("-n wants a number of lines, not {v:?}")))?,
                );
            }
            Short('f') | Long("follow") => follow = true,
            Value(v) if run.is_none() => run = Some(string(v, "run")?),
            Short('h') | Long("help") => return Err(help_exit()),
            _ => return Err(usage(a.unexpected().to_string())),
        }
    }
    Ok(Command::Logs { run, lines, follow })
}

fn parse_trace(p: &mut lexopt::Parser) -> Result<Command> {
    let (mut run, mut verbose, mut json, mut usage_, mut exec) = (None, false, false, false, false);
    while let Some(a) = p.next().map_err(lex)? {
        match a {
            Long("network") => {}
            Long("usage") => usage_ = true,
            Long("exec") => exec = true,
            Short('v') | Long("verbose") => verbose = true,
            Long("json") => json = true,
            Value(v) if run.is_none() => run = Some(string(v, "run")?),
            Short('h') | Long("help") => return Err(help_exit()),
            _ => return Err(usage(a.unexpected().to_string())),
        }
    }
    if usage_ && exec {
        return Err(usage(
            "trace: --usage and --exec are two different traces; give one",
        ));
    }
    Ok(Command::Trace {
        run,
        verbose,
        json,
        usage: usage_,
        exec,
    })
}

fn parse_policy(p: &mut lexopt::Parser) -> Result<Command> {
    let sub = match p.next().map_err(lex)? {
        Some(Value(v)) => string(v, "policy command")?,
        Some(Short('h') | Long("help")) => return Err(help_exit()),
        Some(a) => return Err(usage(format!("policy: {}", a.unexpected()))),
        None => return Err(usage("policy needs suggest or check")),
    };
    let (mut run, mut file) = (None, None);
    while let Some(a) = p.next().map_err(lex)? {
        match a {
            Short('o') | Long("output") if sub == "suggest" => {
                file = Some(PathBuf::from(p.value().map_err(lex)?))
            }
            Long("config") if sub == "check" => file = Some(PathBuf::from(p.value().map_err(lex)?)),
            Value(v) if run.is_none() => run = Some(string(v, "run")?),
            Short('h') | Long("help") => return Err(help_exit()),
            _ => return Err(usage(format!("policy {sub}: {}", a.unexpected()))),
        }
    }
    match sub.as_str() {
        "suggest" => Ok(Command::Policy(PolicyCmd::Suggest { run, out: file })),
        "check" => Ok(Command::Policy(PolicyCmd::Check { run, config: file })),
        o => Err(usage(format!(
            "unknown policy command {o:?}: expected suggest or check"
        ))),
    }
}

fn parse_report(p: &mut lexopt::Parser) -> Result<Command> {
    let (mut run, mut output) = (None, None);
    while let Some(a) = p.next().map_err(lex)? {
        match a {
            Short('o') | Long("output") if output.is_none() => {
                let v = string(p.value().map_err(lex)?, "-o")?;
                if v.is_empty() {
                    return Err(usage(
                        "report: -o needs a file name, or - for standard output",
                    ));
                }
                output = Some(v);
            }
            Value(v) if run.is_none() => run = Some(string(v, "run")?),
            Short('h') | Long("help") => return Err(help_exit()),
            _ => return Err(usage(format!("report: {}", a.unexpected()))),
        }
    }
    Ok(Command::Report { run, output })
}

fn parse_volumes(p: &mut lexopt::Parser) -> Result<Command> {
    let sub = match p.next().map_err(lex)? {
        Some(Value(v)) => string(v, "volumes command")?,
        None => "ls".to_string(),
        Some(Long("json")) => return Ok(Command::Volumes(VolumesCmd::Ls { json: true })),
        Some(a) => return Err(usage(format!("volumes: {}", a.unexpected()))),
    };
    let (mut json, mut force, mut all, mut names) = (false, false, false, vec![]);
    while let Some(a) = p.next().map_err(lex)? {
        match a {
            Long("json") => json = true,
            Short('f') | Long("force") => force = true,
            Long("all") => all = true,
            Value(v) => names.push(string(v, "volume")?),
            Short('h') | Long("help") => return Err(help_exit()),
            _ => return Err(usage(a.unexpected().to_string())),
        }
    }
    Ok(Command::Volumes(match sub.as_str() {
        "ls" | "list" => VolumesCmd::Ls { json },
        "rm" | "remove" if !names.is_empty() => VolumesCmd::Rm { names, force },
        "rm" | "remove" => {
            return Err(usage(
                "volumes rm: name an agent (all its volumes) or AGENT/VOLUME",
            ));
        }
        "prune" => VolumesCmd::Prune { force, all },
        other => {
            return Err(usage(format!(
                "volumes: unknown command {other:?} (ls, rm, prune)"
            )));
        }
    }))
}

fn parse_snapshot(p: &mut lexopt::Parser) -> Result<Command> {
    let (mut json, mut force, mut label, mut words) = (false, false, None, vec![]);
    while let Some(a) = p.next().map_err(lex)? {
        match a {
            Long("json") => json = true,
            Short('f') | Long("force") => force = true,
            Long("label") => label = Some(string(p.value().map_err(lex)?, "--label")?),
            Value(v) => words.push(string(v, "argument")?),
            Short('h') | Long("help") => return Err(help_exit()),
            _ => return Err(usage(a.unexpected().to_string())),
        }
    }
    let first = words.first().map(String::as_str);
    let cmd = match first {
        Some("list" | "ls") => {
            if words.len() > 2 {
                return Err(usage("snapshot list takes at most one RUN"));
            }
            SnapshotCmd::List {
                run: words.get(1).cloned(),
                json,
            }
        }
        Some("restore") => match &words[1..] {
            [run, snap] => SnapshotCmd::Restore {
                run: run.clone(),
                snapshot: snap.clone(),
                force,
                json,
            },
            _ => return Err(usage("snapshot restore needs RUN and SNAPSHOT")),
        },
        _ => {
            let rest = if first == Some("create") {
                &words[1..]
            } else {
                &words[..]
            };
            if rest.len() > 1 {
                return Err(usage(format!(
                    "snapshot: unexpected argument {:?} (snapshot [RUN], snapshot list, snapshot restore RUN SNAPSHOT)",
                    rest[1]
                )));
            }
            SnapshotCmd::Create {
                run: rest.first().cloned(),
                label,
            }
        }
    };
    Ok(Command::Snapshot(cmd))
}

fn parse_promote(p: &mut lexopt::Parser) -> Result<Command> {
    let (mut run, mut to, mut force) = (None, None, false);
    while let Some(a) = p.next().map_err(lex)? {
        match a {
            Long("to") => to = Some(PathBuf::from(p.value().map_err(lex)?)),
            Short('f') | Long("force") => force = true,
            Value(v) if run.is_none() => run = Some(string(v, "run")?),
            Short('h') | Long("help") => return Err(help_exit()),
            _ => return Err(usage(a.unexpected().to_string())),
        }
    }
    let run = run.ok_or_else(|| usage("promote: name the run (moat promote RUN [--to DIR])"))?;
    Ok(Command::Promote { run, to, force })
}

fn parse_system(p: &mut lexopt::Parser) -> Result<Command> {
    let containers = match p.next().map_err(lex)? {
        Some(Value(v)) => match string(v, "system command")?.as_str() {
            "images" => false,
            "containers" => true,
            other => {
                return Err(usage(format!(
                    "system: unknown command {other:?} (images, containers)"
                )));
            }
        },
        Some(Short('h') | Long("help")) => return Err(help_exit()),
        Some(a) => return Err(usage(format!("system: {}", a.unexpected()))),
        None => {
            return Err(usage(
                "system: a subcommand is required (images, containers)",
            ));
        }
    };
    let (mut json, mut all) = (false, false);
    while let Some(a) = p.next().map_err(lex)? {
        match a {
            Long("json") => json = true,
            Long("all") => all = true,
            Short('h') | Long("help") => return Err(help_exit()),
            _ => return Err(usage(a.unexpected().to_string())),
        }
    }
    Ok(Command::System {
        containers,
        json,
        all,
    })
}

fn parse_deps(p: &mut lexopt::Parser) -> Result<Command> {
    let (mut sub, mut json, mut names) = (None, false, vec![]);
    while let Some(a) = p.next().map_err(lex)? {
        match a {
            Long("json") => json = true,
            Value(v) if sub.is_none() => sub = Some(string(v, "deps command")?),
            Value(v) => names.push(string(v, "dependency")?),
            Short('h') | Long("help") => return Err(help_exit()),
            _ => return Err(usage(format!("deps: {}", a.unexpected()))),
        }
    }
    match sub.as_deref().unwrap_or("list") {
        "list" | "ls" if names.is_empty() => Ok(Command::Deps(DepsCmd::List { json })),
        "list" | "ls" => Err(usage("deps list takes no names; use deps info NAME")),
        "info" | "show" => match names.as_slice() {
            [n] => Ok(Command::Deps(DepsCmd::Info {
                name: n.clone(),
                json,
            })),
            _ => Err(usage(
                "deps info: name one dependency, e.g. deps info postgres",
            )),
        },
        other => Err(usage(format!(
            "deps: unknown command {other:?} (list, info NAME)"
        ))),
    }
}

fn parse_trust(p: &mut lexopt::Parser) -> Result<Command> {
    use crate::trust::TrustCmd;
    let (mut path, mut yes, mut list, mut revoke, mut json) = (None, false, false, false, false);
    while let Some(a) = p.next().map_err(lex)? {
        match a {
            Short('y') | Long("yes") => yes = true,
            Long("list") => list = true,
            Long("revoke") => revoke = true,
            Long("json") => json = true,
            Value(v) if path.is_none() => path = Some(PathBuf::from(v)),
            Short('h') | Long("help") => return Err(help_exit()),
            _ => return Err(usage(format!("trust: {}", a.unexpected()))),
        }
    }
    Ok(Command::Trust(match (list, revoke) {
        (true, true) => return Err(usage("trust: --list and --revoke do not go together")),
        (true, false) if path.is_some() || yes => {
            return Err(usage("trust --list takes no PATH and no --yes"));
        }
        (true, false) => TrustCmd::List { json },
        (false, true) if yes || json => {
            return Err(usage("trust --revoke takes only a PATH"));
        }
        (false, true) => TrustCmd::Revoke { path },
        (false, false) if json => return Err(usage("trust: --json goes with --list")),
        (false, false) => TrustCmd::Approve { path, yes },
    }))
}

fn parse_image(p: &mut lexopt::Parser) -> Result<Command> {
    match p.next().map_err(lex)? {
        Some(Value(v)) if v == "bootstrap" => {
            let mut force = false;
            while let Some(a) = p.next().map_err(lex)? {
                match a {
                    Long("force") => force = true,
                    Short('h') | Long("help") => return Err(help_exit()),
                    _ => return Err(usage(a.unexpected().to_string())),
                }
            }
            Ok(Command::Bootstrap { force })
        }
        Some(a) => Err(usage(format!("image: {}", a.unexpected()))),
        None => Err(usage("image: a subcommand is required (bootstrap)")),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn run(args: &[&str]) -> RunArgs {
        match parse_from(args.iter().copied()).unwrap() {
            Command::Run(r) => *r,
            c => panic!("{c:?}"),
        }
    }

    #[test]
    fn run_takes_path_flags_and_command() {
        let r = run(&[
            "run", "-g", "github", "--grant", "npm", "-e", "A=1", "ws", "-d", "--", "curl", "-s",
            "x",
        ]);
        assert_eq!(r.grants, ["github", "npm"]);
        assert_eq!(r.env, ["A=1"]);
        assert_eq!(r.path, Some(PathBuf::from("ws")));
        assert!(r.detach);
        assert_eq!(r.command.unwrap(), ["curl", "-s", "x"]);
    }

    #[test]
    fn a_detached_agent_without_a_prompt_keeps_its_tty() {
        let r = run(&["claude", "-d"]);
        assert!(r.detach && r.interactive);
        let r = run(&["codex", "-d", "-p", "hi"]);
        assert!(r.detach && !r.interactive);
        let r = run(&["gemini"]);
        assert!(!r.detach && r.interactive);
    }

    #[test]
    fn no_audit_is_a_flag_of_run_wt_and_the_agents() {
        assert!(!run(&["run"]).no_audit);
        assert!(run(&["run", "--no-audit"]).no_audit);
        assert!(run(&["wt", "b", "--no-audit"]).no_audit);
        assert!(run(&["claude", "-p", "hi", "--no-audit"]).no_audit);
    }

    #[test]
    fn run_command_may_carry_dashes() {
        let r = run(&["run", "--", "sh", "-c", "echo --x"]);
        assert_eq!(r.command.unwrap(), ["sh", "-c", "echo --x"]);
    }

    #[test]
    fn agents_take_a_prompt_and_pass_the_rest() {
        match parse_from(["claude", "-p", "hi", "ws", "--", "--model", "x"]).unwrap() {
            Command::Run(r) => {
                assert_eq!(r.agent.as_deref(), Some("claude"));
                assert_eq!(r.prompt.as_deref(), Some("hi"));
                assert_eq!(r.path, Some(PathBuf::from("ws")));
                assert_eq!(r.command.unwrap(), ["--model", "x"]);
                assert!(!r.interactive);
            }
            c => panic!("{c:?}"),
        }
        assert!(matches!(
            parse_from(["codex", "sessions", "--json"]).unwrap(),
            Command::Sessions { json: true, .. }
        ));
        // `run -p` parses; the workspace's `agent:` decides at start (tests/cli.rs).
        match parse_from(["run", "-p", "x"]).unwrap() {
            Command::Run(r) => assert_eq!(r.prompt.as_deref(), Some("x")),
            _ => panic!("run -p is a run"),
        }
    }

    #[test]
    fn logs_count_must_be_a_number() {
        assert!(parse_from(["logs", "-n", "x"]).is_err());
        match parse_from(["logs", "-n", "3", "abc"]).unwrap() {
            Command::Logs { run, lines, .. } => {
                assert_eq!(run.as_deref(), Some("abc"));
                assert_eq!(lines, Some(3));
            }
            c => panic!("{c:?}"),
        }
    }
}
