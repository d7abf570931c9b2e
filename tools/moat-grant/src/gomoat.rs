//! The Go moat's store, read in place. The Go moat used the same `MOAT_HOME` (`~/.moat`),
//! the same key (keyring service `moat`, account `encryption-key`, or `encryption.key`) and
//! the same file names (`credentials/<provider>.enc`), but another file format:
//! `nonce (12) ‖ AES-256-GCM(ciphertext ‖ tag)` with no associated data, around a JSON
//! object `{"provider", "token", "scopes", "expires_at", "created_at", "metadata"}`.
//!
//! A Go file that decrypts with the key and whose provider moat has an equivalent for is
//! mapped, in memory only, onto the [`Credential`] our own grant flows store; its `source`
//! is `go-moat:credentials/<file>`. Everything else (a file that does not decrypt, a
//! provider moat cannot rebuild without guessing, `ssh.json`, `profiles/`) is named with
//! the command that grants it again. Reading never writes a Go file. Before moat replaces
//! or removes one, [`preserve`] copies it byte for byte to `go-moat/credentials/<file>`.

use crate::key::Key;
use crate::store::{Credential, Loaded, Store};
use aes_gcm::aead::{Aead, KeyInit};
use aes_gcm::{Aes256Gcm, Nonce};
use moat_core::{Error, MoatHome, Result, fsutil};
use serde::Deserialize;
use serde_json::{Map, Value, json};
use std::path::{Path, PathBuf};

const NONCE: usize = 12;
const TAG: usize = 16;
/// Go's `time.Time{}` as JSON: "no expiry".
const ZERO_TIME: &str = "0001-01-01T00:00:00Z";

/// A Go file moat cannot use: why, and the command that grants it again.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Unusable {
    /// The name moat lists it under (the file's stem, or `ssh:HOST`, or `profiles/NAME`).
    pub name: String,
    /// The path under MOAT_HOME, e.g. `credentials/mcp:linear.enc`.
    pub file: String,
    pub why: String,
    pub regrant: String,
}

#[derive(Deserialize)]
struct GoCredential {
    #[serde(default)]
    provider: String,
    #[serde(default)]
    token: String,
    #[serde(default)]
    scopes: Option<Vec<String>>,
    #[serde(default)]
    expires_at: Option<String>,
    #[serde(default)]
    created_at: Option<String>,
    #[serde(default)]
    metadata: Option<Map<String, Value>>,
}

/// Decrypt a Go-format file; `None` when it does not authenticate under `key`.
pub fn decrypt(key: &Key, data: &[u8]) -> Option<Vec<u8>> {
    if data.len() < NONCE + TAG {
        return None;
    }
    let cipher = Aes256Gcm::new_from_slice(key.bytes()).ok()?;
    let mut nonce = [0u8; NONCE];
    nonce.copy_from_slice(&data[..NONCE]);
    cipher.decrypt(&Nonce::from(nonce), &data[NONCE..]).ok()
}

/// The command that grants `name` (a Go file's stem) again in moat.
pub fn regrant_command(name: &str) -> String {
    if let Some(n) = name
        .strip_prefix("mcp:")
        .or_else(|| name.strip_prefix("mcp-"))
    {
        return format!("moat grant mcp {n} --url URL --header HEADER");
    }
    if let Some(n) = name.strip_prefix("oauth:") {
        return format!("moat grant mcp {n} --url URL --header Authorization --prefix 'Bearer '");
    }
    if let Some(h) = name.strip_prefix("ssh:") {
        return format!("moat grant ssh --host {h}");
    }
    match name {
        "github" | "anthropic" | "claude" | "openai" | "gemini" | "npm" => {
            format!("moat grant {name}")
        }
        "codex" => "moat grant openai".into(),
        "claude-oauth" => "moat grant claude".into(),
        "aws" => "moat grant aws --role ARN".into(),
        other => format!("moat grant http {other} --host HOST --header HEADER"),
    }
}

