//! [`Image`]: an image's bytes, shared without copies.

use std::fmt;
use std::ops::{Deref, Range};
use std::sync::Arc;

/// Bytes that something else keeps alive, e.g. a memory-mapped file.
pub type SharedBytes = Arc<dyn AsRef<[u8]> + Send + Sync>;

/// An image's bytes, cheap to clone: owned (a decoded round) or shared from elsewhere for as
/// long as needed (a memory-mapped reference file). Dereferences to `[u8]`.
///
/// A shared image must not change while held: the layer trusts its page hashes. A change
/// makes later frames fail their checksum at the receiver (a typed error), not pass wrong.
#[derive(Clone)]
pub struct Image(Inner);

#[derive(Clone)]
enum Inner {
    Owned(Arc<Vec<u8>>),
    Shared(SharedBytes),
}

impl Image {
    /// An image over bytes kept alive elsewhere.
    pub fn shared(bytes: SharedBytes) -> Self {
        Image(Inner::Shared(bytes))
    }

    /// The bytes.
    pub fn as_slice(&self) -> &[u8] {
        match &self.0 {
            Inner::Owned(v) => v,
            Inner::Shared(b) => (**b).as_ref(),
        }
    }

    /// The bytes as an owned vector: no copy when this was the only handle to owned bytes.
    pub fn into_vec(self) -> Vec<u8> {
        match self.0 {
            Inner::Owned(v) => Arc::try_unwrap(v).unwrap_or_else(|shared| (*shared).clone()),
            Inner::Shared(b) => (*b).as_ref().to_vec(),
        }
    }
}

impl From<Vec<u8>> for Image {
    fn from(v: Vec<u8>) -> Self {
        Image(Inner::Owned(Arc::new(v)))
    }
}

impl Deref for Image {
    type Target = [u8];
    fn deref(&self) -> &[u8] {
        self.as_slice()
    }
}

impl AsRef<[u8]> for Image {
    fn as_ref(&self) -> &[u8] {
        self.as_slice()
    }
}

impl fmt::Debug for Image {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let kind = match self.0 {
            Inner::Owned(_) => "owned",
            Inner::Shared(_) => "shared",
        };
        write!(f, "Image({} bytes, {kind})", self.len())
    }
}

/// Byte ranges of an image that are known to read as zero without being read: the holes of
/// a sparse file (`SEEK_HOLE`), or memory a caller knows was never written. The encoder
/// classes every page that lies wholly inside them as a zero page without touching it, so a
/// 64 GiB disk image holding 1 GiB of data costs the time of its data, and its holes are
/// never pulled into the page cache.
///
/// A contract, not a hint: a byte inside these ranges that is not zero makes the receiver
/// rebuild a zero there, and the frame's checksum (computed over what the encoder saw)
/// cannot tell. Take them from the file system, for the file that is being encoded.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct ZeroRanges(Arc<[Range<u64>]>);

impl ZeroRanges {
    /// The ranges, in any order, overlapping or not; empty ones are dropped.
    pub fn new(ranges: impl IntoIterator<Item = Range<u64>>) -> Self {
        let mut v: Vec<Range<u64>> = ranges.into_iter().filter(|r| r.start < r.end).collect();
        v.sort_unstable_by_key(|r| r.start);
        let mut merged: Vec<Range<u64>> = Vec::with_capacity(v.len());
        for r in v {
            match merged.last_mut() {
                Some(last) if r.start <= last.end => last.end = last.end.max(r.end),
                _ => merged.push(r),
            }
        }
        ZeroRanges(merged.into())
    }

    /// The ranges, sorted, disjoint and not touching.
    pub fn ranges(&self) -> &[Range<u64>] {
        &self.0
    }

    /// Bytes covered.
    pub fn bytes(&self) -> u64 {
        self.0.iter().map(|r| r.end - r.start).sum()
    }

    /// Whether every byte of `range` lies in one of the ranges (an empty range: yes).
    pub fn covers(&self, range: Range<u64>) -> bool {
        if range.start >= range.end {
            return true;
        }
        // The last range that starts at or before `range.start`.
        let i = self.0.partition_point(|r| r.start <= range.start);
        i > 0 && self.0[i - 1].end >= range.end
    }
}

/// A zeroed buffer of `len` bytes for an image being rebuilt, or [`Error::OutOfMemory`]
/// (instead of the abort of `vec![0; len]`) when the system refuses it: a frame may claim any
/// size up to the configured limit, and a receiver must answer a claim it cannot meet with an
/// error. Zeroed memory comes from the allocator's zeroed path, so pages nobody writes are
/// never touched.
///
/// [`Error::OutOfMemory`]: crate::Error::OutOfMemory
pub fn try_zeroed(len: usize) -> crate::Result<Vec<u8>> {
    if len == 0 {
        return Ok(Vec::new());
    }
    let oom = crate::Error::OutOfMemory { bytes: len as u64 };
    let layout = std::alloc::Layout::array::<u8>(len).map_err(|_| oom.clone())?;
    // SAFETY: `layout` has a non-zero size (checked above).
    let ptr = unsafe { std::alloc::alloc_zeroed(layout) };
    if ptr.is_null() {
        return Err(oom);
    }
    // SAFETY: `ptr` was just allocated by the global allocator with the layout of `[u8; len]`,
    // every byte is initialised (zeroed), and length and capacity are both `len`.
    Ok(unsafe { Vec::from_raw_parts(ptr, len, len) })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn owned_and_shared_read_alike_and_unwrap_without_copy() {
        let owned = Image::from(vec![1, 2, 3]);
        let shared = Image::shared(Arc::new(vec![1u8, 2, 3]));
        assert_eq!(&owned[..], &shared[..]);
        assert_eq!(format!("{shared:?}"), "Image(3 bytes, shared)");
        let ptr = owned.as_ptr();
        let v = owned.into_vec();
        assert_eq!(v.as_ptr(), ptr);
        assert_eq!(shared.into_vec(), vec![1, 2, 3]);
    }

    #[test]
    fn zero_ranges_merge_and_cover() {
        let z = ZeroRanges::new([10..20, 0..0, 18..30, 40..50, 30..35]);
        assert_eq!(z.ranges(), &[10..35, 40..50]);
        assert_eq!(z.bytes(), 35);
        assert!(z.covers(10..35) && z.covers(12..13) && z.covers(40..50) && z.covers(7..7));
        assert!(!z.covers(9..11) && !z.covers(34..36) && !z.covers(35..40) && !z.covers(45..51));
        assert!(!ZeroRanges::default().covers(0..1));
    }

    #[test]
    fn zeroed_buffers_or_a_typed_error() {
        for len in [0, 1, 4096, 5 << 20] {
            let buf = super::try_zeroed(len).unwrap();
            assert_eq!(buf.len(), len);
            assert!(buf.iter().all(|&b| b == 0));
        }
        // More than any address space can give: an error, not an abort.
        assert!(matches!(super::try_zeroed(usize::MAX / 2), Err(crate::Error::OutOfMemory { .. })));
    }
}
