//! The verifier the CLI, the appender (on restart) and the bundle checker share. Lines are
//! fed in order; the first line that breaks the sequence or the hash chain stops the
//! chain check and is classified (modified, inserted, deleted, reordered) from the lines
//! around it. With the chain intact, the Merkle root at every signed checkpoint's size must
//! equal what that checkpoint signed: a log shorter than a checkpoint is truncated, a
//! checkpoint that disagrees while a later one agrees is a fork, and a checkpoint nothing
//! agrees with means entries were changed (and the chain re-computed) before it.

use crate::entry::{LineInfo, ZERO};
use crate::merkle::{Frontier, Hash, empty_root};
use crate::note::{self, Checkpoint, NoteError, VerifierKey};
use std::collections::HashMap;

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum FaultKind {
    Modified,
    Inserted,
    Deleted,
    Reordered,
    Truncated,
    Forked,
    /// A checkpoint whose signature does not verify, is by another key, or is for another log.
    Forged,
    /// Entries with no signed checkpoint at all (the checkpoints were removed).
    Unsigned,
    /// A bundle with nothing in it.
    Empty,
    /// The run's logs.jsonl differs from the `log_chunk` records (see logs.rs).
    LogsModified,
}

impl FaultKind {
    pub fn as_str(self) -> &'static str {
        match self {
            FaultKind::Modified => "modified",
            FaultKind::Inserted => "inserted",
            FaultKind::Deleted => "deleted",
            FaultKind::Reordered => "reordered",
            FaultKind::Truncated => "truncated",
            FaultKind::Forked => "forked",
            FaultKind::Forged => "forged",
            FaultKind::Unsigned => "unsigned",
            FaultKind::Empty => "empty",
            FaultKind::LogsModified => "logs_modified",
        }
    }
}

#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Fault {
    pub kind: FaultKind,
    /// The first bad entry (its position in the log), when one can be named.
    pub entry: Option<u64>,
    /// The checkpoint involved (0-based, in file order), if any.
    pub checkpoint: Option<usize>,
    pub detail: String,
}

impl std::fmt::Display for Fault {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "{}", self.kind.as_str())?;
        if let Some(e) = self.entry {
            write!(f, " at entry {e}")?;
        }
        write!(f, ": {}", self.detail)
    }
}

#[derive(Clone, Debug, Default)]
pub struct Report {
    /// Lines in the log (complete ones).
    pub entries: u64,
    pub first_ts: Option<String>,
    pub last_ts: Option<String>,
    /// The latest good checkpoint: its size and root.
    pub tree_size: Option<u64>,
    pub root: Option<Hash>,
    pub checkpoints: usize,
    /// Entries after the latest checkpoint (not yet signed).
    pub unverified_tail: u64,
    pub notes: Vec<String>,
    pub fault: Option<Fault>,
}

impl Report {
    pub fn intact(&self) -> bool {
        self.fault.is_none()
    }
}

/// What the appender needs to continue a log.
#[derive(Clone, Debug, Default)]
pub struct State {
    pub frontier: Frontier,
    pub last_leaf: Hash,
    pub count: u64,
    pub last_checkpoint_size: Option<u64>,
}

struct Cp {
    opened: Result<Checkpoint, NoteError>,
}

pub struct Verifier<'k> {
    key: &'k VerifierKey,
    origin: String,
    cps: Vec<Cp>,
    want: Vec<u64>,
    next_want: usize,
    log_roots: HashMap<u64, Hash>,
    frontier: Frontier,
    last_leaf: Hash,
    last_prev: Option<Hash>,
    count: u64,
    first_ts: Option<String>,
    last_ts: Option<String>,
    fault_at: Option<u64>,
    after: Vec<LineInfo>,
    keep_leaves: bool,
    pub leaves: Vec<Hash>,
}

impl<'k> Verifier<'k> {
    /// `notes` are the signed checkpoints in file order; `origin` the log's origin line.
    pub fn new(origin: &str, notes: &[&str], key: &'k VerifierKey) -> Self {
        let cps: Vec<Cp> = notes
            .iter()
            .map(|n| Cp {
                opened: note::open_checkpoint(n, key),
            })
            .collect();
        let mut want: Vec<u64> = cps
            .iter()
            .filter_map(|c| c.opened.as_ref().ok().map(|c| c.size))
            .filter(|s| *s > 0)
            .collect();
        want.sort_unstable();
        want.dedup();
        Verifier {
            key,
            origin: origin.to_string(),
            cps,
            want,
            next_want: 0,
            log_roots: HashMap::new(),
            frontier: Frontier::new(),
            last_leaf: ZERO,
            last_prev: None,
            count: 0,
            first_ts: None,
            last_ts: None,
            fault_at: None,
            after: Vec::new(),
            keep_leaves: false,
            leaves: Vec::new(),
        }
    }

