//! Claude Code plugins for `moat claude`: `claude.plugins`, `claude.marketplaces` and the
//! plugins `language_servers:` imply, merged with the plugin settings the host already has,
//! in the reference's order (later wins):
//!
//! 1. the host's marketplaces (`~/.claude/plugins/known_marketplaces.json`);
//! 2. the host's `~/.claude/settings.json` (`enabledPlugins`, `extraKnownMarketplaces`);
//! 3. `MOAT_HOME/claude/settings.json`;
//! 4. the workspace's `.claude/settings.json`;
//! 5. moat.yaml: `claude.marketplaces`, the language servers' plugins, then `claude.plugins`.
//!
//! The result goes in `spec.json` (`claude_plugins`), into the container's
//! `~/.claude/settings.json`, and into the image: every enabled plugin is installed at build
//! with Claude Code's own `claude plugin marketplace add` / `claude plugin install`, so a run
//! starts without fetching anything. Directory marketplaces are copied from the host into the
//! build context (the container sees them under `/opt/moat/claude-marketplaces/<name>`).

use moat_core::{Error, Result};
use serde::{Deserialize, Serialize};
use serde_json::{Map, Value, json};
use std::collections::BTreeMap;
use std::path::{Path, PathBuf};

/// The marketplace Claude Code knows without being told; the language servers' plugins are in it.
pub const OFFICIAL: &str = "claude-plugins-official";
const OFFICIAL_REPO: &str = "anthropics/claude-plugins-official";
/// Where directory marketplaces live in the image.
pub const IMAGE_DIR: &str = "/opt/moat/claude-marketplaces";
/// Their directory in the build context.
pub const CONTEXT_DIR: &str = "claude-marketplaces";
/// A directory marketplace larger than this is not copied into the build context.
const MAX_DIR_BYTES: u64 = 64 << 20;

/// The merged plugin settings of a `moat claude` run (part of `spec.json`).
#[derive(Debug, Clone, Default, Serialize, Deserialize, PartialEq)]
#[serde(default)]
pub struct ClaudePlugins {
    /// `enabledPlugins` of the container's `~/.claude/settings.json`.
    pub enabled: BTreeMap<String, bool>,
    /// `extraKnownMarketplaces`: name → the `source` object as the container sees it.
    pub marketplaces: BTreeMap<String, Value>,
    /// Directory marketplaces copied from the host into the image: name → host path.
    pub directories: BTreeMap<String, PathBuf>,
    /// Where each plugin's setting came from (`host`, `moat-home`, `workspace`,
    /// `language_servers`, `moat.yaml`).
    pub origin: BTreeMap<String, String>,
}

/// A plugin or marketplace name: 1-128 letters, digits, '.', '_', '-'.
fn is_name(s: &str) -> bool {
    !s.is_empty()
        && s.len() <= 128
        && s.bytes()
            .all(|b| b.is_ascii_alphanumeric() || b == b'.' || b == b'_' || b == b'-')
}

/// The user's plugin id: `name@marketplace`, both of letters, digits, `.`, `_`, `-`.
pub fn check_plugin_id(id: &str) -> std::result::Result<(), String> {
    match id.split_once('@') {
        Some((n, m)) if is_name(n) && is_name(m) => Ok(()),
        _ => Err(format!(
            "{id:?} is not a plugin id; write it as \"plugin-name@marketplace\" (letters, digits, '.', '_', '-')"
        )),
    }
}

fn check_name(n: &str) -> std::result::Result<(), String> {
    if !is_name(n) {
        return Err(format!(
            "{n:?} is not a marketplace name (letters, digits, '.', '_', '-')"
        ));
    }
    Ok(())
}

/// `claude.plugins` of moat.yaml: `(key, message)` for the first bad entry.
pub fn check_plugins(p: &BTreeMap<String, Value>) -> std::result::Result<(), (String, String)> {
    for (id, v) in p {
        check_plugin_id(id).map_err(|m| (id.clone(), m))?;
        if !v.is_boolean() {
            return Err((
                id.clone(),
                format!("must be true (enable) or false (disable), not {v}"),
            ));
        }
    }
    Ok(())
}

