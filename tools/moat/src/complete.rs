//! Shell completion. `moat completions SHELL` prints a small script for bash, zsh or fish;
//! on each TAB the script runs `moat __complete CWORD WORD...` (the words of the command line
//! up to the cursor, `moat` first, and the index of the word being completed), which prints
//! one line saying what to complete (`words`, `files` or `dirs`) and then the candidates,
//! one a line. Candidates come from the flag table below and from MOAT_HOME read directly:
//! run ids from a listing of `runs/`, run names from `runs/.names`, credential names from
//! the file names in `credentials/` (never opened, so never a secret), volume names from
//! `volumes/`, snapshot ids from a run's `snapshots/`. Everything read is treated as
//! hostile: only candidates made of plain characters are printed.

use crate::commands::{COMMANDS, TOOLS};
use moat_core::{MoatHome, Result, cli, run_names};
use std::collections::BTreeSet;
use std::ffi::OsString;
use std::path::Path;

const BASH: &str = include_str!("../completions/moat.bash");
const ZSH: &str = include_str!("../completions/_moat");
const FISH: &str = include_str!("../completions/moat.fish");

pub const USAGE: &str = "usage: moat completions bash|zsh|fish";

/// `moat completions SHELL`.
pub fn completions(rest: &[OsString]) -> Result<()> {
    let words: Vec<String> = rest
        .iter()
        .map(|w| w.to_string_lossy().into_owned())
        .collect();
    let script = match words.iter().map(String::as_str).collect::<Vec<_>>()[..] {
        ["-h" | "--help"] => {
            return cli::write_stdout(
                format!(
                    "{USAGE}\n\nPrint the completion script for SHELL. To use it now:\n    \
                     bash: source <(moat completions bash)\n    \
                     zsh:  moat completions zsh > ~/.zfunc/_moat  (with ~/.zfunc in fpath, before compinit)\n    \
                     fish: moat completions fish | source\n\
                     scripts/install puts the three scripts where each shell looks.\n"
                )
                .as_bytes(),
            );
        }
        ["bash"] => BASH,
        ["zsh"] => ZSH,
        ["fish"] => FISH,
        [] => return Err(cli::usage_error("name a shell: bash, zsh or fish", USAGE)),
        [other] => {
            return Err(cli::usage_error(
                format!("unknown shell {other:?} (bash, zsh or fish)"),
                USAGE,
            ));
        }
        _ => return Err(cli::usage_error("completions takes one shell", USAGE)),
    };
    cli::write_stdout(script.as_bytes())
}

/// What a flag's value or a positional argument is.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Kind {
    /// Nothing to offer (free text).
    Free,
    Run,
    Grant,
    Provider,
    Dep,
    Volume,
    /// A `moat help` topic.
    Topic,
    File,
    Dir,
    /// One of these words.
    Words(&'static [&'static str]),
}

