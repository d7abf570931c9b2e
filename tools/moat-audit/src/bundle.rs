//! Proof bundles: everything needed to check a run's log offline. A complete bundle carries
//! every entry (the verifier rebuilds the chain and the tree); a selective one carries chosen
//! entries, each with an inclusion proof against the latest checkpoint. Both carry the signed
//! checkpoints and the consistency proofs that join them. The verifier key inside is for
//! reference only: trust comes from a key the user pins.

use crate::entry::{self, LineInfo};
use crate::merkle::{self, Hash, Tree};
use crate::note::{self, Checkpoint, VerifierKey};
use crate::store;
use crate::verify::{self, Fault, FaultKind, Report, Verifier};
use base64::Engine as _;
use base64::engine::general_purpose::STANDARD as B64;
use moat_core::{Error, MoatHome, Result};
use serde::{Deserialize, Serialize};
use serde_json::Value;

pub const BUNDLE_TYPE: &str = "audit_bundle";
/// Bundles larger than this are refused before parsing.
pub const MAX_BUNDLE: u64 = 4 << 30;

#[derive(Serialize, Deserialize, Debug)]
#[serde(deny_unknown_fields)]
pub struct Bundle {
    pub v: u64,
    #[serde(rename = "type")]
    pub kind: String,
    pub origin: String,
    pub created: String,
    /// The signer's verifier key, for reference; not trusted unless asked.
    pub verifier_key: String,
    /// Every entry of the log up to `entries.len()`, in order (no inclusion proofs needed).
    pub complete: bool,
    pub checkpoints: Vec<String>,
    pub consistency: Vec<ConsistencyProof>,
    pub entries: Vec<BundleEntry>,
}

#[derive(Serialize, Deserialize, Debug)]
#[serde(deny_unknown_fields)]
pub struct ConsistencyProof {
    pub size1: u64,
    pub size2: u64,
    pub proof: Vec<String>,
}

#[derive(Serialize, Deserialize, Debug)]
#[serde(deny_unknown_fields)]
pub struct BundleEntry {
    pub index: u64,
    pub entry: Value,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub inclusion: Option<Inclusion>,
}

#[derive(Serialize, Deserialize, Debug)]
#[serde(deny_unknown_fields)]
pub struct Inclusion {
    pub tree_size: u64,
    pub proof: Vec<String>,
}

fn b64s(hs: &[Hash]) -> Vec<String> {
    hs.iter().map(|h| B64.encode(h)).collect()
}

/// Build a bundle from a run's log, which must verify first.
pub fn export(home: &MoatHome, run: &str, select: Option<&[u64]>) -> Result<Bundle> {
    let key = store::pinned_key(home)?.ok_or_else(no_key_error)?;
    // Checkpoints first, then the log: a writer still appending makes the log durable
    // before it signs, so the log read second always holds what those checkpoints cover.
    let cp_path = store::checkpoints_path(home, run);
    let cps = match std::fs::read_to_string(&cp_path) {
        Ok(s) => s,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => String::new(),
        Err(e) => return Err(Error::io(format!("reading {}", cp_path.display()), e)),
    };
    let log_path = store::log_path(home, run);
    let log = std::fs::read(&log_path)
        .map_err(|e| Error::io(format!("reading {}", log_path.display()), e))?;
    let (notes, torn_cp) = note::split_checkpoints_file(&cps);
    let origin = store::origin(run);
    let mut v = Verifier::new(&origin, &notes, &key).keep_leaves();
    let torn = verify::feed_reader(&mut v, &mut &log[..]).expect("memory reads cannot fail");
    let leaves = std::mem::take(&mut v.leaves);
    let (report, _) = v.finish(torn, torn_cp.is_some());
    if let Some(f) = report.fault {
        return Err(Error::no(format!(
            "run {run}: the log fails verification ({f}); not exporting it"
        )));
    }
    let good: Vec<(&str, Checkpoint)> = notes
        .iter()
        .map(|n| (*n, note::open_checkpoint(n, &key).expect("verified above")))
        .collect();
    if good.is_empty() {
        return Err(Error::no(format!(
            "run {run} has no signed checkpoint to export"
        )));
    }
    let latest = good.iter().map(|(_, c)| c.size).max().unwrap_or(0);
    let mut sizes: Vec<u64> = good.iter().map(|(_, c)| c.size).collect();
    sizes.sort_unstable();
    sizes.dedup();
    let tree = Tree::new(leaves);
    let consistency = sizes
        .windows(2)
        .map(|w| ConsistencyProof {
            size1: w[0],
            size2: w[1],
            proof: b64s(&tree.consistency_proof(w[0] as usize, w[1] as usize)),
        })
        .collect();
    let lines: Vec<&[u8]> = log.split(|&b| b == b'\n').take(tree.size()).collect();
    let parse = |i: usize| -> Result<Value> {
        serde_json::from_slice(lines[i]).map_err(|e| Error::software(format!("entry {i}: {e}")))
    };
    let entries = match select {
        None => (0..tree.size())
            .map(|i| {
                Ok(BundleEntry {
                    index: i as u64,
                    entry: parse(i)?,
                    inclusion: None,
                })
            })
            .collect::<Result<Vec<_>>>()?,
        Some(idx) => idx
            .iter()
            .map(|&i| {
                if i >= latest {
                    return Err(Error::usage(format!(
                        "entry {i} is not covered by a checkpoint (the latest covers {latest} entries)"
                    )));
                }
                Ok(BundleEntry {
                    index: i,
                    entry: parse(i as usize)?,
                    inclusion: Some(Inclusion {
                        tree_size: latest,
                        proof: b64s(&tree.inclusion_proof(i as usize, latest as usize)),
                    }),
                })
            })
            .collect::<Result<Vec<_>>>()?,
    };
    Ok(Bundle {
        v: 1,
        kind: BUNDLE_TYPE.into(),
        origin,
        created: moat_core::timefmt::now_rfc3339(),
        verifier_key: key.to_string(),
        complete: select.is_none(),
        checkpoints: good.iter().map(|(n, _)| n.to_string()).collect(),
        consistency,
        entries,
    })
}

