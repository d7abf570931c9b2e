//! The dependency registry (`deps.yaml`, embedded): runtimes, tools, services, Docker access
//! and language servers, each with its base image or Debian packages, build steps,
//! environment and, for services, the sidecar's port, variables and readiness check. The
//! config checks names against it, the image builder and the service launcher read it, and
//! `moat deps list|info` print it.

use moat_core::{Error, Result, cli};
use serde::{Deserialize, Serialize};
use std::collections::BTreeMap;
use std::sync::OnceLock;

const REGISTRY: &str = include_str!("deps.yaml");

#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum Kind {
    Runtime,
    Tool,
    Service,
    Docker,
    LanguageServer,
}

impl Kind {
    pub fn as_str(self) -> &'static str {
        match self {
            Kind::Runtime => "runtime",
            Kind::Tool => "tool",
            Kind::Service => "service",
            Kind::Docker => "docker",
            Kind::LanguageServer => "language_server",
        }
    }
}

#[derive(Debug, Clone, Default, Deserialize, Serialize, PartialEq)]
#[serde(default, deny_unknown_fields)]
pub struct Install {
    pub packages: Vec<String>,
    pub env: BTreeMap<String, String>,
}

#[derive(Debug, Clone, Default, Deserialize, Serialize)]
#[serde(default, deny_unknown_fields)]
pub struct Service {
    pub port: u16,
    /// `MOAT_<prefix>_{URL,HOST,PORT,USER,PASSWORD,DB}`.
    pub prefix: String,
    pub user: Option<String>,
    pub db: Option<String>,
    pub url: String,
    /// The sidecar's environment; `{password}`, `{user}`, `{db}` are substituted.
    pub env: BTreeMap<String, String>,
    /// The sidecar's command, when the image's default needs arguments.
    pub command: Vec<String>,
    /// Variables of `env` that, set in `services.<name>.env`, change the user, password or
    /// database the run is told about.
    pub user_env: Option<String>,
    pub password_env: Option<String>,
    pub db_env: Option<String>,
    /// Run inside the sidecar (docker exec) until it exits 0.
    pub ready: Vec<String>,
    pub ready_env: BTreeMap<String, String>,
    /// The run's own account: `setup` (run inside the sidecar as the administrator once it
    /// is ready; `{agent_user}` and `{agent_password}` are substituted) makes it, and the
    /// `MOAT_<prefix>_*` variables name it instead of the administrator.
    pub agent_user: Option<String>,
    pub setup: Vec<String>,
    pub setup_env: BTreeMap<String, String>,
}

#[derive(Debug, Clone, Deserialize, Serialize)]
#[serde(deny_unknown_fields)]
pub struct Entry {
    pub name: String,
    pub kind: Kind,
    pub description: String,
    #[serde(default)]
    pub versions: Vec<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub image: Option<String>,
    #[serde(default, skip_serializing_if = "BTreeMap::is_empty")]
    pub debian: BTreeMap<String, Install>,
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub packages: Vec<String>,
    #[serde(default, skip_serializing_if = "BTreeMap::is_empty")]
    pub env: BTreeMap<String, String>,
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub run: Vec<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub service: Option<Service>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub plugin: Option<String>,
}

impl Entry {
    /// The image for `version`, from the template.
    pub fn image_for(&self, version: &str) -> Option<String> {
        self.image.as_ref().map(|t| t.replace("{version}", version))
    }

    /// One line saying what the entry gives a run.
    pub fn provides(&self) -> String {
        match self.kind {
            Kind::Runtime => {
                let img = self.image.as_deref().unwrap_or("-");
                let deb: Vec<&str> = self.debian.keys().map(String::as_str).collect();
                if deb.is_empty() {
                    format!("base image {img}")
                } else {
                    format!("base image {img}; Debian packages for {}", deb.join(", "))
                }
            }
            Kind::Service => {
                let s = self.service.as_ref().expect("checked at load");
                format!(
                    "sidecar {} on port {}; MOAT_{}_*",
                    self.image.as_deref().unwrap_or("-"),
                    s.port,
                    s.prefix
                )
            }
            Kind::Docker if self.name == "docker:host" => {
                "the host's /var/run/docker.sock and the docker CLI".into()
            }
            Kind::Docker => "not available: it would let the agent undo the firewall".into(),
            Kind::LanguageServer => match &self.plugin {
                Some(p) => format!("{} (Claude Code plugin {p})", self.packages.join(" ")),
                None => self.packages.join(" "),
            },
            Kind::Tool => format!("Debian packages {}", self.packages.join(" ")),
        }
    }

