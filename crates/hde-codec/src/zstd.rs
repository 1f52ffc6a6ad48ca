//! zstd, with an optional raw-content reference whose match-finder tables are sized to reach it.

use crate::{Codec, CodecId, Error, Result, ZstdParams};

/// zstd: levels 1..=22, an optional long window, and compression against a reference.
///
/// One compression and one decompression context are created on first use and reused for
/// every later call, whatever the level.
///
/// With a non-empty reference the compressor:
/// * references it as a raw-content prefix (`ZSTD_CCtx_refPrefix`: no copy, no dictionary
///   parsing; the decoder does the same, so a reference that happens to start with zstd's
///   dictionary magic is still raw content);
/// * raises the window to cover reference plus input, and the hash and chain tables to
///   [`Zstd::reference_table_log`] so even level 1 finds matches far back in it;
/// * writes zstd's content checksum, so decoding against another reference is an error.
#[derive(Debug)]
pub struct Zstd {
    params: ZstdParams,
    cctx: Option<ffi::CCtx>,
    dctx: Option<ffi::DCtx>,
}

impl Default for Zstd {
    fn default() -> Self {
        Zstd::new(ZstdParams::BALANCED)
    }
}

/// Parameters for one compression call, resolved from level, sizes and options.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) struct Resolved {
    pub(crate) level: i32,
    /// 0 leaves zstd's choice for the level and size.
    pub(crate) window_log: u32,
    pub(crate) hash_log: u32,
    pub(crate) chain_log: u32,
    pub(crate) long_distance: bool,
    pub(crate) checksum: bool,
    /// Use zstd's row-based match finder where it would (`true`), or its hash chains.
    pub(crate) row_match_finder: bool,
}

/// Smallest `n` with `2^n >= len` (at least 10, zstd's minimum window).
fn ceil_log2(len: usize) -> u32 {
    let len = len.max(1 << 10);
    usize::BITS - (len - 1).leading_zeros()
}

impl Zstd {
    /// A zstd codec that compresses with `params`; contexts are created on first use.
    pub fn new(params: ZstdParams) -> Self {
        Zstd { params, cctx: None, dctx: None }
    }

    /// The parameters used by the next compression.
    pub fn params(&self) -> ZstdParams {
        self.params
    }

    /// Changes the parameters of later compressions, keeping the contexts.
    pub fn set_params(&mut self, params: ZstdParams) {
        self.params = params;
    }

    /// log2 of the hash and chain tables used for a reference of `total_len` bytes (reference
    /// plus input).
    ///
    /// One entry per 16 bytes: the matches that matter against a reference are long (a
    /// changed page against its old version), so a sparser table finds them as well and is
    /// cheaper to fill and to search. On the literal streams of real 256 MiB delta rounds
    /// (15 segments, 32.9 MB) level 1 took 37 % less time than with one entry per four bytes
    /// for 0.9 % more bytes, level 3 29 % less for 0.7 % more; levels 6 and 9 use their own
    /// larger defaults. The bounds keep small inputs cheap and cap memory at 4 Mi entries
    /// (16 MiB a table).
    pub fn reference_table_log(total_len: usize) -> u32 {
        ceil_log2(total_len).saturating_sub(4).clamp(12, 22)
    }

