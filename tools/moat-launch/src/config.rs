//! agent.yaml / moat.yaml → a validated `Config`, then CLI flags over file over defaults →
//! the `RunSpec` a run is started from. Every field of the reference either acts or, where
//! this version has not built it, is refused (`refuse_unbuilt`); unknown fields are warned
//! about with a suggestion; invalid values are errors naming the file, the line of the key
//! (from the parser's locations, yaml_lines.rs) and the field. Nothing here talks to Docker
//! or reads credentials.

use crate::args::RunArgs;
use moat_core::{Error, Result};
use serde::{Deserialize, Serialize};
use serde_json::Value;
use std::collections::BTreeMap;
use std::path::{Path, PathBuf};

#[derive(Debug, Default, Clone, Deserialize)]
#[serde(default)]
pub struct Config {
    pub name: Option<String>,
    pub agent: Option<String>,
    pub version: Option<String>,
    pub runtime: Option<String>,
    pub dependencies: Vec<String>,
    pub grants: Vec<String>,
    pub env: BTreeMap<String, String>,
    pub secrets: BTreeMap<String, String>,
    pub mounts: Vec<String>,
    pub volumes: Vec<Volume>,
    pub ports: BTreeMap<String, u16>,
    pub network: Network,
    pub command: Option<Vec<String>>,
    pub interactive: bool,
    pub hooks: Hooks,
    pub sandbox: Option<String>,
    pub container: Container,
    pub snapshots: Snapshots,
    pub services: BTreeMap<String, ServiceConfig>,
    pub language_servers: Vec<String>,
    pub claude: AgentSection,
    pub codex: AgentSection,
    pub gemini: AgentSection,
    /// Remote MCP servers, relayed by the run's proxy (see mcp.rs).
    pub mcp: Vec<crate::mcp::ServerConfig>,
    /// `aws:` (see aws.rs).
    pub aws: AwsSection,
    /// `decoys: auto` or `decoys: [NAME...]` (decoys.rs; not privileged, see there).
    pub decoys: Option<Value>,
    /// `on_decoy: stop|block|log` (decoys.rs).
    pub on_decoy: Option<String>,
    /// `budget:` (see budget.rs).
    pub budget: crate::budget::BudgetSection,
    /// `workspace: rw | ro` (checked in `refuse_unbuilt`). Not a privileged field: `ro`
    /// only narrows what the run can do, so a file setting it needs no approval (trust.rs).
    pub workspace: Option<String>,
    /// `tracing:` (exectrace.rs). Not a privileged field: it widens nothing a run can do.
    pub tracing: Option<Tracing>,
}

/// `aws: {mode: sign | session-credentials}`: how an `aws` grant reaches the run. `sign`
/// (the default): the container holds placeholders and the proxy signs; `session-credentials`:
/// the container's credential_process gives the role's real session credentials.
#[derive(Debug, Default, Clone, Deserialize)]
#[serde(default)]
pub struct AwsSection {
    pub mode: Option<String>,
}

pub const AWS_MODE_SESSION: &str = "session-credentials";

/// `snapshots:`: the pre-run snapshot and the automatic triggers (triggers.rs).
#[derive(Debug, Default, Clone, Deserialize)]
#[serde(default)]
pub struct Snapshots {
    pub disabled: bool,
    pub triggers: SnapshotTriggers,
    pub exclude: SnapshotExclude,
    pub retention: SnapshotRetention,
}

#[derive(Debug, Default, Clone, Deserialize)]
#[serde(default)]
pub struct SnapshotTriggers {
    pub disable_pre_run: bool,
    pub disable_git_commits: bool,
    pub disable_builds: bool,
    pub disable_idle: bool,
    pub idle_threshold_seconds: Option<u64>,
}

#[derive(Debug, Default, Clone, Deserialize)]
#[serde(default)]
pub struct SnapshotExclude {
    pub ignore_gitignore: bool,
    pub additional: Vec<String>,
}

#[derive(Debug, Default, Clone, Deserialize)]
#[serde(default)]
pub struct SnapshotRetention {
    pub max_count: Option<usize>,
    pub delete_initial: bool,
}

/// What a run's snapshots follow, carried in `spec.json`.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
#[serde(default)]
pub struct SnapshotSpec {
    pub disabled: bool,
    pub pre_run: bool,
    /// Patterns (`node_modules/`, `*.log`, `build/out`) left out of snapshots.
    pub exclude: Vec<String>,
    /// Also snapshot what .gitignore ignores.
    pub ignore_gitignore: bool,
    pub max_count: usize,
    pub delete_initial: bool,
    /// A snapshot after each new commit in the workspace (triggers.rs).
    pub git_commits: bool,
    /// A snapshot after a finished build seen in the run's exec trace.
    pub builds: bool,
    /// A snapshot once the run has been idle `idle_threshold_seconds` after activity.
    pub idle: bool,
    pub idle_threshold_seconds: u64,
}

pub const IDLE_THRESHOLD_DEFAULT: u64 = 30;
/// The longest idle threshold accepted (a day).
pub const IDLE_THRESHOLD_MAX: u64 = 86_400;

impl Default for SnapshotSpec {
    fn default() -> Self {
        SnapshotSpec {
            disabled: false,
            pre_run: true,
            exclude: vec![],
            ignore_gitignore: false,
            max_count: 10,
            delete_initial: false,
            git_commits: true,
            builds: true,
            idle: true,
            idle_threshold_seconds: IDLE_THRESHOLD_DEFAULT,
        }
    }
}

/// `services.<name>`: overrides for a service dependency's sidecar.
#[derive(Debug, Default, Clone, Deserialize, Serialize, PartialEq)]
#[serde(default)]
pub struct ServiceConfig {
    pub env: BTreeMap<String, String>,
    pub image: Option<String>,
    pub wait: Option<bool>,
}

/// `claude:`, `codex:`, `gemini:`.
#[derive(Debug, Default, Clone, Deserialize)]
#[serde(default)]
pub struct AgentSection {
    pub version: Option<String>,
    pub base_url: Option<String>,
    pub sync_logs: Option<bool>,
    /// Local MCP servers: name → {command, args, env, cwd}.
    pub mcp: BTreeMap<String, Value>,
    /// `claude.plugins`: "name@marketplace" → enabled (checked in plugins.rs).
    pub plugins: BTreeMap<String, Value>,
    /// `claude.marketplaces`: name → {source, repo | url | path, ref}.
    pub marketplaces: BTreeMap<String, Value>,
}

impl AgentSection {
    /// Whether the file sets anything in this section.
    pub fn is_set(&self) -> bool {
        self.version.is_some()
            || self.base_url.is_some()
            || self.sync_logs.is_some()
            || !self.mcp.is_empty()
            || !self.plugins.is_empty()
            || !self.marketplaces.is_empty()
    }
}

/// The agent sections a run ignores: all of them for `moat run`, the other agents' for
/// `moat claude|codex|gemini`.
pub fn unused_agent_sections(c: &Config, agent: Option<&str>) -> Vec<&'static str> {
    [
        ("claude", &c.claude),
        ("codex", &c.codex),
        ("gemini", &c.gemini),
    ]
    .into_iter()
    .filter(|(n, s)| s.is_set() && agent != Some(*n))
    .map(|(n, _)| n)
    .collect()
}

#[derive(Debug, Default, Clone, Deserialize)]
#[serde(default)]
pub struct Volume {
    pub name: String,
    pub target: String,
    pub readonly: bool,
    /// bind (a directory under MOAT_HOME/volumes, the default) or volume (a Docker volume).
    #[serde(rename = "type")]
    pub kind: Option<String>,
}

/// A `type: volume` entry: the Docker volume `moat_<agent>_<name>`.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
pub struct DockerVolume {
    pub agent: String,
    pub name: String,
    pub target: String,
    pub readonly: bool,
}

#[derive(Debug, Default, Clone, Deserialize)]
#[serde(default)]
pub struct Network {
    pub policy: Option<String>,
    pub allow: Vec<String>,
    pub rules: Vec<Value>,
}

#[derive(Debug, Default, Clone, Deserialize, Serialize, PartialEq)]
#[serde(default)]
pub struct Hooks {
    pub post_build_root: Option<String>,
    pub post_build: Option<String>,
    pub pre_run: Option<String>,
}

#[derive(Debug, Default, Clone, Deserialize)]
#[serde(default)]
pub struct Container {
    pub memory: Option<u64>,
    pub cpus: Option<u32>,
    pub dns: Option<Vec<String>>,
}

