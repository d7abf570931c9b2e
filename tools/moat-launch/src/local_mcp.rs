//! Local MCP servers (`claude.mcp`, `codex.mcp`, `gemini.mcp`): programs the agent's CLI
//! starts inside the container and talks to over stdio. Each entry is checked when the
//! configuration is read and written into the CLI's own configuration at run time:
//!
//! - `grant: NAME` adds the grant to the run and gives the server the grant's placeholder in
//!   the variable the reference names (`GITHUB_TOKEN`, `ANTHROPIC_API_KEY`,
//!   `OPENAI_API_KEY`; other grants: their own variables). The proxy swaps the placeholder on
//!   the wire, as for every other program in the run: the real value never enters the
//!   container.
//! - `env:` values may name `${secrets.NAME}`, an entry of `secrets:`. The run already has
//!   that secret in its environment as `NAME`; a small `sh` wrapper copies it into the
//!   server's variable when the server starts, so no file in the container holds it.
//! - `cwd:` is honoured by the same wrapper (Claude Code and Codex have no such field).

use moat_core::{Error, Result};
use serde_json::{Value, json};
use std::collections::{BTreeMap, BTreeSet};

/// One local server, checked.
#[derive(Debug, Clone, PartialEq, serde::Serialize, serde::Deserialize)]
pub struct Local {
    pub name: String,
    pub command: String,
    pub args: Vec<String>,
    pub env: BTreeMap<String, String>,
    pub grant: Option<String>,
    pub cwd: Option<String>,
}

const FIELDS: &[&str] = &["command", "args", "env", "grant", "cwd"];

/// The variable a grant's placeholder goes into, by the reference's table.
fn grant_var(grant: &str) -> Option<&'static str> {
    match grant {
        "github" => Some("GITHUB_TOKEN"),
        "anthropic" => Some("ANTHROPIC_API_KEY"),
        "openai" => Some("OPENAI_API_KEY"),
        _ => None,
    }
}

/// `${secrets.NAME}` references in `s`, in order.
fn secret_refs(s: &str) -> Vec<&str> {
    pieces(s)
        .into_iter()
        .filter_map(|p| match p {
            Piece::Secret(n) => Some(n),
            Piece::Text(_) => None,
        })
        .collect()
}

enum Piece<'a> {
    Text(&'a str),
    Secret(&'a str),
}

/// `s` cut at each complete `${secrets.NAME}`; an unclosed `${secrets.` stays text.
fn pieces(s: &str) -> Vec<Piece<'_>> {
    let mut out = vec![];
    let mut rest = s;
    while let Some(i) = rest.find("${secrets.") {
        let after = &rest[i + "${secrets.".len()..];
        let Some(j) = after.find('}') else { break };
        if i > 0 {
            out.push(Piece::Text(&rest[..i]));
        }
        out.push(Piece::Secret(&after[..j]));
        rest = &after[j + 1..];
    }
    if !rest.is_empty() {
        out.push(Piece::Text(rest));
    }
    out
}

/// Check `cli.mcp.NAME` as written in moat.yaml. `secrets` are the names under `secrets:`.
pub fn parse(cli: &str, name: &str, v: &Value, secrets: &BTreeSet<String>) -> Result<Local> {
    let at = format!("{cli}.mcp.{name}");
    let bad = |m: String| Error::config(format!("{at}: {m}"));
    if name.is_empty()
        || !name
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || b == b'-' || b == b'_')
    {
        return Err(bad(
            "a server name is letters, digits, '-' and '_'".to_string()
        ));
    }
    let obj = v
        .as_object()
        .ok_or_else(|| bad("expected a map with `command`".into()))?;
    for k in obj.keys() {
        if !FIELDS.contains(&k.as_str()) {
            let mut e = bad(format!("unknown field {k:?}"));
            if let Some(s) = FIELDS.iter().find(|f| moat_core::edit_distance(f, k) <= 2) {
                e = e.with_hint(format!("did you mean `{s}`?"));
            } else if k == "url" {
                e = e.with_hint("a remote server goes under the top-level `mcp:` list");
            }
            return Err(e);
        }
    }
    let command = match obj.get("command") {
        Some(Value::String(c)) if !c.trim().is_empty() => c.clone(),
        _ => return Err(bad("a local MCP server needs `command` (a string)".into())),
    };
    let args = match obj.get("args") {
        None | Some(Value::Null) => vec![],
        Some(Value::Array(a)) => a
            .iter()
            .map(|x| match x {
                Value::String(s) => Ok(s.clone()),
                Value::Number(n) => Ok(n.to_string()),
                _ => Err(bad("`args` is a list of strings".into())),
            })
            .collect::<Result<_>>()?,
        Some(_) => return Err(bad("`args` is a list of strings".into())),
    };
    let mut env = BTreeMap::new();
    match obj.get("env") {
        None | Some(Value::Null) => {}
        Some(Value::Object(m)) => {
            for (k, x) in m {
                crate::config::check_env_name(k).map_err(|m| bad(format!("env: {k}: {m}")))?;
                let s = match x {
                    Value::String(s) => s.clone(),
                    Value::Number(n) => n.to_string(),
                    Value::Bool(b) => b.to_string(),
                    _ => return Err(bad(format!("env: {k}: a value is a string"))),
                };
                for r in secret_refs(&s) {
                    if !secrets.contains(r) {
                        return Err(bad(format!(
                            "env: {k}: ${{secrets.{r}}} names no entry of `secrets:`"
                        ))
                        .with_hint(format!(
                            "add `{r}: op://...` (or another reference) under secrets:"
                        )));
                    }
                }
                env.insert(k.clone(), s);
            }
        }
        Some(_) => return Err(bad("`env` is a map of names to values".into())),
    }
    let grant = match obj.get("grant") {
        None | Some(Value::Null) => None,
        Some(Value::String(g)) if !g.is_empty() => Some(g.clone()),
        Some(_) => return Err(bad("`grant` is a grant's name".into())),
    };
    let cwd = match obj.get("cwd") {
        None | Some(Value::Null) => None,
        Some(Value::String(c)) if c.starts_with('/') => Some(c.clone()),
        Some(_) => return Err(bad("`cwd` is an absolute path in the container".into())),
    };
    Ok(Local {
        name: name.to_string(),
        command,
        args,
        env,
        grant,
        cwd,
    })
}

