//! Hand-crafted agent messages against the filter in front of a real `ssh-agent`: what a
//! prompt-injected agent in the container could send. Host keys are made by `ssh-keygen`
//! and sign session ids here, so bindings can be genuine, forged or replayed at will.

mod common;

use common::client::{self, Buf, Client, FAILURE, SUCCESS};
use common::{Agent, Filter, Key, rule};
use moat_core::jsonl::Record;
use moat_testkit::TestEnv;

struct World {
    env: TestEnv,
    ed: Key,
    rsa: Key,
    other: Key,
    /// Pinned for a.test.
    a: Key,
    /// Pinned for nothing.
    x: Key,
    _agent: Agent,
    filter: Filter,
}

fn world(extra_rules: impl Fn(&Key, &Key) -> String) -> World {
    let env = TestEnv::new();
    let d = env.path();
    let ed = Key::generate(d, "id_ed25519", "ed25519");
    let rsa = Key::generate(d, "id_rsa", "rsa");
    let other = Key::generate(d, "id_other", "ecdsa");
    let a = Key::generate(d, "host_a", "ed25519");
    let x = Key::generate(d, "host_x", "ed25519");
    let agent = Agent::start(d, &[&ed, &rsa, &other]);
    let rules = format!(
        "{{\"v\":1,\"type\":\"inject\",\"grant\":\"github\",\"hosts\":[\"api.github.com\"],\"header\":\"h\",\"value\":\"v\"}}\n{}{}{}",
        rule("a.test", &ed, &[&a], &[]),
        rule("a.test", &rsa, &[&a], &[]),
        extra_rules(&ed, &a),
    );
    let filter = Filter::start(&env, &rules, &agent.sock);
    World {
        env,
        ed,
        rsa,
        other,
        a,
        x,
        _agent: agent,
        filter,
    }
}

fn plain_world() -> World {
    world(|_, _| String::new())
}

fn sid(n: u8) -> Vec<u8> {
    vec![n; 32]
}

#[track_caller]
fn last_sign(w: &World) -> Record {
    w.filter
        .settled_records()
        .into_iter()
        .rev()
        .find(|r| r.kind == "ssh_sign")
        .expect("an ssh_sign record")
}

#[track_caller]
fn assert_denied(w: &World, reason: &str) {
    let r = last_sign(w);
    assert_eq!(r.get("allowed"), Some(&serde_json::json!(false)), "{r:?}");
    assert!(
        r.str("reason").unwrap_or("").contains(reason),
        "want reason {reason:?}: {r:?}"
    );
}

#[test]
fn listening_record_comes_first_and_socket_is_private() {
    use std::os::unix::fs::{FileTypeExt, PermissionsExt};
    let w = plain_world();
    let first = moat_core::jsonl::parse(&w.filter.lines()[0])
        .unwrap()
        .unwrap();
    assert_eq!(first.kind, "listening");
    assert_eq!(first.str("socket"), Some(w.filter.sock.to_str().unwrap()));
    let m = std::fs::symlink_metadata(&w.filter.sock).unwrap();
    assert!(m.file_type().is_socket());
    assert_eq!(m.permissions().mode() & 0o777, 0o600);
    let _ = &w.env;
}

#[test]
fn an_unbound_connection_lists_granted_keys_but_gets_no_signature() {
    let w = plain_world();
    let mut c = Client::connect(&w.filter.sock);
    let keys = c.list();
    assert_eq!(
        keys.len(),
        2,
        "ed25519 and RSA are granted, the ECDSA key is not"
    );
    assert!(keys.contains(&w.ed.blob()) && keys.contains(&w.rsa.blob()));
    assert!(!keys.contains(&w.other.blob()));
    let data = client::userauth(&sid(1), "git", "ssh-ed25519", &w.ed.blob());
    assert_eq!(c.sign(&w.ed.blob(), &data, 0), Err(FAILURE));
    assert_denied(&w, "not bound");
    let list = w.filter.wait_records("ssh_list", 1);
    assert_eq!(list[0].get("keys").unwrap().as_array().unwrap().len(), 2);
}

