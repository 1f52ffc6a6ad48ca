//! What to run: codec ids (stable, on the wire) and codec specifications (id plus parameters).

use std::fmt;
use std::str::FromStr;

use crate::{Error, Result};

/// The stable numeric identity of a codec, written on the wire.
///
/// Values are never reused or renumbered: a frame written today must decode in every later
/// version. Only the id is needed to decode; levels and windows are compressor-side choices.
///
/// Ids 0-127 belong to this crate (three are taken); 128-255 are [`CustomId`]s, for codecs a
/// user adds to a [`CodecSet`](crate::CodecSet) (both ends must add the same codec under the
/// same id: a stream of an id the decoder has no codec for is [`Error::UnknownCodec`]).
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, PartialOrd, Ord)]
#[non_exhaustive]
pub enum CodecId {
    /// Bytes stored as they are (wire id 0).
    Raw,
    /// LZ4 block format, no framing, no checksum (wire id 1).
    Lz4,
    /// A single zstd frame (wire id 2).
    Zstd,
    /// A codec added by the user (wire ids 128-255).
    Custom(CustomId),
}

impl CodecId {
    /// Every built-in id, in wire order.
    pub const ALL: [CodecId; 3] = [CodecId::Raw, CodecId::Lz4, CodecId::Zstd];

    /// The byte written on the wire.
    pub const fn to_u8(self) -> u8 {
        match self {
            CodecId::Raw => 0,
            CodecId::Lz4 => 1,
            CodecId::Zstd => 2,
            CodecId::Custom(id) => id.0,
        }
    }

    /// Reads a wire byte; a value no version assigns (3-127) is [`Error::UnknownCodec`].
    /// Custom ids are read as such: whether a codec exists for one is the set's question.
    pub const fn from_u8(id: u8) -> Result<Self> {
        match id {
            0 => Ok(CodecId::Raw),
            1 => Ok(CodecId::Lz4),
            2 => Ok(CodecId::Zstd),
            CustomId::FIRST..=u8::MAX => Ok(CodecId::Custom(CustomId(id))),
            _ => Err(Error::UnknownCodec { id }),
        }
    }

    /// Lower-case name used in metrics and on the command line (`custom` for every custom id;
    /// [`Display`](fmt::Display) adds the number).
    pub const fn name(self) -> &'static str {
        match self {
            CodecId::Raw => "raw",
            CodecId::Lz4 => "lz4",
            CodecId::Zstd => "zstd",
            CodecId::Custom(_) => "custom",
        }
    }
}

/// The wire id of a user's codec: a number in `128..=255`.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct CustomId(u8);

impl CustomId {
    /// The lowest custom id.
    pub const FIRST: u8 = 128;
    /// The highest custom id.
    pub const MAX: CustomId = CustomId(u8::MAX);

    /// The custom id `id`, which must be in `128..=255` (lower ids are this crate's).
    pub const fn new(id: u8) -> Result<Self> {
        if id < Self::FIRST {
            return Err(Error::UnknownCodec { id });
        }
        Ok(CustomId(id))
    }

    /// The byte written on the wire.
    pub const fn get(self) -> u8 {
        self.0
    }
}

impl TryFrom<u8> for CodecId {
    type Error = Error;
    fn try_from(id: u8) -> Result<Self> {
        CodecId::from_u8(id)
    }
}

impl fmt::Display for CodecId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            CodecId::Custom(id) => write!(f, "custom-{}", id.0),
            _ => f.write_str(self.name()),
        }
    }
}

/// Validated zstd parameters: a level in `1..=22` and whether to use a long window.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct ZstdParams {
    level: i8,
    long_window: bool,
}

