//! Configuration trust (promise 10): the workspace is the agent's to write, so what
//! `moat.yaml`/`agent.yaml` asks for beyond an ordinary run (credentials, host paths, base
//! URLs, wider egress, the host's Docker) is applied only after the user approved exactly
//! that content on the host. Also: workspaces and mounts that overlap where the host keeps
//! its keys are refused, and a run's end says when the configuration changed under it.
//!
//! A request is one privileged field in plain words plus a canonical value; the approval is
//! sha256 over (canonical workspace, file name, the canonical requests), kept in
//! `MOAT_HOME/trust.json` (one approval per workspace file, 0600, written atomically under
//! `trust.lock`). Unprivileged fields are not part of the hash, so editing `env:` or
//! `command:` never asks again.

use crate::config::{Config, Loaded};
use moat_core::{Error, MoatHome, Result};
use serde::{Deserialize, Serialize};
use serde_json::{Value, json};
use sha2::Digest;
use std::io::{BufRead, IsTerminal, Write};
use std::path::{Component, Path, PathBuf};

/// One privileged field of a configuration file.
#[derive(Debug, Clone, PartialEq)]
pub struct Request {
    /// The field, as the file spells it (`mounts`, `claude.base_url`, `secrets.DB`).
    pub field: String,
    /// What it does, in plain words.
    pub text: String,
    /// The canonical value hashed into the approval.
    pub canon: Value,
}

/// The hosts each agent's provider is reached at by default: a `base_url` elsewhere sends
/// the provider's credential there.
fn provider_host(cli: &str) -> (&'static str, &'static str) {
    match cli {
        "claude" => ("anthropic", "api.anthropic.com:443"),
        "codex" => ("openai", "api.openai.com:443"),
        _ => ("gemini", "generativelanguage.googleapis.com:443"),
    }
}

/// Resolve `.` and `..` without touching the filesystem.
fn lexical(p: &Path) -> PathBuf {
    let mut out = PathBuf::new();
    for c in p.components() {
        match c {
            Component::ParentDir => {
                out.pop();
            }
            Component::CurDir => {}
            c => out.push(c),
        }
    }
    out
}

/// The real path when it exists (symlinks resolved), else the lexical one.
pub fn real(p: &Path) -> PathBuf {
    std::fs::canonicalize(p).unwrap_or_else(|_| lexical(p))
}

/// Whether an `allow` entry reaches more than a public host name on the default ports:
/// it names a port, or a loopback, private or link-local address.
fn allow_widens(entry: &str) -> bool {
    let e = entry.trim().to_ascii_lowercase();
    let host = if let Some(r) = e.strip_prefix('[') {
        // [v6]:port
        match r.split_once(']') {
            Some((h, rest)) => {
                if !rest.is_empty() {
                    return true;
                }
                h.to_string()
            }
            None => r.to_string(),
        }
    } else if e.matches(':').count() == 1 {
        return true; // host:port
    } else {
        e.clone()
    };
    let host = host.trim_start_matches("*.").trim_end_matches('.');
    if host == "localhost" || host.ends_with(".localhost") || host == "*" {
        return true;
    }
    if host.ends_with(".internal") || host.ends_with(".local") {
        return true;
    }
    let ip = host.split('/').next().unwrap_or(host);
    match ip.parse::<std::net::IpAddr>() {
        Ok(std::net::IpAddr::V4(v)) => {
            let o = v.octets();
            v.is_loopback()
                || v.is_private()
                || v.is_link_local()
                || v.is_unspecified()
                || (o[0] == 100 && (64..128).contains(&o[1]))
                || host.contains('/')
        }
        Ok(std::net::IpAddr::V6(v)) => {
            let s = v.segments()[0];
            v.is_loopback()
                || v.is_unspecified()
                || (s & 0xfe00) == 0xfc00
                || (s & 0xffc0) == 0xfe80
                || v.to_ipv4_mapped().is_some()
                || host.contains('/')
        }
        Err(_) => false,
    }
}

/// Whether a remote MCP server's URL reaches more than a public host on its scheme's
/// default port: the proxy allows its authority with the port, so a private, loopback or
/// link-local address (or another port) would open it to the run. An invalid URL counts
/// (the run refuses it; it is still never unapproved).
fn mcp_widens(url: &str) -> bool {
    let Ok((tls, auth)) = crate::mcp::authority(url) else {
        return true;
    };
    let Some((host, port)) = auth.rsplit_once(':') else {
        return true;
    };
    port != if tls { "443" } else { "80" } || allow_widens(host)
}