    /// The `MOAT_*` variables a service sets in the main container (names only).
    pub fn service_vars(&self) -> Vec<String> {
        let Some(s) = &self.service else {
            return vec![];
        };
        let mut v = vec!["URL", "HOST", "PORT"];
        if s.user.is_some() || s.agent_user.is_some() {
            v.push("USER");
        }
        v.push("PASSWORD");
        if s.db.is_some() {
            v.push("DB");
        }
        v.into_iter()
            .map(|k| format!("MOAT_{}_{k}", s.prefix))
            .collect()
    }
}

pub fn registry() -> &'static [Entry] {
    static R: OnceLock<Vec<Entry>> = OnceLock::new();
    R.get_or_init(|| match parse(REGISTRY) {
        Ok(r) => r,
        // The file is part of the binary and tested; a broken one is a build defect.
        Err(e) => panic!("the embedded dependency registry is invalid: {e}"),
    })
}

/// Parse and check a registry text.
pub fn parse(text: &str) -> std::result::Result<Vec<Entry>, String> {
    let entries: Vec<Entry> = serde_saphyr::from_str(text).map_err(|e| e.to_string())?;
    let mut seen = std::collections::BTreeSet::new();
    for e in &entries {
        let id = format!("{} {}", e.kind.as_str(), e.name);
        if !seen.insert(id.clone()) {
            return Err(format!("{id} is listed twice"));
        }
        if e.name.is_empty() || e.description.is_empty() {
            return Err(format!("{id}: name and description are required"));
        }
        for v in e.debian.keys() {
            if !e.versions.contains(v) {
                return Err(format!("{id}: debian lists version {v} it does not offer"));
            }
        }
        match e.kind {
            Kind::Runtime => {
                if e.versions.is_empty() || e.image.is_none() {
                    return Err(format!("{id}: a runtime needs versions and an image"));
                }
            }
            Kind::Service => {
                let Some(s) = &e.service else {
                    return Err(format!("{id}: a service needs a `service` section"));
                };
                if e.versions.is_empty() || e.image.is_none() {
                    return Err(format!("{id}: a service needs versions and an image"));
                }
                if s.port == 0 || s.prefix.is_empty() || s.url.is_empty() || s.ready.is_empty() {
                    return Err(format!("{id}: a service needs port, prefix, url and ready"));
                }
                if !s.prefix.chars().all(|c| c.is_ascii_uppercase() || c == '_') {
                    return Err(format!("{id}: prefix {:?} is not upper case", s.prefix));
                }
                let uses_password = s.env.values().any(|v| v.contains("{password}"))
                    || s.command.iter().any(|v| v.contains("{password}"));
                if !uses_password || !s.url.contains("{password}") {
                    return Err(format!(
                        "{id}: the generated password must reach the sidecar and the URL"
                    ));
                }
                if s.agent_user.is_some() == s.setup.is_empty() {
                    return Err(format!("{id}: agent_user and setup go together"));
                }
                for k in [&s.user_env, &s.password_env, &s.db_env]
                    .into_iter()
                    .flatten()
                {
                    if !s.env.contains_key(k) {
                        return Err(format!("{id}: {k} is not in the sidecar's env"));
                    }
                }
            }
            Kind::Tool | Kind::Docker | Kind::LanguageServer => {
                if !e.versions.is_empty() || e.image.is_some() {
                    return Err(format!("{id}: only runtimes and services have versions"));
                }
                if e.packages.is_empty() {
                    return Err(format!("{id}: needs Debian packages"));
                }
            }
        }
        if e.kind != Kind::Service && e.service.is_some() {
            return Err(format!("{id}: only a service has a `service` section"));
        }
        for p in e
            .packages
            .iter()
            .chain(e.debian.values().flat_map(|i| &i.packages))
        {
            let ok = !p.is_empty()
                && p.chars()
                    .all(|c| c.is_ascii_lowercase() || c.is_ascii_digit() || "+-.".contains(c));
            if !ok {
                return Err(format!("{id}: {p:?} is not a Debian package name"));
            }
        }
    }
    Ok(entries)
}

