//! What a round encodes to: the header, the page classes and the byte streams of each segment.

use std::fmt;

/// The identity of a baseline: a delta applies to exactly one.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub struct BaselineId {
    /// The sequence of the round that produced it (strictly increasing per encoder).
    pub seq: u64,
    /// Checksum of the baseline image ([`checksum`](crate::checksum)).
    pub checksum: u64,
}

impl fmt::Display for BaselineId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "seq {} checksum {:#018x}", self.seq, self.checksum)
    }
}

/// Everything a receiver needs to know about a round before its streams.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct RoundHeader {
    /// This round's sequence; after applying it the receiver's baseline is
    /// `BaselineId { seq, checksum }`.
    pub seq: u64,
    /// The baseline this round applies to; `None` for a keyframe.
    pub base: Option<BaselineId>,
    /// Length of the image in bytes.
    pub image_len: u64,
    /// Page size in bytes.
    pub page_size: u32,
    /// Segment size in bytes (a multiple of the page size).
    pub segment_size: u32,
    /// Checksum of the whole image ([`checksum`](crate::checksum)).
    pub checksum: u64,
}

impl RoundHeader {
    /// True for a keyframe (applies to no baseline).
    pub fn is_keyframe(&self) -> bool {
        self.base.is_none()
    }

    /// The identity of the baseline this round produces.
    pub fn produces(&self) -> BaselineId {
        BaselineId { seq: self.seq, checksum: self.checksum }
    }

    /// Number of segments of the image.
    pub fn segment_count(&self) -> u64 {
        self.image_len.div_ceil(u64::from(self.segment_size.max(1)))
    }
}

/// How one page is described. The byte value is the wire code in the classes stream.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
#[repr(u8)]
pub enum PageClass {
    /// Same as the baseline page at the same index.
    Unchanged = 0,
    /// All zero.
    Zero = 1,
    /// Same as a baseline page; its index is in the dups stream.
    DupBaseline = 2,
    /// Same as an earlier page of this image; its index is in the dups stream.
    DupCurrent = 3,
    /// The baseline page at the same index XOR a record of the xor stream (format v1 frames
    /// before `Patch`; still decoded, no longer produced).
    Xor = 4,
    /// Literal bytes, with no old version in the reference.
    Literal = 5,
    /// Literal bytes whose old version (the baseline page at the same index) is part of the
    /// segment's reference.
    LiteralRef = 6,
    /// The baseline page at the same index with the runs of a record of the xor stream
    /// replaced by that record's new bytes.
    Patch = 7,
    /// Literal bytes whose reference is the baseline page named in the dups stream (a page
    /// like it, elsewhere: another VM's image, a moved page).
    LiteralSimilar = 8,
}

impl PageClass {
    /// Reads a wire code.
    pub fn from_u8(code: u8) -> Option<Self> {
        Some(match code {
            0 => PageClass::Unchanged,
            1 => PageClass::Zero,
            2 => PageClass::DupBaseline,
            3 => PageClass::DupCurrent,
            4 => PageClass::Xor,
            5 => PageClass::Literal,
            6 => PageClass::LiteralRef,
            7 => PageClass::Patch,
            8 => PageClass::LiteralSimilar,
            _ => return None,
        })
    }
}

/// Pages per class in a round (or summed over rounds).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub struct ClassCounts {
    /// Same as the baseline page.
    pub unchanged: u64,
    /// All zero.
    pub zero: u64,
    /// Duplicates of a baseline page or an earlier page of the image.
    pub duplicate: u64,
    /// Sent as XOR + zero runs against the old page.
    pub xor: u64,
    /// Sent as literal bytes.
    pub literal: u64,
}

impl ClassCounts {
    /// Counts one page of `class`.
    pub fn count(&mut self, class: PageClass) {
        match class {
            PageClass::Unchanged => self.unchanged += 1,
            PageClass::Zero => self.zero += 1,
            PageClass::DupBaseline | PageClass::DupCurrent => self.duplicate += 1,
            PageClass::Xor | PageClass::Patch => self.xor += 1,
            PageClass::Literal | PageClass::LiteralRef | PageClass::LiteralSimilar => self.literal += 1,
        }
    }

    /// Adds another count to this one.
    pub fn merge(&mut self, other: &ClassCounts) {
        self.unchanged += other.unchanged;
        self.zero += other.zero;
        self.duplicate += other.duplicate;
        self.xor += other.xor;
        self.literal += other.literal;
    }

    /// All pages counted.
    pub fn total(&self) -> u64 {
        self.unchanged + self.zero + self.duplicate + self.xor + self.literal
    }
}

/// The byte streams of one segment: what the engine compresses and ships.
///
/// `classes` has one byte per page ([`PageClass`] codes); `dups` one varint page index per
/// duplicate page; `xor` one self-delimiting record per XOR page; `literals` the bytes of the
/// literal pages in order. The natural reference of `literals` is the old content of its
/// [`PageClass::LiteralRef`] pages and the baseline pages its [`PageClass::LiteralSimilar`]
/// pages name, which both sides build with `reference`.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct SegmentStreams {
    /// Page class codes, one byte per page.
    pub classes: Vec<u8>,
    /// Baseline page indices of duplicate and similar pages, varints.
    pub dups: Vec<u8>,
    /// XOR + zero-run records.
    pub xor: Vec<u8>,
    /// Literal page bytes.
    pub literals: Vec<u8>,
}

impl SegmentStreams {
    /// Total bytes of the four streams.
    pub fn len(&self) -> usize {
        self.classes.len() + self.dups.len() + self.xor.len() + self.literals.len()
    }

    /// True if all four streams are empty.
    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }
}
