//! `ssh --host HOST`: choose a key from the running SSH agent and pin HOST's public keys.
//! The agent is asked for its public keys only (REQUEST_IDENTITIES); no private key file is
//! ever opened. Host keys come from `~/.ssh/known_hosts` through `ssh-keygen -F` (which
//! also understands hashed entries) or from `--host-key FILE`. Nothing here is secret: the
//! grant records which key may sign for which host.

use crate::args::Grant;
use crate::input;
use crate::store::Credential;
use base64::Engine;
use base64::engine::general_purpose::{STANDARD as B64, STANDARD_NO_PAD as B64NP};
use moat_core::{Error, Result};
use sha2::{Digest, Sha256};
use std::io::{Read, Write};
use std::os::unix::net::UnixStream;
use std::process::Command;
use std::time::Duration;

const SSH_AGENTC_REQUEST_IDENTITIES: u8 = 11;
const SSH_AGENT_IDENTITIES_ANSWER: u8 = 12;
const MAX_FRAME: usize = 256 * 1024;

/// One key the agent holds.
#[derive(Debug, Clone, PartialEq)]
pub struct AgentKey {
    pub blob: Vec<u8>,
    pub comment: String,
}

impl AgentKey {
    pub fn fingerprint(&self) -> String {
        fingerprint(&self.blob)
    }
    pub fn algorithm(&self) -> String {
        read_string(&self.blob, &mut 0)
            .and_then(|s| String::from_utf8(s.to_vec()).ok())
            .unwrap_or_else(|| "unknown".into())
    }
}

/// OpenSSH's fingerprint: `SHA256:` and the unpadded base64 of the blob's SHA-256.
pub fn fingerprint(blob: &[u8]) -> String {
    format!("SHA256:{}", B64NP.encode(Sha256::digest(blob)))
}

pub fn grant(g: &Grant) -> Result<Credential> {
    let host = moat_core::host::canonical_host(&g.hosts[0])
        .map_err(|e| Error::usage(format!("--host: {e}")))?;
    let sock = input::env("SSH_AUTH_SOCK").ok_or_else(|| {
        Error::unavailable("SSH_AUTH_SOCK is not set: no SSH agent is running")
            .with_hint("start one (eval $(ssh-agent)) and add your key with ssh-add")
    })?;
    let keys = agent_identities(std::path::Path::new(&sock))?;
    if keys.is_empty() {
        return Err(Error::noinput("the SSH agent holds no keys").with_hint("add one with ssh-add"));
    }
    let key = choose_key(&keys, g.key.as_deref())?;
    let host_keys = match &g.host_key {
        Some(f) => host_keys_from_file(std::path::Path::new(f), &host)?,
        None => host_keys_from_known_hosts(&host)?,
    };
    for ns in &g.sshsig_namespaces {
        let ok = !ns.is_empty()
            && ns.len() <= 64
            && ns
                .bytes()
                .all(|b| b.is_ascii_alphanumeric() || b"@._-".contains(&b));
        if !ok {
            return Err(Error::usage(format!(
                "--sshsig-namespace {ns:?} is not a namespace"
            )));
        }
    }
    let mut c = Credential::new("ssh", "agent_key", "agent");
    if !g.sshsig_namespaces.is_empty() {
        c.config.insert(
            "sshsig_namespaces".into(),
            g.sshsig_namespaces
                .iter()
                .cloned()
                .map(serde_json::Value::String)
                .collect(),
        );
    }
    c.name = format!("ssh:{host}");
    c.config.insert("host".into(), host.into());
    c.config
        .insert("fingerprint".into(), key.fingerprint().into());
    c.config.insert("key_type".into(), key.algorithm().into());
    c.config
        .insert("key_comment".into(), key.comment.clone().into());
    c.config.insert(
        "host_keys".into(),
        host_keys
            .into_iter()
            .map(serde_json::Value::String)
            .collect(),
    );
    eprintln!(
        "moat-grant: key {} ({}) may sign for {}",
        key.fingerprint(),
        key.comment,
        c.name.trim_start_matches("ssh:")
    );
    Ok(c)
}

