//! Where a run's start-up time goes: `MOAT_TIMINGS=1` (or `--timings` on run, claude, codex
//! and gemini) prints a line per stage on stderr as each stage ends:
//!
//! ```text
//! moat: timings: network +12 ms (at 85 ms)
//! ```
//!
//! `+` is the time since the previous stage ended, `at` the time since the CLI began the run.
//! The CLI prints its own stages (config, trust check) and hands its start time to the
//! supervisor (`MOAT_TIMINGS_T0`, microseconds since the epoch), whose stages go to launch.log,
//! which the CLI shows on its stderr while it follows the run. Stages that overlap (the proxy
//! and the guard start while others go on) are printed when they are awaited, so the order is
//! the order in which start-up waits for them; a stage a run skips is not printed.

use std::sync::Mutex;
use std::time::{Duration, SystemTime, UNIX_EPOCH};

/// Set in the supervisor's environment: on, and when the CLI began.
pub const ENV: &str = "MOAT_TIMINGS";
pub const ENV_T0: &str = "MOAT_TIMINGS_T0";

struct State {
    on: bool,
    t0: Duration,
    last: Duration,
}

static STATE: Mutex<Option<State>> = Mutex::new(None);

fn now() -> Duration {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .unwrap_or_default()
}

fn env_on() -> bool {
    std::env::var(ENV).is_ok_and(|v| !v.is_empty() && v != "0")
}

fn with<R>(f: impl FnOnce(&mut State) -> R) -> R {
    let mut g = STATE.lock().unwrap_or_else(|e| e.into_inner());
    let s = g.get_or_insert_with(|| {
        let t0 = std::env::var(ENV_T0)
            .ok()
            .and_then(|v| v.parse::<u64>().ok())
            .map(Duration::from_micros)
            .filter(|t| *t <= now())
            .unwrap_or_else(now);
        State {
            on: env_on(),
            t0,
            last: t0,
        }
    });
    f(s)
}

/// The CLI: start the clock; `flag` is `--timings`.
pub fn begin(flag: bool) {
    with(|s| s.on |= flag);
}

/// What the supervisor needs in its environment to go on with this clock (empty when off).
pub fn child_env() -> Vec<(&'static str, String)> {
    with(|s| {
        if s.on {
            vec![
                (ENV, "1".to_string()),
                (ENV_T0, s.t0.as_micros().to_string()),
            ]
        } else {
            vec![]
        }
    })
}

/// The end of `name`: one line on stderr when timings are on.
pub fn stage(name: &str) {
    let line = with(|s| {
        if !s.on {
            return None;
        }
        let t = now().max(s.last);
        let (delta, at) = (t - s.last, t - s.t0);
        s.last = t;
        Some(format!(
            "moat: timings: {name} +{} ms (at {} ms)",
            delta.as_millis(),
            at.as_millis()
        ))
    });
    if let Some(l) = line {
        eprintln!("{l}");
    }
}