/// Map a decrypted Go credential stored as `credentials/<stem>.enc` onto ours, or say why
/// it cannot be. Errors never quote the plaintext.
pub fn map(stem: &str, plaintext: &[u8]) -> std::result::Result<Credential, String> {
    let g: GoCredential = serde_json::from_slice(plaintext)
        .map_err(|_| "it decrypts, but not to a credential the Go moat wrote".to_string())?;
    let provider = if g.provider.is_empty() {
        stem
    } else {
        g.provider.as_str()
    };
    let meta = g.metadata.clone().unwrap_or_default();
    let meta_str = |k: &str| {
        meta.get(k)
            .and_then(Value::as_str)
            .filter(|s| !s.is_empty())
    };
    let token = g.token.trim();
    let source = format!(
        "go-moat:credentials/{}.enc",
        moat_core::home::encode_name(stem)
    );
    let mut c = match (stem, provider) {
        (_, "github") if stem == "github" => {
            let mut c = Credential::new("github", "token", source);
            c.secret.insert("token".into(), need(token)?.into());
            c
        }
        ("claude", "claude") => {
            if !token.starts_with(crate::providers::anthropic::OAUTH_PREFIX) {
                return Err("it holds no Claude OAuth token".into());
            }
            let mut c = Credential::new("anthropic", "oauth", source);
            c.name = "claude".into();
            c.secret.insert("access_token".into(), token.into());
            c
        }
        ("anthropic", "anthropic" | "claude") => {
            // What `moat grant anthropic` stores for either kind of token.
            let mut c = if token.starts_with(crate::providers::anthropic::OAUTH_PREFIX) {
                let mut c = Credential::new("anthropic", "oauth", source);
                c.secret.insert("access_token".into(), token.into());
                c
            } else {
                let mut c = Credential::new("anthropic", "api_key", source);
                c.secret.insert("api_key".into(), need(token)?.into());
                c
            };
            c.name = "anthropic".into();
            c
        }
        ("openai", "openai" | "codex") => {
            if meta_str("auth_type").is_some_and(|t| t != "api_key") {
                return Err("it is a ChatGPT sign-in moat cannot rebuild".into());
            }
            let mut c = Credential::new("openai", "api_key", source);
            c.secret.insert("api_key".into(), need(token)?.into());
            c
        }
        ("gemini", "gemini") => {
            if meta_str("auth_type") == Some("oauth") {
                let rt = meta_str("refresh_token")
                    .ok_or("it is a Google sign-in without a refresh token")?;
                let mut c = Credential::new("gemini", "oauth", source);
                c.secret.insert("access_token".into(), need(token)?.into());
                c.secret.insert("refresh_token".into(), rt.into());
                c
            } else {
                let mut c = Credential::new("gemini", "api_key", source);
                c.secret.insert("api_key".into(), need(token)?.into());
                c
            }
        }
        _ if stem.starts_with("mcp:") || stem.starts_with("mcp-") => {
            return Err(
                "moat's mcp grant also holds the server's URL and header, which the Go moat kept in moat.yaml, not here"
                    .into(),
            );
        }
        _ if stem.starts_with("oauth:") => {
            return Err(
                "moat has no OAuth sign-in for MCP servers; a token can be granted as mcp".into(),
            );
        }
        ("claude-oauth", _) => {
            return Err(
                "it is the Go moat's older name for claude.enc (the Go moat moves it when it next runs)"
                    .into(),
            );
        }
        ("npm", "npm") => npm(token, source)?,
        ("aws", "aws") => aws(token, &g, &meta, source)?,
        _ => {
            return Err(format!(
                "moat cannot rebuild a {provider:?} grant from what the Go moat stored"
            ));
        }
    };
    if let Some(s) = &g.scopes
        && c.provider != "aws"
    {
        c.scopes = s.clone();
    }
    c.expires_at = g
        .expires_at
        .filter(|e| e != ZERO_TIME && moat_core::timefmt::parse_rfc3339(e).is_some());
    if let Some(t) = g
        .created_at
        .filter(|e| e != ZERO_TIME && moat_core::timefmt::parse_rfc3339(e).is_some())
    {
        c.created_at = t;
    }
    Ok(c)
}

fn need(token: &str) -> std::result::Result<&str, String> {
    if token.is_empty() || token.chars().any(char::is_control) {
        return Err("it holds no usable token".into());
    }
    Ok(token)
}

/// npm: the token is a JSON array `[{"host","token","scopes","token_source"}]`.
fn npm(token: &str, source: String) -> std::result::Result<Credential, String> {
    #[derive(Deserialize)]
    struct Reg {
        host: String,
        token: String,
    }
    let regs: Vec<Reg> =
        serde_json::from_str(token).map_err(|_| "its npm registry list is not readable")?;
    if regs.is_empty() {
        return Err("its npm registry list is empty".into());
    }
    let mut secret = Vec::new();
    let mut names = Vec::new();
    for r in &regs {
        let host = moat_core::host::canonical_host(r.host.trim_end_matches('/'))
            .map_err(|_| "an npm registry host is not a host name")?;
        need(&r.token)?;
        secret.push(json!({"host": host, "path": "/", "token": r.token}));
        names.push(Value::String(format!("{host}/")));
    }
    let mut c = Credential::new("npm", "registries", source);
    c.secret.insert("registries".into(), Value::Array(secret));
    c.config.insert("scopes".into(), Value::Object(Map::new()));
    c.config.insert("registries".into(), Value::Array(names));
    Ok(c)
}

