//! RFC 6962 / RFC 9162 Merkle tree: leaf `SHA-256(0x00 || entry)`, node
//! `SHA-256(0x01 || left || right)`, the split at the largest power of two below the size
//! (never an odd node duplicated). A [`Frontier`] keeps only the right edge so that an
//! append is O(log n); proofs are built from the leaf hashes and checked by the RFC 9162
//! algorithms, which reject every hash that is not exactly 32 bytes.

use sha2::{Digest, Sha256};

pub type Hash = [u8; 32];

/// Proofs longer than this are refused before any work: a tree of 2^64 leaves needs 64.
pub const MAX_PROOF: usize = 64;

pub fn leaf_hash(entry: &[u8]) -> Hash {
    let mut h = Sha256::new();
    h.update([0u8]);
    h.update(entry);
    h.finalize().into()
}

pub fn node_hash(l: &Hash, r: &Hash) -> Hash {
    let mut buf = [0u8; 65];
    buf[0] = 1;
    buf[1..33].copy_from_slice(l);
    buf[33..].copy_from_slice(r);
    Sha256::digest(buf).into()
}

pub fn empty_root() -> Hash {
    Sha256::digest([]).into()
}

/// The right edge of the tree: the roots of its perfect subtrees, largest first.
#[derive(Clone, Debug, Default)]
pub struct Frontier {
    size: u64,
    stack: Vec<Hash>,
}

impl Frontier {
    pub fn new() -> Self {
        Self::default()
    }
    pub fn size(&self) -> u64 {
        self.size
    }
    pub fn push(&mut self, leaf: Hash) {
        let mut h = leaf;
        let mut n = self.size;
        while n & 1 == 1 {
            let l = self.stack.pop().expect("frontier matches its size");
            h = node_hash(&l, &h);
            n >>= 1;
        }
        self.stack.push(h);
        self.size += 1;
    }
    pub fn root(&self) -> Hash {
        let mut it = self.stack.iter().rev();
        let Some(first) = it.next() else {
            return empty_root();
        };
        let mut h = *first;
        for l in it {
            h = node_hash(l, &h);
        }
        h
    }
}

/// The largest power of two strictly below `n` (n >= 2).
fn split(n: usize) -> usize {
    debug_assert!(n >= 2);
    1 << (usize::BITS - 1 - (n - 1).leading_zeros())
}

/// MTH(D[n]) over leaf hashes.
pub fn root_of(leaves: &[Hash]) -> Hash {
    let mut f = Frontier::new();
    for l in leaves {
        f.push(*l);
    }
    f.root()
}

/// Every level of a tree, so that the root of any aligned range (what proofs need) costs
/// O(log n) instead of O(n). Memory: about two hashes per leaf.
pub struct Tree {
    levels: Vec<Vec<Hash>>,
}

impl Tree {
    pub fn new(leaves: Vec<Hash>) -> Self {
        let mut levels = vec![leaves];
        while levels.last().is_some_and(|l| l.len() > 1) {
            let below = levels.last().expect("non-empty");
            let up: Vec<Hash> = below
                .chunks_exact(2)
                .map(|p| node_hash(&p[0], &p[1]))
                .collect();
            levels.push(up);
        }
        Tree { levels }
    }

    pub fn size(&self) -> usize {
        self.levels[0].len()
    }

    /// MTH(D[a..b]) for a range whose start is aligned to its largest power-of-two part,
    /// as every range in the RFC 6962 recursion is.
    pub fn range_root(&self, a: usize, b: usize) -> Hash {
        if a == b {
            return empty_root();
        }
        let mut parts = Vec::new();
        let mut pos = a;
        while pos < b {
            let mut p = 1usize << (usize::BITS - 1 - (b - pos).leading_zeros());
            while !pos.is_multiple_of(p) {
                p >>= 1;
            }
            let lvl = p.trailing_zeros() as usize;
            parts.push(self.levels[lvl][pos / p]);
            pos += p;
        }
        let mut it = parts.iter().rev();
        let mut h = *it.next().expect("non-empty range");
        for l in it {
            h = node_hash(l, &h);
        }
        h
    }

