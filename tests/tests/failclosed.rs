//! Fail closed (promise 3), probed from inside the container: no direct TCP to a host service
//! on 0.0.0.0 (through the host's bridge address, the run network's gateway or the host's own
//! address), no DNS, no other run's proxy; the proxy answers only with the run's token; and
//! once the proxy is killed (-9) the container has no network at all.

use moat_e2e::{Moat, docker_ready};
use std::net::TcpListener;
use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};

/// A host service on 0.0.0.0 that counts the connections it gets.
fn host_service() -> (u16, Arc<AtomicUsize>) {
    let l = TcpListener::bind("0.0.0.0:0").unwrap();
    let port = l.local_addr().unwrap().port();
    let hits = Arc::new(AtomicUsize::new(0));
    let h2 = hits.clone();
    std::thread::spawn(move || {
        for c in l.incoming() {
            if c.is_ok() {
                h2.fetch_add(1, Ordering::SeqCst);
            }
        }
    });
    (port, hits)
}

fn host_addresses() -> Vec<String> {
    let out = std::process::Command::new("hostname")
        .arg("-I")
        .output()
        .unwrap();
    String::from_utf8_lossy(&out.stdout)
        .split_whitespace()
        .filter(|a| !a.contains(':'))
        .map(String::from)
        .collect()
}

const PROBE: &str = r#"probe() { if timeout 3 bash -c "exec 3<>/dev/tcp/$1/$2" 2>/dev/null; then echo "OPEN $1:$2"; else echo "CLOSED $1:$2"; fi; }
gw=${HTTP_PROXY##*@}; pport=${gw##*:}; gw=${gw%:*}
"#;

#[test]
fn the_only_way_out_is_the_runs_own_proxy() {
    if !docker_ready() {
        return;
    }
    let (port, hits) = host_service();
    let m = Moat::new();
    // Another run, with its own proxy.
    let other = m.launch(&[
        "run",
        "--no-sandbox",
        "-d",
        "-n",
        "other",
        "--",
        "sleep",
        "60",
    ]);
    assert_eq!(other.code(), 0, "{}", other.stderr());
    let other_id = other.stdout().trim().to_string();
    let other_proxy = m.metadata(&other_id)["proxy_addr"]
        .as_str()
        .unwrap()
        .to_string();
    let (oip, oport) = other_proxy.rsplit_once(':').unwrap();

    let mut script = String::from(PROBE);
    script.push_str("probe $gw $pport\n");
    // The host's addresses at once (a host with many bridges has a hundred of them, each
    // probe waits up to 3 s).
    for ip in ["172.17.0.1".to_string()]
        .into_iter()
        .chain(host_addresses())
    {
        script.push_str(&format!("probe {ip} {port} &\n"));
    }
    script.push_str("wait\n");
    script.push_str(&format!("probe $gw {port}\n"));
    script.push_str(&format!("probe {oip} {oport}\n"));
    script.push_str("probe 1.1.1.1 443\nprobe 8.8.8.8 53\n");
    script.push_str("if timeout 5 getent hosts example.com >/dev/null 2>&1; then echo DNS-OPEN; else echo DNS-CLOSED; fi\n");
    script.push_str("if timeout 5 getent hosts other >/dev/null 2>&1; then echo DNS-OPEN; else echo DNS-CLOSED; fi\n");
    // The proxy wants this run's token.
    script.push_str("curl -s -o /dev/null -w 'NOAUTH %{http_code}\\n' -x http://$gw:$pport http://example.com/\n");
    script.push_str("curl -s -o /dev/null -w 'BADAUTH %{http_code}\\n' -x http://moat:wrong@$gw:$pport http://example.com/\n");
    script.push_str(&format!(
        "curl -s -o /dev/null -w 'OTHERPROXY %{{http_code}}\\n' -m 5 -x http://moat:x@{oip}:{oport} http://example.com/\n"
    ));
    // No way to undo the firewall from inside.
    script.push_str("if iptables -P OUTPUT ACCEPT 2>/dev/null; then echo FIREWALL-CHANGED; else echo FIREWALL-LOCKED; fi\n");

    let r = m.launch(&["run", "--no-sandbox", "--", "bash", "-c", &script]);
    let out = r.stdout();
    assert_eq!(r.code(), 0, "{out}\n{}", r.stderr());
    assert!(
        out.contains("OPEN ") && out.lines().next().unwrap().starts_with("OPEN "),
        "the proxy itself must be reachable: {out}"
    );
    let open: Vec<&str> = out
        .lines()
        .skip(1)
        .filter(|l| l.starts_with("OPEN "))
        .collect();
    assert!(open.is_empty(), "reachable from inside: {open:?}\n{out}");
    assert!(!out.contains("DNS-OPEN"), "{out}");
    assert!(out.contains("NOAUTH 407"), "{out}");
    assert!(out.contains("BADAUTH 407"), "{out}");
    assert!(out.contains("OTHERPROXY 000"), "{out}");
    assert!(out.contains("FIREWALL-LOCKED"), "{out}");
    assert_eq!(
        hits.load(Ordering::SeqCst),
        0,
        "the host service was reached"
    );

    let s = m.launch(&["stop", &other_id]);
    assert_eq!(s.code(), 0, "{}", s.stderr());
}

#[test]
fn after_the_proxy_is_killed_there_is_no_network() {
    if !docker_ready() {
        return;
    }
    let (port, hits) = host_service();
    let m = Moat::new();
    let mut script = String::from(PROBE);
    script.push_str(
        "echo waiting\nfor i in $(seq 1 300); do [ -f /workspace/go ] && break; sleep 0.1; done\n",
    );
    script.push_str("probe $gw $pport\n");
    script.push_str(&format!("probe 172.17.0.1 {port}\nprobe $gw {port}\n"));
    script.push_str("curl -s -m 5 -o /dev/null http://example.com/; echo CURL=$?\n");
    script.push_str("curl -s -m 5 --noproxy '*' -o /dev/null http://1.1.1.1/; echo DIRECT=$?\n");
    let r = m.launch(&["run", "--no-sandbox", "-d", "--", "bash", "-c", &script]);
    assert_eq!(r.code(), 0, "{}", r.stderr());
    let id = r.stdout().trim().to_string();
    m.wait_log(&id, "waiting", 60);
    let pid = m.metadata(&id)["proxy_pid"].as_u64().expect("proxy pid");
    let k = std::process::Command::new("kill")
        .args(["-9", &pid.to_string()])
        .status()
        .unwrap();
    assert!(k.success());
    std::thread::sleep(std::time::Duration::from_millis(300));
    std::fs::write(m.ws.join("go"), "").unwrap();
    m.wait_state(&id, &["stopped", "failed"], 90);
    let logs = m.launch(&["logs", &id]);
    let out = logs.stdout();
    assert!(!out.contains("OPEN "), "{out}");
    assert_eq!(out.matches("CLOSED ").count(), 3, "{out}");
    assert!(!out.contains("CURL=0") && out.contains("CURL="), "{out}");
    assert!(
        !out.contains("DIRECT=0") && out.contains("DIRECT="),
        "{out}"
    );
    assert_eq!(hits.load(Ordering::SeqCst), 0);
}