/// A dependency as written in `dependencies:`, resolved against the registry.
#[derive(Debug, Clone)]
pub struct Dep {
    pub entry: &'static Entry,
    pub version: String,
}

impl Dep {
    pub fn spec(&self) -> String {
        if self.version.is_empty() {
            self.entry.name.clone()
        } else {
            format!("{}@{}", self.entry.name, self.version)
        }
    }
}

/// Every way a dependency can be written, for suggestions.
fn spellings(kinds: &[Kind]) -> Vec<String> {
    let mut out = vec![];
    for e in registry().iter().filter(|e| kinds.contains(&e.kind)) {
        if e.versions.is_empty() {
            out.push(e.name.clone());
        } else {
            out.extend(e.versions.iter().map(|v| format!("{}@{v}", e.name)));
        }
    }
    out
}

const DEP_KINDS: &[Kind] = &[Kind::Runtime, Kind::Tool, Kind::Service, Kind::Docker];

/// `name[@version]` from `dependencies:`; the error says what is wrong and what is close.
pub fn resolve(d: &str) -> std::result::Result<Dep, String> {
    let (name, ver) = match d.split_once('@') {
        Some((n, v)) => (n, v),
        None => (d, ""),
    };
    let entry = registry()
        .iter()
        .find(|e| e.name == name && DEP_KINDS.contains(&e.kind));
    let Some(entry) = entry else {
        let close = close_matches(d, &spellings(DEP_KINDS));
        let mut m = format!("unknown dependency {d:?}");
        if close.is_empty() {
            m.push_str("; `moat deps list` shows what is available");
        } else {
            m.push_str(&format!("; did you mean {}?", close.join(", ")));
        }
        return Err(m);
    };
    if entry.versions.is_empty() {
        if !ver.is_empty() {
            return Err(format!(
                "{name} takes no version (write {name:?}, not {d:?})"
            ));
        }
    } else if ver.is_empty() {
        return Err(format!(
            "{name} needs a version: {}",
            entry
                .versions
                .iter()
                .map(|v| format!("{name}@{v}"))
                .collect::<Vec<_>>()
                .join(", ")
        ));
    } else if !entry.versions.iter().any(|v| v == ver) {
        return Err(format!(
            "{name} {ver} is not available; versions: {}",
            entry.versions.join(", ")
        ));
    }
    Ok(Dep {
        entry,
        version: ver.to_string(),
    })
}

/// A `language_servers:` item.
pub fn language_server(name: &str) -> std::result::Result<&'static Entry, String> {
    registry()
        .iter()
        .find(|e| e.kind == Kind::LanguageServer && e.name == name)
        .ok_or_else(|| {
            let close = close_matches(name, &spellings(&[Kind::LanguageServer]));
            let all = spellings(&[Kind::LanguageServer]).join(", ");
            if close.is_empty() {
                format!("unknown language server {name:?}; available: {all}")
            } else {
                format!(
                    "unknown language server {name:?}; did you mean {}?",
                    close.join(", ")
                )
            }
        })
}

/// Candidates within a small edit distance, or sharing the name before `@`, best first.
pub fn close_matches(word: &str, candidates: &[String]) -> Vec<String> {
    let w = word.to_ascii_lowercase();
    let base = w.split('@').next().unwrap_or_default().to_string();
    let mut scored: Vec<(usize, &String)> = candidates
        .iter()
        .filter_map(|c| {
            let d = moat_core::edit_distance(&w, &c.to_ascii_lowercase());
            let cbase = c.split('@').next().unwrap_or_default();
            let near = d <= 2.max(c.len() / 3)
                || (!base.is_empty() && (cbase == base || cbase.starts_with(&base)))
                || moat_core::edit_distance(&base, cbase) <= if cbase.len() >= 5 { 2 } else { 1 };
            near.then_some((d, c))
        })
        .collect();
    scored.sort();
    scored.into_iter().take(4).map(|(_, c)| c.clone()).collect()
}

