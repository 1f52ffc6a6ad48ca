//! What pages hold: the content kinds of guest memory and how each is made.
//!
//! Each kind imitates what dominates real guest RAM, for what matters to a compressor: how
//! often byte strings repeat, how far apart, and which bytes change when a program writes.

use crate::rng::Rng;

/// What a page holds.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum PageKind {
    /// All zero (never touched, or freed and scrubbed).
    Zero,
    /// Machine code: a skewed vocabulary of instruction byte strings with varying immediates.
    Code,
    /// Heap objects: arrays of structs of pointers, small integers, flags and zero padding.
    Heap,
    /// Text: log lines, configuration, source, built from a skewed word vocabulary.
    Text,
    /// Mostly zero with a few live words: page tables, bitmaps, sparse arrays.
    Sparse,
    /// High entropy: compressed files, encrypted data, random pools.
    Random,
}

impl PageKind {
    /// Kinds with their share of round 0, in per mille, chosen so that the generated image
    /// matches the real figures of the design brief §1 (about 37 % zero pages, and what
    /// lz4/zstd make of the rest).
    pub(crate) const WEIGHTS: [(PageKind, u64); 6] = [
        (PageKind::Zero, 400),
        (PageKind::Code, 120),
        (PageKind::Heap, 270),
        (PageKind::Text, 120),
        (PageKind::Sparse, 70),
        (PageKind::Random, 20),
    ];

    pub(crate) fn pick(rng: &mut Rng) -> PageKind {
        let mut roll = rng.below(1000);
        for (kind, weight) in Self::WEIGHTS {
            if roll < weight {
                return kind;
            }
            roll -= weight;
        }
        PageKind::Heap
    }

    /// Kinds a freshly allocated page is filled with (no zero).
    pub(crate) fn pick_nonzero(rng: &mut Rng) -> PageKind {
        loop {
            let kind = Self::pick(rng);
            if kind != PageKind::Zero {
                return kind;
            }
        }
    }
}

const WORD_COUNT: usize = 1500;
const SNIPPET_COUNT: usize = 400;
const TEMPLATE_COUNT: usize = 48;

/// One struct layout: the kind of each 8-byte field.
#[derive(Clone, Debug)]
struct Template {
    fields: Vec<Field>,
}

#[derive(Clone, Copy, Debug)]
enum Field {
    Pointer,
    SmallInt,
    Zero,
    Flags(u64),
    Counter,
    Bytes,
}

/// The shared vocabularies of one VM: its code snippets, words and struct layouts.
///
/// Shared across all pages, as a real guest's pages share a kernel, libraries and data types:
/// this is what makes content repeat across distant pages.
#[derive(Clone, Debug)]
pub(crate) struct Vocab {
    snippets: Vec<Vec<u8>>,
    words: Vec<Vec<u8>>,
    templates: Vec<Template>,
    /// Guest-physical size in pages, to make pointers that point inside the guest.
    pages: u64,
}

/// Common x86-64 opcode starts, weighted by repetition in the list.
const OPCODES: &[&[u8]] = &[
    &[0x48, 0x89],
    &[0x48, 0x8b],
    &[0x48, 0x8b],
    &[0x89],
    &[0x8b],
    &[0x8b],
    &[0x48, 0x83],
    &[0x48, 0x8d],
    &[0xe8],
    &[0xe8],
    &[0xe9],
    &[0x74],
    &[0x75],
    &[0x0f, 0x84],
    &[0x0f, 0x85],
    &[0x41, 0x54],
    &[0x55],
    &[0x53],
    &[0x5b],
    &[0x5d],
    &[0xc3],
    &[0x31, 0xc0],
    &[0x85, 0xc0],
    &[0x48, 0x85],
    &[0x0f, 0x1f, 0x44, 0x00, 0x00],
    &[0x66, 0x90],
    &[0xf3, 0x0f, 0x1e, 0xfa],
    &[0x4c, 0x89],
    &[0x4c, 0x8b],
    &[0x39],
    &[0x3b],
    &[0xff],
    &[0x80],
    &[0xc7],
];