/// One `claude.marketplaces` entry of moat.yaml, as the container's settings will say it;
/// a directory is resolved against `base` (the workspace) and must hold a marketplace whose
/// own name is `name`.
fn yaml_marketplace(name: &str, v: &Value, base: &Path) -> std::result::Result<Market, String> {
    check_name(name)?;
    let Some(m) = v.as_object() else {
        return Err("must be a mapping with `source:` (github, git or directory)".into());
    };
    let field = |k: &str| -> std::result::Result<Option<String>, String> {
        match m.get(k) {
            None | Some(Value::Null) => Ok(None),
            Some(Value::String(s)) if !s.trim().is_empty() => Ok(Some(s.clone())),
            Some(other) => Err(format!("`{k}` must be a non-empty string, not {other}")),
        }
    };
    let git_ref = field("ref")?;
    if let Some(r) = &git_ref
        && (r.starts_with('-') || !r.bytes().all(|b| b.is_ascii_graphic()))
    {
        return Err(format!("ref {r:?} is not a git ref"));
    }
    let source = field("source")?.ok_or(
        "needs `source:` (github with `repo: owner/repo`, git with `url:`, or directory with `path:`)",
    )?;
    let with_ref = |mut o: Value| {
        if let Some(r) = &git_ref {
            o["ref"] = json!(r);
        }
        o
    };
    match source.as_str() {
        "github" => {
            let repo = field("repo")?.ok_or("a github marketplace needs `repo: owner/repo`")?;
            let parts: Vec<&str> = repo.split('/').collect();
            let part_ok = |s: &str| {
                !s.is_empty()
                    && s.bytes()
                        .all(|b| b.is_ascii_alphanumeric() || b == b'.' || b == b'_' || b == b'-')
            };
            if parts.len() != 2 || !parts.iter().all(|p| part_ok(p)) {
                return Err(format!("repo {repo:?} is not owner/repo"));
            }
            Ok(Market::Plain(with_ref(
                json!({"source": "github", "repo": repo}),
            )))
        }
        "git" => {
            let url = field("url")?.ok_or("a git marketplace needs `url:`")?;
            let scheme_ok = ["https://", "http://", "ssh://", "git@"]
                .iter()
                .any(|p| url.starts_with(p));
            if !scheme_ok || !url.bytes().all(|b| b.is_ascii_graphic() && b != b'\'') {
                return Err(format!(
                    "url {url:?} is not a git URL (https://..., ssh://... or git@host:path)"
                ));
            }
            Ok(Market::Plain(with_ref(
                json!({"source": "git", "url": url}),
            )))
        }
        "directory" => {
            let p = field("path")?.ok_or("a directory marketplace needs `path:`")?;
            // Confined like the workspace's settings: moat.yaml is the workspace's to
            // write, so it may not have a host directory elsewhere copied into the image.
            let m = local_marketplace(name, &base.join(&p))?;
            let root = std::fs::canonicalize(base).unwrap_or_else(|_| base.to_path_buf());
            match &m {
                Market::Dir(d) if !d.starts_with(&root) => Err(format!(
                    "{} is outside the workspace; moat.yaml may name directory marketplaces inside the workspace only",
                    d.display()
                )),
                _ => Ok(m),
            }
        }
        other => Err(format!(
            "source {other:?} is not one of github, git, directory"
        )),
    }
}

/// A marketplace before it is placed in the image.
enum Market {
    /// A source object the container can use as it is.
    Plain(Value),
    /// A host directory, copied into the image.
    Dir(PathBuf),
}

/// A directory on the host that holds the marketplace `name`.
fn local_marketplace(name: &str, path: &Path) -> std::result::Result<Market, String> {
    let manifest = path.join(".claude-plugin/marketplace.json");
    let text = std::fs::read_to_string(&manifest).map_err(|e| {
        format!(
            "{} is not a marketplace directory (reading {}: {e}); it needs .claude-plugin/marketplace.json",
            path.display(),
            manifest.display()
        )
    })?;
    let v: Value = serde_json::from_str(&text)
        .map_err(|e| format!("{}: not JSON: {e}", manifest.display()))?;
    let own = v["name"].as_str().unwrap_or_default();
    if own != name {
        return Err(format!(
            "the marketplace in {} calls itself {own:?}; Claude Code installs its plugins as plugin@{own}, so name the entry {own:?}",
            path.display()
        ));
    }
    let dir = std::fs::canonicalize(path).map_err(|e| format!("{}: {e}", path.display()))?;
    Ok(Market::Dir(dir))
}

/// The settings files of the merge, read: `(origin, file, base for relative paths)`.
struct Layer {
    origin: &'static str,
    file: PathBuf,
    base: PathBuf,
    confine: bool,
}

