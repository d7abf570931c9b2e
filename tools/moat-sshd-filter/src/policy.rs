//! Grants and decisions. A key (by fingerprint) may sign only for the hosts it is granted
//! for, and a host is known only by its pinned host keys; host names are for records and
//! messages. Every decision here fails closed: no binding, a refused binding, or data
//! that is not a user-authentication request for the bound session gets no signature.

use crate::bind::Binding;
use crate::protocol::{self, SignRequest};
use base64::Engine as _;
use moat_core::jsonl;
use moat_core::rules::{SshRule, TYPE_SSH};
use moat_core::{Error, Result};
use std::collections::{HashMap, VecDeque};
use std::io::BufRead;
use std::sync::Mutex;

/// One `ssh` rule, with its host keys decoded to blobs.
#[derive(Debug, Clone)]
pub struct Grant {
    pub grant: String,
    pub host: String,
    pub fingerprint: String,
    pub host_keys: Vec<Vec<u8>>,
    pub sshsig_namespaces: Vec<String>,
}

#[derive(Debug, Default)]
pub struct Policy {
    pub grants: Vec<Grant>,
}

/// The most rule input read (rules are small; this only stops a runaway pipe).
const MAX_RULES_INPUT: u64 = 16 * 1024 * 1024;

impl Policy {
    /// Read `moat-grant rules` output: `ssh` records are grants, other types are skipped.
    pub fn load(input: impl BufRead, source: &str) -> Result<Policy> {
        let mut grants = Vec::new();
        let mut input = input.take(MAX_RULES_INPUT);
        let mut line = String::new();
        let mut n = 0usize;
        loop {
            line.clear();
            let got = input
                .read_line(&mut line)
                .map_err(|e| Error::io(format!("reading rules from {source}"), e))?;
            if got == 0 {
                break;
            }
            n += 1;
            let at = || format!("rules {source} line {n}");
            let Some(rec) = jsonl::parse(&line).map_err(|e| e.context(at()))? else {
                continue;
            };
            if rec.kind != TYPE_SSH {
                continue;
            }
            let rule: SshRule = rec.decode().map_err(|e| e.context(at()))?;
            grants.push(Grant::from_rule(rule).map_err(|e| e.context(at()))?);
        }
        if grants.is_empty() {
            return Err(Error::data(format!("rules {source}: no ssh records"))
                .with_hint("pipe in the output of `moat-grant rules ssh:HOST`"));
        }
        Ok(Policy { grants })
    }

    /// Is this key granted for anything at all?
    pub fn key_granted(&self, fingerprint: &str) -> bool {
        self.grants.iter().any(|g| g.fingerprint == fingerprint)
    }

    /// The grants that let this key sign for this host key.
    pub fn grants_for<'a>(
        &'a self,
        fingerprint: &'a str,
        host_key: &'a [u8],
    ) -> impl Iterator<Item = &'a Grant> + 'a {
        self.grants
            .iter()
            .filter(move |g| g.fingerprint == fingerprint && g.pins(host_key))
    }

    /// The host a host key is pinned for, by any grant.
    pub fn host_of(&self, host_key: &[u8]) -> Option<&str> {
        self.grants
            .iter()
            .find(|g| g.pins(host_key))
            .map(|g| g.host.as_str())
    }
}

impl Grant {
    fn from_rule(r: SshRule) -> Result<Grant> {
        let host = moat_core::host::canonical_host(&r.host)
            .map_err(|e| Error::data(format!("host {:?}: {e}", r.host)))?;
        let fp_ok = r
            .fingerprint
            .strip_prefix("SHA256:")
            .and_then(|b| {
                base64::engine::general_purpose::STANDARD_NO_PAD
                    .decode(b)
                    .ok()
            })
            .is_some_and(|d| d.len() == 32);
        if !fp_ok {
            return Err(Error::data(format!(
                "fingerprint {:?} is not SHA256:<base64>",
                r.fingerprint
            )));
        }
        if r.host_keys.is_empty() {
            return Err(Error::data(format!(
                "grant {} pins no host keys for {host}",
                r.grant
            )));
        }
        let host_keys = r
            .host_keys
            .iter()
            .map(|l| host_key_blob(l))
            .collect::<Result<Vec<_>>>()?;
        Ok(Grant {
            grant: r.grant,
            host,
            fingerprint: r.fingerprint,
            host_keys,
            sshsig_namespaces: r.sshsig_namespaces,
        })
    }