/// The options of each command, as `-s/--long`, with `=KIND` when the option takes a value
/// (`=` free text, `=run`, `=grant`, `=file`, `=dir`, or `=a|b` for a fixed choice). A
/// context is a command word, or a command word and its subcommand (`grant github`,
/// `proxy serve`). Every option here is checked against the tool's own parser by a test.
pub const FLAGS: &[(&str, &str)] = &[
    ("run", RUN_FLAGS),
    ("wt", WT_FLAGS),
    ("claude", AGENT_FLAGS),
    ("codex", AGENT_FLAGS),
    ("gemini", AGENT_FLAGS),
    ("attach", "-i/--interactive"),
    ("list", "--json --promoted"),
    ("status", "--json"),
    ("logs", "-n/--lines= -f/--follow"),
    ("trace", "--network -v/--verbose --json --usage --exec"),
    ("stop", ""),
    ("destroy", ""),
    ("clean", "-f/--force"),
    ("snapshot", "--label= --json -f/--force"),
    ("volumes", "--json -f/--force --all"),
    ("deps", "--json"),
    ("promote", "--to=dir -f/--force"),
    ("system", "--json --all"),
    ("trust", "-y/--yes --list --revoke --json"),
    ("report", "-o/--output=file"),
    ("policy", ""),
    ("policy suggest", "-o/--output=file"),
    ("policy check", "--config=file"),
    ("grant", ""),
    (
        "grant github",
        "--name= --token-stdin --no-validate --connect-to= --extra-ca=file --scope= --device --client-id=",
    ),
    ("grant anthropic", TOKEN_GRANT),
    ("grant claude", TOKEN_GRANT),
    (
        "grant decoy",
        "--like=github|anthropic|openai|aws|npm|http --no-store",
    ),
    ("grant openai", TOKEN_GRANT),
    ("grant gemini", TOKEN_GRANT),
    (
        "grant npm",
        "--registry= --name= --token-stdin --no-validate --connect-to= --extra-ca=file",
    ),
    (
        "grant ssh",
        "--host= --key= --host-key=file --sshsig-namespace= --no-validate",
    ),
    (
        "grant mcp",
        "--url= --header= --prefix= --token-stdin --no-validate",
    ),
    (
        "grant aws",
        "--role= --region= --session-duration= --external-id= --name= --no-validate",
    ),
    (
        "grant http",
        "--host= --header= --prefix= --token-stdin --no-validate",
    ),
    ("revoke", ""),
    (
        "audit",
        "--json -o/--export=file --entry= --key=file --trust-bundle-key",
    ),
    ("audit verify", "--json"),
    ("audit export", "-o/--export=file --entry="),
    (
        "audit verify-bundle",
        "--key=file --trust-bundle-key --json",
    ),
    ("audit key", ""),
    ("verify-bundle", "--key=file --trust-bundle-key --json"),
    ("proxy", ""),
    (
        "proxy serve",
        "-l/--listen= -r/--rules=file --token-file=file --no-auth --policy=permissive|strict \
         --allow= --trace=file --connect-to= --extra-ca=file --ca-dir=dir --header-timeout= \
         --max-connections= --relay= --tunnel=",
    ),
    ("proxy ca-path", "--ca-dir=dir"),
    ("proxy start", "--port="),
    ("proxy stop", "--port="),
    ("proxy router", "--port="),
    ("proxy status", "--port= --json"),
    ("completions", ""),
    ("help", ""),
];

const RUN_COMMON: &str = "-g/--grant=grant -e/--env= -m/--mount=file -n/--name= -d/--detach \
    -i/--interactive --rebuild --no-sandbox --policy=permissive|strict --allow-host= \
    --runtime=docker --no-snapshots --read-only-workspace --no-audit --allow-sensitive-mount --timings \
    --decoy=grant --on-decoy=stop|block|log --budget=";
const RUN_FLAGS: &str = concat!(
    "-g/--grant=grant -e/--env= -m/--mount=file -n/--name= -d/--detach ",
    "-i/--interactive --rebuild --no-sandbox --policy=permissive|strict --allow-host= ",
    "--runtime=docker --no-snapshots --read-only-workspace --no-audit --allow-sensitive-mount --timings -w/--worktree= ",
    "--decoy=grant --on-decoy=stop|block|log -p/--prompt= --budget="
);
const WT_FLAGS: &str = RUN_COMMON;
const AGENT_FLAGS: &str = concat!(
    "-g/--grant=grant -e/--env= -m/--mount=file -n/--name= -d/--detach ",
    "-i/--interactive --rebuild --no-sandbox --policy=permissive|strict --allow-host= ",
    "--runtime=docker --no-snapshots --read-only-workspace --no-audit --allow-sensitive-mount --timings -w/--worktree= ",
    "-p/--prompt= --keep-prompts --resume=run --decoy=grant --on-decoy=stop|block|log ",
    "--budget="
);
const TOKEN_GRANT: &str = "--name= --token-stdin --no-validate --connect-to= --extra-ca=file";