/// Merge everything for a `moat claude` run. `host_home` is the user's HOME (its `.claude`
/// is read, never written), `moat_home` the MOAT_HOME root. Inherited entries that cannot
/// work in a container are left out with a warning.
pub fn merge(
    host_home: Option<&Path>,
    moat_home: Option<&Path>,
    workspace: &Path,
    yaml: &crate::config::AgentSection,
    language_servers: &[String],
    warnings: &mut Vec<String>,
) -> Result<ClaudePlugins> {
    let mut out = ClaudePlugins::default();
    let mut markets: BTreeMap<String, Market> = BTreeMap::new();
    // The workspace's own enabledPlugins, which Claude Code reads itself as project settings.
    let mut project: BTreeMap<String, bool> = BTreeMap::new();
    // `confine`: the workspace's own settings (often committed by others) may only name a
    // directory inside the workspace, never one elsewhere on the host.
    let mut inherit = |name: &str, src: &Value, l: &Layer, warnings: &mut Vec<String>| {
        let file = l.file.display();
        if check_name(name).is_err() || !src.is_object() {
            warnings.push(format!(
                "{file}: marketplace {name:?} has no usable source; left out"
            ));
            return;
        }
        match src["source"].as_str() {
            Some("directory") => {
                let p = l.base.join(src["path"].as_str().unwrap_or_default());
                let m = local_marketplace(name, &p).and_then(|m| match (&m, l.confine) {
                    (Market::Dir(d), true) if !d.starts_with(&l.base) => Err(format!(
                        "{} is outside the workspace, and the workspace's settings may not copy host directories into the image",
                        d.display()
                    )),
                    _ => Ok(m),
                });
                match m {
                    Ok(m) => {
                        markets.insert(name.to_string(), m);
                    }
                    Err(m) => warnings.push(format!(
                        "{file}: marketplace {name:?} left out of the container: {m}"
                    )),
                }
            }
            Some("file") => warnings.push(format!(
                "{file}: marketplace {name:?} is a single marketplace file on this host, which the container cannot read; left out (declare its directory instead)"
            )),
            _ => {
                markets.insert(name.to_string(), Market::Plain(src.clone()));
            }
        }
    };
    if let Some(h) = host_home {
        let known = h.join(".claude/plugins/known_marketplaces.json");
        if let Some(v) = read_json(&known)? {
            let l = Layer {
                origin: "host",
                file: known,
                base: h.to_path_buf(),
                confine: false,
            };
            for (name, e) in v.as_object().into_iter().flatten() {
                inherit(name, &e["source"], &l, warnings);
            }
        }
    }
    let mut layers = vec![];
    if let Some(h) = host_home {
        layers.push(Layer {
            origin: "host",
            file: h.join(".claude/settings.json"),
            base: h.to_path_buf(),
            confine: false,
        });
    }
    if let Some(m) = moat_home {
        layers.push(Layer {
            origin: "moat-home",
            file: m.join("claude/settings.json"),
            base: m.to_path_buf(),
            confine: false,
        });
    }
    layers.push(Layer {
        origin: "workspace",
        file: workspace.join(".claude/settings.json"),
        base: std::fs::canonicalize(workspace).unwrap_or_else(|_| workspace.to_path_buf()),
        confine: true,
    });
    for l in &layers {
        let Some(v) = read_json(&l.file)? else {
            continue;
        };
        for (name, e) in v["extraKnownMarketplaces"]
            .as_object()
            .into_iter()
            .flatten()
        {
            inherit(name, &e["source"], l, warnings);
        }
        for (id, on) in v["enabledPlugins"].as_object().into_iter().flatten() {
            match on.as_bool() {
                Some(b) if check_plugin_id(id).is_ok() => {
                    if l.confine {
                        project.insert(id.clone(), b);
                    }
                    out.enabled.insert(id.clone(), b);
                    out.origin.insert(id.clone(), l.origin.to_string());
                }
                _ => warnings.push(format!(
                    "{}: enabledPlugins.{id} is not \"name@marketplace\": true/false; left out",
                    l.file.display()
                )),
            }
        }
    }
    for (name, v) in &yaml.marketplaces {
        let m = yaml_marketplace(name, v, workspace)
            .map_err(|m| Error::config(format!("claude.marketplaces.{name}: {m}")))?;
        markets.insert(name.clone(), m);
    }
    for l in language_servers {
        let e = crate::deps::language_server(l).map_err(Error::config)?;
        if let Some(p) = &e.plugin {
            out.enabled.insert(p.clone(), true);
            out.origin.insert(p.clone(), "language_servers".into());
        }
    }
    check_plugins(&yaml.plugins)
        .map_err(|(k, m)| Error::config(format!("claude.plugins.{k}: {m}")))?;
    for (id, v) in &yaml.plugins {
        let on = v.as_bool().unwrap_or(false);
        if let Some(w) = project.get(id)
            && *w != on
        {
            warnings.push(format!(
                "claude.plugins.{id}: {on} is written to the container's user settings, but Claude Code ranks the workspace's .claude/settings.json ({w}) above them, so inside the run the plugin stays {}",
                if *w { "enabled" } else { "disabled" }
            ));
        }
        out.enabled.insert(id.clone(), on);
        out.origin.insert(id.clone(), "moat.yaml".into());
    }
    for (name, m) in markets {
        match m {
            Market::Plain(v) => {
                out.marketplaces.insert(name, v);
            }
            Market::Dir(p) => {
                out.marketplaces.insert(
                    name.clone(),
                    json!({"source": "directory", "path": format!("{IMAGE_DIR}/{name}")}),
                );
                out.directories.insert(name, p);
            }
        }
    }
    for id in out.enabled.iter().filter(|(_, on)| **on).map(|(id, _)| id) {
        let m = id.rsplit('@').next().unwrap_or_default();
        // Inherited settings naming an unknown marketplace are the host's business (the
        // install plan warns); moat.yaml's own are errors.
        let from_yaml = out.origin.get(id).map(String::as_str) == Some("moat.yaml");
        if from_yaml && m != OFFICIAL && !out.marketplaces.contains_key(m) {
            return Err(Error::config(format!(
                "claude.plugins.{id}: the plugin is from the marketplace {m:?}, which no settings file and no claude.marketplaces entry declares"
            ))
            .with_hint(format!(
                "declare it in moat.yaml, e.g.\n  claude:\n    marketplaces:\n      {m}:\n        source: github\n        repo: owner/repo\nor disable the plugin with \"{id}\": false"
            )));
        }
    }
    Ok(out)
}