#[test]
fn a_genuine_binding_signs_its_own_userauth_requests_only() {
    let w = plain_world();
    let a = w.a.private();
    let mut c = Client::connect(&w.filter.sock);
    assert_eq!(c.bind(&a, &sid(1)), SUCCESS);
    let bind = w.filter.wait_records("ssh_bind", 1);
    assert_eq!(bind[0].get("allowed"), Some(&serde_json::json!(true)));
    assert_eq!(bind[0].str("host"), Some("a.test"));
    assert_eq!(bind[0].str("host_key"), Some(w.a.fingerprint.as_str()));
    // Once bound, the list holds the keys granted for that host.
    assert_eq!(c.list().len(), 2);

    let ed = w.ed.blob();
    let sig = c
        .sign(
            &ed,
            &client::userauth(&sid(1), "git", "ssh-ed25519", &ed),
            0,
        )
        .expect("a signature for the bound session");
    assert_eq!(client::blob_type(&sig), "ssh-ed25519");
    let r = last_sign(&w);
    assert_eq!(r.get("allowed"), Some(&serde_json::json!(true)), "{r:?}");
    assert_eq!(r.str("host"), Some("a.test"));
    assert_eq!(r.str("fingerprint"), Some(w.ed.fingerprint.as_str()));
    assert_eq!(r.str("algorithm"), Some("ssh-ed25519"));

    // RSA: the flags pass through, and no flags (a SHA-1 signature) is refused.
    let rsa = w.rsa.blob();
    for (flags, alg) in [(4, "rsa-sha2-512"), (2, "rsa-sha2-256")] {
        let data = client::userauth(&sid(1), "git", alg, &rsa);
        let sig = c.sign(&rsa, &data, flags).expect("an RSA signature");
        assert_eq!(client::blob_type(&sig), alg);
        assert_eq!(last_sign(&w).str("algorithm"), Some(alg));
    }
    let data = client::userauth(&sid(1), "git", "ssh-rsa", &rsa);
    assert_eq!(c.sign(&rsa, &data, 0), Err(FAILURE));
    assert_denied(&w, "SHA-1");

    // Not a userauth request, another session, another key inside, a key not granted.
    assert_eq!(c.sign(&ed, b"arbitrary bytes to sign", 0), Err(FAILURE));
    assert_denied(&w, "not a userauth request");
    let other_session = client::userauth(&sid(2), "git", "ssh-ed25519", &ed);
    assert_eq!(c.sign(&ed, &other_session, 0), Err(FAILURE));
    assert_denied(&w, "another session");
    let other_key = client::userauth(&sid(1), "git", "ssh-rsa", &rsa);
    assert_eq!(c.sign(&ed, &other_key, 0), Err(FAILURE));
    assert_denied(&w, "another key");
    let ecdsa = w.other.blob();
    let alg = client::blob_type(&ecdsa);
    let data = client::userauth(&sid(1), "git", &alg, &ecdsa);
    assert_eq!(c.sign(&ecdsa, &data, 0), Err(FAILURE));
    assert_denied(&w, "not granted");
    let r = last_sign(&w);
    assert_eq!(r.str("fingerprint"), Some(w.other.fingerprint.as_str()));
    // Trailing bytes after a userauth request are not a userauth request.
    let mut trailing = client::userauth(&sid(1), "git", "ssh-ed25519", &ed);
    trailing.push(0);
    assert_eq!(c.sign(&ed, &trailing, 0), Err(FAILURE));
}

