//! Retention policies: which restorable snapshots a prune keeps, with restic's flags and
//! semantics, by backup time (UTC).
//!
//! The snapshots are walked newest first (by time, ties by the graph's snapshot order). For
//! each bucket rule with a count N (`--keep-hourly`, `-daily`, `-weekly`, `-monthly`,
//! `-yearly`) a snapshot is kept when its bucket (its UTC hour, day, ISO 8601 week from
//! Monday, month or year) differs from the bucket of the last snapshot that rule kept, until
//! the rule has kept N snapshots: so each rule keeps the **newest** snapshot of each of the N
//! newest buckets that hold a snapshot (empty buckets are skipped, not counted).
//! `--keep-last N` keeps the N newest snapshots (each its own bucket). `--keep-within D` keeps
//! every snapshot strictly newer than the newest snapshot's time minus D (relative to the
//! newest backup, not to now, so an archive whose backups stopped keeps its last ones). The
//! kept set is the union of the rules; the newest restorable snapshot is always kept.

use std::collections::BTreeMap;
use std::time::Duration;

use serde::Serialize;

/// A retention policy; a count of 0 (or no duration) disables its rule.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize)]
pub struct Policy {
    /// Keep the N newest snapshots.
    pub last: usize,
    /// Keep the newest snapshot of each of the N newest hours (UTC) that hold one.
    pub hourly: usize,
    /// Days (UTC).
    pub daily: usize,
    /// ISO 8601 weeks (Monday to Sunday, UTC).
    pub weekly: usize,
    /// Months (UTC).
    pub monthly: usize,
    /// Years (UTC).
    pub yearly: usize,
    /// Keep every snapshot newer than the newest one's time minus this (in reports: whole
    /// seconds).
    #[serde(serialize_with = "as_secs")]
    pub within: Option<Duration>,
}

fn as_secs<S: serde::Serializer>(d: &Option<Duration>, s: S) -> Result<S::Ok, S::Error> {
    match d {
        Some(d) => s.serialize_some(&d.as_secs()),
        None => s.serialize_none(),
    }
}

impl Policy {
    /// True when no rule is set (a prune refuses: it would delete everything but the newest).
    pub fn is_empty(&self) -> bool {
        self.last == 0
            && self.hourly == 0
            && self.daily == 0
            && self.weekly == 0
            && self.monthly == 0
            && self.yearly == 0
            && self.within.is_none_or(|d| d.is_zero())
    }
}

/// A snapshot as the policy sees it.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Snap {
    /// Its name.
    pub name: String,
    /// Its backup time, seconds since the epoch (UTC).
    pub time: u64,
}

/// The rule that keeps a snapshot with no other: the newest restorable one.
pub const NEWEST: &str = "newest";

/// Days since the epoch → (year, month 1-12, day 1-31), proleptic Gregorian.
pub use crate::utc::civil_from_days as civil;

/// The bucket of `t` (seconds since the epoch) for a rule: equal keys, same bucket.
fn bucket(rule: &str, t: u64) -> i64 {
    let secs = i64::try_from(t).unwrap_or(i64::MAX);
    let days = secs.div_euclid(86_400);
    match rule {
        "hourly" => secs.div_euclid(3600),
        "daily" => days,
        // The Monday starting the ISO week (1970-01-01 was a Thursday).
        "weekly" => days - (days + 3).rem_euclid(7),
        "monthly" => {
            let (y, m, _) = civil(days);
            y * 12 + i64::from(m)
        }
        "yearly" => civil(days).0,
        _ => secs,
    }
}

/// Applies `policy` to `snaps` (oldest first, in the graph's snapshot order): the kept
/// snapshots with the rules that keep each (`last`, `hourly`, `daily`, `weekly`, `monthly`,
/// `yearly`, `within`, [`NEWEST`]). The last snapshot of `snaps` is the newest restorable
/// one and is always kept. See the module docs.
pub fn select(policy: &Policy, snaps: &[Snap]) -> BTreeMap<String, Vec<&'static str>> {
    let mut kept: BTreeMap<String, Vec<&'static str>> = BTreeMap::new();
    let Some(newest) = snaps.last() else {
        return kept;
    };
    // Newest first: by time, ties by graph order (later in `snaps` is newer).
    let mut order: Vec<usize> = (0..snaps.len()).collect();
    order.sort_by_key(|&i| std::cmp::Reverse((snaps[i].time, i)));
    let rules: [(&'static str, usize); 6] = [
        ("last", policy.last),
        ("hourly", policy.hourly),
        ("daily", policy.daily),
        ("weekly", policy.weekly),
        ("monthly", policy.monthly),
        ("yearly", policy.yearly),
    ];
    for (rule, count) in rules {
        let mut left = count;
        let mut last: Option<i64> = None;
        for &i in &order {
            if left == 0 {
                break;
            }
            // Each snapshot is a bucket of its own for keep-last (also within one second).
            let key = if rule == "last" {
                i as i64
            } else {
                bucket(rule, snaps[i].time)
            };
            if last != Some(key) {
                last = Some(key);
                left -= 1;
                kept.entry(snaps[i].name.clone()).or_default().push(rule);
            }
        }
    }
    if let Some(d) = policy.within.filter(|d| !d.is_zero()) {
        let latest = order.first().map_or(0, |&i| snaps[i].time);
        let since = i128::from(latest) - i128::from(d.as_secs());
        for s in snaps.iter().filter(|s| i128::from(s.time) > since) {
            kept.entry(s.name.clone()).or_default().push("within");
        }
    }
    let n = kept.entry(newest.name.clone()).or_default();
    if n.is_empty() {
        n.push(NEWEST);
    }
    kept
}

#[cfg(test)]
mod tests {
    use super::*;

