//! libFuzzer target `delta_apply`: the body is `hde_fuzz::delta_apply` (see crates/hde-fuzz).
#![no_main]

libfuzzer_sys::fuzz_target!(|data: &[u8]| {
    let _ = hde_fuzz::delta_apply(data);
});