#[test]
fn a_forged_binding_is_refused_and_the_connection_stays_refused() {
    let w = plain_world();
    let mut c = Client::connect(&w.filter.sock);
    // Host key A, but the session id signed by X.
    let forged = client::sign_blob(&w.x.private(), &sid(3));
    assert_eq!(c.bind_raw(&w.a.blob(), &sid(3), &forged, false), FAILURE);
    let b = w.filter.wait_records("ssh_bind", 1);
    assert_eq!(b[0].get("allowed"), Some(&serde_json::json!(false)));
    assert!(
        b[0].str("reason").unwrap().contains("does not verify"),
        "{b:?}"
    );
    // A signature over another id by the right key is just as forged.
    let mut c2 = Client::connect(&w.filter.sock);
    let wrong_id = client::sign_blob(&w.a.private(), &sid(4));
    assert_eq!(c2.bind_raw(&w.a.blob(), &sid(3), &wrong_id, false), FAILURE);
    // Garbage for a signature.
    let mut c3 = Client::connect(&w.filter.sock);
    assert_eq!(c3.bind_raw(&w.a.blob(), &sid(3), b"junk", false), FAILURE);

    // The refused connection gets no keys, no signature, and cannot bind again.
    assert!(c.list().is_empty());
    let ed = w.ed.blob();
    let data = client::userauth(&sid(3), "git", "ssh-ed25519", &ed);
    assert_eq!(c.sign(&ed, &data, 0), Err(FAILURE));
    assert_denied(&w, "refused earlier");
    assert_eq!(c.bind(&w.a.private(), &sid(5)), FAILURE);
}

#[test]
fn unpinned_host_keys_and_forwarded_bindings_are_refused() {
    let w = plain_world();
    let ed = w.ed.blob();
    // A genuine session with a server whose host key no grant pins.
    let mut c = Client::connect(&w.filter.sock);
    assert_eq!(c.bind(&w.x.private(), &sid(6)), FAILURE);
    let b = w.filter.wait_records("ssh_bind", 1);
    assert!(b[0].str("reason").unwrap().contains("not pinned"), "{b:?}");
    assert!(c.list().is_empty());
    let data = client::userauth(&sid(6), "git", "ssh-ed25519", &ed);
    assert_eq!(c.sign(&ed, &data, 0), Err(FAILURE));
    // A genuine binding marked as a forwarding hop.
    let mut f = Client::connect(&w.filter.sock);
    let a = w.a.private();
    let hk = a.public_key().to_bytes().unwrap();
    assert_eq!(
        f.bind_raw(&hk, &sid(7), &client::sign_blob(&a, &sid(7)), true),
        FAILURE
    );
    let b = w.filter.wait_records("ssh_bind", 2);
    assert!(b[1].str("reason").unwrap().contains("forward"), "{b:?}");
    let data = client::userauth(&sid(7), "git", "ssh-ed25519", &ed);
    assert_eq!(f.sign(&ed, &data, 0), Err(FAILURE));
}

#[test]
fn a_replayed_session_id_is_refused_on_another_connection() {
    let w = plain_world();
    let a = w.a.private();
    let ed = w.ed.blob();
    let data = client::userauth(&sid(8), "git", "ssh-ed25519", &ed);
    let mut c1 = Client::connect(&w.filter.sock);
    assert_eq!(c1.bind(&a, &sid(8)), SUCCESS);
    assert!(c1.sign(&ed, &data, 0).is_ok());
    // The same binding and request, replayed on a second connection.
    let mut c2 = Client::connect(&w.filter.sock);
    assert_eq!(c2.bind(&a, &sid(8)), FAILURE);
    let b = w.filter.wait_records("ssh_bind", 2);
    assert!(
        b[1].str("reason").unwrap().contains("already used"),
        "{b:?}"
    );
    assert_eq!(c2.sign(&ed, &data, 0), Err(FAILURE));
    // Two connections bound to the same id before either signed: only the first signs.
    let mut c3 = Client::connect(&w.filter.sock);
    let mut c4 = Client::connect(&w.filter.sock);
    assert_eq!(c3.bind(&a, &sid(9)), SUCCESS);
    assert_eq!(c4.bind(&a, &sid(9)), SUCCESS);
    let data9 = client::userauth(&sid(9), "git", "ssh-ed25519", &ed);
    assert!(c3.sign(&ed, &data9, 0).is_ok());
    assert_eq!(c4.sign(&ed, &data9, 0), Err(FAILURE));
    assert_denied(&w, "already used");
    // The first connection may sign again in its own session (ssh tries several keys).
    assert!(c1.sign(&ed, &data, 0).is_ok());
}