    /// RFC 6962 PATH(m, D[n]): the inclusion proof of leaf `m` in the tree of the first `n`.
    pub fn inclusion_proof(&self, m: usize, n: usize) -> Vec<Hash> {
        assert!(m < n && n <= self.size());
        let mut out = Vec::new();
        self.path(m, 0, n, &mut out);
        out
    }

    fn path(&self, m: usize, o: usize, n: usize, out: &mut Vec<Hash>) {
        if n <= 1 {
            return;
        }
        let k = split(n);
        if m < k {
            self.path(m, o, k, out);
            out.push(self.range_root(o + k, o + n));
        } else {
            self.path(m - k, o + k, n - k, out);
            out.push(self.range_root(o, o + k));
        }
    }

    /// RFC 6962 PROOF(m, D[n]): the consistency proof from the first `m` leaves to `n`.
    pub fn consistency_proof(&self, m: usize, n: usize) -> Vec<Hash> {
        assert!(m <= n && n <= self.size());
        let mut out = Vec::new();
        if m > 0 && m < n {
            self.subproof(m, 0, n, true, &mut out);
        }
        out
    }

    fn subproof(&self, m: usize, o: usize, n: usize, whole: bool, out: &mut Vec<Hash>) {
        if m == n {
            if !whole {
                out.push(self.range_root(o, o + n));
            }
            return;
        }
        let k = split(n);
        if m <= k {
            self.subproof(m, o, k, whole, out);
            out.push(self.range_root(o + k, o + n));
        } else {
            self.subproof(m - k, o + k, n - k, false, out);
            out.push(self.range_root(o, o + k));
        }
    }
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub enum ProofError {
    BadLength,
    TooLong,
    OutOfRange,
    Mismatch,
    Malformed,
}

impl std::fmt::Display for ProofError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(match self {
            ProofError::BadLength => "a hash is not 32 bytes",
            ProofError::TooLong => "the proof has too many hashes",
            ProofError::OutOfRange => "the index is outside the tree",
            ProofError::Mismatch => "the proof does not lead to the root",
            ProofError::Malformed => "the proof has the wrong number of hashes",
        })
    }
}

fn h32(b: &[u8]) -> Result<Hash, ProofError> {
    b.try_into().map_err(|_| ProofError::BadLength)
}

/// RFC 9162 §2.1.3.2: verify that `leaf` is at `index` in the tree of `size` with `root`.
pub fn verify_inclusion(
    index: u64,
    size: u64,
    leaf: &[u8],
    proof: &[impl AsRef<[u8]>],
    root: &[u8],
) -> Result<(), ProofError> {
    let leaf = h32(leaf)?;
    let root = h32(root)?;
    if proof.len() > MAX_PROOF {
        return Err(ProofError::TooLong);
    }
    if index >= size {
        return Err(ProofError::OutOfRange);
    }
    let (mut fnode, mut snode) = (index, size - 1);
    let mut r = leaf;
    for p in proof {
        let p = h32(p.as_ref())?;
        if snode == 0 {
            return Err(ProofError::Malformed);
        }
        if fnode & 1 == 1 || fnode == snode {
            r = node_hash(&p, &r);
            if fnode & 1 == 0 {
                while fnode & 1 == 0 && fnode != 0 {
                    fnode >>= 1;
                    snode >>= 1;
                }
            }
        } else {
            r = node_hash(&r, &p);
        }
        fnode >>= 1;
        snode >>= 1;
    }
    if snode != 0 {
        return Err(ProofError::Malformed);
    }
    if r != root {
        return Err(ProofError::Mismatch);
    }
    Ok(())
}

