//! An entry of the log: `{"event":{...},"prev":HEX,"seq":N,"ts":RFC3339,"v":1}`, written as
//! one line of canonical JSON (RFC 8785). `seq` counts from 0 and is the entry's leaf index
//! in the Merkle tree; `prev` is the leaf hash of the entry before it (64 zeros for the
//! first), so the log is also a hash chain; `event` is the producer's record unchanged.

use crate::jcs;
use crate::merkle::{Hash, leaf_hash};
use serde_json::Value;

pub const ZERO: Hash = [0u8; 32];

/// What the verifier needs from one line of the log.
#[derive(Clone, Debug)]
pub struct LineInfo {
    /// A well-formed entry (all five fields, the right types, a v:1 event).
    pub valid: bool,
    pub seq: Option<u64>,
    pub prev: Option<Hash>,
    /// Leaf hash of the canonical form (of the raw bytes for a line that is not JSON).
    pub leaf: Hash,
    pub ts: Option<String>,
}

/// Build the canonical bytes of a new entry into `out` (cleared first).
pub fn build(out: &mut Vec<u8>, seq: u64, ts: &str, prev: &Hash, event: &Value) {
    build_raw(out, seq, ts, prev, &jcs::to_vec(event));
}

/// The same, from an event already in canonical form.
pub fn build_raw(out: &mut Vec<u8>, seq: u64, ts: &str, prev: &Hash, event: &[u8]) {
    out.clear();
    out.extend_from_slice(b"{\"event\":");
    out.extend_from_slice(event);
    out.extend_from_slice(b",\"prev\":\"");
    out.extend_from_slice(moat_core::hex(prev).as_bytes());
    out.extend_from_slice(b"\",\"seq\":");
    out.extend_from_slice(seq.to_string().as_bytes());
    out.extend_from_slice(b",\"ts\":");
    jcs::write_string(out, ts);
    out.extend_from_slice(b",\"v\":1}");
}

/// Turn one producer line into a canonical event, or say why it is not a record.
pub fn canonical_event(line: &[u8], out: &mut Vec<u8>) -> Result<(), String> {
    let mut members = Vec::with_capacity(8);
    if jcs::canonicalize_fast(line, out, Some(&mut members)) && event_members_ok(out, &members) {
        return Ok(());
    }
    // Otherwise the general path, which also gives the precise reason.
    let v: Value = serde_json::from_slice(line).map_err(|e| format!("not a JSON record: {e}"))?;
    check_event(&v).map_err(|e| format!("not a record: {e}"))?;
    out.clear();
    jcs::write(out, &v);
    Ok(())
}

/// A canonical object has `"type"` (a non-empty string) and `"v":1` among its members.
fn event_members_ok(canon: &[u8], members: &[jcs::Member]) -> bool {
    if canon.first() != Some(&b'{') {
        return false;
    }
    let mut ty = false;
    let mut v1 = false;
    for (k, v) in members {
        match &canon[k.clone()] {
            b"type" => ty = canon[v.clone()].len() > 2 && canon[v.start] == b'"',
            b"v" => v1 = &canon[v.clone()] == b"1",
            _ => {}
        }
    }
    ty && v1
}

/// Is this a record producers may send: a JSON object with `"v":1` and a string `type`?
pub fn check_event(v: &Value) -> Result<(), &'static str> {
    let Value::Object(m) = v else {
        return Err("not a JSON object");
    };
    // Compared as a number, like the canonical form does (1.0 is 1).
    if m.get("v").and_then(Value::as_f64) != Some(1.0) {
        return Err("no \"v\":1");
    }
    match m.get("type").and_then(Value::as_str) {
        Some(t) if !t.is_empty() => Ok(()),
        _ => Err("no string \"type\""),
    }
}

/// Inspect one line of the log (without its newline).
pub fn parse_line(line: &[u8]) -> LineInfo {
    type Scratch = (Vec<u8>, Vec<jcs::Member>, Vec<u8>, Vec<jcs::Member>);
    thread_local! {
        static SCRATCH: std::cell::RefCell<Scratch> = std::cell::RefCell::new(Default::default());
    }
    let fast = SCRATCH.with(|s| {
        let (out, m, out2, m2) = &mut *s.borrow_mut();
        fast_info(line, out, m, out2, m2)
    });
    if let Some(info) = fast {
        return info;
    }
    match serde_json::from_slice::<Value>(line) {
        Ok(v) => {
            let mut info = info_from_value(&v);
            // The writer writes canonical lines; any other spelling of an entry (duplicate
            // keys that a parser would silently merge, reordered keys, spaces) is a change.
            if info.valid && jcs::to_vec(&v) != line {
                info.valid = false;
            }
            info
        }
        Err(_) => LineInfo {
            valid: false,
            seq: None,
            prev: None,
            leaf: leaf_hash(line),
            ts: None,
        },
    }
}

/// Inspect a parsed entry: its canonical leaf hash and its chain fields.
pub fn info_from_value(v: &Value) -> LineInfo {
    let leaf = leaf_hash(&jcs::to_vec(v));
    let mut info = LineInfo {
        valid: false,
        seq: None,
        prev: None,
        leaf,
        ts: None,
    };
    let Value::Object(m) = v else {
        return info;
    };
    info.seq = m.get("seq").and_then(Value::as_u64);
    info.prev = m.get("prev").and_then(Value::as_str).and_then(parse_hex32);
    info.ts = m.get("ts").and_then(Value::as_str).map(str::to_string);
    info.valid = m.len() == 5
        && info.seq.is_some()
        && info.prev.is_some()
        && info.ts.is_some()
        && m.get("v").and_then(Value::as_f64) == Some(1.0)
        && m.get("event").is_some_and(|e| check_event(e).is_ok());
    info
}

