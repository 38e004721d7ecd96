//! Instants and human durations.
//!
//! A [`Timestamp`] is milliseconds since the Unix epoch: the one
//! representation stored by every backend (a plain integer column compares and
//! indexes the same on SQLite and PostgreSQL) and shown to people as RFC 3339.
//! Durations are written the way operators speak them (`90s`, `20m`,
//! `1h30m`); a negative or unparsable one is an error, never a default.
//!
//! Every duration reeve accepts is whole milliseconds (the resolution stored
//! and compared everywhere, so `500us` would silently become zero) and at
//! most [`MAX_DURATION`] (so deadline arithmetic never saturates), and
//! `parse_duration(&format_duration(d)) == d` for all of them.

use std::fmt;
use std::str::FromStr;
use std::time::Duration;

use serde::{Deserialize, Deserializer, Serialize, Serializer};

/// An instant, in milliseconds since the Unix epoch (UTC).
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash, Default)]
pub struct Timestamp(pub i64);

impl Timestamp {
    /// The process clock. Lease arithmetic must use the store's clock instead
    /// (see `reeve-store`); this is for display and for the SQLite backend,
    /// whose authority *is* the daemon's clock.
    pub fn now() -> Self {
        Timestamp(jiff::Timestamp::now().as_millisecond())
    }

    pub fn from_millis(ms: i64) -> Self {
        Timestamp(ms)
    }

    pub fn millis(self) -> i64 {
        self.0
    }

    pub fn saturating_add(self, d: Duration) -> Self {
        Timestamp(self.0.saturating_add(duration_millis(d)))
    }

    /// Milliseconds from `self` to `later` (negative when `later` is earlier).
    pub fn millis_until(self, later: Timestamp) -> i64 {
        later.0.saturating_sub(self.0)
    }

    /// Parses RFC 3339 (`2026-11-23T18:00:00Z`, offsets allowed).
    pub fn parse(s: &str) -> Result<Self, String> {
        let ts: jiff::Timestamp = s
            .trim()
            .parse()
            .map_err(|e| format!("expected an RFC 3339 instant like 2026-01-31T09:00:00Z ({e})"))?;
        Ok(Timestamp(ts.as_millisecond()))
    }
}

impl fmt::Display for Timestamp {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match jiff::Timestamp::from_millisecond(self.0) {
            Ok(ts) => write!(f, "{ts:.3}"),
            Err(_) => write!(f, "{}ms", self.0),
        }
    }
}

impl Serialize for Timestamp {
    fn serialize<S: Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        s.collect_str(self)
    }
}

impl<'de> Deserialize<'de> for Timestamp {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        let s = String::deserialize(d)?;
        Timestamp::parse(&s).map_err(serde::de::Error::custom)
    }
}

/// Whole milliseconds of a duration, saturating at `i64::MAX`.
pub fn duration_millis(d: Duration) -> i64 {
    i64::try_from(d.as_millis()).unwrap_or(i64::MAX)
}

/// Longest duration accepted anywhere: 100 years (`876600h`). Longer ones
/// are typos, and refusing them keeps every deadline inside the range of a
/// [`Timestamp`] that can be shown and parsed back.
pub const MAX_DURATION: Duration = Duration::from_secs(36_525 * 86_400);

/// Checks that `d` is one reeve accepts: whole milliseconds, at most
/// [`MAX_DURATION`]. `shown` is the value as written, for the message.
pub fn check_duration(d: Duration, shown: &str) -> Result<Duration, String> {
    if !d.subsec_nanos().is_multiple_of(1_000_000) {
        return Err(format!("must be whole milliseconds, got {shown:?}"));
    }
    if d > MAX_DURATION {
        return Err(format!(
            "must be at most {} (100 years), got {shown:?}",
            format_duration(MAX_DURATION)
        ));
    }
    Ok(d)
}