/// The resolved description of one run, written to the run directory (`spec.json`) by the
/// CLI and read by the supervisor. It holds no secret: grants are names.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct RunSpec {
    pub name: String,
    pub agent: String,
    pub workspace: PathBuf,
    pub grants: Vec<String>,
    pub env: BTreeMap<String, String>,
    pub binds: Vec<Bind>,
    pub command: Option<Vec<String>>,
    pub interactive: bool,
    pub dependencies: Vec<String>,
    pub hooks: Hooks,
    pub policy: String,
    pub allow: Vec<String>,
    /// `network.rules` as `net_rule` records for the proxy.
    pub net_rules: Vec<Value>,
    pub memory_mb: Option<u64>,
    pub cpus: Option<u32>,
    pub dns: Vec<String>,
    pub sandbox: bool,
    pub rebuild: bool,
    pub detach: bool,
    /// `secrets:` as NAME → reference (`op://…`, `ssm://…`); resolved by the supervisor.
    #[serde(default)]
    pub secrets: BTreeMap<String, String>,
    /// Rows and columns of the terminal that started an interactive run.
    #[serde(default)]
    pub tty_size: Option<(i32, i32)>,
    /// `ports:` endpoint → container port, served by the hostname router.
    #[serde(default)]
    pub ports: BTreeMap<String, u16>,
    /// The hostname router's port (MOAT_PROXY_PORT or 8080) when the run has ports.
    #[serde(default)]
    pub router_port: Option<u16>,
    #[serde(default)]
    pub snapshots: SnapshotSpec,
    /// `--no-audit` (a flag only, never from a file): the run has no audit log.
    #[serde(default)]
    pub no_audit: bool,
    /// `volumes:` entries of `type: volume`.
    #[serde(default)]
    pub docker_volumes: Vec<DockerVolume>,
    /// `--worktree`: the worktree the run works in (`workspace` is its path).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub worktree: Option<crate::worktree::Worktree>,
    /// `services:` overrides, by service name.
    #[serde(default)]
    pub services: BTreeMap<String, ServiceConfig>,
    #[serde(default)]
    pub language_servers: Vec<String>,
    /// `moat claude|codex|gemini`: the agent CLI to install and run.
    #[serde(default)]
    pub agent_cli: Option<crate::agent::AgentSpec>,
    /// The CLI's local MCP servers (`claude.mcp` etc.), checked.
    #[serde(default)]
    pub agent_mcp: Vec<crate::local_mcp::Local>,
    /// The npm registry the agent's CLI is installed from (the host's npm configuration).
    #[serde(default)]
    pub npm_registry: Option<String>,
    /// `mcp:`: remote MCP servers relayed by the proxy.
    #[serde(default)]
    pub mcp: Vec<crate::mcp::Remote>,
    /// `moat claude`: the merged Claude Code plugin settings (plugins.rs).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub claude_plugins: Option<crate::plugins::ClaudePlugins>,
    /// `aws.mode: session-credentials`: the container gets the role's real session
    /// credentials instead of placeholders the proxy signs for.
    #[serde(default)]
    pub aws_session_credentials: bool,
    /// `--decoy NAME`, `decoys:`: stored decoys by name (decoys.rs).
    #[serde(default)]
    pub decoys: Vec<String>,
    /// `decoys: auto` or `--decoy auto`.
    #[serde(default)]
    pub decoys_auto: bool,
    /// `on_decoy:`/`--on-decoy`: stop (the default), block or log.
    #[serde(default)]
    pub on_decoy: Option<String>,
    /// `--budget` over `budget:` (budget.rs).
    #[serde(default)]
    pub budget: crate::budget::Budget,
    /// `workspace: ro` or `--read-only-workspace`: /workspace is a read-only bind.
    #[serde(default)]
    pub readonly_workspace: bool,
    /// Exec tracing (exectrace.rs).
    #[serde(default)]
    pub exec_trace: ExecTrace,
}

/// `tracing:` as a run takes it.
#[derive(Debug, Clone, Copy, Default, Serialize, Deserialize, PartialEq)]
#[serde(rename_all = "snake_case")]
pub enum ExecTrace {
    /// No `tracing:`: traced; an image the tracer cannot run in runs untraced, with a warning.
    #[default]
    On,
    /// `tracing.disable_exec: false` (or `tracing:` without it): traced, or the run fails.
    Required,
    /// `tracing.disable_exec: true`: no exec trace.
    Off,
}

/// `tracing:`.
#[derive(Debug, Default, Clone, Deserialize)]
#[serde(default)]
pub struct Tracing {
    pub disable_exec: Option<bool>,
}

#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
pub struct Bind {
    pub source: PathBuf,
    pub target: String,
    pub readonly: bool,
}

/// Env names moat owns inside the container; `env:`/`-e` may not set them.
const MOAT_OWNED: &[&str] = &[
    "HTTP_PROXY",
    "HTTPS_PROXY",
    "http_proxy",
    "https_proxy",
    "NO_PROXY",
    "no_proxy",
    "ALL_PROXY",
    "all_proxy",
    "CURL_ALL_PROXY",
    "MOAT_PROXY_ADDR",
    "MOAT_PRE_RUN",
    "MOAT_VOLUME_CHOWN",
];

const TOP: &[&str] = &[
    "name",
    "agent",
    "version",
    "runtime",
    "dependencies",
    "services",
    "grants",
    "env",
    "secrets",
    "mounts",
    "volumes",
    "ports",
    "network",
    "command",
    "interactive",
    "hooks",
    "sandbox",
    "container",
    "claude",
    "codex",
    "gemini",
    "language_servers",
    "mcp",
    "snapshots",
    "tracing",
    "aws",
    "decoys",
    "on_decoy",
    "budget",
    "workspace",
];

/// Known keys below a path (`*` = any key of a user map, `[]` = list items).
fn known_keys(path: &str) -> Option<&'static [&'static str]> {
    Some(match path {
        "" => TOP,
        "network" => &["policy", "allow", "rules", "host", "keep_policy"],
        "hooks" => &["post_build_root", "post_build", "pre_run"],
        "container" => &["memory", "cpus", "dns"],
        "volumes[]" => &["name", "target", "readonly", "type"],
        "services.*" => &["env", "image", "wait"],
        "claude" => &[
            "version",
            "base_url",
            "sync_logs",
            "plugins",
            "marketplaces",
            "mcp",
        ],
        "claude.marketplaces.*" => &["source", "repo", "url", "path", "ref"],
        "claude.mcp.*" | "gemini.mcp.*" | "codex.mcp.*" => {
            &["command", "args", "env", "grant", "cwd"]
        }
        "codex" => &["version", "sync_logs", "mcp"],
        "gemini" => &["version", "sync_logs", "mcp"],
        "mcp[]" => &["name", "url", "auth"],
        "mcp[].auth" => &["grant", "header"],
        "snapshots" => &["disabled", "triggers", "exclude", "retention"],
        "aws" => &["mode"],
        "budget" => crate::budget::SECTION_KEYS,
        "snapshots.triggers" => &[
            "disable_pre_run",
            "disable_git_commits",
            "disable_builds",
            "disable_idle",
            "idle_threshold_seconds",
        ],
        "snapshots.exclude" => &["ignore_gitignore", "additional"],
        "snapshots.retention" => &["max_count", "delete_initial"],
        "tracing" => &["disable_exec"],
        _ => return None,
    })
}

/// Paths whose keys are the user's own (env names, service names, plugin names...).
fn is_user_map(path: &str) -> bool {
    matches!(
        path,
        "env"
            | "secrets"
            | "ports"
            | "services"
            | "services.*.env"
            | "claude.plugins"
            | "claude.marketplaces"
            | "claude.mcp"
            | "gemini.mcp"
            | "codex.mcp"
            | "claude.mcp.*.env"
            | "gemini.mcp.*.env"
            | "codex.mcp.*.env"
    )
}

pub struct Loaded {
    pub config: Config,
    #[allow(dead_code)] // kept for messages that name the file
    pub file: Option<PathBuf>,
    pub warnings: Vec<String>,
}

/// Find and load moat.yaml or agent.yaml in `workspace`; none is an empty config.
pub fn load(workspace: &Path) -> Result<Loaded> {
    for name in ["moat.yaml", "agent.yaml"] {
        let p = workspace.join(name);
        match std::fs::read_to_string(&p) {
            Ok(text) => {
                let (config, warnings) = parse(&text, &p.display().to_string())?;
                return Ok(Loaded {
                    config,
                    file: Some(p),
                    warnings,
                });
            }
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => continue,
            Err(e) => return Err(Error::io(format!("reading {}", p.display()), e)),
        }
    }
    Ok(Loaded {
        config: Config::default(),
        file: None,
        warnings: vec![],
    })
}

/// Parse and validate one file's text; `file` names it in messages.
pub fn parse(text: &str, file: &str) -> Result<(Config, Vec<String>)> {
    let mut warnings = vec![];
    if text.trim().is_empty() {
        return Ok((Config::default(), warnings));
    }
    let raw: Value = serde_saphyr::from_str(text)
        .map_err(|e| Error::config(format!("{file}: {}", one_line(&e.to_string()))))?;
    if !raw.is_object() && !raw.is_null() {
        return Err(Error::config(format!(
            "{file}: expected a mapping of settings at the top"
        )));
    }
    let lines = crate::yaml_lines::Lines::of(text);
    walk(&raw, "", "", &lines, text, file, &mut warnings);
    refuse_unbuilt(&raw, &lines, file)?;
    let config: Config = serde_saphyr::from_str(text)
        .map_err(|e| Error::config(format!("{file}: {}", one_line(&e.to_string()))))?;
    validate(&config, text, file)?;
    Ok((config, warnings))
}

fn one_line(s: &str) -> String {
    s.lines()
        .map(str::trim)
        .filter(|l| !l.is_empty())
        .collect::<Vec<_>>()
        .join("; ")
}

