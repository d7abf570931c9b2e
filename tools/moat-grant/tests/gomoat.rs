//! A `~/.moat` the Go moat wrote (its credential format, ssh.json, config.yaml, a run),
//! met by the real binaries: read in place, said once, never overwritten or deleted.

mod common;

use aes_gcm::aead::{Aead, KeyInit};
use aes_gcm::{Aes256Gcm, Nonce};
use base64::Engine;
use base64::engine::general_purpose::STANDARD as B64;
use common::*;
use moat_testkit::TestEnv;
use std::collections::BTreeMap;
use std::fs;
use std::os::unix::fs::PermissionsExt;
use std::path::{Path, PathBuf};

/// A file exactly as the Go moat writes one (REFERENCE §3.1): random nonce, AES-256-GCM,
/// no associated data, the JSON credential inside. The first nonce byte is kept off 1 so
/// the file can never be mistaken for moat's own format (version byte 1).
fn go_seal(key: &[u8; 32], plaintext: &serde_json::Value) -> Vec<u8> {
    let mut nonce = [0u8; 12];
    getrandom::fill(&mut nonce).unwrap();
    nonce[0] |= 0x80;
    let c = Aes256Gcm::new_from_slice(key).unwrap();
    let mut out = nonce.to_vec();
    out.extend(
        c.encrypt(
            &Nonce::from(nonce),
            serde_json::to_vec(plaintext).unwrap().as_slice(),
        )
        .unwrap(),
    );
    out
}

fn go_cred(provider: &str, token: &str) -> serde_json::Value {
    serde_json::json!({
        "provider": provider, "token": token, "scopes": [],
        "expires_at": "0001-01-01T00:00:00Z", "created_at": "2025-03-04T05:06:07Z",
        "metadata": {"token_source": "env"},
    })
}

fn write0600(p: &Path, data: &[u8]) {
    fs::create_dir_all(p.parent().unwrap()).unwrap();
    fs::set_permissions(p.parent().unwrap(), fs::Permissions::from_mode(0o700)).unwrap();
    fs::write(p, data).unwrap();
    fs::set_permissions(p, fs::Permissions::from_mode(0o600)).unwrap();
}

/// Every file under `root`, with its bytes.
fn snapshot(root: &Path) -> BTreeMap<PathBuf, Vec<u8>> {
    let mut out = BTreeMap::new();
    let mut stack = vec![root.to_path_buf()];
    while let Some(d) = stack.pop() {
        for e in fs::read_dir(&d).unwrap().flatten() {
            let p = e.path();
            if e.file_type().unwrap().is_dir() {
                stack.push(p);
            } else {
                out.insert(
                    p.strip_prefix(root).unwrap().to_path_buf(),
                    fs::read(&p).unwrap(),
                );
            }
        }
    }
    out
}

struct GoHome {
    github: String,
    claude: String,
    mcp: String,
    go_files: BTreeMap<PathBuf, Vec<u8>>,
}

