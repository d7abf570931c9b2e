//! Crash safety: 200 times, `moat-audit append` is killed with SIGKILL at a random moment
//! while records stream in. Every log left behind must verify, and every entry a checkpoint
//! covered before the kill must still be there. Runs are reused, so each next writer also
//! has to repair what the killed one left (a torn last line or checkpoint).

use moat_audit::note::{VerifierKey, split_checkpoints_file};
use moat_audit::verify;
use moat_testkit::TestEnv;
use std::io::Write;
use std::process::{Child, Stdio};
use std::time::{Duration, Instant};

const TRIALS: usize = 200;
const RUNS: usize = 20;

/// A small deterministic generator (xorshift) so a failure can be replayed from its seed.
struct Rng(u64);
impl Rng {
    fn next(&mut self) -> u64 {
        self.0 ^= self.0 << 13;
        self.0 ^= self.0 >> 7;
        self.0 ^= self.0 << 17;
        self.0
    }
}

fn checkpoint_sizes(text: &str, key: &VerifierKey) -> Vec<u64> {
    split_checkpoints_file(text)
        .0
        .iter()
        .map(|n| {
            moat_audit::note::open_checkpoint(n, key)
                .expect("a complete checkpoint verifies")
                .size
        })
        .collect()
}

fn kill9(child: &mut Child) {
    // std's Child::kill is SIGKILL on Unix: no handler runs, nothing is flushed.
    child.kill().expect("SIGKILL");
    let st = child.wait().expect("wait");
    use std::os::unix::process::ExitStatusExt;
    assert_eq!(
        st.signal(),
        Some(9),
        "the writer died of SIGKILL, not on its own: {st:?}"
    );
}

#[test]
fn kill_9_never_leaves_a_log_that_fails() {
    let env = TestEnv::new();
    // Create the key pair once.
    env.run("moat-audit", &["key"]).success();
    let key: VerifierKey = std::fs::read_to_string(env.moat_home.join("audit/signing.pub"))
        .unwrap()
        .trim()
        .parse()
        .unwrap();
    let seed = std::env::var("MOAT_CRASH_SEED")
        .ok()
        .and_then(|s| s.parse().ok())
        .unwrap_or(0x9e37_79b9_7f4a_7c15u64);
    eprintln!("seed {seed}");
    let mut rng = Rng(seed);
    let started = Instant::now();
    let mut torn_seen = 0;
    for t in 0..TRIALS {
        let run = format!("run_crash{:07}", t % RUNS);
        let dir = env.moat_home.join("runs").join(&run).join("audit");
        let cp_path = dir.join("checkpoints");
        let before = std::fs::read_to_string(&cp_path).unwrap_or_default();
        let before_count = split_checkpoints_file(&before).0.len();

        let mut child = env
            .cmd("moat-audit")
            .args([
                "append",
                "--run",
                &run,
                "--checkpoint-interval",
                "0.005",
                "--checkpoint-every",
                "64",
            ])
            .stdin(Stdio::piped())
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .unwrap();
        let mut stdin = child.stdin.take().unwrap();
        let feeder = std::thread::spawn(move || {
            let mut n = 0u64;
            loop {
                let mut chunk = String::new();
                for _ in 0..50 {
                    chunk.push_str(&format!(
                        "{{\"v\":1,\"type\":\"credential_used\",\"grant\":\"g\",\"host\":\"h.example\",\"request_id\":\"{t}-{n}\"}}\n"
                    ));
                    n += 1;
                }
                if stdin.write_all(chunk.as_bytes()).is_err() {
                    return;
                }
            }
        });
        // Wait until this writer has signed a checkpoint of its own.
        let deadline = Instant::now() + Duration::from_secs(20);
        loop {
            let now = std::fs::read_to_string(&cp_path).unwrap_or_default();
            if split_checkpoints_file(&now).0.len() > before_count {
                break;
            }
            assert!(
                Instant::now() < deadline,
                "trial {t}: no checkpoint within 20 s"
            );
            std::thread::sleep(Duration::from_millis(1));
        }
        std::thread::sleep(Duration::from_micros(rng.next() % 15_000));
        let covered_before_kill =
            checkpoint_sizes(&std::fs::read_to_string(&cp_path).unwrap(), &key)
                .into_iter()
                .max()
                .unwrap();
        kill9(&mut child);
        feeder.join().unwrap();

        let log = std::fs::read(dir.join("log.jsonl")).unwrap();
        let cps = std::fs::read_to_string(&cp_path).unwrap();
        if !log.is_empty() && *log.last().unwrap() != b'\n' {
            torn_seen += 1;
        }
        let r = verify::verify_bytes(&log, &cps, &format!("moat-audit/{run}"), &key);
        assert!(
            r.intact(),
            "trial {t} (seed {seed}): {:?} {:?}",
            r.fault,
            r.notes
        );
        let lines = log.iter().filter(|&&b| b == b'\n').count() as u64;
        assert!(
            lines >= covered_before_kill,
            "trial {t}: a checkpoint covered {covered_before_kill} entries, {lines} survived"
        );
        assert!(r.tree_size.unwrap() >= covered_before_kill);
        // Now and then, the CLI's verdict too.
        if t % 25 == 0 {
            env.run("moat-audit", &["verify", &run]).success();
        }
    }
    // Every run, repaired and finished by a writer that is not killed, verifies cleanly.
    for r in 0..RUNS {
        let run = format!("run_crash{r:07}");
        env.run_stdin(
            "moat-audit",
            &["append", "--run", &run],
            b"{\"v\":1,\"type\":\"run_ended\"}\n",
        )
        .success();
        let out = env.run("moat-audit", &["verify", &run, "--json"]);
        out.success();
        let rec = &out.records()[0];
        assert_eq!(rec.get("unverified_tail").and_then(|v| v.as_u64()), Some(0));
        assert!(
            rec.get("notes").unwrap().as_array().unwrap().is_empty(),
            "{}",
            out.stdout()
        );
    }
    let total: usize = (0..RUNS)
        .map(|r| {
            let p = env
                .moat_home
                .join(format!("runs/run_crash{r:07}/audit/log.jsonl"));
            std::fs::read(p)
                .unwrap()
                .iter()
                .filter(|&&b| b == b'\n')
                .count()
        })
        .sum();
    eprintln!(
        "{TRIALS} trials in {:?}; {torn_seen} left a torn last line; {total} entries in all",
        started.elapsed()
    );
}