    fn pins(&self, host_key: &[u8]) -> bool {
        self.host_keys.iter().any(|k| k == host_key)
    }
}

/// `ssh-ed25519 AAAA... [comment]` → the key blob, which must name the same type.
fn host_key_blob(line: &str) -> Result<Vec<u8>> {
    let mut parts = line.split_whitespace();
    let (Some(kind), Some(b64)) = (parts.next(), parts.next()) else {
        return Err(Error::data(format!(
            "host key {line:?} is not an OpenSSH public-key line"
        )));
    };
    let blob = base64::engine::general_purpose::STANDARD
        .decode(b64)
        .map_err(|_| Error::data(format!("host key of type {kind}: bad base64")))?;
    if protocol::blob_type(&blob) != Some(kind) {
        return Err(Error::data(format!(
            "host key of type {kind}: the key inside is not {kind}"
        )));
    }
    Ok(blob)
}

/// Session ids that have had a signature, and on which connection: a bounded memory, so
/// an id seen on one connection is refused on another.
pub struct SeenSessions {
    cap: usize,
    inner: Mutex<Seen>,
}

/// Session id → the connection that used it, and ids in the order they came (to evict).
type Seen = (HashMap<Vec<u8>, u64>, VecDeque<Vec<u8>>);

impl SeenSessions {
    pub fn new(cap: usize) -> Self {
        SeenSessions {
            cap,
            inner: Mutex::new((HashMap::new(), VecDeque::new())),
        }
    }

    /// Was this id used by a connection other than `conn`?
    pub fn used_elsewhere(&self, sid: &[u8], conn: u64) -> bool {
        let g = self.inner.lock().unwrap_or_else(|p| p.into_inner());
        g.0.get(sid).is_some_and(|&c| c != conn)
    }

    /// Claim `sid` for `conn`; false when another connection already holds it.
    pub fn claim(&self, sid: &[u8], conn: u64) -> bool {
        let mut g = self.inner.lock().unwrap_or_else(|p| p.into_inner());
        let (map, order) = &mut *g;
        match map.get(sid) {
            Some(&c) => c == conn,
            None => {
                if order.len() >= self.cap
                    && let Some(old) = order.pop_front()
                {
                    map.remove(&old);
                }
                map.insert(sid.to_vec(), conn);
                order.push_back(sid.to_vec());
                true
            }
        }
    }
}

/// What one connection has told us about its destination.
#[derive(Debug, Default)]
pub struct ConnState {
    pub id: u64,
    pub binding: Option<Binding>,
    /// Set when a binding was refused: the connection gets no keys and no signatures.
    pub poisoned: Option<String>,
}

/// The outcome of a decision, with what the event record says.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Decision {
    pub allowed: bool,
    pub host: Option<String>,
    pub grant: Option<String>,
    pub reason: String,
    pub namespace: Option<String>,
    /// The remote user a userauth request names.
    pub user: Option<String>,
}

impl Decision {
    fn deny(reason: impl Into<String>, host: Option<&str>) -> Self {
        Decision {
            allowed: false,
            host: host.map(str::to_string),
            grant: None,
            reason: reason.into(),
            namespace: None,
            user: None,
        }
    }
    fn allow(g: &Grant, reason: impl Into<String>) -> Self {
        Decision {
            allowed: true,
            host: Some(g.host.clone()),
            grant: Some(g.grant.clone()),
            reason: reason.into(),
            namespace: None,
            user: None,
        }
    }
}

