//! libFuzzer target `crdt_decode`: the body is `hde_fuzz::crdt_decode` (see crates/hde-fuzz).
#![no_main]

libfuzzer_sys::fuzz_target!(|data: &[u8]| {
    let _ = hde_fuzz::crdt_decode(data);
});