/// aws: the token is the role ARN; region, session duration and external id are in the
/// metadata (older Go versions kept them in `scopes`: region, duration, external id).
fn aws(
    token: &str,
    g: &GoCredential,
    meta: &Map<String, Value>,
    source: String,
) -> std::result::Result<Credential, String> {
    crate::providers::custom::check_role_arn(token).map_err(|_| "its role ARN is not valid")?;
    let legacy = g.scopes.clone().unwrap_or_default();
    let pick = |k: &str, i: usize| {
        meta.get(k)
            .and_then(Value::as_str)
            .map(String::from)
            .or_else(|| legacy.get(i).cloned())
            .filter(|s| !s.is_empty())
    };
    let region = pick("region", 0).unwrap_or_else(|| "us-east-1".into());
    crate::providers::custom::check_region(&region).map_err(|_| "its region is not valid")?;
    let secs = match pick("session_duration", 1) {
        Some(d) => crate::providers::custom::parse_duration(&d)
            .map_err(|_| "its session duration is not valid")?,
        None => 900,
    };
    if !(900..=43200).contains(&secs) {
        return Err("its session duration is outside 15m..12h".into());
    }
    let mut c = Credential::new("aws", "role", source);
    c.config.insert("role_arn".into(), token.into());
    c.config.insert("region".into(), region.into());
    c.config
        .insert("session_duration_secs".into(), Value::from(secs));
    if let Some(x) = pick("external_id", 2) {
        c.config.insert("external_id".into(), x.into());
    }
    Ok(c)
}

/// Go state besides `.enc` files: `ssh.json` entries, profile stores, runs, config.yaml.
#[derive(Debug, Default)]
pub struct Extras {
    pub unusable: Vec<Unusable>,
    pub runs: Vec<String>,
    pub config: Option<Vec<String>>,
}

pub fn extras(home: &MoatHome) -> Extras {
    let mut x = Extras::default();
    let creds = home.credentials_dir();
    if let Ok(b) = fsutil::read_secret(&creds.join("ssh.json"))
        .or_else(|_| std::fs::read(creds.join("ssh.json")))
    {
        let hosts = ssh_hosts(&b);
        if hosts.is_empty() {
            x.unusable.push(Unusable {
                name: "ssh".into(),
                file: "credentials/ssh.json".into(),
                why: "the Go moat's SSH grants are not readable".into(),
                regrant: "moat grant ssh --host HOST".into(),
            });
        }
        for h in hosts {
            x.unusable.push(Unusable {
                name: format!("ssh:{h}"),
                file: "credentials/ssh.json".into(),
                why: "moat pins the host's keys as well as the agent key; the Go moat kept only the key's fingerprint".into(),
                regrant: regrant_command(&format!("ssh:{h}")),
            });
        }
    }
    if let Ok(rd) = std::fs::read_dir(creds.join("profiles")) {
        let mut names: Vec<String> = rd
            .flatten()
            .filter_map(|e| e.file_name().into_string().ok())
            .filter(|n| !n.starts_with('.'))
            .collect();
        names.sort();
        for n in names {
            x.unusable.push(Unusable {
                name: format!("profiles/{n}"),
                file: format!("credentials/profiles/{n}"),
                why: "moat has no credential profiles; grant under another --name instead".into(),
                regrant: "moat grant PROVIDER --name NAME".into(),
            });
        }
    }
    if let Ok(rd) = std::fs::read_dir(home.runs_dir()) {
        let mut runs: Vec<String> = rd
            .flatten()
            .filter_map(|e| e.file_name().into_string().ok())
            .filter(|n| is_go_run(&home.run_dir(n)))
            .collect();
        runs.sort();
        x.runs = runs;
    }
    let cfg = home.root().join("config.yaml");
    if std::fs::symlink_metadata(&cfg).is_ok_and(|m| m.is_file()) {
        x.config = Some(config_keys(&cfg));
    }
    x
}

fn ssh_hosts(b: &[u8]) -> Vec<String> {
    let Ok(v) = serde_json::from_slice::<Value>(b) else {
        return vec![];
    };
    // `{"mappings": [{"host", ...}]}` or `[{"host", ...}]` or `{"HOST": {...}}`.
    let list = v.get("mappings").unwrap_or(&v);
    let mut out: Vec<String> = match list {
        Value::Array(a) => a
            .iter()
            .filter_map(|m| m.get("host").and_then(Value::as_str))
            .map(String::from)
            .collect(),
        Value::Object(o) => o.keys().cloned().collect(),
        _ => vec![],
    };
    out.retain(|h| moat_core::host::canonical_host(h).is_ok());
    out.iter_mut().for_each(|h| {
        *h = moat_core::host::canonical_host(h).unwrap_or_default();
    });
    out.sort();
    out.dedup();
    out
}

