//! Link rates and sizes as people type them.
//!
//! One parser for every rate a user gives (`--bandwidth`, and any later rate flag), so that no
//! two flags read the same text differently. Network people write bits (`100mbit`, `100Mbps`,
//! `100Mb/s`, `1gbit`, `1Gbps`); storage people write bytes with a capital `B` (`50MB/s`,
//! `50MiB/s`). A number without a unit is refused rather than guessed: `100` could be either,
//! and a guess is 8x wrong half the time.
//!
//! Prefixes are decimal (`k`, `M`, `G`, `T`, either case: `mbit` is megabits, as `tc` writes
//! it) or binary (`Ki`, `Mi`, `Gi`, `Ti`). Unlike `tc`, `mbps` is megabits per second: the
//! lower-case `b` always means bits.

use std::fmt;
use std::str::FromStr;

use crate::{Error, Result};

/// A data rate. Stored in bytes per second (what the engine's cost model uses); shown and
/// reported in bits per second (what links are sold and shaped in).
#[derive(Debug, Clone, Copy, PartialEq, PartialOrd)]
pub struct Rate {
    bytes_per_second: f64,
}

const RATE_FORMS: &str = "bits as 100mbit, 100Mbps, 100Mb/s or 1gbit; bytes as 12.5MB/s or 12MiB/s";

impl Rate {
    /// A rate of `bits` bits per second (positive and finite).
    pub fn from_bits_per_second(bits: f64) -> Result<Self> {
        Self::from_bytes_per_second(bits / 8.0)
    }

    /// A rate of `bytes` bytes per second (positive and finite).
    pub fn from_bytes_per_second(bytes: f64) -> Result<Self> {
        if bytes.is_finite() && bytes > 0.0 {
            Ok(Rate { bytes_per_second: bytes })
        } else {
            Err(Error::InvalidUnit { text: bytes.to_string(), expected: "a positive, finite rate" })
        }
    }

    /// Bytes per second.
    pub fn bytes_per_second(self) -> f64 {
        self.bytes_per_second
    }

    /// Bits per second.
    pub fn bits_per_second(self) -> f64 {
        self.bytes_per_second * 8.0
    }
}

impl fmt::Display for Rate {
    /// The rate in bits per second with a decimal prefix, e.g. `100 Mbit/s`.
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let bits = self.bits_per_second();
        let (value, prefix) = [(1e12, "T"), (1e9, "G"), (1e6, "M"), (1e3, "k")]
            .into_iter()
            .find(|(scale, _)| bits >= *scale)
            .map_or((bits, ""), |(scale, p)| (bits / scale, p));
        write!(f, "{} {prefix}bit/s", trim(value))
    }
}

/// `value` with at most three decimals and no trailing zeros.
fn trim(value: f64) -> String {
    let s = format!("{value:.3}");
    s.trim_end_matches('0').trim_end_matches('.').to_owned()
}

/// Splits `text` into its number and the rest.
fn split_number(text: &str) -> (&str, &str) {
    let end = text.find(|c: char| !(c.is_ascii_digit() || c == '.')).unwrap_or(text.len());
    (&text[..end], text[end..].trim_start())
}

/// The multiplier of a prefix at the start of `unit`, and what follows it.
fn prefix(unit: &str) -> (f64, &str) {
    const BINARY: [(&str, f64); 4] = [
        ("Ki", 1024.0),
        ("Mi", 1024.0 * 1024.0),
        ("Gi", 1024.0 * 1024.0 * 1024.0),
        ("Ti", 1024f64 * 1024.0 * 1024.0 * 1024.0),
    ];
    for (p, scale) in BINARY {
        if let Some(rest) = unit.strip_prefix(p) {
            return (scale, rest);
        }
    }
    let scale = match unit.chars().next() {
        Some('k' | 'K') => 1e3,
        Some('m' | 'M') => 1e6,
        Some('g' | 'G') => 1e9,
        Some('t' | 'T') => 1e12,
        _ => return (1.0, unit),
    };
    (scale, &unit[1..])
}

impl FromStr for Rate {
    type Err = Error;

