//! A credential the Go moat stored, used by a real run: `credentials/github.enc` in the Go
//! format (nonce, AES-256-GCM without associated data, its JSON inside), encrypted with the
//! key in `encryption.key` as the Go moat's file fallback keeps it. `grants: [github]`
//! makes the proxy inject it on api.github.com (a loopback stand-in). The canary token
//! never reaches the run's output or any file under MOAT_HOME, and the Go file is left
//! byte for byte as it was.
//!
//! THREATS: B5 (a canary token in no output).

use aes_gcm::aead::{Aead, KeyInit};
use aes_gcm::{Aes256Gcm, Nonce};
use base64::Engine;
use moat_e2e::agents::{canary, no_artifact_holds};
use moat_e2e::github::{GithubStandIn, LOGIN};
use moat_e2e::{Moat, docker_ready};
use std::os::unix::fs::PermissionsExt;

#[test]
fn a_go_moat_github_credential_is_used_by_a_run() {
    if !docker_ready() {
        return;
    }
    let token = canary("ghp_");
    let gh = GithubStandIn::start(&token);
    let mut m = Moat::new();
    m.env
        .env("MOAT_PROXY_CONNECT_TO", gh.connect_to())
        .env("MOAT_PROXY_EXTRA_CA", &gh.ca_file);

    let home = m.moat_home().to_path_buf();
    let creds = home.join("credentials");
    std::fs::create_dir_all(&creds).unwrap();
    let mut key = [0u8; 32];
    getrandom::fill(&mut key).unwrap();
    let mut nonce = [0u8; 12];
    getrandom::fill(&mut nonce).unwrap();
    // Never 1: that first byte is moat's own format version.
    nonce[0] |= 0x80;
    let plaintext = serde_json::json!({
        "provider": "github", "token": token, "scopes": ["repo"],
        "expires_at": "0001-01-01T00:00:00Z", "created_at": "2025-01-01T00:00:00Z",
        "metadata": {"token_source": "env"},
    });
    let mut file = nonce.to_vec();
    file.extend(
        Aes256Gcm::new_from_slice(&key)
            .unwrap()
            .encrypt(
                &Nonce::from(nonce),
                serde_json::to_vec(&plaintext).unwrap().as_slice(),
            )
            .unwrap(),
    );
    let b64 = base64::engine::general_purpose::STANDARD.encode(key);
    for (p, data) in [
        (home.join("encryption.key"), b64.as_bytes()),
        (creds.join("github.enc"), file.as_slice()),
    ] {
        std::fs::write(&p, data).unwrap();
        std::fs::set_permissions(&p, std::fs::Permissions::from_mode(0o600)).unwrap();
    }
    for d in [&home, &creds] {
        std::fs::set_permissions(d, std::fs::Permissions::from_mode(0o700)).unwrap();
    }

    m.write_config("grants: [github]\n");
    m.trust(None);
    let r = m.launch_sh(&[], "curl -s https://api.github.com/user; echo; env");
    assert_eq!(r.code(), 0, "{}\n{}", r.stdout(), r.stderr());
    assert!(r.stdout().contains(LOGIN), "{}", r.stdout());
    assert!(gh.authorized.load(std::sync::atomic::Ordering::SeqCst) >= 1);
    // The run is the first command to meet the Go moat's store: it says so, once.
    assert!(
        r.stderr().contains("found the Go moat's files")
            && r.stderr().contains("github (from credentials/github.enc)"),
        "{}",
        r.stderr()
    );
    assert!(m.moat_home().join("go-moat/notice.json").is_file());
    r.leaks_nothing(&token);
    no_artifact_holds(&m, &token);
    assert_eq!(
        std::fs::read(creds.join("github.enc")).unwrap(),
        file,
        "the Go moat's file was changed"
    );
}
