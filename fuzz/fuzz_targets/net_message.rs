//! libFuzzer target `net_message`: the body is `hde_fuzz::net_message` (see crates/hde-fuzz).
#![no_main]

libfuzzer_sys::fuzz_target!(|data: &[u8]| {
    let _ = hde_fuzz::net_message(data);
});