/// A run directory the Go moat made: its metadata.json has no `v` (ours always has).
pub fn is_go_run(dir: &Path) -> bool {
    let Ok(b) = std::fs::read(dir.join("metadata.json")) else {
        return false;
    };
    match serde_json::from_slice::<Value>(&b) {
        Ok(Value::Object(o)) => !o.contains_key("v") && o.contains_key("state"),
        _ => false,
    }
}

/// The top-level settings a Go config.yaml holds (names only, never values).
fn config_keys(p: &Path) -> Vec<String> {
    let text = std::fs::read_to_string(p).unwrap_or_default();
    let mut keys: Vec<String> = text
        .lines()
        .filter(|l| !l.starts_with([' ', '\t', '#', '-']) && !l.trim().is_empty())
        .filter_map(|l| l.split_once(':').map(|(k, _)| k.trim().to_string()))
        .filter(|k| !k.is_empty() && k.bytes().all(|b| b.is_ascii_alphanumeric() || b == b'_'))
        .collect();
    keys.sort();
    keys.dedup();
    keys
}

/// What of the Go moat's state there is, as the notice and `go-moat` tell it.
#[derive(Debug, Default)]
pub struct Report {
    /// (name, source) of Go credentials moat uses as they are.
    pub imported: Vec<(String, String)>,
    pub unusable: Vec<Unusable>,
    pub runs: Vec<String>,
    pub config: Option<Vec<String>>,
}

impl Report {
    pub fn is_empty(&self) -> bool {
        self.imported.is_empty()
            && self.unusable.is_empty()
            && self.runs.is_empty()
            && self.config.is_none()
    }
}

/// Look for the Go moat's state. Without `full`, `None` when a cheap look (no key: file
/// headers, ssh.json, profiles/, runs, config.yaml) finds none; with it, always a report.
/// Never writes a Go file.
pub fn report(store: &Store, full: bool) -> Result<Option<Report>> {
    let names = store.names()?;
    let candidates: Vec<&String> = names
        .iter()
        .filter(|n| {
            fsutil::read_secret(&store.path(n))
                .map(|d| !crate::store::is_ours(&d, None))
                .unwrap_or(true)
        })
        .collect();
    let x = extras(store.home());
    let mut r = Report {
        imported: vec![],
        unusable: x.unusable,
        runs: x.runs,
        config: x.config,
    };
    if !full && candidates.is_empty() && r.is_empty() {
        return Ok(None);
    }
    // Files that are not ours and do not decrypt are named only beside a sure sign of the
    // Go moat (one that decrypts, ssh.json, profiles, runs, config.yaml): alone they may be
    // damage, which `list` reports as such.
    let mut unreadable = Vec::new();
    let file_of = |n: &str| {
        format!(
            "credentials/{}",
            store
                .path(n)
                .file_name()
                .unwrap_or_default()
                .to_string_lossy()
        )
    };
    match crate::key::obtain(store.home(), &names, false) {
        Ok(Some(key)) => {
            for n in &names {
                match store.load_any(n, &key) {
                    Ok(Loaded::Go(c)) => r.imported.push((c.name.clone(), c.source.clone())),
                    Ok(Loaded::GoUnusable(u)) => r.unusable.push(u),
                    Ok(Loaded::Ours(_)) => {}
                    Err(_) if candidates.contains(&n) => unreadable.push(Unusable {
                        name: n.clone(),
                        file: file_of(n),
                        why: "it does not decrypt with the current key".into(),
                        regrant: regrant_command(n),
                    }),
                    Err(_) => {}
                }
            }
        }
        other => {
            let why = match other {
                Err(e) => format!("there is no key to read it with ({})", e.msg),
                _ => "there is no key to read it with".to_string(),
            };
            for n in candidates {
                unreadable.push(Unusable {
                    name: n.clone(),
                    file: file_of(n),
                    why: why.clone(),
                    regrant: regrant_command(n),
                });
            }
        }
    }
    if !full && r.is_empty() {
        return Ok(None);
    }
    r.unusable.extend(unreadable);
    r.unusable.sort_by(|a, b| a.name.cmp(&b.name));
    Ok(Some(r))
}

