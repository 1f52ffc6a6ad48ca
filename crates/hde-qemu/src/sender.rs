//! The source side: QEMU's stream in, container records out.

use std::collections::{BTreeMap, HashMap, HashSet};
use std::time::Instant;

use hde_core::delta::EncodeOptions;
use hde_core::Encoder;
use xxhash_rust::xxh3::{xxh3_64, Xxh3};

use crate::reuse::Lent;
use crate::stream::{Item, Parser, PAGE};
use crate::{wire, Error, Options, Result};

/// What a sender has done so far.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct SenderStats {
    /// Bytes of QEMU's stream read.
    pub source_bytes: u64,
    /// Page records with a body.
    pub pages: u64,
    /// Zero-page records.
    pub zero_pages: u64,
    /// Batches sent.
    pub batches: u64,
    /// Bytes of HDE frames (the pages).
    pub frame_bytes: u64,
    /// Bytes of compressed skeletons (framing and device state).
    pub skeleton_bytes: u64,
    /// Container bytes in all (what the transport carries).
    pub wire_bytes: u64,
    /// Page records (with a body or zero) that travelled without bytes of their own: the
    /// same content as the destination held, zero, or a duplicate of a page it holds.
    pub pages_elided: u64,
    /// Streams of the batches' frames per codec choice (`zstd-3+ref`...): what the selector
    /// chose on this link.
    pub codecs: BTreeMap<String, u64>,
}

#[derive(Default)]
struct Batch {
    skeleton: Vec<u8>,
    /// The batch's round image: its pages' contents one after the other (zero pages too).
    image: Vec<u8>,
    /// The pages' indexes in the guest's RAM, and whether QEMU sent each as a zero page.
    pages: Vec<(u64, bool)>,
    seen: HashSet<u64>,
    began: Option<Instant>,
    hash: Xxh3,
    len: u64,
}

impl Batch {
    fn is_empty(&self) -> bool {
        self.len == 0
    }

    /// Empties the batch, keeping its buffers' memory for the next.
    fn clear(&mut self) {
        self.skeleton.clear();
        self.image.clear();
        self.pages.clear();
        self.seen.clear();
        self.began = None;
        self.hash.reset();
        self.len = 0;
    }

    fn raw(&mut self, bytes: &[u8]) {
        self.began.get_or_insert_with(Instant::now);
        self.skeleton.extend_from_slice(bytes);
        self.hash.update(bytes);
        self.len += bytes.len() as u64;
    }
}

/// Cuts QEMU's migration stream into batches and encodes them (see the crate's
/// documentation). Feed it the stream with [`push`](Self::push) as it arrives, then call
/// [`finish`](Self::finish) at its end.
pub struct MigrationSender {
    options: Options,
    encoder: Encoder,
    parser: Parser,
    batch: Batch,
    /// The guest's RAM as the destination holds it (empty before the setup).
    shadow: Vec<u8>,
    /// Where each non-zero page of `shadow` is, by its content's hash: a page QEMU sends that
    /// the destination holds elsewhere (memory that moved) is found here.
    held: HashMap<u64, u32>,
    /// Each page's hash in `held` (0: a zero page, or none), so a page that changes is
    /// taken out of `held` without hashing its old content.
    held_hash: Vec<u64>,
    /// The hashes of a batch's pages that changed (0: unchanged or zero).
    changed: Vec<u64>,
    /// The buffers of the batches' baselines.
    bases: Lent,
    /// A batch's frame, kept between batches.
    frame: Vec<u8>,
    stats: SenderStats,
}

impl std::fmt::Debug for MigrationSender {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("MigrationSender").field("key", &self.options.key).field("stats", &self.stats).finish()
    }
}

impl MigrationSender {
    /// A sender of one migration.
    pub fn new(options: &Options) -> Result<Self> {
        options.config.validate()?;
        let encoder = Encoder::new(options.delta_config(), options.config.selector_config())?;
        Ok(MigrationSender {
            options: options.clone(),
            encoder,
            parser: Parser::source(options.max_ram),
            batch: Batch::default(),
            shadow: Vec::new(),
            held: HashMap::new(),
            held_hash: Vec::new(),
            changed: Vec::new(),
            bases: Lent::default(),
            frame: Vec::new(),
            stats: SenderStats::default(),
        })
    }

    /// The engine (to steer its selector with a measured link rate).
    pub fn encoder(&self) -> &Encoder {
        &self.encoder
    }