    /// Keep every leaf hash (for building proofs).
    pub fn keep_leaves(mut self) -> Self {
        self.keep_leaves = true;
        self
    }

    pub fn key(&self) -> &VerifierKey {
        self.key
    }

    pub fn feed(&mut self, info: LineInfo) {
        if self.fault_at.is_some() {
            self.after.push(info);
            return;
        }
        let ok = info.valid && info.seq == Some(self.count) && info.prev == Some(self.last_leaf);
        if !ok {
            self.fault_at = Some(self.count);
            self.after.push(info);
            return;
        }
        self.frontier.push(info.leaf);
        if self.keep_leaves {
            self.leaves.push(info.leaf);
        }
        self.count += 1;
        if self.next_want < self.want.len() && self.want[self.next_want] == self.count {
            self.log_roots.insert(self.count, self.frontier.root());
            self.next_want += 1;
        }
        self.last_leaf = info.leaf;
        self.last_prev = info.prev;
        if self.first_ts.is_none() {
            self.first_ts = info.ts.clone();
        }
        self.last_ts = info.ts;
    }

    pub fn feed_all(&mut self, infos: impl IntoIterator<Item = LineInfo>) {
        for i in infos {
            self.feed(i);
        }
    }

    /// Finish. `torn_tail` is the length of an incomplete last line that was not fed;
    /// `torn_checkpoint` says the checkpoints file ends in an incomplete note.
    pub fn finish(self, torn_tail: Option<usize>, torn_checkpoint: bool) -> (Report, State) {
        let mut r = Report {
            entries: self.count + self.after.len() as u64,
            first_ts: self.first_ts.clone(),
            last_ts: self.last_ts.clone(),
            checkpoints: self.cps.len(),
            ..Report::default()
        };
        if let Some(n) = torn_tail {
            r.notes.push(format!(
                "the last line is incomplete ({n} bytes, left by a crash while writing) and is not part of the log"
            ));
        }
        if torn_checkpoint {
            r.notes.push(
                "the checkpoints file ends in an incomplete checkpoint (a crash while writing); it is ignored"
                    .into(),
            );
        }
        let good: Vec<(usize, &Checkpoint)> = self
            .cps
            .iter()
            .enumerate()
            .filter_map(|(i, c)| c.opened.as_ref().ok().map(|c| (i, c)))
            .collect();
        if let Some((_, latest)) = good.iter().max_by_key(|(i, c)| (c.size, *i)) {
            r.tree_size = Some(latest.size);
            r.root = Some(latest.root);
            r.unverified_tail = self.count.saturating_sub(latest.size);
        }
        let state = State {
            frontier: self.frontier.clone(),
            last_leaf: self.last_leaf,
            count: self.count,
            last_checkpoint_size: r.tree_size,
        };
        r.fault = self.find_fault(&good);
        if r.fault.is_none() && r.unverified_tail > 0 {
            r.notes.push(format!(
                "{} entr{} after the latest checkpoint {} not signed yet (unverified tail)",
                r.unverified_tail,
                if r.unverified_tail == 1 { "y" } else { "ies" },
                if r.unverified_tail == 1 { "is" } else { "are" },
            ));
        }
        (r, state)
    }