/// The run's part: warn about agent sections the run ignores, and for `moat claude` merge the
/// plugin settings into the spec (printing what was left out).
pub fn prepare_run(
    spec: &mut crate::config::RunSpec,
    loaded: &crate::config::Loaded,
    home: &moat_core::MoatHome,
    agent: Option<&str>,
) -> Result<()> {
    let file = loaded
        .file
        .as_ref()
        .map(|f| f.display().to_string())
        .unwrap_or_else(|| "moat.yaml".into());
    for s in crate::config::unused_agent_sections(&loaded.config, agent) {
        let how = match agent {
            None => "this `moat run`".to_string(),
            Some(a) => format!("this `moat {a}` run"),
        };
        eprintln!(
            "moat-launch: warning: {file}: the `{s}:` settings apply to `moat {s}` runs; {how} does not use them"
        );
    }
    if agent != Some("claude") {
        return Ok(());
    }
    let host_home = std::env::var_os("HOME")
        .filter(|h| !h.is_empty())
        .map(PathBuf::from);
    let mut warnings = vec![];
    let p = merge(
        host_home.as_deref(),
        Some(home.root()),
        &spec.workspace,
        &loaded.config.claude,
        &spec.language_servers,
        &mut warnings,
    )?;
    warnings.extend(install_plan(&p).1);
    for w in warnings {
        eprintln!("moat-launch: warning: {w}");
    }
    spec.claude_plugins = Some(p);
    Ok(())
}

/// A JSON file, or None when it does not exist.
fn read_json(p: &Path) -> Result<Option<Value>> {
    let text = match std::fs::read_to_string(p) {
        Ok(t) => t,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(None),
        Err(e) => return Err(Error::io(format!("reading {}", p.display()), e)),
    };
    let v: Value = serde_json::from_str(&text).map_err(|e| {
        Error::config(format!("{}: not valid JSON: {e}", p.display()))
            .with_hint("fix the file or move it away; moat reads its plugin settings")
    })?;
    Ok(Some(v))
}

/// Put the merged plugin settings into the staged `.claude/settings.json` (created if the
/// other settings did not need one).
pub fn apply(files: &mut crate::agent::Files, p: &ClaudePlugins) -> Result<()> {
    if p.enabled.is_empty() && p.marketplaces.is_empty() {
        return Ok(());
    }
    const SETTINGS: &str = ".claude/settings.json";
    let mut v = match files.iter().find(|(n, _)| n == SETTINGS) {
        Some((_, b)) => serde_json::from_slice(b)?,
        None => json!({}),
    };
    let enabled: Map<String, Value> = p
        .enabled
        .iter()
        .map(|(k, b)| (k.clone(), Value::Bool(*b)))
        .collect();
    let markets: Map<String, Value> = p
        .marketplaces
        .iter()
        .map(|(k, s)| (k.clone(), json!({ "source": s })))
        .collect();
    if !enabled.is_empty() {
        v["enabledPlugins"] = Value::Object(enabled);
    }
    if !markets.is_empty() {
        v["extraKnownMarketplaces"] = Value::Object(markets);
    }
    files.retain(|(n, _)| n != SETTINGS);
    files.push((SETTINGS.into(), crate::agent::pretty(&v)));
    Ok(())
}

/// `marketplace add`'s argument for a source the image build can fetch.
/// A git ref goes after `#` (Claude Code clones that branch or tag).
fn add_arg(name: &str, src: &Value) -> Option<String> {
    let base = match src["source"].as_str()? {
        "github" => src["repo"].as_str()?.to_string(),
        "git" => src["url"].as_str()?.to_string(),
        "directory" => return Some(format!("{IMAGE_DIR}/{name}")),
        // A marketplace.json at a URL.
        "url" => return src["url"].as_str().map(str::to_string),
        _ => return None,
    };
    Some(match src["ref"].as_str() {
        Some(r) if !r.is_empty() => format!("{base}#{r}"),
        _ => base,
    })
}

fn sh_quote(s: &str) -> String {
    format!("'{}'", s.replace('\'', "'\\''"))
}

