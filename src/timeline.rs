//! When did it happen? Errors, warnings and exchanges counted per time bucket, so that the
//! report can show the shape of an incident — a burst during a deploy, a steady trickle, a
//! cliff where a backend died — next to the traffic. Bounded: at most [`MAX_BUCKETS`]
//! buckets; when the capture spans more, the buckets widen to the next width of
//! [`WIDTHS_S`] (each a multiple of the one before, so counts merge exactly). Buckets are
//! aligned to the clock (a 10 s bucket starts at :00, :10, …), so the result depends only
//! on the records, not on their order.

use crate::time::Ts;
use std::collections::BTreeMap;

/// Buckets kept (one line of a terminal).
pub const MAX_BUCKETS: i64 = 60;

/// Bucket widths in seconds, each a multiple of the one before.
const WIDTHS_S: [i64; 14] = [
    1, 2, 10, 30, 60, 300, 600, 1800, 3600, 7200, 21_600, 43_200, 86_400, 604_800,
];

/// Past the last of [`WIDTHS_S`], widths double: a file whose timestamps span years (merged
/// captures, a clock that jumped) still gets one line. Bounded so that widths stay far
/// from overflowing.
const MAX_WIDENINGS: usize = WIDTHS_S.len() + 24;

/// The width of bucket step `i`, in seconds.
fn width_at(i: usize) -> i64 {
    let last = WIDTHS_S.len() - 1;
    WIDTHS_S[i.min(last)] << i.saturating_sub(last).min(24)
}

/// What a bucket counts.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord)]
pub enum Series {
    Exchanges,
    Errors,
    Warnings,
}

impl Series {
    pub const ALL: [Series; 3] = [Series::Exchanges, Series::Errors, Series::Warnings];

    pub fn name(self) -> &'static str {
        match self {
            Series::Exchanges => "exchanges",
            Series::Errors => "errors",
            Series::Warnings => "warnings",
        }
    }
}

#[derive(Clone, Debug, Default)]
pub struct Timeline {
    /// Index into [`WIDTHS_S`].
    width: usize,
    /// Bucket (start time / width) → counts per series.
    buckets: BTreeMap<i64, [u64; 3]>,
}

impl Timeline {
    pub fn width_s(&self) -> i64 {
        width_at(self.width)
    }

    fn key(&self, t: Ts) -> i64 {
        t.0.div_euclid(self.width_s() * 1_000_000)
    }

    /// Counts one event of `series` at `t`.
    pub fn add(&mut self, series: Series, t: Ts) {
        let k = self.key(t);
        self.buckets.entry(k).or_default()[series as usize] += 1;
        while self.span() > MAX_BUCKETS && self.width < MAX_WIDENINGS {
            self.widen();
        }
    }

    /// Buckets from the first to the last, empty ones included.
    fn span(&self) -> i64 {
        match (
            self.buckets.first_key_value(),
            self.buckets.last_key_value(),
        ) {
            (Some((a, _)), Some((b, _))) => b.saturating_sub(*a).saturating_add(1),
            _ => 0,
        }
    }

    fn widen(&mut self) {
        let by = width_at(self.width + 1) / width_at(self.width);
        self.width += 1;
        let mut merged: BTreeMap<i64, [u64; 3]> = BTreeMap::new();
        for (k, c) in std::mem::take(&mut self.buckets) {
            let m = merged.entry(k.div_euclid(by)).or_default();
            for (a, b) in m.iter_mut().zip(c) {
                *a += b;
            }
        }
        self.buckets = merged;
    }

    /// The first bucket's start, and every bucket's counts of `series` from there (empty
    /// buckets as zero); `None` when nothing was counted.
    pub fn series(&self, series: Series) -> Option<(Ts, Vec<u64>)> {
        let (&first, _) = self.buckets.first_key_value()?;
        let (&last, _) = self.buckets.last_key_value()?;
        let counts = (first..=last)
            .map(|k| self.buckets.get(&k).map_or(0, |c| c[series as usize]))
            .collect();
        Some((Ts(first * self.width_s() * 1_000_000), counts))
    }

