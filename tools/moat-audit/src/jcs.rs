//! RFC 8785 JSON Canonicalization Scheme: the one byte form an entry is hashed in, so that
//! parsing and re-serialising an entry (a bundle, a pretty-printer, another language) never
//! changes its hash. Keys sorted by UTF-16 code units, numbers as ECMAScript prints doubles,
//! strings with the minimal escaping, no whitespace.

use serde_json::{Map, Number, Value};

/// Append the canonical form of `v` to `out`.
pub fn write(out: &mut Vec<u8>, v: &Value) {
    match v {
        Value::Null => out.extend_from_slice(b"null"),
        Value::Bool(true) => out.extend_from_slice(b"true"),
        Value::Bool(false) => out.extend_from_slice(b"false"),
        Value::Number(n) => write_number(out, n),
        Value::String(s) => write_string(out, s),
        Value::Array(a) => {
            out.push(b'[');
            for (i, x) in a.iter().enumerate() {
                if i > 0 {
                    out.push(b',');
                }
                write(out, x);
            }
            out.push(b']');
        }
        Value::Object(m) => write_object(out, m),
    }
}

/// The canonical form of `v` as bytes.
pub fn to_vec(v: &Value) -> Vec<u8> {
    let mut out = Vec::with_capacity(128);
    write(&mut out, v);
    out
}

fn write_object(out: &mut Vec<u8>, m: &Map<String, Value>) {
    let mut keys: Vec<(&String, &Value)> = m.iter().collect();
    // Already sorted is the common case (our own entries are written canonically).
    if !keys.windows(2).all(|w| utf16_cmp(w[0].0, w[1].0).is_lt()) {
        keys.sort_by(|a, b| utf16_cmp(a.0, b.0));
    }
    out.push(b'{');
    for (i, (k, v)) in keys.into_iter().enumerate() {
        if i > 0 {
            out.push(b',');
        }
        write_string(out, k);
        out.push(b':');
        write(out, v);
    }
    out.push(b'}');
}

/// Order strings by their UTF-16 code units, as RFC 8785 §3.2.3 requires. For text within
/// the Basic Multilingual Plane this equals byte order; it differs only when a character
/// above U+FFFF meets one in U+E000..U+FFFF.
pub fn utf16_cmp(a: &str, b: &str) -> std::cmp::Ordering {
    if a.is_ascii() && b.is_ascii() {
        return a.as_bytes().cmp(b.as_bytes());
    }
    a.encode_utf16().cmp(b.encode_utf16())
}

pub fn write_string(out: &mut Vec<u8>, s: &str) {
    out.push(b'"');
    let bytes = s.as_bytes();
    let mut start = 0;
    for (i, &b) in bytes.iter().enumerate() {
        let esc: Option<&[u8]> = match b {
            b'"' => Some(b"\\\""),
            b'\\' => Some(b"\\\\"),
            b'\n' => Some(b"\\n"),
            b'\r' => Some(b"\\r"),
            b'\t' => Some(b"\\t"),
            0x08 => Some(b"\\b"),
            0x0c => Some(b"\\f"),
            0..=0x1f => None,
            _ => continue,
        };
        out.extend_from_slice(&bytes[start..i]);
        match esc {
            Some(e) => out.extend_from_slice(e),
            None => {
                const HEX: &[u8; 16] = b"0123456789abcdef";
                out.extend_from_slice(b"\\u00");
                out.push(HEX[(b >> 4) as usize]);
                out.push(HEX[(b & 15) as usize]);
            }
        }
        start = i + 1;
    }
    out.extend_from_slice(&bytes[start..]);
    out.push(b'"');
}

const MAX_SAFE: u64 = 1 << 53;

fn write_number(out: &mut Vec<u8>, n: &Number) {
    if let Some(u) = n.as_u64()
        && u <= MAX_SAFE
    {
        out.extend_from_slice(u.to_string().as_bytes());
        return;
    }
    if let Some(i) = n.as_i64()
        && i.unsigned_abs() <= MAX_SAFE
    {
        out.extend_from_slice(i.to_string().as_bytes());
        return;
    }
    // JSON numbers are IEEE doubles in RFC 8785; serde_json never yields NaN or infinity.
    let f = n.as_f64().unwrap_or(0.0);
    out.extend_from_slice(es_number(f).as_bytes());
}