#[test]
fn a_second_different_binding_on_one_connection_is_refused() {
    let w = plain_world();
    let a = w.a.private();
    let ed = w.ed.blob();
    let mut c = Client::connect(&w.filter.sock);
    assert_eq!(c.bind(&a, &sid(10)), SUCCESS);
    assert_eq!(
        c.bind(&a, &sid(10)),
        SUCCESS,
        "the same binding again is harmless"
    );
    assert_eq!(c.bind(&a, &sid(11)), FAILURE);
    let b = w.filter.wait_records("ssh_bind", 3);
    assert!(
        b[2].str("reason").unwrap().contains("already bound"),
        "{b:?}"
    );
    let data = client::userauth(&sid(10), "git", "ssh-ed25519", &ed);
    assert_eq!(c.sign(&ed, &data, 0), Err(FAILURE));
    assert_denied(&w, "refused earlier");
}

fn sshsig(namespace: &str) -> Vec<u8> {
    Buf::new()
        .raw(b"SSHSIG")
        .string(namespace)
        .string("")
        .string("sha512")
        .string([7u8; 64])
        .0
}

#[test]
fn sshsig_signing_needs_a_granted_namespace() {
    let w = world(|ed, a| rule("a.test", ed, &[a], &["git"]));
    let ed = w.ed.blob();
    let rsa = w.rsa.blob();
    let mut c = Client::connect(&w.filter.sock);
    let sig = c
        .sign(&ed, &sshsig("git"), 0)
        .expect("git namespace granted");
    assert_eq!(client::blob_type(&sig), "ssh-ed25519");
    let r = last_sign(&w);
    assert_eq!(r.str("namespace"), Some("git"));
    assert_eq!(r.get("allowed"), Some(&serde_json::json!(true)));
    assert_eq!(c.sign(&ed, &sshsig("file"), 0), Err(FAILURE));
    assert_denied(&w, "namespace \"file\"");
    assert_eq!(c.sign(&rsa, &sshsig("git"), 4), Err(FAILURE));
    assert_denied(&w, "not granted");
    let mut bad = sshsig("git");
    bad.push(1);
    assert_eq!(c.sign(&ed, &bad, 0), Err(FAILURE));
    assert_denied(&w, "malformed SSHSIG");
}

#[test]
fn key_changes_locks_and_unknown_extensions_are_refused() {
    let w = plain_world();
    let mut c = Client::connect(&w.filter.sock);
    let requests: Vec<(Vec<u8>, &str)> = vec![
        (Buf::new().u8(17).string("ssh-ed25519").0, "add_identity"),
        (
            Buf::new().u8(25).string("ssh-ed25519").0,
            "add_identity_constrained",
        ),
        (Buf::new().u8(18).string(w.ed.blob()).0, "remove_identity"),
        (vec![19], "remove_all_identities"),
        (
            Buf::new().u8(20).string("pkcs11").string("").0,
            "add_smartcard_key",
        ),
        (Buf::new().u8(22).string("pw").0, "lock"),
        (Buf::new().u8(23).string("pw").0, "unlock"),
        (Buf::new().u8(27).string("query").0, "extension"),
        (
            Buf::new().u8(27).string("evil@example.com").u8(1).0,
            "extension",
        ),
        (vec![200, 1, 2, 3], "unknown"),
        (vec![1], "list_v1"),
        (vec![9], "remove_all_identities_v1"),
        (vec![], "malformed"),
    ];
    for (body, _) in &requests {
        assert_eq!(c.request(body), vec![FAILURE], "{body:?}");
    }
    let refused = w.filter.wait_records("ssh_refused", requests.len());
    let got: Vec<&str> = refused.iter().map(|r| r.str("request").unwrap()).collect();
    let want: Vec<&str> = requests.iter().map(|(_, n)| *n).collect();
    assert_eq!(got, want);
    assert_eq!(refused[8].str("extension"), Some("evil@example.com"));
    // The real agent still holds all three keys.
    let out = std::process::Command::new("ssh-add")
        .arg("-l")
        .env("SSH_AUTH_SOCK", &w._agent.sock)
        .output()
        .unwrap();
    assert_eq!(String::from_utf8_lossy(&out.stdout).lines().count(), 3);
}

