//! `moat-audit append`: the run's single writer. Records arrive as JSON lines on stdin and
//! become entries; entries are buffered and written in batches, and every checkpoint is
//! preceded by an fsync of the log, so a signed checkpoint never covers bytes that could be
//! lost. A crash loses at most the entries after the last checkpoint; a torn last line is
//! cut off by the next writer. A bad input line is reported on stderr and skipped: one
//! broken producer must not stop the run's audit.

use crate::entry;
use crate::merkle::{Frontier, Hash, leaf_hash};
use crate::note::{self, Checkpoint, NoteSigner};
use crate::store;
use crate::verify::{self, Verifier};
use moat_core::{Error, MoatHome, Result, exit, lock::FileLock};
use std::fs::{File, OpenOptions};
use std::io::{BufRead, BufReader, BufWriter, Read, Seek, SeekFrom, Write};
use std::os::unix::fs::OpenOptionsExt;
use std::sync::mpsc;
use std::time::{Duration, Instant};

/// A line longer than this is refused (and skipped).
pub const MAX_LINE: usize = 1 << 20;
/// Skipped lines reported one by one; the rest are only counted.
const MAX_REPORTED: u64 = 100;

#[derive(Clone, Debug)]
pub struct Options {
    pub run: String,
    /// Checkpoint at least this often while entries arrive.
    pub interval: Duration,
    /// ... and after this many entries.
    pub every: u64,
}

#[derive(Debug, Default)]
pub struct Summary {
    pub appended: u64,
    pub skipped: u64,
    pub size: u64,
    pub checkpoints: u64,
    /// The last signed checkpoint, for a caller to keep elsewhere as a witness.
    pub checkpoint: String,
    pub root: Hash,
}

struct Writer {
    log: BufWriter<File>,
    cps: File,
    signer: NoteSigner,
    origin: String,
    frontier: Frontier,
    last_leaf: Hash,
    last_cp: Option<u64>,
    buf: Vec<u8>,
    written_cps: u64,
    last_note: String,
}

impl Writer {
    fn append(&mut self, event: &[u8]) -> Result<()> {
        let seq = self.frontier.size();
        let ts = moat_core::timefmt::now_rfc3339();
        entry::build_raw(&mut self.buf, seq, &ts, &self.last_leaf, event);
        let leaf = leaf_hash(&self.buf);
        self.buf.push(b'\n');
        self.log
            .write_all(&self.buf)
            .map_err(|e| Error::io("writing the audit log", e))?;
        self.frontier.push(leaf);
        self.last_leaf = leaf;
        Ok(())
    }

    fn pending(&self) -> bool {
        self.last_cp != Some(self.frontier.size())
    }

    /// Make the log durable, then sign and append a checkpoint over it.
    fn checkpoint(&mut self) -> Result<()> {
        self.log
            .flush()
            .map_err(|e| Error::io("writing the audit log", e))?;
        self.log
            .get_ref()
            .sync_data()
            .map_err(|e| Error::io("syncing the audit log", e))?;
        let cp = Checkpoint {
            origin: self.origin.clone(),
            size: self.frontier.size(),
            root: self.frontier.root(),
        };
        let mut text = self.signer.sign(&cp.body());
        text.push('\n');
        self.cps
            .write_all(text.as_bytes())
            .and_then(|_| self.cps.sync_data())
            .map_err(|e| Error::io("writing a checkpoint", e))?;
        self.last_cp = Some(cp.size);
        self.written_cps += 1;
        text.pop();
        self.last_note = text;
        Ok(())
    }
}

fn open_rw(path: &std::path::Path) -> Result<File> {
    OpenOptions::new()
        .read(true)
        .write(true)
        .create(true)
        .truncate(false)
        .mode(0o600)
        .open(path)
        .map_err(|e| Error::io(format!("opening {}", path.display()), e))
}

/// Append records from `input` to the run's log until `input` ends.
pub fn run(home: &MoatHome, opts: &Options, input: impl Read + Send + 'static) -> Result<Summary> {
    run_with_ready(home, opts, input, |_| {})
}

