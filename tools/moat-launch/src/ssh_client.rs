//! SSH from inside a run to the hosts of its `ssh:HOST` grants.
//!
//! The container's only way out is the run's proxy, so `ssh` reaches port 22 of a granted
//! host through a CONNECT tunnel (`moat-proxy --tunnel HOST:22`), made by a small
//! `ProxyCommand` that uses bash and coreutils only. The host keys the grant pinned become
//! the container's known hosts, checked strictly; the keys themselves stay on the host,
//! behind moat-sshd-filter's socket.

use moat_core::rules::SshRule;
use moat_core::{Error, Result, fsutil};
use std::path::{Path, PathBuf};

/// Where the files go in the container.
pub const CONFIG_MOUNT: &str = "/etc/ssh/ssh_config.d/moat.conf";
pub const KNOWN_HOSTS_MOUNT: &str = "/etc/ssh/ssh_known_hosts";
pub const CONNECT_MOUNT: &str = "/usr/local/lib/moat/ssh-connect";

pub struct SshClient {
    /// Granted hosts, each reached on port 22.
    pub hosts: Vec<String>,
    /// `runs/ID/ssh-client`: ssh_config, known_hosts, ssh-connect.
    pub dir: PathBuf,
}

impl SshClient {
    /// `--tunnel` arguments for the proxy.
    pub fn tunnels(&self) -> Vec<String> {
        self.hosts.iter().map(|h| format!("{h}:22")).collect()
    }

    /// Docker bind specifications (read-only).
    pub fn binds(&self) -> Vec<String> {
        [
            ("ssh_config", CONFIG_MOUNT),
            ("known_hosts", KNOWN_HOSTS_MOUNT),
            ("ssh-connect", CONNECT_MOUNT),
        ]
        .iter()
        .map(|(f, m)| format!("{}:{m}:ro", self.dir.join(f).display()))
        .collect()
    }
}

/// Write the client files for the `ssh` rule records (JSON lines) under `run_dir`.
pub fn prepare(run_dir: &Path, rule_lines: &[String]) -> Result<SshClient> {
    let mut hosts: Vec<String> = vec![];
    let mut known = String::new();
    for l in rule_lines {
        let r: SshRule = serde_json::from_str(l.trim())
            .map_err(|e| Error::data(format!("an ssh rule from moat-grant: {e}")))?;
        if !safe_host(&r.host) {
            return Err(Error::data(format!(
                "ssh grant host {:?} is not a plain host name",
                r.host
            )));
        }
        for k in &r.host_keys {
            let mut w = k.split_whitespace();
            if let (Some(kind), Some(b64)) = (w.next(), w.next()) {
                known.push_str(&format!("{} {kind} {b64}\n", r.host));
            }
        }
        if !hosts.contains(&r.host) {
            hosts.push(r.host);
        }
    }
    let dir = run_dir.join("ssh-client");
    fsutil::create_private_dir(&dir)?;
    // Readable by moatuser in the container: nothing here is secret.
    let world = |p: &Path, mode: u32| {
        use std::os::unix::fs::PermissionsExt;
        std::fs::set_permissions(p, std::fs::Permissions::from_mode(mode))
            .map_err(|e| Error::io(format!("setting the mode of {}", p.display()), e))
    };
    world(&dir, 0o755)?;
    fsutil::write_atomic(&dir.join("known_hosts"), known.as_bytes(), 0o644)?;
    fsutil::write_atomic(&dir.join("ssh_config"), config().as_bytes(), 0o644)?;
    fsutil::write_atomic(
        &dir.join("ssh-connect"),
        connect_script(&hosts).as_bytes(),
        0o755,
    )?;
    Ok(SshClient { hosts, dir })
}

fn safe_host(h: &str) -> bool {
    !h.is_empty()
        && h.len() <= 253
        && h.bytes()
            .all(|b| b.is_ascii_alphanumeric() || b == b'.' || b == b'-')
        && !h.starts_with('-')
}

fn config() -> String {
    format!(
        "# moat: ssh leaves the run through its proxy, to port 22 of the granted hosts only.\n\
         Host *\n\
         \x20   ProxyCommand {CONNECT_MOUNT} %h %p\n\
         \x20   StrictHostKeyChecking yes\n\
         \x20   UpdateHostKeys no\n"
    )
}

