//! The wire format of a frame (specified in `docs/FORMAT.md`; keep the two in step).
//!
//! A frame is a round header followed by one record per segment, each self-checking, so a
//! writer emits segments as they are compressed and a reader validates every length against
//! its limits before it allocates anything.

use std::io::{Read, Write};

use hde_codec::CodecId;
use hde_delta::{BaselineId, RoundHeader, SegmentShape, StreamSpec, MAX_STREAMS};
use xxhash_rust::xxh3::{xxh3_64, Xxh3};

use crate::{Error, Result};

/// The first four bytes of every frame.
pub const MAGIC: [u8; 4] = *b"HDEF";
/// The format version this build writes (and the newest it reads). Version 1 frames (four
/// streams per segment, no stream count) are still read.
pub const VERSION: u8 = 2;
/// Bytes of the fixed part of a version 1 round header (the key and the header checksum
/// follow).
pub const HEADER_FIXED_V1: usize = 56;
/// Bytes of the fixed part of a version 2 round header: version 1's and the stream count.
pub const HEADER_FIXED: usize = 57;
/// Streams per segment in a version 1 frame (classes, dups, xor, literals).
pub const STREAMS_V1: usize = 4;

/// Bytes of a segment record of `streams` streams before its stream data: the index, 12
/// bytes per stream and the checksum.
pub const fn segment_fixed(streams: usize) -> usize {
    4 + 12 * streams + 8
}
/// The longest key a frame carries.
pub const MAX_KEY: usize = 255;

const FLAG_KEYFRAME: u8 = 1;
/// Header flag: the base key follows the key (a delta against another key's baseline).
const FLAG_BASE_KEY: u8 = 2;
const STREAM_FLAG_REFERENCE: u8 = 1;

/// The round header of a frame: which key, which round, which baseline it applies to.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct FrameHeader {
    /// The key (VM) the frame belongs to, UTF-8, at most 255 bytes.
    pub key: String,
    /// Sequence, base, geometry and image checksum.
    pub round: RoundHeader,
    /// The key whose baseline a delta applies to, where it is not `key`'s own (a VM encoded
    /// against another VM's image the receiver holds). `None`: `key`'s.
    pub base_key: Option<String>,
    /// Streams per segment record: the length of the delta layer's layout (4 for the page
    /// hierarchy, and in every version 1 frame).
    pub streams: u8,
}

/// How one stream of a segment is stored.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct StreamDesc {
    /// The codec that wrote it.
    pub codec: CodecId,
    /// Compressed against the segment's reference (old content of its changed pages).
    pub with_reference: bool,
    /// Length once decompressed.
    pub raw_len: u32,
    /// Length stored in the frame.
    pub stored_len: u32,
}

/// One segment: how its streams are stored, and their bytes.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SegmentRecord {
    /// The segment's index in the image.
    pub index: u32,
    /// One per stream of the delta layer's layout, in its order.
    pub streams: Vec<StreamDesc>,
    /// The stored streams, concatenated.
    pub data: Vec<u8>,
}

impl SegmentRecord {
    /// The stored bytes of stream `i` (empty past the last).
    pub fn stream(&self, i: usize) -> &[u8] {
        let start: usize = self.streams[..i].iter().map(|s| s.stored_len as usize).sum();
        let len = self.streams.get(i).map_or(0, |s| s.stored_len as usize);
        self.data.get(start..start + len).unwrap_or(&[])
    }
}

/// What a reader accepts.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct FrameLimits {
    /// Largest image.
    pub max_image: u64,
}

impl Default for FrameLimits {
    fn default() -> Self {
        FrameLimits { max_image: 64 << 30 }
    }
}

fn le32(b: &[u8], at: usize) -> u32 {
    let mut x = [0u8; 4];
    x.copy_from_slice(&b[at..at + 4]);
    u32::from_le_bytes(x)
}

fn le64(b: &[u8], at: usize) -> u64 {
    let mut x = [0u8; 8];
    x.copy_from_slice(&b[at..at + 8]);
    u64::from_le_bytes(x)
}