/// The privileged requests of a file's configuration (flags are the user's own and are not
/// part of it). `workspace` is canonical; relative mount sources are resolved against it.
/// `workspace: ro` is not a request: a read-only workspace only narrows what the run can do.
pub fn requests(c: &Config, workspace: &Path, home: &MoatHome) -> Vec<Request> {
    let mut out = vec![];
    let mut add =
        |field: String, text: String, canon: Value| out.push(Request { field, text, canon });
    for g in &c.grants {
        add(
            "grants".into(),
            format!("gives the run the {g} credential"),
            json!(["grant", g]),
        );
    }
    // `moat run -p` sends the prompt to the CLI `agent:` names, with that agent's own
    // grant: the file would pick a credential for the run (THREATS L1).
    if let Some(a @ ("claude" | "codex" | "gemini")) = c.agent.as_deref() {
        add(
            "agent".into(),
            format!(
                "makes `moat run -p` run the {a} CLI with the {} credential",
                crate::agent::default_grant(a)
            ),
            json!(["agent", a]),
        );
    }
    // A decoy that trips stops the run unless the command line says otherwise; the file
    // may not weaken that for the next run (promise 10).
    if let Some(o) = c.on_decoy.as_deref().filter(|o| *o != "stop") {
        add(
            "on_decoy".into(),
            format!(
                "lets a run go on after a request carries a decoy ({o}{})",
                if o == "log" {
                    ": the decoy is sent"
                } else {
                    ""
                }
            ),
            json!(["on_decoy", o]),
        );
    }
    // The exec trace is part of the run's record: the file may not switch it off for the
    // next run without the user's word (promise 10), as for on_decoy.
    if c.tracing.as_ref().and_then(|t| t.disable_exec) == Some(true) {
        add(
            "tracing.disable_exec".into(),
            "turns off the run's exec trace (the record of the commands it executes)".into(),
            json!(["tracing", "disable_exec"]),
        );
    }
    for (k, r) in &c.secrets {
        add(
            format!("secrets.{k}"),
            format!("resolves the secret {r} on the host into ${k} in the run"),
            json!(["secret", k, r]),
        );
    }
    for m in &c.mounts {
        match crate::config::parse_mount(m, workspace) {
            Ok(b) => {
                let src = real(&b.source);
                if src.starts_with(workspace) {
                    continue;
                }
                let mode = if b.readonly {
                    "read-only"
                } else {
                    "read-write"
                };
                add(
                    "mounts".into(),
                    format!(
                        "mounts {} (outside the workspace) at {} {mode}",
                        src.display(),
                        b.target
                    ),
                    json!(["mount", src, b.target, b.readonly]),
                );
            }
            // An invalid entry is refused by the run itself; still never unapproved.
            Err(_) => add(
                "mounts".into(),
                format!("mounts {m:?}"),
                json!(["mount-raw", m]),
            ),
        }
    }
    if !c.volumes.is_empty() {
        let agent = c.agent.clone().or(c.name.clone());
        for v in &c.volumes {
            let who = agent.as_deref().unwrap_or("(the workspace's name)");
            let kind = if v.kind.as_deref() == Some("volume") {
                format!("the Docker volume moat_{who}_{}", v.name)
            } else {
                home.volumes_dir()
                    .join(who)
                    .join(&v.name)
                    .display()
                    .to_string()
            };
            add(
                format!("volumes.{}", v.name),
                format!(
                    "mounts {kind}, kept across runs of agent {who}, at {}{}",
                    v.target,
                    if v.readonly { " read-only" } else { "" }
                ),
                json!(["volume", agent, v.name, v.target, v.readonly, v.kind]),
            );
        }
    }
    for (cli, sec) in [
        ("claude", &c.claude),
        ("codex", &c.codex),
        ("gemini", &c.gemini),
    ] {
        let (provider, host) = provider_host(cli);
        if let Some(u) = &sec.base_url {
            let auth = crate::agent::url_authority(u);
            if auth.as_deref() != Some(host) {
                let to = auth.unwrap_or_else(|| u.clone());
                add(
                    format!("{cli}.base_url"),
                    format!("sends the {provider} credential to {to}"),
                    json!(["base_url", cli, to]),
                );
            }
        }
        for (n, v) in &sec.mcp {
            if let Some(g) = v.get("grant").and_then(Value::as_str) {
                add(
                    format!("{cli}.mcp.{n}"),
                    format!("gives the local MCP server {n} the {g} credential"),
                    json!(["local_mcp", cli, n, g]),
                );
            }
        }
    }
    for s in &c.mcp {
        if s.auth.is_none() && mcp_widens(&s.url) {
            let to = crate::agent::url_authority(&s.url).unwrap_or_else(|| s.url.clone());
            add(
                format!("mcp.{}", s.name),
                format!(
                    "connects the run to the MCP server at {}, which reaches {to}",
                    s.url
                ),
                json!(["mcp_url", s.name, to]),
            );
        }
        if let Some(a) = &s.auth {
            let to = crate::agent::url_authority(&s.url).unwrap_or_else(|| s.url.clone());
            add(
                format!("mcp.{}", s.name),
                format!(
                    "sends the {} credential to {to} (MCP server {}, header {})",
                    a.grant, s.name, a.header
                ),
                json!(["mcp", s.name, to, a.grant, a.header]),
            );
        }
    }
    for a in &c.network.allow {
        if allow_widens(a) {
            add(
                "network.allow".into(),
                format!("lets the run reach {a} (a port, or a private or loopback address)"),
                json!(["allow", a]),
            );
        }
    }
    for r in &c.network.rules {
        let text = match r {
            Value::String(h) => h.clone(),
            other => other.to_string(),
        };
        add(
            "network.rules".into(),
            format!("adds the network rule {text}"),
            json!(["rule", r]),
        );
    }
    if c.dependencies.iter().any(|d| d == "docker:host") {
        add(
            "dependencies".into(),
            "docker:host gives the run the host's Docker socket (control of the host)".into(),
            json!(["docker:host"]),
        );
    }
    if c.aws.mode.as_deref() == Some(crate::config::AWS_MODE_SESSION) {
        add(
            "aws.mode".into(),
            "aws.mode: session-credentials gives the container the AWS role's real session credentials".into(),
            json!(["aws_mode", crate::config::AWS_MODE_SESSION]),
        );
    }
    if c.sandbox.as_deref() == Some("none") {
        add(
            "sandbox".into(),
            "sandbox: none runs without gVisor".into(),
            json!(["sandbox", "none"]),
        );
    }
    out
}