/// The ProxyCommand: CONNECT HOST:PORT on the run's proxy (credentials from HTTPS_PROXY),
/// then copy both ways. Hosts outside the grants are refused here with a message.
fn connect_script(hosts: &[String]) -> String {
    let list = hosts.join(" ");
    format!(
        r#"#!/bin/bash
# moat: ssh's ProxyCommand in a run: a CONNECT tunnel through the run's proxy.
host=$1 port=$2 granted="{list}"
case " $granted " in
*" $host "*) ;;
*)
	echo "moat: ssh to $host is not granted in this run (granted: $granted)." >&2
	echo "moat: grant it on the host with: moat grant ssh --host $host, then run with --grant ssh:$host" >&2
	exit 1
	;;
esac
if [ "$port" != 22 ]; then
	echo "moat: ssh reaches $host on port 22 only (asked for $port)" >&2
	exit 1
fi
p=${{HTTPS_PROXY:-${{HTTP_PROXY:-}}}}
p=${{p#*://}}
p=${{p%%/*}}
case $p in
*@*) cred=${{p%@*}} hp=${{p##*@}} ;;
*) cred= hp=$p ;;
esac
[ -n "$hp" ] || {{ echo "moat: no proxy in the environment (HTTPS_PROXY)" >&2; exit 1; }}
exec 3<>"/dev/tcp/${{hp%:*}}/${{hp##*:}}" || exit 1
auth=
[ -n "$cred" ] && auth="Proxy-Authorization: Basic $(printf %s "$cred" | base64 -w0)"$'\r\n'
printf 'CONNECT %s:%s HTTP/1.1\r\nHost: %s:%s\r\n%s\r\n' "$host" "$port" "$host" "$port" "$auth" >&3
IFS= read -r status <&3
status=${{status%$'\r'}}
len=0
while IFS= read -r l <&3; do
	l=${{l%$'\r'}}
	[ -z "$l" ] && break
	case ${{l,,}} in content-length:*) len=${{l#*:}} len=${{len// /}} ;; esac
done
case $status in
"HTTP/1."[01]" 200"*) ;;
*)
	body=
	[ "$len" -gt 0 ] 2>/dev/null && body=$(head -c "$len" <&3)
	echo "moat: the run's proxy refused ssh to $host:$port: $status ${{body}}" >&2
	exit 1
	;;
esac
cat <&3 &
exec cat >&3
"#
    )
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn files_hold_the_pinned_keys_and_the_granted_hosts_only() {
        let d = tempfile::tempdir().unwrap();
        let rule = |h: &str, k: &str| {
            serde_json::json!({"v":1,"type":"ssh","grant":format!("ssh:{h}"),"host":h,
                "fingerprint":"SHA256:x","host_keys":[k]})
            .to_string()
        };
        let c = prepare(
            d.path(),
            &[
                rule("github.com", "ssh-ed25519 AAAAkey1 comment"),
                rule("git.test", "ecdsa-sha2-nistp256 AAAAkey2"),
            ],
        )
        .unwrap();
        assert_eq!(c.hosts, ["github.com", "git.test"]);
        assert_eq!(c.tunnels(), ["github.com:22", "git.test:22"]);
        let kh = std::fs::read_to_string(c.dir.join("known_hosts")).unwrap();
        assert_eq!(
            kh,
            "github.com ssh-ed25519 AAAAkey1\ngit.test ecdsa-sha2-nistp256 AAAAkey2\n"
        );
        let s = std::fs::read_to_string(c.dir.join("ssh-connect")).unwrap();
        assert!(s.contains("granted=\"github.com git.test\""));
        assert!(c.binds().iter().all(|b| b.ends_with(":ro")));
    }

    #[test]
    fn a_host_that_could_inject_into_the_script_is_refused() {
        let d = tempfile::tempdir().unwrap();
        let r = serde_json::json!({"v":1,"type":"ssh","grant":"ssh:x","host":"a\"; rm -rf /; \"",
            "fingerprint":"SHA256:x","host_keys":[]})
        .to_string();
        assert!(prepare(d.path(), &[r]).is_err());
    }
}