/// RFC 9162 §2.1.4.2: verify that the tree of `size1` with `root1` is a prefix of the tree
/// of `size2` with `root2`. A first tree of size 0 is a prefix of anything (empty proof).
pub fn verify_consistency(
    size1: u64,
    size2: u64,
    proof: &[impl AsRef<[u8]>],
    root1: &[u8],
    root2: &[u8],
) -> Result<(), ProofError> {
    let root1 = h32(root1)?;
    let root2 = h32(root2)?;
    if proof.len() > MAX_PROOF {
        return Err(ProofError::TooLong);
    }
    let mut hashes = Vec::with_capacity(proof.len() + 1);
    for p in proof {
        hashes.push(h32(p.as_ref())?);
    }
    if size2 < size1 {
        return Err(ProofError::OutOfRange);
    }
    if size1 == size2 {
        if !hashes.is_empty() {
            return Err(ProofError::Malformed);
        }
        return if root1 == root2 {
            Ok(())
        } else {
            Err(ProofError::Mismatch)
        };
    }
    if size1 == 0 {
        return if hashes.is_empty() {
            Ok(())
        } else {
            Err(ProofError::Malformed)
        };
    }
    if hashes.is_empty() {
        return Err(ProofError::Malformed);
    }
    if size1.is_power_of_two() {
        hashes.insert(0, root1);
    }
    let (mut fnode, mut snode) = (size1 - 1, size2 - 1);
    while fnode & 1 == 1 {
        fnode >>= 1;
        snode >>= 1;
    }
    let (mut fr, mut sr) = (hashes[0], hashes[0]);
    for c in &hashes[1..] {
        if snode == 0 {
            return Err(ProofError::Malformed);
        }
        if fnode & 1 == 1 || fnode == snode {
            fr = node_hash(c, &fr);
            sr = node_hash(c, &sr);
            if fnode & 1 == 0 {
                while fnode & 1 == 0 && fnode != 0 {
                    fnode >>= 1;
                    snode >>= 1;
                }
            }
        } else {
            sr = node_hash(&sr, c);
        }
        fnode >>= 1;
        snode >>= 1;
    }
    if snode != 0 {
        return Err(ProofError::Malformed);
    }
    if fr != root1 || sr != root2 {
        return Err(ProofError::Mismatch);
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    /// The RFC 6962 definition, written as plainly as possible, to check the rest against.
    fn naive_root(d: &[Hash]) -> Hash {
        match d.len() {
            0 => empty_root(),
            1 => d[0],
            n => {
                let k = split(n);
                node_hash(&naive_root(&d[..k]), &naive_root(&d[k..]))
            }
        }
    }

    fn leaves(n: usize) -> Vec<Hash> {
        (0..n).map(|i| leaf_hash(&i.to_be_bytes())).collect()
    }

    #[test]
    fn frontier_matches_the_definition() {
        let d = leaves(70);
        let mut f = Frontier::new();
        assert_eq!(f.root(), empty_root());
        for (i, l) in d.iter().enumerate() {
            f.push(*l);
            assert_eq!(f.root(), naive_root(&d[..=i]), "size {}", i + 1);
        }
    }

    #[test]
    fn every_proof_verifies_and_a_wrong_one_does_not() {
        let d = leaves(33);
        for n in 1..=d.len() {
            let root = naive_root(&d[..n]);
            let t = Tree::new(d[..n].to_vec());
            assert_eq!(t.range_root(0, n), root);
            #[allow(clippy::needless_range_loop)]
            for m in 0..n {
                let p = t.inclusion_proof(m, n);
                verify_inclusion(m as u64, n as u64, &d[m], &p, &root).unwrap();
                let wrong = (m + 1) % n;
                if wrong != m {
                    assert!(verify_inclusion(wrong as u64, n as u64, &d[m], &p, &root).is_err());
                }
            }
            for m in 0..=n {
                let p = t.consistency_proof(m, n);
                let r1 = naive_root(&d[..m]);
                verify_consistency(m as u64, n as u64, &p, &r1, &root).unwrap();
                if m > 0 && m < n {
                    let other = naive_root(&d[1..m + 1]);
                    assert!(verify_consistency(m as u64, n as u64, &p, &other, &root).is_err());
                }
            }
        }
    }
}