/// The approval's key: sha256 over the workspace, the file name and the requests.
pub fn digest(workspace: &Path, file: &str, reqs: &[Request]) -> String {
    let canon: Vec<&Value> = reqs.iter().map(|r| &r.canon).collect();
    let body = json!({"v": 1, "workspace": workspace, "file": file, "requests": canon});
    moat_core::hex(&sha2::Sha256::digest(body.to_string().as_bytes()))
}

#[derive(Debug, Default, Serialize, Deserialize)]
struct Approvals {
    v: u32,
    approvals: Vec<Approval>,
}

#[derive(Debug, Clone, Serialize, Deserialize)]
struct Approval {
    workspace: PathBuf,
    file: String,
    sha256: String,
    approved_at: String,
    /// The requests in words, for `moat trust --list`.
    requests: Vec<String>,
}

fn store_path(home: &MoatHome) -> PathBuf {
    home.root().join("trust.json")
}

fn read_approvals(home: &MoatHome) -> Result<Approvals> {
    let p = store_path(home);
    match std::fs::read(&p) {
        Ok(b) => {
            let a: Approvals = serde_json::from_slice(&b).map_err(|e| {
                Error::config(format!("{}: {e}", p.display()))
                    .with_hint("fix or remove the file; it holds only approvals")
            })?;
            if a.v != 1 {
                return Err(Error::config(format!(
                    "{}: schema version {} is not one this moat reads (1)",
                    p.display(),
                    a.v
                )));
            }
            Ok(a)
        }
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(Approvals {
            v: 1,
            approvals: vec![],
        }),
        Err(e) => Err(Error::io(format!("reading {}", p.display()), e)),
    }
}

/// Change the approvals under the lock and write them back atomically.
fn update(home: &MoatHome, f: impl FnOnce(&mut Approvals)) -> Result<()> {
    home.ensure_dir(home.root())?;
    let _lock = moat_core::lock::FileLock::exclusive(&home.root().join("trust.lock"))?;
    let mut a = read_approvals(home)?;
    f(&mut a);
    let mut b = serde_json::to_vec_pretty(&a)?;
    b.push(b'\n');
    moat_core::fsutil::write_atomic(&store_path(home), &b, 0o600)
}

fn approved(home: &MoatHome, workspace: &Path, file: &str, sha: &str) -> Result<bool> {
    Ok(read_approvals(home)?
        .approvals
        .iter()
        .any(|a| a.workspace == workspace && a.file == file && a.sha256 == sha))
}

fn record(home: &MoatHome, workspace: &Path, file: &str, reqs: &[Request]) -> Result<String> {
    let sha = digest(workspace, file, reqs);
    let entry = Approval {
        workspace: workspace.to_path_buf(),
        file: file.to_string(),
        sha256: sha.clone(),
        approved_at: moat_core::timefmt::now_rfc3339(),
        requests: reqs
            .iter()
            .map(|r| format!("{}: {}", r.field, r.text))
            .collect(),
    };
    update(home, |a| {
        a.approvals
            .retain(|x| !(x.workspace == workspace && x.file == file));
        a.approvals.push(entry);
    })?;
    Ok(sha)
}

