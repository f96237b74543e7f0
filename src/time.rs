//! Packet time. Every timestamp gatescope reports comes from a packet (or from the capture's
//! own read timeouts in live mode), never from the wall clock, so that offline analysis of a
//! capture and live analysis of the same traffic agree.

use serde::Serialize;
use std::fmt;

/// Microseconds since the Unix epoch, as libpcap records them.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct Ts(pub i64);

impl Ts {
    pub fn from_timeval(sec: i64, usec: i64) -> Ts {
        Ts(sec.saturating_mul(1_000_000).saturating_add(usec))
    }

    /// `self - earlier` in microseconds (saturating at 0: captures from several interfaces are
    /// not always in time order).
    pub fn micros_since(self, earlier: Ts) -> u64 {
        u64::try_from(self.0.saturating_sub(earlier.0)).unwrap_or(0)
    }

    pub fn ms_since(self, earlier: Ts) -> f64 {
        self.micros_since(earlier) as f64 / 1000.0
    }
}

/// Days since 1970-01-01 to (year, month, day), proleptic Gregorian (Howard Hinnant's
/// `civil_from_days`).
fn civil_from_days(z: i64) -> (i64, u32, u32) {
    let z = z + 719_468;
    let era = z.div_euclid(146_097);
    let doe = z.rem_euclid(146_097);
    let yoe = (doe - doe / 1460 + doe / 36_524 - doe / 146_096) / 365;
    let y = yoe + era * 400;
    let doy = doe - (365 * yoe + yoe / 4 - yoe / 100);
    let mp = (5 * doy + 2) / 153;
    let d = (doy - (153 * mp + 2) / 5 + 1) as u32;
    let m = if mp < 10 { mp + 3 } else { mp - 9 } as u32;
    (if m <= 2 { y + 1 } else { y }, m, d)
}

impl Ts {
    /// The RFC 3339 form into `buf`, without `fmt` machinery (time stamps are most of the
    /// JSON output, and `write!` with padded fields cost more than the rest of a record).
    /// `None` for years outside 0..=9999, which [`fmt::Display`] formats instead.
    fn rfc3339<'b>(&self, buf: &'b mut [u8; 27]) -> Option<&'b str> {
        let secs = self.0.div_euclid(1_000_000);
        let micros = self.0.rem_euclid(1_000_000) as u32;
        let days = secs.div_euclid(86_400);
        let sod = secs.rem_euclid(86_400) as u32;
        let (y, m, d) = civil_from_days(days);
        let y = u32::try_from(y).ok().filter(|y| *y <= 9999)?;
        let mut put = |at: usize, v: u32, digits: usize| {
            let mut v = v;
            for i in (0..digits).rev() {
                buf[at + i] = b'0' + (v % 10) as u8;
                v /= 10;
            }
        };
        put(0, y, 4);
        put(5, m, 2);
        put(8, d, 2);
        put(11, sod / 3600, 2);
        put(14, (sod / 60) % 60, 2);
        put(17, sod % 60, 2);
        put(20, micros, 6);
        for (at, c) in [
            (4, b'-'),
            (7, b'-'),
            (10, b'T'),
            (13, b':'),
            (16, b':'),
            (19, b'.'),
        ] {
            buf[at] = c;
        }
        buf[26] = b'Z';
        std::str::from_utf8(&buf[..]).ok()
    }
}

impl fmt::Display for Ts {
    /// RFC 3339, UTC, microseconds: `2026-11-24T01:42:31.123456Z`.
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        if let Some(s) = self.rfc3339(&mut [0u8; 27]) {
            return f.write_str(s);
        }
        let secs = self.0.div_euclid(1_000_000);
        let micros = self.0.rem_euclid(1_000_000);
        let days = secs.div_euclid(86_400);
        let sod = secs.rem_euclid(86_400);
        let (y, m, d) = civil_from_days(days);
        write!(
            f,
            "{y:04}-{m:02}-{d:02}T{:02}:{:02}:{:02}.{micros:06}Z",
            sod / 3600,
            (sod / 60) % 60,
            sod % 60
        )
    }
}