/// The providers `moat grant` takes (checked against moat-grant by a test).
pub const PROVIDERS: &[&str] = &[
    "github",
    "anthropic",
    "claude",
    "openai",
    "gemini",
    "npm",
    "ssh",
    "mcp",
    "aws",
    "http",
    "decoy",
];

/// The dependency registry moat-launch embeds: its names are the `- name:` lines.
const DEPS_YAML: &str = include_str!("../../moat-launch/src/deps.yaml");

/// One option of a context.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Flag {
    pub short: Option<char>,
    pub long: &'static str,
    /// `None`: a switch; `Some(kind)`: takes a value.
    pub value: Option<Kind>,
}

/// The options of `context` (see [`FLAGS`]); `--help` is always one of them.
pub fn flags(context: &str) -> Vec<Flag> {
    let spec = FLAGS
        .iter()
        .find(|(c, _)| *c == context)
        .map(|(_, s)| *s)
        .unwrap_or("");
    let mut out: Vec<Flag> = spec.split_whitespace().map(parse_flag).collect();
    if context != "proxy ca-path" {
        out.push(Flag {
            short: Some('h'),
            long: "--help",
            value: None,
        });
    }
    out
}

fn parse_flag(s: &'static str) -> Flag {
    let (names, value) = match s.split_once('=') {
        Some((n, v)) => (n, Some(kind_of(v))),
        None => (s, None),
    };
    let (short, long) = match names.split_once('/') {
        Some((sh, l)) => (sh.strip_prefix('-').and_then(|c| c.chars().next()), l),
        None => (None, names),
    };
    Flag { short, long, value }
}

fn kind_of(v: &'static str) -> Kind {
    match v {
        "" => Kind::Free,
        "run" => Kind::Run,
        "grant" => Kind::Grant,
        "file" => Kind::File,
        "dir" => Kind::Dir,
        w => Kind::Words(match w {
            "permissive|strict" => &["permissive", "strict"],
            "docker" => &["docker"],
            "stop|block|log" => &["stop", "block", "log"],
            "github|anthropic|openai|aws|npm|http" => {
                &["github", "anthropic", "openai", "aws", "npm", "http"]
            }
            _ => &[],
        }),
    }
}

/// `moat __complete CWORD WORD...`: print what to complete and the candidates.
pub fn complete(rest: &[OsString]) -> Result<()> {
    const USAGE: &str = "usage: moat __complete CWORD WORD...  (run by the completion scripts)";
    let mut it = rest.iter().map(|w| w.to_string_lossy().into_owned());
    let first = it.next().unwrap_or_default();
    if first == "-h" || first == "--help" {
        return cli::write_stdout(
            format!(
                "{USAGE}\n\nPrint what to complete at word CWORD of the command line WORD... \
                 (moat first):\na line 'words', 'files' or 'dirs', then the candidates, one a line.\n"
            )
            .as_bytes(),
        );
    }
    let Ok(cword) = first.parse::<usize>() else {
        return Err(cli::usage_error(
            format!("{first:?} is not a word index"),
            USAGE,
        ));
    };
    let words: Vec<String> = it.collect();
    let home = MoatHome::from_env().ok();
    let (what, cands) = candidates(home.as_ref(), &words, cword);
    let mut out = String::from(what);
    out.push('\n');
    for c in cands {
        out.push_str(&c);
        out.push('\n');
    }
    cli::write_stdout(out.as_bytes())
}

