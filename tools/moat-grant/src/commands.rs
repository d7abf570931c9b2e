//! The commands that change or read the store: grant, revoke, rules, update, refresh.

use crate::args::{Grant, Refresh};
use crate::net::Net;
use crate::store::Store;
use crate::{key, list, providers, refresh, rules, validate};
use moat_core::{Error, MoatHome, Result, cli, jsonl};

fn store() -> Result<Store> {
    Ok(Store::new(MoatHome::from_env()?))
}

/// `ssh:GitHub.COM` and `ssh:github.com` are one grant.
fn normalize(name: &str) -> String {
    match name.strip_prefix("ssh:") {
        Some(h) => match moat_core::host::canonical_host(h) {
            Ok(c) => format!("ssh:{c}"),
            Err(_) => name.to_string(),
        },
        None => name.to_string(),
    }
}

pub fn grant(g: &Grant) -> Result<()> {
    let mut cred = providers::build(g)?;
    if !g.no_validate {
        // Before the store is touched: a credential the service refuses is never stored.
        validate::check(&mut cred, &Net::new(&g.connect_to, &g.extra_ca)?)?;
    }
    let store = store()?;
    let names = store.names()?;
    let key = key::obtain(store.home(), &names, true)?
        .ok_or_else(|| Error::software("no key was made"))?;
    let replaced = store.exists(&cred.name);
    store.save(&cred, &key)?;
    eprintln!(
        "moat-grant: {} {} ({} {}, from {})",
        if replaced { "replaced" } else { "stored" },
        cred.name,
        cred.provider,
        cred.kind,
        cred.source
    );
    let rec = list::record(&cred);
    cli::write_stdout(jsonl::line("grant", &rec)?.as_bytes())
}

/// Check every name exists before touching anything, so a typo removes nothing.
fn existing(store: &Store, names: &[String]) -> Result<Vec<String>> {
    let names: Vec<String> = names.iter().map(|n| normalize(n)).collect();
    let missing: Vec<&str> = names
        .iter()
        .filter(|n| !store.exists(n))
        .map(String::as_str)
        .collect();
    if !missing.is_empty() {
        return Err(Error::noinput(format!(
            "no credential named {}",
            missing
                .iter()
                .map(|m| format!("{m:?}"))
                .collect::<Vec<_>>()
                .join(", ")
        ))
        .with_hint(match missing.iter().find_map(|m| m.strip_prefix("github:")) {
            // `github:SCOPE` grants are made with --scope.
            Some(sc) => format!(
                "store one with `moat grant github --scope {}`; see `moat-grant list` for what is stored",
                sc.replace('+', ",")
            ),
            None => "see `moat-grant list` for what is stored".to_string(),
        }));
    }
    let mut out: Vec<String> = Vec::new();
    for n in names {
        if !out.contains(&n) {
            out.push(n);
        }
    }
    Ok(out)
}

pub fn revoke(names: &[String]) -> Result<()> {
    let store = store()?;
    let names = existing(&store, names)?;
    // Only to tell our files from the Go moat's more surely: revoke works without a key.
    let all = store.names()?;
    let key = key::obtain(store.home(), &all, false).ok().flatten();
    for n in names {
        store.remove(&n, key.as_ref())?;
        eprintln!("moat-grant: revoked {n}");
    }
    Ok(())
}

