//! The destination side: container records in, QEMU's stream out.

use std::io::Write;

use hde_core::Decoder;

use crate::reuse::Lent;
use crate::stream::{Item, Parser, PAGE};
use crate::{wire, Error, Options, Result};

/// What a receiver has done.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct ReceiverStats {
    /// Container bytes read.
    pub wire_bytes: u64,
    /// Bytes of QEMU's stream rebuilt and handed on.
    pub stream_bytes: u64,
    /// Batches rebuilt.
    pub batches: u64,
    /// Rounds applied.
    pub rounds: u64,
}

/// Rebuilds QEMU's migration stream from a sender's records (see the crate's documentation).
pub struct MigrationReceiver {
    options: Options,
    decoder: Decoder,
    parser: Parser,
    inbox: Vec<u8>,
    /// The guest's RAM as the destination holds it (empty before the setup).
    shadow: Vec<u8>,
    /// The buffers of the rounds' baselines.
    bases: Lent,
    /// A round's image, kept between rounds.
    image: Vec<u8>,
    /// The `P` record of the batch whose frame comes next: its pages, then the added ones.
    pages: Option<(usize, Vec<u64>)>,
    out: Vec<u8>,
    ended: bool,
    /// The key the sender named.
    key: Option<String>,
    stats: ReceiverStats,
}

impl std::fmt::Debug for MigrationReceiver {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("MigrationReceiver").field("key", &self.options.key).field("stats", &self.stats).finish()
    }
}

fn container(what: impl Into<String>) -> Error {
    Error::Container { what: what.into() }
}

impl MigrationReceiver {
    /// A receiver of one migration: of `options.key`, or of the key the sender names if it
    /// is empty.
    pub fn new(options: &Options) -> Result<Self> {
        options.config.validate()?;
        Ok(MigrationReceiver {
            options: options.clone(),
            decoder: Decoder::new(options.delta_config())?,
            parser: Parser::skeleton(options.max_ram),
            inbox: Vec::new(),
            shadow: Vec::new(),
            bases: Lent::default(),
            image: Vec::new(),
            pages: None,
            out: Vec::new(),
            ended: false,
            key: None,
            stats: ReceiverStats::default(),
        })
    }

    /// What was done so far.
    pub fn stats(&self) -> &ReceiverStats {
        &self.stats
    }

    /// Reads the container's next bytes; writes each batch they complete to `sink` once it
    /// is rebuilt and checked.
    pub fn push(&mut self, bytes: &[u8], sink: &mut impl Write) -> Result<()> {
        self.stats.wire_bytes += bytes.len() as u64;
        self.inbox.extend_from_slice(bytes);
        let mut used = 0;
        while let Some((tag, range)) = wire::take(&self.inbox[used..])? {
            let (start, end) = (used + range.start, used + range.end);
            let payload = std::mem::take(&mut self.inbox);
            let result = self.record(tag, &payload[start..end], sink);
            self.inbox = payload;
            result?;
            used = end;
        }
        self.inbox.drain(..used);
        Ok(())
    }

    /// The container ended: checks that the stream was whole.
    pub fn finish(&self) -> Result<ReceiverStats> {
        if !self.ended || !self.inbox.is_empty() {
            return Err(container("the sender's stream ended before its end record"));
        }
        Ok(self.stats.clone())
    }

