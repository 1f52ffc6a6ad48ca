//! The receiving side: checks which baseline a round needs and rebuilds the image from it.

use std::collections::HashMap;

use crate::checksum::{combine, page_hash};
use crate::page::{get_varint, run_decode, RunBytes};
use crate::{
    page_stream, par, BaselineId, ClassCounts, DeltaConfig, Error, Image, PageClass, Result, RoundHeader,
    SegmentStreams, StreamSpec, PAGE_LAYOUT,
};
use hde_sync::{lock, Arc, Mutex};

#[derive(Debug, Clone)]
struct Held {
    id: BaselineId,
    page_size: usize,
    data: Image,
}

/// A round whose header was checked against the baseline it needs: the source of the
/// references its literal streams were compressed against.
#[derive(Debug, Clone)]
pub struct PreparedRound {
    header: RoundHeader,
    base: Option<Held>,
}

/// The engine's view of a prepared round.
pub trait Prepared {
    /// The header that was prepared.
    fn header(&self) -> &RoundHeader;
    /// Appends the reference of stream `stream` of segment `segment`, as the encoder built it
    /// ([`Round::reference`](crate::Round::reference)), given the segment's streams the layout
    /// says it needs, already decompressed (later streams are still empty). For the page
    /// hierarchy: the baseline content of the `LiteralRef` pages and of the pages the
    /// `LiteralSimilar` pages name.
    fn reference(&self, segment: usize, stream: usize, streams: &SegmentStreams, out: &mut Vec<u8>) -> Result<()>;
}

impl PreparedRound {
    fn geometry(&self) -> (usize, usize, usize) {
        let ps = self.header.page_size as usize;
        (ps, self.header.segment_size as usize / ps, self.header.image_len as usize)
    }
}

fn page_len(image_len: usize, page_size: usize, page: usize) -> usize {
    image_len.saturating_sub(page * page_size).min(page_size)
}

/// Old page `p` of length `len` from the baseline, or a typed error.
fn old_page(base: Option<&Held>, p: usize, len: usize) -> Result<&[u8]> {
    let base = base.ok_or(Error::Corrupt { reason: "keyframe refers to a baseline page" })?;
    let start = p.checked_mul(base.page_size).ok_or(Error::Corrupt { reason: "page index overflows" })?;
    let end = start.checked_add(len).ok_or(Error::Corrupt { reason: "page index overflows" })?;
    let page = base.data.get(start..end).ok_or(Error::Corrupt { reason: "baseline page out of range" })?;
    // A page shorter in the baseline (its old tail) is not the same page.
    if len < base.page_size && end != base.data.len() {
        return Err(Error::Corrupt { reason: "baseline page length differs" });
    }
    Ok(page)
}

impl Prepared for PreparedRound {
    fn header(&self) -> &RoundHeader {
        &self.header
    }

    fn reference(&self, segment: usize, stream: usize, streams: &SegmentStreams, out: &mut Vec<u8>) -> Result<()> {
        if stream != page_stream::LITERALS {
            return Err(Error::Corrupt { reason: "reference for a stream that has none" });
        }
        let (classes, dups) = (streams.get(page_stream::CLASSES), streams.get(page_stream::DUPS));
        let (ps, per_seg, len) = self.geometry();
        let first = segment.checked_mul(per_seg).ok_or(Error::Corrupt { reason: "segment index overflows" })?;
        let mut at = 0;
        for (i, &code) in classes.iter().enumerate() {
            let p = first + i;
            let plen = page_len(len, ps, p);
            match PageClass::from_u8(code) {
                Some(PageClass::LiteralRef) => out.extend_from_slice(old_page(self.base.as_ref(), p, plen)?),
                Some(PageClass::DupBaseline | PageClass::DupCurrent) => {
                    get_varint(dups, &mut at)?;
                }
                Some(PageClass::LiteralSimilar) => {
                    let q = usize::try_from(get_varint(dups, &mut at)?)
                        .map_err(|_| Error::Corrupt { reason: "page index overflows" })?;
                    out.extend_from_slice(old_page(self.base.as_ref(), q, plen)?);
                }
                // Unknown classes are refused when the segment is applied.
                _ => {}
            }
        }
        Ok(())
    }
}