impl Serialize for Ts {
    fn serialize<S: serde::Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        match self.rfc3339(&mut [0u8; 27]) {
            Some(t) => s.serialize_str(t),
            None => s.collect_str(self),
        }
    }
}

/// A duration given on the command line: `250ms`, `1s`, `1.5s`, `2m`, `100us`; a bare number
/// is seconds.
pub fn parse_duration(s: &str) -> Result<std::time::Duration, String> {
    let s = s.trim();
    let split = s
        .find(|c: char| !(c.is_ascii_digit() || c == '.'))
        .unwrap_or(s.len());
    let (num, unit) = s.split_at(split);
    let value: f64 = num
        .parse()
        .map_err(|_| format!("'{s}' is not a duration; use e.g. 500ms, 1s, 1.5s, 2m"))?;
    let scale = match unit.trim() {
        "" | "s" | "sec" => 1.0,
        "ms" => 1e-3,
        "us" | "µs" => 1e-6,
        "m" | "min" => 60.0,
        "h" => 3600.0,
        other => {
            return Err(format!(
                "unknown unit '{other}' in '{s}'; use us, ms, s, m or h"
            ))
        }
    };
    let secs = value * scale;
    if !secs.is_finite() || !(0.0..=1e9).contains(&secs) {
        return Err(format!("'{s}' is out of range"));
    }
    Ok(std::time::Duration::from_secs_f64(secs))
}

#[cfg(test)]
mod test {
    use super::*;

    #[test]
    fn formats_rfc3339_with_micros() {
        assert_eq!(Ts(0).to_string(), "1970-01-01T00:00:00.000000Z");
        assert_eq!(
            Ts::from_timeval(1_795_484_551, 123_456).to_string(),
            "2026-11-24T01:42:31.123456Z"
        );
        assert_eq!(
            Ts::from_timeval(951_782_400, 1).to_string(),
            "2000-02-29T00:00:00.000001Z"
        );
    }

    #[test]
    fn fast_and_general_formats_agree() {
        let general = |t: Ts| {
            let secs = t.0.div_euclid(1_000_000);
            let micros = t.0.rem_euclid(1_000_000);
            let (y, m, d) = civil_from_days(secs.div_euclid(86_400));
            let sod = secs.rem_euclid(86_400);
            format!(
                "{y:04}-{m:02}-{d:02}T{:02}:{:02}:{:02}.{micros:06}Z",
                sod / 3600,
                (sod / 60) % 60,
                sod % 60
            )
        };
        let mut x = 1u64;
        for i in 0..20_000i64 {
            x = x.wrapping_mul(6_364_136_223_846_793_005).wrapping_add(1);
            let t = match i % 3 {
                0 => Ts((x >> 1) as i64 % 400_000_000_000_000_000),
                1 => Ts(-((x >> 20) as i64)),
                _ => Ts(i * 999_983 + 1_768_471_200_000_000),
            };
            assert_eq!(t.to_string(), general(t), "{}", t.0);
            assert_eq!(
                serde_json::to_string(&t).unwrap(),
                format!("\"{}\"", general(t))
            );
        }
        assert_eq!(Ts(i64::MIN).to_string(), general(Ts(i64::MIN)));
        assert_eq!(Ts(i64::MAX).to_string(), general(Ts(i64::MAX)));
    }

    #[test]
    fn parses_durations() {
        assert_eq!(parse_duration("1s").unwrap().as_millis(), 1000);
        assert_eq!(parse_duration("250ms").unwrap().as_millis(), 250);
        assert_eq!(parse_duration("1.5").unwrap().as_millis(), 1500);
        assert_eq!(parse_duration("2m").unwrap().as_secs(), 120);
        assert!(parse_duration("fast").is_err());
        assert!(parse_duration("1y").is_err());
    }
}
