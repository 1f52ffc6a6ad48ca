//! Cheap features of a block: what the selector sees instead of the bytes.

/// Features of a block of data, measured on a bounded sample.
///
/// * `zero_page_fraction`: exact (every page is tested, with an early exit at its first
///   non-zero byte, so only zero pages are read whole). Zero pages cost a compressor almost
///   nothing, so they dilute any ratio estimate.
/// * `entropy`: Shannon entropy of the sample's bytes in bits per byte (0..=8). Near 8 means
///   compressed or encrypted data, for which only `Raw` is worth its time.
/// * `repetition`: share of sampled positions whose next 4 bytes already occurred earlier in
///   the sample (an LZ match-finder dry run with one hash table). It separates data that LZ
///   codecs shrink (code, heap objects, text) from data whose only redundancy is byte
///   frequencies.
///
/// The sample is at most 1/64 of the block, capped at 16 KiB and spread over 8 windows, so
/// profiling costs a small fixed fraction of compressing the block with LZ4.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct Profile {
    /// Length of the block in bytes.
    pub len: u64,
    /// Share of all-zero pages, 0..=1.
    pub zero_page_fraction: f32,
    /// Bits per byte of the sample, 0..=8.
    pub entropy: f32,
    /// Share of sampled positions that repeat an earlier 4-byte sequence, 0..=1.
    pub repetition: f32,
}

const MAX_SAMPLE: usize = 16 << 10;
const WINDOWS: usize = 8;
const HASH_BITS: u32 = 12;

impl Profile {
    /// Profiles `data`, testing zero pages of `page_size` bytes.
    pub fn of(data: &[u8], page_size: usize) -> Profile {
        let page_size = page_size.max(1);
        let pages = data.len().div_ceil(page_size);
        let zero = data.chunks(page_size).filter(|p| is_zero(p)).count();
        let zero_page_fraction = if pages == 0 { 0.0 } else { zero as f32 / pages as f32 };
        let (entropy, repetition) = sample_features(data);
        Profile { len: data.len() as u64, zero_page_fraction, entropy, repetition }
    }

    /// A profile from features measured elsewhere (the delta layer knows zero pages exactly).
    pub fn from_parts(len: u64, zero_page_fraction: f32, entropy: f32, repetition: f32) -> Profile {
        Profile {
            len,
            zero_page_fraction: zero_page_fraction.clamp(0.0, 1.0),
            entropy: entropy.clamp(0.0, 8.0),
            repetition: repetition.clamp(0.0, 1.0),
        }
    }
}

/// True if every byte is zero: 64 bytes per step, ORed as words (vectorised), with an early
/// exit, so a non-zero page costs one step and a zero page one read at memory bandwidth.
fn is_zero(page: &[u8]) -> bool {
    let mut chunks = page.chunks_exact(64);
    for chunk in &mut chunks {
        let mut acc = 0u64;
        for word in chunk.chunks_exact(8) {
            let mut b = [0u8; 8];
            b.copy_from_slice(word);
            acc |= u64::from_ne_bytes(b);
        }
        if acc != 0 {
            return false;
        }
    }
    chunks.remainder().iter().all(|&b| b == 0)
}

/// Entropy and repetition of a spread sample of `data`.
fn sample_features(data: &[u8]) -> (f32, f32) {
    let budget = (data.len() / 64).clamp(1024.min(data.len()), MAX_SAMPLE);
    if budget == 0 {
        return (0.0, 0.0);
    }
    let window = budget.div_ceil(WINDOWS).max(8);
    let stride = data.len() / WINDOWS;
    let mut histogram = [0u32; 256];
    let mut table = [0u16; 1 << HASH_BITS];
    let mut sample = [0u8; MAX_SAMPLE + 8 * WINDOWS];
    let mut n = 0usize;
    for w in 0..WINDOWS {
        let start = w * stride;
        let end = (start + window).min(data.len());
        if start >= end {
            continue;
        }
        let take = (end - start).min(sample.len() - n);
        sample[n..n + take].copy_from_slice(&data[start..start + take]);
        n += take;
    }
    let sample = &sample[..n];
    for &b in sample {
        histogram[b as usize] += 1;
    }
    let total = n as f32;
    let entropy: f32 = histogram
        .iter()
        .filter(|&&c| c > 0)
        .map(|&c| {
            let p = c as f32 / total;
            -p * p.log2()
        })
        .sum();
    let mut matches = 0u32;
    let positions = n.saturating_sub(3);
    for i in 0..positions {
        let word = u32::from_le_bytes([sample[i], sample[i + 1], sample[i + 2], sample[i + 3]]);
        let h = (word.wrapping_mul(2_654_435_761) >> (32 - HASH_BITS)) as usize;
        let prev = table[h] as usize;
        // Slot value 0 means empty; positions are stored + 1.
        if prev > 0 && sample[prev - 1..prev + 3] == sample[i..i + 4] {
            matches += 1;
        }
        table[h] = (i + 1) as u16;
    }
    let repetition = if positions == 0 { 0.0 } else { matches as f32 / positions as f32 };
    (entropy.clamp(0.0, 8.0), repetition)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn features_separate_the_kinds_of_data() {
        let zeros = vec![0u8; 1 << 20];
        let p = Profile::of(&zeros, 4096);
        assert_eq!(p.zero_page_fraction, 1.0);
        assert!(p.entropy < 0.01);

        let mut x = 0x9E37_79B9_7F4A_7C15u64;
        let noise: Vec<u8> = (0..1 << 20)
            .map(|_| {
                x ^= x << 13;
                x ^= x >> 7;
                x ^= x << 17;
                x as u8
            })
            .collect();
        let p = Profile::of(&noise, 4096);
        assert!(p.entropy > 7.8, "{p:?}");
        assert!(p.repetition < 0.01, "{p:?}");
        assert_eq!(p.zero_page_fraction, 0.0);

        let text: Vec<u8> =
            b"the quick brown fox jumps over the lazy dog; ".iter().copied().cycle().take(1 << 20).collect();
        let p = Profile::of(&text, 4096);
        assert!(p.repetition > 0.9, "{p:?}");
        assert!(p.entropy < 5.0, "{p:?}");
    }

    #[test]
    fn tiny_and_empty_inputs() {
        assert_eq!(Profile::of(&[], 4096), Profile { len: 0, zero_page_fraction: 0.0, entropy: 0.0, repetition: 0.0 });
        for len in 1..40 {
            let data: Vec<u8> = (0..len as u8).collect();
            let p = Profile::of(&data, 4096);
            assert!(p.entropy >= 0.0 && p.entropy <= 8.0 && p.repetition >= 0.0 && p.repetition <= 1.0);
        }
    }

    #[test]
    fn half_zero_pages() {
        let mut data = vec![0u8; 8 * 4096];
        for p in (0..8).step_by(2) {
            data[p * 4096 + 100] = 1;
        }
        assert_eq!(Profile::of(&data, 4096).zero_page_fraction, 0.5);
    }
}
