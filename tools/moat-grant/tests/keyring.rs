//! The key in a real Secret Service (Debian gnome-keyring under dbus-run-session), and the
//! fallback to the key file where no keyring answers.

mod common;

use common::*;
use moat_testkit::{Run, TestEnv};

/// Run a shell script inside a fresh D-Bus session with gnome-keyring's secrets component
/// unlocked by a fixed password (the login keyring persists under the test's HOME).
/// The script waits until the daemon owns its bus name: asking earlier makes D-Bus start
/// a second, locked daemon. The daemon is stopped by its process id at the end, and
/// output goes to files so a stray process can never hold the test's pipes open.
fn in_keyring_session(t: &TestEnv, script: &str) -> Run {
    session(
        t,
        "echo -n pw | gnome-keyring-daemon --unlock --components=secrets",
        script,
    )
}

/// The same, with the daemon started but the login keyring left locked.
fn in_keyring_session_locked(t: &TestEnv, script: &str) -> Run {
    session(
        t,
        "gnome-keyring-daemon --start --components=secrets",
        script,
    )
}

fn session(t: &TestEnv, start: &str, script: &str) -> Run {
    const Q: &str = "dbus-send --session --print-reply --dest=org.freedesktop.DBus /org/freedesktop/DBus org.freedesktop.DBus";
    let full = format!(
        "{start} >/dev/null 2>&1 || exit 99
         i=0
         until {Q}.NameHasOwner string:org.freedesktop.secrets 2>/dev/null | grep -q true; do
             i=$((i+1)); [ $i -gt 200 ] && exit 98; sleep 0.05
         done
         pid=$({Q}.GetConnectionUnixProcessID string:org.freedesktop.secrets | awk '/uint32/ {{print $2}}')
         ( {script} )
         rc=$?
         kill \"$pid\" 2>/dev/null
         exit $rc"
    );
    let so = t.path().join("session.out");
    let se = t.path().join("session.err");
    let status = t
        .program("timeout")
        .args(["-k", "5", "60", "dbus-run-session", "--", "sh", "-c", &full])
        .env_remove("MOAT_KEYRING")
        .stdin(std::process::Stdio::null())
        .stdout(std::fs::File::create(&so).unwrap())
        .stderr(std::fs::File::create(&se).unwrap())
        .status()
        .expect("timeout/dbus-run-session (Debian dbus, gnome-keyring)");
    let out = std::process::Output {
        status,
        stdout: std::fs::read(&so).unwrap(),
        stderr: std::fs::read(&se).unwrap(),
    };
    Run::new(format!("dbus-run-session sh -c {script:?}"), out)
}

#[test]
fn key_lives_in_the_secret_service_and_round_trips() {
    let t = TestEnv::new();
    let r = in_keyring_session(
        &t,
        "printf ghp_keyringtoken | moat-grant github --token-stdin --no-validate >/dev/null && moat-grant rules github",
    );
    r.success()
        .stdout_has("Bearer ghp_keyringtoken")
        .stderr_lacks("note:");
    assert!(
        !key_file(&t).exists(),
        "the key went to a file, not the keyring"
    );
    assert!(
        t.home.join(".local/share/keyrings").is_dir(),
        "gnome-keyring stored nothing"
    );
    // A new session (a new login) reads the same key back from the keyring.
    let r = in_keyring_session(&t, "moat-grant rules github && moat-grant list");
    r.success()
        .stdout_has("Bearer ghp_keyringtoken")
        .stdout_has("github");
    assert!(!key_file(&t).exists());
    // A locked keyring with no one to unlock it: a clear error, quickly, and no new key.
    let start = std::time::Instant::now();
    let r = in_keyring_session_locked(&t, "moat-grant rules github; echo exit=$?");
    r.stdout_has("exit=78")
        .stdout_lacks("Bearer")
        .stderr_has("encryption key could not be read: the keyring failed")
        .stderr_has("github");
    assert!(start.elapsed() < std::time::Duration::from_secs(30));
    assert!(!key_file(&t).exists());
    // The keyring lost its data: the key is not silently regenerated.
    std::fs::remove_dir_all(t.home.join(".local/share/keyrings")).unwrap();
    let r = in_keyring_session(&t, "moat-grant list; echo exit=$?");
    r.stdout_has("exit=78")
        .stderr_has("encryption key is missing")
        .stderr_has("github");
    let r = in_keyring_session(
        &t,
        "printf x | moat-grant openai --token-stdin --no-validate; echo exit=$?",
    );
    r.stdout_has("exit=78");
    assert!(!key_file(&t).exists());
}