/// What to complete at word `cword` of `words` (`words[0]` is `moat`): `("words", list)`,
/// `("files", [])` or `("dirs", [])`. The list holds only candidates starting with the
/// current word.
pub fn candidates(
    home: Option<&MoatHome>,
    words: &[String],
    cword: usize,
) -> (&'static str, Vec<String>) {
    let cur = words.get(cword).map(String::as_str).unwrap_or("");
    let before: Vec<&str> = words
        .iter()
        .take(cword)
        .skip(1)
        .map(String::as_str)
        .collect();
    // The dispatcher's own options come before the command word.
    let Some(ci) = before.iter().position(|w| !w.starts_with('-')) else {
        if cur.starts_with('-') {
            return words_of(cur, ["--help", "--version"].map(String::from));
        }
        return words_of(cur, command_words());
    };
    let cmd = before[ci];
    let args = &before[ci + 1..];
    // Walk the arguments: positionals so far, and whether the last one wants a value.
    let mut context = cmd.to_string();
    let mut positionals: Vec<&str> = vec![];
    let mut pending: Option<Kind> = None;
    for a in args {
        if pending.take().is_some() {
            continue;
        }
        if *a == "--" {
            // Everything after `--` is the container's command.
            return ("files", vec![]);
        }
        if a.starts_with('-') && a.len() > 1 {
            if !a.contains('=') {
                pending = find_flag(&context, a).and_then(|f| f.value);
            }
            continue;
        }
        positionals.push(a);
        // The first positional of grant, proxy and audit picks the option set.
        let sub = format!("{cmd} {a}");
        if positionals.len() == 1 && FLAGS.iter().any(|(c, _)| *c == sub) {
            context = sub;
        }
    }
    if let Some(kind) = pending {
        return values(home, kind, cur, &positionals);
    }
    if cur.starts_with('-') {
        let longs = flags(&context).into_iter().map(|f| f.long.to_string());
        return words_of(cur, longs);
    }
    let kind = positional(cmd, &positionals);
    values(home, kind, cur, &positionals)
}

fn find_flag(context: &str, arg: &str) -> Option<Flag> {
    let fl = flags(context);
    if let Some(l) = arg.strip_prefix("--") {
        return fl.into_iter().find(|f| f.long[2..] == *l);
    }
    // `-g` takes a value; `-gNAME` carries it.
    let mut chars = arg[1..].chars();
    let c = chars.next()?;
    let f = fl.into_iter().find(|f| f.short == Some(c))?;
    if chars.next().is_some() && f.value.is_some() {
        return None;
    }
    Some(f)
}

/// What the next positional argument of `cmd` is, given those before it.
fn positional(cmd: &str, pos: &[&str]) -> Kind {
    const SNAPSHOT: &[&str] = &["list", "restore", "create"];
    match (cmd, pos) {
        ("run" | "trust", []) => Kind::Dir,
        ("wt", [_]) => Kind::Dir,
        ("claude" | "codex" | "gemini", []) => Kind::Dir,
        ("attach" | "logs" | "trace" | "stop" | "destroy" | "promote" | "report" | "rm", []) => {
            Kind::Run
        }
        ("snapshot" | "snapshots", []) => Kind::Words(SNAPSHOT),
        ("snapshot" | "snapshots", ["list" | "ls" | "restore" | "create"]) => Kind::Run,
        ("snapshot" | "snapshots", ["restore", _]) => Kind::Free, // snapshot ids: see values()
        ("volumes", []) => Kind::Words(&["ls", "rm", "prune"]),
        ("volumes", ["rm" | "remove", ..]) => Kind::Volume,
        ("deps", []) => Kind::Words(&["list", "info"]),
        ("deps", ["info" | "show"]) => Kind::Dep,
        ("system", []) => Kind::Words(&["images", "containers"]),
        ("policy", []) => Kind::Words(&["suggest", "check"]),
        ("policy", ["suggest" | "check"]) => Kind::Run,
        ("grant", []) => Kind::Provider,
        ("revoke", _) => Kind::Grant,
        ("audit", []) => Kind::Words(&["verify", "export", "verify-bundle", "key"]),
        ("audit", ["verify" | "export"]) => Kind::Run,
        ("audit" | "verify-bundle", ["verify-bundle"] | []) => Kind::File,
        ("proxy", []) => Kind::Words(&["start", "stop", "status", "router", "serve", "ca-path"]),
        ("completions", []) => Kind::Words(&["bash", "zsh", "fish"]),
        ("help", []) => Kind::Topic,
        _ => Kind::Free,
    }
}

