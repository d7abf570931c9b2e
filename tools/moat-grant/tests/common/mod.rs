//! Helpers shared by moat-grant's CLI tests: run the real binary with extra environment and
//! stdin, make unique canary tokens, and write credential files the way the store does
//! (an independent implementation of the file format, used to plant valid-but-wrong files).
#![allow(dead_code)]

use aes_gcm::aead::{Aead, KeyInit, Payload};
use aes_gcm::{Aes256Gcm, Nonce};
use base64::Engine;
use base64::engine::general_purpose::STANDARD as B64;
use moat_testkit::{Run, TestEnv};
use sha2::{Digest, Sha256};
use std::io::Write;
use std::path::PathBuf;
use std::process::Stdio;

/// Where online validation goes unless a test says otherwise: a closed loopback port, so
/// no test token ever leaves the machine and validation takes its "unreachable" path.
pub const OFFLINE: &str = "::127.0.0.1:1";

/// Run moat-grant with extra environment variables and bytes on stdin. Every connection
/// goes to [`OFFLINE`] unless `envs` sets `MOAT_PROXY_CONNECT_TO`.
pub fn grant(t: &TestEnv, args: &[&str], envs: &[(&str, &str)], stdin: &[u8]) -> Run {
    let mut c = t.cmd("moat-grant");
    c.args(args)
        .env("MOAT_PROXY_CONNECT_TO", OFFLINE)
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped());
    for (k, v) in envs {
        c.env(k, v);
    }
    let mut child = c.spawn().expect("spawn moat-grant");
    let mut si = child.stdin.take().unwrap();
    let _ = si.write_all(stdin);
    drop(si);
    let out = child.wait_with_output().expect("wait");
    Run::new(format!("moat-grant {}", args.join(" ")), out)
}

/// Store a token through `--token-stdin` and expect success.
pub fn store_token(t: &TestEnv, provider_args: &[&str], token: &str) -> Run {
    let mut args = provider_args.to_vec();
    args.push("--token-stdin");
    let r = grant(t, &args, &[], format!("{token}\n").as_bytes());
    r.success();
    r
}

/// A token nobody else has: for canary greps.
pub fn canary(prefix: &str) -> String {
    let mut b = [0u8; 12];
    getrandom::fill(&mut b).unwrap();
    let hex: String = b.iter().map(|x| format!("{x:02x}")).collect();
    format!("{prefix}CANARY{hex}")
}

pub fn cred_path(t: &TestEnv, name: &str) -> PathBuf {
    t.moat_home.join("credentials").join(format!("{name}.enc"))
}

pub fn key_file(t: &TestEnv) -> PathBuf {
    t.moat_home.join("encryption.key")
}

pub fn key_bytes(t: &TestEnv) -> [u8; 32] {
    let text = std::fs::read_to_string(key_file(t)).unwrap();
    B64.decode(text.trim()).unwrap().try_into().unwrap()
}

/// Encrypt `plaintext` as credential `name` with the store's current key, following the
/// documented format: version 1, key id, nonce, AES-256-GCM with the name in the AD.
pub fn seal(t: &TestEnv, name: &str, plaintext: &[u8]) -> Vec<u8> {
    let key = key_bytes(t);
    let mut h = Sha256::new();
    h.update(b"moat-grant key id\0");
    h.update(key);
    let id = h.finalize();
    let mut nonce = [0u8; 12];
    getrandom::fill(&mut nonce).unwrap();
    let mut out = vec![1u8];
    out.extend_from_slice(&id[..8]);
    out.extend_from_slice(&nonce);
    let mut aad = b"moat-credential\0".to_vec();
    aad.extend_from_slice(&out);
    aad.extend_from_slice(name.as_bytes());
    let ct = Aes256Gcm::new_from_slice(&key)
        .unwrap()
        .encrypt(
            &Nonce::from(nonce),
            Payload {
                msg: plaintext,
                aad: &aad,
            },
        )
        .unwrap();
    out.extend_from_slice(&ct);
    out
}

/// Names listed by `list --json`.
pub fn listed(t: &TestEnv) -> Vec<String> {
    let r = t.run("moat-grant", &["list", "--json"]);
    r.records()
        .iter()
        .filter(|r| r.kind == "grant")
        .map(|r| r.str("name").unwrap().to_string())
        .collect()
}

/// `rules` records as (type, fields).
pub fn rules(t: &TestEnv, names: &[&str]) -> Vec<moat_core::jsonl::Record> {
    let mut args = vec!["rules"];
    args.extend_from_slice(names);
    let r = t.run("moat-grant", &args);
    r.success();
    r.records()
}

/// A real ssh-agent on a socket in the test directory, killed on drop.
pub struct Agent {
    pub sock: std::path::PathBuf,
    pub pid: String,
}

impl Agent {
    pub fn start(t: &TestEnv) -> Agent {
        let sock = t.path().join("agent.sock");
        let out = std::process::Command::new("ssh-agent")
            .arg("-a")
            .arg(&sock)
            .arg("-s")
            .output()
            .expect("ssh-agent (Debian openssh-client)");
        assert!(out.status.success());
        let text = String::from_utf8_lossy(&out.stdout);
        let pid = text
            .split(';')
            .find_map(|p| p.trim().strip_prefix("SSH_AGENT_PID="))
            .expect("agent pid")
            .to_string();
        Agent { sock, pid }
    }
    pub fn add_key(&self, t: &TestEnv, name: &str) -> String {
        let k = t.path().join(name);
        let st = std::process::Command::new("ssh-keygen")
            .args(["-q", "-t", "ed25519", "-N", "", "-C", name, "-f"])
            .arg(&k)
            .status()
            .unwrap();
        assert!(st.success());
        let st = std::process::Command::new("ssh-add")
            .arg(&k)
            .env("SSH_AUTH_SOCK", &self.sock)
            .stderr(std::process::Stdio::null())
            .status()
            .unwrap();
        assert!(st.success());
        let fp = std::process::Command::new("ssh-keygen")
            .arg("-lf")
            .arg(k.with_extension("pub"))
            .output()
            .unwrap();
        String::from_utf8_lossy(&fp.stdout)
            .split_whitespace()
            .nth(1)
            .unwrap()
            .to_string()
    }
}

impl Drop for Agent {
    fn drop(&mut self) {
        let _ = std::process::Command::new("kill").arg(&self.pid).status();
    }
}

/// A host key made for the test, as `type base64`.
pub fn host_key(t: &TestEnv, name: &str) -> String {
    let k = t.path().join(name);
    std::process::Command::new("ssh-keygen")
        .args(["-q", "-t", "ed25519", "-N", "", "-f"])
        .arg(&k)
        .status()
        .unwrap();
    let p = std::fs::read_to_string(k.with_extension("pub")).unwrap();
    let f: Vec<&str> = p.split_whitespace().collect();
    format!("{} {}", f[0], f[1])
}
