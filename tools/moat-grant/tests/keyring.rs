//! The key in a real Secret Service (Debian gnome-keyring under dbus-run-session), and the
//! fallback to the key file where no keyring answers.

mod common;

use common::*;
use moat_testkit::{Run, TestEnv};

/// Run a shell script inside a fresh D-Bus session with gnome-keyring's secrets component
/// unlocked by a fixed password (the login keyring persists under the test's HOME).
fn in_keyring_session(t: &TestEnv, script: &str) -> Run {
    let full = format!(
        "echo -n pw | gnome-keyring-daemon --unlock --components=secrets >/dev/null || exit 99; {script}"
    );
    let out = t
        .program("timeout")
        .args(["60", "dbus-run-session", "--", "sh", "-c", &full])
        .env_remove("MOAT_KEYRING")
        .stdin(std::process::Stdio::null())
        .output()
        .expect("timeout/dbus-run-session (Debian dbus, gnome-keyring)");
    Run::new(format!("dbus-run-session sh -c {script:?}"), out)
}

#[test]
fn key_lives_in_the_secret_service_and_round_trips() {
    let t = TestEnv::new();
    let r = in_keyring_session(
        &t,
        "printf ghp_keyringtoken | moat-grant github --token-stdin >/dev/null && moat-grant rules github",
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
    // The keyring lost its data: the key is not silently regenerated.
    std::fs::remove_dir_all(t.home.join(".local/share/keyrings")).unwrap();
    let r = in_keyring_session(&t, "moat-grant list; echo exit=$?");
    r.stdout_has("exit=78")
        .stderr_has("encryption key is missing")
        .stderr_has("github");
    let r = in_keyring_session(
        &t,
        "printf x | moat-grant openai --token-stdin; echo exit=$?",
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