/// `s` as one word for `sh`.
fn sh_quote(s: &str) -> String {
    format!("'{}'", s.replace('\'', r"'\''"))
}

/// `s` for `sh`, with each `${secrets.NAME}` read from the variable NAME when it runs.
fn sh_value(s: &str) -> String {
    let p = pieces(s);
    if p.is_empty() {
        return sh_quote("");
    }
    p.iter()
        .map(|p| match p {
            Piece::Text(t) => sh_quote(t),
            Piece::Secret(n) => format!("\"${{{n}}}\""),
        })
        .collect()
}

/// A server as the CLIs take it: `command`, `args` and literal `env`. `grant_env` are the
/// run's placeholder variables.
pub fn resolve(l: &Local, grant_env: &[moat_core::rules::EnvPlaceholder]) -> Result<Value> {
    let mut env = BTreeMap::new();
    let mut from_secrets = vec![];
    for (k, v) in &l.env {
        if secret_refs(v).is_empty() {
            env.insert(k.clone(), v.clone());
        } else {
            from_secrets.push((k.clone(), v.clone()));
        }
    }
    if let Some(g) = &l.grant {
        let mine: Vec<_> = grant_env.iter().filter(|p| &p.grant == g).collect();
        let Some(first) = mine.first() else {
            return Err(Error::config(format!(
                "the local MCP server {}: the grant {g} gives the run no environment variable to hand the server",
                l.name
            ))
            .with_hint("grants with a placeholder variable: github, and the API keys of anthropic, openai and gemini"));
        };
        for p in &mine {
            env.entry(p.name.clone()).or_insert_with(|| p.value.clone());
        }
        if let Some(var) = grant_var(g) {
            env.entry(var.to_string())
                .or_insert_with(|| first.value.clone());
        }
    }
    let (command, args) = if l.cwd.is_none() && from_secrets.is_empty() {
        (l.command.clone(), l.args.clone())
    } else {
        let mut script = String::new();
        if let Some(c) = &l.cwd {
            script.push_str(&format!("cd {} || exit 1; ", sh_quote(c)));
        }
        for (k, v) in &from_secrets {
            script.push_str(&format!("export {k}={}; ", sh_value(v)));
        }
        script.push_str("exec \"$@\"");
        let mut args = vec![
            "-c".to_string(),
            script,
            format!("moat-mcp-{}", l.name),
            l.command.clone(),
        ];
        args.extend(l.args.iter().cloned());
        ("/bin/sh".to_string(), args)
    };
    Ok(json!({"command": command, "args": args, "env": env}))
}

/// The run's variables a local server needs and Codex and the Gemini CLI do not hand down
/// on their own (Codex passes a short list; Gemini drops the proxy's settings, whose values
/// carry the proxy token): without the proxy's settings and CA a server has no way out of
/// the run.
const RUN_VARS: &[&str] = &[
    "HTTP_PROXY",
    "HTTPS_PROXY",
    "http_proxy",
    "https_proxy",
    "NO_PROXY",
    "no_proxy",
    "SSL_CERT_FILE",
    "REQUESTS_CA_BUNDLE",
    "CURL_CA_BUNDLE",
    "GIT_SSL_CAINFO",
    "NODE_EXTRA_CA_CERTS",
];

/// The `secrets:` names a server's wrapper reads.
fn secrets_read(l: &Local) -> BTreeSet<String> {
    l.env
        .values()
        .flat_map(|v| secret_refs(v).into_iter().map(String::from))
        .collect()
}

