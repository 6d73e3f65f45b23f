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

/// Days since 1970-01-01 of the civil date `(y, m, d)` (H. Hinnant's `days_from_civil`; the
/// inverse of [`civil_from_days`]).
pub fn days_from_civil(y: i64, m: u32, d: u32) -> i64 {
    let y = if m <= 2 { y - 1 } else { y };
    let era = y.div_euclid(400);
    let yoe = y - era * 400;
    let mp = i64::from(if m > 2 { m - 3 } else { m + 9 });
    let doy = (153 * mp + 2) / 5 + i64::from(d) - 1;
    let doe = yoe * 365 + yoe / 4 - yoe / 100 + doy;
    era * 146_097 + doe - 719_468
}

/// The seconds since the epoch of a UTC stamp `YYYYmmddTHHMMSSZ`, or with a fraction
/// `YYYYmmddTHHMMSS.NNNZ` (the fraction is dropped); none when it is not one (fields out of
/// range included) or before the epoch.
pub fn parse_stamp(s: &str) -> Option<u64> {
    let s = s.strip_suffix('Z')?;
    let (whole, frac) = s.split_once('.').unwrap_or((s, "0"));
    let b = whole.as_bytes();
    if b.len() != 15 || b[8] != b'T' || !frac.bytes().all(|c| c.is_ascii_digit()) {
        return None;
    }
    let num = |r: std::ops::Range<usize>| -> Option<u32> {
        let t = whole.get(r)?;
        t.bytes()
            .all(|c| c.is_ascii_digit())
            .then(|| t.parse().ok())?
    };
    let (y, mo, d) = (num(0..4)?, num(4..6)?, num(6..8)?);
    let (hh, mm, ss) = (num(9..11)?, num(11..13)?, num(13..15)?);
    let month_days = [31, 28, 31, 30, 31, 30, 31, 31, 30, 31, 30, 31];
    let leap = (y % 4 == 0 && y % 100 != 0) || y % 400 == 0;
    let max_d = month_days.get(mo.checked_sub(1)? as usize)? + u32::from(mo == 2 && leap);
    if d == 0 || d > max_d || hh > 23 || mm > 59 || ss > 59 {
        return None;
    }
    let days = u64::try_from(days_from_civil(i64::from(y), mo, d)).ok()?;
    Some(days * 86_400 + u64::from(hh) * 3600 + u64::from(mm) * 60 + u64::from(ss))
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

    #[test]
    fn stamps_parse_back() {
        for secs in [
            0,
            951_782_400,
            1_796_306_400,
            4_102_444_799,
            86_400 * 365 + 3661,
        ] {
            let (y, m, d, hh, mm, ss) = parts(secs);
            let st = format!("{y:04}{m:02}{d:02}T{hh:02}{mm:02}{ss:02}");
            assert_eq!(parse_stamp(&format!("{st}Z")), Some(secs), "{st}");
            assert_eq!(parse_stamp(&format!("{st}.123456789Z")), Some(secs), "{st}");
        }
        for bad in [
            "",
            "Z",
            "20261203T140000",
            "20261303T140000Z",
            "20260229T140000Z",
            "20261203T240000Z",
            "20261203 140000Z",
            "2026120xT140000Z",
            "20261203T140000.xZ",
            "+0261203T140000Z",
            "19691231T235959Z",
        ] {
            assert_eq!(parse_stamp(bad), None, "{bad}");
        }
        assert_eq!(parse_stamp("20240229T000000Z"), Some(1_709_164_800));
    }
}