/// Marketplace name → (its `marketplace add` argument, the plugins installed from it).
pub type InstallPlan = BTreeMap<String, (String, Vec<String>)>;

/// What the image build installs: marketplace name → (its `add` argument, plugins), and
/// the enabled plugins whose marketplace the build cannot fetch (a warning each).
pub fn install_plan(p: &ClaudePlugins) -> (InstallPlan, Vec<String>) {
    let mut plan = InstallPlan::new();
    let mut skipped = vec![];
    for id in p.enabled.iter().filter(|(_, on)| **on).map(|(id, _)| id) {
        let m = id.rsplit('@').next().unwrap_or_default();
        let arg = match p.marketplaces.get(m) {
            Some(src) => add_arg(m, src),
            None if m == OFFICIAL => Some(OFFICIAL_REPO.to_string()),
            None => None,
        };
        match arg {
            Some(a) => plan.entry(m.to_string()).or_insert((a, vec![])).1.push(id.clone()),
            None => skipped.push(match p.marketplaces.get(m) {
                Some(src) => format!(
                    "plugin {id}: the image build cannot fetch marketplace {m:?} (source {}); Claude Code will try at startup",
                    src["source"]
                ),
                None => format!(
                    "plugin {id} (enabled in the {} settings): no marketplace {m:?} is declared for the container, so it is not installed",
                    p.origin.get(id).map(String::as_str).unwrap_or("inherited")
                ),
            }),
        }
    }
    (plan, skipped)
}

/// Whether the build needs git (a github or git marketplace to fetch).
pub fn needs_git(p: &ClaudePlugins) -> bool {
    install_plan(p)
        .0
        .values()
        .any(|(a, _)| !a.starts_with(IMAGE_DIR))
}

/// Dockerfile lines that install the enabled plugins as moatuser, after the CLI. A
/// marketplace or plugin the build cannot fetch is reported in the build's output (and the
/// build goes on: Claude Code retries at startup).
pub fn dockerfile_lines(p: &ClaudePlugins) -> Vec<String> {
    let (plan, _) = install_plan(p);
    if plan.is_empty() {
        return vec![];
    }
    let mut out = vec![];
    if !p.directories.is_empty() {
        out.push(format!("COPY {CONTEXT_DIR} {IMAGE_DIR}"));
        out.push(format!("RUN chmod -R a+rX {IMAGE_DIR}"));
    }
    let mut s = String::from(
        "printf '%s\\n' \"$MOAT_BUILD_CA\" > /tmp/moat-build-ca.crt && cat /etc/ssl/certs/ca-certificates.crt /tmp/moat-build-ca.crt > /tmp/moat-build-bundle.crt && export NODE_EXTRA_CA_CERTS=/tmp/moat-build-ca.crt GIT_SSL_CAINFO=/tmp/moat-build-bundle.crt SSL_CERT_FILE=/tmp/moat-build-bundle.crt",
    );
    for (m, (arg, ids)) in &plan {
        let list = ids.join(", ");
        s.push_str(&format!(
            "; if timeout 300 claude plugin marketplace add {}; then",
            sh_quote(arg)
        ));
        for id in ids {
            s.push_str(&format!(
                " timeout 300 claude plugin install {} || {{ echo \"moat: warning: Claude Code plugin {id} could not be installed at image build (see above); Claude Code will try again at startup\" >&2; }};",
                sh_quote(id)
            ));
        }
        s.push_str(&format!(
            " else echo \"moat: warning: Claude Code plugin marketplace {m} ({}) could not be fetched at image build (see above), so these plugins are not in the image: {list}; Claude Code will try again at startup (check the network policy, or use a directory marketplace)\" >&2; fi",
            arg.replace(['"', '$', '`', '\\'], "")
        ));
    }
    s.push_str("; rm -f /tmp/moat-build-ca.crt /tmp/moat-build-bundle.crt");
    out.push("USER moatuser".into());
    out.push("ENV HOME=/home/moatuser".into());
    out.push(format!(
        "RUN [\"/bin/sh\", \"-c\", {}]",
        serde_json::to_string(&s).expect("json string")
    ));
    out.push("USER root".into());
    out
}

/// The directory marketplaces' files for the build context: (path in the context, bytes,
/// mode). `.git` is left out.
pub fn context_files(p: &ClaudePlugins) -> Result<Vec<(String, Vec<u8>, u32)>> {
    let mut out = vec![];
    for (name, dir) in &p.directories {
        let mut total = 0u64;
        collect(
            dir,
            dir,
            &format!("{CONTEXT_DIR}/{name}"),
            &mut out,
            &mut total,
        )?;
    }
    Ok(out)
}

