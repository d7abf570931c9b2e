//! Security and reliability claims tested as attacks: a canary token that must appear in no
//! output and no file except `rules` output, and concurrent writers killed mid-write.

mod common;

use common::*;
use moat_testkit::{Run, TestEnv, contains, files_containing};
use std::fs;
use std::process::Stdio;
use std::time::{Duration, Instant};

#[test]
fn canaries_appear_only_in_rules_output() {
    let t = TestEnv::new();
    let gh = canary("ghp_");
    let claude = canary("sk-ant-oat01-");
    let claude_rt = canary("sk-ant-ort01-");
    let codex = canary("sk-");
    let gem = canary("AIza");
    let npm = canary("npm_");
    let mcp = canary("mcp_");
    let http = canary("tok_");
    let all = [&gh, &claude, &claude_rt, &codex, &gem, &npm, &mcp, &http];

    fs::create_dir_all(t.home.join(".claude")).unwrap();
    fs::write(
        t.home.join(".claude/.credentials.json"),
        format!(r#"{{"claudeAiOauth":{{"accessToken":"{claude}","refreshToken":"{claude_rt}","expiresAt":4102444800000}}}}"#),
    )
    .unwrap();
    fs::create_dir_all(t.home.join(".codex")).unwrap();
    fs::write(
        t.home.join(".codex/auth.json"),
        format!(r#"{{"OPENAI_API_KEY":"{codex}"}}"#),
    )
    .unwrap();
    fs::write(
        t.home.join(".npmrc"),
        format!("//registry.npmjs.org/:_authToken={npm}\n"),
    )
    .unwrap();

    let mut outputs: Vec<Run> = vec![
        grant(&t, &["github"], &[("GH_TOKEN", &gh)], b""),
        grant(&t, &["anthropic"], &[], b""),
        grant(&t, &["openai"], &[], b""),
        grant(&t, &["gemini"], &[("GEMINI_API_KEY", &gem)], b""),
        grant(&t, &["npm"], &[], b""),
        grant(
            &t,
            &[
                "mcp",
                "m",
                "--url",
                "https://mcp.example/",
                "--header",
                "X-Token",
                "--token-stdin",
            ],
            &[],
            mcp.as_bytes(),
        ),
        grant(
            &t,
            &[
                "http",
                "h",
                "--host",
                "api.example",
                "--header",
                "X-Key",
                "--token-stdin",
            ],
            &[],
            http.as_bytes(),
        ),
    ];
    for o in &outputs {
        o.success();
    }
    // Re-granting, listing, errors of every kind.
    outputs.push(grant(
        &t,
        &["github", "--token-stdin"],
        &[],
        format!("{gh}\r\nX: y").as_bytes(),
    ));
    outputs.push(grant(
        &t,
        &["github"],
        &[("GH_TOKEN", &format!("{gh} x"))],
        b"",
    ));
    outputs.push(t.run("moat-grant", &["list"]));
    outputs.push(t.run("moat-grant", &["list", "--json"]));
    outputs.push(t.run("moat-grant", &["rules", "github", "nope"]));
    let gpath = cred_path(&t, "github");
    let good = fs::read(&gpath).unwrap();
    let mut bad = good.clone();
    bad[30] ^= 1;
    fs::write(&gpath, &bad).unwrap();
    outputs.push(t.run("moat-grant", &["list", "--json"]));
    outputs.push(t.run("moat-grant", &["rules", "github", "openai"]));
    fs::write(&gpath, &good).unwrap();
    for o in &outputs {
        for c in all {
            o.leaks_nothing(c);
        }
    }
    // The positive control: rules carry every value, so the grep above could have hit.
    let r = t.run(
        "moat-grant",
        &[
            "rules",
            "github",
            "anthropic",
            "openai",
            "gemini",
            "npm",
            "mcp:m",
            "h",
        ],
    );
    r.success();
    for c in [&gh, &claude, &codex, &gem, &npm, &mcp, &http] {
        assert!(contains(&r.out.stdout, c.as_bytes()), "rules lack {c}");
    }
    // The refresh token stays on the host side: not even rules print it.
    assert!(!contains(&r.out.stdout, claude_rt.as_bytes()));
    for c in all {
        let hits = files_containing(&t.moat_home, c.as_bytes());
        assert!(hits.is_empty(), "{c} found in {hits:?}");
    }
}

/// Spawn `n` writers of distinct credentials; kill the ones `kill(i)` picks after `delay`.
fn round(t: &TestEnv, n: usize, tag: &str, kill: impl Fn(usize) -> bool) -> Vec<bool> {
    let mut kids = Vec::new();
    for i in 0..n {
        let mut c = t.cmd("moat-grant");
        c.args([
            "http",
            &format!("c{i}"),
            "--host",
            &format!("h{i}.example"),
            "--header",
            "X-Key",
            "--token-stdin",
        ])
        .stdin(Stdio::piped())
        .stdout(Stdio::null())
        .stderr(Stdio::null());
        let mut child = c.spawn().unwrap();
        use std::io::Write;
        let _ = child
            .stdin
            .take()
            .unwrap()
            .write_all(format!("v{i}-{tag}").as_bytes());
        kids.push(child);
    }
    let mut killed = vec![false; n];
    for (i, k) in kids.iter_mut().enumerate() {
        if kill(i) {
            std::thread::sleep(Duration::from_micros(300 * (i as u64 % 7)));
            killed[i] = k.kill().is_ok(); // SIGKILL
        }
    }
    let deadline = Instant::now() + Duration::from_secs(60);
    for (i, k) in kids.iter_mut().enumerate() {
        loop {
            match k.try_wait().unwrap() {
                Some(st) => {
                    if !killed[i] {
                        assert!(st.success(), "writer {i} failed: {st:?}");
                    }
                    break;
                }
                None if Instant::now() < deadline => std::thread::sleep(Duration::from_millis(10)),
                None => {
                    let _ = k.kill();
                    panic!("writer {i} hung");
                }
            }
        }
    }
    // A kill after the process already finished doesn't count as mid-write.
    killed
}

#[test]
fn concurrent_writers_killed_mid_write_leave_every_credential_readable() {
    let t = TestEnv::new();
    let n = 32;
    let mut previous: Vec<Option<String>> = vec![None; n];
    for (ri, tag) in ["a", "b", "c"].iter().enumerate() {
        let killed = round(&t, n, tag, |i| (i + ri) % 3 == 0);
        let r = t.run("moat-grant", &["list", "--json"]);
        r.success();
        let names = listed(&t);
        eprintln!(
            "round {tag}: {} listed, {} killed",
            names.len(),
            killed.iter().filter(|k| **k).count()
        );
        for i in 0..n {
            let name = format!("c{i}");
            let present = names.contains(&name);
            if !killed[i] {
                assert!(present, "round {tag}: c{i} finished but is not listed");
            }
            if present {
                let recs = rules(&t, &[&name]);
                let v = recs[0].str("value").unwrap().to_string();
                // Either this round's value or the one before: never a mix, never lost.
                let ok = v == format!("v{i}-{tag}") || previous[i].as_deref() == Some(v.as_str());
                assert!(ok, "round {tag}: c{i} holds {v}");
                previous[i] = Some(v);
            } else {
                assert!(previous[i].is_none(), "round {tag}: c{i} was lost");
            }
        }
        // All survivors at once, as a run would ask for them.
        let refs: Vec<&str> = names.iter().map(String::as_str).collect();
        if !refs.is_empty() {
            assert_eq!(rules(&t, &refs).len(), refs.len());
        }
    }
    // One key, made once despite 32 racing first writers.
    assert!(key_file(&t).exists());
}