const LETTERS: &[u8] = b"etaoinshrdlcumwfgypbvkjxqz";

impl Vocab {
    pub(crate) fn new(rng: &mut Rng, pages: u64) -> Self {
        let snippets = (0..SNIPPET_COUNT)
            .map(|_| {
                let mut s = Vec::new();
                for _ in 0..rng.range(1, 3) {
                    s.extend_from_slice(OPCODES[rng.index(OPCODES.len())]);
                    // ModRM / SIB / short displacement bytes.
                    for _ in 0..rng.range(0, 2) {
                        s.push(rng.below(256) as u8);
                    }
                }
                s
            })
            .collect();
        let words = (0..WORD_COUNT)
            .map(|_| {
                let len = rng.range(2, 10);
                (0..len).map(|_| LETTERS[rng.skewed(LETTERS.len())]).collect()
            })
            .collect();
        let templates = (0..TEMPLATE_COUNT)
            .map(|_| {
                let n = [2usize, 4, 6, 8, 16, 32][rng.index(6)];
                let fields = (0..n)
                    .map(|_| match rng.below(100) {
                        0..=29 => Field::Pointer,
                        30..=49 => Field::SmallInt,
                        50..=69 => Field::Zero,
                        70..=79 => Field::Flags(rng.next_u64() & 0x0000_00ff_0f0f_00ff),
                        80..=89 => Field::Counter,
                        _ => Field::Bytes,
                    })
                    .collect();
                Template { fields }
            })
            .collect();
        Vocab { snippets, words, templates, pages: pages.max(1) }
    }

    /// Fills `page` with fresh content of `kind`.
    pub(crate) fn fill(&self, rng: &mut Rng, kind: PageKind, page: &mut [u8]) {
        match kind {
            PageKind::Zero => page.fill(0),
            PageKind::Code => self.fill_code(rng, page),
            PageKind::Heap => self.fill_heap(rng, page),
            PageKind::Text => self.fill_text(rng, page),
            PageKind::Sparse => self.fill_sparse(rng, page),
            PageKind::Random => rng.fill(page),
        }
    }

    /// Overwrites `span` (part of a page of `kind`) with new bytes of that kind, as a program
    /// writing a field, a string or a buffer would.
    pub(crate) fn rewrite(&self, rng: &mut Rng, kind: PageKind, span: &mut [u8]) {
        match kind {
            PageKind::Zero | PageKind::Sparse | PageKind::Heap => self.rewrite_words(rng, span),
            PageKind::Code => self.fill_code(rng, span),
            PageKind::Text => self.fill_text(rng, span),
            PageKind::Random => rng.fill(span),
        }
    }

    fn pointer(&self, rng: &mut Rng) -> u64 {
        let base = rng.below(self.pages);
        self.pointer_near(rng, base)
    }

    /// A kernel direct-map address of a guest page near `base` (objects of one slab point to
    /// neighbours), 16-byte aligned inside the page.
    fn pointer_near(&self, rng: &mut Rng, base: u64) -> u64 {
        let page = (base + rng.below(32)) % self.pages;
        0xffff_8880_0000_0000 | (page << 12) | (rng.below(256) << 4)
    }

    fn fill_code(&self, rng: &mut Rng, out: &mut [u8]) {
        let mut pos = 0;
        // A "function" reuses a few call targets; real code calls the same helpers often.
        let targets = [rng.next_u64() as u32, rng.next_u64() as u32, rng.next_u64() as u32];
        while pos < out.len() {
            let snippet = &self.snippets[rng.skewed(self.snippets.len())];
            let mut piece = snippet.clone();
            if rng.chance(250) {
                piece.extend_from_slice(&targets[rng.index(targets.len())].to_le_bytes());
            } else if rng.chance(150) {
                piece.push(rng.below(64) as u8);
            }
            let n = piece.len().min(out.len() - pos);
            out[pos..pos + n].copy_from_slice(&piece[..n]);
            pos += n;
        }
    }

