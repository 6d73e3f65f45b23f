//! Sizes in bytes as people write and read them: `64K`, `4M`, `1G` (binary units) in
//! arguments, `12 MiB` in human output (as `rbd` prints sizes); JSON keeps exact bytes.

use std::fmt;

/// The binary unit prefixes, from KiB up.
const UNITS: [&str; 6] = ["K", "M", "G", "T", "P", "E"];

/// Parses a size: plain bytes (`65536`) or a number with a binary unit (`64K`, `4M`,
/// `1G`, also written `4MiB`, `4MB` or `4m`; all mean powers of 1024).
///
/// # Errors
/// Not a number, an unknown unit, or more than `u64::MAX` bytes; the message says what is
/// accepted.
pub fn parse_size(s: &str) -> Result<u64, String> {
    let t = s.trim();
    let digits = t.bytes().take_while(u8::is_ascii_digit).count();
    let (num, unit) = t.split_at(digits);
    let bad = || {
        format!("'{s}' is not a size: give bytes, or a number with K, M, G or T (1K = 1024 bytes)")
    };
    let n: u64 = num.parse().map_err(|_| bad())?;
    let unit = unit.trim_start().to_ascii_uppercase();
    let unit = unit.strip_suffix('B').unwrap_or(&unit);
    let unit = unit.strip_suffix('I').unwrap_or(unit);
    let shift = match unit {
        "" => 0,
        u => 10 * (UNITS.iter().position(|x| *x == u).ok_or_else(bad)? as u32 + 1),
    };
    n.checked_mul(1 << shift)
        .ok_or_else(|| format!("'{s}' is more than {} bytes", u64::MAX))
}

/// A byte count shown as `rbd` shows sizes: `512 B`, `12 MiB`, `1.5 GiB` (an exact multiple
/// of the unit without decimals, else as many of two decimals as fit in 7 characters).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Bytes(pub u64);

impl fmt::Display for Bytes {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let v = self.0;
        let mut index = 0;
        let mut n = v;
        while n >= 1024 && index < UNITS.len() {
            n /= 1024;
            index += 1;
        }
        if index == 0 {
            return write!(f, "{v} B");
        }
        let unit = format!(" {}iB", UNITS[index - 1]);
        let mult = 1u64 << (10 * index);
        if v % mult == 0 {
            return write!(f, "{n}{unit}");
        }
        let x = v as f64 / mult as f64;
        let mut text = String::new();
        for decimals in (0..=2).rev() {
            text = format!("{x:.decimals$}{unit}");
            if text.len() <= 7 {
                break;
            }
        }
        f.write_str(&text)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_bytes_and_binary_units() {
        assert_eq!(parse_size("65536"), Ok(65536));
        assert_eq!(parse_size("64K"), Ok(64 << 10));
        assert_eq!(parse_size("64k"), Ok(64 << 10));
        assert_eq!(parse_size("4M"), Ok(4 << 20));
        assert_eq!(parse_size("4MiB"), Ok(4 << 20));
        assert_eq!(parse_size("4 MB"), Ok(4 << 20));
        assert_eq!(parse_size("1G"), Ok(1 << 30));
        assert_eq!(parse_size("2T"), Ok(2 << 40));
        assert_eq!(parse_size("8E"), Ok(8 << 60));
        assert_eq!(parse_size("512B"), Ok(512));
        assert_eq!(parse_size("0"), Ok(0));
    }

    #[test]
    fn refuses_what_is_not_a_size() {
        for s in ["", "K", "4X", "-1", "1.5M", "4MM", "M4", "4 M B x"] {
            let e = parse_size(s).unwrap_err();
            assert!(e.contains("not a size"), "{s}: {e}");
        }
        assert!(parse_size("16E").unwrap_err().contains("more than"));
        assert!(parse_size("18446744073709551616").is_err());
    }

    #[test]
    fn shows_sizes_as_rbd_does() {
        let show = |v: u64| Bytes(v).to_string();
        assert_eq!(show(0), "0 B");
        assert_eq!(show(1023), "1023 B");
        assert_eq!(show(1024), "1 KiB");
        assert_eq!(show(12 << 20), "12 MiB");
        assert_eq!(show(1536 << 20), "1.5 GiB");
        assert_eq!(show(98304), "96 KiB");
        // 12.0625 MiB: two decimals do not fit in 7 characters, nor one.
        assert_eq!(show(12648448), "12 MiB");
        // 244.5 KiB.
        assert_eq!(show(250368), "244 KiB");
        // 1.25 MiB: two decimals do not fit.
        assert_eq!(show(1 << 20 | 1 << 18), "1.2 MiB");
        assert_eq!(show(1 << 30 | 1 << 28), "1.2 GiB");
        assert_eq!(show(u64::MAX), "16 EiB");
    }
}