/// `path` is the generalised path (`services.*`, `mcp[]`) the known keys are listed under;
/// `real` the node's own path (`services.redis`, `mcp[0]`), whose line is looked up.
fn walk(
    v: &Value,
    path: &str,
    real: &str,
    lines: &crate::yaml_lines::Lines,
    text: &str,
    file: &str,
    warnings: &mut Vec<String>,
) {
    match v {
        Value::Object(m) => {
            let keys = known_keys(path);
            for (k, child) in m {
                if let Some(keys) = keys
                    && !keys.contains(&k.as_str())
                {
                    let at = lines
                        .get(&join(real, k))
                        .or_else(|| line_of(text, k))
                        .map(|l| format!(":{l}"))
                        .unwrap_or_default();
                    let field = if path.is_empty() {
                        k.clone()
                    } else {
                        format!("{path}.{k}")
                    };
                    let mut w = format!("{file}{at}: unknown field {field:?} (ignored)");
                    if let Some(s) = suggest(k, keys) {
                        w.push_str(&format!("; did you mean {s:?}?"));
                    }
                    warnings.push(w);
                    continue;
                }
                let sub = if path.is_empty() {
                    k.clone()
                } else if is_user_map(path) {
                    format!("{path}.*")
                } else {
                    format!("{path}.{k}")
                };
                walk(child, &sub, &join(real, k), lines, text, file, warnings);
            }
        }
        Value::Array(items) => {
            for (n, i) in items.iter().enumerate() {
                let sub = format!("{path}[]");
                walk(
                    i,
                    &sub,
                    &format!("{real}[{n}]"),
                    lines,
                    text,
                    file,
                    warnings,
                );
            }
        }
        _ => {}
    }
}

fn join(path: &str, key: &str) -> String {
    if path.is_empty() {
        key.to_string()
    } else {
        format!("{path}.{key}")
    }
}

/// The 1-based line where `key:` first appears: the fallback when the parser's locations
/// have no node at the path.
fn line_of(text: &str, key: &str) -> Option<usize> {
    text.lines()
        .position(|l| {
            let t = l.trim_start().trim_start_matches("- ");
            t.strip_prefix(key)
                .map(|r| r.trim_start().starts_with(':'))
                .unwrap_or(false)
                || t.starts_with(&format!("\"{key}\":"))
        })
        .map(|i| i + 1)
}

fn suggest<'a>(k: &str, known: &[&'a str]) -> Option<&'a str> {
    known
        .iter()
        .map(|c| (moat_core::edit_distance(k, c), *c))
        .filter(|(d, c)| *d <= 2.max(c.len() / 3))
        .min()
        .map(|(_, c)| c)
}

/// An error at `field` (a path such as `network.allow[2]` or `services.redis.env`, then
/// `key` below it), at the line the parser found it on.
fn bad(file: &str, text: &str, key: &str, field: &str, msg: impl std::fmt::Display) -> Error {
    let lines = crate::yaml_lines::Lines::of(text);
    let at = lines
        .get(field)
        .or_else(|| lines.get(&join(field, key)))
        .or_else(|| line_of(text, key))
        .map(|l| format!(":{l}"))
        .unwrap_or_default();
    Error::config(format!("{file}{at}: {field}: {msg}"))
}

fn validate(c: &Config, text: &str, file: &str) -> Result<()> {
    if let Some(r) = &c.runtime {
        check_runtime(r).map_err(|m| bad(file, text, "runtime", "runtime", m))?;
    }
    if let Some(s) = &c.sandbox
        && !s.is_empty()
        && s != "none"
    {
        return Err(bad(
            file,
            text,
            "sandbox",
            "sandbox",
            format!("must be empty or \"none\", not {s:?}"),
        ));
    }
    if let Some(m) = &c.aws.mode
        && m != "sign"
        && m != AWS_MODE_SESSION
    {
        return Err(bad(
            file,
            text,
            "mode",
            "aws.mode",
            format!("must be \"sign\" or \"{AWS_MODE_SESSION}\", not {m:?}"),
        ));
    }
    if let Some(p) = &c.network.policy {
        check_policy(p).map_err(|m| bad(file, text, "policy", "network.policy", m))?;
    }
    for (i, h) in c.network.allow.iter().enumerate() {
        check_host_pattern(h)
            .map_err(|m| bad(file, text, "allow", &format!("network.allow[{i}]"), m))?;
    }
    net_rules(&c.network.rules).map_err(|m| bad(file, text, "rules", "network.rules", m))?;
    let lines = crate::yaml_lines::Lines::of(text);
    for (i, d) in c.dependencies.iter().enumerate() {
        check_dependency(d).map_err(|m| {
            let at = lines
                .get(&format!("dependencies[{i}]"))
                .or_else(|| line_of_item(text, d))
                .or_else(|| line_of(text, "dependencies"))
                .map(|l| format!(":{l}"))
                .unwrap_or_default();
            Error::config(format!("{file}{at}: dependencies: {m}"))
        })?;
    }
    let declared: Vec<String> = c
        .dependencies
        .iter()
        .filter_map(|d| crate::deps::resolve(d).ok())
        .filter(|d| d.entry.kind == crate::deps::Kind::Service)
        .map(|d| d.entry.name.clone())
        .collect();
    for (i, n) in declared.iter().enumerate() {
        if declared[..i].contains(n) {
            return Err(bad(
                file,
                text,
                "dependencies",
                "dependencies",
                format!("the service {n} is listed twice; a run has one {n} sidecar"),
            ));
        }
    }
    for (name, s) in &c.services {
        if !declared.contains(name) {
            let what = if declared.is_empty() {
                "no service is in dependencies".to_string()
            } else {
                format!("the services in dependencies are {}", declared.join(", "))
            };
            return Err(bad(
                file,
                text,
                name,
                &format!("services.{name}"),
                format!(
                    "{name:?} is not a service dependency of this run ({what}); add e.g. {name}@VERSION to dependencies"
                ),
            ));
        }
        for k in s.env.keys() {
            let ok = !k.is_empty()
                && !k.starts_with(|c: char| c.is_ascii_digit())
                && k.chars().all(|c| c.is_ascii_alphanumeric() || c == '_');
            if !ok {
                return Err(bad(
                    file,
                    text,
                    k,
                    &format!("services.{name}.env"),
                    format!("{k:?} is not a valid environment variable name"),
                ));
            }
        }
        if let Some(i) = &s.image
            && (i.is_empty() || i.chars().any(char::is_whitespace))
        {
            return Err(bad(
                file,
                text,
                "image",
                &format!("services.{name}.image"),
                format!("{i:?} is not an image reference"),
            ));
        }
    }
    for l in &c.language_servers {
        crate::deps::language_server(l)
            .map_err(|m| bad(file, text, "language_servers", "language_servers", m))?;
    }
    crate::plugins::check_plugins(&c.claude.plugins)
        .map_err(|(k, m)| bad(file, text, &k, &format!("claude.plugins.{k}"), m))?;
    for g in &c.grants {
        if g.trim().is_empty() {
            return Err(bad(file, text, "grants", "grants", "a grant name is empty"));
        }
    }
    for k in c.env.keys() {
        check_env_name(k).map_err(|m| bad(file, text, k, &format!("env.{k}"), m))?;
    }
    for (i, m) in c.mounts.iter().enumerate() {
        parse_mount(m, Path::new("/"))
            .map_err(|e| bad(file, text, "mounts", &format!("mounts[{i}]"), e))?;
    }
    if !c.volumes.is_empty() && c.name.is_none() && c.agent.is_none() {
        return Err(bad(
            file,
            text,
            "volumes",
            "volumes",
            "needs `name` to be set (volumes are kept per agent name)",
        ));
    }
    for (i, v) in c.volumes.iter().enumerate() {
        check_volume(v).map_err(|m| bad(file, text, "volumes", &format!("volumes[{i}]"), m))?;
    }
    if c.snapshots.retention.max_count == Some(0) {
        return Err(bad(
            file,
            text,
            "max_count",
            "snapshots.retention.max_count",
            "must be at least 1 (use `snapshots: {disabled: true}` for none)",
        ));
    }
    if let Some(t) = c.snapshots.triggers.idle_threshold_seconds
        && !(1..=IDLE_THRESHOLD_MAX).contains(&t)
    {
        return Err(bad(
            file,
            text,
            "idle_threshold_seconds",
            "snapshots.triggers.idle_threshold_seconds",
            format!("must be 1-{IDLE_THRESHOLD_MAX} seconds (use `disable_idle: true` for none)"),
        ));
    }
    for p in &c.snapshots.exclude.additional {
        if p.trim().is_empty() || p.split('/').any(|c| c == "..") {
            return Err(bad(
                file,
                text,
                "additional",
                "snapshots.exclude.additional",
                format!("{p:?} is not a pattern (no empty patterns, no \"..\")"),
            ));
        }
    }
    if let Some(cmd) = &c.command
        && cmd.is_empty()
    {
        return Err(bad(
            file,
            text,
            "command",
            "command",
            "must not be an empty list",
        ));
    }
    if c.container.memory == Some(0) {
        return Err(bad(
            file,
            text,
            "memory",
            "container.memory",
            "must be a positive number of megabytes",
        ));
    }
    if c.container.cpus == Some(0) {
        return Err(bad(
            file,
            text,
            "cpus",
            "container.cpus",
            "must be a positive number of CPUs",
        ));
    }
    for d in c.container.dns.iter().flatten() {
        if d.parse::<std::net::IpAddr>().is_err() {
            return Err(bad(
                file,
                text,
                "dns",
                "container.dns",
                format!("{d:?} is not an IP address"),
            ));
        }
    }
    for (ep, port) in &c.ports {
        moat_core::routes::check_label(ep).map_err(|m| {
            bad(
                file,
                text,
                ep,
                &format!("ports.{ep}"),
                format!("endpoint name {m}"),
            )
        })?;
        if *port == 0 {
            return Err(bad(
                file,
                text,
                ep,
                &format!("ports.{ep}"),
                "the port must be 1-65535",
            ));
        }
    }
    for (key, name) in [("name", &c.name), ("agent", &c.agent)] {
        if let Some(name) = name {
            check_name(name).map_err(|m| bad(file, text, key, key, m))?;
        }
    }
    Ok(())
}

