//! Known-answer tests: the transparency-dev Merkle vectors and the RFC 6962 roots kept in
//! ../shared/vectors/merkle. Missing vectors fail the test; they are never skipped.

use base64::Engine as _;
use base64::engine::general_purpose::STANDARD as B64;
use moat_audit::merkle::{self, Frontier, leaf_hash};
use serde_json::Value;
use std::path::{Path, PathBuf};

/// The one case a strict verifier (32-byte hashes only) may reject; see the README there.
const EXCEPTION: &str = "consistency/additional/sizes-are-equal-one-and-proof-is-empty.json";

fn vectors_dir() -> PathBuf {
    let d = moat_testkit::shared_dir().join("vectors").join("merkle");
    assert!(
        d.join("testdata").is_dir(),
        "the Merkle test vectors are missing at {}; CI must provide ../shared/vectors/merkle",
        d.display()
    );
    d
}

fn json_files(dir: &Path, out: &mut Vec<PathBuf>) {
    for e in std::fs::read_dir(dir).unwrap() {
        let p = e.unwrap().path();
        if p.is_dir() {
            json_files(&p, out);
        } else if p.extension().is_some_and(|x| x == "json") {
            out.push(p);
        }
    }
    out.sort();
}

fn b(v: &Value) -> Vec<u8> {
    B64.decode(v.as_str().unwrap_or("")).expect("vector base64")
}

fn proof(v: &Value) -> Vec<Vec<u8>> {
    v.as_array()
        .map(|a| a.iter().map(b).collect())
        .unwrap_or_default()
}

fn load(p: &Path) -> Value {
    serde_json::from_slice(&std::fs::read(p).unwrap()).unwrap()
}

#[test]
fn inclusion_vectors() {
    let root = vectors_dir().join("testdata");
    let mut files = Vec::new();
    json_files(&root.join("inclusion"), &mut files);
    assert_eq!(files.len(), 98, "expected 98 inclusion vectors");
    let mut accepted = 0;
    for f in &files {
        let v = load(f);
        let got = merkle::verify_inclusion(
            v["leafIdx"].as_u64().unwrap(),
            v["treeSize"].as_u64().unwrap(),
            &b(&v["leafHash"]),
            &proof(&v["proof"]),
            &b(&v["root"]),
        );
        let want_err = v["wantErr"].as_bool().unwrap();
        assert_eq!(got.is_err(), want_err, "{}: {got:?}", f.display());
        accepted += usize::from(got.is_ok());
    }
    assert!(accepted > 0, "some vectors must be accepted");
}

#[test]
fn consistency_vectors() {
    let root = vectors_dir().join("testdata");
    let mut files = Vec::new();
    json_files(&root.join("consistency"), &mut files);
    assert_eq!(files.len(), 98, "expected 98 consistency vectors");
    let mut exceptions = 0;
    for f in &files {
        let v = load(f);
        let got = merkle::verify_consistency(
            v["size1"].as_u64().unwrap(),
            v["size2"].as_u64().unwrap(),
            &proof(&v["proof"]),
            &b(&v["root1"]),
            &b(&v["root2"]),
        );
        let want_err = v["wantErr"].as_bool().unwrap();
        let rel = f
            .strip_prefix(&root)
            .unwrap()
            .to_string_lossy()
            .into_owned();
        if rel == EXCEPTION {
            // Its roots are 12 bytes long; we accept only 32-byte hashes, as documented.
            assert!(!want_err);
            assert_eq!(got, Err(merkle::ProofError::BadLength), "{rel}");
            exceptions += 1;
            continue;
        }
        assert_eq!(got.is_err(), want_err, "{rel}: {got:?}");
    }
    assert_eq!(
        exceptions, 1,
        "the documented exception must be among the vectors"
    );
}

#[test]
fn rfc6962_roots() {
    let v = load(&vectors_dir().join("rfc6962-roots.json"));
    let leaves: Vec<Vec<u8>> = v["leaf_inputs_hex"]
        .as_array()
        .unwrap()
        .iter()
        .map(|h| unhex(h.as_str().unwrap()))
        .collect();
    let roots = v["roots_by_size_hex"].as_array().unwrap();
    assert_eq!(roots.len(), 9);
    let mut f = Frontier::new();
    let mut hashes = Vec::new();
    for (n, want) in roots.iter().enumerate() {
        assert_eq!(
            moat_core::hex(&f.root()),
            want.as_str().unwrap(),
            "root of {n} leaves"
        );
        if n > 0 {
            let t = merkle::Tree::new(hashes.clone());
            assert_eq!(moat_core::hex(&t.range_root(0, n)), want.as_str().unwrap());
        }
        if let Some(l) = leaves.get(n) {
            let h = leaf_hash(l);
            f.push(h);
            hashes.push(h);
        }
    }
}

fn unhex(s: &str) -> Vec<u8> {
    (0..s.len())
        .step_by(2)
        .map(|i| u8::from_str_radix(&s[i..i + 2], 16).unwrap())
        .collect()
}
