//! Shared input decoding for reeve's fuzz targets.
//!
//! Every target takes text first, so the seed corpora stay readable files:
//! the input is split into lines, the first lines are the text fields, and
//! whatever bytes follow pick the numbers (time zone, instants) the target
//! needs. Missing bytes read as zero, so every input is usable.

/// IANA zones with the shapes that make cron hard: none, one-hour DST,
/// 30-minute DST, +12:45, southern hemisphere, midnight transitions.
pub const ZONES: &[&str] = &[
    "UTC",
    "Europe/Berlin",
    "America/New_York",
    "Australia/Lord_Howe",
    "Pacific/Chatham",
    "Asia/Kolkata",
    "America/Santiago",
    "Europe/London",
    "Asia/Kathmandu",
    "America/St_Johns",
];

/// The input as up to `n` UTF-8 text fields (split at `\n`) and the rest as
/// raw bytes. `None` when a text field is not UTF-8.
pub fn split(data: &[u8], n: usize) -> Option<(Vec<&str>, Numbers<'_>)> {
    let mut rest = data;
    let mut fields = Vec::with_capacity(n);
    for _ in 0..n {
        let (field, tail) = match rest.iter().position(|b| *b == b'\n') {
            Some(i) => (&rest[..i], &rest[i + 1..]),
            None => (rest, &rest[rest.len()..]),
        };
        fields.push(std::str::from_utf8(field).ok()?);
        rest = tail;
    }
    Some((fields, Numbers(rest)))
}

/// Numbers read from raw bytes, zero once they run out.
#[derive(Debug)]
pub struct Numbers<'a>(&'a [u8]);

impl Numbers<'_> {
    pub fn u8(&mut self) -> u8 {
        let (first, rest) = self.0.split_first().map_or((0, &[][..]), |(f, r)| (*f, r));
        self.0 = rest;
        first
    }

    pub fn i64(&mut self) -> i64 {
        let mut bytes = [0u8; 8];
        for b in &mut bytes {
            *b = self.u8();
        }
        i64::from_le_bytes(bytes)
    }

    /// A zone from [`ZONES`].
    pub fn zone(&mut self) -> &'static str {
        ZONES[usize::from(self.u8()) % ZONES.len()]
    }

    /// Milliseconds since the epoch inside jiff's range, which is where
    /// every stored instant lives.
    pub fn instant_millis(&mut self) -> i64 {
        let min = jiff::Timestamp::MIN.as_millisecond();
        let max = jiff::Timestamp::MAX.as_millisecond();
        let span = (max - min) as u64 + 1;
        min + (self.i64() as u64 % span) as i64
    }
}