/// Fields of the reference that this version has not built: each is refused (exit 78) with
/// what is missing and what to do instead, so nothing in a file is accepted and dropped.
/// `tracing.disable_exec` is built (exectrace.rs) and so are the snapshot triggers
/// (triggers.rs); only their types, and that build snapshots have a trace to follow, are
/// checked here.
fn refuse_unbuilt(raw: &Value, lines: &crate::yaml_lines::Lines, file: &str) -> Result<()> {
    let refuse = |path: &str, msg: &str| {
        let at = lines.get(path).map(|l| format!(":{l}")).unwrap_or_default();
        Err(Error::config(format!("{file}{at}: {path}: {msg}")))
    };
    let at = |p: &str| raw.pointer(p);
    if at("/network/host").is_some() {
        return refuse(
            "network.host",
            "reaching ports on the host from the run is not built yet; remove it (run the \
             service as a dependency sidecar, e.g. postgres@17, or reach it by a host name \
             in network.allow)",
        );
    }
    if at("/network/keep_policy").is_some() {
        return refuse(
            "network.keep_policy",
            "Keep policies are not built yet; remove it (use network.rules for per-host \
             method and path rules)",
        );
    }
    // Keep policies elsewhere in the Go moat's configuration (REFERENCE.md).
    if let Some(items) = at("/mcp").and_then(Value::as_array) {
        for (i, m) in items.iter().enumerate() {
            if m.get("policy").is_some() {
                return refuse(
                    &format!("mcp[{i}].policy"),
                    "Keep policies are not built yet; remove it",
                );
            }
        }
    }
    if at("/claude/llm-gateway").is_some() {
        return refuse(
            "claude.llm-gateway",
            "the LLM gateway policy is not built yet; remove it",
        );
    }
    if let Some(t) = at("/tracing") {
        match t {
            Value::Null => {}
            Value::Object(o) => match o.get("disable_exec") {
                None | Some(Value::Bool(_)) => {}
                Some(_) => {
                    return refuse(
                        "tracing.disable_exec",
                        "must be true (no exec trace) or false (exec trace required)",
                    );
                }
            },
            _ => return refuse("tracing", "must be a mapping (disable_exec: true|false)"),
        }
    }
    // Build snapshots follow the run's exec trace (triggers.rs): asking for them while
    // switching the trace off is refused rather than accepted and left idle.
    if at("/snapshots/triggers/disable_builds") == Some(&Value::Bool(false))
        && at("/tracing/disable_exec") == Some(&Value::Bool(true))
    {
        return refuse(
            "snapshots.triggers.disable_builds",
            "build snapshots come from the run's exec trace, which tracing.disable_exec: true \
             switches off, so no build would ever be seen; set one of them the other way",
        );
    }
    match at("/workspace") {
        None | Some(Value::Null) => {}
        Some(Value::String(w)) if w == "rw" || w == "ro" => {}
        Some(Value::String(w)) if w == "volume" => {
            return refuse(
                "workspace",
                "volume workspaces (a copy of the workspace in a Docker volume) are not built \
                 yet; use rw (the default) or ro",
            );
        }
        Some(Value::Object(m)) if m.contains_key("mode") => {
            return refuse(
                "workspace",
                "the Go moat's `workspace: {mode: ...}` is written `workspace: rw` (bind, the \
                 default) or `workspace: ro` here; volume mode is not built yet",
            );
        }
        Some(w) => {
            return refuse(
                "workspace",
                &format!(
                    "must be rw or ro, not {}",
                    w.to_string().chars().take(40).collect::<String>()
                ),
            );
        }
    }
    Ok(())
}

fn check_runtime(r: &str) -> std::result::Result<(), String> {
    match r {
        "docker" => Ok(()),
        "apple" => Err("apple containers need macOS; this host runs Linux (use docker)".into()),
        _ => Err(format!("must be docker or apple, not {r:?}")),
    }
}

fn check_policy(p: &str) -> std::result::Result<(), String> {
    match p {
        "permissive" | "strict" => Ok(()),
        _ => Err(format!("must be permissive or strict, not {p:?}")),
    }
}

fn check_host_pattern(h: &str) -> std::result::Result<(), String> {
    moat_core::host::HostPattern::parse(h)
        .map(|_| ())
        .map_err(|e| format!("{h:?}: {}", e.0))
}

fn check_name(n: &str) -> std::result::Result<(), String> {
    if n.is_empty()
        || n.len() > 63
        || !n
            .chars()
            .all(|c| c.is_ascii_alphanumeric() || "-_.".contains(c))
    {
        return Err(format!(
            "{n:?} must be 1-63 letters, digits, '-', '_' or '.'"
        ));
    }
    Ok(())
}

pub(crate) fn check_env_name(k: &str) -> std::result::Result<(), String> {
    let ok = !k.is_empty()
        && !k.starts_with(|c: char| c.is_ascii_digit())
        && k.chars().all(|c| c.is_ascii_alphanumeric() || c == '_');
    if !ok {
        return Err(format!("{k:?} is not a valid environment variable name"));
    }
    if MOAT_OWNED.contains(&k) {
        return Err(format!(
            "{k} is set by moat to reach the run's proxy and cannot be overridden"
        ));
    }
    // The container's entrypoint (moat-init, as root) reads MOAT_* settings.
    if k.starts_with("MOAT_") {
        return Err(format!(
            "{k}: names starting with MOAT_ are reserved for moat's own settings in the container"
        ));
    }
    Ok(())
}

/// A dependency must be in the registry (deps.yaml), at a version it offers.
pub fn check_dependency(d: &str) -> std::result::Result<(), String> {
    crate::deps::resolve(d).map(|_| ())
}

/// The 1-based line of a list item `d` (block `- d` or inside a flow `[..., d]`).
fn line_of_item(text: &str, d: &str) -> Option<usize> {
    let unq = |s: &str| s.trim().trim_matches(|c| c == '"' || c == '\'').to_string();
    text.lines()
        .position(|l| {
            let t = l.trim();
            if let Some(rest) = t.strip_prefix("- ") {
                return unq(rest.split(" #").next().unwrap_or(rest)) == d;
            }
            match (t.find('['), t.rfind(']')) {
                (Some(a), Some(b)) if a < b => t[a + 1..b].split(',').any(|x| unq(x) == d),
                _ => false,
            }
        })
        .map(|i| i + 1)
}

fn check_volume(v: &Volume) -> std::result::Result<(), String> {
    let n = &v.name;
    let ok = n.starts_with(|c: char| c.is_ascii_lowercase() || c.is_ascii_digit())
        && n.chars()
            .all(|c| c.is_ascii_lowercase() || c.is_ascii_digit() || c == '_' || c == '-');
    if !ok {
        return Err(format!("volume name {n:?} must match [a-z0-9][a-z0-9_-]*"));
    }
    if let Some(k) = &v.kind
        && k != "bind"
        && k != "volume"
    {
        return Err(format!(
            "volume {n:?}: type must be bind or volume, not {k:?}"
        ));
    }
    if !v.target.starts_with('/') || v.target.contains(char::is_whitespace) {
        return Err(format!(
            "volume {n:?}: target {:?} must be an absolute path without spaces",
            v.target
        ));
    }
    Ok(())
}

/// `host:container[:ro|rw]`, host relative to `base`.
pub fn parse_mount(m: &str, base: &Path) -> std::result::Result<Bind, String> {
    let parts: Vec<&str> = m.split(':').collect();
    let (src, dst, mode) = match parts.as_slice() {
        [s, d] => (*s, *d, "rw"),
        [s, d, mode] => (*s, *d, *mode),
        _ => return Err(format!("{m:?} is not HOST:CONTAINER[:ro|rw]")),
    };
    if src.is_empty() || !dst.starts_with('/') {
        return Err(format!("{m:?}: the container path must be absolute"));
    }
    let readonly = match mode {
        "ro" => true,
        "rw" => false,
        _ => return Err(format!("{m:?}: mode must be ro or rw, not {mode:?}")),
    };
    let source = if Path::new(src).is_absolute() {
        PathBuf::from(src)
    } else {
        base.join(src)
    };
    Ok(Bind {
        source,
        target: dst.to_string(),
        readonly,
    })
}

/// `network.rules`: `"host"` or `{host: ["allow GET /x/**", ...]}` → `net_rule` records.
pub fn net_rules(rules: &[Value]) -> std::result::Result<Vec<Value>, String> {
    let mut out = vec![];
    for r in rules {
        match r {
            Value::String(h) => {
                check_host_pattern(h)?;
                out.push(serde_json::json!({"v":1,"type":"net_rule","host":h,"rules":[]}));
            }
            Value::Object(m) => {
                for (h, list) in m {
                    check_host_pattern(h)?;
                    let list: Vec<String> = serde_json::from_value(list.clone()).map_err(|_| {
                        format!("{h}: expected a list of \"allow|deny METHOD /path\" strings")
                    })?;
                    for rule in &list {
                        let w: Vec<&str> = rule.split_whitespace().collect();
                        // `allow|deny service:Action` for AWS requests the proxy signs.
                        let action = w.len() == 2 && w[1].contains(':');
                        if !(w.len() == 3 && w[2].starts_with('/') || action)
                            || !matches!(w[0], "allow" | "deny")
                        {
                            return Err(format!(
                                "{h}: {rule:?} is not \"allow|deny METHOD /path\" or \"allow|deny service:Action\""
                            ));
                        }
                    }
                    out.push(serde_json::json!({"v":1,"type":"net_rule","host":h,"rules":list}));
                }
            }
            _ => return Err("each rule is a host or a {host: [rules]} mapping".into()),
        }
    }
    Ok(out)
}