    /// What was done so far.
    pub fn stats(&self) -> &SenderStats {
        &self.stats
    }

    /// Reads the stream's next bytes; appends the records of every batch they complete to
    /// `out`.
    pub fn push(&mut self, input: &[u8], out: &mut Vec<u8>) -> Result<()> {
        if self.stats.wire_bytes == 0 {
            wire::put(out, wire::KEY, self.options.key.as_bytes())?;
            self.stats.wire_bytes = (wire::HEAD + self.options.key.len()) as u64;
        }
        self.stats.source_bytes += input.len() as u64;
        self.parser.feed(input);
        while let Some(item) = self.parser.next_item()? {
            self.item(item, out)?;
        }
        Ok(())
    }

    /// The stream ended: checks it ended where a stream may, sends the last batch and the end
    /// record.
    pub fn finish(&mut self, out: &mut Vec<u8>) -> Result<SenderStats> {
        self.parser.finish()?;
        if self.stats.wire_bytes == 0 {
            return Err(Error::Truncated { offset: 0 });
        }
        self.flush(out)?;
        let mut end = Vec::with_capacity(16);
        end.extend_from_slice(&self.stats.source_bytes.to_le_bytes());
        end.extend_from_slice(&self.stats.batches.to_le_bytes());
        let before = out.len();
        wire::put(out, wire::END, &end)?;
        self.stats.wire_bytes += (out.len() - before) as u64;
        Ok(self.stats.clone())
    }

    fn item(&mut self, item: Item, out: &mut Vec<u8>) -> Result<()> {
        match item {
            Item::Page { index } | Item::Zero { index, .. } => {
                // A page twice in one batch would be rebuilt with its last content both times.
                if self.batch.seen.contains(&index) {
                    self.flush(out)?;
                }
                if self.shadow.is_empty() {
                    return Err(Error::Stream {
                        offset: self.stats.source_bytes,
                        what: "a page before the RAM setup".into(),
                    });
                }
                self.batch.raw(self.parser.raw());
                let image = &mut self.batch.image;
                let zero = match item {
                    Item::Page { .. } => {
                        let body = self.parser.page();
                        self.batch.hash.update(body);
                        self.batch.len += PAGE as u64;
                        image.extend_from_slice(body);
                        self.stats.pages += 1;
                        false
                    }
                    Item::Zero { fill, .. } => {
                        self.stats.zero_pages += 1;
                        image.resize(image.len() + PAGE, fill);
                        fill == 0
                    }
                    _ => false,
                };
                self.batch.pages.push((index, zero));
                self.batch.seen.insert(index);
                if self.batch.image.len() >= self.options.batch_bytes {
                    self.flush(out)?;
                }
            }
            Item::Setup => {
                self.batch.raw(self.parser.raw());
                let len = self.parser.total_pages() * PAGE as u64;
                let len = usize::try_from(len).map_err(|_| Error::Stream {
                    offset: self.stats.source_bytes,
                    what: "RAM larger than this machine's address space".into(),
                })?;
                self.shadow = hde_core::zeroed_image(len)?;
                let pages = len / PAGE;
                self.held_hash = Vec::new();
                let bytes = (pages * std::mem::size_of::<u64>()) as u64;
                self.held_hash
                    .try_reserve_exact(pages)
                    .map_err(|_| hde_core::Error::from(hde_core::delta::Error::OutOfMemory { bytes }))?;
                self.held_hash.resize(pages, 0);
                // The receiver learns the RAM's layout from this batch: it must hold it
                // before the first round arrives.
                self.flush(out)?;
            }
            Item::PartEnd { last } => {
                self.batch.raw(self.parser.raw());
                let old = self.batch.began.is_some_and(|t| t.elapsed() >= self.options.batch_age);
                if last || old {
                    self.flush(out)?;
                }
            }
            Item::Framing | Item::Tail => {
                self.batch.raw(self.parser.raw());
                if self.batch.skeleton.len() >= self.options.batch_bytes {
                    self.flush(out)?;
                }
            }
        }
        Ok(())
    }

    /// Sends the batch: its round (if it has pages), then its skeleton.
    fn flush(&mut self, out: &mut Vec<u8>) -> Result<()> {
        if self.batch.is_empty() {
            return Ok(());
        }
        let mut batch = std::mem::take(&mut self.batch);
        let sent = self.send_batch(&batch, out);
        batch.clear();
        self.batch = batch;
        sent
    }