/// The report as lines for people.
pub fn render(home: &MoatHome, r: &Report) -> String {
    let mut s = format!(
        "moat-grant: found the Go moat's files in {}; nothing of them was changed or removed.\n",
        home.root().display()
    );
    if !r.imported.is_empty() {
        s.push_str("  credentials moat uses as the Go moat stored them:\n");
        for (n, src) in &r.imported {
            s.push_str(&format!(
                "    {n} (from {})\n",
                src.trim_start_matches("go-moat:")
            ));
        }
    }
    if !r.unusable.is_empty() {
        s.push_str("  to be granted again (moat cannot use them as they are):\n");
        for u in &r.unusable {
            s.push_str(&format!("    {}: {}\n      {}\n", u.name, u.why, u.regrant));
        }
    }
    if !r.runs.is_empty() {
        s.push_str(&format!(
            "  {} run(s) of the Go moat under runs/: `moat list` does not show them and `moat clean` leaves them\n",
            r.runs.len()
        ));
    }
    if let Some(keys) = &r.config {
        s.push_str(&format!(
            "  config.yaml ({}): moat does not read it; moat's settings are in moat.yaml and its options\n",
            if keys.is_empty() { "empty".to_string() } else { keys.join(", ") }
        ));
    }
    s.push_str(
        "  when moat replaces or revokes one of the Go moat's credentials, the original is kept under go-moat/credentials/\n\
         see moat-grant(1), THE GO MOAT'S STORE; `moat grant go-moat` shows this again\n",
    );
    s
}

pub const NOTICE_FILE: &str = "notice.json";

/// Say the report once per MOAT_HOME, on stderr, the first time a command meets the Go
/// moat's state; `go-moat/notice.json` records that it was said.
pub fn notice_once() {
    let Ok(home) = MoatHome::from_env() else {
        return;
    };
    let dir = home.root().join("go-moat");
    let file = dir.join(NOTICE_FILE);
    if std::fs::symlink_metadata(&file).is_ok() {
        return;
    }
    let store = Store::new(home.clone());
    let r = match report(&store, false) {
        Ok(Some(r)) if !r.is_empty() => r,
        _ => return,
    };
    let rec = json!({
        "v": 1,
        "said_at": moat_core::timefmt::now_rfc3339(),
        "imported": r.imported.iter().map(|(n, _)| n.clone()).collect::<Vec<_>>(),
        "regrant": r.unusable.iter().map(|u| u.name.clone()).collect::<Vec<_>>(),
        "go_runs": r.runs.len(),
        "config_yaml": r.config.is_some(),
    });
    let mut text = serde_json::to_vec_pretty(&rec).unwrap_or_default();
    text.push(b'\n');
    match fsutil::create_private_dir(&dir)
        .map_err(|e| e.msg)
        .and_then(|()| write_new(&file, &text).map_err(|e| e.to_string()))
    {
        Ok(()) => {}
        // Another command said it just now.
        Err(_) if std::fs::symlink_metadata(&file).is_ok() => return,
        Err(e) => eprintln!(
            "moat-grant: warning: could not record that this was said ({}: {e}); it will be said again",
            file.display()
        ),
    }
    eprint!("{}", render(&home, &r));
}

/// `moat-grant go-moat`: the report on standard output, whether or not it was said.
pub fn command() -> Result<()> {
    let home = MoatHome::from_env()?;
    let r = report(&Store::new(home.clone()), true)?.unwrap_or_default();
    if r.is_empty() {
        return moat_core::cli::write_stdout(
            format!(
                "moat-grant: nothing of the Go moat's was found in {}\n",
                home.root().display()
            )
            .as_bytes(),
        );
    }
    moat_core::cli::write_stdout(render(&home, &r).as_bytes())
}

/// Where the copy of a Go file that is about to be replaced or removed goes.
pub fn preserved_dir(home: &MoatHome) -> PathBuf {
    home.root().join("go-moat").join("credentials")
}

/// Copy the Go file at `path` (`credentials/<file>`) byte for byte under
/// `go-moat/credentials/` before moat replaces or removes it. An existing copy is never
/// overwritten: an identical one is kept, a different one gets a `.N` neighbour. Returns
/// where the copy is; an error means the caller must not write.
pub fn preserve(home: &MoatHome, path: &Path, data: &[u8]) -> Result<PathBuf> {
    let dir = preserved_dir(home);
    fsutil::create_private_dir(&home.root().join("go-moat"))?;
    fsutil::create_private_dir(&dir)?;
    let file = path
        .file_name()
        .ok_or_else(|| Error::software("a credential path has no file name"))?
        .to_string_lossy()
        .to_string();
    for i in 0..1000 {
        let dst = if i == 0 {
            dir.join(&file)
        } else {
            dir.join(format!("{file}.{i}"))
        };
        match std::fs::read(&dst) {
            Ok(old) if old == data => return Ok(dst),
            Ok(_) => continue,
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => {
                write_new(&dst, data).map_err(|e| {
                    Error::io(
                        format!(
                            "keeping a copy of the Go moat's {} at {}",
                            path.display(),
                            dst.display()
                        ),
                        e,
                    )
                })?;
                return Ok(dst);
            }
            Err(e) => return Err(Error::io(format!("reading {}", dst.display()), e)),
        }
    }
    Err(Error::unavailable(format!(
        "too many copies of {file} under {}",
        dir.display()
    )))
}

