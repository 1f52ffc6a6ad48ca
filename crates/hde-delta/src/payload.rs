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

/// How the engine stores one stream of a segment.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
#[non_exhaustive]
pub enum StreamRole {
    /// Small and regular (indices, tags): the fastest general codec, or raw when that is not
    /// smaller.
    Index,
    /// Content with the selector's choice of codec, alone.
    Content,
    /// Content with the selector's choice of codec, against the reference the layer builds
    /// for it ([`Round::reference`](crate::Round::reference)) from the streams named in
    /// [`StreamSpec::reference_needs`].
    Referenced,
}

/// The size of one segment, from which a stream's limits follow.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct SegmentShape {
    /// Bytes of the image in the segment (the last segment may be short).
    pub bytes: u64,
    /// Pages in the segment (the last one may be short).
    pub pages: u64,
    /// Page size in bytes.
    pub page_size: u64,
}

impl SegmentShape {
    /// The shape of segment `segment` of the round `header` (empty past the image's end).
    pub fn of(header: &RoundHeader, segment: u64) -> Self {
        let seg = u64::from(header.segment_size);
        let bytes = header.image_len.saturating_sub(segment.saturating_mul(seg)).min(seg);
        let page_size = u64::from(header.page_size);
        SegmentShape { bytes, pages: bytes.div_ceil(page_size.max(1)), page_size }
    }
}

/// What the engine knows of one stream of a segment: its name, how it is stored, and the
/// most it may hold (so that a reader checks a frame's claims before it allocates).
#[derive(Debug, Clone, Copy)]
pub struct StreamSpec {
    /// A short name for reports (`inspect`, metrics).
    pub name: &'static str,
    /// How the engine stores it.
    pub role: StreamRole,
    /// For [`StreamRole::Referenced`]: the streams (by index, all earlier than this one) the
    /// reference is built from; the decoder decompresses them first.
    pub reference_needs: &'static [usize],
    /// The most the stream may hold once decompressed, for a segment of this shape.
    pub max_raw: fn(SegmentShape) -> u64,
}

/// Checks that a layout is one the engine can run: at most [`MAX_STREAMS`] streams, and every
/// reference built from earlier streams only.
pub fn check_layout(layout: &[StreamSpec]) -> Result<(), &'static str> {
    if layout.is_empty() || layout.len() > MAX_STREAMS {
        return Err("a layout has 1 to 16 streams");
    }
    for (i, spec) in layout.iter().enumerate() {
        if spec.reference_needs.iter().any(|&n| n >= i) {
            return Err("a stream's reference is built from a later stream");
        }
        if spec.role != StreamRole::Referenced && !spec.reference_needs.is_empty() {
            return Err("a stream without a reference names streams for it");
        }
    }
    Ok(())
}

/// The most streams a segment has.
pub const MAX_STREAMS: usize = 16;

/// The streams of the page hierarchy, by index (see [`PAGE_LAYOUT`]).
pub mod page_stream {
    /// One [`PageClass`](crate::PageClass) code per page.
    pub const CLASSES: usize = 0;
    /// Varint page indices of duplicate and similar pages.
    pub const DUPS: usize = 1;
    /// Patch records of small changes.
    pub const XOR: usize = 2;
    /// Literal page bytes.
    pub const LITERALS: usize = 3;
}

/// The segment layout of the page hierarchy ([`PageDeltaEncoder`](crate::PageDeltaEncoder)).
pub const PAGE_LAYOUT: [StreamSpec; 4] = [
    StreamSpec { name: "classes", role: StreamRole::Index, reference_needs: &[], max_raw: |s| s.pages },
    // One varint page index per page at most.
    StreamSpec { name: "dups", role: StreamRole::Index, reference_needs: &[], max_raw: |s| s.pages * 10 },
    // At worst a page plus run headers per page.
    StreamSpec {
        name: "xor",
        role: StreamRole::Content,
        reference_needs: &[],
        max_raw: |s| s.pages * (s.page_size + 32),
    },
    StreamSpec {
        name: "literals",
        role: StreamRole::Referenced,
        reference_needs: &[page_stream::CLASSES, page_stream::DUPS],
        max_raw: |s| s.bytes,
    },
];

/// The byte streams of one segment: what the engine compresses and ships, one per entry of
/// the delta layer's layout ([`PAGE_LAYOUT`] for the page hierarchy: classes, one byte per
/// page; dups, one varint page index per duplicate or similar page; xor, one self-delimiting
/// record per patched page; literals, the bytes of the literal pages in order).
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct SegmentStreams {
    streams: Vec<Vec<u8>>,
}

impl SegmentStreams {
    /// `count` empty streams.
    pub fn with_count(count: usize) -> Self {
        SegmentStreams { streams: vec![Vec::new(); count] }
    }

    /// Number of streams.
    pub fn count(&self) -> usize {
        self.streams.len()
    }

    /// Stream `i` (empty if there is none).
    pub fn get(&self, i: usize) -> &[u8] {
        self.streams.get(i).map_or(&[], Vec::as_slice)
    }

    /// Stream `i`, for writing (the streams grow to hold it).
    pub fn get_mut(&mut self, i: usize) -> &mut Vec<u8> {
        if self.streams.len() <= i {
            self.streams.resize_with(i + 1, Vec::new);
        }
        &mut self.streams[i]
    }

    /// All streams, for writing several at once.
    pub fn all_mut(&mut self) -> &mut [Vec<u8>] {
        &mut self.streams
    }

    /// Empties every stream and makes it `count` streams (buffers are kept).
    pub fn reset(&mut self, count: usize) {
        self.streams.resize_with(count, Vec::new);
        for s in &mut self.streams {
            s.clear();
        }
    }

    /// Total bytes of the streams.
    pub fn len(&self) -> usize {
        self.streams.iter().map(Vec::len).sum()
    }

    /// True if every stream is empty.
    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }
}

/// Literal pages a reference sample takes: 32 pages, 128 KiB at 4 KiB pages.
const SAMPLE_PAGES: usize = 32;

/// Appends to `sample` up to [`SAMPLE_PAGES`] literal pages spread over a built segment, and
/// to `sample_ref` the reference pages of those that have one; `false` where no sampled page
/// has a reference (nothing to measure).
pub(crate) fn literal_sample(
    streams: &SegmentStreams,
    reference: &[u8],
    page_size: usize,
    sample: &mut Vec<u8>,
    sample_ref: &mut Vec<u8>,
) -> bool {
    let literals = streams.get(page_stream::LITERALS);
    if reference.is_empty() || page_size == 0 {
        return false;
    }
    let pages = literals.len().div_ceil(page_size);
    let stride = pages.div_ceil(SAMPLE_PAGES).max(1);
    let (mut lit, mut refs) = (0usize, 0usize);
    let start_ref = sample_ref.len();
    for &code in streams.get(page_stream::CLASSES) {
        let with_ref = match PageClass::from_u8(code) {
            Some(PageClass::Literal) => false,
            Some(PageClass::LiteralRef | PageClass::LiteralSimilar) => true,
            _ => continue,
        };
        if lit % stride == 0 {
            let page = literals.get(lit * page_size..((lit + 1) * page_size).min(literals.len())).unwrap_or(&[]);
            sample.extend_from_slice(page);
            if with_ref {
                let old = reference.get(refs * page_size..((refs + 1) * page_size).min(reference.len()));
                sample_ref.extend_from_slice(old.unwrap_or(&[]));
            }
        }
        lit += 1;
        refs += usize::from(with_ref);
    }
    sample_ref.len() > start_ref
}