pub fn no_key_error() -> Error {
    Error::no("no pinned key to verify against").with_hint(
        "pin the signer's key: pass --key NAME+KEYID+BASE64 (or a file holding it; the signer \
         prints it with `moat-audit key`), or put it in $MOAT_HOME/audit/signing.pub; \
         --trust-bundle-key trusts the key inside the bundle, which proves nothing about who signed it",
    )
}

fn fault(kind: FaultKind, entry: Option<u64>, checkpoint: Option<usize>, detail: String) -> Fault {
    Fault {
        kind,
        entry,
        checkpoint,
        detail,
    }
}

fn decode_proof(p: &[String]) -> std::result::Result<Vec<Vec<u8>>, String> {
    if p.len() > merkle::MAX_PROOF {
        return Err(format!(
            "{} hashes (at most {})",
            p.len(),
            merkle::MAX_PROOF
        ));
    }
    p.iter()
        .map(|h| {
            B64.decode(h)
                .map_err(|_| "a hash is not base64".to_string())
        })
        .collect()
}

/// Verify a bundle against the pinned key.
pub fn verify(b: &Bundle, key: &VerifierKey) -> Report {
    let mut r = Report {
        entries: b.entries.len() as u64,
        checkpoints: b.checkpoints.len(),
        ..Report::default()
    };
    r.fault = check(b, key, &mut r).err();
    r
}