    /// 2026-01-05 was a Monday.
    const MON: u64 = 1_767_571_200;
    const H: u64 = 3600;
    const D: u64 = 86_400;

    fn snaps(times: &[u64]) -> Vec<Snap> {
        times
            .iter()
            .enumerate()
            .map(|(i, &time)| Snap {
                name: format!("s{i}"),
                time,
            })
            .collect()
    }

    fn kept(p: &Policy, times: &[u64]) -> Vec<String> {
        let k = select(p, &snaps(times));
        let mut v: Vec<(usize, String)> = k
            .keys()
            .map(|n| (n[1..].parse().unwrap(), n.clone()))
            .collect();
        v.sort();
        v.into_iter().map(|x| x.1).collect()
    }

    #[test]
    fn civil_dates() {
        assert_eq!(civil(0), (1970, 1, 1));
        assert_eq!(civil((MON / D) as i64), (2026, 1, 5));
        assert_eq!(civil(11_016), (2000, 2, 29));
        assert_eq!(civil(-1), (1969, 12, 31));
    }

    #[test]
    fn keep_last_keeps_the_newest_n_by_time() {
        let p = Policy {
            last: 2,
            ..Policy::default()
        };
        // s2 is older by time than s1: the newest two by time are s3 and s1.
        assert_eq!(kept(&p, &[10, 30, 20, 40]), ["s1", "s3"]);
        assert_eq!(kept(&p, &[10]), ["s0"]);
        // Within one second: the newest two by graph order.
        assert_eq!(kept(&p, &[5, 5, 5]), ["s1", "s2"]);
    }

    #[test]
    fn hourly_keeps_the_newest_of_each_hour() {
        let p = Policy {
            hourly: 2,
            ..Policy::default()
        };
        // Hours 0 (s0, s1), 1 (s2, s3), 3 (s4): the newest of the two newest hours with a
        // snapshot (the empty hour 2 does not count).
        let t = [MON, MON + 1800, MON + H + 10, MON + H + 3599, MON + 3 * H];
        assert_eq!(kept(&p, &t), ["s3", "s4"]);
        let p = Policy {
            hourly: 5,
            ..Policy::default()
        };
        assert_eq!(kept(&p, &t), ["s1", "s3", "s4"]);
    }

    #[test]
    fn daily_is_by_utc_day() {
        let p = Policy {
            daily: 2,
            ..Policy::default()
        };
        // 23:59:59 and 00:00:00 are different days.
        let t = [MON + 10, MON + D - 1, MON + D, MON + D + 5 * H];
        assert_eq!(kept(&p, &t), ["s1", "s3"]);
    }

    #[test]
    fn weekly_is_by_iso_week_from_monday() {
        let p = Policy {
            weekly: 3,
            ..Policy::default()
        };
        // Sunday before MON, MON, Sunday after, next Monday.
        let t = [MON - D, MON, MON + 6 * D + 23 * H, MON + 7 * D];
        assert_eq!(kept(&p, &t), ["s0", "s2", "s3"]);
        // ISO week of 2020-12-31 (Thursday) and 2021-01-03 (Sunday) is 2020-W53: one bucket.
        let thu = 18_627 * D;
        assert_eq!(civil(18_627), (2020, 12, 31));
        let p = Policy {
            weekly: 1,
            ..Policy::default()
        };
        assert_eq!(kept(&p, &[thu, thu + 3 * D]), ["s1"]);
    }

    #[test]
    fn monthly_and_yearly() {
        let p = Policy {
            monthly: 2,
            ..Policy::default()
        };
        // 2026-01-05, 2026-01-31 23:00, 2026-02-01, 2026-03-01.
        let jan31 = MON + 26 * D + 23 * H;
        let feb1 = MON + 27 * D;
        let mar1 = feb1 + 28 * D;
        assert_eq!(civil((feb1 / D) as i64), (2026, 2, 1));
        assert_eq!(civil((mar1 / D) as i64), (2026, 3, 1));
        assert_eq!(kept(&p, &[MON, jan31, feb1, mar1]), ["s2", "s3"]);
        let p = Policy {
            monthly: 3,
            ..Policy::default()
        };
        assert_eq!(kept(&p, &[MON, jan31, feb1, mar1]), ["s1", "s2", "s3"]);
        let p = Policy {
            yearly: 2,
            ..Policy::default()
        };
        let y2025 = MON - 10 * D;
        assert_eq!(kept(&p, &[y2025 - D, y2025, MON, mar1]), ["s1", "s3"]);
    }

    #[test]
    fn within_is_relative_to_the_newest_and_strict() {
        let p = Policy {
            within: Some(Duration::from_secs(2 * D)),
            ..Policy::default()
        };
        let t = [MON, MON + D, MON + 2 * D, MON + 3 * D];
        // Newer than MON+3d-2d = MON+1d, strictly: s2, s3.
        assert_eq!(kept(&p, &t), ["s2", "s3"]);
    }

    #[test]
    fn the_union_and_the_newest_always() {
        let p = Policy {
            last: 1,
            daily: 2,
            ..Policy::default()
        };
        let t = [MON, MON + H, MON + D, MON + D + H];
        let k = select(&p, &snaps(&t));
        assert_eq!(k["s3"], ["last", "daily"]);
        assert_eq!(k["s1"], ["daily"]);
        assert_eq!(k.len(), 2);
        // A policy that keeps only older ones still keeps the newest of the graph order.
        let p = Policy {
            yearly: 1,
            ..Policy::default()
        };
        // The graph's newest (s1) has an older time than s0.
        let k = select(&p, &snaps(&[MON + D, MON]));
        assert_eq!(k["s0"], ["yearly"]);
        assert_eq!(k["s1"], [NEWEST]);
        assert!(Policy::default().is_empty());
        assert!(!p.is_empty());
    }
}
