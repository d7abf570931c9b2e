//! `list`: what is stored, for people (a table) or programs (`--json`, one `grant` record
//! per credential, `unreadable` for files that do not decrypt). Never a secret value: the
//! record is built from the credential's non-secret fields only.

use crate::gomoat::{self, Unusable};
use crate::store::{Credential, Loaded, Store};
use crate::{key, rules};
use moat_core::{Error, MoatHome, Result, cli, jsonl};
use serde_json::{Value, json};

/// The `grant` record: name, provider, kind, hosts, source, times, scopes and the
/// provider's non-secret settings. `secret` is never read here.
pub fn record(c: &Credential) -> Value {
    let mut v = json!({
        "name": c.name,
        "provider": c.provider,
        "kind": c.kind,
        "hosts": rules::hosts(c),
        "source": c.source,
        "created_at": c.created_at,
    });
    if let Some(e) = &c.expires_at {
        v["expires_at"] = e.clone().into();
    }
    if !c.scopes.is_empty() {
        v["scopes"] = c.scopes.clone().into();
    }
    v["config"] = Value::Object(c.config.clone());
    v
}

fn day(ts: &str) -> String {
    ts.get(..16)
        .map(|s| s.replace('T', " "))
        .unwrap_or_else(|| ts.to_string())
}

pub fn list(json_out: bool) -> Result<()> {
    let store = Store::new(MoatHome::from_env()?);
    let names = store.names()?;
    let extras = gomoat::extras(store.home());
    let mut go_unusable = extras.unusable.clone();
    if names.is_empty() && !go_unusable.is_empty() {
        let out = go_lines(&go_unusable, json_out)?;
        return cli::write_stdout(out.as_bytes());
    }
    if names.is_empty() {
        if !json_out {
            eprintln!(
                "moat-grant: no credentials stored; add one with `moat grant github` (or another provider)"
            );
        }
        return Ok(());
    }
    let key = key::obtain(store.home(), &names, false)?
        .ok_or_else(|| Error::software("no key although credentials exist"))?;
    let mut out = String::new();
    let mut rows = Vec::new();
    let mut errors: Vec<Error> = Vec::new();
    for n in &names {
        match store.load_any(n, &key) {
            Ok(Loaded::GoUnusable(u)) => go_unusable.push(u),
            Ok(Loaded::Ours(c) | Loaded::Go(c)) => {
                if json_out {
                    out.push_str(&jsonl::line("grant", &record(&c))?);
                } else {
                    let hosts = rules::hosts(&c);
                    rows.push([
                        c.name.clone(),
                        format!("{}/{}", c.provider, c.kind),
                        if hosts.is_empty() {
                            "-".into()
                        } else {
                            hosts.join(",")
                        },
                        short_source(&c.source),
                        day(&c.created_at),
                        c.expires_at
                            .as_deref()
                            .map(day)
                            .unwrap_or_else(|| "-".into()),
                    ]);
                }
            }
            Err(e) => {
                if json_out {
                    out.push_str(&jsonl::line(
                        "unreadable",
                        &json!({"name": n, "error": e.msg}),
                    )?);
                }
                errors.push(e);
            }
        }
    }
    if !json_out && !rows.is_empty() {
        let head = ["NAME", "PROVIDER", "HOSTS", "SOURCE", "CREATED", "EXPIRES"];
        let mut w = [0usize; 6];
        for r in rows
            .iter()
            .map(|r| r.each_ref().map(String::as_str))
            .chain([head])
        {
            for (i, c) in r.iter().enumerate() {
                w[i] = w[i].max(c.chars().count());
            }
        }
        let fmt = |r: [&str; 6]| {
            let mut l = String::new();
            for (i, c) in r.iter().enumerate() {
                if i == 5 {
                    l.push_str(c);
                } else {
                    l.push_str(&format!("{c:<width$}  ", width = w[i]));
                }
            }
            l.trim_end().to_string() + "\n"
        };
        out.push_str(&fmt(head));
        for r in &rows {
            out.push_str(&fmt(r.each_ref().map(String::as_str)));
        }
    }
    go_unusable.sort_by(|a, b| a.name.cmp(&b.name));
    out.push_str(&go_lines(&go_unusable, json_out)?);
    cli::write_stdout(out.as_bytes())?;
    if errors.is_empty() {
        return Ok(());
    }
    for e in &errors {
        eprintln!("moat-grant: {}", e.msg);
    }
    let code = errors[0].code;
    Err(Error::new(
        code,
        format!(
            "{} of {} credentials could not be read; `moat-grant revoke NAME` removes one so it can be granted again",
            errors.len(),
            names.len()
        ),
    ))
}

/// The Go moat's grants moat cannot use: `go_moat` records, or lines under the table.
fn go_lines(u: &[Unusable], json_out: bool) -> Result<String> {
    let mut out = String::new();
    if !json_out && !u.is_empty() {
        out.push_str("\nfrom the Go moat, to be granted again (its files are left as they are):\n");
    }
    for x in u {
        if json_out {
            out.push_str(&jsonl::line(
                "go_moat",
                &json!({"name": x.name, "file": x.file, "reason": x.why, "regrant": x.regrant}),
            )?);
        } else {
            out.push_str(&format!("  {}: {}\n    {}\n", x.name, x.why, x.regrant));
        }
    }
    Ok(out)
}

fn short_source(s: &str) -> String {
    if let (Some(p), Ok(h)) = (s.strip_prefix("file:"), std::env::var("HOME"))
        && !h.is_empty()
        && let Some(rest) = p.strip_prefix(&h)
    {
        return format!("file:~{rest}");
    }
    s.to_string()
}
