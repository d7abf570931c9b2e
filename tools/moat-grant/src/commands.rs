//! The commands that change or read the store: grant, revoke, rules.

use crate::args::Grant;
use crate::store::Store;
use crate::{key, list, providers, rules};
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
    let cred = providers::build(g)?;
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
        .with_hint("see `moat-grant list` for what is stored"));
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
    for n in existing(&store, names)? {
        store.remove(&n)?;
        eprintln!("moat-grant: revoked {n}");
    }
    Ok(())
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