    fn find_fault(&self, good: &[(usize, &Checkpoint)]) -> Option<Fault> {
        if let Some(i) = self.fault_at {
            return Some(self.classify(i));
        }
        for (k, c) in self.cps.iter().enumerate() {
            match &c.opened {
                Err(e) => {
                    return Some(Fault {
                        kind: FaultKind::Forged,
                        entry: None,
                        checkpoint: Some(k),
                        detail: format!("checkpoint {k}: {e} (pinned key {})", self.key),
                    });
                }
                Ok(cp) if cp.origin != self.origin => {
                    return Some(Fault {
                        kind: FaultKind::Forged,
                        entry: None,
                        checkpoint: Some(k),
                        detail: format!(
                            "checkpoint {k} is for another log ({:?}, not {:?})",
                            cp.origin, self.origin
                        ),
                    });
                }
                Ok(_) => {}
            }
        }
        if good.is_empty() && self.count > 0 {
            return Some(Fault {
                kind: FaultKind::Unsigned,
                entry: None,
                checkpoint: None,
                detail: format!(
                    "{} entries and no signed checkpoint: the checkpoints were removed",
                    self.count
                ),
            });
        }
        if let Some((k, cp)) = good
            .iter()
            .filter(|(_, c)| c.size > self.count)
            .max_by_key(|(_, c)| c.size)
        {
            return Some(Fault {
                kind: FaultKind::Truncated,
                entry: Some(self.count),
                checkpoint: Some(*k),
                detail: format!(
                    "checkpoint {k} covers {} entries but the log has {}",
                    cp.size, self.count
                ),
            });
        }
        let root_at = |s: u64| -> Hash {
            if s == 0 {
                empty_root()
            } else {
                self.log_roots[&s]
            }
        };
        let mut bad: Vec<(usize, &Checkpoint)> = good
            .iter()
            .filter(|(_, c)| root_at(c.size) != c.root)
            .copied()
            .collect();
        bad.sort_by_key(|(i, c)| (c.size, *i));
        let (k, cp) = *bad.first()?;
        // A checkpoint at or beyond this size that agrees with the log, or another one of
        // the same size with a different root: the signer signed two different histories.
        let agreeing = good
            .iter()
            .filter(|(_, c)| c.size >= cp.size && root_at(c.size) == c.root)
            .min_by_key(|(i, c)| (c.size, *i));
        let twin = good
            .iter()
            .find(|(_, c)| c.size == cp.size && c.root != cp.root);
        if let Some((j, other)) = agreeing.or(twin) {
            return Some(Fault {
                kind: FaultKind::Forked,
                entry: None,
                checkpoint: Some(k),
                detail: format!(
                    "checkpoints {k} (size {}, root {}) and {j} (size {}, root {}) are not one history",
                    cp.size,
                    moat_core::hex(&cp.root),
                    other.size,
                    moat_core::hex(&other.root)
                ),
            });
        }
        let lo = good
            .iter()
            .filter(|(_, c)| c.size < cp.size && root_at(c.size) == c.root)
            .map(|(_, c)| c.size)
            .max()
            .unwrap_or(0);
        Some(Fault {
            kind: FaultKind::Modified,
            entry: Some(lo),
            checkpoint: Some(k),
            detail: format!(
                "the log's root at size {} differs from checkpoint {k}: an entry in {lo}..{} was changed",
                cp.size,
                cp.size - 1
            ),
        })
    }

    /// Name the first break in the chain at position `i`.
    fn classify(&self, i: u64) -> Fault {
        let l = &self.after[0];
        let n = self.after.get(1);
        let m = self.after.get(2);
        let fault = |kind, entry: u64, detail: String| Fault {
            kind,
            entry: Some(entry),
            checkpoint: None,
            detail,
        };
        if !l.valid {
            return fault(
                FaultKind::Modified,
                i,
                format!("line {} is not a valid entry", i + 1),
            );
        }
        let s = l.seq.expect("valid entries have a seq");
        let chains_from = |x: Option<&LineInfo>, h: &Hash| x.is_some_and(|x| x.prev == Some(*h));
        if s == i {
            // Right number, wrong link: the entry before changed (its hash no longer
            // matches), unless the chain also breaks after this one (this one changed).
            if i > 0 && (n.is_none() || chains_from(n, &l.leaf)) {
                return fault(
                    FaultKind::Modified,
                    i - 1,
                    format!("entry {} does not hash to the prev of entry {i}", i - 1),
                );
            }
            return fault(
                FaultKind::Modified,
                i,
                format!("entry {i} does not link to the entry before it"),
            );
        }
        if s < i {
            if s + 1 == i && l.prev == self.last_prev && (n.is_none() || chains_from(n, &l.leaf)) {
                return fault(
                    FaultKind::Inserted,
                    i - 1,
                    format!(
                        "two entries claim seq {s}; the log continues from the second, so line {i} was inserted"
                    ),
                );
            }
            if n.is_some_and(|n| n.seq == Some(i)) && chains_from(n, &self.last_leaf) {
                return fault(
                    FaultKind::Inserted,
                    i,
                    format!("line {} (seq {s}) does not belong in the chain", i + 1),
                );
            }
            if n.is_some_and(|n| n.seq == Some(i + 1)) {
                return fault(FaultKind::Modified, i, format!("entry {i} has seq {s}"));
            }
            return fault(
                FaultKind::Inserted,
                i,
                format!("line {} (seq {s}) repeats an earlier entry", i + 1),
            );
        }
        // s > i: the entry expected here is missing from this place.
        if n.is_some_and(|n| n.seq == Some(i)) && chains_from(n, &self.last_leaf) {
            if m.is_some_and(|m| m.prev == Some(n.expect("checked").leaf)) {
                return fault(
                    FaultKind::Inserted,
                    i,
                    format!("line {} (seq {s}) does not belong in the chain", i + 1),
                );
            }
            return fault(
                FaultKind::Reordered,
                i,
                format!("entries {i} and {s} are out of order"),
            );
        }
        if let Some(p) = self.after.iter().position(|x| x.valid && x.seq == Some(i)) {
            return fault(
                FaultKind::Reordered,
                i,
                format!("entry {i} appears at line {}", i + p as u64 + 1),
            );
        }
        if n.is_some_and(|n| n.seq == Some(i + 1)) {
            return fault(FaultKind::Modified, i, format!("entry {i} has seq {s}"));
        }
        let gone = s - i;
        fault(
            FaultKind::Deleted,
            i,
            if gone == 1 {
                format!("entry {i} is missing")
            } else {
                format!("entries {i}..{} are missing", s - 1)
            },
        )
    }
}