/// Encodes the round header (fixed part, key, header checksum).
pub fn encode_header(header: &FrameHeader) -> Result<Vec<u8>> {
    let r = &header.round;
    let key = header.key.as_bytes();
    if key.len() > MAX_KEY {
        return Err(Error::LimitExceeded { what: "key length", claimed: key.len() as u64, limit: MAX_KEY as u64 });
    }
    if !r.page_size.is_power_of_two() {
        return Err(Error::CorruptFrame { reason: "page size is not a power of two" });
    }
    let base_key = header.base_key.as_deref().map(str::as_bytes);
    if let Some(b) = base_key {
        if b.len() > MAX_KEY || b.is_empty() || r.is_keyframe() {
            return Err(Error::LimitExceeded {
                what: "base key length",
                claimed: b.len() as u64,
                limit: MAX_KEY as u64,
            });
        }
    }
    if header.streams == 0 || usize::from(header.streams) > MAX_STREAMS {
        return Err(Error::LimitExceeded {
            what: "streams per segment",
            claimed: u64::from(header.streams),
            limit: MAX_STREAMS as u64,
        });
    }
    let mut out = Vec::with_capacity(HEADER_FIXED + key.len() + 9 + base_key.map_or(0, <[u8]>::len));
    out.extend_from_slice(&MAGIC);
    out.push(VERSION);
    let flags = if r.is_keyframe() { FLAG_KEYFRAME } else { 0 } | if base_key.is_some() { FLAG_BASE_KEY } else { 0 };
    out.push(flags);
    out.push(r.page_size.trailing_zeros() as u8);
    out.push(key.len() as u8);
    out.extend_from_slice(&r.segment_size.to_le_bytes());
    let segments = u32::try_from(r.segment_count()).map_err(|_| Error::CorruptFrame { reason: "too many segments" })?;
    out.extend_from_slice(&segments.to_le_bytes());
    out.extend_from_slice(&r.image_len.to_le_bytes());
    out.extend_from_slice(&r.seq.to_le_bytes());
    let base = r.base.unwrap_or(BaselineId { seq: 0, checksum: 0 });
    out.extend_from_slice(&base.seq.to_le_bytes());
    out.extend_from_slice(&base.checksum.to_le_bytes());
    out.extend_from_slice(&r.checksum.to_le_bytes());
    out.push(header.streams);
    out.extend_from_slice(key);
    if let Some(b) = base_key {
        out.push(b.len() as u8);
        out.extend_from_slice(b);
    }
    let sum = xxh3_64(&out);
    out.extend_from_slice(&sum.to_le_bytes());
    Ok(out)
}

/// Reads and validates a round header.
pub fn read_header(r: &mut impl Read, limits: &FrameLimits) -> Result<FrameHeader> {
    let mut fixed = [0u8; HEADER_FIXED_V1];
    // The first read tells an empty input (a user's mistake, said plainly) from a cut one.
    let first = loop {
        match r.read(&mut fixed) {
            Err(e) if e.kind() == std::io::ErrorKind::Interrupted => continue,
            other => break other?,
        }
    };
    if first == 0 {
        return Err(Error::EmptyInput);
    }
    read_exact(r, &mut fixed[first..], "frame header")?;
    if fixed[..4] != MAGIC {
        return Err(Error::NotAFrame { reason: "wrong magic" });
    }
    if fixed[4] == 0 || fixed[4] > VERSION {
        return Err(Error::NotAFrame { reason: "unsupported format version" });
    }
    let mut all = fixed.to_vec();
    let streams = if fixed[4] == 1 {
        STREAMS_V1 as u8
    } else {
        let mut count = [0u8; 1];
        read_exact(r, &mut count, "frame header")?;
        all.push(count[0]);
        count[0]
    };
    let key_len = fixed[7] as usize;
    let flags = fixed[5];
    if flags & !(FLAG_KEYFRAME | FLAG_BASE_KEY) != 0 || flags == FLAG_KEYFRAME | FLAG_BASE_KEY {
        return Err(Error::CorruptFrame { reason: "unknown header flags" });
    }
    let mut key = vec![0u8; key_len];
    read_exact(r, &mut key, "frame header")?;
    all.extend_from_slice(&key);
    let mut base_key = None;
    if flags & FLAG_BASE_KEY != 0 {
        let mut len = [0u8; 1];
        read_exact(r, &mut len, "frame header")?;
        let mut b = vec![0u8; usize::from(len[0])];
        read_exact(r, &mut b, "frame header")?;
        all.push(len[0]);
        all.extend_from_slice(&b);
        base_key = Some(b);
    }
    let mut sum = [0u8; 8];
    read_exact(r, &mut sum, "frame header")?;
    let stored = u64::from_le_bytes(sum);
    let computed = xxh3_64(&all);
    if stored != computed {
        return Err(Error::ChecksumMismatch { what: "header".into(), stored, computed });
    }
    if streams == 0 || usize::from(streams) > MAX_STREAMS {
        return Err(Error::CorruptFrame { reason: "stream count out of range" });
    }
    let page_log = u32::from(fixed[6]);
    if !(9..=16).contains(&page_log) {
        return Err(Error::CorruptFrame { reason: "page size out of range" });
    }
    let page_size = 1u32 << page_log;
    let segment_size = le32(&fixed, 8);
    if segment_size == 0 || segment_size % page_size != 0 || segment_size > 1 << 30 {
        return Err(Error::CorruptFrame { reason: "segment size out of range" });
    }
    let segments = le32(&fixed, 12);
    let image_len = le64(&fixed, 16);
    if image_len > limits.max_image {
        return Err(Error::LimitExceeded { what: "image size", claimed: image_len, limit: limits.max_image });
    }
    if u64::from(segments) != image_len.div_ceil(u64::from(segment_size)) {
        return Err(Error::CorruptFrame { reason: "segment count does not match image size" });
    }
    let key = String::from_utf8(key).map_err(|_| Error::CorruptFrame { reason: "key is not UTF-8" })?;
    let base_key = base_key
        .map(String::from_utf8)
        .transpose()
        .map_err(|_| Error::CorruptFrame { reason: "base key is not UTF-8" })?;
    if base_key.as_ref().is_some_and(|b| b.is_empty() || *b == key) {
        return Err(Error::CorruptFrame { reason: "base key empty or the frame's own key" });
    }
    let keyframe = flags & FLAG_KEYFRAME != 0;
    let base = (!keyframe).then(|| BaselineId { seq: le64(&fixed, 32), checksum: le64(&fixed, 40) });
    Ok(FrameHeader {
        key,
        round: RoundHeader {
            seq: le64(&fixed, 24),
            base,
            image_len,
            page_size,
            segment_size,
            checksum: le64(&fixed, 48),
        },
        base_key,
        streams,
    })
}