/// Decide whether a session-bind may bind this connection. Returns the host name the
/// host key is pinned for.
pub fn decide_bind(
    policy: &Policy,
    seen: &SeenSessions,
    state: &ConnState,
    b: &crate::bind::SessionBind<'_>,
) -> std::result::Result<Binding, (String, Option<String>)> {
    let host = policy.host_of(b.host_key).map(str::to_string);
    if let Some(p) = &state.poisoned {
        return Err((format!("connection refused earlier: {p}"), host));
    }
    if b.is_forwarding {
        return Err((
            "binding is for a forwarded agent (is_forwarding); forwarding is refused".into(),
            host,
        ));
    }
    let binding = b.verify().map_err(|e| (e.to_string(), host.clone()))?;
    if let Some(old) = &state.binding {
        if *old == binding {
            return Ok(binding);
        }
        return Err((
            "connection is already bound to another session".into(),
            host,
        ));
    }
    if seen.used_elsewhere(&binding.session_id, state.id) {
        return Err((
            "session id was already used on another connection".into(),
            host,
        ));
    }
    if host.is_none() {
        return Err(("host key is not pinned by any grant".into(), None));
    }
    Ok(binding)
}

/// Decide a sign request. Claims the session id on success.
pub fn decide_sign(
    policy: &Policy,
    seen: &SeenSessions,
    state: &ConnState,
    req: &SignRequest<'_>,
    fingerprint: &str,
) -> Decision {
    let bound_host = state
        .binding
        .as_ref()
        .and_then(|b| policy.host_of(&b.host_key));
    if !policy.key_granted(fingerprint) {
        return Decision::deny("key is not granted", bound_host);
    }
    if let Some(ns) = protocol::sshsig_namespace(req.data) {
        let ns = match ns {
            Ok(ns) => ns,
            Err(e) => return Decision::deny(format!("malformed SSHSIG data: {e}"), bound_host),
        };
        let g = policy
            .grants
            .iter()
            .find(|g| g.fingerprint == fingerprint && g.sshsig_namespaces.contains(&ns));
        let mut d = match g {
            Some(g) => Decision::allow(g, format!("SSHSIG namespace {ns:?} is granted")),
            None => Decision::deny(
                format!("SSHSIG signing for namespace {ns:?} is not granted"),
                bound_host,
            ),
        };
        d.namespace = Some(ns);
        return d;
    }
    if let Some(p) = &state.poisoned {
        return Decision::deny(format!("connection refused earlier: {p}"), bound_host);
    }
    let Some(b) = &state.binding else {
        return Decision::deny(
            "connection is not bound to a host (the client sent no session-bind)",
            None,
        );
    };
    let Some(g) = policy.grants_for(fingerprint, &b.host_key).next() else {
        return Decision::deny(
            "key is not granted for the host this connection is bound to",
            bound_host,
        );
    };
    let host = Some(g.host.as_str());
    let ua = match protocol::parse_userauth(req.data) {
        Ok(u) => u,
        Err(e) => {
            return Decision::deny(format!("data to sign is not a userauth request: {e}"), host);
        }
    };
    if ua.session_id != b.session_id.as_slice() {
        return Decision::deny(
            "userauth request is for another session than the bound one",
            host,
        );
    }
    if ua.service != "ssh-connection" {
        return Decision::deny("userauth request is not for ssh-connection", host);
    }
    if ua.key_blob != req.key_blob {
        return Decision::deny(
            "userauth request names another key than the signing key",
            host,
        );
    }
    if let Some(hk) = ua.host_key
        && hk != b.host_key.as_slice()
    {
        return Decision::deny("hostbound userauth names another host key", host);
    }
    let key_type = protocol::blob_type(req.key_blob).unwrap_or("");
    if key_type == "ssh-rsa" || key_type == "ssh-rsa-cert-v01@openssh.com" {
        if req.flags & (protocol::RSA_SHA2_256 | protocol::RSA_SHA2_512) == 0
            || !ua.algorithm.starts_with("rsa-sha2-")
        {
            return Decision::deny("RSA signature would use SHA-1 (ssh-rsa)", host);
        }
    } else if ua.algorithm != key_type {
        return Decision::deny("userauth algorithm does not match the key", host);
    }
    if !seen.claim(&b.session_id, state.id) {
        return Decision::deny("session id was already used on another connection", host);
    }
    let mut d = Decision::allow(g, "userauth for the bound session of a pinned host");
    d.user = Some(ua.user.to_string());
    d
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn rules_load_skipping_other_records() {
        let hk = "ssh-ed25519 AAAAC3NzaC1lZDI1NTE5AAAAIFFG9JfPGvDaFcZmyBXThHmUVHpk2bJBf4bFtXwl29e+";
        let input = format!(
            "{}\n{{\"v\":1,\"type\":\"inject\",\"grant\":\"g\"}}\n\n{}\n",
            serde_json::json!({"v":1,"type":"ssh","grant":"ssh:GitHub.com","host":"GitHub.com",
                "fingerprint":"SHA256:47DEQpj8HBSa+/TImW+5JCeuQeRkm5NMpJWZG3hSuFU","host_keys":[hk],
                "extra":"ignored"}),
            serde_json::json!({"v":1,"type":"future","x":1}),
        );
        let p = Policy::load(input.as_bytes(), "-").unwrap();
        assert_eq!(p.grants.len(), 1);
        assert_eq!(p.grants[0].host, "github.com");
        assert!(p.key_granted("SHA256:47DEQpj8HBSa+/TImW+5JCeuQeRkm5NMpJWZG3hSuFU"));
        assert!(!p.key_granted("SHA256:other"));
    }

    #[test]
    fn bad_rules_are_data_errors() {
        let hk = "ssh-ed25519 AAAAC3NzaC1lZDI1NTE5AAAAIFFG9JfPGvDaFcZmyBXThHmUVHpk2bJBf4bFtXwl29e+";
        let fp = "SHA256:47DEQpj8HBSa+/TImW+5JCeuQeRkm5NMpJWZG3hSuFU";
        for (bad, want) in [
            (String::new(), "no ssh records"),
            ("nonsense".to_string(), "line 1"),
            (
                serde_json::json!({"v":1,"type":"ssh","grant":"g","host":"a b","fingerprint":fp,"host_keys":[hk]}).to_string(),
                "host",
            ),
            (
                serde_json::json!({"v":1,"type":"ssh","grant":"g","host":"h","fingerprint":"MD5:x","host_keys":[hk]}).to_string(),
                "fingerprint",
            ),
            (
                serde_json::json!({"v":1,"type":"ssh","grant":"g","host":"h","fingerprint":fp,"host_keys":[]}).to_string(),
                "pins no host keys",
            ),
            (
                serde_json::json!({"v":1,"type":"ssh","grant":"g","host":"h","fingerprint":fp,"host_keys":[hk.replace("ssh-ed25519", "ssh-rsa")]}).to_string(),
                "not ssh-rsa",
            ),
        ] {
            let e = Policy::load(bad.as_bytes(), "-").unwrap_err();
            assert_eq!(e.code, moat_core::exit::DATAERR, "{bad}");
            assert!(e.msg.contains(want), "{bad}: {}", e.msg);
        }
    }

    #[test]
    fn seen_sessions_are_bounded_and_per_connection() {
        let s = SeenSessions::new(2);
        assert!(s.claim(b"a", 1));
        assert!(s.claim(b"a", 1));
        assert!(!s.claim(b"a", 2));
        assert!(s.used_elsewhere(b"a", 2));
        assert!(s.claim(b"b", 2));
        assert!(s.claim(b"c", 3)); // evicts "a"
        assert!(s.claim(b"a", 2));
    }
}
