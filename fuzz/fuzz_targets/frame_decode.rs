//! libFuzzer target `frame_decode`: the body is `hde_fuzz::frame_decode` (see crates/hde-fuzz).
#![no_main]

libfuzzer_sys::fuzz_target!(|data: &[u8]| {
    let _ = hde_fuzz::frame_decode(data);
});