/// Encodes a segment record.
pub fn encode_segment(record: &SegmentRecord) -> Vec<u8> {
    let mut out = Vec::with_capacity(segment_fixed(record.streams.len()) + record.data.len());
    // Writing to a Vec cannot fail.
    let _ = write_segment(&mut out, record);
    out
}

/// The fixed part of a segment record (index, stream descriptors, checksum over them and the
/// data): computed where the record is made, so the writer only writes.
pub fn segment_head(record: &SegmentRecord) -> Vec<u8> {
    let fixed = segment_fixed(record.streams.len());
    let mut head = vec![0u8; fixed];
    head[..4].copy_from_slice(&record.index.to_le_bytes());
    for (i, s) in record.streams.iter().enumerate() {
        let at = 4 + i * 12;
        head[at] = s.codec.to_u8();
        head[at + 1] = if s.with_reference { STREAM_FLAG_REFERENCE } else { 0 };
        head[at + 4..at + 8].copy_from_slice(&s.raw_len.to_le_bytes());
        head[at + 8..at + 12].copy_from_slice(&s.stored_len.to_le_bytes());
    }
    let mut sum = Xxh3::new();
    sum.update(&head[..fixed - 8]);
    sum.update(&record.data);
    head[fixed - 8..].copy_from_slice(&sum.digest().to_le_bytes());
    head
}

/// Writes a segment record to `out` without copying its data; returns the bytes written.
pub fn write_segment(out: &mut impl Write, record: &SegmentRecord) -> std::io::Result<u64> {
    write_sealed(out, &segment_head(record), record)
}

/// Writes a record whose head [`segment_head`] already made.
pub fn write_sealed(out: &mut impl Write, head: &[u8], record: &SegmentRecord) -> std::io::Result<u64> {
    out.write_all(head)?;
    out.write_all(&record.data)?;
    Ok((head.len() + record.data.len()) as u64)
}

/// Splits a stream of frames (`hde encode` of several rounds writes them one after another)
/// into its frames, checking each one's structure (header, and every segment's lengths against
/// `layout`) but not its data. The iterator ends after the first error. An empty input yields
/// one error ([`Error::EmptyInput`]), not an empty stream.
pub fn frames<'a>(
    bytes: &'a [u8],
    limits: &FrameLimits,
    layout: &'a [StreamSpec],
) -> impl Iterator<Item = Result<&'a [u8]>> + 'a {
    let limits = *limits;
    // `None` once the input is used up or broken.
    let mut rest = Some(bytes);
    std::iter::from_fn(move || {
        let r = rest?;
        match frame_len(r, &limits, layout) {
            Ok(len) => {
                let (frame, after) = r.split_at(len);
                rest = (!after.is_empty()).then_some(after);
                Some(Ok(frame))
            }
            Err(e) => {
                rest = None;
                Some(Err(e))
            }
        }
    })
}