/// Parse lines on every core: the expensive part (JSON, canonical form, SHA-256) is per line
/// and independent; the chain and the tree are then folded in order by the caller.
pub fn parse_lines(lines: &[&[u8]]) -> Vec<LineInfo> {
    let threads = std::thread::available_parallelism()
        .map(|n| n.get())
        .unwrap_or(1)
        .min(8);
    if threads <= 1 || lines.len() < 2048 {
        return lines.iter().map(|l| crate::entry::parse_line(l)).collect();
    }
    let per = lines.len().div_ceil(threads);
    std::thread::scope(|s| {
        let handles: Vec<_> = lines
            .chunks(per)
            .map(|c| {
                s.spawn(move || {
                    c.iter()
                        .map(|l| crate::entry::parse_line(l))
                        .collect::<Vec<_>>()
                })
            })
            .collect();
        let mut out = Vec::with_capacity(lines.len());
        for h in handles {
            out.extend(h.join().expect("a parser thread panicked"));
        }
        out
    })
}

/// Feed a log from a reader in large blocks. Returns the byte length of an incomplete last
/// line (not fed), if any.
pub fn feed_reader(v: &mut Verifier, r: &mut impl std::io::Read) -> std::io::Result<Option<usize>> {
    const BLOCK: usize = 8 << 20;
    let mut buf: Vec<u8> = Vec::with_capacity(BLOCK * 2);
    let mut eof = false;
    while !eof {
        let start = buf.len();
        buf.resize(start + BLOCK, 0);
        let mut filled = start;
        while filled < buf.len() {
            match r.read(&mut buf[filled..]) {
                Ok(0) => {
                    eof = true;
                    break;
                }
                Ok(k) => filled += k,
                Err(e) if e.kind() == std::io::ErrorKind::Interrupted => {}
                Err(e) => return Err(e),
            }
        }
        buf.truncate(filled);
        let Some(last_nl) = buf.iter().rposition(|&b| b == b'\n') else {
            continue;
        };
        let lines: Vec<&[u8]> = buf[..last_nl].split(|&b| b == b'\n').collect();
        v.feed_all(parse_lines(&lines));
        buf.drain(..=last_nl);
    }
    Ok(if buf.is_empty() {
        None
    } else {
        Some(buf.len())
    })
}

/// Verify a log held in memory (tests, bundles).
pub fn verify_bytes(log: &[u8], checkpoints: &str, origin: &str, key: &VerifierKey) -> Report {
    let (notes, torn_cp) = note::split_checkpoints_file(checkpoints);
    let mut v = Verifier::new(origin, &notes, key);
    let torn = feed_reader(&mut v, &mut &log[..]).expect("reading memory cannot fail");
    v.finish(torn, torn_cp.is_some()).0
}