    fn send_batch(&mut self, batch: &Batch, out: &mut Vec<u8>) -> Result<()> {
        let before = out.len();
        if !batch.pages.is_empty() {
            self.send_pages(batch, out)?;
        }
        let len = u32::try_from(batch.len)
            .ok()
            .filter(|&n| n <= wire::MAX_BATCH)
            .ok_or_else(|| Error::Container { what: format!("a batch of {} bytes", batch.len) })?;
        let packed = zstd::bulk::compress(&batch.skeleton, self.options.skeleton_level).map_err(Error::Skeleton)?;
        let mut payload = Vec::with_capacity(12 + packed.len());
        payload.extend_from_slice(&len.to_le_bytes());
        payload.extend_from_slice(&batch.hash.digest().to_le_bytes());
        payload.extend_from_slice(&packed);
        wire::put(out, wire::SKELETON, &payload)?;
        self.stats.skeleton_bytes += packed.len() as u64;
        self.stats.batches += 1;
        self.stats.wire_bytes += (out.len() - before) as u64;
        Ok(())
    }

    /// The batch's pages as a round: its image is the pages one after the other, its
    /// baseline what the destination holds at their addresses, followed by the pages it holds
    /// elsewhere with the same content as one of them. The `P` record names both lists.
    fn send_pages(&mut self, batch: &Batch, out: &mut Vec<u8>) -> Result<()> {
        let image = &batch.image;
        let (shadow, held, changed) = (&self.shadow, &self.held, &mut self.changed);
        let held_at = |p: u64| {
            let at = p as usize * PAGE;
            &shadow[at..at + PAGE]
        };
        let mut moved: Vec<u64> = Vec::new();
        changed.clear();
        // The baseline's buffer goes to the engine, which keeps it until the next batch's.
        let base = self.bases.fill(|base| {
            base.reserve(batch.pages.len() * PAGE);
            let mut seen_moved = HashSet::new();
            for (&(p, zero), page) in batch.pages.iter().zip(image.chunks_exact(PAGE)) {
                let old = held_at(p);
                base.extend_from_slice(old);
                let mut h = 0;
                if old != page && !zero && page.iter().any(|&b| b != 0) {
                    h = xxh3_64(page);
                    if let Some(&q) = held.get(&h) {
                        if u64::from(q) != p && held_at(u64::from(q)) == page && seen_moved.insert(q) {
                            moved.push(u64::from(q));
                        }
                    }
                }
                changed.push(h);
            }
            for &q in &moved {
                base.extend_from_slice(held_at(q));
            }
        });
        let mut list = Vec::with_capacity(8 + 2 * (batch.pages.len() + moved.len()));
        list.extend_from_slice(&(batch.pages.len() as u32).to_le_bytes());
        list.extend_from_slice(&(moved.len() as u32).to_le_bytes());
        let pages = batch.pages.iter().map(|&(p, _)| p);
        wire::put_pages(&mut list, pages.chain(moved.iter().copied()));
        wire::put(out, wire::PAGES, &list)?;

        let key = &self.options.key;
        self.encoder.delta().install_in_place(key, base).map_err(hde_core::Error::from)?;
        let mut frame = std::mem::take(&mut self.frame);
        frame.clear();
        let options = EncodeOptions { detached: true, ..EncodeOptions::default() };
        let summary = self.encoder.compress_to(key, image, &mut frame, options)?;
        let c = summary.pages;
        // The pages QEMU sent that travel with bytes of their own; the others were unchanged,
        // zero or duplicates of a page the destination holds.
        self.stats.pages_elided += (batch.pages.len() as u64).saturating_sub(c.xor + c.literal);
        self.stats.frame_bytes += frame.len() as u64;
        for (codec, n) in summary.codecs {
            *self.stats.codecs.entry(codec).or_default() += n;
        }
        wire::put(out, wire::FRAME, &frame)?;
        self.frame = frame;

        // The destination holds the batch's pages now.
        for ((&(p, _), page), &h) in batch.pages.iter().zip(image.chunks_exact(PAGE)).zip(&self.changed) {
            let at = p as usize * PAGE;
            let old = &mut self.shadow[at..at + PAGE];
            if old == page {
                continue;
            }
            let gone = std::mem::replace(&mut self.held_hash[p as usize], h);
            if gone != 0 && self.held.get(&gone) == Some(&(p as u32)) {
                self.held.remove(&gone);
            }
            old.copy_from_slice(page);
            if h != 0 {
                self.held.insert(h, p as u32);
            }
        }
        Ok(())
    }
}