    pub(crate) fn resolve(params: ZstdParams, input_len: usize, reference_len: usize) -> Resolved {
        let mut resolved = Resolved {
            level: params.level(),
            window_log: 0,
            hash_log: 0,
            chain_log: 0,
            long_distance: params.long_window(),
            checksum: reference_len > 0,
            row_match_finder: true,
        };
        if params.long_window() {
            resolved.window_log = ZstdParams::LONG_WINDOW_LOG;
        }
        if reference_len > 0 {
            let total = input_len.saturating_add(reference_len);
            let defaults = ffi::default_params(params.level(), input_len, reference_len);
            let table_log = Self::reference_table_log(total);
            resolved.window_log =
                resolved.window_log.max(ceil_log2(total).min(ZstdParams::LONG_WINDOW_LOG)).max(defaults.window_log);
            resolved.hash_log = table_log.max(defaults.hash_log);
            resolved.chain_log = table_log.max(defaults.chain_log);
            // The row-based match finder of the lazy levels keeps a few candidates per hash row
            // and loses most matches into a large reference whose similar content is scattered
            // (the similar pages of another VM's image): on the literals of a real 16 MiB
            // segment against them, levels 5-7 gave 2.0-2.1 MB with it and 0.67-0.70 MB with
            // hash chains (level 4, which has none, 0.69 MB), for 1.2-1.4x the time; level 8
            // lost half its matches on synthetic scattered pages. From level 9 the rows are
            // deep enough (0.65 against 0.58 MB) and hash chains cost 1.7x the time on a
            // key's own old pages (the common reference) for 0.6 % fewer bytes: rows stay.
            resolved.row_match_finder = !(5..=8).contains(&params.level());
        }
        resolved
    }
}

impl Codec for Zstd {
    fn id(&self) -> CodecId {
        CodecId::Zstd
    }

    fn compress_into(&mut self, input: &[u8], reference: &[u8], out: &mut Vec<u8>) -> Result<usize> {
        let resolved = Self::resolve(self.params, input.len(), reference.len());
        let cctx = match &mut self.cctx {
            Some(cctx) => cctx,
            slot => slot.insert(ffi::CCtx::new().ok_or(Error::OutOfMemory { codec: CodecId::Zstd })?),
        };
        cctx.compress(&resolved, input, reference, out)
    }

    fn decompress_into(&mut self, input: &[u8], reference: &[u8], out: &mut [u8]) -> Result<usize> {
        let dctx = match &mut self.dctx {
            Some(dctx) => dctx,
            slot => slot.insert(ffi::DCtx::new().ok_or(Error::OutOfMemory { codec: CodecId::Zstd })?),
        };
        dctx.decompress(input, reference, out)
    }

    fn compress_bound(&self, input_len: usize) -> usize {
        ffi::compress_bound(input_len)
    }
}

/// The only unsafe code of the crate: a thin owner of zstd's C contexts.
///
/// zstd-safe's contexts tie a referenced prefix to the context's lifetime parameter, so a
/// context kept across calls cannot reference a short-lived prefix. Here the prefix is
/// referenced and consumed inside one call (`refPrefix` then `compress2`/`decompressDCtx`,
/// after which zstd forgets it), and the session is reset on every exit path, so the C side
/// never holds a pointer past the borrow.
mod ffi {
    use std::ffi::CStr;
    use std::ptr::NonNull;

    use zstd_safe::zstd_sys as sys;

    use super::Resolved;
    use crate::{CodecId, Error, Result};

    pub(super) struct Defaults {
        pub(super) window_log: u32,
        pub(super) hash_log: u32,
        pub(super) chain_log: u32,
    }

    /// zstd's own parameter choice for `level` at these sizes.
    pub(super) fn default_params(level: i32, input_len: usize, reference_len: usize) -> Defaults {
        // SAFETY: a pure function of its integer arguments.
        let p = unsafe { sys::ZSTD_getCParams(level, input_len as u64, reference_len) };
        Defaults { window_log: p.windowLog, hash_log: p.hashLog, chain_log: p.chainLog }
    }

    pub(super) fn compress_bound(len: usize) -> usize {
        // SAFETY: a pure function of its argument.
        unsafe { sys::ZSTD_compressBound(len) }
    }

    fn is_error(code: usize) -> bool {
        // SAFETY: a pure function of its argument.
        unsafe { sys::ZSTD_isError(code) != 0 }
    }