/// The boundary of the receiving side of the delta layer.
///
/// A round is rebuilt in three steps: `prepare` (check the header against the baseline held),
/// `apply_segment` for every segment (in any order, on any thread, each into its own part of
/// a fresh image), and `finish` (cross-segment work, checksum, install). `apply` does all
/// three from streams already in memory.
pub trait DeltaDecoder: Send + Sync {
    /// What `prepare` returns.
    type Prepared: Prepared + Sync;
    /// What rebuilding one segment leaves for `finish`.
    type Applied: Send;

    /// The streams of every segment, as the encoder of this layer writes them
    /// ([`Round::layout`](crate::Round::layout)): a frame with another count is refused, and
    /// every stream's length is checked against its limit before anything is allocated.
    fn layout(&self) -> &[StreamSpec];

    /// Page counts of a segment's decompressed streams, for reports (`hde inspect`); a layer
    /// that does not describe pages returns zero counts (the default).
    fn counts(&self, streams: &SegmentStreams) -> ClassCounts {
        let _ = streams;
        ClassCounts::default()
    }

    /// Checks `header` (limits, sequence, baseline identity) for `key`; the result lends the
    /// references needed to decompress the round's literal streams.
    fn prepare(&self, key: &str, header: &RoundHeader) -> Result<Self::Prepared>;

    /// [`prepare`](Self::prepare) for a delta of `key` against the baseline held for another
    /// key, `base_key` (a frame that names it). The result, once finished, is `key`'s
    /// baseline; `base_key`'s is left as it is. A decoder that keeps no baselines of other
    /// keys says it lacks the baseline.
    fn prepare_from(&self, key: &str, base_key: &str, header: &RoundHeader) -> Result<Self::Prepared> {
        match header.base {
            Some(want) if base_key != key => Err(Error::MissingBaseline { key: base_key.to_owned(), want }),
            _ => self.prepare(key, header),
        }
    }

    /// Rebuilds segment `segment` from its decompressed streams into `out`: the segment's
    /// bytes of the new image (`segment_size` bytes, fewer for the last segment).
    fn apply_segment(
        &self,
        prepared: &Self::Prepared,
        segment: usize,
        streams: &SegmentStreams,
        out: &mut [u8],
    ) -> Result<Self::Applied>;

    /// Completes `image` (every segment applied, in any order), verifies its checksum and
    /// makes it the key's baseline.
    fn finish(&self, key: &str, prepared: Self::Prepared, image: Vec<u8>, applied: Vec<Self::Applied>)
        -> Result<Image>;

    /// Verifies a round whose segments were rebuilt (by `apply_segment`, each into a buffer
    /// of its own) and stored elsewhere, e.g. written straight into a file, without making it
    /// the key's baseline. Returns the copies still to make between segments (duplicates of
    /// pages in other segments), in an order in which every source is final when copied; the
    /// verified checksum covers their result.
    fn verify_detached(
        &self,
        key: &str,
        prepared: Self::Prepared,
        applied: Vec<Self::Applied>,
    ) -> Result<Vec<PageCopy>>;

    /// Rebuilds the image from the round's decompressed streams, verifies its checksum and
    /// makes it the key's baseline.
    fn apply(&self, key: &str, prepared: Self::Prepared, segments: &[SegmentStreams]) -> Result<Image> {
        let header = *prepared.header();
        if segments.len() as u64 != header.segment_count() {
            return Err(Error::Corrupt { reason: "segment count differs from the header's" });
        }
        let len = usize::try_from(header.image_len).map_err(|_| Error::TooLarge {
            what: "image",
            claimed: header.image_len,
            limit: usize::MAX as u64,
        })?;
        let mut image = crate::try_zeroed(len)?;
        let mut applied = Vec::with_capacity(segments.len());
        for (s, (streams, out)) in
            segments.iter().zip(image.chunks_mut(header.segment_size.max(1) as usize)).enumerate()
        {
            applied.push(self.apply_segment(&prepared, s, streams, out)?);
        }
        self.finish(key, prepared, image, applied)
    }
}