fn choose_key<'a>(keys: &'a [AgentKey], want: Option<&str>) -> Result<&'a AgentKey> {
    let listing = || {
        keys.iter()
            .map(|k| format!("  {} {} {}", k.fingerprint(), k.algorithm(), k.comment))
            .collect::<Vec<_>>()
            .join("\n")
    };
    if let Some(w) = want {
        let w = w.trim();
        let w = w.strip_prefix("SHA256:").unwrap_or(w);
        return keys
            .iter()
            .find(|k| k.fingerprint()["SHA256:".len()..] == *w)
            .ok_or_else(|| {
                Error::noinput("no key with that fingerprint is in the SSH agent")
                    .with_hint(format!("the agent holds:\n{}", listing()))
            });
    }
    if keys.len() == 1 {
        return Ok(&keys[0]);
    }
    if input::can_prompt() {
        eprintln!("The SSH agent holds {} keys:", keys.len());
        for (i, k) in keys.iter().enumerate() {
            eprintln!(
                "  {}) {} {} {}",
                i + 1,
                k.fingerprint(),
                k.algorithm(),
                k.comment
            );
        }
        let a = input::prompt_line(&format!("Key to use [1-{}]: ", keys.len()))?;
        return a
            .parse::<usize>()
            .ok()
            .and_then(|i| i.checked_sub(1))
            .and_then(|i| keys.get(i))
            .ok_or_else(|| Error::usage(format!("no key number {a:?}")));
    }
    Err(Error::usage(format!(
        "the SSH agent holds {} keys; pass --key FINGERPRINT to choose one",
        keys.len()
    ))
    .with_hint(format!("the agent holds:\n{}", listing())))
}

/// Ask the agent for its public keys.
pub fn agent_identities(sock: &std::path::Path) -> Result<Vec<AgentKey>> {
    let ctx =
        |e: std::io::Error| Error::io(format!("talking to the SSH agent at {}", sock.display()), e);
    let mut s = UnixStream::connect(sock).map_err(ctx)?;
    s.set_read_timeout(Some(Duration::from_secs(5)))
        .map_err(ctx)?;
    s.set_write_timeout(Some(Duration::from_secs(5)))
        .map_err(ctx)?;
    s.write_all(&[0, 0, 0, 1, SSH_AGENTC_REQUEST_IDENTITIES])
        .map_err(ctx)?;
    let mut len = [0u8; 4];
    s.read_exact(&mut len).map_err(ctx)?;
    let len = u32::from_be_bytes(len) as usize;
    if len == 0 || len > MAX_FRAME {
        return Err(Error::data(format!(
            "the SSH agent sent a frame of {len} bytes"
        )));
    }
    let mut buf = vec![0u8; len];
    s.read_exact(&mut buf).map_err(ctx)?;
    parse_identities(&buf)
}

fn parse_identities(buf: &[u8]) -> Result<Vec<AgentKey>> {
    let bad = || Error::data("the SSH agent's answer is malformed");
    if buf.first() != Some(&SSH_AGENT_IDENTITIES_ANSWER) {
        return Err(Error::data(format!(
            "the SSH agent refused to list keys (answer type {})",
            buf.first().copied().unwrap_or(0)
        )));
    }
    let mut pos = 1;
    let n = read_u32(buf, &mut pos).ok_or_else(bad)? as usize;
    if n > 1024 {
        return Err(bad());
    }
    let mut keys = Vec::with_capacity(n);
    for _ in 0..n {
        let blob = read_string(buf, &mut pos).ok_or_else(bad)?.to_vec();
        let comment = read_string(buf, &mut pos).ok_or_else(bad)?;
        keys.push(AgentKey {
            blob,
            comment: String::from_utf8_lossy(comment).into_owned(),
        });
    }
    Ok(keys)
}

fn read_u32(b: &[u8], pos: &mut usize) -> Option<u32> {
    let s = b.get(*pos..*pos + 4)?;
    *pos += 4;
    Some(u32::from_be_bytes([s[0], s[1], s[2], s[3]]))
}

fn read_string<'a>(b: &'a [u8], pos: &mut usize) -> Option<&'a [u8]> {
    let n = read_u32(b, pos)? as usize;
    let s = b.get(*pos..pos.checked_add(n)?)?;
    *pos += n;
    Some(s)
}

/// `keytype base64` when `fields` start with a valid public key whose blob names the same
/// type; else None.
fn key_from_fields(fields: &[&str]) -> Option<String> {
    let (ty, b64) = (fields.first()?, fields.get(1)?);
    let blob = B64.decode(b64).ok()?;
    let inner = read_string(&blob, &mut 0)?;
    (inner == ty.as_bytes()).then(|| format!("{ty} {b64}"))
}

