//! Timestamps: RFC 3339 in UTC with milliseconds, the one form every record and file uses.

use std::time::SystemTime;
use time::OffsetDateTime;
use time::format_description::well_known::Rfc3339;

/// Now, as `2026-11-22T02:43:47.123Z`.
pub fn now_rfc3339() -> String {
    rfc3339(SystemTime::now())
}

pub fn rfc3339(t: SystemTime) -> String {
    let dt = OffsetDateTime::from(t);
    let ms = dt.millisecond();
    format!(
        "{:04}-{:02}-{:02}T{:02}:{:02}:{:02}.{:03}Z",
        dt.year(),
        dt.month() as u8,
        dt.day(),
        dt.hour(),
        dt.minute(),
        dt.second(),
        ms
    )
}

/// Parse any RFC 3339 timestamp.
pub fn parse_rfc3339(s: &str) -> Option<SystemTime> {
    OffsetDateTime::parse(s, &Rfc3339)
        .ok()
        .map(SystemTime::from)
}

/// "3s", "5m", "2h", "4d": a short age for tables.
pub fn short_age(d: std::time::Duration) -> String {
    let s = d.as_secs();
    match s {
        0..=59 => format!("{s}s"),
        60..=3599 => format!("{}m", s / 60),
        3600..=86399 => format!("{}h", s / 3600),
        _ => format!("{}d", s / 86400),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::time::{Duration, UNIX_EPOCH};
    #[test]
    fn formats_and_parses() {
        let t = UNIX_EPOCH + Duration::from_millis(1_763_779_427_123);
        let s = rfc3339(t);
        assert_eq!(s, "2025-11-22T02:43:47.123Z");
        assert_eq!(parse_rfc3339(&s), Some(t));
        assert_eq!(short_age(Duration::from_secs(7200)), "2h");
    }
}