fn values(
    home: Option<&MoatHome>,
    kind: Kind,
    cur: &str,
    pos: &[&str],
) -> (&'static str, Vec<String>) {
    match kind {
        Kind::File => ("files", vec![]),
        Kind::Dir => ("dirs", vec![]),
        Kind::Free => {
            if let (Some(h), ["restore", run]) = (home, pos) {
                return words_of(cur, snapshots(h, run));
            }
            words_of(cur, Vec::new())
        }
        Kind::Words(w) => words_of(cur, w.iter().map(|s| s.to_string())),
        Kind::Provider => words_of(cur, PROVIDERS.iter().map(|s| s.to_string())),
        Kind::Dep => words_of(cur, deps()),
        Kind::Topic => words_of(cur, help_topics()),
        Kind::Run => words_of(cur, home.map(runs).unwrap_or_default()),
        Kind::Grant => words_of(cur, home.map(grants).unwrap_or_default()),
        Kind::Volume => words_of(cur, home.map(volumes).unwrap_or_default()),
    }
}

/// The candidates that start with `cur` and are safe to hand to a shell, sorted, once each.
fn words_of(cur: &str, all: impl IntoIterator<Item = String>) -> (&'static str, Vec<String>) {
    let set: BTreeSet<String> = all
        .into_iter()
        .filter(|w| w.starts_with(cur) && plain(w))
        .collect();
    ("words", set.into_iter().collect())
}

/// Letters, digits and `._:@/+,=-` only: nothing a shell would expand or split.
fn plain(w: &str) -> bool {
    !w.is_empty()
        && w.len() <= 255
        && w.bytes()
            .all(|b| b.is_ascii_alphanumeric() || b"._:@/+,=-".contains(&b))
}

fn command_words() -> Vec<String> {
    let mut w: Vec<String> = COMMANDS.iter().map(|c| c.name.to_string()).collect();
    w.push("help".into());
    w.extend(crate::dispatch::extensions());
    w
}

/// `moat help TOPIC`: the commands, `files`, and the tools' own pages.
pub fn help_topics() -> Vec<String> {
    let mut w = command_words();
    w.push("files".into());
    w.push("moat".into());
    w.extend(TOOLS.iter().map(|t| t.to_string()));
    w
}

/// Run ids from a listing of `runs/`, names from `runs/.names`; a run the file does not
/// name (made before the file existed) has its name read from its metadata.
pub fn runs(home: &MoatHome) -> Vec<String> {
    let Ok(rd) = std::fs::read_dir(home.runs_dir()) else {
        return vec![];
    };
    let ids: BTreeSet<String> = rd
        .flatten()
        .filter(|e| e.file_type().is_ok_and(|t| t.is_dir()))
        .filter_map(|e| e.file_name().into_string().ok())
        .filter(|n| run_names::is_run_id(n))
        .collect();
    let mut named: BTreeSet<&str> = BTreeSet::new();
    let mut out: Vec<String> = vec![];
    let index = run_names::read(home);
    for (id, name) in &index {
        if ids.contains(id) {
            named.insert(id);
            out.push(name.clone());
        }
    }
    let mut go_runs: BTreeSet<&str> = BTreeSet::new();
    for id in &ids {
        if named.contains(id.as_str()) {
            continue;
        }
        match name_from_metadata(&home.run_dir(id)) {
            Meta::Ours(Some(n)) => out.push(n),
            Meta::Ours(None) => {}
            Meta::GoMoat => {
                go_runs.insert(id);
            }
        }
    }
    out.extend(
        ids.iter()
            .filter(|i| !go_runs.contains(i.as_str()))
            .cloned(),
    );
    out
}