#[test]
fn without_a_keyring_the_key_goes_to_a_file_and_says_why() {
    let t = TestEnv::new();
    let out = t
        .cmd("moat-grant")
        .args(["github", "--token-stdin"])
        .env("MOAT_KEYRING", "auto")
        .env_remove("DBUS_SESSION_BUS_ADDRESS")
        .stdin(std::fs::File::open("/dev/null").unwrap())
        .output()
        .unwrap();
    // stdin is empty: an error before any key is made.
    assert_eq!(out.status.code(), Some(65));
    assert!(!key_file(&t).exists());
    let r = grant(
        &t,
        &["github", "--token-stdin"],
        &[
            ("MOAT_KEYRING", "auto"),
            ("DBUS_SESSION_BUS_ADDRESS", "unix:path=/nonexistent"),
        ],
        b"ghp_filekey",
    );
    r.success()
        .stderr_has("no OS keyring answered")
        .stderr_has("encryption.key");
    assert!(key_file(&t).exists());
    // Once the file exists it is the key's home: no second note, no keyring lookup.
    let r = grant(
        &t,
        &["openai", "--token-stdin"],
        &[("MOAT_KEYRING", "auto")],
        b"sk-x",
    );
    r.success().stderr_lacks("note:");
    assert_eq!(listed(&t), vec!["github", "openai"]);
    // MOAT_KEYRING=keyring refuses the fallback.
    let t2 = TestEnv::new();
    grant(
        &t2,
        &["github", "--token-stdin"],
        &[
            ("MOAT_KEYRING", "keyring"),
            ("DBUS_SESSION_BUS_ADDRESS", "unix:path=/nonexistent"),
        ],
        b"ghp_x",
    )
    .exit(69)
    .stderr_has("MOAT_KEYRING=keyring");
    assert!(!key_file(&t2).exists());
    grant(
        &t2,
        &["github", "--token-stdin"],
        &[("MOAT_KEYRING", "bogus")],
        b"ghp_x",
    )
    .exit(78);
}

/// The Go moat keeps its key in the same keyring entry as base64 text (REFERENCE §3.2, as
/// go-keyring writes it: attributes service and username). A credential file in the Go
/// format made with that key is read in place.
#[test]
fn the_go_moats_key_in_the_keyring_reads_its_credentials() {
    use aes_gcm::aead::{Aead, KeyInit};
    use aes_gcm::{Aes256Gcm, Nonce};
    use base64::Engine;
    let t = TestEnv::new();
    let mut key = [0u8; 32];
    getrandom::fill(&mut key).unwrap();
    let token = canary("ghp_");
    let mut nonce = [0u8; 12];
    getrandom::fill(&mut nonce).unwrap();
    nonce[0] |= 0x80;
    let pt = format!(
        r#"{{"provider":"github","token":"{token}","scopes":[],"expires_at":"0001-01-01T00:00:00Z","created_at":"2025-01-01T00:00:00Z","metadata":{{"token_source":"env"}}}}"#
    );
    let mut file = nonce.to_vec();
    file.extend(
        Aes256Gcm::new_from_slice(&key)
            .unwrap()
            .encrypt(&Nonce::from(nonce), pt.as_bytes())
            .unwrap(),
    );
    let creds = t.moat_home.join("credentials");
    std::fs::create_dir_all(&creds).unwrap();
    std::fs::write(creds.join("github.enc"), &file).unwrap();
    use std::os::unix::fs::PermissionsExt;
    for (p, m) in [(&t.moat_home, 0o700), (&creds, 0o700)] {
        std::fs::set_permissions(p, std::fs::Permissions::from_mode(m)).unwrap();
    }
    std::fs::set_permissions(
        creds.join("github.enc"),
        std::fs::Permissions::from_mode(0o600),
    )
    .unwrap();
    let b64 = base64::engine::general_purpose::STANDARD.encode(key);
    let r = in_keyring_session(
        &t,
        &format!(
            "printf %s '{b64}' | secret-tool store --label='moat encryption key' service moat username encryption-key \
             && moat-grant rules github"
        ),
    );
    r.success()
        .stdout_has(&format!("Bearer {token}"))
        .stderr_has("found the Go moat's files");
    assert!(!key_file(&t).exists(), "a key file was made");
    assert_eq!(
        std::fs::read(creds.join("github.enc")).unwrap(),
        file,
        "the Go file changed"
    );
}
