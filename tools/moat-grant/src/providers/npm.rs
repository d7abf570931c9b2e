//! `npm`: one token per registry, read from `~/.npmrc` (or `$NPM_CONFIG_USERCONFIG`):
//! `//HOST[/PATH]/:_authToken=TOKEN` lines (`${VAR}` values are read from the
//! environment) and `@scope:registry=URL` routing; `NPM_TOKEN` adds the public registry.
//! With `--token-stdin` or a prompt, one token for `--registry URL` (default the public one).

use crate::args::Grant;
use crate::input;
use crate::store::Credential;
use moat_core::host::HostPattern;
use moat_core::{Error, Result};
use serde_json::{Map, Value, json};

pub const DEFAULT_REGISTRY: &str = "https://registry.npmjs.org/";

#[derive(Debug, Default, PartialEq)]
pub struct Npmrc {
    /// (host pattern, path, token)
    pub tokens: Vec<(String, String, String)>,
    /// scope → registry URL
    pub scopes: Vec<(String, String)>,
    pub registry: Option<String>,
}

pub fn grant(g: &Grant) -> Result<Credential> {
    let (entries, scopes, source) = if g.token_stdin || g.registry.is_some() {
        let url = g
            .registry
            .clone()
            .unwrap_or_else(|| DEFAULT_REGISTRY.into());
        let (host, path) = registry_host(&url)?;
        let token = if g.token_stdin {
            input::secret_from_stdin("npm token")?
        } else if input::can_prompt() {
            input::prompt_hidden(&format!("npm token for {host}: "), "npm token")?
        } else {
            return Err(Error::noinput("no terminal to ask for the npm token on")
                .with_hint("pass --token-stdin"));
        };
        let src = if g.token_stdin { "stdin" } else { "prompt" };
        (vec![(host, path, token)], Vec::new(), src.to_string())
    } else {
        let path = match input::env("NPM_CONFIG_USERCONFIG") {
            Some(p) => std::path::PathBuf::from(p),
            None => input::home_dir()?.join(".npmrc"),
        };
        let mut rc = match std::fs::read_to_string(&path) {
            Ok(text) => {
                parse_npmrc(&text, &|v| input::env(v)).map_err(|e| e.context(path.display()))?
            }
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => Npmrc::default(),
            Err(e) => return Err(Error::io(format!("reading {}", path.display()), e)),
        };
        let mut source = format!("file:{}", path.display());
        if let Some(t) = input::env("NPM_TOKEN")
            && !rc.tokens.iter().any(|(h, _, _)| h == "registry.npmjs.org")
        {
            let t = input::check_token(&t, "npm token").map_err(|e| e.context("$NPM_TOKEN"))?;
            rc.tokens.push(("registry.npmjs.org".into(), "/".into(), t));
            if rc.tokens.len() == 1 {
                source = "env:NPM_TOKEN".into();
            }
        }
        if rc.tokens.is_empty() {
            return Err(Error::noinput(format!(
                "no npm tokens found in {} or NPM_TOKEN",
                path.display()
            ))
            .with_hint("run `npm login`, or pass --registry URL --token-stdin"));
        }
        (rc.tokens, rc.scopes, source)
    };
    let mut c = Credential::new("npm", "registries", source);
    let regs: Vec<Value> = entries
        .iter()
        .map(|(h, p, t)| json!({"host": h, "path": p, "token": t}))
        .collect();
    c.secret.insert("registries".into(), Value::Array(regs));
    let mut sc = Map::new();
    for (s, u) in scopes {
        sc.insert(s, Value::String(u));
    }
    c.config.insert("scopes".into(), Value::Object(sc));
    c.config.insert(
        "registries".into(),
        Value::Array(
            entries
                .iter()
                .map(|(h, p, _)| Value::String(format!("{h}{p}")))
                .collect(),
        ),
    );
    Ok(c)
}

