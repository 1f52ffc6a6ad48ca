//! libFuzzer target `state_load`: the body is `hde_fuzz::state_load` (see crates/hde-fuzz).
#![no_main]

libfuzzer_sys::fuzz_target!(|data: &[u8]| {
    let _ = hde_fuzz::state_load(data);
});
