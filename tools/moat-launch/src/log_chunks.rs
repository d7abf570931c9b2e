//! The run's output in the audit log: `logs.jsonl` stays where it is, and the audit log gets
//! a `log_chunk` record for each stretch of it (every 200 lines, every 5 s while lines
//! arrive, and at the end, empty when nothing was printed): its byte range, line count and
//! SHA-256. `moat audit RUN` checks the file against them (moat-audit's logs.rs).

use sha2::{Digest, Sha256};
use std::time::Duration;
use tokio::sync::mpsc;

pub const EVERY_LINES: u64 = 200;
pub const EVERY: Duration = Duration::from_secs(5);

pub struct Chunker {
    run: String,
    tx: Option<mpsc::UnboundedSender<String>>,
    offset: u64,
    length: u64,
    lines: u64,
    hash: Sha256,
}

impl Chunker {
    /// `offset`: where the next line lands in logs.jsonl (its length now).
    pub fn new(run: &str, offset: u64, tx: Option<mpsc::UnboundedSender<String>>) -> Chunker {
        Chunker {
            run: run.to_string(),
            tx,
            offset,
            length: 0,
            lines: 0,
            hash: Sha256::new(),
        }
    }

    /// A line (with its newline) as written to logs.jsonl.
    pub fn add(&mut self, written: &[u8]) {
        self.hash.update(written);
        self.length += written.len() as u64;
        self.lines += 1;
        if self.lines >= EVERY_LINES {
            self.flush(false);
        }
    }

    /// Record what was written since the last chunk; `last` records even an empty one.
    pub fn flush(&mut self, last: bool) {
        if self.lines == 0 && !last {
            return;
        }
        let h = std::mem::take(&mut self.hash).finalize();
        if let Some(tx) = &self.tx
            && let Ok(l) = moat_core::jsonl::line(
                "log_chunk",
                &serde_json::json!({
                    "run": self.run,
                    "file": "logs.jsonl",
                    "offset": self.offset,
                    "length": self.length,
                    "lines": self.lines,
                    "sha256": moat_core::hex(&h),
                }),
            )
        {
            let _ = tx.send(l);
        }
        self.offset += self.length;
        self.length = 0;
        self.lines = 0;
    }
}