impl<D: DeltaDecoder + ?Sized> DeltaDecoder for Arc<D> {
    type Prepared = D::Prepared;
    type Applied = D::Applied;
    fn layout(&self) -> &[StreamSpec] {
        (**self).layout()
    }
    fn counts(&self, streams: &SegmentStreams) -> ClassCounts {
        (**self).counts(streams)
    }
    fn prepare(&self, key: &str, header: &RoundHeader) -> Result<Self::Prepared> {
        (**self).prepare(key, header)
    }
    fn apply_segment(
        &self,
        prepared: &Self::Prepared,
        segment: usize,
        streams: &SegmentStreams,
        out: &mut [u8],
    ) -> Result<Self::Applied> {
        (**self).apply_segment(prepared, segment, streams, out)
    }
    fn finish(
        &self,
        key: &str,
        prepared: Self::Prepared,
        image: Vec<u8>,
        applied: Vec<Self::Applied>,
    ) -> Result<Image> {
        (**self).finish(key, prepared, image, applied)
    }
    fn verify_detached(
        &self,
        key: &str,
        prepared: Self::Prepared,
        applied: Vec<Self::Applied>,
    ) -> Result<Vec<PageCopy>> {
        (**self).verify_detached(key, prepared, applied)
    }
    fn apply(&self, key: &str, prepared: Self::Prepared, segments: &[SegmentStreams]) -> Result<Image> {
        (**self).apply(key, prepared, segments)
    }
}

/// A copy of `len` bytes from image offset `from` to image offset `to`, left to the caller by
/// [`DeltaDecoder::verify_detached`].
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct PageCopy {
    /// Where the bytes come from (an earlier page of the same image).
    pub from: u64,
    /// Where they go.
    pub to: u64,
    /// How many.
    pub len: usize,
}

/// What rebuilding one segment leaves for [`PageDeltaDecoder`]'s `finish`: its page hashes
/// and its duplicates of pages in earlier segments (copied once every segment is done).
#[derive(Debug)]
pub struct AppliedSegment {
    segment: usize,
    hashes: Vec<u128>,
    deferred: Vec<(usize, usize)>,
}

/// The default decoder: keeps the last image of every key as its baseline.
#[derive(Debug)]
pub struct PageDeltaDecoder {
    config: DeltaConfig,
    store: Mutex<HashMap<String, Held>>,
}

impl PageDeltaDecoder {
    /// A decoder; `config` gives its threads and `max_image_size` (page and segment sizes come
    /// from each round's header, within the same ranges).
    pub fn new(config: DeltaConfig) -> Result<Self> {
        config.validate()?;
        Ok(PageDeltaDecoder { config, store: Mutex::new(HashMap::new()) })
    }

    /// The baseline held for `key`.
    pub fn baseline(&self, key: &str) -> Option<BaselineId> {
        lock(&self.store).get(key).map(|h| h.id)
    }

    /// The image held for `key`.
    pub fn image(&self, key: &str) -> Option<Image> {
        lock(&self.store).get(key).map(|h| h.data.clone())
    }

    /// Installs `image` as `key`'s baseline `id` (restoring saved state, e.g. a mapped file);
    /// it is verified first.
    pub fn restore(&self, key: &str, id: BaselineId, page_size: usize, image: impl Into<Image>) -> Result<()> {
        self.install_baseline(key, Some(id), page_size, image.into()).map(|_| ())
    }

    /// Installs `image` as `key`'s baseline `id` without hashing it again: for an image the
    /// caller has just rebuilt and verified against `id` (a round decoded straight into a
    /// file, then mapped). Anything read from storage goes through [`restore`](Self::restore).
    pub fn install_verified(&self, key: &str, id: BaselineId, page_size: usize, image: impl Into<Image>) -> Result<()> {
        if !page_size.is_power_of_two() || !(512..=65536).contains(&page_size) {
            return Err(Error::InvalidConfig { what: "page_size must be a power of two from 512 to 65536" });
        }
        lock(&self.store).insert(key.to_owned(), Held { id, page_size, data: image.into() });
        Ok(())
    }

    /// Installs `image` as `key`'s baseline with sequence 0 and its own checksum: the
    /// receiving side of [`PageDeltaEncoder::install`](crate::PageDeltaEncoder::install).
    pub fn install(&self, key: &str, page_size: usize, image: impl Into<Image>) -> Result<BaselineId> {
        self.install_baseline(key, None, page_size, image.into())
    }