fn write_new(dst: &Path, data: &[u8]) -> std::io::Result<()> {
    use std::io::Write;
    use std::os::unix::fs::OpenOptionsExt;
    let mut f = std::fs::OpenOptions::new()
        .write(true)
        .create_new(true)
        .mode(0o600)
        .open(dst)?;
    let r = f.write_all(data).and_then(|()| f.sync_all());
    if r.is_err() {
        let _ = std::fs::remove_file(dst);
    }
    r
}

#[cfg(test)]
pub mod tests {
    use super::*;
    use aes_gcm::aead::Aead;

    /// A file exactly as the Go moat writes it: random nonce, no associated data.
    pub fn go_seal(key: &Key, plaintext: &[u8]) -> Vec<u8> {
        let nonce: [u8; 12] = moat_core::random_bytes();
        let c = Aes256Gcm::new_from_slice(key.bytes()).unwrap();
        let mut out = nonce.to_vec();
        out.extend(c.encrypt(&Nonce::from(nonce), plaintext).unwrap());
        out
    }

    fn go(provider: &str, token: &str, meta: Value) -> Vec<u8> {
        serde_json::to_vec(&json!({
            "provider": provider, "token": token, "scopes": ["repo"],
            "expires_at": ZERO_TIME, "created_at": "2025-01-02T03:04:05Z", "metadata": meta,
        }))
        .unwrap()
    }

    #[test]
    fn each_provider_maps_onto_what_our_grant_stores() {
        let c = map(
            "github",
            &go("github", "ghp_canary", json!({"token_source": "cli"})),
        )
        .unwrap();
        assert_eq!(
            (c.name.as_str(), c.provider.as_str(), c.kind.as_str()),
            ("github", "github", "token")
        );
        assert_eq!(c.secret_str("token"), Some("ghp_canary"));
        assert_eq!(c.source, "go-moat:credentials/github.enc");
        assert_eq!(c.expires_at, None);
        assert_eq!(c.created_at, "2025-01-02T03:04:05Z");
        assert_eq!(c.scopes, vec!["repo".to_string()]);

        let c = map("claude", &go("claude", "sk-ant-oat01-x", json!({}))).unwrap();
        assert_eq!(
            (c.name.as_str(), c.provider.as_str(), c.kind.as_str()),
            ("claude", "anthropic", "oauth")
        );
        assert_eq!(c.secret_str("access_token"), Some("sk-ant-oat01-x"));
        assert!(map("claude", &go("claude", "sk-ant-api03-x", json!({}))).is_err());

        let c = map("anthropic", &go("anthropic", "sk-ant-api03-x", json!({}))).unwrap();
        assert_eq!((c.name.as_str(), c.kind.as_str()), ("anthropic", "api_key"));
        assert_eq!(c.secret_str("api_key"), Some("sk-ant-api03-x"));
        let c = map("anthropic", &go("anthropic", "sk-ant-oat01-y", json!({}))).unwrap();
        assert_eq!((c.name.as_str(), c.kind.as_str()), ("anthropic", "oauth"));

        for p in ["openai", "codex"] {
            let c = map("openai", &go(p, "sk-proj-x", json!({}))).unwrap();
            assert_eq!(
                (c.name.as_str(), c.provider.as_str(), c.kind.as_str()),
                ("openai", "openai", "api_key")
            );
        }

        let c = map("gemini", &go("gemini", "AIzaX", json!({}))).unwrap();
        assert_eq!(
            (c.kind.as_str(), c.secret_str("api_key")),
            ("api_key", Some("AIzaX"))
        );
        let c = map(
            "gemini",
            &go(
                "gemini",
                "ya29.x",
                json!({"auth_type": "oauth", "refresh_token": "1//r"}),
            ),
        )
        .unwrap();
        assert_eq!(c.kind, "oauth");
        assert_eq!(c.secret_str("refresh_token"), Some("1//r"));
        assert!(
            map(
                "gemini",
                &go("gemini", "ya29.x", json!({"auth_type": "oauth"}))
            )
            .is_err()
        );

        let regs = r#"[{"host":"registry.example.com","token":"npm_x","scopes":["@a"],"token_source":"npmrc"}]"#;
        let c = map("npm", &go("npm", regs, json!({}))).unwrap();
        assert_eq!(c.kind, "registries");
        assert_eq!(c.secret["registries"][0]["host"], "registry.example.com");
        assert_eq!(c.secret["registries"][0]["token"], "npm_x");
        assert_eq!(
            crate::rules::hosts(&c),
            vec!["registry.example.com".to_string()]
        );

        let arn = "arn:aws:iam::123456789012:role/dev";
        let c = map(
            "aws",
            &go(
                "aws",
                arn,
                json!({"region": "eu-west-1", "session_duration": "1h", "external_id": "xid-1"}),
            ),
        )
        .unwrap();
        assert_eq!(c.config_str("role_arn"), Some(arn));
        assert_eq!(c.config_str("region"), Some("eu-west-1"));
        assert_eq!(c.config["session_duration_secs"], 3600);
        assert_eq!(c.config_str("external_id"), Some("xid-1"));
        assert!(map("aws", &go("aws", "not-an-arn", json!({}))).is_err());

        for stem in ["mcp:linear", "mcp-linear", "oauth:notion", "graphite"] {
            let e = map(stem, &go(stem, "tokCANARY9", json!({}))).unwrap_err();
            assert!(!e.contains("CANARY9"), "{e}");
        }
        assert_eq!(
            regrant_command("mcp:linear"),
            "moat grant mcp linear --url URL --header HEADER"
        );
        assert_eq!(
            regrant_command("mcp-linear"),
            "moat grant mcp linear --url URL --header HEADER"
        );
        assert_eq!(
            regrant_command("ssh:github.com"),
            "moat grant ssh --host github.com"
        );
        // Every mapped credential yields rules, as one our own grant stored would.
        for (stem, p, t) in [
            ("github", "github", "ghp_x"),
            ("claude", "claude", "sk-ant-oat01-x"),
            ("openai", "openai", "sk-x"),
        ] {
            let c = map(stem, &go(p, t, json!({}))).unwrap();
            assert!(!crate::rules::records(&c).unwrap().is_empty());
        }
    }

