//! UTC calendar time from seconds since the epoch (no time-zone database needed).

/// The civil date `(year, month 1–12, day 1–31)` of `days` since 1970-01-01 (H. Hinnant's
/// `civil_from_days`).
pub fn civil_from_days(days: i64) -> (i64, u32, u32) {
    let z = days + 719_468;
    let era = z.div_euclid(146_097);
    let doe = z - era * 146_097;
    let yoe = (doe - doe / 1460 + doe / 36_524 - doe / 146_096) / 365;
    let doy = doe - (365 * yoe + yoe / 4 - yoe / 100);
    let mp = (5 * doy + 2) / 153;
    let d = doy - (153 * mp + 2) / 5 + 1;
    let m = if mp < 10 { mp + 3 } else { mp - 9 };
    let y = yoe + era * 400 + i64::from(m <= 2);
    // Both are in range by construction: 1..=31 and 1..=12.
    (y, m as u32, d as u32)
}

/// `secs` since the epoch as the parts `(y, m, d, hh, mm, ss)` of its UTC time.
pub fn parts(secs: u64) -> (i64, u32, u32, u64, u64, u64) {
    let (days, rem) = (secs / 86_400, secs % 86_400);
    let (y, m, d) = civil_from_days(i64::try_from(days).unwrap_or(i64::MAX / 2));
    (y, m, d, rem / 3600, rem % 3600 / 60, rem % 60)
}

/// `secs` since the epoch as RFC 3339 UTC time, `YYYY-mm-ddTHH:MM:SSZ`.
pub fn rfc3339(secs: u64) -> String {
    let (y, m, d, hh, mm, ss) = parts(secs);
    format!("{y:04}-{m:02}-{d:02}T{hh:02}:{mm:02}:{ss:02}Z")
}

/// The current time in seconds since the epoch (0 for a clock before it).
pub fn now() -> u64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |d| d.as_secs())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn known_dates() {
        assert_eq!(rfc3339(0), "1970-01-01T00:00:00Z");
        assert_eq!(rfc3339(951_782_400), "2000-02-29T00:00:00Z");
        assert_eq!(rfc3339(1_796_306_400), "2026-12-03T14:00:00Z");
        assert_eq!(rfc3339(86_400 * 365 + 3661), "1971-01-01T01:01:01Z");
        assert_eq!(civil_from_days(-1), (1969, 12, 31));
    }
}