#[test]
fn oversized_and_malformed_messages_cost_only_their_own_connection() {
    let w = plain_world();
    let mut bystander = Client::connect(&w.filter.sock);
    assert_eq!(bystander.bind(&w.a.private(), &sid(12)), SUCCESS);

    // Over the 256 KiB limit: refused, then that connection is closed.
    let mut big = Client::connect(&w.filter.sock);
    let mut frame = (300u32 * 1024).to_be_bytes().to_vec();
    frame.push(13);
    frame.extend_from_slice(&[0u8; 4096]);
    big.send_raw(&frame);
    assert_eq!(big.read_reply(), Some(vec![FAILURE]));
    assert_eq!(big.read_reply(), None, "the oversized connection is closed");
    let r = w.filter.wait_records("ssh_refused", 1);
    assert_eq!(r[0].str("request"), Some("oversized"));

    // A 4 GiB length claim, and a frame cut short by closing.
    let mut huge = Client::connect(&w.filter.sock);
    huge.send_raw(&[0xff, 0xff, 0xff, 0xff]);
    assert_eq!(huge.read_reply(), Some(vec![FAILURE]));
    let mut cut = Client::connect(&w.filter.sock);
    cut.send_raw(&[0, 0, 0, 100, 13, 0]);
    drop(cut);

    // Malformed bodies: refused, and the connection goes on.
    let mut m = Client::connect(&w.filter.sock);
    for body in [
        vec![13],
        vec![13, 0, 0, 0, 9, 1],
        Buf::new().u8(13).string("k").string("d").0,
        Buf::new().u8(13).string("k").string("d").u32(0).u8(0).0,
        Buf::new().u8(27).u32(1000).0,
        Buf::new()
            .u8(27)
            .string("session-bind@openssh.com")
            .string("x")
            .0,
        Buf::new()
            .u8(27)
            .string("session-bind@openssh.com")
            .string("x")
            .string(sid(1))
            .string("s")
            .u8(0)
            .0,
    ] {
        assert_eq!(m.request(&body), vec![FAILURE], "{body:?}");
    }
    // The well-formed connections keep working, including the one bound before.
    assert_eq!(m.list().len(), 0, "m's failed bindings refused it");
    let ed = w.ed.blob();
    let data = client::userauth(&sid(12), "git", "ssh-ed25519", &ed);
    assert!(bystander.sign(&ed, &data, 0).is_ok());
    let mut fresh = Client::connect(&w.filter.sock);
    assert_eq!(fresh.list().len(), 2);
    // Every decision above is on record, each naming its connection.
    for r in w.filter.records().iter().skip(1) {
        assert!(r.get("conn").is_some(), "{r:?}");
        assert!(r.get("ts").is_some(), "{r:?}");
    }
}

#[test]
fn random_garbage_never_stops_the_filter() {
    let w = plain_world();
    let mut x: u64 = 0x2545f4914f6cdd1d;
    let mut next = move || {
        x ^= x << 13;
        x ^= x >> 7;
        x ^= x << 17;
        x
    };
    for _ in 0..8 {
        let mut c = Client::connect(&w.filter.sock);
        for _ in 0..50 {
            // A known message type with a random body, or a random type.
            let kind = [11u8, 13, 17, 18, 22, 27, 0, 255][(next() % 8) as usize];
            let mut body = vec![kind];
            body.extend((0..(next() % 200)).map(|_| next() as u8));
            let r = c.request(&body);
            assert!(!r.is_empty());
        }
    }
    let mut fresh = Client::connect(&w.filter.sock);
    assert_eq!(fresh.list().len(), 2);
    assert!(w.filter.child.as_ref().is_some());
}