fn check(b: &Bundle, key: &VerifierKey, r: &mut Report) -> std::result::Result<(), Fault> {
    if b.v != 1 || b.kind != BUNDLE_TYPE {
        return Err(fault(
            FaultKind::Empty,
            None,
            None,
            format!(
                "not a version 1 {BUNDLE_TYPE} (type {:?}, v {})",
                b.kind, b.v
            ),
        ));
    }
    if b.checkpoints.is_empty() || b.entries.is_empty() {
        return Err(fault(
            FaultKind::Empty,
            None,
            None,
            "the bundle has no checkpoints or no entries: there is nothing to verify".into(),
        ));
    }
    // Every checkpoint: signed by the pinned key, for this bundle's log.
    let mut cps: Vec<(usize, Checkpoint)> = Vec::new();
    for (k, n) in b.checkpoints.iter().enumerate() {
        match note::open_checkpoint(n, key) {
            Ok(c) if c.origin == b.origin => cps.push((k, c)),
            Ok(c) => {
                return Err(fault(
                    FaultKind::Forged,
                    None,
                    Some(k),
                    format!("checkpoint {k} is for another log ({:?})", c.origin),
                ));
            }
            Err(e) => {
                return Err(fault(
                    FaultKind::Forged,
                    None,
                    Some(k),
                    format!("checkpoint {k}: {e} (pinned key {key})"),
                ));
            }
        }
    }
    cps.sort_by_key(|(k, c)| (c.size, *k));
    // Successive checkpoints must be one growing tree.
    for w in cps.windows(2) {
        let ((ka, a), (kb, bb)) = (&w[0], &w[1]);
        let forked = |why: String| {
            fault(
                FaultKind::Forked,
                None,
                Some(*kb),
                format!(
                    "checkpoints {ka} (size {}, root {}) and {kb} (size {}, root {}): {why}",
                    a.size,
                    moat_core::hex(&a.root),
                    bb.size,
                    moat_core::hex(&bb.root)
                ),
            )
        };
        if a.size == bb.size {
            if a.root != bb.root {
                return Err(forked("same size, different roots".into()));
            }
            continue;
        }
        let Some(p) = b
            .consistency
            .iter()
            .find(|p| p.size1 == a.size && p.size2 == bb.size)
        else {
            return Err(forked("no consistency proof joins them".into()));
        };
        let proof = decode_proof(&p.proof).map_err(|e| forked(format!("bad proof: {e}")))?;
        merkle::verify_consistency(a.size, bb.size, &proof, &a.root, &bb.root)
            .map_err(|e| forked(format!("consistency proof fails: {e}")))?;
    }
    let (_, latest) = cps.last().expect("non-empty");
    r.tree_size = Some(latest.size);
    r.root = Some(latest.root);

    if b.complete {
        let notes: Vec<&str> = b.checkpoints.iter().map(String::as_str).collect();
        let mut v = Verifier::new(&b.origin, &notes, key);
        for (i, e) in b.entries.iter().enumerate() {
            if e.index != i as u64 {
                return Err(fault(
                    FaultKind::Reordered,
                    Some(i as u64),
                    None,
                    format!("bundle entry {i} has index {}", e.index),
                ));
            }
            v.feed(entry::info_from_value(&e.entry));
        }
        let (rep, _) = v.finish(None, false);
        r.first_ts = rep.first_ts;
        r.last_ts = rep.last_ts;
        r.unverified_tail = rep.unverified_tail;
        r.notes = rep.notes;
        return match rep.fault {
            Some(f) => Err(f),
            None => Ok(()),
        };
    }
    let mut first: Option<String> = None;
    let mut last: Option<String> = None;
    for e in &b.entries {
        let info: LineInfo = entry::info_from_value(&e.entry);
        let bad = |why: String| fault(FaultKind::Modified, Some(e.index), None, why);
        if !info.valid || info.seq != Some(e.index) {
            return Err(bad(format!(
                "entry {} is not a valid entry with seq {}",
                e.index, e.index
            )));
        }
        let Some(inc) = &e.inclusion else {
            return Err(bad(format!("entry {} has no inclusion proof", e.index)));
        };
        let Some((_, cp)) = cps.iter().find(|(_, c)| c.size == inc.tree_size) else {
            return Err(bad(format!(
                "entry {}'s proof is for a tree of {} entries, which no checkpoint signs",
                e.index, inc.tree_size
            )));
        };
        let proof = decode_proof(&inc.proof).map_err(|why| bad(format!("bad proof: {why}")))?;
        merkle::verify_inclusion(e.index, cp.size, &info.leaf, &proof, &cp.root).map_err(
            |why| {
                bad(format!(
                    "entry {} is not in the signed tree: {why}",
                    e.index
                ))
            },
        )?;
        if first.is_none() {
            first = info.ts.clone();
        }
        last = info.ts;
    }
    r.first_ts = first;
    r.last_ts = last;
    Ok(())
}

/// Read and parse a bundle file (`-` for stdin).
pub fn read(path: &str) -> Result<Bundle> {
    let bytes = if path == "-" {
        let mut b = Vec::new();
        std::io::Read::read_to_end(&mut std::io::stdin().lock(), &mut b)
            .map_err(|e| Error::io("reading stdin", e))?;
        b
    } else {
        let md = std::fs::metadata(path).map_err(|e| Error::io(format!("reading {path}"), e))?;
        if md.len() > MAX_BUNDLE {
            return Err(Error::data(format!("{path}: too large for a bundle")));
        }
        std::fs::read(path).map_err(|e| Error::io(format!("reading {path}"), e))?
    };
    match crate::jcs::has_duplicate_keys(&bytes) {
        Some(false) => {}
        Some(true) => {
            return Err(Error::data(format!(
                "{path}: not a bundle: an object has the same key twice"
            )));
        }
        None => {}
    }
    serde_json::from_slice(&bytes).map_err(|e| Error::data(format!("{path}: not a bundle: {e}")))
}