/// What a CLI that does not hand its environment down must pass to `l` by name: the run's
/// proxy and CA variables and the secrets its wrapper reads.
pub fn pass_by_name(l: &Local) -> Vec<String> {
    let mut v: Vec<String> = RUN_VARS.iter().map(|s| s.to_string()).collect();
    v.extend(secrets_read(l));
    v
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::process::Command;

    fn secrets(names: &[&str]) -> BTreeSet<String> {
        names.iter().map(|s| s.to_string()).collect()
    }

    #[test]
    fn entries_are_checked_with_clear_errors() {
        let ok = json!({"command": "npx", "args": ["-y", "srv", 3], "env": {"A": "1"}, "grant": "github", "cwd": "/workspace"});
        let l = parse("claude", "fs", &ok, &secrets(&[])).unwrap();
        assert_eq!(l.args, ["-y", "srv", "3"]);
        assert_eq!(l.grant.as_deref(), Some("github"));
        for (v, want) in [
            (json!({"args": ["x"]}), "needs `command`"),
            (
                json!({"command": "x", "comand": "y"}),
                "unknown field \"comand\"",
            ),
            (
                json!({"command": "x", "url": "https://a/"}),
                "unknown field \"url\"",
            ),
            (json!({"command": "x", "args": "a b"}), "list of strings"),
            (json!({"command": "x", "env": ["A=1"]}), "map of names"),
            (json!({"command": "x", "env": {"1A": "v"}}), "env: 1A"),
            (json!({"command": "x", "cwd": "rel"}), "absolute path"),
            (
                json!({"command": "x", "env": {"K": "${secrets.NOPE}"}}),
                "${secrets.NOPE} names no entry",
            ),
            (json!("npx srv"), "expected a map"),
        ] {
            let e = parse("claude", "fs", &v, &secrets(&[])).unwrap_err();
            assert_eq!(e.code, moat_core::exit::CONFIG, "{v}");
            assert!(
                e.to_string().contains(want) && e.to_string().contains("claude.mcp.fs"),
                "{v}: {e}"
            );
        }
        let e = parse("claude", "a b", &ok, &secrets(&[])).unwrap_err();
        assert!(e.to_string().contains("server name"), "{e}");
    }

    #[test]
    fn a_grant_gives_the_placeholder_in_the_references_variable() {
        let l = parse(
            "claude",
            "gh",
            &json!({"command": "node", "args": ["s.js"], "grant": "github", "env": {"LEVEL": "debug"}}),
            &secrets(&[]),
        )
        .unwrap();
        let ph = |grant: &str, name: &str, value: &str| moat_core::rules::EnvPlaceholder {
            grant: grant.into(),
            name: name.into(),
            value: value.into(),
        };
        let ge = vec![
            ph("github", "GH_TOKEN", "ghp_placeholder"),
            ph("npm", "NPM_TOKEN", "npm_placeholder"),
        ];
        let v = resolve(&l, &ge).unwrap();
        assert_eq!(v["command"], "node");
        assert_eq!(v["args"], json!(["s.js"]));
        assert_eq!(
            v["env"],
            json!({"GH_TOKEN": "ghp_placeholder", "GITHUB_TOKEN": "ghp_placeholder", "LEVEL": "debug"})
        );
        // A grant without a placeholder variable cannot be handed over.
        let mut l2 = l.clone();
        l2.grant = Some("anthropic".into());
        let e = resolve(&l2, &ge).unwrap_err();
        assert!(e.to_string().contains("no environment variable"), "{e}");
    }

    /// The wrapper really runs: `sh` reads the secret from the environment, enters `cwd`
    /// and execs the server with its arguments intact (quotes and all).
    #[test]
    fn the_wrapper_sets_cwd_and_secrets_at_start() {
        let dir = tempfile::tempdir().unwrap();
        let cwd = dir.path().join("it's here");
        std::fs::create_dir(&cwd).unwrap();
        let l = parse(
            "claude",
            "w",
            &json!({"command": "sh", "args": ["-c", "pwd; printf '%s|%s\\n' \"$KEY\" \"$1\"", "x", "a 'b' $c"],
                    "cwd": cwd.to_str().unwrap(), "env": {"KEY": "pre-${secrets.MY_KEY}-post", "PLAIN": "p"}}),
            &secrets(&["MY_KEY"]),
        )
        .unwrap();
        let v = resolve(&l, &[]).unwrap();
        assert_eq!(v["command"], "/bin/sh");
        // The file holds the reference, never the value.
        assert!(!v.to_string().contains("s3cr3t"));
        assert_eq!(v["env"], json!({"PLAIN": "p"}));
        let args: Vec<String> = v["args"]
            .as_array()
            .unwrap()
            .iter()
            .map(|a| a.as_str().unwrap().to_string())
            .collect();
        let o = Command::new("/bin/sh")
            .args(&args)
            .env("MY_KEY", "s3cr3t $x 'q'")
            .output()
            .unwrap();
        assert!(o.status.success(), "{}", String::from_utf8_lossy(&o.stderr));
        let out = String::from_utf8(o.stdout).unwrap();
        assert_eq!(
            out,
            format!(
                "{}\npre-s3cr3t $x 'q'-post|a 'b' $c\n",
                cwd.canonicalize().unwrap().display()
            )
        );
        assert_eq!(secrets_read(&l), secrets(&["MY_KEY"]));
        assert!(pass_by_name(&l).contains(&"MY_KEY".to_string()));
        assert!(pass_by_name(&l).contains(&"HTTPS_PROXY".to_string()));
    }
}