    /// Whether anything of `series` was counted.
    pub fn has(&self, series: Series) -> bool {
        self.buckets.values().any(|c| c[series as usize] > 0)
    }

    /// The buckets as JSON: width, start and one count array per series.
    pub fn to_json(&self) -> serde_json::Value {
        let Some((start, _)) = self.series(Series::Exchanges) else {
            return serde_json::Value::Null;
        };
        let mut m = serde_json::Map::new();
        m.insert("bucket_s".into(), self.width_s().into());
        m.insert("start".into(), start.to_string().into());
        for s in Series::ALL {
            let counts = self.series(s).map(|(_, c)| c).unwrap_or_default();
            m.insert(s.name().into(), counts.into());
        }
        serde_json::Value::Object(m)
    }
}

/// Counts as a bar per bucket, scaled to the largest: a space for none, then ▁ to █.
pub fn sparkline(counts: &[u64]) -> String {
    const BARS: [char; 8] = ['▁', '▂', '▃', '▄', '▅', '▆', '▇', '█'];
    let max = counts.iter().copied().max().unwrap_or(0);
    counts
        .iter()
        .map(|&c| {
            if c == 0 || max == 0 {
                ' '
            } else {
                // 1..=max onto the eight bars, rounding up: any count is visible.
                let i = (c.saturating_mul(8)).div_ceil(max).saturating_sub(1);
                BARS[(i as usize).min(7)]
            }
        })
        .collect()
}

#[cfg(test)]
mod test {
    use super::*;

    const SEC: i64 = 1_000_000;

    #[test]
    fn buckets_widen_to_keep_a_long_capture_on_one_line() {
        let mut t = Timeline::default();
        // On a 30 s boundary; ten minutes are sixty 10 s buckets.
        let t0 = 1_700_000_010 * SEC;
        // One exchange a second for 10 minutes, errors in the fifth minute only.
        for s in 0..600 {
            t.add(Series::Exchanges, Ts(t0 + s * SEC));
            if (240..300).contains(&s) {
                t.add(Series::Errors, Ts(t0 + s * SEC));
            }
        }
        let (_, ex) = t.series(Series::Exchanges).unwrap_or((Ts(0), Vec::new()));
        let (_, err) = t.series(Series::Errors).unwrap_or((Ts(0), Vec::new()));
        assert_eq!(
            (
                t.width_s(),
                ex.len(),
                ex.iter().sum::<u64>(),
                err.iter().sum::<u64>()
            ),
            (10, 60, 600, 60)
        );
        assert_eq!(sparkline(&err).trim(), "██████");
    }

    #[test]
    fn the_order_of_events_does_not_change_the_buckets() {
        let t0 = 1_700_000_000 * SEC;
        let times: Vec<i64> = (0..200).map(|i| t0 + (i * 7919 % 200) * 3 * SEC).collect();
        let mut a = Timeline::default();
        let mut b = Timeline::default();
        for &x in &times {
            a.add(Series::Errors, Ts(x));
        }
        for &x in times.iter().rev() {
            b.add(Series::Errors, Ts(x));
        }
        assert_eq!(a.to_json(), b.to_json());
    }

    #[test]
    fn years_of_timestamps_still_fit_one_line() {
        let mut t = Timeline::default();
        t.add(Series::Errors, Ts(1_400_000_000 * SEC));
        t.add(Series::Errors, Ts(1_700_000_000 * SEC));
        let (_, counts) = t.series(Series::Errors).unwrap_or((Ts(0), Vec::new()));
        assert!(counts.len() as i64 <= MAX_BUCKETS, "{}", counts.len());
    }

    #[test]
    fn a_sparkline_shows_none_as_blank_and_any_as_a_bar() {
        assert_eq!(sparkline(&[0, 1, 50, 100, 0]), " ▁▄█ ");
    }
}
