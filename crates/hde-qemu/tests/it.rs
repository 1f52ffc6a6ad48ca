//! Migration streams written the way QEMU writes them go through a sender and a receiver
//! and come out byte for byte; what the parser does not read is a typed error.

#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)] // reason: a test fails by panicking.

use hde_core::HdeConfig;
use hde_qemu::stream::{Item, Parser, PAGE};
use hde_qemu::{Error, MigrationReceiver, MigrationSender, Options};
use proptest::prelude::*;

/// Writes a migration stream as QEMU 7.2 does (`migration/savevm.c`, `migration/ram.c`).
struct Writer {
    out: Vec<u8>,
    last_block: Option<usize>,
}

const BLOCKS: [(&str, u64); 2] = [("pc.ram", 64), ("/rom@etc/acpi/tables", 4)];

impl Writer {
    fn new() -> Self {
        let mut out = Vec::new();
        out.extend_from_slice(&0x5145_564du32.to_be_bytes());
        out.extend_from_slice(&3u32.to_be_bytes());
        out.push(0x07);
        out.extend_from_slice(&13u32.to_be_bytes());
        out.extend_from_slice(b"pc-i440fx-7.2");
        // START of "ram", section 2, instance 0, version 4, and its setup.
        out.push(0x01);
        out.extend_from_slice(&2u32.to_be_bytes());
        out.push(3);
        out.extend_from_slice(b"ram");
        out.extend_from_slice(&0u32.to_be_bytes());
        out.extend_from_slice(&4u32.to_be_bytes());
        let total: u64 = BLOCKS.iter().map(|b| b.1 * PAGE as u64).sum();
        out.extend_from_slice(&(total | 0x04).to_be_bytes());
        for (name, pages) in BLOCKS {
            out.push(name.len() as u8);
            out.extend_from_slice(name.as_bytes());
            out.extend_from_slice(&(pages * PAGE as u64).to_be_bytes());
        }
        let mut w = Writer { out, last_block: None };
        w.eos();
        w
    }

    fn eos(&mut self) {
        self.out.extend_from_slice(&0x10u64.to_be_bytes());
        self.out.push(0x7e);
        self.out.extend_from_slice(&2u32.to_be_bytes());
    }

    fn part(&mut self, last: bool) {
        self.out.push(if last { 0x03 } else { 0x02 });
        self.out.extend_from_slice(&2u32.to_be_bytes());
    }

    fn header(&mut self, block: usize, page: u64, flag: u64) {
        let cont = if self.last_block == Some(block) { 0x20 } else { 0 };
        self.out.extend_from_slice(&((page * PAGE as u64) | flag | cont).to_be_bytes());
        if cont == 0 {
            let name = BLOCKS[block].0;
            self.out.push(name.len() as u8);
            self.out.extend_from_slice(name.as_bytes());
        }
        self.last_block = Some(block);
    }

    fn page(&mut self, block: usize, page: u64, body: &[u8]) {
        self.header(block, page, 0x08);
        self.out.extend_from_slice(body);
    }

    fn zero(&mut self, block: usize, page: u64) {
        self.header(block, page, 0x02);
        self.out.push(0);
    }

    /// The device state and the end, as opaque bytes (the parser does not read them).
    fn tail(&mut self, bytes: &[u8]) {
        self.out.push(0x04);
        self.out.extend_from_slice(bytes);
        self.out.push(0x00);
    }
}

fn body(seed: u64, page: u64, version: u8) -> Vec<u8> {
    let mut b = vec![0u8; PAGE];
    // Text-like content with a per-version edit: patches, duplicates and literals all occur.
    for (i, x) in b.iter_mut().enumerate() {
        *x = b"migration stream page "[(i + (seed as usize) + page as usize) % 22];
    }
    b[(page as usize * 37) % PAGE] = version;
    if version % 3 == 2 {
        b[100..200].fill(version);
    }
    b
}