/// A registry URL's host (canonical, with a non-default port) and path (ending in `/`).
/// An `http://` URL keeps its scheme: only then is the token sent over plain HTTP.
pub fn registry_host(url: &str) -> Result<(String, String)> {
    let plain = url.starts_with("http://");
    let rest = url
        .strip_prefix("https://")
        .or_else(|| url.strip_prefix("http://"))
        .or_else(|| url.strip_prefix("//"))
        .unwrap_or(url);
    let (auth, path) = match rest.find('/') {
        Some(i) => (&rest[..i], &rest[i..]),
        None => (rest, "/"),
    };
    let pat =
        HostPattern::parse(auth).map_err(|e| Error::data(format!("registry {url:?}: {e}")))?;
    if pat.is_wildcard() {
        return Err(Error::data(format!("registry {url:?} must name one host")));
    }
    let mut path = path.to_string();
    if !path.ends_with('/') {
        path.push('/');
    }
    let scheme = if plain { "http://" } else { "" };
    Ok((format!("{scheme}{pat}"), path))
}

/// Parse the parts of an npmrc moat needs. `env` resolves `${VAR}` values.
pub fn parse_npmrc(text: &str, env: &dyn Fn(&str) -> Option<String>) -> Result<Npmrc> {
    let mut rc = Npmrc::default();
    for line in text.lines() {
        let l = line.trim();
        if l.is_empty() || l.starts_with(';') || l.starts_with('#') {
            continue;
        }
        let Some((k, v)) = l.split_once('=') else {
            continue;
        };
        let (k, v) = (k.trim(), v.trim().trim_matches('"'));
        if let Some(reg) = k.strip_suffix(":_authToken") {
            let Some(r) = reg.strip_prefix("//") else {
                continue;
            };
            let value = match v.strip_prefix("${").and_then(|x| x.strip_suffix('}')) {
                Some(var) => match env(var) {
                    Some(x) => x,
                    None => {
                        eprintln!(
                            "moat-grant: warning: npmrc token for //{r} uses ${{{var}}}, which is not set; skipped"
                        );
                        continue;
                    }
                },
                None => v.to_string(),
            };
            let (host, path) = registry_host(r)?;
            let token = input::check_token(&value, "npm token")
                .map_err(|e| e.context(format!("token for {host}")))?;
            rc.tokens.retain(|(h, p, _)| !(h == &host && p == &path));
            rc.tokens.push((host, path, token));
        } else if let Some(scope) = k.strip_suffix(":registry") {
            if scope.starts_with('@') {
                rc.scopes.push((scope.to_string(), v.to_string()));
            }
        } else if k == "registry" {
            rc.registry = Some(v.to_string());
        }
    }
    Ok(rc)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn npmrc_tokens_and_scopes() {
        let text = "\
; comment
registry=https://registry.npmjs.org/
@corp:registry=https://npm.corp.example/
//registry.npmjs.org/:_authToken=npm_one
//npm.corp.example/:_authToken=${CORP_TOKEN}
//npm.pkg.github.com/owner/:_authToken=ghp_two
//missing.example/:_authToken=${NOPE}
";
        let rc = parse_npmrc(text, &|v| (v == "CORP_TOKEN").then(|| "npm_corp".into())).unwrap();
        assert_eq!(
            rc.tokens,
            vec![
                ("registry.npmjs.org".into(), "/".into(), "npm_one".into()),
                ("npm.corp.example".into(), "/".into(), "npm_corp".into()),
                (
                    "npm.pkg.github.com".into(),
                    "/owner/".into(),
                    "ghp_two".into()
                ),
            ]
        );
        assert_eq!(
            rc.scopes,
            vec![("@corp".into(), "https://npm.corp.example/".into())]
        );
    }

    #[test]
    fn registry_urls() {
        assert_eq!(
            registry_host("https://Npm.Corp.example:8443/a").unwrap(),
            ("npm.corp.example:8443".into(), "/a/".into())
        );
        assert!(registry_host("https://*.x.example/").is_err());
        // Only an explicit http:// keeps its scheme (the token may then go over plain HTTP).
        assert_eq!(
            registry_host("http://npm.corp:8080").unwrap(),
            ("http://npm.corp:8080".into(), "/".into())
        );
        assert_eq!(
            registry_host("//npm.corp:8080/").unwrap(),
            ("npm.corp:8080".into(), "/".into())
        );
    }
}
