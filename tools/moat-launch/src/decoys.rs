//! Decoy credentials for a run (issue #21): `--decoy NAME`, `decoys: [NAME...]` and
//! `decoys: auto` (one fresh decoy per common provider the run was not granted, made for
//! this run and stored nowhere). The decoys are placed where an attacker looks, as if they
//! were real: `~/.aws/credentials`, `~/.config/gh/hosts.yml` and `~/.env` in the
//! agent's home (written by moat-init from `MOAT_DECOY_FILES`; never the workspace), and the
//! usual variables, each only when the run has no grant for that provider and nothing else
//! sets the variable. The proxy gets them as `decoy` records with the run's `on_decoy`;
//! when it reports `decoy_tripped`, the supervisor announces it and, under `stop`, stops the
//! run with exit code 77.
//!
//! `decoys:` in moat.yaml is not a privileged field (trust.rs): a decoy gives the run
//! nothing it can use (its values are valid nowhere, and a request that carries one is
//! refused or recorded). `on_decoy: block|log` is: a file that a run wrote must not let the
//! next run go on after it was caught, or send the decoy (promise 10); `stop` asks nothing.

use moat_core::{Error, Result};
use serde_json::Value;
use std::process::Stdio;
use std::sync::OnceLock;
use std::time::Duration;
use tokio::process::Command;

/// The providers `decoys: auto` covers.
pub const AUTO: &[&str] = &["github", "anthropic", "openai", "aws", "npm"];
/// The exit code of a run stopped by a decoy (EX_NOPERM).
pub const EXIT_TRIPPED: i64 = 77;

pub struct Decoy {
    pub name: String,
    pub like: String,
    pub values: Vec<String>,
    pub auto: bool,
}

/// What a run gets: proxy records, container variables, moat-init's files.
pub struct RunDecoys {
    /// `decoy` records for the proxy's rules pipe (with `on_trip`).
    pub records: Vec<String>,
    /// Variables, each only if nothing else of the run sets it.
    pub env: Vec<(String, String)>,
    /// `MOAT_DECOY_FILES`: `PATH=BASE64` words, PATH relative to the agent's home.
    pub files: String,
    /// For the audit log: names, kinds and value hashes.
    pub summary: Value,
}

impl RunDecoys {
    /// Every decoy value given to the run (from its records for the proxy).
    pub fn values(&self) -> Vec<String> {
        self.records
            .iter()
            .filter_map(|r| serde_json::from_str::<Value>(r).ok())
            .flat_map(|r| {
                r["values"]
                    .as_array()
                    .map(|a| {
                        a.iter()
                            .filter_map(|v| v.as_str().map(String::from))
                            .collect::<Vec<_>>()
                    })
                    .unwrap_or_default()
            })
            .collect()
    }
}

/// Which common providers the run holds a real grant for, from its grant rules.
pub fn granted(
    inject: &[String],
    env: &[moat_core::rules::EnvPlaceholder],
    aws: bool,
) -> Vec<&'static str> {
    let mut out = vec![];
    let mut add = |p: &'static str| {
        if !out.contains(&p) {
            out.push(p)
        }
    };
    if aws {
        add("aws");
    }
    for l in inject {
        let Ok(Some(r)) = moat_core::jsonl::parse(l) else {
            continue;
        };
        let hosts: Vec<String> = r
            .get("hosts")
            .and_then(|h| serde_json::from_value(h.clone()).ok())
            .unwrap_or_default();
        for h in &hosts {
            let h = moat_core::rules::inject_host(h).1;
            match h {
                "api.github.com" | "github.com" => add("github"),
                "api.anthropic.com" => add("anthropic"),
                "api.openai.com" | "chatgpt.com" => add("openai"),
                _ => {}
            }
        }
        if r.str("placeholder").is_some_and(|p| p.starts_with("npm_")) {
            add("npm");
        }
    }
    for e in env {
        match e.name.as_str() {
            "GH_TOKEN" | "GITHUB_TOKEN" => add("github"),
            "ANTHROPIC_API_KEY" | "CLAUDE_CODE_OAUTH_TOKEN" => add("anthropic"),
            "OPENAI_API_KEY" => add("openai"),
            _ => {}
        }
    }
    out
}