/// A stream of `rounds` passes: the first sends every page, later ones some of them again,
/// changed or not, and zero pages.
fn stream(seed: u64, rounds: u8, parts_per_round: usize) -> Vec<u8> {
    let mut w = Writer::new();
    let mut rng = seed.wrapping_mul(0x9e37_79b9_7f4a_7c15) | 1;
    let mut next = || {
        rng ^= rng << 13;
        rng ^= rng >> 7;
        rng ^= rng << 17;
        rng
    };
    for round in 0..rounds {
        for part in 0..parts_per_round {
            let last = round + 1 == rounds && part + 1 == parts_per_round;
            w.part(last);
            for (b, &(_, pages)) in BLOCKS.iter().enumerate() {
                for p in 0..pages {
                    let r = next();
                    if round > 0 && r % 4 != 0 {
                        continue;
                    }
                    if r % 7 == 0 {
                        w.zero(b, p);
                    } else {
                        let version = if r % 5 == 0 { round } else { 0 };
                        w.page(b, p, &body(seed, p + b as u64 * 1000, version));
                    }
                }
            }
            w.eos();
        }
    }
    let tail: Vec<u8> = (0..3000u32).map(|i| (i * 7 + seed as u32) as u8).collect();
    w.tail(&tail);
    w.out
}

fn options() -> Options {
    let mut o = Options::new("vm", HdeConfig::new(1));
    // Small batches, so that streams cross many batch boundaries.
    o.batch_bytes = 16 * PAGE;
    o
}

/// Sends `source` in pieces of `piece` bytes; returns what the receiver wrote.
fn carry(source: &[u8], piece: usize, options: &Options) -> Result<(Vec<u8>, hde_qemu::SenderStats), Error> {
    let mut sender = MigrationSender::new(options)?;
    let mut receiver = MigrationReceiver::new(&Options { key: String::new(), ..options.clone() })?;
    let (mut wire, mut out) = (Vec::new(), Vec::new());
    for chunk in source.chunks(piece.max(1)) {
        sender.push(chunk, &mut wire)?;
        receiver.push(&wire, &mut out)?;
        wire.clear();
    }
    let stats = sender.finish(&mut wire)?;
    receiver.push(&wire, &mut out)?;
    receiver.finish()?;
    Ok((out, stats))
}

#[test]
fn a_stream_comes_out_byte_for_byte() {
    let source = stream(7, 4, 2);
    let (out, stats) = carry(&source, 4096, &options()).unwrap();
    assert!(out == source);
    assert!(stats.batches > 4, "{stats:?}");
    // Pages resent unchanged travel without their bytes.
    assert!(stats.pages_elided > 0, "{stats:?}");
    assert!(stats.wire_bytes < source.len() as u64 / 2, "{stats:?}");
}

#[test]
fn the_parser_sees_every_record() {
    let source = stream(3, 2, 1);
    let mut p = Parser::source(1 << 30);
    p.feed(&source);
    let (mut pages, mut zeros, mut ends, mut tail) = (0, 0, 0, 0);
    let mut rebuilt = Vec::new();
    while let Some(item) = p.next_item().unwrap() {
        rebuilt.extend_from_slice(p.raw());
        match item {
            Item::Page { index } => {
                assert!(index < p.total_pages());
                rebuilt.extend_from_slice(p.page());
                pages += 1;
            }
            Item::Zero { .. } => zeros += 1,
            Item::PartEnd { .. } => ends += 1,
            Item::Tail => tail += p.raw().len(),
            Item::Setup => assert_eq!(p.blocks().len(), 2),
            Item::Framing => {}
        }
    }
    p.finish().unwrap();
    assert_eq!(rebuilt, source);
    assert!(pages > 0 && zeros > 0);
    assert_eq!(ends, 2);
    assert_eq!(tail, 3002);
    assert_eq!(p.total_pages(), 68);
}

fn refused(source: &[u8]) -> Error {
    carry(source, 1 << 20, &options()).unwrap_err()
}