    fn field(&self, rng: &mut Rng, field: Field, index: u64, base: u64) -> u64 {
        match field {
            Field::Pointer if rng.chance(150) => 0,
            Field::Pointer => self.pointer_near(rng, base),
            Field::SmallInt => rng.skewed(300) as u64,
            Field::Zero => 0,
            Field::Flags(base) => base ^ (rng.below(4) << 8),
            Field::Counter => 1000 + index * 16 + rng.below(16),
            Field::Bytes => rng.next_u64() & 0x0000_0000_00ff_00ff,
        }
    }

    fn fill_heap(&self, rng: &mut Rng, page: &mut [u8]) {
        let template = &self.templates[rng.skewed(self.templates.len())];
        let first = rng.below(1 << 20);
        let base = rng.below(self.pages);
        for (index, object) in (first..).zip(page.chunks_mut(template.fields.len() * 8)) {
            for (slot, &field) in object.chunks_mut(8).zip(&template.fields) {
                let value = self.field(rng, field, index, base).to_le_bytes();
                slot.copy_from_slice(&value[..slot.len()]);
            }
        }
    }

    fn fill_text(&self, rng: &mut Rng, out: &mut [u8]) {
        let mut pos = 0;
        let mut line = Vec::with_capacity(128);
        while pos < out.len() {
            line.clear();
            if rng.chance(400) {
                // A log line: fixed shape, changing numbers.
                line.extend_from_slice(b"2026-11-21T");
                line.extend_from_slice(
                    format!("{:02}:{:02}:{:02}", rng.below(24), rng.below(60), rng.below(60)).as_bytes(),
                );
                line.extend_from_slice(if rng.chance(800) { b" INFO app[" } else { b" WARN app[" });
                line.extend_from_slice(format!("{}]: ", 100 + rng.below(8)).as_bytes());
            }
            for _ in 0..rng.range(3, 12) {
                line.extend_from_slice(&self.words[rng.skewed(self.words.len())]);
                line.push(b' ');
            }
            if rng.chance(300) {
                line.extend_from_slice(format!("id={} ", rng.below(100_000)).as_bytes());
            }
            line.push(b'\n');
            let n = line.len().min(out.len() - pos);
            out[pos..pos + n].copy_from_slice(&line[..n]);
            pos += n;
        }
    }

    fn fill_sparse(&self, rng: &mut Rng, page: &mut [u8]) {
        page.fill(0);
        let words = page.len() / 8;
        if words == 0 {
            return;
        }
        if rng.chance(500) {
            // A page table: a run of consecutive present entries.
            let start = rng.index(words);
            let len = rng.range(1, 64).min(words - start);
            let first = rng.below(self.pages);
            for (frame, slot) in (first..).zip(page[start * 8..(start + len) * 8].chunks_exact_mut(8)) {
                slot.copy_from_slice(&((frame << 12) | 0x067).to_le_bytes());
            }
        } else {
            // A few scattered live words.
            for _ in 0..rng.range(1, 24) {
                let at = rng.index(words) * 8;
                let value = if rng.chance(500) { self.pointer(rng) } else { rng.below(1 << 16) };
                page[at..at + 8].copy_from_slice(&value.to_le_bytes());
            }
        }
    }

    /// Rewrites 8-byte words the way a program updates fields: counters move, pointers are
    /// relinked, flags flip. Changes are byte-sparse, as in real memory.
    fn rewrite_words(&self, rng: &mut Rng, span: &mut [u8]) {
        for word in span.chunks_mut(8) {
            let mut value = [0u8; 8];
            value[..word.len()].copy_from_slice(word);
            let old = u64::from_le_bytes(value);
            let new = match rng.below(4) {
                0 => old.wrapping_add(1 + rng.below(16)),
                1 => self.pointer(rng),
                2 => old ^ (1 << rng.below(64)),
                _ => rng.skewed(300) as u64,
            };
            word.copy_from_slice(&new.to_le_bytes()[..word.len()]);
        }
    }
}