fn parse_env_flag(e: &str) -> Result<(String, String)> {
    let (k, v) = match e.split_once('=') {
        Some((k, v)) => (k.to_string(), v.to_string()),
        // `-e NAME` passes the host's value through, as docker does.
        None => (e.to_string(), std::env::var(e).unwrap_or_default()),
    };
    check_env_name(&k).map_err(|m| Error::usage(format!("-e {e}: {m}")))?;
    Ok((k, v))
}

/// CLI flags over file over defaults.
pub fn resolve(args: &RunArgs, loaded: &Loaded, workspace: &Path) -> Result<RunSpec> {
    let c = &loaded.config;
    let rt = args.runtime.as_deref().or(c.runtime.as_deref());
    if let Some(r) = rt {
        check_runtime(r).map_err(|m| Error::config(format!("runtime: {m}")))?;
    }
    let dir_name = workspace
        .file_name()
        .map(|n| n.to_string_lossy().to_string())
        .unwrap_or_else(|| "workspace".into());
    let name = args
        .name
        .clone()
        .or(c.name.clone())
        .unwrap_or_else(|| sanitize_name(&dir_name));
    check_name(&name).map_err(|m| Error::usage(format!("--name: {m}")))?;
    // With endpoints the name becomes a host name (ENDPOINT.NAME.localhost): one DNS label.
    let name = if c.ports.is_empty() {
        name
    } else if args.name.is_none() && c.name.is_none() {
        dns_label(&name)
    } else {
        moat_core::routes::check_label(&name).map_err(|m| {
            Error::usage(format!(
                "--name: this run has ports:, so its name becomes a host name: {m}"
            ))
            .with_hint("pick a name such as dark-mode (set it with --name or name: in moat.yaml)")
        })?;
        name
    };
    let router_port = if c.ports.is_empty() {
        None
    } else {
        Some(router_port()?)
    };
    let agent = c
        .agent
        .clone()
        .or(c.name.clone())
        .unwrap_or_else(|| name.clone());

    let mut grants = c.grants.clone();
    for g in &args.grants {
        if !grants.contains(g) {
            grants.push(g.clone());
        }
    }
    let mut env = c.env.clone();
    for e in &args.env {
        let (k, v) = parse_env_flag(e)?;
        env.insert(k, v);
    }
    let mut secrets = BTreeMap::new();
    for (k, r) in &c.secrets {
        check_env_name(k).map_err(|m| Error::config(format!("secrets: {k}: {m}")))?;
        moat_secrets::SecretRef::parse(r)
            .map_err(|m| Error::config(format!("secrets: {k}: {m}")))?;
        if c.env.contains_key(k) {
            return Err(Error::config(format!(
                "{k} is under both env: and secrets:; keep one"
            )));
        }
        // `-e NAME=...` on the command line wins, as flags win over the file.
        if !env.contains_key(k) {
            secrets.insert(k.clone(), r.clone());
        }
    }
    let mut binds = vec![];
    for m in c.mounts.iter() {
        binds.push(parse_mount(m, workspace).map_err(|e| Error::config(format!("mounts: {e}")))?);
    }
    let cwd = std::env::current_dir().map_err(|e| Error::io("reading the current directory", e))?;
    for m in &args.mounts {
        binds.push(parse_mount(m, &cwd).map_err(|e| Error::usage(format!("--mount: {e}")))?);
    }
    for b in &mut binds {
        if !b.source.exists() {
            return Err(Error::config(format!(
                "mount source {} does not exist",
                b.source.display()
            )));
        }
        // Docker gets the path with symlinks resolved: what the sensitive-path check
        // judged is what is mounted, even if a link is swapped afterwards.
        b.source = crate::trust::real(&b.source);
    }
    let policy = args
        .policy
        .clone()
        .or(c.network.policy.clone())
        .unwrap_or_else(|| "permissive".into());
    check_policy(&policy).map_err(|m| Error::usage(format!("--policy: {m}")))?;
    let mut allow = c.network.allow.clone();
    for h in &args.allow_hosts {
        check_host_pattern(h).map_err(|m| Error::usage(format!("--allow-host: {m}")))?;
        allow.push(h.clone());
    }
    let net_rules =
        net_rules(&c.network.rules).map_err(|m| Error::config(format!("network.rules: {m}")))?;
    let sandbox = !(args.no_sandbox || c.sandbox.as_deref() == Some("none"));
    let snapshots = SnapshotSpec {
        disabled: c.snapshots.disabled || args.no_snapshots,
        pre_run: !c.snapshots.triggers.disable_pre_run,
        exclude: c.snapshots.exclude.additional.clone(),
        ignore_gitignore: c.snapshots.exclude.ignore_gitignore,
        max_count: c.snapshots.retention.max_count.unwrap_or(10),
        delete_initial: c.snapshots.retention.delete_initial,
        git_commits: !c.snapshots.triggers.disable_git_commits,
        builds: !c.snapshots.triggers.disable_builds,
        idle: !c.snapshots.triggers.disable_idle,
        idle_threshold_seconds: c
            .snapshots
            .triggers
            .idle_threshold_seconds
            .unwrap_or(IDLE_THRESHOLD_DEFAULT),
    };
    let mut command = args.command.clone().or(c.command.clone());
    let mut agent_cli = None;
    let mut agent_mcp = vec![];
    if let Some(cli) = &args.agent {
        let sec = match cli.as_str() {
            "claude" => &c.claude,
            "codex" => &c.codex,
            _ => &c.gemini,
        };
        let version = sec
            .version
            .clone()
            .unwrap_or_else(|| crate::agent::default_version(cli).to_string());
        crate::agent::check_version(&version)
            .map_err(|m| Error::config(format!("{cli}.version: {m}")))?;
        if let Some(u) = &sec.base_url
            && !(u.starts_with("http://") || u.starts_with("https://"))
        {
            return Err(Error::config(format!(
                "{cli}.base_url: {u:?} is not an http:// or https:// URL"
            )));
        }
        let secret_names = c.secrets.keys().cloned().collect();
        for (n, v) in &sec.mcp {
            agent_mcp.push(crate::local_mcp::parse(cli, n, v, &secret_names)?);
        }
        let spec = crate::agent::AgentSpec {
            cli: cli.clone(),
            version,
            prompt: args.prompt.clone(),
            args: args.command.clone().unwrap_or_default(),
            keep_prompts: args.keep_prompts,
            sync_logs: sec.sync_logs.unwrap_or(true),
            base_url: sec.base_url.clone(),
            resume: args.resume.clone(),
        };
        command = Some(crate::agent::command(&spec));
        let own = crate::agent::default_grant(cli);
        if grants.is_empty() {
            grants.push(own.to_string());
        } else if !grants.iter().any(|g| g == own)
            && crate::agent::needs_default_grant(cli, &grants, &crate::agent::stored_providers()?)
        {
            // Another provider's grant (`moat claude --grant github`) must not sign the
            // agent out: its own credential comes too.
            grants.push(own.to_string());
        }
        agent_cli = Some(spec);
    }
    // After the agent's default grant: an MCP server's grant alone must not replace it.
    for g in agent_mcp.iter().filter_map(|l| l.grant.as_ref()) {
        if !grants.contains(g) {
            grants.push(g.clone());
        }
    }
    let (decoys, decoys_auto, on_decoy) = resolve_decoys(args, c)?;
    let local: Vec<String> = agent_mcp.iter().map(|l| l.name.clone()).collect();
    let mcp = crate::mcp::resolve(&c.mcp, &mut grants, &local)?;
    Ok(RunSpec {
        name,
        agent,
        workspace: workspace.to_path_buf(),
        grants,
        env,
        binds,
        command,
        interactive: args.interactive || c.interactive,
        dependencies: c.dependencies.clone(),
        hooks: c.hooks.clone(),
        policy,
        allow,
        net_rules,
        memory_mb: c.container.memory,
        cpus: c.container.cpus,
        dns: c.container.dns.clone().unwrap_or_default(),
        sandbox,
        rebuild: args.rebuild,
        detach: args.detach,
        secrets,
        tty_size: None,
        ports: c.ports.clone(),
        router_port,
        snapshots,
        no_audit: args.no_audit,
        docker_volumes: vec![],
        worktree: None,
        services: c.services.clone(),
        language_servers: c.language_servers.clone(),
        npm_registry: (agent_cli.is_some() || npm_language_server(&c.language_servers))
            .then(crate::agent::host_npm_registry)
            .flatten(),
        agent_cli,
        agent_mcp,
        mcp,
        claude_plugins: None,
        aws_session_credentials: c.aws.mode.as_deref() == Some(AWS_MODE_SESSION),
        decoys,
        decoys_auto,
        on_decoy,
        budget: crate::budget::resolve(&args.budget, &c.budget, &config_name(loaded))?,
        readonly_workspace: args.read_only_workspace || c.workspace.as_deref() == Some("ro"),
        exec_trace: match &c.tracing {
            None => ExecTrace::On,
            Some(Tracing {
                disable_exec: Some(true),
            }) => ExecTrace::Off,
            Some(_) => ExecTrace::Required,
        },
    })
}