    fn from_str(text: &str) -> Result<Self> {
        let bad = |expected| Error::InvalidUnit { text: text.to_owned(), expected };
        let (number, unit) = split_number(text.trim());
        let value: f64 = number.parse().map_err(|_| bad(RATE_FORMS))?;
        if unit.is_empty() {
            return Err(bad(
                "a unit: a bare number could be bits or bytes; give bits as 100mbit or 100Mbps, bytes as 12.5MB/s",
            ));
        }
        let (scale, rest) = prefix(unit);
        let rest = rest.trim_start();
        let per_second = ["/s", "/sec", "ps"];
        let rest_unit = per_second.iter().find_map(|s| rest.strip_suffix(s)).unwrap_or(rest);
        let bits = match rest_unit {
            "bit" | "bits" | "Bit" | "Bits" | "b" => true,
            "B" | "byte" | "bytes" | "Byte" | "Bytes" => false,
            _ => return Err(bad(RATE_FORMS)),
        };
        let bytes = value * scale / if bits { 8.0 } else { 1.0 };
        Rate::from_bytes_per_second(bytes).map_err(|_| bad("a positive rate"))
    }
}

/// A size in bytes from `4096`, `64K`, `64M`, `10G`, `1T` (binary multiples, optionally
/// followed by `B` or `iB`: `64MiB` = `64M` = `64MB`): the one size parser of the workspace.
pub fn parse_size(text: &str) -> Result<u64> {
    let bad = || Error::InvalidUnit { text: text.to_owned(), expected: "a size such as 4096, 64K, 64M or 10G" };
    let t = text.trim();
    let t = t.strip_suffix("iB").or_else(|| t.strip_suffix('B')).unwrap_or(t);
    let (digits, shift) = match t.char_indices().last() {
        Some((i, 'K' | 'k')) => (&t[..i], 10),
        Some((i, 'M' | 'm')) => (&t[..i], 20),
        Some((i, 'G' | 'g')) => (&t[..i], 30),
        Some((i, 'T' | 't')) => (&t[..i], 40),
        _ => (t, 0),
    };
    let n: u64 = digits.parse().map_err(|_| bad())?;
    n.checked_mul(1 << shift).ok_or_else(bad)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn bits(text: &str) -> f64 {
        text.parse::<Rate>().unwrap_or_else(|e| panic!("{text}: {e}")).bits_per_second()
    }

    #[test]
    fn rates_as_network_and_storage_people_write_them() {
        for (text, want) in [
            ("100mbit", 1e8),
            ("100Mbit", 1e8),
            ("100Mbps", 1e8),
            ("100mbps", 1e8),
            ("100Mb/s", 1e8),
            ("1gbit", 1e9),
            ("1Gbps", 1e9),
            ("10G bit/s", 1e10),
            ("56kbit", 56e3),
            ("12.5MB/s", 1e8),
            ("12.5MBps", 1e8),
            ("50MiB/s", 50.0 * 1024.0 * 1024.0 * 8.0),
            ("1 GB/s", 8e9),
            ("800bit", 800.0),
        ] {
            assert!((bits(text) - want).abs() < 1e-6 * want, "{text}: {} != {want}", bits(text));
        }
    }

    #[test]
    fn a_rate_without_a_unit_or_with_a_wrong_one_is_refused_and_shows_both_forms() {
        for text in ["100", "10G", "100M", "1.5", "", "mbit", "-5mbit", "0mbit", "100mbyte/h", "1e3mbit", "10 furlongs"]
        {
            let err = text.parse::<Rate>().unwrap_err();
            assert!(matches!(err, Error::InvalidUnit { .. }), "{text}: {err:?}");
        }
        let msg = "100".parse::<Rate>().unwrap_err().to_string();
        assert!(msg.contains("100mbit") && msg.contains("MB/s"), "{msg}");
    }

    #[test]
    fn rates_display_in_bits() {
        assert_eq!("12.5MB/s".parse::<Rate>().unwrap().to_string(), "100 Mbit/s");
        assert_eq!("1gbit".parse::<Rate>().unwrap().to_string(), "1 Gbit/s");
        assert_eq!("1500kbit".parse::<Rate>().unwrap().to_string(), "1.5 Mbit/s");
    }

    #[test]
    fn sizes_take_every_binary_prefix() {
        for (text, want) in [
            ("4096", 4096),
            ("64K", 64 << 10),
            ("64M", 64 << 20),
            ("64MiB", 64 << 20),
            ("10G", 10 << 30),
            ("1T", 1 << 40),
        ] {
            assert_eq!(parse_size(text).unwrap(), want, "{text}");
        }
        for text in ["", "M", "1.5M", "12X", "99999999999999T"] {
            assert!(parse_size(text).is_err(), "{text}");
        }
    }
}