async fn moat_grant(args: &[&str]) -> Result<String> {
    let child = Command::new(crate::run::tool("moat-grant"))
        .args(args)
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::inherit())
        .spawn()
        .map_err(|e| Error::io("running moat-grant", e))?;
    let o = tokio::time::timeout(Duration::from_secs(60), child.wait_with_output())
        .await
        .map_err(|_| Error::unavailable("moat-grant did not answer in time"))?
        .map_err(|e| Error::io("running moat-grant", e))?;
    if !o.status.success() {
        return Err(Error::new(
            o.status.code().unwrap_or(moat_core::exit::SOFTWARE),
            format!("could not load decoys ({})", args.join(" ")),
        )
        .with_hint("store a decoy first with `moat grant decoy NAME --like KIND`"));
    }
    String::from_utf8(o.stdout).map_err(|_| Error::data("moat-grant printed invalid UTF-8"))
}

fn read_records(text: &str, auto: bool) -> Result<Vec<Decoy>> {
    let mut out = vec![];
    for l in text.lines() {
        let Some(r) = moat_core::jsonl::parse(l)
            .map_err(|_| Error::data("moat-grant printed an invalid record"))?
        else {
            continue;
        };
        if r.kind != "decoy" {
            continue;
        }
        out.push(Decoy {
            name: r.str("name").unwrap_or_default().to_string(),
            like: r.str("like").unwrap_or_default().to_string(),
            values: r
                .get("values")
                .and_then(|v| serde_json::from_value(v.clone()).ok())
                .unwrap_or_default(),
            auto,
        });
    }
    Ok(out)
}

/// Load the named decoys and make the automatic ones.
pub async fn load(names: &[String], auto: bool, granted: &[&str]) -> Result<Vec<Decoy>> {
    let mut out = vec![];
    if !names.is_empty() {
        let mut args = vec!["rules"];
        args.extend(names.iter().map(String::as_str));
        let got = read_records(&moat_grant(&args).await?, false)?;
        for n in names {
            if !got.iter().any(|d| &d.name == n) {
                return Err(
                    Error::usage(format!("--decoy {n}: {n} is a credential, not a decoy"))
                        .with_hint("make a decoy with `moat grant decoy NAME --like KIND`"),
                );
            }
        }
        out.extend(got);
    }
    if auto {
        for kind in AUTO.iter().filter(|k| !granted.contains(k)) {
            let name = format!("auto-{kind}");
            out.extend(read_records(
                &moat_grant(&["decoy", &name, "--like", kind, "--no-store"]).await?,
                true,
            )?);
        }
    }
    Ok(out)
}

fn b64(s: &str) -> String {
    use base64::Engine;
    base64::engine::general_purpose::STANDARD.encode(s)
}

/// Placement and records for `decoys` under `on_decoy`.
pub fn place(decoys: &[Decoy], granted: &[&str], on_decoy: &str) -> RunDecoys {
    let mut env: Vec<(String, String)> = vec![];
    let mut files: Vec<(String, String)> = vec![];
    let mut dotenv = String::new();
    let mut records = vec![];
    let mut summary = vec![];
    let put = |env: &mut Vec<(String, String)>, k: &str, v: &str| {
        if !env.iter().any(|(n, _)| n == k) {
            env.push((k.to_string(), v.to_string()));
        }
    };
    let file = |files: &mut Vec<(String, String)>, path: &str, text: String| {
        if !files.iter().any(|(p, _)| p == path) {
            files.push((path.to_string(), text));
        }
    };
    for d in decoys {
        let Some(v) = d.values.first() else { continue };
        let real = granted.contains(&d.like.as_str());
        match d.like.as_str() {
            "aws" => {
                let s = d.values.get(1).map(String::as_str).unwrap_or_default();
                if !real {
                    put(&mut env, "AWS_ACCESS_KEY_ID", v);
                    put(&mut env, "AWS_SECRET_ACCESS_KEY", s);
                    file(
                        &mut files,
                        ".aws/credentials",
                        format!(
                            "[default]\naws_access_key_id = {v}\naws_secret_access_key = {s}\n"
                        ),
                    );
                }
                dotenv.push_str(&format!(
                    "AWS_ACCESS_KEY_ID={v}\nAWS_SECRET_ACCESS_KEY={s}\n"
                ));
            }
            "github" => {
                if !real {
                    put(&mut env, "GITHUB_TOKEN", v);
                    file(
                        &mut files,
                        ".config/gh/hosts.yml",
                        format!("github.com:\n    oauth_token: {v}\n    git_protocol: https\n"),
                    );
                }
                dotenv.push_str(&format!("GITHUB_TOKEN={v}\n"));
            }
            "npm" => {
                if !real {
                    // Not in ~/.npmrc: npm sends a bare `_authToken` to its default
                    // registry (or refuses it), so every `npm install` would trip it.
                    put(&mut env, "NPM_TOKEN", v);
                }
                dotenv.push_str(&format!("NPM_TOKEN={v}\n"));
            }
            "anthropic" => {
                if !real {
                    put(&mut env, "ANTHROPIC_API_KEY", v);
                }
                dotenv.push_str(&format!("ANTHROPIC_API_KEY={v}\n"));
            }
            "openai" => {
                if !real {
                    put(&mut env, "OPENAI_API_KEY", v);
                }
                dotenv.push_str(&format!("OPENAI_API_KEY={v}\n"));
            }
            _ => dotenv.push_str(&format!("API_TOKEN={v}\n")),
        }
        records.push(
            moat_core::jsonl::line(
                "decoy",
                &serde_json::json!({"name": d.name, "like": d.like, "values": d.values, "on_trip": on_decoy}),
            )
            .unwrap_or_default(),
        );
        let hashes: Vec<String> = d
            .values
            .iter()
            .map(|v| {
                use sha2::Digest;
                moat_core::hex(&sha2::Sha256::digest(v.as_bytes()))
            })
            .collect();
        summary.push(
            serde_json::json!({"name": d.name, "like": d.like, "auto": d.auto, "sha256": hashes}),
        );
    }
    if !dotenv.is_empty() {
        file(&mut files, ".env", dotenv);
    }
    RunDecoys {
        records,
        env,
        files: files
            .iter()
            .map(|(p, t)| format!("{p}={}", b64(t)))
            .collect::<Vec<_>>()
            .join(" "),
        summary: Value::Array(summary),
    }
}