    #[test]
    fn go_files_decrypt_only_with_the_key_and_undamaged() {
        let k = crate::key::tests_key(3);
        let pt = go("github", "ghp_canary", json!({}));
        let data = go_seal(&k, &pt);
        assert_eq!(decrypt(&k, &data).unwrap(), pt);
        assert!(decrypt(&crate::key::tests_key(4), &data).is_none());
        let mut d = data.clone();
        d[20] ^= 1;
        assert!(decrypt(&k, &d).is_none());
        assert!(decrypt(&k, &data[..27]).is_none());
        assert!(
            map("github", b"{not json")
                .unwrap_err()
                .contains("not to a credential")
        );
    }

    #[test]
    fn the_store_reads_go_files_in_place_and_names_the_rest() {
        let d = tempfile::tempdir().unwrap();
        let home = MoatHome::at(d.path().to_path_buf());
        fsutil::create_private_dir(&home.credentials_dir()).unwrap();
        let k = crate::key::tests_key(5);
        let put = |name: &str, data: &[u8]| {
            fsutil::write_secret(&home.credential_file(name), data).unwrap()
        };
        put(
            "github",
            &go_seal(&k, &go("github", "ghp_canary", json!({}))),
        );
        put(
            "mcp:linear",
            &go_seal(&k, &go("mcp:linear", "lin_canary", json!({}))),
        );
        // (A first byte of 1 would read as our format; a Go nonce has it 1 time in 256.)
        let mut other_key = go_seal(&crate::key::tests_key(6), &go("openai", "sk-x", json!({})));
        other_key[0] = 2;
        put("openai", &other_key);
        let mut damaged = go_seal(&k, &go("npm", "[]", json!({})));
        damaged[0] = 2;
        damaged[30] ^= 1;
        put("npm", &damaged);
        let store = Store::new(home.clone());
        let before: Vec<Vec<u8>> = store
            .names()
            .unwrap()
            .iter()
            .map(|n| std::fs::read(store.path(n)).unwrap())
            .collect();
        let Loaded::Go(c) = store.load_any("github", &k).unwrap() else {
            panic!()
        };
        assert_eq!(c.secret_str("token"), Some("ghp_canary"));
        let Loaded::GoUnusable(u) = store.load_any("mcp:linear", &k).unwrap() else {
            panic!()
        };
        assert_eq!(u.regrant, "moat grant mcp linear --url URL --header HEADER");
        for n in ["openai", "npm"] {
            let e = store.load_any(n, &k).err().unwrap();
            assert!(
                e.msg
                    .contains("nor does it decrypt as a Go moat credential"),
                "{}",
                e.msg
            );
            assert!(e.msg.contains(&format!("`moat grant {n}`")), "{}", e.msg);
        }
        let e = store.load("mcp:linear", &k).unwrap_err();
        assert!(
            e.hint
                .as_deref()
                .unwrap_or("")
                .contains("moat grant mcp linear"),
            "{e:?}"
        );
        assert!(!format!("{e:?}").contains("lin_canary"));
        let after: Vec<Vec<u8>> = store
            .names()
            .unwrap()
            .iter()
            .map(|n| std::fs::read(store.path(n)).unwrap())
            .collect();
        assert_eq!(before, after, "reading wrote");
        // Replacing one keeps the Go file; ours then opens as ours.
        let orig = std::fs::read(store.path("github")).unwrap();
        store.save(&c, &k).unwrap();
        assert_eq!(
            std::fs::read(preserved_dir(&home).join("github.enc")).unwrap(),
            orig
        );
        assert!(matches!(
            store.load_any("github", &k).unwrap(),
            Loaded::Ours(_)
        ));
        put(
            "gemini",
            &go_seal(&k, &go("gemini", "AIzaCANARY", json!({}))),
        );
        let orig = std::fs::read(store.path("gemini")).unwrap();
        store
            .update("gemini", &k, |c| {
                c.expires_at = None;
                Ok(())
            })
            .unwrap();
        assert_eq!(
            std::fs::read(preserved_dir(&home).join("gemini.enc")).unwrap(),
            orig
        );
        let orig = std::fs::read(store.path("openai")).unwrap();
        store.remove("openai", None).unwrap();
        assert_eq!(
            std::fs::read(preserved_dir(&home).join("openai.enc")).unwrap(),
            orig
        );
    }