/// The Go moat's state: a key file, github and claude that map, an mcp grant that cannot,
/// an openai file under another key, ssh.json, config.yaml and one stopped run.
fn go_home(t: &TestEnv) -> GoHome {
    let h = &t.moat_home;
    let key: [u8; 32] = {
        let mut k = [0u8; 32];
        getrandom::fill(&mut k).unwrap();
        k
    };
    write0600(&h.join("encryption.key"), B64.encode(key).as_bytes());
    let github = canary("ghp_");
    let claude = format!("sk-ant-oat01-{}", canary(""));
    let mcp = canary("lin_");
    let c = h.join("credentials");
    write0600(
        &c.join("github.enc"),
        &go_seal(&key, &go_cred("github", &github)),
    );
    write0600(
        &c.join("claude.enc"),
        &go_seal(&key, &go_cred("claude", &claude)),
    );
    write0600(
        &c.join("mcp:linear.enc"),
        &go_seal(&key, &go_cred("mcp:linear", &mcp)),
    );
    write0600(
        &c.join("openai.enc"),
        &go_seal(&[7u8; 32], &go_cred("openai", "sk-otherkey")),
    );
    write0600(
        &c.join("ssh.json"),
        br#"{"mappings":[{"host":"github.com","key_fingerprint":"SHA256:abc","key_path":"","created_at":"2025-01-01T00:00:00Z"}]}"#,
    );
    write0600(
        &h.join("config.yaml"),
        b"proxy:\n  port: 8080\ndebug:\n  retention_days: 14\nmounts:\n  - ~/notes:/notes:ro\n",
    );
    write0600(
        &h.join("runs/run_a1b2c3d4e5f6/metadata.json"),
        br#"{"name":"go-run","workspace":"/src/x","grants":["github"],"agent":"claude","image":"moat/run:abc","container_id":"0123abcd","state":"stopped","interactive":false,"created_at":"2025-03-04T05:06:07Z","started_at":"2025-03-04T05:06:08Z","stopped_at":"2025-03-04T05:16:08Z","error":"","runtime":"docker","workspace_mode":"bind"}"#,
    );
    write0600(
        &h.join("runs/run_a1b2c3d4e5f6/logs.jsonl"),
        b"{\"ts\":\"x\",\"line\":\"hi\"}\n",
    );
    GoHome {
        github,
        claude,
        mcp,
        go_files: snapshot(h),
    }
}

/// Every Go file is still there byte for byte, or (when moat replaced or removed it) its
/// bytes are under go-moat/credentials/.
#[track_caller]
fn go_files_kept(t: &TestEnv, g: &GoHome) {
    let now = snapshot(&t.moat_home);
    for (p, bytes) in &g.go_files {
        if now.get(p) == Some(bytes) {
            continue;
        }
        let kept = Path::new("go-moat/credentials").join(p.file_name().unwrap());
        assert_eq!(
            now.get(&kept),
            Some(bytes),
            "{} was changed and no copy is under go-moat/",
            p.display()
        );
    }
}