impl ZstdParams {
    /// The lowest level we run (zstd's negative "fast" levels lose to LZ4 here).
    pub const MIN_LEVEL: i32 = 1;
    /// zstd's highest level.
    pub const MAX_LEVEL: i32 = 22;
    /// Speed first.
    pub const FASTEST: ZstdParams = ZstdParams { level: 1, long_window: false };
    /// The balanced default (zstd's own default level).
    pub const BALANCED: ZstdParams = ZstdParams { level: 3, long_window: false };
    /// Ratio first, still practical: level 19 with a long window.
    pub const MAX: ZstdParams = ZstdParams { level: 19, long_window: true };
    /// log2 of the long window: 128 MiB, zstd's default decoder limit, so any zstd decoder
    /// accepts our frames without extra flags.
    pub const LONG_WINDOW_LOG: u32 = 27;

    /// Parameters for `level`, which must be in `1..=22`.
    pub const fn new(level: i32) -> Result<Self> {
        if level < Self::MIN_LEVEL || level > Self::MAX_LEVEL {
            return Err(Error::InvalidLevel {
                codec: CodecId::Zstd,
                level,
                min: Self::MIN_LEVEL,
                max: Self::MAX_LEVEL,
            });
        }
        // The range check above makes the narrowing exact.
        #[allow(clippy::cast_possible_truncation)] // reason: 1..=22 fits in i8.
        Ok(ZstdParams { level: level as i8, long_window: false })
    }

    /// Parameters for `level` brought into `1..=22` (for constants: `new` is the checked
    /// constructor).
    pub const fn clamped(level: i32) -> Self {
        let level = if level < Self::MIN_LEVEL {
            Self::MIN_LEVEL
        } else if level > Self::MAX_LEVEL {
            Self::MAX_LEVEL
        } else {
            level
        };
        #[allow(clippy::cast_possible_truncation)] // reason: 1..=22 fits in i8.
        ZstdParams { level: level as i8, long_window: false }
    }

    /// The same level with the long window (`--long=27`) switched on or off.
    #[must_use]
    pub const fn with_long_window(self, long_window: bool) -> Self {
        ZstdParams { level: self.level, long_window }
    }

    /// The compression level.
    pub const fn level(self) -> i32 {
        self.level as i32
    }

    /// Whether long-distance matching over a 128 MiB window is on.
    pub const fn long_window(self) -> bool {
        self.long_window
    }
}

impl Default for ZstdParams {
    fn default() -> Self {
        ZstdParams::BALANCED
    }
}

/// A codec with its parameters: the one name of a codec choice in every layer (what a
/// selector picks, an encoder runs, metrics and the CLI print).
///
/// Its text form (`raw`, `lz4`, `zstd-3`, `zstd-19-long`, `custom-200`) round-trips through
/// [`FromStr`]. Parameters are validated when a spec is made, so every spec can run.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, PartialOrd, Ord)]
#[non_exhaustive]
pub enum CodecSpec {
    /// Store bytes as they are.
    Raw,
    /// LZ4 block format.
    Lz4,
    /// zstd with the given parameters.
    Zstd(ZstdParams),
    /// A codec added to the [`CodecSet`](crate::CodecSet) under this id.
    Custom(CustomId),
}

impl CodecSpec {
    /// The wire id of this codec.
    pub const fn id(self) -> CodecId {
        match self {
            CodecSpec::Raw => CodecId::Raw,
            CodecSpec::Lz4 => CodecId::Lz4,
            CodecSpec::Zstd(_) => CodecId::Zstd,
            CodecSpec::Custom(id) => CodecId::Custom(id),
        }
    }

    /// The zstd level, for a zstd spec.
    pub const fn zstd_level(self) -> Option<i32> {
        match self {
            CodecSpec::Zstd(p) => Some(p.level()),
            _ => None,
        }
    }

    /// zstd at `level` (validated).
    pub const fn zstd(level: i32) -> Result<Self> {
        match ZstdParams::new(level) {
            Ok(p) => Ok(CodecSpec::Zstd(p)),
            Err(e) => Err(e),
        }
    }
}