#[test]
fn what_the_parser_does_not_read_is_an_error() {
    let good = stream(1, 1, 1);
    // The first page record of the first part: right after the setup's EOS and footer and the
    // part's header.
    let setup_end = good.windows(5).position(|w| w == [0x7e, 0, 0, 0, 2]).unwrap() + 5;
    let record = setup_end + 5;

    let mut xbzrle = good.clone();
    xbzrle[record + 7] = 0x40;
    assert!(
        matches!(refused(&xbzrle), Error::Stream { ref what, .. } if what.contains("XBZRLE")),
        "{:?}",
        refused(&xbzrle)
    );

    let mut compressed = good.clone();
    compressed[record + 6] = 0x01;
    compressed[record + 7] = 0x00;
    assert!(matches!(refused(&compressed), Error::Stream { ref what, .. } if what.contains("compressed")));

    // Another live section (block migration).
    let mut block = good.clone();
    let at = good.windows(3).position(|w| w == b"ram").unwrap();
    block[at..at + 3].copy_from_slice(b"blk");
    assert!(matches!(refused(&block), Error::Stream { ref what, .. } if what.contains("live section")));

    // Device state before RAM has ended.
    let mut early = good[..record - 5].to_vec();
    early.push(0x04);
    early.extend_from_slice(&good[record - 5..]);
    assert!(matches!(refused(&early), Error::Stream { ref what, .. } if what.contains("before the RAM section ended")));

    // A page beyond its block.
    let mut beyond = good.clone();
    beyond[record + 4] = 0x10;
    assert!(matches!(refused(&beyond), Error::Stream { ref what, .. } if what.contains("beyond RAM block")));

    // Not a migration stream; a newer stream version.
    assert!(matches!(refused(b"QFI\xfb\0\0\0\x03"), Error::Stream { .. }));
    let mut v4 = good.clone();
    v4[7] = 4;
    assert!(matches!(refused(&v4), Error::Stream { ref what, .. } if what.contains("version")));

    // A stream cut before the device state.
    assert!(matches!(refused(&good[..good.len() / 2]), Error::Truncated { .. }));
}

#[test]
fn ram_over_the_limit_is_refused_before_anything_is_allocated() {
    let mut o = options();
    o.max_ram = 16 * PAGE as u64;
    let err = carry(&stream(1, 1, 1), 1 << 20, &o).unwrap_err();
    assert!(matches!(err, Error::Stream { ref what, .. } if what.contains("more than the limit")), "{err}");
}

/// The whole container a sender makes of `source`.
fn container(source: &[u8], o: &Options) -> Vec<u8> {
    let mut sender = MigrationSender::new(o).unwrap();
    let mut wire = Vec::new();
    sender.push(source, &mut wire).unwrap();
    sender.finish(&mut wire).unwrap();
    wire
}

#[test]
fn a_damaged_container_is_an_error_not_a_stream() {
    let source = stream(5, 3, 1);
    let o = options();
    let wire = container(&source, &o);
    // Flip one byte at a time over the container: every outcome is a whole stream equal to
    // the source, or an error; never other bytes.
    for at in (0..wire.len()).step_by(wire.len() / 97 + 1) {
        let mut bad = wire.clone();
        bad[at] ^= 0x55;
        let mut receiver = MigrationReceiver::new(&o).unwrap();
        let mut out = Vec::new();
        let result = receiver.push(&bad, &mut out).and_then(|()| receiver.finish().map(|_| ()));
        match result {
            Ok(()) => assert!(out == source, "byte {at}: a different stream came out"),
            Err(_) => assert!(source.starts_with(&out), "byte {at}: bytes that are not the source's were written"),
        }
    }
}

#[test]
fn a_container_cut_short_is_an_error() {
    let source = stream(5, 2, 1);
    let o = options();
    let wire = container(&source, &o);
    let mut receiver = MigrationReceiver::new(&o).unwrap();
    let mut out = Vec::new();
    receiver.push(&wire[..wire.len() - 3], &mut out).unwrap();
    assert!(receiver.finish().is_err());
}

#[test]
fn a_receiver_for_another_key_refuses() {
    let source = stream(5, 1, 1);
    let o = options();
    let mut sender = MigrationSender::new(&o).unwrap();
    let mut wire = Vec::new();
    sender.push(&source, &mut wire).unwrap();
    let mut receiver = MigrationReceiver::new(&Options { key: "other".into(), ..o }).unwrap();
    let err = receiver.push(&wire, &mut Vec::new()).unwrap_err();
    assert!(matches!(err, Error::Container { .. }), "{err}");
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(24))]

    /// Any stream, fed in any piece size, with any batch size, comes out byte for byte.
    #[test]
    fn streams_round_trip(seed in 0u64..1000, rounds in 1u8..5, parts in 1usize..4, piece in 1usize..20000, batch_pages in 1usize..40) {
        let source = stream(seed, rounds, parts);
        let mut o = options();
        o.batch_bytes = batch_pages * PAGE;
        let (out, _) = carry(&source, piece, &o).unwrap();
        prop_assert!(out == source);
    }
}