/// `decoys:` (`auto` or a list of names, which may include `auto`) and `--decoy`, and
/// `on_decoy:`/`--on-decoy` (stop, block or log).
fn resolve_decoys(args: &RunArgs, c: &Config) -> Result<(Vec<String>, bool, Option<String>)> {
    let bad = |m: &str| Error::config(format!("decoys: {m}"));
    let mut names: Vec<String> = match &c.decoys {
        None | Some(Value::Null) => vec![],
        Some(Value::String(s)) => vec![s.clone()],
        Some(Value::Array(a)) => a
            .iter()
            .map(|v| v.as_str().map(String::from))
            .collect::<Option<_>>()
            .ok_or_else(|| bad("expected auto or a list of decoy names"))?,
        Some(_) => return Err(bad("expected auto or a list of decoy names")),
    };
    names.extend(args.decoys.iter().cloned());
    let auto = names.iter().any(|n| n == "auto");
    let mut out: Vec<String> = vec![];
    for n in names.into_iter().filter(|n| n != "auto") {
        if n.is_empty() || n.starts_with('-') {
            return Err(bad(&format!("{n:?} is not a decoy name")));
        }
        if !out.contains(&n) {
            out.push(n);
        }
    }
    let on = args.on_decoy.clone().or(c.on_decoy.clone());
    if let Some(o) = &on
        && !matches!(o.as_str(), "stop" | "block" | "log")
    {
        let m = format!("on_decoy {o:?}: expected stop, block or log");
        return Err(if args.on_decoy.is_some() {
            Error::usage(m)
        } else {
            Error::config(m)
        });
    }
    Ok((out, auto, on))
}

fn config_name(loaded: &Loaded) -> String {
    loaded
        .file
        .as_ref()
        .map(|f| f.display().to_string())
        .unwrap_or_else(|| "moat.yaml".into())
}

/// Whether a language server is installed with npm at image build.
fn npm_language_server(ls: &[String]) -> bool {
    ls.iter().any(|l| {
        crate::deps::language_server(l)
            .map(|e| e.run.iter().any(|r| r.starts_with("npm ")))
            .unwrap_or(false)
    })
}

/// The hostname router's port: MOAT_PROXY_PORT, else 8080.
fn router_port() -> Result<u16> {
    moat_core::routes::router_port(None).map_err(Error::config)
}

/// A default name (from the workspace directory) made into one DNS label.
fn dns_label(s: &str) -> String {
    let mut n: String = s
        .chars()
        .map(|c| {
            if c.is_ascii_alphanumeric() {
                c.to_ascii_lowercase()
            } else {
                '-'
            }
        })
        .collect();
    while n.contains("--") {
        n = n.replace("--", "-");
    }
    let n = n.trim_matches('-');
    let n: String = n.chars().take(63).collect();
    let n = n.trim_end_matches('-');
    if n.is_empty() { "run".into() } else { n.into() }
}

/// Volumes need the agent name; resolved here so the spec carries host paths.
pub fn volume_binds(c: &Config, agent: &str, volumes_dir: &Path) -> Vec<Bind> {
    c.volumes
        .iter()
        .filter(|v| v.kind.as_deref() != Some("volume"))
        .map(|v| Bind {
            source: volumes_dir.join(agent).join(&v.name),
            target: v.target.clone(),
            readonly: v.readonly,
        })
        .collect()
}

pub fn docker_volumes(c: &Config, agent: &str) -> Vec<DockerVolume> {
    c.volumes
        .iter()
        .filter(|v| v.kind.as_deref() == Some("volume"))
        .map(|v| DockerVolume {
            agent: agent.to_string(),
            name: v.name.clone(),
            target: v.target.clone(),
            readonly: v.readonly,
        })
        .collect()
}

