//! Hostname routing: two runs of one workspace, named apart, each serve their `web` endpoint
//! on the same container port; the router on a loopback port reaches each through its own
//! host name over plain HTTP and HTTPS (a real curl, and headless Chromium trusting the
//! routing CA through an NSS database), lists both in its index, answers 404 for an unknown
//! name and 400 for a foreign host (no open proxy), passes a WebSocket upgrade through, and
//! forgets a run once it stops.

use moat_e2e::{Moat, docker_ready, run_with_deadline};
use std::io::{Read, Write};
use std::net::{TcpListener, TcpStream};
use std::process::Command;
use std::time::Duration;

/// A tiny HTTP server from the base image's Perl: a page naming the run, and a WebSocket
/// handshake that then echoes whatever arrives.
const SERVER: &str = r#"use strict; use IO::Socket::INET; use Digest::SHA qw(sha1_base64);
$| = 1; my $name = $ENV{MOAT_RUN_NAME};
my $s = IO::Socket::INET->new(LocalAddr => '0.0.0.0', LocalPort => 8000, Listen => 16, ReuseAddr => 1) or die "listen: $!";
$SIG{CHLD} = 'IGNORE';
print "listening\n";
while (my $c = $s->accept) {
  if (fork) { close $c; next }
  $c->autoflush(1);
  my %h; local $/ = "\r\n";
  my $req = <$c>;
  while (my $l = <$c>) { last if $l eq "\r\n"; $l =~ s/\r\n$//; my ($k, $v) = split /:\s*/, $l, 2; $h{lc $k} = $v; }
  if (lc($h{upgrade} // '') eq 'websocket') {
    my $acc = sha1_base64(($h{'sec-websocket-key'} // '') . '258EAFA5-E914-47DA-95CA-C5AB0DC85B11') . '=';
    syswrite $c, "HTTP/1.1 101 Switching Protocols\r\nUpgrade: websocket\r\nConnection: Upgrade\r\nSec-WebSocket-Accept: $acc\r\n\r\n";
    while (sysread($c, my $buf, 4096)) { syswrite $c, "echo:$buf" }
    exit 0;
  }
  my $body = "<html><head><title>$name</title></head><body><h1 id=\"who\">served by $name</h1><p>proto=" . ($h{'x-forwarded-proto'} // '') . "</p></body></html>";
  syswrite $c, "HTTP/1.1 200 OK\r\nContent-Type: text/html\r\nContent-Length: " . length($body) . "\r\nConnection: close\r\n\r\n$body";
  exit 0;
}
"#;

fn free_port() -> u16 {
    TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port()
}

/// curl through the router with the host names pinned to loopback.
fn curl(port: u16, extra: &[&str], url: &str) -> (String, String) {
    let mut c = Command::new("curl");
    c.args(["-sS", "--max-time", "10", "-w", "\n%{http_code}"]);
    for h in [
        "localhost",
        "web.dark-mode.localhost",
        "dark-mode.localhost",
        "web.checkout-flow.localhost",
        "nope.localhost",
    ] {
        c.arg("--resolve").arg(format!("{h}:{port}:127.0.0.1"));
    }
    c.args(extra).arg(url);
    let r = run_with_deadline(c, format!("curl {url}"), None, 20);
    let out = r.stdout();
    let (body, code) = out.rsplit_once('\n').unwrap_or(("", &out));
    (body.to_string(), code.trim().to_string())
}

struct StopRouter(std::path::PathBuf, u16);
impl Drop for StopRouter {
    fn drop(&mut self) {
        // Whatever happened, no router outlives the test.
        let p = self.0.join(format!("proxy/router-{}.json", self.1));
        if let Ok(b) = std::fs::read(p)
            && let Ok(v) = serde_json::from_slice::<serde_json::Value>(&b)
            && let Some(pid) = v["pid"].as_u64()
        {
            let _ = Command::new("kill").arg(pid.to_string()).status();
        }
    }
}

#[test]
fn two_runs_of_one_workspace_each_reachable_by_name() {
    if !docker_ready() {
        return;
    }
    let mut m = Moat::new();
    let port = free_port();
    m.env.env("MOAT_PROXY_PORT", port.to_string());
    let _guard = StopRouter(m.moat_home().to_path_buf(), port);
    std::fs::write(m.ws.join("server.pl"), SERVER).unwrap();
    std::fs::write(
        m.ws.join("moat.yaml"),
        "ports:\n  web: 8000\ncommand: [\"sh\", \"-c\", \"echo URL=$MOAT_URL_WEB HOST=$MOAT_HOST_WEB; exec perl /workspace/server.pl\"]\n",
    )
    .unwrap();
    let mut ids = vec![];
    for name in ["dark-mode", "checkout-flow"] {
        let r = m.launch(&["run", "--no-sandbox", "-d", "--name", name]);
        assert_eq!(r.code(), 0, "{}", r.stderr());
        let id = m.run_ids().into_iter().find(|i| !ids.contains(i)).unwrap();
        m.wait_state(&id, &["running"], 120);
        m.wait_log(&id, "listening", 60);
        // The container knows its own URLs.
        m.wait_log(
            &id,
            &format!("URL=http://web.{name}.localhost:{port} HOST=web.{name}.localhost:{port}"),
            10,
        );
        // `moat list` names the run's endpoints and their URLs.
        let list = m.launch(&["list", "--json"]);
        let row = list
            .stdout()
            .lines()
            .map(|l| serde_json::from_str::<serde_json::Value>(l).unwrap())
            .find(|v| v["id"] == id.as_str())
            .expect("the run in list --json");
        assert_eq!(
            row["endpoints"]["web"],
            format!("https://web.{name}.localhost:{port}/").as_str(),
            "{row}"
        );
        let table = m.launch(&["list"]).stdout();
        let line = table.lines().find(|l| l.starts_with(name)).unwrap();
        assert!(
            table.starts_with("NAME") && table.lines().next().unwrap().contains("ENDPOINTS"),
            "{table}"
        );
        assert!(line.split_whitespace().any(|w| w == "web"), "{table}");
        ids.push(id);
    }
    // A name a running agent holds is its host name: a third run may not take it until
    // that run stops (75, try again later), and the first keeps its route.
    let r = m.launch(&["run", "--no-sandbox", "-d", "--name", "dark-mode"]);
    assert_eq!(r.code(), 75, "{}", r.stderr());
    assert!(
        r.stderr().contains(&format!(
            "another running agent is named dark-mode ({})",
            ids[0]
        )),
        "{}",
        r.stderr()
    );
    // No host port was published: the router reaches each container on its run network.
    for id in &ids {
        let o = Command::new("docker")
            .args(["port", &format!("moat-{id}")])
            .output()
            .unwrap();
        assert!(
            String::from_utf8_lossy(&o.stdout).trim().is_empty(),
            "published ports: {}",
            String::from_utf8_lossy(&o.stdout)
        );
    }
    let home = m.moat_home().to_path_buf();
    let ca = home.join("proxy/routing-ca/ca.crt");
    assert!(ca.exists(), "the router made no routing CA");
    let cacert = ca.to_str().unwrap();

    // Plain HTTP and HTTPS (verified against the routing CA), each name its own run.
    for (name, scheme) in [
        ("dark-mode", "http"),
        ("dark-mode", "https"),
        ("checkout-flow", "http"),
        ("checkout-flow", "https"),
    ] {
        let (body, code) = curl(
            port,
            &["--cacert", cacert],
            &format!("{scheme}://web.{name}.localhost:{port}/"),
        );
        assert_eq!(code, "200", "{scheme} {name}: {body}");
        assert!(
            body.contains(&format!("served by {name}"))
                && body.contains(&format!("proto={scheme}")),
            "{scheme} {name}: {body}"
        );
    }
    // A single-endpoint agent answers on its bare name too.
    let (body, code) = curl(
        port,
        &["--cacert", cacert],
        &format!("https://dark-mode.localhost:{port}/"),
    );
    assert_eq!(code, "200");
    assert!(body.contains("served by dark-mode"), "{body}");

    // The index lists both runs (JSON and HTML with links).
    let (body, code) = curl(
        port,
        &["-H", "Accept: application/json"],
        &format!("http://localhost:{port}/"),
    );
    assert_eq!(code, "200", "{body}");
    let v: serde_json::Value = serde_json::from_str(&body).unwrap();
    let names: Vec<&str> = v["agents"]
        .as_array()
        .unwrap()
        .iter()
        .map(|a| a["name"].as_str().unwrap())
        .collect();
    assert_eq!(names, ["checkout-flow", "dark-mode"], "{body}");
    assert_eq!(
        v["agents"][1]["endpoints"]["web"]["url"],
        format!("http://web.dark-mode.localhost:{port}/")
    );
    let (body, _) = curl(
        port,
        &["--cacert", cacert],
        &format!("https://localhost:{port}/"),
    );
    assert!(
        body.contains(&format!(
            "href=\"https://web.checkout-flow.localhost:{port}/\""
        )) && body.contains(&format!("href=\"https://web.dark-mode.localhost:{port}/\"")),
        "{body}"
    );

    // Unknown names: 404 naming what runs. Foreign hosts and CONNECT: refused, never dialled.
    let (body, code) = curl(port, &[], &format!("http://nope.localhost:{port}/"));
    assert_eq!(code, "404", "{body}");
    assert!(
        body.contains(
            "no running agent is named &quot;nope&quot;; running: checkout-flow, dark-mode"
        ),
        "{body}"
    );
    let (body, code) = curl(
        port,
        &["-H", "Accept: application/json"],
        &format!("http://api.dark-mode.localhost:{port}/"),
    );
    assert_eq!(code, "404", "{body}");
    assert!(body.contains("its endpoints: web"), "{body}");
    let (body, code) = curl(
        port,
        &["-x", &format!("http://127.0.0.1:{port}")],
        "http://example.invalid/",
    );
    assert_eq!(code, "400", "{body}");
    assert!(body.contains("not a .localhost host"), "{body}");
    let (_, code) = curl(
        port,
        &["-p", "-x", &format!("http://127.0.0.1:{port}")],
        "http://example.invalid/",
    );
    assert_ne!(code, "200", "CONNECT must not tunnel");

    // A WebSocket upgrade passes through, both ways (plain HTTP, raw socket).
    let mut s = TcpStream::connect(("127.0.0.1", port)).unwrap();
    s.set_read_timeout(Some(Duration::from_secs(10))).unwrap();
    write!(
        s,
        "GET /ws HTTP/1.1\r\nHost: web.checkout-flow.localhost:{port}\r\nConnection: Upgrade\r\nUpgrade: websocket\r\nSec-WebSocket-Version: 13\r\nSec-WebSocket-Key: dGhlIHNhbXBsZSBub25jZQ==\r\n\r\n"
    )
    .unwrap();
    let mut head = vec![];
    let mut b = [0u8; 1];
    while !head.ends_with(b"\r\n\r\n") && head.len() < 4096 {
        assert_eq!(s.read(&mut b).unwrap(), 1, "closed after {head:?}");
        head.push(b[0]);
    }
    let head = String::from_utf8_lossy(&head).to_ascii_lowercase();
    assert!(head.starts_with("http/1.1 101"), "{head}");
    // RFC 6455's own example key and answer: the backend's handshake arrives intact.
    assert!(
        head.contains("sec-websocket-accept: s3pplmbitxaq9kygzzhzrbk+xoo="),
        "{head}"
    );
    s.write_all(b"ping-1234").unwrap();
    let mut got = [0u8; 14];
    s.read_exact(&mut got).unwrap();
    assert_eq!(&got, b"echo:ping-1234");
    drop(s);
    // And over TLS, as a browser would: curl sees the 101.
    let (body, _) = curl(
        port,
        &[
            "--cacert",
            cacert,
            "--http1.1",
            "-i",
            "--max-time",
            "3",
            "-H",
            "Connection: Upgrade",
            "-H",
            "Upgrade: websocket",
            "-H",
            "Sec-WebSocket-Version: 13",
            "-H",
            "Sec-WebSocket-Key: dGhlIHNhbXBsZSBub25jZQ==",
        ],
        &format!("https://web.dark-mode.localhost:{port}/ws"),
    );
    assert!(body.contains("101 Switching Protocols"), "{body}");

    // Headless Chromium loads a page over HTTPS, trusting the routing CA through an NSS
    // database (no certificate errors ignored): the DOM is the run's page.
    let chrome_home = tempfile::tempdir().unwrap();
    let nss = chrome_home.path().join(".pki/nssdb");
    std::fs::create_dir_all(&nss).unwrap();
    let db = format!("sql:{}", nss.display());
    let st = Command::new("certutil")
        .args(["-N", "--empty-password", "-d", &db])
        .status()
        .unwrap();
    assert!(st.success());
    let st = Command::new("certutil")
        .args([
            "-A",
            "-d",
            &db,
            "-t",
            "C,,",
            "-n",
            "moat-routing",
            "-i",
            cacert,
        ])
        .status()
        .unwrap();
    assert!(st.success());
    let mut c = Command::new("chromium");
    c.env("HOME", chrome_home.path())
        .arg("--headless")
        .arg("--no-sandbox")
        .arg("--disable-gpu")
        .arg("--no-first-run")
        .arg(format!(
            "--user-data-dir={}",
            chrome_home.path().join("profile").display()
        ))
        .arg("--dump-dom")
        .arg(format!("https://web.dark-mode.localhost:{port}/"));
    let r = run_with_deadline(c, "chromium --dump-dom".into(), None, 90);
    assert!(
        r.stdout()
            .contains("<h1 id=\"who\">served by dark-mode</h1>")
            && r.stdout().contains("proto=https"),
        "chromium: {}\n{}",
        r.stdout(),
        r.stderr()
    );

    // `moat proxy status` reports the router and both routes.
    let s = m.run_timeout("moat", &["proxy", "status"], None, 20);
    assert_eq!(s.code(), 0, "{}", s.stderr());
    assert!(
        s.stdout()
            .contains(&format!("router: running on 127.0.0.1:{port}")),
        "{}",
        s.stdout()
    );
    for n in ["dark-mode", "checkout-flow"] {
        assert!(
            s.stdout()
                .contains(&format!("https://web.{n}.localhost:{port}/")),
            "{}",
            s.stdout()
        );
    }
    let s = m.run_timeout("moat", &["proxy", "status", "--json"], None, 20);
    let v: serde_json::Value = serde_json::from_str(&s.stdout()).unwrap();
    assert_eq!(v["running"], true);
    assert_eq!(v["routers"][0]["port"], port);
    assert_eq!(v["routes"].as_array().unwrap().len(), 2);

    // A stopped run is forgotten at once; the other stays reachable.
    let r = m.launch(&["stop", &ids[0]]);
    assert_eq!(r.code(), 0, "{}", r.stderr());
    assert!(!home.join("routes/dark-mode.json").exists());
    let (body, code) = curl(
        port,
        &[],
        &format!("http://web.dark-mode.localhost:{port}/"),
    );
    assert_eq!(code, "404", "{body}");
    let (body, code) = curl(
        port,
        &[],
        &format!("http://web.checkout-flow.localhost:{port}/"),
    );
    assert_eq!(code, "200", "{body}");
    let r = m.launch(&["stop", &ids[1]]);
    assert_eq!(r.code(), 0, "{}", r.stderr());
    assert!(!home.join("routes/checkout-flow.json").exists());

    // The router outlives runs until it is stopped.
    let s = m.run_timeout(
        "moat",
        &["proxy", "stop", "--port", &port.to_string()],
        None,
        20,
    );
    assert_eq!(s.code(), 0, "{}", s.stderr());
    let s = m.run_timeout(
        "moat",
        &["proxy", "status", "--port", &port.to_string()],
        None,
        20,
    );
    assert_eq!(s.code(), 1, "{}", s.stdout());
    assert!(s.stdout().contains("not running"), "{}", s.stdout());
    assert!(TcpStream::connect(("127.0.0.1", port)).is_err());
}

/// A run with ports: needs a name that is one DNS label; the default name (from the
/// directory) is made into one; the router's port must be a port.
#[test]
fn names_of_runs_with_ports_are_host_names() {
    let mut env = moat_testkit::TestEnv::new();
    let ws = env.path().join("My_Project");
    std::fs::create_dir_all(&ws).unwrap();
    std::fs::write(ws.join("moat.yaml"), "ports:\n  web: 3000\n").unwrap();
    for (name, want) in [
        ("Dark_Mode", "lowercase letters"),
        ("a.b", "lowercase letters"),
        ("-x", "start or end"),
    ] {
        let r = env.run(
            "moat-launch",
            &["run", "--no-sandbox", "--name", name, ws.to_str().unwrap()],
        );
        assert_eq!(r.code(), 64, "{name}: {}", r.stderr());
        assert!(
            r.stderr().contains("host name") && r.stderr().contains(want),
            "{}",
            r.stderr()
        );
    }
    std::fs::write(ws.join("moat.yaml"), "ports:\n  Web_UI: 3000\n").unwrap();
    let r = env.run(
        "moat-launch",
        &["run", "--no-sandbox", ws.to_str().unwrap()],
    );
    assert_eq!(r.code(), 78, "{}", r.stderr());
    assert!(r.stderr().contains("ports.Web_UI"), "{}", r.stderr());
    std::fs::write(ws.join("moat.yaml"), "ports:\n  web: 0\n").unwrap();
    let r = env.run(
        "moat-launch",
        &["run", "--no-sandbox", ws.to_str().unwrap()],
    );
    assert_eq!(r.code(), 78, "{}", r.stderr());
    assert!(r.stderr().contains("1-65535"), "{}", r.stderr());
    std::fs::write(ws.join("moat.yaml"), "ports:\n  web: 3000\n").unwrap();
    env.env("MOAT_PROXY_PORT", "80x");
    let r = env.run(
        "moat-launch",
        &["run", "--no-sandbox", ws.to_str().unwrap()],
    );
    assert_eq!(r.code(), 78, "{}", r.stderr());
    assert!(r.stderr().contains("MOAT_PROXY_PORT"), "{}", r.stderr());
}
