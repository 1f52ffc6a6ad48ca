//! What a codec does to some bytes: stored size and both speeds, every round trip checked.

use std::time::{Duration, Instant};

use crate::{CodecSet, CodecSpec, Error, Result};

/// The result of [`measure`].
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Measured {
    /// Bytes in.
    pub input_bytes: usize,
    /// Bytes stored, all segments together.
    pub stored_bytes: usize,
    /// Time to compress every segment.
    pub compress: Duration,
    /// Time to decompress every segment.
    pub decompress: Duration,
}

impl Measured {
    /// Stored bytes per input byte.
    pub fn ratio(&self) -> f64 {
        self.stored_bytes as f64 / self.input_bytes.max(1) as f64
    }
}

/// Compresses `data` with `spec` in segments of `segment` bytes, each against the same range of
/// `reference` (as an engine compresses an image against its previous round; an empty
/// `reference` means none), then decompresses every segment and checks it against its input:
/// stored bytes and times of the whole. A segment that does not come back equal is
/// [`Error::RoundTrip`].
pub fn measure(set: &mut CodecSet, spec: CodecSpec, data: &[u8], reference: &[u8], segment: usize) -> Result<Measured> {
    let segment = segment.max(1);
    let reference_of = |i: usize| -> &[u8] {
        let start = i * segment;
        reference.get(start..(start + segment).min(reference.len())).unwrap_or(&[])
    };
    let mut out = Vec::new();
    let mut ends = Vec::with_capacity(data.len().div_ceil(segment));
    let t = Instant::now();
    for (i, chunk) in data.chunks(segment).enumerate() {
        set.compress(spec, chunk, reference_of(i), &mut out)?;
        ends.push(out.len());
    }
    let compress = t.elapsed();
    let mut back = vec![0u8; segment.min(data.len())];
    let mut start = 0;
    let t = Instant::now();
    for (i, (chunk, &end)) in data.chunks(segment).zip(&ends).enumerate() {
        let dst = &mut back[..chunk.len()];
        set.for_id(spec.id()).decompress_exact(&out[start..end], reference_of(i), dst)?;
        if dst != chunk {
            return Err(Error::RoundTrip { codec: spec.id(), offset: i * segment });
        }
        start = end;
    }
    Ok(Measured { input_bytes: data.len(), stored_bytes: out.len(), compress, decompress: t.elapsed() })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn every_codec_round_trips_in_segments() {
        let old: Vec<u8> = (0..100_000u32).map(|i| (i % 251) as u8).collect();
        let mut new = old.clone();
        new[5_000..5_100].fill(7);
        let mut set = CodecSet::new();
        for spec in [CodecSpec::Raw, CodecSpec::Lz4, CodecSpec::zstd(3).unwrap()] {
            let alone = measure(&mut set, spec, &new, &[], 16_384).unwrap();
            let against = measure(&mut set, spec, &new, &old, 16_384).unwrap();
            assert_eq!(alone.input_bytes, new.len());
            assert!(against.stored_bytes <= alone.stored_bytes, "{spec}");
        }
        let raw = measure(&mut set, CodecSpec::Raw, &new, &[], 3).unwrap();
        assert_eq!((raw.stored_bytes, raw.ratio()), (new.len(), 1.0));
    }
}