fn describe(path: &Path, reqs: &[Request]) -> String {
    let mut s = format!("{} asks for:\n", path.display());
    for r in reqs {
        s.push_str(&format!("  {}: {}\n", r.field, r.text));
    }
    s
}

fn can_prompt() -> bool {
    std::io::stdin().is_terminal() && std::io::stderr().is_terminal()
}

fn ask(question: &str) -> bool {
    eprint!("{question} [y/N] ");
    let _ = std::io::stderr().flush();
    let mut line = String::new();
    if std::io::stdin().lock().read_line(&mut line).is_err() {
        return false;
    }
    matches!(line.trim().to_ascii_lowercase().as_str(), "y" | "yes")
}

/// Before a run: the file's privileged part must be approved; on a terminal ask, without
/// one refuse (77) naming the file, each field and the command that approves it.
pub fn check(home: &MoatHome, workspace: &Path, loaded: &Loaded) -> Result<()> {
    let Some(path) = &loaded.file else {
        return Ok(());
    };
    let reqs = requests(&loaded.config, workspace, home);
    if reqs.is_empty() {
        return Ok(());
    }
    let file = file_name(path);
    let sha = digest(workspace, &file, &reqs);
    if approved(home, workspace, &file, &sha)? {
        return Ok(());
    }
    let changed = read_approvals(home)?
        .approvals
        .iter()
        .any(|a| a.workspace == workspace && a.file == file);
    let what = if changed {
        "changed since it was approved"
    } else {
        "is not approved"
    };
    if can_prompt() {
        eprint!(
            "moat: {} {what}; it is read from the workspace, which the agent can write.\n{}",
            path.display(),
            describe(path, &reqs)
        );
        if ask("Trust this configuration?") {
            record(home, workspace, &file, &reqs)?;
            eprintln!("moat: approved {}", path.display());
            return Ok(());
        }
        return Err(Error::noperm(format!(
            "{} was not approved",
            path.display()
        )));
    }
    let fields: Vec<String> = reqs
        .iter()
        .map(|r| format!("  {}: {}", r.field, r.text))
        .collect();
    Err(Error::noperm(format!(
        "{} {what} and asks for more than a run gets by itself:\n{}",
        path.display(),
        fields.join("\n")
    ))
    .with_hint(format!(
        "moat: if you wrote it, approve it with `moat trust {}`",
        workspace.display()
    )))
}

fn file_name(p: &Path) -> String {
    p.file_name()
        .map(|n| n.to_string_lossy().into_owned())
        .unwrap_or_default()
}

// ------------------------------------------------------------- moat trust

#[derive(Debug)]
pub enum TrustCmd {
    Approve { path: Option<PathBuf>, yes: bool },
    List { json: bool },
    Revoke { path: Option<PathBuf> },
}

fn canonical_workspace(path: Option<&Path>) -> Result<PathBuf> {
    let p = path.unwrap_or(Path::new("."));
    // `moat trust ws/moat.yaml` names the file; its directory is the workspace.
    let p = if p.is_file() {
        p.parent()
            .filter(|d| !d.as_os_str().is_empty())
            .unwrap_or(Path::new("."))
    } else {
        p
    };
    std::fs::canonicalize(p).map_err(|e| Error::io(format!("workspace {}", p.display()), e))
}