/// Everything a run's decoys need before its proxy starts: load and make them, place them,
/// and record them (names, kinds and SHA-256 of the values) in the audit log.
pub async fn prepare(
    spec: &crate::config::RunSpec,
    inject: &[String],
    env: &[moat_core::rules::EnvPlaceholder],
    aws: bool,
    audit: Option<&crate::audit_writer::Audit>,
    run: &str,
) -> Result<Option<RunDecoys>> {
    if spec.decoys.is_empty() && !spec.decoys_auto {
        return Ok(None);
    }
    let granted = granted(inject, env, aws);
    let decoys = load(&spec.decoys, spec.decoys_auto, &granted).await?;
    if decoys.is_empty() {
        return Ok(None);
    }
    let on = spec.on_decoy.as_deref().unwrap_or("stop");
    let placed = place(&decoys, &granted, on);
    if let Some(a) = audit {
        a.event(
            "decoys_placed",
            serde_json::json!({"run": run, "on_decoy": on, "decoys": placed.summary}),
        );
    }
    Ok(Some(placed))
}

/// The container's variables: each decoy variable only if the run sets it no other way.
pub fn container_env(d: &RunDecoys, env: &mut Vec<String>) {
    for (k, v) in &d.env {
        let p = format!("{k}=");
        if !env.iter().any(|e| e.starts_with(&p)) {
            env.push(format!("{k}={v}"));
        }
    }
    if !d.files.is_empty() {
        env.push(format!("MOAT_DECOY_FILES={}", d.files));
    }
}

/// The first trip that stops the run, once set.
static STOPPED: OnceLock<String> = OnceLock::new();

/// Why the run was stopped by a decoy, if it was.
pub fn stopped() -> Option<&'static String> {
    STOPPED.get()
}