/// [`run`], calling `ready` with the log's size once the log is open, recovered and signed
/// over: from then on every record that arrives is appended. A caller that must not go on
/// without an audit log (the launcher) waits for this.
pub fn run_with_ready(
    home: &MoatHome,
    opts: &Options,
    input: impl Read + Send + 'static,
    ready: impl FnOnce(u64),
) -> Result<Summary> {
    store::check_run_id(&opts.run)?;
    let dir = home.run_audit_dir(&opts.run);
    home.ensure_dir(&dir)?;
    let _lock = FileLock::try_exclusive(&store::lock_path(home, &opts.run))?.ok_or_else(|| {
        Error::new(
            exit::TEMPFAIL,
            format!(
                "run {} already has a writer: another moat-audit append holds {}",
                opts.run,
                store::lock_path(home, &opts.run).display()
            ),
        )
    })?;
    let signer = store::load_or_create_signer(home)?;
    let mut w = recover(home, &opts.run, signer)?;
    if w.last_cp.is_none() {
        // A new log starts with a signed checkpoint of the empty tree, so that removing the
        // checkpoints file later is itself detectable.
        w.checkpoint()?;
    }
    ready(w.frontier.size());

    let (tx, rx) = mpsc::sync_channel::<Vec<Vec<u8>>>(16);
    std::thread::spawn(move || read_batches(input, tx));

    let mut summary = Summary::default();
    let mut line_no = 0u64;
    let mut last_cp_at = Instant::now();
    let mut since_cp = 0u64;
    let mut event = Vec::with_capacity(512);
    loop {
        let msg = if w.pending() {
            let wait = (last_cp_at + opts.interval).saturating_duration_since(Instant::now());
            rx.recv_timeout(wait)
        } else {
            rx.recv().map_err(|_| mpsc::RecvTimeoutError::Disconnected)
        };
        let done = match msg {
            Ok(batch) => {
                for line in batch {
                    line_no += 1;
                    match accept(&line, &mut event) {
                        Ok(true) => {
                            w.append(&event)?;
                            summary.appended += 1;
                            since_cp += 1;
                        }
                        Ok(false) => {}
                        Err(why) => {
                            summary.skipped += 1;
                            // A broken producer must not flood the terminal either.
                            if summary.skipped <= MAX_REPORTED {
                                eprintln!("moat-audit: skipping input line {line_no}: {why}");
                            } else if summary.skipped == MAX_REPORTED + 1 {
                                eprintln!(
                                    "moat-audit: more input lines are not records; counting them silently"
                                );
                            }
                        }
                    }
                    if since_cp >= opts.every {
                        w.checkpoint()?;
                        since_cp = 0;
                        last_cp_at = Instant::now();
                    }
                }
                false
            }
            Err(mpsc::RecvTimeoutError::Timeout) => false,
            Err(mpsc::RecvTimeoutError::Disconnected) => true,
        };
        if w.pending() && (done || last_cp_at.elapsed() >= opts.interval) {
            w.checkpoint()?;
            since_cp = 0;
            last_cp_at = Instant::now();
        }
        if done {
            break;
        }
    }
    if summary.skipped > MAX_REPORTED {
        eprintln!(
            "moat-audit: skipped {} input lines that were not records",
            summary.skipped
        );
    }
    summary.size = w.frontier.size();
    summary.checkpoints = w.written_cps;
    summary.root = w.frontier.root();
    summary.checkpoint = std::mem::take(&mut w.last_note);
    Ok(summary)
}

/// Is this input line a record we log? Its canonical form goes to `out`; `Ok(false)` for a
/// blank line.
fn accept(line: &[u8], out: &mut Vec<u8>) -> std::result::Result<bool, String> {
    let t = line.trim_ascii();
    if t.is_empty() {
        return Ok(false);
    }
    if t.len() > MAX_LINE {
        return Err(format!("longer than {MAX_LINE} bytes"));
    }
    entry::canonical_event(t, out)?;
    Ok(true)
}