    const FORMAT_BYTE: u8 = crate::store::FORMAT;

    #[test]
    fn no_copy_no_write() {
        let d = tempfile::tempdir().unwrap();
        let home = MoatHome::at(d.path().to_path_buf());
        fsutil::create_private_dir(&home.credentials_dir()).unwrap();
        let k = crate::key::tests_key(5);
        let data = loop {
            let d = go_seal(&k, &go("github", "ghp_canary", json!({})));
            if d[0] != FORMAT_BYTE {
                break d;
            }
        };
        fsutil::write_secret(&home.credential_file("github"), &data).unwrap();
        // go-moat is a file: no copy can be made.
        std::fs::write(d.path().join("go-moat"), b"in the way").unwrap();
        let store = Store::new(home.clone());
        let c = store.load("github", &k).unwrap();
        let e = store.save(&c, &k).unwrap_err();
        assert!(e.msg.contains("no copy could be kept"), "{}", e.msg);
        assert!(store.remove("github", Some(&k)).is_err());
        assert_eq!(std::fs::read(store.path("github")).unwrap(), data);
    }

    #[test]
    fn preserving_never_overwrites_a_copy() {
        let d = tempfile::tempdir().unwrap();
        let home = MoatHome::at(d.path().to_path_buf());
        let p = home.credential_file("github");
        let a = preserve(&home, &p, b"first").unwrap();
        assert_eq!(std::fs::read(&a).unwrap(), b"first");
        assert_eq!(preserve(&home, &p, b"first").unwrap(), a);
        let b = preserve(&home, &p, b"second").unwrap();
        assert_ne!(a, b);
        assert_eq!(std::fs::read(&a).unwrap(), b"first");
        assert_eq!(std::fs::read(&b).unwrap(), b"second");
        use std::os::unix::fs::PermissionsExt;
        assert_eq!(
            std::fs::metadata(&b).unwrap().permissions().mode() & 0o777,
            0o600
        );
    }

    #[test]
    fn ssh_json_shapes_and_config_keys() {
        assert_eq!(
            ssh_hosts(br#"{"mappings":[{"host":"GitHub.com","key_fingerprint":"SHA256:x"}]}"#),
            vec!["github.com".to_string()]
        );
        assert_eq!(
            ssh_hosts(br#"{"gitlab.com":{"key_fingerprint":"SHA256:x"}}"#),
            vec!["gitlab.com".to_string()]
        );
        let d = tempfile::tempdir().unwrap();
        let p = d.path().join("config.yaml");
        std::fs::write(
            &p,
            "proxy:\n  port: 8080\ndebug:\n  retention_days: 14\nmounts:\n  - ~/x:/x:ro\n",
        )
        .unwrap();
        assert_eq!(config_keys(&p), vec!["debug", "mounts", "proxy"]);
    }
}