/// The common case without building a JSON tree: a well-formed entry whose canonical form
/// the fast canonicalizer can produce. Anything else (`None`) takes the general path, which
/// gives the same answer, only slower.
fn fast_info(
    line: &[u8],
    out: &mut Vec<u8>,
    m: &mut Vec<jcs::Member>,
    out2: &mut Vec<u8>,
    m2: &mut Vec<jcs::Member>,
) -> Option<LineInfo> {
    m.clear();
    if !jcs::canonicalize_fast(line, out, Some(m)) || m.len() != 5 || out[..] != line[..] {
        return None;
    }
    let keys: [&[u8]; 5] = [b"event", b"prev", b"seq", b"ts", b"v"];
    for (i, k) in keys.iter().enumerate() {
        if &out[m[i].0.clone()] != *k {
            return None;
        }
    }
    m2.clear();
    let ev = &out[m[0].1.clone()];
    if !jcs::canonicalize_fast(ev, out2, Some(m2)) || !event_members_ok(out2, m2) {
        return None;
    }
    let prev = &out[m[1].1.clone()];
    let prev =
        parse_hex32(std::str::from_utf8(prev.strip_prefix(b"\"")?.strip_suffix(b"\"")?).ok()?)?;
    let seq = &out[m[2].1.clone()];
    if !seq.iter().all(u8::is_ascii_digit) {
        return None;
    }
    let seq: u64 = std::str::from_utf8(seq).ok()?.parse().ok()?;
    let ts = out[m[3].1.clone()]
        .strip_prefix(b"\"")?
        .strip_suffix(b"\"")?;
    if ts.contains(&b'\\') {
        return None;
    }
    let ts = std::str::from_utf8(ts).ok()?.to_string();
    if &out[m[4].1.clone()] != b"1" {
        return None;
    }
    Some(LineInfo {
        valid: true,
        seq: Some(seq),
        prev: Some(prev),
        leaf: leaf_hash(out),
        ts: Some(ts),
    })
}

pub fn parse_hex32(s: &str) -> Option<Hash> {
    let b = s.as_bytes();
    if b.len() != 64 {
        return None;
    }
    let mut out = [0u8; 32];
    for (i, o) in out.iter_mut().enumerate() {
        let hi = hexval(b[2 * i])?;
        let lo = hexval(b[2 * i + 1])?;
        *o = hi << 4 | lo;
    }
    Some(out)
}

fn hexval(c: u8) -> Option<u8> {
    match c {
        b'0'..=b'9' => Some(c - b'0'),
        b'a'..=b'f' => Some(c - b'a' + 10),
        _ => None,
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    #[test]
    fn built_entries_are_canonical_and_parse_back() {
        let mut buf = Vec::new();
        let ev = json!({"v":1,"type":"credential_used","host":"api.github.com","grant":"github"});
        build(&mut buf, 7, "2026-11-22T03:00:00.000Z", &[0xab; 32], &ev);
        let v: Value = serde_json::from_slice(&buf).unwrap();
        assert_eq!(jcs::to_vec(&v), buf, "written in canonical form");
        let info = parse_line(&buf);
        assert!(info.valid);
        assert_eq!(info.seq, Some(7));
        assert_eq!(info.prev, Some([0xab; 32]));
        assert_eq!(info.leaf, leaf_hash(&buf));
        // Re-serialising (pretty, other key order) does not change the hash, but a log line
        // must be the canonical form itself.
        let pretty = serde_json::to_vec_pretty(&v).unwrap();
        assert_eq!(parse_line(&pretty).leaf, info.leaf);
        assert!(!parse_line(&pretty).valid);
        let dup = String::from_utf8(buf.clone()).unwrap().replacen(
            "\"grant\":",
            "\"host\":\"evil.example\",\"grant\":",
            1,
        );
        assert!(
            !parse_line(dup.as_bytes()).valid,
            "duplicate keys are not an entry"
        );
        // The fast path and the general one agree.
        let general = info_from_value(&v);
        assert_eq!(
            (general.leaf, general.seq, general.prev, general.ts),
            (info.leaf, info.seq, info.prev, info.ts)
        );
        assert!(general.valid);
        // Canonical events from producer lines, by either path.
        let mut out = Vec::new();
        canonical_event(br#"{"v":1,"type":"x","b":"\u00e9","a":1.50}"#, &mut out).unwrap();
        assert_eq!(
            out,
            "{\"a\":1.5,\"b\":\"é\",\"type\":\"x\",\"v\":1}".as_bytes()
        );
        assert!(canonical_event(br#"{"v":1,"type":""}"#, &mut out).is_err());
        assert!(canonical_event(br#"{"v":1.0,"type":"x"}"#, &mut out).is_ok());
        assert!(canonical_event(br#"{"type":"x","v":1.0}"#, &mut out).is_ok());
        assert!(canonical_event(br#"{"type":"x","v":2}"#, &mut out).is_err());
        assert!(canonical_event(br#"{"type":7,"v":1}"#, &mut out).is_err());
    }

    #[test]
    fn events_need_v1_and_a_type() {
        assert!(check_event(&json!({"v":1,"type":"x"})).is_ok());
        assert!(check_event(&json!({"v":2,"type":"x"})).is_err());
        assert!(check_event(&json!({"v":1})).is_err());
        assert!(check_event(&json!([1])).is_err());
        assert!(!parse_line(b"{not json").valid);
    }
}