// ---------------------------------------------------------------- moat deps

fn record(e: &Entry) -> serde_json::Value {
    let mut v = serde_json::to_value(e).expect("entries serialize");
    v["provides"] = e.provides().into();
    if e.kind == Kind::Service {
        v["variables"] = e.service_vars().into();
    }
    v
}

pub fn list(json: bool) -> Result<()> {
    let mut out = String::new();
    if json {
        for e in registry() {
            out.push_str(&moat_core::jsonl::line("dependency", &record(e))?);
        }
    } else {
        let rows: Vec<[String; 4]> = registry()
            .iter()
            .map(|e| {
                let versions = if e.versions.is_empty() {
                    "-".to_string()
                } else {
                    e.versions.join(",")
                };
                [
                    e.kind.as_str().to_string(),
                    e.name.clone(),
                    versions,
                    e.provides(),
                ]
            })
            .collect();
        let w: Vec<usize> = (0..3)
            .map(|i| {
                rows.iter()
                    .map(|r| r[i].len())
                    .chain([["KIND", "NAME", "VERSIONS"][i].len()])
                    .max()
                    .unwrap_or(0)
            })
            .collect();
        out.push_str(&format!(
            "{:<a$}  {:<b$}  {:<c$}  PROVIDES\n",
            "KIND",
            "NAME",
            "VERSIONS",
            a = w[0],
            b = w[1],
            c = w[2]
        ));
        for r in rows {
            out.push_str(&format!(
                "{:<a$}  {:<b$}  {:<c$}  {}\n",
                r[0],
                r[1],
                r[2],
                r[3],
                a = w[0],
                b = w[1],
                c = w[2]
            ));
        }
    }
    cli::write_stdout(out.as_bytes())
}