/// ECMAScript `Number.prototype.toString` for a finite double (ECMA-262 §6.1.6.1.20).
pub fn es_number(f: f64) -> String {
    if f == 0.0 || !f.is_finite() {
        return "0".into();
    }
    let neg = f < 0.0;
    // Rust's `{:e}` gives the shortest digits that round-trip, like ECMAScript requires.
    let sci = format!("{:e}", f.abs());
    let (mant, exp) = sci.split_once('e').unwrap_or((&sci, "0"));
    let digits: String = mant.chars().filter(|c| *c != '.').collect();
    let digits = digits.trim_end_matches('0');
    let digits = if digits.is_empty() { "0" } else { digits };
    let k = digits.len() as i32;
    let n = exp.parse::<i32>().unwrap_or(0) + 1;
    let mut s = String::new();
    if neg {
        s.push('-');
    }
    if k <= n && n <= 21 {
        s.push_str(digits);
        s.extend(std::iter::repeat_n('0', (n - k) as usize));
    } else if 0 < n && n <= 21 {
        s.push_str(&digits[..n as usize]);
        s.push('.');
        s.push_str(&digits[n as usize..]);
    } else if -6 < n && n <= 0 {
        s.push_str("0.");
        s.extend(std::iter::repeat_n('0', (-n) as usize));
        s.push_str(digits);
    } else {
        s.push_str(&digits[..1]);
        if k > 1 {
            s.push('.');
            s.push_str(&digits[1..]);
        }
        s.push('e');
        s.push(if n - 1 < 0 { '-' } else { '+' });
        s.push_str(&(n - 1).abs().to_string());
    }
    s
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    fn canon(s: &str) -> String {
        String::from_utf8(to_vec(&serde_json::from_str(s).unwrap())).unwrap()
    }

    #[test]
    fn rfc8785_example_numbers_and_strings() {
        // The example of RFC 8785 §3.2.2.
        let input = r#"{
          "numbers": [333333333.33333329, 1E30, 4.50, 2e-3, 0.000000000000000000000000001],
          "string": "\u20ac$\u000F\u000aA'\u0042\u0022\u005c\\\"\/",
          "literals": [null, true, false]
        }"#;
        assert_eq!(
            canon(input),
            r#"{"literals":[null,true,false],"numbers":[333333333.3333333,1e+30,4.5,0.002,1e-27],"string":"€$\u000f\nA'B\"\\\\\"/"}"#
        );
    }

    #[test]
    fn keys_sort_by_utf16_code_units() {
        // RFC 8785 §3.2.3's sorting example.
        let input = r#"{"\u20ac":"Euro Sign","\r":"Carriage Return","\ufb33":"Hebrew Letter Dalet With Dagesh","1":"One","\ud83d\ude00":"Emoji: Grinning Face","\u0080":"Control","\u00f6":"Latin Small Letter O With Diaeresis"}"#;
        let out = canon(input);
        let order: Vec<&str> = [
            "Carriage Return",
            "One",
            "Control",
            "Latin Small",
            "Euro Sign",
            "Emoji",
            "Hebrew",
        ]
        .to_vec();
        let mut last = 0;
        for o in order {
            let p = out.find(o).unwrap();
            assert!(p > last || last == 0, "{o} out of order in {out}");
            last = p;
        }
    }

    #[test]
    fn es_number_formatting() {
        for (f, s) in [
            (1.0, "1"),
            (-1.5, "-1.5"),
            (1e21, "1e+21"),
            (1e20, "100000000000000000000"),
            (123456789e-15, "1.23456789e-7"),
            (0.000001, "0.000001"),
            (1e-7, "1e-7"),
            (5e-324, "5e-324"),
            (1.7976931348623157e308, "1.7976931348623157e+308"),
            (-0.0, "0"),
            (9007199254740993.0, "9007199254740992"),
        ] {
            assert_eq!(es_number(f), s, "{f}");
        }
        assert_eq!(canon("18446744073709551615"), "18446744073709552000");
        assert_eq!(canon("-5"), "-5");
    }

    #[test]
    fn round_trip_is_stable() {
        let v = json!({"b": [1, "x\u{7f}\u{1}"], "a": {"z": null, "é": "\u{2028}"}});
        let once = to_vec(&v);
        let again = to_vec(&serde_json::from_slice(&once).unwrap());
        assert_eq!(once, again);
    }
}