/// Read lines and hand them over in batches: whatever is already buffered goes together,
/// so a fast producer costs one channel message per few thousand lines.
fn read_batches(input: impl Read, tx: mpsc::SyncSender<Vec<Vec<u8>>>) {
    let mut r = BufReader::with_capacity(1 << 18, input);
    let mut batch = Vec::new();
    loop {
        let mut line = Vec::new();
        // Never hold more than MAX_LINE + 1 bytes of one line: the rest of an over-long
        // line is discarded and the prefix is kept only so that it is reported.
        match (&mut r)
            .take(MAX_LINE as u64 + 1)
            .read_until(b'\n', &mut line)
        {
            Ok(0) => break,
            Ok(_) => {
                if line.len() > MAX_LINE
                    && line.last() != Some(&b'\n')
                    && skip_line(&mut r).is_err()
                {
                    break;
                }
                batch.push(line);
            }
            Err(e) if e.kind() == std::io::ErrorKind::Interrupted => continue,
            Err(e) => {
                eprintln!(
                    "moat-audit: reading input: {}",
                    moat_core::error::io_msg(&e)
                );
                break;
            }
        }
        if (r.buffer().is_empty() || batch.len() >= 4096)
            && tx.send(std::mem::take(&mut batch)).is_err()
        {
            return;
        }
    }
    if !batch.is_empty() {
        let _ = tx.send(batch);
    }
}

/// Discard input up to and including the next newline.
fn skip_line(r: &mut impl BufRead) -> std::io::Result<()> {
    loop {
        let buf = match r.fill_buf() {
            Ok(b) => b,
            Err(e) if e.kind() == std::io::ErrorKind::Interrupted => continue,
            Err(e) => return Err(e),
        };
        if buf.is_empty() {
            return Ok(());
        }
        match buf.iter().position(|&b| b == b'\n') {
            Some(p) => {
                r.consume(p + 1);
                return Ok(());
            }
            None => {
                let n = buf.len();
                r.consume(n);
            }
        }
    }
}

/// Open the run's files and pick up where the last writer stopped: verify what is there
/// (refusing to extend a log that fails), cut a torn last line or checkpoint.
fn recover(home: &MoatHome, run: &str, signer: NoteSigner) -> Result<Writer> {
    let log_path = store::log_path(home, run);
    let cp_path = store::checkpoints_path(home, run);
    let mut cps = open_rw(&cp_path)?;
    let mut text = String::new();
    cps.read_to_string(&mut text).map_err(|e| {
        Error::data(format!(
            "{}: {}",
            cp_path.display(),
            moat_core::error::io_msg(&e)
        ))
    })?;
    let (notes, torn_cp) = note::split_checkpoints_file(&text);
    let key = signer.verifier();
    let origin = store::origin(run);
    let mut v = Verifier::new(&origin, &notes, &key);
    let mut log = open_rw(&log_path)?;
    let torn = verify::feed_reader(&mut v, &mut BufReader::with_capacity(1 << 20, &log))
        .map_err(|e| Error::io(format!("reading {}", log_path.display()), e))?;
    let (report, state) = v.finish(torn, torn_cp.is_some());
    if let Some(f) = &report.fault {
        return Err(Error::data(format!(
            "{} fails verification ({f}); refusing to append to it",
            log_path.display()
        ))
        .with_hint("run `moat-audit verify` for details"));
    }
    if let Some(n) = torn {
        let len = log
            .metadata()
            .map_err(|e| Error::io(format!("reading {}", log_path.display()), e))?
            .len();
        log.set_len(len - n as u64)
            .and_then(|_| log.sync_data())
            .map_err(|e| Error::io(format!("repairing {}", log_path.display()), e))?;
        eprintln!(
            "moat-audit: cut an incomplete last line ({n} bytes) from {}",
            log_path.display()
        );
    }
    if let Some(at) = torn_cp {
        cps.set_len(at as u64)
            .and_then(|_| cps.sync_data())
            .map_err(|e| Error::io(format!("repairing {}", cp_path.display()), e))?;
        eprintln!(
            "moat-audit: cut an incomplete last checkpoint from {}",
            cp_path.display()
        );
    }
    log.seek(SeekFrom::End(0))
        .and_then(|_| cps.seek(SeekFrom::End(0)))
        .map_err(|e| Error::io("seeking", e))?;
    Ok(Writer {
        log: BufWriter::with_capacity(1 << 16, log),
        cps,
        signer,
        origin,
        frontier: state.frontier,
        last_leaf: state.last_leaf,
        last_cp: state.last_checkpoint_size.filter(|_| !notes.is_empty()),
        buf: Vec::with_capacity(512),
        written_cps: 0,
        last_note: notes.last().map(|n| n.to_string()).unwrap_or_default(),
    })
}