fn collect(
    root: &Path,
    dir: &Path,
    prefix: &str,
    out: &mut Vec<(String, Vec<u8>, u32)>,
    total: &mut u64,
) -> Result<()> {
    use std::os::unix::fs::PermissionsExt;
    let mut entries: Vec<_> = std::fs::read_dir(dir)
        .map_err(|e| Error::io(format!("reading marketplace {}", dir.display()), e))?
        .filter_map(|e| e.ok())
        .collect();
    entries.sort_by_key(|e| e.file_name());
    for e in entries {
        let name = e.file_name().to_string_lossy().to_string();
        if name == ".git" {
            continue;
        }
        let path = e.path();
        let meta = std::fs::symlink_metadata(&path)
            .map_err(|er| Error::io(format!("reading {}", path.display()), er))?;
        let rel = format!("{prefix}/{name}");
        if meta.is_dir() {
            collect(root, &path, &rel, out, total)?;
        } else if meta.is_file() {
            *total += meta.len();
            if *total > MAX_DIR_BYTES {
                return Err(Error::config(format!(
                    "marketplace directory {} is over {} MB; moat copies it into the image",
                    root.display(),
                    MAX_DIR_BYTES >> 20
                )));
            }
            if rel.len() > 99 {
                return Err(Error::config(format!(
                    "{}: the path is too long to copy into the image (at most 99 bytes counted from the build context)",
                    path.display()
                )));
            }
            let data = std::fs::read(&path)
                .map_err(|er| Error::io(format!("reading {}", path.display()), er))?;
            let mode = if meta.permissions().mode() & 0o111 != 0 {
                0o755
            } else {
                0o644
            };
            out.push((rel, data, mode));
        }
        // Symlinks are not followed: a marketplace is copied as files.
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::config::AgentSection;

    fn write(p: &Path, v: &Value) {
        std::fs::create_dir_all(p.parent().unwrap()).unwrap();
        std::fs::write(p, v.to_string()).unwrap();
    }

    fn marketplace(dir: &Path, name: &str) {
        write(
            &dir.join(".claude-plugin/marketplace.json"),
            &json!({"name": name, "owner": {"name": "t"}, "plugins": [{"name": "a", "source": "./a"}]}),
        );
        write(
            &dir.join("a/.claude-plugin/plugin.json"),
            &json!({"name": "a"}),
        );
    }

    #[test]
    fn later_layers_win_and_moat_yaml_wins_last() {
        let t = tempfile::tempdir().unwrap();
        let (home, moat, ws) = (t.path().join("h"), t.path().join("m"), t.path().join("w"));
        marketplace(&ws.join("mkt"), "local");
        write(
            &home.join(".claude/plugins/known_marketplaces.json"),
            &json!({"team": {"source": {"source": "github", "repo": "o/team"}, "installLocation": "/x"}}),
        );
        write(
            &home.join(".claude/settings.json"),
            &json!({"enabledPlugins": {"a@team": true, "b@team": true, "c@team": true, "d@team": true}}),
        );
        write(
            &moat.join("claude/settings.json"),
            &json!({"enabledPlugins": {"b@team": false, "c@team": false}}),
        );
        write(
            &ws.join(".claude/settings.json"),
            &json!({"enabledPlugins": {"c@team": true, "a@local": true}, "extraKnownMarketplaces": {"local": {"source": {"source": "directory", "path": "mkt"}}}}),
        );
        let yaml: AgentSection = serde_json::from_value(json!({
            "plugins": {"d@team": false, "a@local": false, "x@more": true},
            "marketplaces": {"more": {"source": "git", "url": "https://git.example/more.git", "ref": "v1"}}
        }))
        .unwrap();
        let mut w = vec![];
        let p = merge(Some(&home), Some(&moat), &ws, &yaml, &["go".into()], &mut w).unwrap();
        // moat.yaml turns off a@local, which the workspace's settings (read by Claude Code
        // itself, above the user settings) turn on: said.
        assert_eq!(w.len(), 1, "{w:?}");
        assert!(
            w[0].contains("claude.plugins.a@local") && w[0].contains("stays enabled"),
            "{w:?}"
        );
        let want: BTreeMap<String, bool> = [
            ("a@team", true),
            ("b@team", false),
            ("c@team", true),
            ("d@team", false),
            ("a@local", false),
            ("x@more", true),
            ("gopls-lsp@claude-plugins-official", true),
        ]
        .into_iter()
        .map(|(k, v)| (k.to_string(), v))
        .collect();
        assert_eq!(p.enabled, want);
        assert_eq!(p.origin["c@team"], "workspace");
        assert_eq!(p.origin["b@team"], "moat-home");
        assert_eq!(
            p.marketplaces["team"],
            json!({"source": "github", "repo": "o/team"})
        );
        assert_eq!(
            p.marketplaces["local"],
            json!({"source": "directory", "path": "/opt/moat/claude-marketplaces/local"})
        );
        assert_eq!(p.marketplaces["more"]["ref"], "v1");
        assert!(p.directories["local"].ends_with("w/mkt"));
        let (plan, skipped) = install_plan(&p);
        assert!(skipped.is_empty());
        assert_eq!(plan["team"].1, ["a@team", "c@team"]);
        assert_eq!(plan[OFFICIAL].0, OFFICIAL_REPO);
        assert_eq!(plan["more"].0, "https://git.example/more.git#v1");
        assert!(!plan.contains_key("local"), "a@local is disabled");
        let files = context_files(&p).unwrap();
        assert!(
            files
                .iter()
                .any(|(n, _, _)| n == "claude-marketplaces/local/a/.claude-plugin/plugin.json")
        );
    }

    #[test]
    fn the_workspace_settings_cannot_copy_host_directories_into_the_image() {
        let t = tempfile::tempdir().unwrap();
        let (home, ws) = (t.path().join("h"), t.path().join("w"));
        let outside = home.join("private");
        marketplace(&outside, "evil");
        std::fs::write(outside.join("canary.txt"), "secret").unwrap();
        marketplace(&ws.join("inside"), "fine");
        std::os::unix::fs::symlink(&outside, ws.join("link")).unwrap();
        write(
            &ws.join(".claude/settings.json"),
            &json!({"extraKnownMarketplaces": {
                "evil": {"source": {"source": "directory", "path": outside}},
                "fine": {"source": {"source": "directory", "path": "inside"}}
            }, "enabledPlugins": {"a@fine": true}}),
        );
        let mut w = vec![];
        let p = merge(None, None, &ws, &AgentSection::default(), &[], &mut w).unwrap();
        assert!(!p.directories.contains_key("evil"), "{p:?}");
        assert!(!p.marketplaces.contains_key("evil"), "{p:?}");
        assert!(p.directories.contains_key("fine"));
        assert!(
            w.len() == 1 && w[0].contains("outside the workspace"),
            "{w:?}"
        );
        // Through a symlink in the workspace: the same.
        write(
            &ws.join(".claude/settings.json"),
            &json!({"extraKnownMarketplaces": {"evil": {"source": {"source": "directory", "path": "link"}}}}),
        );
        let mut w = vec![];
        let p = merge(None, None, &ws, &AgentSection::default(), &[], &mut w).unwrap();
        assert!(
            p.directories.is_empty() && w[0].contains("outside the workspace"),
            "{w:?}"
        );
        // The host's own settings may (the user's own marketplace).
        write(
            &home.join(".claude/settings.json"),
            &json!({"extraKnownMarketplaces": {"evil": {"source": {"source": "directory", "path": "private"}}}}),
        );
        std::fs::remove_file(ws.join(".claude/settings.json")).unwrap();
        let p = merge(
            Some(&home),
            None,
            &ws,
            &AgentSection::default(),
            &[],
            &mut vec![],
        )
        .unwrap();
        assert!(p.directories.contains_key("evil"));
        let files = context_files(&p).unwrap();
        assert!(files.iter().any(|(n, _, _)| n.ends_with("evil/canary.txt")));
    }

    /// L2: moat.yaml's directory marketplaces are confined to the workspace, as the
    /// workspace's settings are: an absolute path or a symlink out is a configuration error,
    /// and nothing of the host directory reaches the image.
    #[test]
    fn moat_yaml_cannot_copy_host_directories_into_the_image() {
        let t = tempfile::tempdir().unwrap();
        let (home, ws) = (t.path().join("h"), t.path().join("w"));
        let outside = home.join("private");
        marketplace(&outside, "evil");
        marketplace(&ws.join("inside"), "fine");
        std::os::unix::fs::symlink(&outside, ws.join("link")).unwrap();
        let m = |path: &str| {
            let yaml: AgentSection = serde_json::from_value(
                json!({"marketplaces": {"evil": {"source": "directory", "path": path}}}),
            )
            .unwrap();
            merge(None, None, &ws, &yaml, &[], &mut vec![])
        };
        for path in [outside.to_str().unwrap(), "link", "../h/private"] {
            let e = m(path).unwrap_err();
            assert_eq!(e.code, moat_core::exit::CONFIG, "{path}: {}", e.msg);
            assert!(
                e.msg.contains("claude.marketplaces.evil")
                    && e.msg.contains("outside the workspace"),
                "{path}: {}",
                e.msg
            );
        }
        let yaml: AgentSection = serde_json::from_value(
            json!({"marketplaces": {"fine": {"source": "directory", "path": "inside"}}}),
        )
        .unwrap();
        let p = merge(None, None, &ws, &yaml, &[], &mut vec![]).unwrap();
        assert!(p.directories.contains_key("fine"), "{p:?}");
    }

    #[test]
    fn an_inherited_plugin_of_an_unknown_marketplace_is_a_warning() {
        let t = tempfile::tempdir().unwrap();
        let (home, ws) = (t.path().join("h"), t.path().join("w"));
        std::fs::create_dir_all(&ws).unwrap();
        write(
            &home.join(".claude/settings.json"),
            &json!({"enabledPlugins": {"a@gone": true}}),
        );
        let p = merge(
            Some(&home),
            None,
            &ws,
            &AgentSection::default(),
            &[],
            &mut vec![],
        )
        .unwrap();
        assert!(p.enabled["a@gone"]);
        let (plan, skipped) = install_plan(&p);
        assert!(plan.is_empty());
        assert!(
            skipped[0].contains("a@gone (enabled in the host settings)"),
            "{skipped:?}"
        );
    }

    #[test]
    fn bad_entries_say_what_and_where() {
        let t = tempfile::tempdir().unwrap();
        let ws = t.path();
        let m = |v: Value| -> String {
            let yaml: AgentSection = serde_json::from_value(v).unwrap();
            merge(None, None, ws, &yaml, &[], &mut vec![])
                .unwrap_err()
                .msg
        };
        let e = m(json!({"plugins": {"no-marketplace": true}}));
        assert!(
            e.contains("claude.plugins.no-marketplace") && e.contains("plugin-name@marketplace"),
            "{e}"
        );
        let e = m(json!({"plugins": {"a@b": "yes"}}));
        assert!(e.contains("true (enable) or false"), "{e}");
        let e = m(json!({"plugins": {"a@nowhere": true}}));
        assert!(e.contains("\"nowhere\"") && e.contains("declares"), "{e}");
        let e = m(json!({"marketplaces": {"x": {"source": "github", "repo": "just-a-name"}}}));
        assert!(
            e.contains("claude.marketplaces.x") && e.contains("owner/repo"),
            "{e}"
        );
        let e = m(json!({"marketplaces": {"x": {"source": "svn"}}}));
        assert!(e.contains("github, git, directory"), "{e}");
        let e = m(json!({"marketplaces": {"x": {"source": "directory", "path": "missing"}}}));
        assert!(e.contains("marketplace.json"), "{e}");
        marketplace(&ws.join("d"), "real-name");
        let e = m(json!({"marketplaces": {"x": {"source": "directory", "path": "d"}}}));
        assert!(e.contains("calls itself \"real-name\""), "{e}");
        std::fs::create_dir_all(ws.join(".claude")).unwrap();
        std::fs::write(ws.join(".claude/settings.json"), "{not json").unwrap();
        let e = m(json!({}));
        assert!(
            e.contains(".claude/settings.json") && e.contains("not valid JSON"),
            "{e}"
        );
    }

    #[test]
    fn agent_sections_are_warned_about_only_where_unused() {
        let (c, w) = crate::config::parse(
            "claude:\n  plugins:\n    \"a@m\": true\ncodex:\n  version: 1.0.0\ntracing:\n  disable_exec: true\n",
            "moat.yaml",
        )
        .unwrap();
        assert!(!w.iter().any(|w| w.contains("claude")), "{w:?}");
        // `tracing: {disable_exec: true}` is a field moat acts on: no warning.
        assert!(w.is_empty(), "{w:?}");
        let unused = crate::config::unused_agent_sections;
        assert_eq!(unused(&c, None), ["claude", "codex"]);
        assert_eq!(unused(&c, Some("claude")), ["codex"]);
        assert_eq!(unused(&c, Some("codex")), ["claude"]);
        let e = crate::config::parse(
            "claude:\n  plugins:\n    \"a@m\": yes please\n",
            "moat.yaml",
        )
        .unwrap_err()
        .msg;
        assert!(
            e.starts_with("moat.yaml:3: claude.plugins.a@m: must be true"),
            "{e}"
        );
    }

    #[test]
    fn the_settings_file_gets_the_merged_keys() {
        let mut p = ClaudePlugins::default();
        p.enabled.insert("a@m".into(), true);
        p.enabled.insert("b@m".into(), false);
        p.marketplaces
            .insert("m".into(), json!({"source": "github", "repo": "o/r"}));
        let mut files: crate::agent::Files = vec![(
            ".claude/settings.json".into(),
            br#"{"skipDangerousModePermissionPrompt": true}"#.to_vec(),
        )];
        apply(&mut files, &p).unwrap();
        let v: Value = serde_json::from_slice(&files[0].1).unwrap();
        assert_eq!(v["skipDangerousModePermissionPrompt"], true);
        assert_eq!(v["enabledPlugins"], json!({"a@m": true, "b@m": false}));
        assert_eq!(v["extraKnownMarketplaces"]["m"]["source"]["repo"], "o/r");
        let lines = dockerfile_lines(&p).join("\n");
        assert!(
            lines.contains("claude plugin marketplace add 'o/r'"),
            "{lines}"
        );
        assert!(lines.contains("claude plugin install 'a@m'"), "{lines}");
        assert!(!lines.contains("'b@m'"), "{lines}");
        assert!(lines.contains("USER moatuser"));
    }
}