    fn error_name(code: usize) -> &'static str {
        // SAFETY: zstd returns a pointer to a static, NUL-terminated string for any code.
        let name = unsafe { CStr::from_ptr(sys::ZSTD_getErrorName(code)) };
        name.to_str().unwrap_or("unknown zstd error")
    }

    fn error_code(code: usize) -> sys::ZSTD_ErrorCode {
        // SAFETY: a pure function of its argument.
        unsafe { sys::ZSTD_getErrorCode(code) }
    }

    fn backend(code: usize) -> Error {
        match error_code(code) {
            sys::ZSTD_ErrorCode::ZSTD_error_memory_allocation => Error::OutOfMemory { codec: CodecId::Zstd },
            _ => Error::Backend { codec: CodecId::Zstd, reason: error_name(code) },
        }
    }

    pub(super) struct CCtx(NonNull<sys::ZSTD_CCtx>);

    // SAFETY: a ZSTD_CCtx has no thread affinity; `&mut self` serialises all use.
    unsafe impl Send for CCtx {}

    impl std::fmt::Debug for CCtx {
        fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
            f.write_str("ZSTD_CCtx")
        }
    }

    impl CCtx {
        pub(super) fn new() -> Option<Self> {
            // SAFETY: creates a context we own; NULL (allocation failure) is handled.
            NonNull::new(unsafe { sys::ZSTD_createCCtx() }).map(CCtx)
        }

        fn set(&mut self, param: sys::ZSTD_cParameter, value: i32) -> Result<()> {
            // SAFETY: the context is valid; zstd range-checks the value and returns an error code.
            let code = unsafe { sys::ZSTD_CCtx_setParameter(self.0.as_ptr(), param, value) };
            if is_error(code) {
                return Err(backend(code));
            }
            Ok(())
        }

        fn reset(&mut self) {
            // SAFETY: the context is valid. Resetting drops any referenced prefix and all
            // sticky parameters; it cannot fail outside a streaming call, which we never leave
            // open, so its code is not needed.
            unsafe {
                sys::ZSTD_CCtx_reset(self.0.as_ptr(), sys::ZSTD_ResetDirective::ZSTD_reset_session_and_parameters);
            }
        }

        fn configure(&mut self, p: &Resolved) -> Result<()> {
            use sys::ZSTD_cParameter as P;
            self.set(P::ZSTD_c_compressionLevel, p.level)?;
            for (param, value) in [
                (P::ZSTD_c_windowLog, p.window_log),
                (P::ZSTD_c_hashLog, p.hash_log),
                (P::ZSTD_c_chainLog, p.chain_log),
            ] {
                if value != 0 {
                    #[allow(clippy::cast_possible_wrap)] // reason: logs are <= 31.
                    self.set(param, value as i32)?;
                }
            }
            self.set(P::ZSTD_c_enableLongDistanceMatching, i32::from(p.long_distance))?;
            self.set(P::ZSTD_c_checksumFlag, i32::from(p.checksum))?;
            // ZSTD_c_useRowMatchFinder: ZSTD_ps_auto (0) or ZSTD_ps_disable (2).
            self.set(P::ZSTD_c_experimentalParam14, if p.row_match_finder { 0 } else { 2 })?;
            self.set(P::ZSTD_c_contentSizeFlag, 1)
        }

        /// Compresses `input` as one frame appended to `out`.
        pub(super) fn compress(
            &mut self,
            p: &Resolved,
            input: &[u8],
            reference: &[u8],
            out: &mut Vec<u8>,
        ) -> Result<usize> {
            self.reset();
            let result = self.compress_referenced(p, input, reference, out);
            // Whatever happened, forget the prefix before `reference`'s borrow ends.
            self.reset();
            result
        }

        fn compress_referenced(
            &mut self,
            p: &Resolved,
            input: &[u8],
            reference: &[u8],
            out: &mut Vec<u8>,
        ) -> Result<usize> {
            self.configure(p)?;
            if !reference.is_empty() {
                // SAFETY: `reference` outlives this call, and `compress` resets the session
                // before returning, so zstd drops the pointer while the borrow is live.
                let code =
                    unsafe { sys::ZSTD_CCtx_refPrefix(self.0.as_ptr(), reference.as_ptr().cast(), reference.len()) };
                if is_error(code) {
                    return Err(backend(code));
                }
            }
            out.reserve(compress_bound(input.len()));
            let spare = out.spare_capacity_mut();
            // SAFETY: dst/capacity describe `out`'s spare capacity, src/len describe `input`;
            // zstd writes at most `capacity` bytes and reads exactly `len`.
            let code = unsafe {
                sys::ZSTD_compress2(
                    self.0.as_ptr(),
                    spare.as_mut_ptr().cast(),
                    spare.len(),
                    input.as_ptr().cast(),
                    input.len(),
                )
            };
            if is_error(code) {
                return Err(backend(code));
            }
            let written = code;
            let new_len = out.len() + written;
            // SAFETY: zstd initialised the first `written` bytes of the spare capacity, and
            // `written <= spare.len()`.
            unsafe { out.set_len(new_len) };
            Ok(written)
        }
    }

    impl Drop for CCtx {
        fn drop(&mut self) {
            // SAFETY: we own the context and drop it once.
            unsafe { sys::ZSTD_freeCCtx(self.0.as_ptr()) };
        }
    }

    pub(super) struct DCtx(NonNull<sys::ZSTD_DCtx>);

    // SAFETY: a ZSTD_DCtx has no thread affinity; `&mut self` serialises all use.
    unsafe impl Send for DCtx {}

    impl std::fmt::Debug for DCtx {
        fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
            f.write_str("ZSTD_DCtx")
        }
    }

    impl DCtx {
        pub(super) fn new() -> Option<Self> {
            // SAFETY: creates a context we own; NULL (allocation failure) is handled.
            NonNull::new(unsafe { sys::ZSTD_createDCtx() }).map(DCtx)
        }

        fn reset(&mut self) {
            // SAFETY: the context is valid; a session reset drops any referenced prefix and
            // cannot fail.
            unsafe { sys::ZSTD_DCtx_reset(self.0.as_ptr(), sys::ZSTD_ResetDirective::ZSTD_reset_session_only) };
        }

        /// Decompresses one or more frames of `input` into `out`, never writing past its end.
        pub(super) fn decompress(&mut self, input: &[u8], reference: &[u8], out: &mut [u8]) -> Result<usize> {
            self.reset();
            let result = self.decompress_referenced(input, reference, out);
            self.reset();
            result
        }

        fn decompress_referenced(&mut self, input: &[u8], reference: &[u8], out: &mut [u8]) -> Result<usize> {
            if !reference.is_empty() {
                // SAFETY: `reference` outlives this call; `decompress` resets the session after.
                let code =
                    unsafe { sys::ZSTD_DCtx_refPrefix(self.0.as_ptr(), reference.as_ptr().cast(), reference.len()) };
                if is_error(code) {
                    return Err(backend(code));
                }
            }
            // SAFETY: dst/capacity describe `out`, src/len describe `input`; zstd checks every
            // length in the stream against them and never writes past `capacity`.
            let code = unsafe {
                sys::ZSTD_decompressDCtx(
                    self.0.as_ptr(),
                    out.as_mut_ptr().cast(),
                    out.len(),
                    input.as_ptr().cast(),
                    input.len(),
                )
            };
            if !is_error(code) {
                return Ok(code);
            }
            use sys::ZSTD_ErrorCode as E;
            Err(match error_code(code) {
                E::ZSTD_error_dstSize_tooSmall => Error::OutputTooLarge { codec: CodecId::Zstd, capacity: out.len() },
                E::ZSTD_error_checksum_wrong => Error::ChecksumMismatch { codec: CodecId::Zstd },
                E::ZSTD_error_memory_allocation => Error::OutOfMemory { codec: CodecId::Zstd },
                _ => Error::Corrupt { codec: CodecId::Zstd, reason: error_name(code) },
            })
        }
    }

    impl Drop for DCtx {
        fn drop(&mut self) {
            // SAFETY: we own the context and drop it once.
            unsafe { sys::ZSTD_freeDCtx(self.0.as_ptr()) };
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Pages of random words (from a vocabulary) as a reference, and pages made of a random
    /// reference page's 64-byte blocks in another order with 15 % of the words replaced: the
    /// shape of another VM's similar pages.
    fn scattered(pages: usize) -> (Vec<u8>, Vec<u8>) {
        let mut x = 0x9E37_79B9_7F4A_7C15u64;
        let mut next = move || {
            x ^= x << 13;
            x ^= x >> 7;
            x ^= x << 17;
            x
        };
        let vocab: Vec<u64> = (0..50_000).map(|_| next()).collect();
        let word = |next: &mut dyn FnMut() -> u64| vocab[(next() % vocab.len() as u64) as usize];
        let reference: Vec<Vec<u64>> = (0..pages).map(|_| (0..512).map(|_| word(&mut next)).collect()).collect();
        let mut input = Vec::with_capacity(pages * 4096);
        for _ in 0..pages {
            let src = &reference[(next() % pages as u64) as usize];
            let mut blocks: Vec<&[u64]> = src.chunks(8).collect();
            for i in (1..blocks.len()).rev() {
                blocks.swap(i, (next() % (i as u64 + 1)) as usize);
            }
            for w in blocks.concat() {
                let w = if next() % 100 < 15 { word(&mut next) } else { w };
                input.extend_from_slice(&w.to_le_bytes());
            }
        }
        (reference.concat().iter().flat_map(|w| w.to_le_bytes()).collect(), input)
    }

    #[test]
    fn every_level_finds_scattered_similar_content_in_a_reference() {
        let (reference, input) = scattered(512);
        for level in [1, 4, 6, 9] {
            let mut z = Zstd::new(ZstdParams::new(level).unwrap());
            let (mut with, mut without) = (Vec::new(), Vec::new());
            z.compress_into(&input, &reference, &mut with).unwrap();
            z.compress_into(&input, &[], &mut without).unwrap();
            // With zstd's row match finder, level 6 kept 82 % of the bytes here.
            assert!(with.len() * 4 < without.len() * 3, "level {level}: {} against {}", with.len(), without.len());
            let mut back = vec![0; input.len()];
            assert_eq!(z.decompress_into(&with, &reference, &mut back).unwrap(), input.len());
            assert!(back == input);
        }
    }

    #[test]
    fn reference_sizes_the_tables() {
        let level1 = ZstdParams::FASTEST;
        let plain = Zstd::resolve(level1, 4 << 20, 0);
        assert_eq!((plain.window_log, plain.hash_log, plain.chain_log), (0, 0, 0));
        assert!(!plain.checksum);
        // A 4 MiB input against a 4 MiB reference: window covers both, tables of 2^19 (an
        // entry per 16 bytes, above level 1's own choice for these sizes).
        let r = Zstd::resolve(level1, 4 << 20, 4 << 20);
        assert_eq!(r.window_log, 23);
        assert_eq!(r.hash_log, 19);
        assert!(r.chain_log >= 19);
        assert!(r.checksum);
        // Long window stays at 27 even with a reference.
        let long = Zstd::resolve(ZstdParams::MAX, 1 << 20, 1 << 20);
        assert_eq!(long.window_log, 27);
        assert!(long.long_distance);
    }

    #[test]
    fn ceil_log2_is_exact() {
        assert_eq!(ceil_log2(0), 10);
        assert_eq!(ceil_log2(1024), 10);
        assert_eq!(ceil_log2(1025), 11);
        assert_eq!(ceil_log2(4 << 20), 22);
        assert_eq!(ceil_log2((4 << 20) + 1), 23);
    }
}
