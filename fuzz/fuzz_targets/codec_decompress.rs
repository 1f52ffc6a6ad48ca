//! libFuzzer target `codec_decompress`: the body is `hde_fuzz::codec_decompress` (see crates/hde-fuzz).
#![no_main]

libfuzzer_sys::fuzz_target!(|data: &[u8]| {
    let _ = hde_fuzz::codec_decompress(data);
});