#[test]
fn a_go_moat_home_is_read_in_place_said_once_and_never_lost() {
    let t = TestEnv::new();
    let g = go_home(&t);

    // The first command says what it found, once.
    // (Exit 65: openai.enc, under another key, is unreadable; the rest still lists.)
    let r = t.run("moat", &["grant", "list"]);
    r.exit(65)
        .stdout_has("github")
        .stdout_has("go-moat:credentials/github.enc")
        .stdout_has("claude")
        .stderr_has("found the Go moat's files")
        .stderr_has("nothing of them was changed")
        .stderr_has("moat grant mcp linear --url URL --header HEADER")
        .stderr_has("moat grant ssh --host github.com")
        .stderr_has("1 run(s) of the Go moat")
        .stderr_has("config.yaml (debug, mounts, proxy): moat does not read it")
        .stderr_has("moat-grant(1)");
    for s in [&g.github, &g.claude, &g.mcp] {
        r.leaks_nothing(s);
    }
    let notice: serde_json::Value =
        serde_json::from_slice(&fs::read(t.moat_home.join("go-moat/notice.json")).unwrap())
            .unwrap();
    assert_eq!(notice["v"], 1);
    assert_eq!(notice["go_runs"], 1);
    assert_eq!(
        fs::metadata(t.moat_home.join("go-moat"))
            .unwrap()
            .permissions()
            .mode()
            & 0o777,
        0o700
    );
    let r = t.run("moat", &["grant", "list", "--json"]);
    r.exit(65).stderr_lacks("found the Go moat's files");
    let recs = r.records();
    let names: Vec<&str> = recs
        .iter()
        .filter(|x| x.kind == "grant")
        .filter_map(|x| x.str("name"))
        .collect();
    assert_eq!(names, ["claude", "github"], "{}", r.stdout());
    let go: BTreeMap<&str, &str> = recs
        .iter()
        .filter(|x| x.kind == "go_moat")
        .map(|x| (x.str("name").unwrap(), x.str("regrant").unwrap()))
        .collect();
    assert_eq!(
        go["mcp:linear"],
        "moat grant mcp linear --url URL --header HEADER"
    );
    assert_eq!(go["ssh:github.com"], "moat grant ssh --host github.com");
    // openai.enc under another key is unreadable, named with its command.
    assert!(
        recs.iter()
            .any(|x| x.kind == "unreadable" && x.str("name") == Some("openai")),
        "{}",
        r.stdout()
    );
    r.stderr_has("moat grant openai");
    // `go-moat` says it again on stdout.
    t.run("moat", &["grant", "go-moat"])
        .success()
        .stdout_has("moat grant mcp linear")
        .stdout_has("github (from credentials/github.enc)");

    // The mapped credentials give the rules our own grants give.
    let recs = rules(&t, &["github", "claude"]);
    assert!(
        recs.iter()
            .any(|x| x.str("value") == Some(&format!("Bearer {}", g.github)))
    );
    assert!(
        recs.iter()
            .any(|x| x.str("value") == Some(&format!("Bearer {}", g.claude)))
    );
    t.run("moat-grant", &["rules", "mcp:linear"])
        .exit(78)
        .stderr_has("moat grant mcp linear");

    // Runs: the Go run is neither listed nor cleaned.
    t.run("moat", &["list"]).success().stdout_lacks("go-run");
    t.run("moat", &["clean", "--force"]).success();
    t.run("moat", &["destroy", "run_a1b2c3d4e5f6"]).exit(66);
    go_files_kept(&t, &g);

    // Granting github over the Go file keeps the Go file first.
    let ours = canary("ghp_");
    store_token(&t, &["github"], &ours)
        .stderr_has("the original is kept at")
        .stderr_has("go-moat/credentials/github.enc");
    assert_eq!(
        rules(&t, &["github"])[0].str("value"),
        Some(format!("Bearer {ours}").as_str())
    );
    // Revoking Go credentials keeps them too; a second revoke-and-grant never
    // overwrites the copy.
    t.run("moat", &["revoke", "claude", "mcp:linear"]).success();
    t.run("moat", &["revoke", "github"]).success();
    go_files_kept(&t, &g);
    let kept = t.moat_home.join("go-moat/credentials");
    for f in ["github.enc", "claude.enc", "mcp:linear.enc"] {
        let m = fs::metadata(kept.join(f)).unwrap().permissions().mode() & 0o777;
        assert_eq!(m, 0o600, "{f}");
    }
    // ssh.json, config.yaml and the Go run are untouched; the notice was said once.
    for p in [
        "credentials/ssh.json",
        "config.yaml",
        "runs/run_a1b2c3d4e5f6/metadata.json",
    ] {
        assert_eq!(
            fs::read(t.moat_home.join(p)).unwrap(),
            g.go_files[Path::new(p)],
            "{p}"
        );
    }
    t.run("moat-grant", &["list"])
        .stderr_lacks("found the Go moat's files");
}

#[test]
fn without_go_state_there_is_no_notice() {
    let t = TestEnv::new();
    store_token(&t, &["github"], "ghp_plain").stderr_lacks("Go moat");
    t.run("moat-grant", &["list"])
        .success()
        .stderr_lacks("Go moat");
    assert!(!t.moat_home.join("go-moat").exists());
    t.run("moat-grant", &["go-moat"])
        .success()
        .stdout_has("nothing of the Go moat's was found");
}

#[test]
fn list_json_is_for_programs_and_says_nothing() {
    let t = TestEnv::new();
    let _g = go_home(&t);
    t.run("moat-grant", &["list", "--json"])
        .stderr_lacks("found the Go moat's files");
    assert!(!t.moat_home.join("go-moat/notice.json").exists());
    t.run("moat-grant", &["rules", "github"])
        .success()
        .stderr_has("found the Go moat's files");
}