/// A member of a top-level object found by [`canonicalize_fast`]: where its key (without
/// quotes) and its canonical value sit in the output.
pub type Member = (std::ops::Range<usize>, std::ops::Range<usize>);

/// Canonicalize JSON text straight from its bytes, without building a tree: the common case
/// (ASCII keys already in order, as every line this tool writes has them) costs one pass
/// and no allocation. Returns false when the input needs the general path (keys out of
/// order, escaped or non-ASCII keys, duplicate keys, `-0`) or is not valid JSON; callers
/// then fall back to parsing a `serde_json::Value` and [`write`]. When `members` is given,
/// the top-level object's members are recorded in it.
pub fn canonicalize_fast(inp: &[u8], out: &mut Vec<u8>, members: Option<&mut Vec<Member>>) -> bool {
    if std::str::from_utf8(inp).is_err() {
        return false;
    }
    let mut p = Fast {
        s: inp,
        i: 0,
        any_order: false,
        dup: false,
    };
    out.clear();
    if !p.value(out, members, 0) {
        return false;
    }
    p.ws();
    p.i == inp.len()
}

/// Does this JSON text have an object with the same key twice (after unescaping)? Parsers
/// keep one of the two silently, and not all keep the same one, so bundles that do are
/// refused. `None` when the text is not valid JSON.
pub fn has_duplicate_keys(inp: &[u8]) -> Option<bool> {
    std::str::from_utf8(inp).ok()?;
    let mut p = Fast {
        s: inp,
        i: 0,
        any_order: true,
        dup: false,
    };
    let mut out = Vec::new();
    if !p.value(&mut out, None, 0) {
        return None;
    }
    p.ws();
    (p.i == inp.len()).then_some(p.dup)
}

struct Fast<'a> {
    s: &'a [u8],
    i: usize,
    /// Accept keys in any order and any spelling (only noting duplicates in `dup`).
    any_order: bool,
    dup: bool,
}

const MAX_DEPTH: usize = 128;