pub fn command(cmd: TrustCmd) -> Result<()> {
    let home = MoatHome::from_env()?;
    match cmd {
        TrustCmd::Approve { path, yes } => {
            let ws = canonical_workspace(path.as_deref())?;
            let loaded = crate::config::load(&ws)?;
            let Some(file) = &loaded.file else {
                return Err(Error::noinput(format!(
                    "{} has no moat.yaml or agent.yaml",
                    ws.display()
                )));
            };
            let reqs = requests(&loaded.config, &ws, &home);
            if reqs.is_empty() {
                println!(
                    "{} asks for nothing privileged; runs need no approval",
                    file.display()
                );
                return Ok(());
            }
            eprint!("{}", describe(file, &reqs));
            if !yes && can_prompt() && !ask("Trust this configuration?") {
                return Err(Error::noperm(format!(
                    "{} was not approved",
                    file.display()
                )));
            }
            let sha = record(&home, &ws, &file_name(file), &reqs)?;
            println!("approved {} (sha256 {sha})", file.display());
            Ok(())
        }
        TrustCmd::List { json } => {
            let a = read_approvals(&home)?;
            let mut out = String::new();
            for x in &a.approvals {
                if json {
                    out.push_str(&serde_json::to_string(x)?);
                    out.push('\n');
                } else {
                    out.push_str(&format!(
                        "{}  {}  {}\n",
                        x.workspace.join(&x.file).display(),
                        x.approved_at,
                        &x.sha256[..12.min(x.sha256.len())]
                    ));
                    for r in &x.requests {
                        out.push_str(&format!("    {r}\n"));
                    }
                }
            }
            moat_core::cli::write_stdout(out.as_bytes())
        }
        TrustCmd::Revoke { path } => {
            let ws = canonical_workspace(path.as_deref())?;
            let mut n = 0;
            update(&home, |a| {
                let before = a.approvals.len();
                a.approvals.retain(|x| x.workspace != ws);
                n = before - a.approvals.len();
            })?;
            if n == 0 {
                return Err(Error::noinput(format!(
                    "no approval for {} to revoke",
                    ws.display()
                )));
            }
            println!("revoked the approval of {}", ws.display());
            Ok(())
        }
    }
}

// ------------------------------------------------------------- sensitive paths

/// Where under the user's home credentials live (directories or files).
const KEY_PATHS: &[&str] = &[
    ".ssh",
    ".aws",
    ".config/gh",
    ".gnupg",
    ".docker",
    ".kube",
    ".claude",
    ".claude.json",
    ".codex",
    ".gemini",
    ".config/gcloud",
    ".azure",
    ".netrc",
    ".git-credentials",
    ".npmrc",
    ".config/op",
    ".password-store",
];

/// Where the host keeps what a run must never see: (path, what it is, whether only the
/// path itself and its ancestors count, as for the home directory).
fn sensitive(home: &MoatHome, user_home: Option<&Path>) -> Vec<(PathBuf, String, bool)> {
    let mut v = vec![];
    if let Some(h) = user_home {
        let h = real(h);
        v.push((h.clone(), "your home directory".to_string(), true));
        for d in KEY_PATHS {
            v.push((real(&h.join(d)), format!("~/{d}"), false));
        }
    }
    v.push((real(home.root()), "MOAT_HOME".to_string(), false));
    let sock = std::env::var("DOCKER_HOST")
        .ok()
        .and_then(|d| d.strip_prefix("unix://").map(PathBuf::from))
        .unwrap_or_else(|| PathBuf::from("/var/run/docker.sock"));
    if let Some(dir) = real(&sock).parent() {
        v.push((
            dir.to_path_buf(),
            "the Docker socket's directory".to_string(),
            false,
        ));
    }
    v
}

/// Why `p` (a workspace or a mount source) must not go into a run, if it must not.
pub fn sensitive_reason(p: &Path, home: &MoatHome) -> Option<String> {
    let user_home = std::env::var_os("HOME")
        .filter(|h| !h.is_empty())
        .map(PathBuf::from);
    sensitive_reason_in(p, home, user_home.as_deref())
}

fn sensitive_reason_in(p: &Path, home: &MoatHome, user_home: Option<&Path>) -> Option<String> {
    let p = real(p);
    for (s, what, ancestors_only) in sensitive(home, user_home) {
        if s.starts_with(&p) {
            return Some(if s == p {
                format!("{} is {what}", p.display())
            } else {
                format!("{} contains {what} ({})", p.display(), s.display())
            });
        }
        if !ancestors_only && p.starts_with(&s) {
            return Some(format!(
                "{} is inside {what} ({})",
                p.display(),
                s.display()
            ));
        }
    }
    None
}

/// Refuse (77) a workspace or bind source that overlaps a sensitive path, unless the
/// command line said `--allow-sensitive-mount` (then warn).
pub fn check_sensitive(
    home: &MoatHome,
    workspace: &Path,
    binds: &[crate::config::Bind],
    allow: bool,
) -> Result<()> {
    let mut paths = vec![("workspace", workspace.to_path_buf())];
    paths.extend(binds.iter().map(|b| ("mount", b.source.clone())));
    for (what, p) in paths {
        if let Some(why) = sensitive_reason(&p, home) {
            if allow {
                eprintln!(
                    "moat-launch: WARNING: --allow-sensitive-mount: the {what} {why}; the agent can read (and may write) it"
                );
                continue;
            }
            return Err(Error::noperm(format!("refusing the {what}: {why}"))
                .with_hint("moat: pick a narrower directory, or pass --allow-sensitive-mount if you really mean it"));
        }
    }
    Ok(())
}

// ------------------------------------------------------------- end of run