/// Parses a human duration: `90s`, `20m`, `1h30m`, `250ms`, or ISO 8601
/// (`PT1H30M`). Zero is allowed; negative values, sub-millisecond precision
/// and values beyond [`MAX_DURATION`] are not.
pub fn parse_duration(s: &str) -> Result<Duration, String> {
    const EXPECTED: &str = "expected a duration like 90s, 20m or 1h30m";
    let trimmed = s.trim();
    if trimmed.is_empty() {
        return Err(format!("{EXPECTED}, got an empty string"));
    }
    let signed = jiff::SignedDuration::from_str(trimmed)
        .map_err(|_| format!("{EXPECTED}, got {trimmed:?}"))?;
    if signed.is_negative() {
        return Err(format!("must not be negative, got {trimmed:?}"));
    }
    let d: Duration = signed
        .try_into()
        .map_err(|_| format!("{EXPECTED}, got {trimmed:?}"))?;
    check_duration(d, trimmed)
}

/// Formats a duration compactly the way [`parse_duration`] reads it back:
/// `1h30m`, `90s` → `1m30s`, `250ms`.
pub fn format_duration(d: Duration) -> String {
    let total_ms = d.as_millis();
    if total_ms == 0 {
        return "0s".to_string();
    }
    let mut out = String::new();
    let units: [(u128, &str); 3] = [(3_600_000, "h"), (60_000, "m"), (1000, "s")];
    let mut rest = total_ms;
    for (size, suffix) in units {
        if rest >= size {
            out.push_str(&format!("{}{suffix}", rest / size));
            rest %= size;
        }
    }
    if rest > 0 {
        out.push_str(&format!("{rest}ms"));
    }
    out
}

/// Serde helpers for durations written as human strings in JSON and TOML.
pub mod human_duration {
    use super::*;

    pub fn serialize<S: Serializer>(d: &Duration, s: S) -> Result<S::Ok, S::Error> {
        s.serialize_str(&format_duration(*d))
    }

    pub fn deserialize<'de, D: Deserializer<'de>>(d: D) -> Result<Duration, D::Error> {
        let s = String::deserialize(d)?;
        parse_duration(&s).map_err(serde::de::Error::custom)
    }

    /// The same for `Option<Duration>`.
    pub mod option {
        use super::*;

        pub fn serialize<S: Serializer>(d: &Option<Duration>, s: S) -> Result<S::Ok, S::Error> {
            match d {
                Some(d) => s.serialize_str(&format_duration(*d)),
                None => s.serialize_none(),
            }
        }

        pub fn deserialize<'de, D: Deserializer<'de>>(d: D) -> Result<Option<Duration>, D::Error> {
            let s = Option::<String>::deserialize(d)?;
            s.map(|s| parse_duration(&s).map_err(serde::de::Error::custom))
                .transpose()
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_operator_durations() {
        assert_eq!(parse_duration("90s").unwrap(), Duration::from_secs(90));
        assert_eq!(parse_duration("20m").unwrap(), Duration::from_secs(1200));
        assert_eq!(parse_duration("1h30m").unwrap(), Duration::from_secs(5400));
        assert_eq!(parse_duration("250ms").unwrap(), Duration::from_millis(250));
        assert_eq!(parse_duration("PT1H").unwrap(), Duration::from_secs(3600));
        assert_eq!(parse_duration("0s").unwrap(), Duration::ZERO);
        assert_eq!(
            parse_duration("720h").unwrap(),
            Duration::from_secs(30 * 86_400)
        );
    }

    #[test]
    fn rejects_negative_and_garbage_durations() {
        assert!(parse_duration("-5s").unwrap_err().contains("negative"));
        assert!(parse_duration("soon").is_err());
        assert!(parse_duration("").is_err());
        assert!(parse_duration("10").is_err());
    }

    #[test]
    fn formatted_durations_parse_back() {
        for ms in [0u64, 250, 1000, 90_000, 5_400_000, 90_061_001] {
            let d = Duration::from_millis(ms);
            assert_eq!(parse_duration(&format_duration(d)).unwrap(), d, "{ms}");
        }
        assert_eq!(format_duration(Duration::from_secs(5400)), "1h30m");
    }

    #[test]
    fn timestamps_round_trip_rfc3339() {
        let t = Timestamp::parse("2026-11-23T18:00:00.250Z").unwrap();
        assert_eq!(Timestamp::parse(&t.to_string()).unwrap(), t);
        assert!(Timestamp::parse("yesterday").is_err());
    }
}