impl Fast<'_> {
    fn ws(&mut self) {
        while self.i < self.s.len() && matches!(self.s[self.i], b' ' | b'\t' | b'\n' | b'\r') {
            self.i += 1;
        }
    }

    fn peek(&self) -> Option<u8> {
        self.s.get(self.i).copied()
    }

    fn value(
        &mut self,
        out: &mut Vec<u8>,
        members: Option<&mut Vec<Member>>,
        depth: usize,
    ) -> bool {
        if depth > MAX_DEPTH {
            return false;
        }
        self.ws();
        match self.peek() {
            Some(b'{') => self.object(out, members, depth),
            Some(b'[') => {
                self.i += 1;
                out.push(b'[');
                self.ws();
                if self.peek() == Some(b']') {
                    self.i += 1;
                    out.push(b']');
                    return true;
                }
                loop {
                    if !self.value(out, None, depth + 1) {
                        return false;
                    }
                    self.ws();
                    match self.peek() {
                        Some(b',') => {
                            self.i += 1;
                            out.push(b',');
                        }
                        Some(b']') => {
                            self.i += 1;
                            out.push(b']');
                            return true;
                        }
                        _ => return false,
                    }
                }
            }
            Some(b'"') => self.string(out).is_some(),
            Some(b't') => self.lit(out, b"true"),
            Some(b'f') => self.lit(out, b"false"),
            Some(b'n') => self.lit(out, b"null"),
            Some(b'-' | b'0'..=b'9') => self.number(out),
            _ => false,
        }
    }

    fn lit(&mut self, out: &mut Vec<u8>, w: &[u8]) -> bool {
        if self.s[self.i..].starts_with(w) {
            self.i += w.len();
            out.extend_from_slice(w);
            true
        } else {
            false
        }
    }

    fn object(
        &mut self,
        out: &mut Vec<u8>,
        mut members: Option<&mut Vec<Member>>,
        depth: usize,
    ) -> bool {
        self.i += 1;
        out.push(b'{');
        self.ws();
        if self.peek() == Some(b'}') {
            self.i += 1;
            out.push(b'}');
            return true;
        }
        let mut prev_key: Option<std::ops::Range<usize>> = None;
        let mut seen: Vec<Vec<u8>> = Vec::new();
        loop {
            self.ws();
            if self.peek() != Some(b'"') {
                return false;
            }
            let k0 = out.len();
            let key = match self.string(out) {
                Some(plain) if self.any_order || plain => k0 + 1..out.len() - 1,
                _ => return false,
            };
            if self.any_order {
                seen.push(out[key.clone()].to_vec());
            } else {
                // Keys must be plain ASCII with no escapes, so byte order is UTF-16 order.
                if !out[key.clone()].iter().all(|b| (0x20..0x7f).contains(b)) {
                    return false;
                }
                if let Some(pk) = &prev_key
                    && out[pk.clone()] >= out[key.clone()]
                {
                    return false;
                }
                prev_key = Some(key.clone());
            }
            self.ws();
            if self.peek() != Some(b':') {
                return false;
            }
            self.i += 1;
            out.push(b':');
            let v0 = out.len();
            if !self.value(out, None, depth + 1) {
                return false;
            }
            if let Some(m) = members.as_deref_mut() {
                m.push((key, v0..out.len()));
            }
            self.ws();
            match self.peek() {
                Some(b',') => {
                    self.i += 1;
                    out.push(b',');
                }
                Some(b'}') => {
                    self.i += 1;
                    out.push(b'}');
                    if self.any_order {
                        seen.sort_unstable();
                        self.dup |= seen.windows(2).any(|w| w[0] == w[1]);
                    }
                    return true;
                }
                _ => return false,
            }
        }
    }

    /// Copy a string in canonical form. `Some(true)` when it had no escapes.
    fn string(&mut self, out: &mut Vec<u8>) -> Option<bool> {
        self.i += 1;
        out.push(b'"');
        let mut plain = true;
        let mut start = self.i;
        loop {
            let b = *self.s.get(self.i)?;
            match b {
                b'"' => {
                    out.extend_from_slice(&self.s[start..self.i]);
                    out.push(b'"');
                    self.i += 1;
                    return Some(plain);
                }
                0..=0x1f => return None,
                b'\\' => {
                    plain = false;
                    out.extend_from_slice(&self.s[start..self.i]);
                    self.i += 1;
                    let e = *self.s.get(self.i)?;
                    self.i += 1;
                    let c: char = match e {
                        b'"' => '"',
                        b'\\' => '\\',
                        b'/' => '/',
                        b'b' => '\u{8}',
                        b'f' => '\u{c}',
                        b'n' => '\n',
                        b'r' => '\r',
                        b't' => '\t',
                        b'u' => {
                            let hi = self.hex4()?;
                            if (0xD800..0xDC00).contains(&hi) {
                                if self.s.get(self.i..self.i + 2)? != b"\\u" {
                                    return None;
                                }
                                self.i += 2;
                                let lo = self.hex4()?;
                                if !(0xDC00..0xE000).contains(&lo) {
                                    return None;
                                }
                                char::from_u32(0x10000 + ((hi - 0xD800) << 10) + (lo - 0xDC00))?
                            } else {
                                char::from_u32(hi)?
                            }
                        }
                        _ => return None,
                    };
                    let mut tmp = [0u8; 4];
                    let enc = c.encode_utf8(&mut tmp);
                    // Re-escape exactly as RFC 8785 does.
                    let mut one = Vec::new();
                    write_string(&mut one, enc);
                    out.extend_from_slice(&one[1..one.len() - 1]);
                    start = self.i;
                }
                _ => self.i += 1,
            }
        }
    }

    fn hex4(&mut self) -> Option<u32> {
        let h = self.s.get(self.i..self.i + 4)?;
        let v = u32::from_str_radix(std::str::from_utf8(h).ok()?, 16).ok()?;
        if !h.iter().all(u8::is_ascii_hexdigit) {
            return None;
        }
        self.i += 4;
        Some(v)
    }

    fn number(&mut self, out: &mut Vec<u8>) -> bool {
        let st = self.i;
        if self.peek() == Some(b'-') {
            self.i += 1;
        }
        let d0 = self.i;
        while self.peek().is_some_and(|c| c.is_ascii_digit()) {
            self.i += 1;
        }
        let int_digits = self.i - d0;
        if int_digits == 0 || (int_digits > 1 && self.s[d0] == b'0') {
            return false;
        }
        let mut plain_int = true;
        if self.peek() == Some(b'.') {
            plain_int = false;
            self.i += 1;
            let f0 = self.i;
            while self.peek().is_some_and(|c| c.is_ascii_digit()) {
                self.i += 1;
            }
            if self.i == f0 {
                return false;
            }
        }
        if matches!(self.peek(), Some(b'e' | b'E')) {
            plain_int = false;
            self.i += 1;
            if matches!(self.peek(), Some(b'+' | b'-')) {
                self.i += 1;
            }
            let e0 = self.i;
            while self.peek().is_some_and(|c| c.is_ascii_digit()) {
                self.i += 1;
            }
            if self.i == e0 {
                return false;
            }
        }
        let text = &self.s[st..self.i];
        if plain_int && int_digits <= 15 {
            if text == b"-0" {
                out.push(b'0');
            } else {
                out.extend_from_slice(text);
            }
            return true;
        }
        let Some(f) = std::str::from_utf8(text)
            .ok()
            .and_then(|t| t.parse::<f64>().ok())
            .filter(|f| f.is_finite())
        else {
            return false;
        };
        out.extend_from_slice(es_number(f).as_bytes());
        true
    }
}