enum Meta {
    Ours(Option<String>),
    /// A run the Go moat made (its metadata has no `v`): no moat command takes it.
    GoMoat,
}

fn name_from_metadata(dir: &Path) -> Meta {
    use std::io::Read;
    let Ok(f) = std::fs::File::open(dir.join("metadata.json")) else {
        return Meta::Ours(None);
    };
    let mut b = Vec::new();
    if f.take(1 << 20).read_to_end(&mut b).is_err() {
        return Meta::Ours(None);
    }
    let Ok(serde_json::Value::Object(m)) = serde_json::from_slice(&b) else {
        return Meta::Ours(None);
    };
    if !m.contains_key("v") && m.contains_key("state") {
        return Meta::GoMoat;
    }
    Meta::Ours(
        m.get("name")
            .and_then(serde_json::Value::as_str)
            .filter(|n| run_names::is_run_name(n))
            .map(String::from),
    )
}

/// Credential names from the store's file names (`NAME.enc`, %-encoded); no file is opened.
pub fn grants(home: &MoatHome) -> Vec<String> {
    let Ok(rd) = std::fs::read_dir(home.credentials_dir()) else {
        return vec![];
    };
    rd.flatten()
        .filter_map(|e| e.file_name().into_string().ok())
        .filter(|n| !n.starts_with('.'))
        .filter_map(|n| {
            n.strip_suffix(".enc")
                .and_then(moat_core::home::decode_name)
        })
        .collect()
}

/// Bind volumes: `AGENT` and `AGENT/VOLUME` from `volumes/AGENT/VOLUME`.
fn volumes(home: &MoatHome) -> Vec<String> {
    let mut out = vec![];
    let Ok(rd) = std::fs::read_dir(home.volumes_dir()) else {
        return out;
    };
    for a in rd.flatten() {
        let Ok(agent) = a.file_name().into_string() else {
            continue;
        };
        if agent.starts_with('.') || !a.file_type().is_ok_and(|t| t.is_dir()) {
            continue;
        }
        for v in std::fs::read_dir(a.path()).into_iter().flatten().flatten() {
            if let Ok(v) = v.file_name().into_string()
                && !v.starts_with('.')
            {
                out.push(format!("{agent}/{v}"));
            }
        }
        out.push(agent);
    }
    out
}

/// Snapshot ids of the run `run` names (an id, an id prefix or a name).
fn snapshots(home: &MoatHome, run: &str) -> Vec<String> {
    let runs_dir = home.runs_dir();
    let ids: Vec<String> = std::fs::read_dir(&runs_dir)
        .into_iter()
        .flatten()
        .flatten()
        .filter_map(|e| e.file_name().into_string().ok())
        .filter(|n| run_names::is_run_id(n))
        .collect();
    let id = if ids.iter().any(|i| i == run) {
        Some(run.to_string())
    } else {
        let by_prefix: Vec<&String> = ids
            .iter()
            .filter(|i| i.starts_with(run) || i[4..].starts_with(run))
            .collect();
        match by_prefix[..] {
            [one] => Some(one.clone()),
            _ => run_names::read(home)
                .into_iter()
                .rev()
                .find(|(i, n)| n == run && ids.contains(i))
                .map(|(i, _)| i),
        }
    };
    let Some(id) = id else { return vec![] };
    std::fs::read_dir(home.run_dir(&id).join("snapshots"))
        .into_iter()
        .flatten()
        .flatten()
        .filter_map(|e| e.file_name().into_string().ok())
        .filter(|n| n.starts_with("snap_"))
        .collect()
}

/// The names in the dependency registry.
pub fn deps() -> Vec<String> {
    DEPS_YAML
        .lines()
        .filter_map(|l| l.strip_prefix("- name:"))
        .map(|n| n.trim().trim_matches('"').to_string())
        .collect()
}

#[cfg(test)]
mod tests;