/// The length of the frame at the start of `bytes` (which may hold more frames after it):
/// its header is validated and each segment's lengths checked against `layout` (the delta
/// layer's), without reading the data.
pub fn frame_len(bytes: &[u8], limits: &FrameLimits, layout: &[StreamSpec]) -> Result<usize> {
    let mut r = bytes;
    let header = read_header(&mut r, limits)?;
    check_layout(&header, layout)?;
    let mut fixed = vec![0u8; segment_fixed(layout.len())];
    for index in 0..header.round.segment_count() {
        let index = u32::try_from(index).map_err(|_| Error::CorruptFrame { reason: "too many segments" })?;
        read_exact(&mut r, &mut fixed, "segment record")?;
        let (_, total) = parse_segment_head(&fixed, &header, layout, index)?;
        let total =
            usize::try_from(total).map_err(|_| Error::CorruptFrame { reason: "frame ends inside segment data" })?;
        r = r.get(total..).ok_or(Error::CorruptFrame { reason: "frame ends inside segment data" })?;
    }
    Ok(bytes.len() - r.len())
}

/// Checks that the frame of `header` has as many streams per segment as `layout`, the delta
/// layer's that is to decode it.
pub fn check_layout(header: &FrameHeader, layout: &[StreamSpec]) -> Result<()> {
    if usize::from(header.streams) != layout.len() {
        return Err(Error::LayoutMismatch { frame: usize::from(header.streams), layer: layout.len() });
    }
    Ok(())
}

/// Reads and validates segment record `expected` of the round `header`, whose streams are
/// described by `layout` (the delta layer's; [`check_layout`] first).
pub fn read_segment(
    r: &mut impl Read,
    header: &FrameHeader,
    layout: &[StreamSpec],
    expected: u32,
) -> Result<SegmentRecord> {
    check_layout(header, layout)?;
    let mut fixed = vec![0u8; segment_fixed(layout.len())];
    read_exact(r, &mut fixed, "segment record")?;
    let (streams, total) = parse_segment_head(&fixed, header, layout, expected)?;
    let index = expected;
    // Grown as bytes arrive, not sized by the claim: a truncated frame costs what it holds.
    let mut data = Vec::new();
    r.take(total).read_to_end(&mut data)?;
    if data.len() as u64 != total {
        return Err(Error::CorruptFrame { reason: "frame ends inside segment data" });
    }
    let at = fixed.len() - 8;
    let stored = le64(&fixed, at);
    let mut sum = Xxh3::new();
    sum.update(&fixed[..at]);
    sum.update(&data);
    let computed = sum.digest();
    if stored != computed {
        return Err(Error::ChecksumMismatch { what: format!("segment {index}"), stored, computed });
    }
    Ok(SegmentRecord { index, streams, data })
}

/// Validates the fixed part of segment record `expected`: its stream descriptions and the
/// total length of its data.
fn parse_segment_head(
    fixed: &[u8],
    header: &FrameHeader,
    layout: &[StreamSpec],
    expected: u32,
) -> Result<(Vec<StreamDesc>, u64)> {
    let index = le32(fixed, 0);
    if index != expected {
        return Err(Error::CorruptFrame { reason: "segment out of order" });
    }
    let shape = SegmentShape::of(&header.round, u64::from(index));
    let mut streams = Vec::with_capacity(layout.len());
    let mut total = 0u64;
    for (i, spec) in layout.iter().enumerate() {
        let at = 4 + i * 12;
        let codec = CodecId::from_u8(fixed[at]).map_err(|_| Error::CorruptFrame { reason: "unknown codec id" })?;
        let flags = fixed[at + 1];
        if flags & !STREAM_FLAG_REFERENCE != 0 || fixed[at + 2] != 0 || fixed[at + 3] != 0 {
            return Err(Error::CorruptFrame { reason: "unknown stream flags" });
        }
        let raw_len = le32(fixed, at + 4);
        let stored_len = le32(fixed, at + 8);
        let limit = (spec.max_raw)(shape);
        if u64::from(raw_len) > limit {
            return Err(Error::LimitExceeded { what: "stream length", claimed: u64::from(raw_len), limit });
        }
        // A codec never needs more than this to store `raw_len` bytes.
        let stored_limit = u64::from(raw_len) + u64::from(raw_len) / 8 + 1024;
        if u64::from(stored_len) > stored_limit {
            return Err(Error::LimitExceeded {
                what: "stored stream length",
                claimed: u64::from(stored_len),
                limit: stored_limit,
            });
        }
        total += u64::from(stored_len);
        streams.push(StreamDesc { codec, with_reference: flags & STREAM_FLAG_REFERENCE != 0, raw_len, stored_len });
    }
    Ok((streams, total))
}

fn read_exact(r: &mut impl Read, buf: &mut [u8], what: &'static str) -> Result<()> {
    r.read_exact(buf).map_err(|e| {
        if e.kind() == std::io::ErrorKind::UnexpectedEof {
            Error::CorruptFrame {
                reason: match what {
                    "frame header" => "frame ends inside its header",
                    "segment record" => "frame ends inside a segment record",
                    _ => "frame ends inside segment data",
                },
            }
        } else {
            Error::Io(e)
        }
    })
}