    fn install_baseline(
        &self,
        key: &str,
        expected: Option<BaselineId>,
        page_size: usize,
        image: Image,
    ) -> Result<BaselineId> {
        if !page_size.is_power_of_two() || !(512..=65536).contains(&page_size) {
            return Err(Error::InvalidConfig { what: "page_size must be a power of two from 512 to 65536" });
        }
        if image.len() as u64 > self.config.max_image_size {
            return Err(Error::TooLarge {
                what: "baseline image",
                claimed: image.len() as u64,
                limit: self.config.max_image_size,
            });
        }
        let actual = combine(&crate::checksum::page_hashes(&image, page_size, self.config.threads));
        let id = match expected {
            Some(id) if id.checksum != actual => {
                return Err(Error::ChecksumMismatch { key: key.to_owned(), expected: id.checksum, actual });
            }
            Some(id) => id,
            None => BaselineId { seq: 0, checksum: actual },
        };
        lock(&self.store).insert(key.to_owned(), Held { id, page_size, data: image });
        Ok(id)
    }

    /// Forgets `key`'s baseline.
    pub fn remove(&self, key: &str) -> bool {
        lock(&self.store).remove(key).is_some()
    }

    fn check_geometry(&self, header: &RoundHeader) -> Result<()> {
        let ps = header.page_size as usize;
        let seg = header.segment_size as usize;
        if !ps.is_power_of_two() || !(512..=65536).contains(&ps) {
            return Err(Error::Corrupt { reason: "page size out of range" });
        }
        if seg == 0 || seg % ps != 0 || seg > 1 << 30 {
            return Err(Error::Corrupt { reason: "segment size out of range" });
        }
        if header.image_len > self.config.max_image_size {
            return Err(Error::TooLarge {
                what: "image",
                claimed: header.image_len,
                limit: self.config.max_image_size,
            });
        }
        if usize::try_from(header.image_len).is_err() {
            return Err(Error::TooLarge { what: "image", claimed: header.image_len, limit: usize::MAX as u64 });
        }
        Ok(())
    }
}

/// Rebuilds one segment into `out`; returns cross-segment duplicates to resolve afterwards.
fn apply_segment(
    prepared: &PreparedRound,
    segment: usize,
    streams: &SegmentStreams,
    out: &mut [u8],
) -> Result<Vec<(usize, usize)>> {
    let (ps, per_seg, len) = prepared.geometry();
    let base = prepared.base.as_ref();
    let first = segment * per_seg;
    let pages = out.len().div_ceil(ps);
    if streams.count() != PAGE_LAYOUT.len() {
        return Err(Error::Corrupt { reason: "stream count differs from the page layout's" });
    }
    let classes = streams.get(page_stream::CLASSES);
    let dups = streams.get(page_stream::DUPS);
    let xor = streams.get(page_stream::XOR);
    let literals = streams.get(page_stream::LITERALS);
    if classes.len() != pages {
        return Err(Error::Corrupt { reason: "class count differs from the segment's pages" });
    }
    let (mut dup_pos, mut xor_pos, mut lit_pos) = (0usize, 0usize, 0usize);
    let mut deferred = Vec::new();
    for (i, &code) in classes.iter().enumerate() {
        let p = first + i;
        let plen = page_len(len, ps, p);
        let at = i * ps;
        let class = PageClass::from_u8(code).ok_or(Error::Corrupt { reason: "unknown page class" })?;
        match class {
            PageClass::Unchanged => {
                let old = old_page(base, p, plen)?;
                out[at..at + plen].copy_from_slice(old);
            }
            PageClass::Zero => out[at..at + plen].fill(0),
            PageClass::DupBaseline => {
                let q = usize::try_from(get_varint(dups, &mut dup_pos)?)
                    .map_err(|_| Error::Corrupt { reason: "page index overflows" })?;
                let old = old_page(base, q, plen)?;
                out[at..at + plen].copy_from_slice(old);
            }
            PageClass::DupCurrent => {
                let q = usize::try_from(get_varint(dups, &mut dup_pos)?)
                    .map_err(|_| Error::Corrupt { reason: "page index overflows" })?;
                if q >= p || page_len(len, ps, q) != plen {
                    return Err(Error::Corrupt {
                        reason: "duplicate of a page that is not earlier or not the same length",
                    });
                }
                if q >= first {
                    let from = (q - first) * ps;
                    out.copy_within(from..from + plen, at);
                } else {
                    deferred.push((p, q));
                }
            }
            PageClass::Xor | PageClass::Patch => {
                let old = old_page(base, p, plen)?;
                let dst = &mut out[at..at + plen];
                dst.copy_from_slice(old);
                let how = if class == PageClass::Xor { RunBytes::Xor } else { RunBytes::New };
                run_decode(xor, &mut xor_pos, how, dst)?;
            }
            PageClass::Literal | PageClass::LiteralRef | PageClass::LiteralSimilar => {
                if class == PageClass::LiteralRef {
                    old_page(base, p, plen)?;
                }
                if class == PageClass::LiteralSimilar {
                    // Checked by `reference` already; the index is consumed here in order.
                    let q = usize::try_from(get_varint(dups, &mut dup_pos)?)
                        .map_err(|_| Error::Corrupt { reason: "page index overflows" })?;
                    old_page(base, q, plen)?;
                }
                let src = literals
                    .get(lit_pos..lit_pos + plen)
                    .ok_or(Error::Corrupt { reason: "literal stream shorter than its pages" })?;
                out[at..at + plen].copy_from_slice(src);
                lit_pos += plen;
            }
        }
    }
    if dup_pos != dups.len() || xor_pos != xor.len() || lit_pos != literals.len() {
        return Err(Error::Corrupt { reason: "stream longer than its pages need" });
    }
    Ok(deferred)
}