/// Public keys from lines in OpenSSH public-key form (`type base64 [comment]`) or
/// known_hosts form (`patterns type base64 [comment]`, optionally `@cert-authority`;
/// `@revoked` lines are skipped).
pub fn parse_key_lines(text: &str) -> Vec<String> {
    let mut keys = Vec::new();
    for line in text.lines() {
        let l = line.trim();
        if l.is_empty() || l.starts_with('#') || l.starts_with("@revoked") {
            continue;
        }
        let f: Vec<&str> = l.split_whitespace().collect();
        let f = if f.first().is_some_and(|x| x.starts_with('@')) {
            &f[1..]
        } else {
            &f[..]
        };
        if let Some(k) = key_from_fields(f).or_else(|| key_from_fields(f.get(1..).unwrap_or(&[])))
            && !keys.contains(&k)
        {
            keys.push(k);
        }
    }
    keys
}

fn host_keys_from_file(path: &std::path::Path, host: &str) -> Result<Vec<String>> {
    let text = std::fs::read_to_string(path)
        .map_err(|e| Error::io(format!("reading {}", path.display()), e))?;
    let keys = parse_key_lines(&text);
    if keys.is_empty() {
        return Err(Error::data(format!(
            "{} holds no SSH public keys for {host}",
            path.display()
        )));
    }
    Ok(keys)
}

fn host_keys_from_known_hosts(host: &str) -> Result<Vec<String>> {
    let file = input::home_dir()?.join(".ssh").join("known_hosts");
    let missing = || {
        Error::noinput(format!("no host key for {host} in {}", file.display())).with_hint(format!(
            "connect once with ssh and check the fingerprint, or pass --host-key FILE \
             (for example from `ssh-keyscan {host} > FILE`, after checking it)"
        ))
    };
    if !file.exists() {
        return Err(missing());
    }
    let mut cmd = Command::new("ssh-keygen");
    cmd.arg("-F").arg(host).arg("-f").arg(&file);
    let out = input::run_with_timeout(cmd, Duration::from_secs(10)).ok_or_else(|| {
        Error::unavailable("could not run ssh-keygen -F to read known_hosts")
            .with_hint("install openssh-client or pass --host-key FILE")
    })?;
    if !out.status.success() {
        return Err(missing());
    }
    let keys = parse_key_lines(&String::from_utf8_lossy(&out.stdout));
    if keys.is_empty() {
        return Err(missing());
    }
    Ok(keys)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn ssh_string(v: &[u8]) -> Vec<u8> {
        let mut o = (v.len() as u32).to_be_bytes().to_vec();
        o.extend_from_slice(v);
        o
    }

    #[test]
    fn identities_answer_parses_and_fingerprints() {
        let mut blob = ssh_string(b"ssh-ed25519");
        blob.extend(ssh_string(&[7u8; 32]));
        let mut ans = vec![SSH_AGENT_IDENTITIES_ANSWER, 0, 0, 0, 1];
        ans.extend(ssh_string(&blob));
        ans.extend(ssh_string(b"me@host"));
        let keys = parse_identities(&ans).unwrap();
        assert_eq!(keys.len(), 1);
        assert_eq!(keys[0].algorithm(), "ssh-ed25519");
        assert_eq!(keys[0].comment, "me@host");
        assert!(keys[0].fingerprint().starts_with("SHA256:"));
        assert!(!keys[0].fingerprint().ends_with('='));
        assert!(parse_identities(&ans[..ans.len() - 2]).is_err());
        assert!(parse_identities(&[5]).is_err());
    }

    #[test]
    fn key_lines_in_both_forms() {
        let mut blob = ssh_string(b"ssh-ed25519");
        blob.extend(ssh_string(&[9u8; 32]));
        let b = B64.encode(&blob);
        let text = format!(
            "# comment\nssh-ed25519 {b} me\ngithub.com,1.2.3.4 ssh-ed25519 {b}\n@revoked x ssh-ed25519 AAAA\nssh-rsa {b}\n"
        );
        assert_eq!(parse_key_lines(&text), vec![format!("ssh-ed25519 {b}")]);
    }
}
