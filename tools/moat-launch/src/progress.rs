//! A status line for long quiet operations (image builds, `image bootstrap`, snapshot
//! restore, `clean`): when stderr is a terminal and the operation has printed nothing for a
//! second, a thread redraws `\r<spinner> <stage> (<seconds>s)` every 100 ms until the
//! [`Progress`] is dropped, which clears the line. When stderr is not a terminal nothing is
//! printed at all. `MOAT_PROGRESS_DELAY_MS` sets the quiet time before the line shows
//! (default 1000; 0 draws it at once).

use std::io::{IsTerminal, Write};
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::{Duration, Instant};

pub struct Progress {
    done: Arc<AtomicBool>,
    thread: Option<std::thread::JoinHandle<()>>,
}

const FRAMES: [char; 4] = ['|', '/', '-', '\\'];
const TICK: Duration = Duration::from_millis(100);

fn delay() -> Duration {
    let ms = std::env::var("MOAT_PROGRESS_DELAY_MS")
        .ok()
        .and_then(|v| v.parse::<u64>().ok())
        .unwrap_or(1000);
    Duration::from_millis(ms.min(3_600_000))
}

impl Progress {
    /// Show `stage` on the terminal until the returned value is dropped.
    pub fn start(stage: &str) -> Progress {
        let done = Arc::new(AtomicBool::new(false));
        if !std::io::stderr().is_terminal() {
            return Progress { done, thread: None };
        }
        let stage: String = stage.chars().filter(|c| !c.is_control()).take(60).collect();
        let start = Instant::now();
        let delay = delay();
        if delay.is_zero() {
            draw(&stage, 0, start);
        }
        let flag = done.clone();
        let thread = std::thread::spawn(move || {
            let mut frame = 0usize;
            let mut shown = delay.is_zero();
            loop {
                std::thread::sleep(TICK);
                if flag.load(Ordering::Acquire) {
                    break;
                }
                if start.elapsed() >= delay {
                    frame += 1;
                    draw(&stage, frame, start);
                    shown = true;
                }
            }
            if shown {
                // Blank the line and return to its start, for whatever prints next.
                let width = stage.chars().count() + 16;
                let _ = write!(std::io::stderr(), "\r{:width$}\r", "");
            }
        });
        Progress {
            done,
            thread: Some(thread),
        }
    }
}

fn draw(stage: &str, frame: usize, start: Instant) {
    let secs = start.elapsed().as_secs();
    let mut e = std::io::stderr().lock();
    let _ = write!(e, "\r{} {stage} ({secs}s)", FRAMES[frame % FRAMES.len()]);
    let _ = e.flush();
}

impl Drop for Progress {
    fn drop(&mut self) {
        self.done.store(true, Ordering::Release);
        if let Some(t) = self.thread.take() {
            let _ = t.join();
        }
    }
}

/// The same status line for a loop that also copies other output to the terminal (following
/// a starting run): no thread; [`Quiet::tick`] draws it once nothing has been written for the
/// quiet time, [`Quiet::clear`] blanks it before anything else is written, and dropping it
/// blanks it.
pub struct Quiet {
    stage: String,
    tty: bool,
    delay: Duration,
    start: Instant,
    since: Instant,
    drawn: Option<Instant>,
    frame: usize,
}

impl Quiet {
    pub fn new(stage: &str) -> Quiet {
        let now = Instant::now();
        Quiet {
            stage: stage.chars().filter(|c| !c.is_control()).take(60).collect(),
            tty: std::io::stderr().is_terminal(),
            delay: delay(),
            start: now,
            since: now,
            drawn: None,
            frame: 0,
        }
    }

    pub fn tick(&mut self) {
        if !self.tty || self.since.elapsed() < self.delay {
            return;
        }
        if self.drawn.is_some_and(|d| d.elapsed() < TICK) {
            return;
        }
        draw(&self.stage, self.frame, self.start);
        self.frame += 1;
        self.drawn = Some(Instant::now());
    }

    pub fn clear(&mut self) {
        if self.drawn.take().is_some() {
            let width = self.stage.chars().count() + 16;
            let _ = write!(std::io::stderr(), "\r{:width$}\r", "");
        }
        self.since = Instant::now();
    }
}

impl Drop for Quiet {
    fn drop(&mut self) {
        self.clear();
    }
}