    fn record(&mut self, tag: u8, payload: &[u8], sink: &mut impl Write) -> Result<()> {
        if self.ended {
            return Err(container("a record after the end"));
        }
        if (tag == wire::KEY) != (self.key.is_none()) {
            return Err(container("the key record must come first, and once"));
        }
        match tag {
            wire::KEY => {
                let key = std::str::from_utf8(payload).map_err(|_| container("a key that is not UTF-8"))?;
                if !self.options.key.is_empty() && key != self.options.key {
                    return Err(container(format!(
                        "a migration of {key:?}, this receiver expects {:?}",
                        self.options.key
                    )));
                }
                self.key = Some(key.to_owned());
            }
            wire::PAGES => {
                if self.shadow.is_empty() || self.pages.is_some() {
                    return Err(container("a page list before the RAM setup, or twice"));
                }
                let (n, m) = (wire::u32_at(payload, 0)? as usize, wire::u32_at(payload, 4)? as usize);
                if n == 0 || n > wire::MAX_BATCH as usize / PAGE || m > n {
                    return Err(container(format!("a batch of {n} pages and {m} added")));
                }
                let list = wire::get_pages(&payload[8..], n + m, self.parser.total_pages())?;
                self.pages = Some((n, list));
            }
            wire::FRAME => {
                let (n, list) = self.pages.take().ok_or_else(|| container("a round without its page list"))?;
                let shadow = &self.shadow;
                let base = self.bases.fill(|base| {
                    base.reserve(list.len() * PAGE);
                    for &p in &list {
                        let at = p as usize * PAGE;
                        base.extend_from_slice(&shadow[at..at + PAGE]);
                    }
                });
                let key = self.key.clone().unwrap_or_default();
                self.decoder.delta().install(&key, PAGE, base).map_err(hde_core::Error::from)?;
                let mut image = std::mem::take(&mut self.image);
                let header = self.decoder.decompress_into(payload, &mut image)?;
                if header.key != key || image.len() != n * PAGE {
                    return Err(container(format!(
                        "a round of {:?} with {} bytes, not of {key:?} with {n} pages",
                        header.key,
                        image.len()
                    )));
                }
                for (&p, page) in list.iter().zip(image.chunks_exact(PAGE)) {
                    let at = p as usize * PAGE;
                    let held = &mut self.shadow[at..at + PAGE];
                    // Compared first: the shadow's untouched memory is the kernel's shared
                    // zero page, and the first write to it allocates and zeroes a 2 MiB huge
                    // page. Zero pages written over it cost a third of this receiver's time.
                    if held != page {
                        held.copy_from_slice(page);
                    }
                }
                self.image = image;
                self.stats.rounds += 1;
            }
            wire::SKELETON => {
                if self.pages.is_some() {
                    return Err(container("a page list without its round"));
                }
                self.batch(payload, sink)?;
            }
            wire::END => {
                let source = wire::u64_at(payload, 0)?;
                let batches = wire::u64_at(payload, 8)?;
                self.parser.finish()?;
                if source != self.stats.stream_bytes || batches != self.stats.batches {
                    return Err(container(format!(
                        "the sender read {source} bytes in {batches} batches, {} in {} were rebuilt",
                        self.stats.stream_bytes, self.stats.batches
                    )));
                }
                self.ended = true;
            }
            other => return Err(container(format!("record tag {other:#04x}"))),
        }
        Ok(())
    }

    fn batch(&mut self, payload: &[u8], sink: &mut impl Write) -> Result<()> {
        let len = wire::u32_at(payload, 0)?;
        let expected = wire::u64_at(payload, 4)?;
        if len > wire::MAX_BATCH {
            return Err(container(format!("a batch of {len} bytes")));
        }
        let packed = &payload[12..];
        // The skeleton is at most the batch; zstd writes no more than the capacity given.
        let skeleton = zstd::bulk::decompress(packed, len as usize).map_err(Error::Skeleton)?;
        self.parser.feed(&skeleton);
        self.out.clear();
        while let Some(item) = self.parser.next_item()? {
            match item {
                Item::Setup => {
                    let len = usize::try_from(self.parser.total_pages() * PAGE as u64)
                        .map_err(|_| container("RAM larger than this machine's address space"))?;
                    self.shadow = hde_core::zeroed_image(len)?;
                    self.out.extend_from_slice(self.parser.raw());
                }
                Item::Page { index } => {
                    self.out.extend_from_slice(self.parser.raw());
                    let at = usize::try_from(index).ok().and_then(|i| i.checked_mul(PAGE));
                    let page = at.and_then(|a| self.shadow.get(a..a + PAGE));
                    self.out.extend_from_slice(page.ok_or_else(|| container("a page beyond the RAM"))?);
                }
                Item::Zero { .. } | Item::Framing | Item::PartEnd { .. } | Item::Tail => {
                    self.out.extend_from_slice(self.parser.raw());
                }
            }
        }
        if self.parser.pending() > 0 {
            return Err(container("a batch that ends inside a record"));
        }
        let got = xxhash_rust::xxh3::xxh3_64(&self.out);
        if got != expected || self.out.len() != len as usize {
            return Err(Error::Mismatch { batch: self.stats.batches, got, expected });
        }
        sink.write_all(&self.out).map_err(Error::Output)?;
        self.stats.stream_bytes += self.out.len() as u64;
        self.stats.batches += 1;
        Ok(())
    }
}
