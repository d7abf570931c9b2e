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