impl fmt::Display for CodecSpec {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            CodecSpec::Raw => f.write_str("raw"),
            CodecSpec::Lz4 => f.write_str("lz4"),
            CodecSpec::Zstd(p) if p.long_window() => write!(f, "zstd-{}-long", p.level()),
            CodecSpec::Zstd(p) => write!(f, "zstd-{}", p.level()),
            CodecSpec::Custom(id) => write!(f, "custom-{}", id.0),
        }
    }
}

/// Why a codec name did not parse.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("unknown codec {name:?}: expected raw, lz4, zstd-N or zstd-N-long with N in 1..=22, or custom-N with N in 128..=255")]
pub struct ParseCodecSpecError {
    name: String,
}

impl FromStr for CodecSpec {
    type Err = ParseCodecSpecError;

    fn from_str(s: &str) -> Result<Self, Self::Err> {
        let bad = || ParseCodecSpecError { name: s.to_owned() };
        match s {
            "raw" => return Ok(CodecSpec::Raw),
            "lz4" => return Ok(CodecSpec::Lz4),
            "zstd" => return Ok(CodecSpec::Zstd(ZstdParams::BALANCED)),
            _ => {}
        }
        if let Some(id) = s.strip_prefix("custom-") {
            let id = id.parse::<u8>().ok().and_then(|id| CustomId::new(id).ok()).ok_or_else(bad)?;
            return Ok(CodecSpec::Custom(id));
        }
        let rest = s.strip_prefix("zstd-").ok_or_else(bad)?;
        let (level, long) = match rest.strip_suffix("-long") {
            Some(level) => (level, true),
            None => (rest, false),
        };
        let level: i32 = level.parse().map_err(|_| bad())?;
        let params = ZstdParams::new(level).map_err(|_| bad())?;
        Ok(CodecSpec::Zstd(params.with_long_window(long)))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn ids_are_stable() {
        // These numbers are on the wire: changing one breaks every stored frame.
        assert_eq!(CodecId::Raw.to_u8(), 0);
        assert_eq!(CodecId::Lz4.to_u8(), 1);
        assert_eq!(CodecId::Zstd.to_u8(), 2);
        for id in CodecId::ALL {
            assert_eq!(CodecId::from_u8(id.to_u8()), Ok(id));
        }
        assert_eq!(CodecId::from_u8(3), Err(Error::UnknownCodec { id: 3 }));
        assert_eq!(CodecId::from_u8(127), Err(Error::UnknownCodec { id: 127 }));
        for id in [128u8, 200, 255] {
            let custom = CodecId::from_u8(id).unwrap();
            assert_eq!(custom, CodecId::Custom(CustomId::new(id).unwrap()));
            assert_eq!(custom.to_u8(), id);
        }
        assert!(CustomId::new(2).is_err());
    }

    #[test]
    fn levels_are_validated() {
        assert!(ZstdParams::new(0).is_err());
        assert!(ZstdParams::new(23).is_err());
        assert!(ZstdParams::new(-5).is_err());
        assert_eq!(ZstdParams::new(1).map(ZstdParams::level), Ok(1));
        assert_eq!(ZstdParams::new(22).map(ZstdParams::level), Ok(22));
        assert_eq!(ZstdParams::BALANCED.level(), 3);
        assert_eq!(ZstdParams::MAX.level(), 19);
    }

    #[test]
    fn spec_text_round_trips() {
        for text in ["raw", "lz4", "zstd-1", "zstd-3", "zstd-19-long", "zstd-22", "custom-128", "custom-255"] {
            let spec: CodecSpec = text.parse().unwrap();
            assert_eq!(spec.to_string(), text);
        }
        assert_eq!("zstd".parse::<CodecSpec>().unwrap(), CodecSpec::Zstd(ZstdParams::BALANCED));
        for bad in ["", "zstd-0", "zstd-23", "zstd-x", "lz5", "zstd-3-short", "zstd--3", "custom-2", "custom-256"] {
            assert!(bad.parse::<CodecSpec>().is_err(), "{bad:?} parsed");
        }
    }
}