#[cfg(test)]
mod fast_tests {
    use super::*;

    fn slow(s: &str) -> Option<Vec<u8>> {
        serde_json::from_str::<Value>(s).ok().map(|v| to_vec(&v))
    }

    #[test]
    fn the_fast_path_agrees_with_the_general_one() {
        let cases = [
            r#"{"a":1,"b":[true,false,null,"x"],"c":{"d":-5,"e":2.50,"f":1e3}}"#,
            r#" { "a" : "q\"\\\/\b\f\n\r\t\u0001\u00e9\ud83d\ude00\u2028" } "#,
            r#"[1E30, 0.000001, 1e-7, 123456789012345678, -0, 0]"#,
            r#"{"event":{"type":"x","v":1},"prev":"00","seq":3,"ts":"t","v":1}"#,
            r#""plain""#,
            r#"{}"#,
            r#"[]"#,
            r#"{"é":1}"#,
            r#"{"b":1,"a":2}"#,
            r#"{"a":1,"a":2}"#,
            r#"{"a":01}"#,
            r#"{"a":1,}"#,
            r#"[1,2"#,
            r#"{"a":"\ud800"}"#,
            "{\"a\":\"\x01\"}",
            r#"{"a":1} x"#,
        ];
        for c in cases {
            let mut out = Vec::new();
            if canonicalize_fast(c.as_bytes(), &mut out, None) {
                assert_eq!(
                    Some(out.clone()),
                    slow(c),
                    "{c}: {}",
                    String::from_utf8_lossy(&out)
                );
            } else {
                // Declined: the input is invalid or needs the general path; never wrong.
                eprintln!("declined {c}");
            }
        }
        let mut out = Vec::new();
        assert!(canonicalize_fast(cases[0].as_bytes(), &mut out, None));
        assert!(!canonicalize_fast(br#"{"b":1,"a":2}"#, &mut out, None));
        assert!(!canonicalize_fast(br#"{"a":1,"a":2}"#, &mut out, None));
        assert!(!canonicalize_fast(br#"{"a":01}"#, &mut out, None));
    }

    /// Random JSON documents, written compactly and pretty: the fast path (when it accepts)
    /// and the general path give the same bytes, and canonical output is a fixed point.
    #[test]
    fn random_documents_round_trip() {
        let mut seed = 0x2545_f491_4f6c_dd1du64;
        let mut rnd = move |n: u64| {
            seed ^= seed << 13;
            seed ^= seed >> 7;
            seed ^= seed << 17;
            seed % n
        };
        const CHARS: &[char] = &[
            'a',
            'Z',
            '0',
            ' ',
            '"',
            '\\',
            '/',
            '\n',
            '\t',
            '\u{1}',
            '\u{1f}',
            '\u{7f}',
            'é',
            '\u{2028}',
            '\u{ffff}',
            '\u{e000}',
            '😀',
            '\u{10ffff}',
        ];
        fn random_value(r: &mut dyn FnMut(u64) -> u64, depth: u32) -> Value {
            let s = |r: &mut dyn FnMut(u64) -> u64| -> String {
                (0..r(6))
                    .map(|_| CHARS[r(CHARS.len() as u64) as usize])
                    .collect()
            };
            match if depth > 3 { r(4) } else { r(7) } {
                0 => Value::Null,
                1 => Value::Bool(r(2) == 1),
                2 => Value::String(s(r)),
                3 => match r(4) {
                    0 => Value::from(r(1 << 20) as i64 - (1 << 19)),
                    1 => Value::from(r(u64::MAX)),
                    2 => Value::from((r(1 << 30) as f64 - 5e8) / (r(1000) + 1) as f64),
                    _ => Value::from(f64::from_bits(r(0x7fe0_0000_0000_0000))),
                },
                4 | 5 => Value::Object(
                    (0..r(5))
                        .map(|_| (s(r), random_value(r, depth + 1)))
                        .collect(),
                ),
                _ => Value::Array((0..r(4)).map(|_| random_value(r, depth + 1)).collect()),
            }
        }
        let mut fast = 0;
        for _ in 0..2000 {
            let v = random_value(&mut rnd, 0);
            let want = to_vec(&v);
            let back: Value = serde_json::from_slice(&want).unwrap();
            assert_eq!(to_vec(&back), want, "canonical form is a fixed point");
            for text in [
                serde_json::to_vec(&v).unwrap(),
                serde_json::to_vec_pretty(&v).unwrap(),
            ] {
                let mut out = Vec::new();
                if canonicalize_fast(&text, &mut out, None) {
                    assert_eq!(out, want, "{}", String::from_utf8_lossy(&text));
                }
                assert_eq!(to_vec(&serde_json::from_slice(&text).unwrap()), want);
            }
            let mut out = Vec::new();
            if canonicalize_fast(&want, &mut out, None) {
                assert_eq!(out, want);
                fast += 1;
            }
        }
        assert!(fast > 500, "the fast path took only {fast} of 2000");
    }

    #[test]
    fn duplicate_keys_are_found_however_spelled() {
        assert_eq!(
            has_duplicate_keys(br#"{"a":1,"b":{"c":1,"c":2}}"#),
            Some(true)
        );
        assert_eq!(has_duplicate_keys(br#"{"a":1,"\u0061":2}"#), Some(true));
        assert_eq!(
            has_duplicate_keys(r#"{"b":1,"a":[{"a":1}],"é":2}"#.as_bytes()),
            Some(false)
        );
        assert_eq!(has_duplicate_keys(br#"{"a":1"#), None);
    }

    #[test]
    fn members_are_recorded() {
        let mut out = Vec::new();
        let mut m = Vec::new();
        assert!(canonicalize_fast(
            br#"{"a": [1, 2], "b": "x"}"#,
            &mut out,
            Some(&mut m)
        ));
        assert_eq!(m.len(), 2);
        assert_eq!(&out[m[0].0.clone()], b"a");
        assert_eq!(&out[m[0].1.clone()], b"[1,2]");
        assert_eq!(&out[m[1].1.clone()], b"\"x\"");
    }
}