/// The proxy reported an event: a `decoy_tripped` is announced on the user's terminal
/// (the supervisor's stderr is what `moat run` shows) and, when it stops the run, the
/// container is killed.
pub async fn on_event(line: &str, run: &str) {
    let Ok(Some(r)) = moat_core::jsonl::parse(line) else {
        return;
    };
    if r.kind != "decoy_tripped" {
        return;
    }
    let place = match (r.str("where"), r.str("header")) {
        (Some("header"), Some(h)) => format!("header {h}"),
        (Some(w), _) => w.to_string(),
        _ => "request".to_string(),
    };
    let (decoy, host, action) = (
        r.str("decoy").unwrap_or("?"),
        r.str("host").unwrap_or("?"),
        r.str("action").unwrap_or("stop"),
    );
    let what = match action {
        "log" => "let through (on_decoy: log)",
        "block" => "refused; the run goes on (on_decoy: block)",
        _ => "refused; stopping the run (on_decoy: stop)",
    };
    eprintln!(
        "moat: DECOY TRIPPED: a request to {host} carried the decoy credential {decoy} in its {place}: {what}"
    );
    if action != "stop" {
        return;
    }
    let first = STOPPED
        .set(format!(
            "stopped: a request to {host} carried the decoy credential {decoy} (decoy_tripped in the audit log)"
        ))
        .is_ok();
    if first && let Ok(d) = crate::docker::connect().await {
        let _ = d
            .kill_container(
                &format!("moat-{run}"),
                None::<bollard::query_parameters::KillContainerOptions>,
            )
            .await;
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::config::{Loaded, parse, resolve};

    fn spec(yaml: &str, args: &crate::args::RunArgs) -> Result<crate::config::RunSpec> {
        let (config, warnings) = parse(yaml, "moat.yaml")?;
        assert!(warnings.is_empty(), "{warnings:?}");
        let l = Loaded {
            config,
            file: None,
            warnings,
        };
        resolve(args, &l, &std::env::temp_dir())
    }

    /// `decoys:` takes auto or names (with `--decoy` adding to them), `on_decoy:` takes
    /// stop, block or log; anything else is refused with a configuration or usage error.
    #[test]
    fn decoys_and_on_decoy_resolve_or_are_refused() {
        let mut args = crate::args::RunArgs {
            name: Some("t".into()),
            no_sandbox: true,
            ..Default::default()
        };
        let s = spec("decoys: auto\non_decoy: block\n", &args).unwrap();
        assert!(s.decoys_auto && s.decoys.is_empty());
        assert_eq!(s.on_decoy.as_deref(), Some("block"));
        args.decoys = vec!["bait".into()];
        args.on_decoy = Some("log".into());
        let s = spec("decoys: [a, auto, a]\n", &args).unwrap();
        assert_eq!(s.decoys, ["a", "bait"]);
        assert!(s.decoys_auto);
        assert_eq!(s.on_decoy.as_deref(), Some("log"));
        args.on_decoy = Some("ignore".into());
        assert_eq!(spec("", &args).unwrap_err().code, 64);
        args.on_decoy = None;
        for bad in ["decoys: 3\n", "decoys: [[x]]\n", "on_decoy: later\n"] {
            let e = spec(bad, &args).unwrap_err();
            assert_eq!(e.code, moat_core::exit::CONFIG, "{bad}: {}", e.msg);
        }
    }

    /// A grant's hosts, placeholders or variables say which providers are real.
    #[test]
    fn granted_providers_are_read_from_the_rules() {
        let inject = vec![
            "{\"v\":1,\"type\":\"inject\",\"grant\":\"gh\",\"hosts\":[\"api.github.com\"],\"header\":\"Authorization\",\"value\":\"x\"}".to_string(),
            "{\"v\":1,\"type\":\"inject\",\"grant\":\"n\",\"hosts\":[\"registry.example\"],\"header\":\"Authorization\",\"value\":\"x\",\"placeholder\":\"npm_abc\"}".to_string(),
        ];
        let env = vec![moat_core::rules::EnvPlaceholder {
            grant: "o".into(),
            name: "OPENAI_API_KEY".into(),
            value: "p".into(),
        }];
        let mut g = granted(&inject, &env, true);
        g.sort();
        assert_eq!(g, ["aws", "github", "npm", "openai"]);
        assert!(granted(&[], &[], false).is_empty());
    }

    #[test]
    fn placement_never_shadows_a_grant() {
        let d = vec![
            Decoy {
                name: "a".into(),
                like: "aws".into(),
                values: vec!["AKIAAAAAAAAAAAAAAAAA".into(), "s".repeat(40)],
                auto: true,
            },
            Decoy {
                name: "g".into(),
                like: "github".into(),
                values: vec!["ghp_x".into()],
                auto: false,
            },
        ];
        let r = place(&d, &["github"], "stop");
        let names: Vec<&str> = r.env.iter().map(|(k, _)| k.as_str()).collect();
        assert_eq!(names, ["AWS_ACCESS_KEY_ID", "AWS_SECRET_ACCESS_KEY"]);
        assert!(r.files.contains(".aws/credentials=") && !r.files.contains("gh/hosts.yml"));
        assert!(r.files.contains(".env="));
        assert_eq!(r.records.len(), 2);
        assert!(!r.summary.to_string().contains("ghp_x"));
    }
}