/// Checks that `applied` covers every segment of `header` once, and that the image they make,
/// with their cross-segment duplicates copied, has the header's checksum; returns those copies,
/// in page order (every source is an earlier, final page: duplicates point to first
/// occurrences, which are never duplicates themselves).
fn verify(key: &str, header: &RoundHeader, applied: &mut [AppliedSegment]) -> Result<Vec<PageCopy>> {
    applied.sort_unstable_by_key(|a| a.segment);
    let complete =
        applied.len() as u64 == header.segment_count() && applied.iter().enumerate().all(|(i, a)| a.segment == i);
    if !complete {
        return Err(Error::Corrupt { reason: "segments missing, repeated, or of another image" });
    }
    let ps = header.page_size as usize;
    let len = usize::try_from(header.image_len).map_err(|_| Error::OutOfMemory { bytes: header.image_len })?;
    let mut hashes = Vec::with_capacity(len.div_ceil(ps));
    let mut deferred = Vec::new();
    for a in applied.iter_mut() {
        hashes.append(&mut a.hashes);
        deferred.append(&mut a.deferred);
    }
    if hashes.len() != len.div_ceil(ps) {
        return Err(Error::Corrupt { reason: "segments missing, repeated, or of another image" });
    }
    deferred.sort_unstable();
    let mut copies = Vec::with_capacity(deferred.len());
    for (p, q) in deferred {
        // A copy has its source's hash.
        hashes[p] = hashes[q];
        copies.push(PageCopy { from: (q * ps) as u64, to: (p * ps) as u64, len: page_len(len, ps, p) });
    }
    let actual = combine(&hashes);
    if actual != header.checksum {
        return Err(Error::ChecksumMismatch { key: key.to_owned(), expected: header.checksum, actual });
    }
    Ok(copies)
}

impl DeltaDecoder for PageDeltaDecoder {
    type Prepared = PreparedRound;
    type Applied = AppliedSegment;

    fn layout(&self) -> &[StreamSpec] {
        &PAGE_LAYOUT
    }

    fn counts(&self, streams: &SegmentStreams) -> ClassCounts {
        let mut counts = ClassCounts::default();
        for class in streams.get(page_stream::CLASSES).iter().filter_map(|&c| PageClass::from_u8(c)) {
            counts.count(class);
        }
        counts
    }

    fn prepare(&self, key: &str, header: &RoundHeader) -> Result<PreparedRound> {
        self.prepare_from(key, key, header)
    }