/// `update NAME`: merge new secret values (a refreshed access token, a rotated refresh
/// token) and a new expiry into a stored credential. Standard input is one JSON object,
/// `{"secret": {"field": "value", ...}, "expires_at": "RFC 3339" | null}`; it must not be
/// a terminal. Provider, kind, hosts and source stay as they were.
pub fn update(name: &str) -> Result<()> {
    use std::io::Read;
    if cli::stdin_is_terminal() {
        return Err(Error::usage(
            "update reads a JSON object on standard input, not from a terminal",
        ));
    }
    let mut buf = Vec::new();
    std::io::stdin()
        .lock()
        .take(256 * 1024)
        .read_to_end(&mut buf)
        .map_err(|e| Error::io("reading standard input", e))?;
    let v: serde_json::Value = serde_json::from_slice(&buf).map_err(|e| {
        Error::data(format!(
            "standard input is not a JSON object (line {} column {})",
            e.line(),
            e.column()
        ))
    })?;
    let obj = v
        .as_object()
        .ok_or_else(|| Error::data("standard input is not a JSON object"))?;
    let mut secret = Vec::new();
    if let Some(s) = obj.get("secret") {
        let s = s
            .as_object()
            .ok_or_else(|| Error::data("\"secret\" must be an object of strings"))?;
        for (k, val) in s {
            let val = val
                .as_str()
                .ok_or_else(|| Error::data(format!("secret field {k:?} must be a string")))?;
            secret.push((
                k.clone(),
                crate::input::check_token(val, &format!("secret field {k}"))?,
            ));
        }
    }
    let expires = match obj.get("expires_at") {
        None => None,
        Some(serde_json::Value::Null) => Some(None),
        Some(serde_json::Value::String(t)) if moat_core::timefmt::parse_rfc3339(t).is_some() => {
            Some(Some(t.clone()))
        }
        Some(_) => {
            return Err(Error::data(
                "\"expires_at\" must be an RFC 3339 time or null",
            ));
        }
    };
    if secret.is_empty() && expires.is_none() {
        return Err(Error::data(
            "nothing to update: give \"secret\" or \"expires_at\"",
        ));
    }
    let store = store()?;
    let name = existing(&store, &[name.to_string()])?.remove(0);
    let all = store.names()?;
    let key = key::obtain(store.home(), &all, false)?
        .ok_or_else(|| Error::software("no key although credentials exist"))?;
    let cred = store.update(&name, &key, |c| refresh::merge(c, secret, expires, false))?;
    eprintln!("moat-grant: updated {}", cred.name);
    cli::write_stdout(jsonl::line("grant", &list::record(&cred))?.as_bytes())
}

/// `refresh NAME`: renew an OAuth sign-in when it is about to expire (or `--force`).
/// Prints the `grant` record when tokens were renewed, nothing when there was no need.
pub fn refresh(r: &Refresh) -> Result<()> {
    let opts = refresh::Options {
        within: match &r.within {
            Some(w) => refresh::parse_window(w)?,
            None => std::time::Duration::from_secs(600),
        },
        force: r.force,
    };
    let net = Net::new(&r.connect_to, &r.extra_ca)?;
    let store = store()?;
    let name = existing(&store, std::slice::from_ref(&r.name))?.remove(0);
    let all = store.names()?;
    let key = key::obtain(store.home(), &all, false)?
        .ok_or_else(|| Error::software("no key although credentials exist"))?;
    let Some(cred) = refresh::refresh(&store, &key, &name, &opts, &net)? else {
        return Ok(());
    };
    eprintln!(
        "moat-grant: refreshed {} (the access token expires {})",
        cred.name,
        cred.expires_at
            .as_deref()
            .map(|e| format!("at {e}"))
            .unwrap_or_else(|| "at a time the service did not say".into())
    );
    cli::write_stdout(jsonl::line("grant", &list::record(&cred))?.as_bytes())
}

pub fn rules(names: &[String]) -> Result<()> {
    if cli::stdout_is_terminal() {
        return Err(Error::usage(
            "refusing to print credentials to a terminal; `rules` output is for a pipe into moat-proxy or moat-sshd-filter",
        ));
    }
    let store = store()?;
    let names = existing(&store, names)?;
    let all = store.names()?;
    let key = key::obtain(store.home(), &all, false)?
        .ok_or_else(|| Error::software("no key although credentials exist"))?;
    // Build everything first: on any error nothing is printed.
    let mut out = String::new();
    for n in &names {
        let cred = store.load(n, &key)?;
        for (kind, body) in rules::records(&cred)? {
            out.push_str(&jsonl::line(kind, &body)?);
        }
    }
    cli::write_stdout(out.as_bytes())
}