fn sanitize_name(s: &str) -> String {
    let n: String = s
        .chars()
        .map(|c| {
            if c.is_ascii_alphanumeric() || "-_.".contains(c) {
                c
            } else {
                '-'
            }
        })
        .take(63)
        .collect();
    if n.is_empty() { "run".into() } else { n }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_reference_example_parses() {
        let text = include_str!("../tests/fixtures/reference.yaml");
        // The reference's complete example with the triggers and tracing moat has not built
        // switched off (the example as written is refused: see the seeds test).
        let (c, w) = parse(text, "agent.yaml").unwrap();
        assert!(w.is_empty(), "{w:?}");
        assert_eq!(c.name.as_deref(), Some("my-agent"));
        assert_eq!(c.network.policy.as_deref(), Some("strict"));
        assert_eq!(c.volumes[0].target, "/home/moatuser/.myapp");
        assert_eq!(c.hooks.pre_run.as_deref(), Some("npm install"));
        assert_eq!(c.container.memory, Some(8192));
    }

    /// Fields of the reference moat has not built are refused (78) at their line with what
    /// to do instead; the values that are exactly true of moat are accepted without a word.
    #[test]
    fn unbuilt_fields_are_refused_and_truthful_no_ops_accepted() {
        for (text, line, want) in [
            ("name: a\nnetwork:\n  host: [5432]\n", 3, "network.host"),
            (
                "network:\n  policy: strict\n  keep_policy: p.yaml\n",
                3,
                "network.keep_policy",
            ),
            (
                "tracing:\n  disable_exec: \"no\"\n",
                2,
                "tracing.disable_exec: must be true",
            ),
            ("name: a\ntracing: on\n", 2, "tracing: must be a mapping"),
            (
                "tracing:\n  disable_exec: true\nsnapshots:\n  triggers:\n    disable_builds: false\n",
                5,
                "snapshots.triggers.disable_builds: build snapshots come from the run's exec trace",
            ),
            ("workspace: volume\n", 1, "not built"),
            (
                "workspace: readonly\n",
                1,
                "must be rw or ro, not \"readonly\"",
            ),
            ("name: a\nworkspace:\n  mode: bind\n", 2, "`workspace: rw`"),
            (
                "mcp:\n  - name: a\n    url: https://a.example/\n  - name: b\n    url: https://b.example/\n    policy: p.yaml\n",
                6,
                "mcp[1].policy: Keep policies",
            ),
            (
                "claude:\n  llm-gateway:\n    policy: p.yaml\n",
                2,
                "claude.llm-gateway",
            ),
        ] {
            let e = parse(text, "moat.yaml").unwrap_err();
            assert_eq!(e.code, moat_core::exit::CONFIG, "{text}: {}", e.msg);
            assert!(
                e.msg.starts_with(&format!("moat.yaml:{line}: ")) && e.msg.contains(want),
                "{text}: {}",
                e.msg
            );
        }
        for ok in [
            "tracing:\n  disable_exec: true\n",
            "tracing:\n  disable_exec: false\n",
            "tracing: {}\n",
            "snapshots:\n  triggers:\n    disable_pre_run: false\n    disable_git_commits: true\n    disable_builds: true\n    disable_idle: true\n",
            "snapshots:\n  triggers:\n    disable_builds: false\n",
            "snapshots:\n  triggers:\n    disable_git_commits: false\n    disable_idle: false\n    idle_threshold_seconds: 30\n",
            "workspace: rw\n",
            "workspace: ro\n",
            "container:\n  dns: [\"1.1.1.1\"]\n",
        ] {
            let (_, w) = parse(ok, "moat.yaml").unwrap();
            assert!(w.is_empty(), "{ok}: {w:?}");
        }
    }

    /// The triggers reach the run's spec as written (defaults of the reference: all on,
    /// 30 s); bad values are refused with the key's line.
    #[test]
    fn snapshot_triggers_reach_the_spec_and_bad_values_are_refused() {
        let spec_of = |text: &str, no_snapshots: bool| {
            let (c, _) = parse(text, "moat.yaml").unwrap();
            let l = Loaded {
                config: c,
                file: None,
                warnings: vec![],
            };
            let args = RunArgs {
                name: Some("t".into()),
                no_sandbox: true,
                no_snapshots,
                ..Default::default()
            };
            resolve(&args, &l, &std::env::temp_dir()).unwrap().snapshots
        };
        let d = spec_of("name: a\n", false);
        assert!(d.git_commits && d.builds && d.idle && !d.disabled);
        assert_eq!(d.idle_threshold_seconds, 30);
        assert!(crate::triggers::any(&d));
        let s = spec_of(
            "snapshots:\n  triggers:\n    disable_git_commits: true\n    disable_builds: true\n    idle_threshold_seconds: 2\n",
            false,
        );
        assert!(!s.git_commits && !s.builds && s.idle);
        assert_eq!(s.idle_threshold_seconds, 2);
        let s = spec_of(
            "snapshots:\n  triggers:\n    disable_git_commits: true\n    disable_builds: true\n    disable_idle: true\n",
            false,
        );
        assert!(!crate::triggers::any(&s), "all triggers off");
        assert!(
            !crate::triggers::any(&spec_of("name: a\n", true)),
            "--no-snapshots"
        );
        assert!(!crate::triggers::any(&spec_of(
            "snapshots:\n  disabled: true\n",
            false
        )));
        for (text, line, want) in [
            (
                "snapshots:\n  triggers:\n    idle_threshold_seconds: 0\n",
                3,
                "must be 1-86400 seconds",
            ),
            (
                "snapshots:\n  triggers:\n    idle_threshold_seconds: 86401\n",
                3,
                "must be 1-86400 seconds",
            ),
        ] {
            let e = parse(text, "moat.yaml").unwrap_err();
            assert_eq!(e.code, moat_core::exit::CONFIG, "{text}: {}", e.msg);
            assert!(
                e.msg.starts_with(&format!("moat.yaml:{line}: ")) && e.msg.contains(want),
                "{text}: {}",
                e.msg
            );
        }
        for text in [
            "snapshots:\n  triggers:\n    idle_threshold_seconds: -5\n",
            "snapshots:\n  triggers:\n    idle_threshold_seconds: soon\n",
            "snapshots:\n  triggers:\n    disable_idle: maybe\n",
            "snapshots:\n  triggers:\n    disable_git_commits: 1\n",
        ] {
            let e = parse(text, "moat.yaml").unwrap_err();
            assert_eq!(e.code, moat_core::exit::CONFIG, "{text}: {}", e.msg);
            assert!(e.msg.contains("moat.yaml"), "{text}: {}", e.msg);
        }
    }

    /// `workspace: ro` and `--read-only-workspace` both make the workspace bind read-only;
    /// `rw` (or nothing) leaves it writable.
    #[test]
    fn a_read_only_workspace_comes_from_the_file_or_the_flag() {
        let ws = std::env::temp_dir();
        let spec_of = |text: &str, flag: bool| {
            let (c, _) = parse(text, "moat.yaml").unwrap();
            let l = Loaded {
                config: c,
                file: None,
                warnings: vec![],
            };
            let args = RunArgs {
                name: Some("t".into()),
                no_sandbox: true,
                read_only_workspace: flag,
                ..Default::default()
            };
            resolve(&args, &l, &ws).unwrap()
        };
        assert!(spec_of("workspace: ro\n", false).readonly_workspace);
        assert!(spec_of("name: x\n", true).readonly_workspace);
        assert!(spec_of("workspace: rw\n", true).readonly_workspace);
        assert!(!spec_of("workspace: rw\n", false).readonly_workspace);
        assert!(!spec_of("name: x\n", false).readonly_workspace);
        // Exec tracing: on by default, required when asked for, off when disabled.
        for (text, want) in [
            ("name: x\n", ExecTrace::On),
            ("tracing:\n", ExecTrace::On),
            ("tracing:\n  disable_exec: false\n", ExecTrace::Required),
            ("tracing: {}\n", ExecTrace::Required),
            ("tracing:\n  disable_exec: true\n", ExecTrace::Off),
        ] {
            assert_eq!(spec_of(text, false).exec_trace, want, "{text}");
        }
    }

    /// Errors point at the offending key from the parser's locations, not at the first
    /// line that has a key of the same name.
    #[test]
    fn errors_point_at_the_offending_key() {
        // `allow:` and `name:` appear earlier under other sections.
        let text = "mcp:\n  - name: ctx\n    url: https://a.example/mcp\nclaude:\n  allow: x\nnetwork:\n  allow:\n    - a.com\n    - \"*.com\"\nname: \"bad name\"\n";
        let e = parse(text, "moat.yaml").unwrap_err();
        assert!(
            e.msg.starts_with("moat.yaml:9: network.allow[1]:"),
            "{}",
            e.msg
        );
        let text = "mcp:\n  - name: ctx\n    url: https://a.example/mcp\nname: \"bad name\"\n";
        let e = parse(text, "moat.yaml").unwrap_err();
        assert!(e.msg.starts_with("moat.yaml:4: name:"), "{}", e.msg);
        // A list item's error is at the item's line.
        let e = parse("mounts:\n  - ./a:/a\n  - ./b:b\n", "moat.yaml").unwrap_err();
        assert!(e.msg.starts_with("moat.yaml:3: mounts[1]:"), "{}", e.msg);
        let e = parse(
            "hooks:\n  policy: x\nnetwork:\n  policy: lax\n",
            "moat.yaml",
        )
        .unwrap_err();
        assert!(
            e.msg.starts_with("moat.yaml:4: network.policy"),
            "{}",
            e.msg
        );
        // An unknown key's warning is at its own line too.
        let (_, w) = parse("claude:\n  mcp: {}\nnetwork:\n  mcpp: 1\n", "moat.yaml").unwrap();
        assert!(
            w[0].starts_with("moat.yaml:4: unknown field \"network.mcpp\""),
            "{w:?}"
        );
    }

    /// The YAML examples of the seed docs (../shared/seeds): ```yaml fences in the .md
    /// files; in the .txt pages (scraped, no fences) the runs of lines that look like YAML
    /// (`key:` or `# ` lines and what is indented below them). Each is either accepted with
    /// no warning (every key acts) or refused with 78 and a message; the count of examples
    /// found is checked so a broken extractor cannot pass by finding none.
    #[test]
    fn every_seed_example_is_accepted_cleanly_or_refused() {
        let dir = moat_testkit::shared_dir().join("seeds");
        assert!(
            dir.is_dir(),
            "the seed docs are missing at {}; CI must provide ../shared/seeds",
            dir.display()
        );
        let mut names: Vec<_> = std::fs::read_dir(&dir)
            .unwrap()
            .map(|e| e.unwrap().path())
            .collect();
        names.sort();
        let (mut n, mut accepted, mut refused) = (0, 0, 0);
        let mut refused_at = vec![];
        // The one example whose indentation the scrape flattened (`network:` / `policy:`
        // at column 0): it is a different file, and moat warns about its stray keys.
        let flattened = "README-current.txt:35";
        for p in names {
            let text = std::fs::read_to_string(&p).unwrap();
            let base = p.file_name().unwrap().to_string_lossy().to_string();
            for (line, ex) in seed_examples(&text, base.ends_with(".md")) {
                n += 1;
                let at = format!("{base}:{line}");
                match parse(&ex, &at) {
                    Ok((_, w)) if at == flattened => {
                        assert!(
                            !w.is_empty() && w.iter().all(|w| w.contains("unknown field")),
                            "{at}: {w:?}"
                        );
                    }
                    Ok((_, w)) => {
                        assert!(w.is_empty(), "{at}: accepted with warnings {w:?}\n{ex}");
                        accepted += 1;
                    }
                    Err(e) => {
                        assert_eq!(e.code, moat_core::exit::CONFIG, "{at}: {}", e.msg);
                        assert!(e.msg.len() > at.len() + 10, "{at}: {}", e.msg);
                        refused += 1;
                        refused_at.push(at);
                    }
                }
            }
        }
        eprintln!("seed examples: {n} ({accepted} accepted, {refused} refused)");
        assert_eq!(n, 61, "the extractor found {n} examples");
        assert!(accepted >= 40, "{accepted} accepted, {refused} refused");
        // The complete example (with exec tracing and the git/build/idle triggers on) is
        // accepted now that both are built.
        assert!(
            !refused_at
                .iter()
                .any(|a| a == "docs-agent-yaml-reference.txt:10"),
            "{refused_at:?}"
        );
    }

    /// (first line, text) of each YAML example in a seed document.
    fn seed_examples(text: &str, markdown: bool) -> Vec<(usize, String)> {
        let lines: Vec<&str> = text.lines().collect();
        let mut out = vec![];
        if markdown {
            let mut cur: Option<(usize, Vec<&str>)> = None;
            for (i, l) in lines.iter().enumerate() {
                match &mut cur {
                    None if l.trim() == "```yaml" => cur = Some((i + 2, vec![])),
                    Some((s, b)) if l.trim() == "```" => {
                        out.push((*s, b.join("\n")));
                        cur = None;
                    }
                    Some((_, b)) => b.push(l),
                    None => {}
                }
            }
            return out;
        }
        let key = |l: &str| {
            let k = l.split(':').next().unwrap_or("");
            !k.is_empty()
                && k.len() < l.len()
                && k.chars().all(|c| c.is_ascii_lowercase() || c == '_')
                && matches!(l[k.len() + 1..].chars().next(), None | Some(' '))
        };
        let start = |l: &str| key(l) || l.starts_with("# ");
        let cont = |l: &str| {
            start(l)
                || l.starts_with("- ")
                || l.starts_with('#')
                || (l.starts_with(' ') && !l.trim_start().starts_with('\u{2022}'))
        };
        let mut i = 0;
        while i < lines.len() {
            if !start(lines[i]) {
                i += 1;
                continue;
            }
            let s = i;
            i += 1;
            while i < lines.len() {
                if lines[i].trim().is_empty() {
                    let j = (i..lines.len())
                        .find(|j| !lines[*j].trim().is_empty())
                        .unwrap_or(lines.len());
                    if j < lines.len() && start(lines[j]) {
                        i = j;
                        continue;
                    }
                    break;
                }
                if !cont(lines[i]) {
                    break;
                }
                i += 1;
            }
            out.push((s + 1, lines[s..i].join("\n")));
        }
        out
    }

    #[test]
    fn the_seeds_multi_label_wildcards_are_accepted() {
        let text = "network:\n  policy: strict\n  allow:\n    - \"api.openai.com\"\n    - \"*.github.com\"\n    - \"*.*.amazonaws.com\"\n";
        let (c, _) = parse(text, "moat.yaml").unwrap();
        assert_eq!(c.network.allow[2], "*.*.amazonaws.com");
        let e = parse(
            "network:\n  allow:\n    - \"s3.*.amazonaws.com\"\n",
            "moat.yaml",
        )
        .unwrap_err();
        assert!(e.to_string().contains("whole leading labels"), "{e}");
    }

    #[test]
    fn unknown_fields_are_warned_with_a_suggestion() {
        let (_, w) = parse(
            "name: x\ngrnats: [github]\nnetwork:\n  polcy: strict\n",
            "moat.yaml",
        )
        .unwrap();
        assert_eq!(w.len(), 2, "{w:?}");
        assert!(
            w[0].contains("moat.yaml:2") && w[0].contains("\"grants\""),
            "{}",
            w[0]
        );
        assert!(
            w[1].contains("network.polcy") && w[1].contains("\"policy\""),
            "{}",
            w[1]
        );
    }

    #[test]
    fn invalid_values_name_file_line_and_field() {
        let e = parse("name: x\nnetwork:\n  policy: lax\n", "moat.yaml").unwrap_err();
        assert_eq!(
            e.msg,
            "moat.yaml:3: network.policy: must be permissive or strict, not \"lax\""
        );
        let e = parse("env:\n  A: [1]\n", "moat.yaml").unwrap_err();
        assert!(e.msg.starts_with("moat.yaml:"), "{}", e.msg);
        let e = parse(
            "volumes:\n  - name: Bad\n    target: /x\nname: a\n",
            "m.yaml",
        )
        .unwrap_err();
        assert!(e.msg.contains("[a-z0-9]"), "{}", e.msg);
        let e = parse("env:\n  HTTP_PROXY: x\n", "m.yaml").unwrap_err();
        assert!(e.msg.contains("m.yaml:2: env.HTTP_PROXY"), "{}", e.msg);
        let e = parse("aws:\n  mode: plain\n", "m.yaml").unwrap_err();
        assert_eq!(
            e.msg,
            "m.yaml:2: aws.mode: must be \"sign\" or \"session-credentials\", not \"plain\""
        );
        assert_eq!(e.code, moat_core::exit::CONFIG);
        let (c, w) = parse("aws:\n  mode: session-credentials\n", "m.yaml").unwrap();
        assert!(w.is_empty(), "{w:?}");
        assert_eq!(c.aws.mode.as_deref(), Some(AWS_MODE_SESSION));
    }

    #[test]
    fn dependencies_are_checked_against_the_registry_at_their_line() {
        let e = parse(
            "name: x\ndependencies:\n  - node@20\n  - postgress@17\n",
            "moat.yaml",
        )
        .unwrap_err();
        assert_eq!(e.code, moat_core::exit::CONFIG);
        assert!(
            e.msg
                .starts_with("moat.yaml:4: dependencies: unknown dependency \"postgress@17\""),
            "{}",
            e.msg
        );
        assert!(e.msg.contains("postgres@17"), "{}", e.msg);
        let e = parse("dependencies: [git, \"reddis@7\"]\n", "m.yaml").unwrap_err();
        assert!(e.msg.starts_with("m.yaml:1:"), "{}", e.msg);
        let e = parse("dependencies: [redis@7, redis@7]\n", "m.yaml").unwrap_err();
        assert!(e.msg.contains("listed twice"), "{}", e.msg);
        let e = parse(
            "dependencies: [redis@7]\nservices:\n  redis:\n    env:\n      9X: y\n",
            "m.yaml",
        )
        .unwrap_err();
        assert!(e.msg.contains("services.redis.env"), "{}", e.msg);
        let (c, w) = parse(
            "dependencies: [redis@7]\nservices:\n  redis:\n    image: r:1\n    wait: false\n",
            "m.yaml",
        )
        .unwrap();
        assert!(w.is_empty(), "{w:?}");
        assert_eq!(c.services["redis"].wait, Some(false));
        assert_eq!(c.services["redis"].image.as_deref(), Some("r:1"));
    }

    #[test]
    fn mounts_parse() {
        let b = parse_mount("./data:/data:ro", Path::new("/ws")).unwrap();
        assert_eq!(
            b,
            Bind {
                source: "/ws/./data".into(),
                target: "/data".into(),
                readonly: true
            }
        );
        assert!(parse_mount("a:b", Path::new("/")).is_err());
        assert!(parse_mount("a:/b:rx", Path::new("/")).is_err());
    }

    #[test]
    fn secrets_are_references_and_flags_win() {
        let (c, _) = parse(
            "secrets:\n  DB: ssm:///prod/db\n  KEY: op://Dev/K/f\n",
            "moat.yaml",
        )
        .unwrap();
        let loaded = Loaded {
            config: c,
            file: None,
            warnings: vec![],
        };
        let ws = std::env::temp_dir();
        let mut args = RunArgs {
            path: None,
            command: None,
            grants: vec![],
            env: vec![],
            mounts: vec![],
            name: Some("t".into()),
            detach: false,
            interactive: false,
            rebuild: false,
            no_sandbox: true,
            policy: None,
            allow_hosts: vec![],
            runtime: None,
            ..Default::default()
        };
        let spec = resolve(&args, &loaded, &ws).unwrap();
        assert_eq!(spec.secrets.len(), 2);
        assert_eq!(spec.secrets["DB"], "ssm:///prod/db");
        // -e KEY=... replaces the secret, which is then not resolved.
        args.env = vec!["KEY=local".into()];
        let spec = resolve(&args, &loaded, &ws).unwrap();
        assert_eq!(spec.env["KEY"], "local");
        assert!(!spec.secrets.contains_key("KEY"));
        for bad in [
            "secrets:\n  DB: postgres://x\n",
            "secrets:\n  HTTPS_PROXY: op://a/b/c\n",
            "secrets:\n  9X: op://a/b/c\n",
        ] {
            let (c, _) = parse(bad, "moat.yaml").unwrap();
            let l = Loaded {
                config: c,
                file: None,
                warnings: vec![],
            };
            let e = resolve(&args, &l, &ws).unwrap_err();
            assert_eq!(e.code, moat_core::exit::CONFIG, "{bad}: {}", e.msg);
        }
    }

    /// L3 (symlink swap): a mount source given through a symlink resolves to its target, so
    /// Docker mounts the directory the sensitive-path check judged, not a link that can be
    /// repointed later.
    #[test]
    fn mount_sources_are_resolved() {
        let t = tempfile::tempdir().unwrap();
        let real = t.path().join("real");
        std::fs::create_dir_all(&real).unwrap();
        std::os::unix::fs::symlink(&real, t.path().join("link")).unwrap();
        let (c, _) = parse("mounts: [\"link:/data\"]\n", "moat.yaml").unwrap();
        let loaded = Loaded {
            config: c,
            file: None,
            warnings: vec![],
        };
        let args = RunArgs {
            name: Some("t".into()),
            no_sandbox: true,
            ..Default::default()
        };
        let spec = resolve(&args, &loaded, t.path()).unwrap();
        assert_eq!(spec.binds.len(), 1);
        assert_eq!(spec.binds[0].source, std::fs::canonicalize(&real).unwrap());
    }

    /// L2/L4: MOAT_* names are moat's own settings, which moat-init reads as root
    /// (MOAT_DOCKER_GID=0 would add the user to group root): `env:` is a configuration
    /// error at its line (78), `-e` a usage error (64).
    #[test]
    fn moat_names_are_reserved() {
        let e = parse("name: x\nenv:\n  MOAT_DOCKER_GID: \"0\"\n", "moat.yaml").unwrap_err();
        assert_eq!(e.code, moat_core::exit::CONFIG, "{}", e.msg);
        assert!(
            e.msg.contains("moat.yaml:3")
                && e.msg.contains("MOAT_DOCKER_GID")
                && e.msg.contains("reserved"),
            "{}",
            e.msg
        );
        let e = parse_env_flag("MOAT_DOCKER_GID=0").unwrap_err();
        assert_eq!(e.code, moat_core::exit::USAGE, "{}", e.msg);
        assert!(e.msg.contains("reserved"), "{}", e.msg);
        assert!(check_env_name("MOAT_GUARD_MODE").is_err());
        assert!(check_env_name("MY_MOAT_X").is_ok());
        assert!(check_env_name("MOATX").is_ok());
    }

    #[test]
    fn rules_become_records() {
        let v: Vec<Value> =
            serde_json::from_str(r#"["a.com", {"b.com": ["allow GET /x/**"]}]"#).unwrap();
        let r = net_rules(&v).unwrap();
        assert_eq!(r[1]["rules"][0], "allow GET /x/**");
        let v: Vec<Value> = serde_json::from_str(r#"[{"b.com": ["permit /x"]}]"#).unwrap();
        assert!(net_rules(&v).is_err());
    }

    #[test]
    fn endpoints_name_hosts_and_env() {
        assert_eq!(dns_label("My_Project.v2"), "my-project-v2");
        assert_eq!(dns_label("__"), "run");
        assert_eq!(dns_label(&"a".repeat(70)).len(), 63);
        let ports = BTreeMap::from([("web".to_string(), 3000), ("my-api".to_string(), 8080)]);
        let env = crate::run::endpoint_env("dark-mode", &ports, 8080);
        for want in [
            "MOAT_HOST=dark-mode.localhost:8080",
            "MOAT_URL=http://dark-mode.localhost:8080",
            "MOAT_HOST_WEB=web.dark-mode.localhost:8080",
            "MOAT_URL_WEB=http://web.dark-mode.localhost:8080",
            "MOAT_URL_MY_API=http://my-api.dark-mode.localhost:8080",
        ] {
            assert!(env.iter().any(|e| e == want), "{want} not in {env:?}");
        }
        let e = parse("ports:\n  Web: 3000\n", "moat.yaml").unwrap_err();
        assert!(e.msg.contains("ports.Web"), "{}", e.msg);
    }
}