/// sha256 of the workspace's `moat.yaml` and `agent.yaml` (None when absent).
pub fn config_hashes(workspace: &Path) -> Vec<(String, Option<String>)> {
    ["moat.yaml", "agent.yaml"]
        .iter()
        .map(|n| {
            let h = std::fs::read(workspace.join(n))
                .ok()
                .map(|b| moat_core::hex(&sha2::Sha256::digest(&b)));
            (n.to_string(), h)
        })
        .collect()
}

/// The files whose hash differs between `before` and now: (file, old, new).
pub fn changed(
    workspace: &Path,
    before: &[(String, Option<String>)],
) -> Vec<(String, Option<String>, Option<String>)> {
    let now = config_hashes(workspace);
    before
        .iter()
        .zip(now)
        .filter(|((_, a), (_, b))| a != b)
        .map(|((n, a), (_, b))| (n.clone(), a.clone(), b))
        .collect()
}

/// At a run's end: each configuration file that changed during the run is said on stderr
/// (the following CLI shows it) and recorded as a `config_changed` audit event.
pub fn report_changes(
    workspace: &Path,
    before: &[(String, Option<String>)],
    mut event: impl FnMut(&str, Value),
) {
    for (file, old, new) in changed(workspace, before) {
        let how = match (&old, &new) {
            (None, _) => "was created",
            (_, None) => "was deleted",
            _ => "was changed",
        };
        eprintln!(
            "moat: WARNING: {} {how} during this run; the next run asks before applying any privileged field it adds or changes (review it before you approve)",
            workspace.join(&file).display()
        );
        event(
            "config_changed",
            json!({"file": workspace.join(&file), "old_sha256": old, "new_sha256": new}),
        );
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn reqs(yaml: &str, ws: &Path) -> Vec<Request> {
        let (c, _) = crate::config::parse(yaml, "moat.yaml").unwrap();
        requests(&c, ws, &MoatHome::at("/nonexistent/moat-home"))
    }

    /// L1/L2: every field that widens a run is a request; unprivileged ones are not.
    #[test]
    fn privileged_fields_are_requests_and_the_rest_are_not() {
        let ws = Path::new("/nonexistent/ws");
        let plain = "name: x\nenv:\n  A: b\ncommand: [sh]\nhooks:\n  pre_run: make\ndependencies: [node@20]\nmounts: [\"./data:/data\"]\nnetwork:\n  policy: strict\n  allow: [api.example.com]\nports:\n  web: 3000\nworkspace: ro\ntracing:\n  disable_exec: false\n";
        assert_eq!(reqs(plain, ws), vec![], "plain config asks nothing");
        for (yaml, field, word) in [
            ("grants: [github]\n", "grants", "github"),
            (
                "tracing:\n  disable_exec: true\n",
                "tracing.disable_exec",
                "exec trace",
            ),
            ("secrets:\n  DB: op://v/i/f\n", "secrets.DB", "op://v/i/f"),
            ("mounts: [\"../..:/up\"]\n", "mounts", "mounts / (outside"),
            (
                "claude:\n  base_url: https://attacker.example/v1\n",
                "claude.base_url",
                "attacker.example:443",
            ),
            (
                "claude:\n  mcp:\n    s:\n      command: x\n      grant: github\n",
                "claude.mcp.s",
                "github",
            ),
            (
                "mcp:\n  - name: m\n    url: https://m.example/\n    auth:\n      grant: mcp:m\n      header: X\n",
                "mcp.m",
                "m.example:443",
            ),
            (
                "network:\n  allow: [\"localhost:5432\"]\n",
                "network.allow",
                "5432",
            ),
            (
                "network:\n  allow: [\"10.1.2.3\"]\n",
                "network.allow",
                "10.1.2.3",
            ),
            (
                "network:\n  rules: [\"a.example\"]\n",
                "network.rules",
                "a.example",
            ),
            ("dependencies: [docker:host]\n", "dependencies", "Docker"),
            ("sandbox: none\n", "sandbox", "gVisor"),
            (
                "aws:\n  mode: session-credentials\n",
                "aws.mode",
                "real session credentials",
            ),
            (
                "name: a\nvolumes:\n  - name: st\n    target: /st\n",
                "volumes.st",
                "/st",
            ),
            ("agent: codex\n", "agent", "openai credential"),
            ("on_decoy: log\n", "on_decoy", "the decoy is sent"),
            ("on_decoy: block\n", "on_decoy", "go on"),
        ] {
            let r = reqs(yaml, ws);
            assert_eq!(r.len(), 1, "{yaml}: {r:?}");
            assert_eq!(r[0].field, field, "{yaml}");
            assert!(r[0].text.contains(word), "{yaml}: {}", r[0].text);
        }
        // The provider's own host is no widening.
        assert!(reqs("claude:\n  base_url: https://api.anthropic.com\n", ws).is_empty());
        // The default (the proxy signs) asks nothing.
        assert!(reqs("aws:\n  mode: sign\n", ws).is_empty());
        // An agent moat does not run as a CLI, and the default on_decoy, ask nothing.
        assert!(reqs("agent: my-agent\non_decoy: stop\n", ws).is_empty());
    }

    #[test]
    fn allow_entries_widen_only_with_a_port_or_a_private_address() {
        for e in [
            "localhost",
            "db.localhost",
            "host.docker.internal",
            "printer.local",
            "x.example:8443",
            "127.0.0.1",
            "192.168.1.10",
            "172.16.0.1",
            "169.254.169.254",
            "100.64.0.1",
            "10.0.0.0/8",
            "[::1]",
            "fd00::1",
            "*",
        ] {
            assert!(allow_widens(e), "{e}");
        }
        for e in ["api.example.com", "*.pythonhosted.org", "8.8.8.8"] {
            assert!(!allow_widens(e), "{e}");
        }
    }

    /// L2 (item: unauthenticated MCP URLs): a remote `mcp:` entry without `auth` whose URL
    /// reaches a private, loopback or link-local address, a local name or another port is a
    /// request, since the proxy allows that authority; a public host on its default port is not.
    #[test]
    fn mcp_urls_that_widen_are_requests_without_auth() {
        let ws = Path::new("/nonexistent/ws");
        for url in [
            "http://169.254.169.254/",
            "http://127.0.0.1:2375/",
            "https://127.0.0.1/",
            "http://localhost/mcp",
            "https://host.docker.internal/",
            "http://[::1]/",
            "https://10.0.0.5/",
            "https://mcp.example:8443/",
            "http://mcp.example:443/",
        ] {
            let r = reqs(&format!("mcp:\n  - name: m\n    url: {url}\n"), ws);
            assert_eq!(r.len(), 1, "{url}: {r:?}");
            assert_eq!(r[0].field, "mcp.m", "{url}");
            assert!(r[0].text.contains("connects the run"), "{}", r[0].text);
        }
        for url in [
            "https://mcp.example/",
            "http://mcp.example/x",
            "https://mcp.example:443/",
        ] {
            let r = reqs(&format!("mcp:\n  - name: m\n    url: {url}\n"), ws);
            assert!(r.is_empty(), "{url}: {r:?}");
        }
        // Changing the address changes the approval.
        let d = |u: &str| {
            digest(
                ws,
                "moat.yaml",
                &reqs(&format!("mcp:\n  - name: m\n    url: {u}\n"), ws),
            )
        };
        assert_ne!(d("http://127.0.0.1:2375/"), d("http://127.0.0.1:2376/"));
    }

    /// L1: changing a privileged field changes the digest; an unprivileged one does not.
    #[test]
    fn digest_follows_the_privileged_part_only() {
        let ws = Path::new("/nonexistent/ws");
        let d = |y: &str| digest(ws, "moat.yaml", &reqs(y, ws));
        let base = d("grants: [github]\nenv:\n  A: b\n");
        assert_eq!(base, d("grants: [github]\nenv:\n  A: c\ncommand: [ls]\n"));
        assert_ne!(base, d("grants: [github, npm]\nenv:\n  A: b\n"));
        assert_ne!(
            base,
            digest(ws, "agent.yaml", &reqs("grants: [github]\n", ws))
        );
        assert_ne!(
            base,
            digest(
                Path::new("/other"),
                "moat.yaml",
                &reqs("grants: [github]\n", ws)
            )
        );
    }

    /// L3/I5: overlaps with MOAT_HOME, key directories and home as a whole are found.
    #[test]
    fn sensitive_paths_are_found() {
        let t = tempfile::tempdir().unwrap();
        let mh = MoatHome::at(t.path().join("h/.moat"));
        std::fs::create_dir_all(mh.root()).unwrap();
        assert!(sensitive_reason(mh.root(), &mh).is_some());
        assert!(sensitive_reason(&mh.root().join("volumes"), &mh).is_some());
        assert!(sensitive_reason(&t.path().join("h"), &mh).is_some());
        assert!(sensitive_reason(Path::new("/"), &mh).is_some());
        assert!(sensitive_reason(&t.path().join("ws"), &mh).is_none());
        // The key directories of the user's home, whether they exist or not; the home
        // itself and its parents, but not a project inside it.
        let uh = t.path().join("u");
        std::fs::create_dir_all(uh.join(".ssh")).unwrap();
        let r = |p: &Path| sensitive_reason_in(p, &mh, Some(&uh));
        std::fs::write(uh.join(".netrc"), "machine x password canary").unwrap();
        for d in KEY_PATHS {
            let why = r(&uh.join(d)).unwrap_or_else(|| panic!("{d} not refused"));
            assert!(why.contains(&format!("~/{d}")), "{why}");
            assert!(r(&uh.join(d).join("sub")).is_some(), "{d}/sub");
        }
        assert!(
            r(&uh.join(".config"))
                .unwrap()
                .contains("contains ~/.config/gh")
        );
        for d in [
            ".claude",
            ".claude.json",
            ".codex",
            ".gemini",
            ".config/gcloud",
            ".azure",
            ".netrc",
            ".git-credentials",
            ".npmrc",
            ".config/op",
            ".password-store",
        ] {
            assert!(KEY_PATHS.contains(&d), "{d}");
        }
        assert!(r(&uh.join(".netrc")).unwrap().contains("~/.netrc"));
        assert!(r(&uh).unwrap().contains("home directory"));
        assert!(r(&uh.join("projects/app")).is_none());
        // A symlink into a key directory is what it points at.
        std::os::unix::fs::symlink(uh.join(".ssh"), uh.join("innocent")).unwrap();
        assert!(r(&uh.join("innocent")).unwrap().contains("~/.ssh"));
        // The Docker socket's directory.
        assert!(r(Path::new("/var/run")).is_some() || r(Path::new("/run")).is_some());
    }

    /// L1: a created, changed or deleted configuration file is a change, with both digests
    /// (null for a file that was not there).
    #[test]
    fn changes_of_either_file_are_found() {
        let t = tempfile::tempdir().unwrap();
        let ws = t.path();
        std::fs::write(ws.join("moat.yaml"), "env:\n  A: b\n").unwrap();
        let before = config_hashes(ws);
        assert!(changed(ws, &before).is_empty());
        std::fs::write(ws.join("moat.yaml"), "env:\n  A: c\n").unwrap();
        std::fs::write(ws.join("agent.yaml"), "grants: [github]\n").unwrap();
        let mut events = vec![];
        report_changes(ws, &before, |k, b| events.push((k.to_string(), b)));
        assert_eq!(events.len(), 2, "{events:?}");
        assert_eq!(events[0].0, "config_changed");
        assert_eq!(events[0].1["old_sha256"], before[0].1.clone().unwrap());
        assert_ne!(events[0].1["new_sha256"], events[0].1["old_sha256"]);
        assert!(events[1].1["old_sha256"].is_null());
        assert!(
            events[1].1["file"]
                .as_str()
                .unwrap()
                .ends_with("agent.yaml")
        );
        let before = config_hashes(ws);
        std::fs::remove_file(ws.join("moat.yaml")).unwrap();
        let c = changed(ws, &before);
        assert_eq!(c.len(), 1);
        assert!(c[0].2.is_none());
    }

    #[test]
    fn approvals_round_trip_and_are_private() {
        use std::os::unix::fs::PermissionsExt;
        let t = tempfile::tempdir().unwrap();
        let mh = MoatHome::at(t.path().join(".moat"));
        let ws = Path::new("/nonexistent/ws");
        let r = reqs("grants: [github]\n", ws);
        let sha = record(&mh, ws, "moat.yaml", &r).unwrap();
        assert!(approved(&mh, ws, "moat.yaml", &sha).unwrap());
        assert!(!approved(&mh, ws, "agent.yaml", &sha).unwrap());
        let r2 = reqs("grants: [npm]\n", ws);
        let sha2 = record(&mh, ws, "moat.yaml", &r2).unwrap();
        assert!(!approved(&mh, ws, "moat.yaml", &sha).unwrap(), "replaced");
        assert!(approved(&mh, ws, "moat.yaml", &sha2).unwrap());
        let mode = std::fs::metadata(store_path(&mh))
            .unwrap()
            .permissions()
            .mode();
        assert_eq!(mode & 0o777, 0o600);
        // A damaged file or another schema is an error, never "nothing approved" silently.
        std::fs::write(store_path(&mh), "{not json").unwrap();
        let e = approved(&mh, ws, "moat.yaml", &sha2).unwrap_err();
        assert_eq!(e.code, moat_core::exit::CONFIG, "{}", e.msg);
        std::fs::write(store_path(&mh), r#"{"v":2,"approvals":[]}"#).unwrap();
        let e = record(&mh, ws, "moat.yaml", &r2).unwrap_err();
        assert_eq!(e.code, moat_core::exit::CONFIG, "{}", e.msg);
    }
}
