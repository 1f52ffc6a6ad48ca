//! Real frames, damaged every way a link or a disk can damage them: every bit flipped (all of
//! the delta frames', a large sample of the keyframes'), cut at every length, and garbage of
//! every small length. Each decode must be a typed error or, where the damage cannot be told
//! apart from a valid frame, the exact image: never a panic, never a wrong image.

#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)] // reason: a test fails by panicking.

use hde_fuzz::{fixtures, receiver, seeds, Mutator};

/// The real frames of the seed corpus and the image each decodes to.
fn frames() -> Vec<(String, Vec<u8>, &'static [u8])> {
    let images = fixtures();
    seeds("frame_decode")
        .into_iter()
        .map(|(name, bytes)| {
            let image = if name.contains("delta") { &images[1][..] } else { &images[0][..] };
            (name, bytes, image)
        })
        .collect()
}

/// Decodes `frame` in a fresh receiver; an accepted image must be `expected`. True if accepted.
fn check(frame: &[u8], expected: &[u8], what: &str) -> bool {
    let node = receiver().expect("receiver");
    match node.decompress(frame) {
        Ok((_, image)) => {
            assert!(image.as_slice() == expected, "{what}: a wrong image was accepted");
            true
        }
        Err(e) => {
            // Typed, and it says something.
            assert!(!e.to_string().is_empty(), "{what}: empty error");
            false
        }
    }
}

/// Runs `f` over `items` on two threads.
fn par<T: Sync>(items: &[T], f: impl Fn(&T) -> bool + Sync) -> usize {
    let half = items.len() / 2;
    std::thread::scope(|s| {
        let a = s.spawn(|| items[..half].iter().filter(|i| f(i)).count());
        let b = items[half..].iter().filter(|i| f(i)).count();
        a.join().expect("worker") + b
    })
}

#[test]
fn bit_flips_are_errors_or_the_exact_image() {
    let mut total = 0;
    for (name, frame, image) in frames() {
        assert!(check(&frame, image, &name), "{name} must decode intact");
        let bits = frame.len() * 8;
        // Every bit of the delta frames; 40,000 bits spread over each keyframe.
        let chosen: Vec<usize> = if name.contains("delta") {
            (0..bits).collect()
        } else {
            let mut m = Mutator::new(bits as u64);
            (0..40_000).map(|_| (m.next_u64() % bits as u64) as usize).collect()
        };
        let accepted = par(&chosen, |&bit| {
            let mut bad = frame.clone();
            bad[bit / 8] ^= 1 << (bit % 8);
            check(&bad, image, &format!("{name} bit {bit}"))
        });
        eprintln!("{name}: {} bit flips of {bits} bits, {accepted} decoded to the exact image", chosen.len());
        total += chosen.len();
    }
    eprintln!("bit flips tried: {total}");
}

#[test]
fn truncations_are_errors() {
    let mut total = 0;
    for (name, frame, image) in frames() {
        let lengths: Vec<usize> = (0..frame.len()).collect();
        let accepted = par(&lengths, |&len| check(&frame[..len], image, &format!("{name} cut at {len}")));
        assert_eq!(accepted, 0, "{name}: a truncated frame decoded");
        total += lengths.len();
    }
    eprintln!("truncations tried: {total}");
}

#[test]
fn garbage_of_every_small_length_is_an_error() {
    let (_, frame, image) = frames().into_iter().next().expect("a frame");
    let mut m = Mutator::new(3);
    let mut inputs = Vec::new();
    for len in 0..=1024 {
        for _ in 0..4 {
            inputs.push((0..len).map(|_| m.next_u64() as u8).collect::<Vec<u8>>());
        }
        // A real frame's first bytes (its magic and header) followed by garbage.
        let keep = len.min(frame.len()) / 2;
        let mut mixed = frame[..keep].to_vec();
        mixed.extend((keep..len).map(|_| m.next_u64() as u8));
        inputs.push(mixed);
    }
    let accepted = par(&inputs, |input| check(input, image, &format!("garbage of {} bytes", input.len())));
    assert_eq!(accepted, 0);
    eprintln!("garbage inputs tried: {}", inputs.len());
}