    fn prepare_from(&self, key: &str, base_key: &str, header: &RoundHeader) -> Result<PreparedRound> {
        self.check_geometry(header)?;
        let store = lock(&self.store);
        if let Some(h) = store.get(key) {
            if header.seq <= h.id.seq {
                return Err(Error::StaleSequence { key: key.to_owned(), have: h.id.seq, got: header.seq });
            }
        }
        let held = store.get(base_key);
        let base = match header.base {
            None => None,
            Some(want) => match held {
                None => return Err(Error::MissingBaseline { key: base_key.to_owned(), want }),
                Some(h) if h.id != want => {
                    return Err(Error::BaselineMismatch { key: base_key.to_owned(), have: h.id, want });
                }
                Some(h) if h.page_size != header.page_size as usize => {
                    return Err(Error::Corrupt { reason: "delta page size differs from its baseline's" });
                }
                Some(h) => Some(h.clone()),
            },
        };
        Ok(PreparedRound { header: *header, base })
    }

    fn apply_segment(
        &self,
        prepared: &PreparedRound,
        segment: usize,
        streams: &SegmentStreams,
        out: &mut [u8],
    ) -> Result<AppliedSegment> {
        let header = &prepared.header;
        let seg_size = header.segment_size as u64;
        let start = (segment as u64).checked_mul(seg_size).filter(|&s| s < header.image_len.max(1));
        let expected = start.map(|s| header.image_len.saturating_sub(s).min(seg_size));
        if expected != Some(out.len() as u64) || (header.image_len == 0 && segment > 0) {
            return Err(Error::Corrupt { reason: "segment index or length outside the image" });
        }
        let deferred = apply_segment(prepared, segment, streams, out)?;
        let ps = header.page_size as usize;
        let hashes = out.chunks(ps).map(page_hash).collect();
        Ok(AppliedSegment { segment, hashes, deferred })
    }

    fn finish(
        &self,
        key: &str,
        prepared: PreparedRound,
        mut image: Vec<u8>,
        mut applied: Vec<AppliedSegment>,
    ) -> Result<Image> {
        let header = prepared.header;
        if image.len() as u64 != header.image_len {
            return Err(Error::Corrupt { reason: "segments missing, repeated, or of another image" });
        }
        for copy in verify(key, &header, &mut applied)? {
            let (from, to) = (copy.from as usize, copy.to as usize);
            image.copy_within(from..from + copy.len, to);
        }
        let ps = header.page_size as usize;
        let data = Image::from(image);
        let mut store = lock(&self.store);
        let current = store.get(key).map(|h| h.id);
        if current != prepared.base.as_ref().map(|b| b.id) && current.is_some_and(|c| c.seq >= header.seq) {
            return Err(Error::StaleSequence {
                key: key.to_owned(),
                have: current.map_or(0, |c| c.seq),
                got: header.seq,
            });
        }
        store.insert(key.to_owned(), Held { id: header.produces(), page_size: ps, data: data.clone() });
        Ok(data)
    }

    fn verify_detached(
        &self,
        key: &str,
        prepared: PreparedRound,
        mut applied: Vec<AppliedSegment>,
    ) -> Result<Vec<PageCopy>> {
        verify(key, &prepared.header, &mut applied)
    }

    fn apply(&self, key: &str, prepared: PreparedRound, segments: &[SegmentStreams]) -> Result<Image> {
        let header = prepared.header;
        if segments.len() as u64 != header.segment_count() {
            return Err(Error::Corrupt { reason: "segment count differs from the header's" });
        }
        // Bounded by max_image_size in prepare; zeroed memory is lazily mapped, so zero pages
        // cost nothing.
        let len = usize::try_from(header.image_len).map_err(|_| Error::OutOfMemory { bytes: header.image_len })?;
        let mut image = crate::try_zeroed(len)?;
        let chunks: Vec<&mut [u8]> = image.chunks_mut(header.segment_size as usize).collect();
        let applied =
            par::map_each(self.config.threads, chunks, |s, out| self.apply_segment(&prepared, s, &segments[s], out))
                .into_iter()
                .collect::<Result<Vec<_>>>()?;
        self.finish(key, prepared, image, applied)
    }
}