pub fn info(name: &str, json: bool) -> Result<()> {
    let base = name.split('@').next().unwrap_or(name);
    let found: Vec<&Entry> = registry().iter().filter(|e| e.name == base).collect();
    if found.is_empty() {
        let mut all = spellings(DEP_KINDS);
        all.extend(spellings(&[Kind::LanguageServer]));
        all.sort();
        all.dedup();
        let close = close_matches(name, &all);
        let mut e = Error::usage(format!("no dependency named {name:?}"));
        e = if close.is_empty() {
            e.with_hint("`moat deps list` shows what is available")
        } else {
            e.with_hint(format!("did you mean {}?", close.join(", ")))
        };
        return Err(e);
    }
    let mut out = String::new();
    for e in found {
        if json {
            out.push_str(&moat_core::jsonl::line("dependency", &record(e))?);
            continue;
        }
        if !out.is_empty() {
            out.push('\n');
        }
        let mut line = |k: &str, v: String| {
            if !v.is_empty() {
                out.push_str(&format!("{k:<13}{v}\n"));
            }
        };
        line("Name:", e.name.clone());
        line("Kind:", e.kind.as_str().into());
        line("Description:", e.description.clone());
        line("Versions:", e.versions.join(", "));
        line("Provides:", e.provides());
        line("Image:", e.image.clone().unwrap_or_default());
        for (v, i) in &e.debian {
            line(
                "Debian:",
                format!("{}@{v}: {}", e.name, i.packages.join(" ")),
            );
        }
        line("Packages:", e.packages.join(" "));
        for (k, v) in &e.env {
            line("Env:", format!("{k}={v}"));
        }
        for r in &e.run {
            line("Build step:", r.clone());
        }
        line("Plugin:", e.plugin.clone().unwrap_or_default());
        if let Some(s) = &e.service {
            line("Port:", s.port.to_string());
            line("Variables:", e.service_vars().join(" "));
            line("Admin:", s.user.clone().unwrap_or_default());
            line("Account:", s.agent_user.clone().unwrap_or_default());
            line("Database:", s.db.clone().unwrap_or_default());
            line("Ready when:", s.ready.join(" "));
            line(
                "Overrides:",
                format!("services.{}.env, .image, .wait", e.name),
            );
        }
    }
    cli::write_stdout(out.as_bytes())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn every_entry_is_well_formed() {
        let r = parse(REGISTRY).unwrap();
        assert_eq!(r.len(), registry().len());
        for e in &r {
            assert!(!e.provides().is_empty(), "{}", e.name);
            if let Some(s) = &e.service {
                // Every placeholder a service uses is one the launcher fills in.
                let all = s
                    .env
                    .values()
                    .chain(&s.command)
                    .chain(&s.ready)
                    .chain(s.ready_env.values())
                    .chain(&s.setup)
                    .chain(s.setup_env.values())
                    .chain([&s.url]);
                for t in all {
                    let rest = t
                        .replace("{agent_user}", "")
                        .replace("{agent_password}", "")
                        .replace("{password}", "")
                        .replace("{user}", "")
                        .replace("{db}", "")
                        .replace("{host}", "")
                        .replace("{port}", "");
                    assert!(!rest.contains('{'), "{}: {t}", e.name);
                }
            }
        }
        // The reference's lists are all there.
        for d in [
            "node@18",
            "node@20",
            "node@22",
            "python@3.10",
            "python@3.11",
            "python@3.12",
            "go@1.21",
            "go@1.22",
            "git",
            "postgres@16",
            "postgres@17",
            "mysql@8",
            "mysql@9",
            "redis@7",
            "docker:host",
            "docker:dind",
        ] {
            resolve(d).unwrap_or_else(|e| panic!("{d}: {e}"));
        }
        for l in ["go", "typescript", "python"] {
            language_server(l).unwrap();
        }
    }

    #[test]
    fn broken_registries_are_refused() {
        for bad in [
            "- {name: x, kind: tool, description: d}\n",
            "- {name: x, kind: tool, description: d, packages: [a], versions: [\"1\"]}\n",
            "- {name: x, kind: runtime, description: d, versions: [\"1\"]}\n",
            "- {name: x, kind: tool, description: d, packages: [A_B]}\n",
            "- {name: x, kind: gadget, description: d, packages: [a]}\n",
            "- {name: x, kind: tool, description: d, packages: [a], colour: red}\n",
            "- {name: s, kind: service, description: d, versions: [\"1\"], image: s, service: {port: 1, prefix: S, url: \"x://{host}\", ready: [true]}}\n",
        ] {
            assert!(parse(bad).is_err(), "{bad}");
        }
    }

    #[test]
    fn unknown_dependencies_get_close_matches() {
        let e = resolve("postgress@17").unwrap_err();
        assert!(e.contains("postgres@17"), "{e}");
        let e = resolve("reddis@7").unwrap_err();
        assert!(e.contains("redis@7"), "{e}");
        let e = resolve("redsi").unwrap_err();
        assert!(e.contains("redis@7"), "{e}");
        let e = resolve("node@19").unwrap_err();
        assert!(e.contains("18, 20, 22"), "{e}");
        let e = resolve("git@2").unwrap_err();
        assert!(e.contains("takes no version"), "{e}");
        let e = resolve("docker").unwrap_err();
        assert!(e.contains("docker:host"), "{e}");
        let e = resolve("zzzzzzzz").unwrap_err();
        assert!(e.contains("moat deps list"), "{e}");
        assert_eq!(resolve("redis@7").unwrap().spec(), "redis@7");
        assert_eq!(
            resolve("postgres@17").unwrap().entry.service_vars(),
            [
                "MOAT_POSTGRES_URL",
                "MOAT_POSTGRES_HOST",
                "MOAT_POSTGRES_PORT",
                "MOAT_POSTGRES_USER",
                "MOAT_POSTGRES_PASSWORD",
                "MOAT_POSTGRES_DB"
            ]
        );
    }
}
