//! The replicated baseline index: which node holds which baseline of which key, and a sketch
//! of each baseline's pages to find the most similar one.
//!
//! Every node keeps a replica (an [`ORMap`](hde_crdt::ORMap) of [`Holding`] to
//! [`BaselineMeta`]) and writes only its own holdings; replicas meet by digest anti-entropy
//! (`hde_crdt`'s four-message sync), carried by `hde-net`. A sender asks the index of the node
//! it sends to what that node holds ([`Hde::candidates`](crate::Hde::candidates)): the key's own
//! older baseline (return migration, standby replication) or, for a key the node never held,
//! the baselines most like the new image (VMs booted from one image share kernel, library
//! and page-cache pages). What the index says is a hint: a frame names the exact baseline it
//! applies to, and a receiver that no longer holds it refuses the frame, after which the
//! sender sends a keyframe.

use serde::{Deserialize, Serialize};
use xxhash_rust::xxh3::xxh3_128;

/// A replica of the index.
pub type Index = hde_crdt::ORMap<Holding, BaselineMeta>;

/// A hash of a replica's content (of its digest's group hashes): equal for replicas that
/// agree.
pub fn digest(index: &Index) -> u64 {
    let digest = index.digest();
    let bytes: Vec<u8> = digest.groups().iter().flat_map(|g| g.to_le_bytes()).collect();
    xxhash_rust::xxh3::xxh3_64(&bytes)
}

/// An index entry's key: a node's holding of a key (VM).
#[derive(Debug, Clone, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize)]
pub struct Holding {
    /// The key (VM).
    pub key: String,
    /// The node that holds a baseline of it.
    pub node: u64,
}

/// Values of a [`Sketch`].
pub const SKETCH_LEN: usize = 32;

/// A bottom-k sketch of an image's non-zero pages: the [`SKETCH_LEN`] smallest distinct page
/// hashes (low 64 bits of the xxh3-128 every layer uses), and the number of non-zero pages.
/// Two sketches estimate how many pages two images share (Broder's resemblance), in 264
/// bytes whatever the images' size.
#[derive(Debug, Clone, PartialEq, Eq, Default, Serialize, Deserialize)]
pub struct Sketch {
    /// Non-zero pages of the image.
    pub live_pages: u64,
    /// The smallest distinct page hashes, ascending.
    pub mins: Vec<u64>,
}

impl Sketch {
    /// The sketch of an image from its page hashes (0 for a zero page).
    pub fn of_hashes(hashes: &[u128]) -> Self {
        let mut mins: Vec<u64> = Vec::with_capacity(SKETCH_LEN + 1);
        let mut live = 0;
        for &h in hashes {
            if h == 0 {
                continue;
            }
            live += 1;
            insert_min(&mut mins, h as u64);
        }
        Sketch { live_pages: live, mins }
    }

    /// The sketch of `image` cut in pages of `page_size`, hashing every page on `threads`.
    pub fn of_image(image: &[u8], page_size: usize, threads: usize) -> Self {
        Self::of_sparse_image(image, None, page_size, threads)
    }

    /// [`of_image`](Self::of_image) for an image whose `known_zero` parts are not read (a
    /// sparse file's holes).
    pub fn of_sparse_image(
        image: &[u8],
        known_zero: Option<&hde_delta::ZeroRanges>,
        page_size: usize,
        threads: usize,
    ) -> Self {
        let page_size = page_size.max(1);
        let pages = image.len().div_ceil(page_size);
        let threads = threads.clamp(1, 16);
        let per = pages.div_ceil(threads).max(1);
        let parts: Vec<Sketch> = std::thread::scope(|scope| {
            let handles: Vec<_> = (0..threads)
                .map(|t| {
                    let first = (t * per).min(pages);
                    let last = ((t + 1) * per).min(pages);
                    scope.spawn(move || {
                        let hashes: Vec<u128> = (first..last)
                            .map(|p| {
                                let end = ((p + 1) * page_size).min(image.len());
                                if known_zero.is_some_and(|z| z.covers((p * page_size) as u64..end as u64)) {
                                    return 0;
                                }
                                let page = &image[p * page_size..end];
                                if hde_delta::is_zero(page) {
                                    0
                                } else {
                                    xxh3_128(page)
                                }
                            })
                            .collect();
                        Sketch::of_hashes(&hashes)
                    })
                })
                .collect();
            handles.into_iter().filter_map(|h| h.join().ok()).collect()
        });
        let mut all = Sketch::default();
        for part in parts {
            all.live_pages += part.live_pages;
            for v in part.mins {
                insert_min(&mut all.mins, v);
            }
        }
        all
    }

    /// Estimated resemblance (Jaccard similarity of the two sets of pages), 0 to 1.
    pub fn resemblance(&self, other: &Sketch) -> f64 {
        // The k smallest of the union, and how many of them both hold.
        let mut union: Vec<u64> = self.mins.iter().chain(&other.mins).copied().collect();
        union.sort_unstable();
        union.dedup();
        union.truncate(SKETCH_LEN);
        if union.is_empty() {
            return 0.0;
        }
        let both = union.iter().filter(|v| self.mins.binary_search(v).is_ok() && other.mins.binary_search(v).is_ok());
        both.count() as f64 / union.len() as f64
    }

    /// Estimated pages the two images have in common: `J / (1 + J) * (|A| + |B|)`.
    pub fn shared_pages(&self, other: &Sketch) -> u64 {
        let j = self.resemblance(other);
        (j / (1.0 + j) * (self.live_pages + other.live_pages) as f64) as u64
    }

    /// Whether the sketch is well formed (sorted, distinct, not too long): a peer's is checked
    /// before use.
    pub fn is_valid(&self) -> bool {
        self.mins.len() <= SKETCH_LEN && self.mins.windows(2).all(|w| w[0] < w[1])
    }
}

fn insert_min(mins: &mut Vec<u64>, v: u64) {
    if mins.len() == SKETCH_LEN && mins.last().is_some_and(|&m| v >= m) {
        return;
    }
    if let Err(at) = mins.binary_search(&v) {
        mins.insert(at, v);
        mins.truncate(SKETCH_LEN);
    }
}

/// What the cluster knows about one node's baseline of one key.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct BaselineMeta {
    /// The node that holds it (the [`Holding`]'s node).
    pub holder: u64,
    /// Sequence of the round that produced it.
    pub seq: u64,
    /// Image checksum.
    pub checksum: u64,
    /// Image size in bytes.
    pub size: u64,
    /// The codecs of the frame's referenced streams (`zstd-3+ref`, ...), most used first.
    pub codec: String,
    /// Whether that frame was a keyframe.
    pub keyframe: bool,
    /// When the holder recorded it, ms since the Unix epoch.
    pub time_ms: u64,
    /// Its pages' sketch (empty where the holder did not compute one).
    pub sketch: Sketch,
}

impl BaselineMeta {
    /// The baseline's identity.
    pub fn id(&self) -> hde_delta::BaselineId {
        hde_delta::BaselineId { seq: self.seq, checksum: self.checksum }
    }
}

/// A baseline a node holds that a sender could encode against.
#[derive(Debug, Clone, PartialEq)]
pub struct Candidate {
    /// The key it belongs to (the sent key itself, or another).
    pub key: String,
    /// Its identity.
    pub id: hde_delta::BaselineId,
    /// Its size.
    pub size: u64,
    /// Estimated resemblance to the image to send (1 for the key's own baseline).
    pub resemblance: f64,
    /// Estimated pages in common with the image to send.
    pub shared_pages: u64,
}

/// The most candidates [`rank`] returns.
pub const MAX_CANDIDATES: usize = 8;

/// The baselines `node` holds, per `entries`, that a sender of `key` with an image of sketch
/// `sketch` could use: `key`'s own first, then the others that share pages with the image,
/// most shared first (at most [`MAX_CANDIDATES`]).
pub fn rank<'a>(
    entries: impl Iterator<Item = (&'a Holding, &'a BaselineMeta)>,
    node: u64,
    key: &str,
    sketch: &Sketch,
) -> Vec<Candidate> {
    let mut own = None;
    let mut others = Vec::new();
    for (h, meta) in entries.filter(|(h, m)| h.node == node && m.sketch.is_valid()) {
        if h.key == key {
            own = Some(Candidate {
                key: h.key.clone(),
                id: meta.id(),
                size: meta.size,
                resemblance: 1.0,
                shared_pages: sketch.live_pages,
            });
            continue;
        }
        let shared = sketch.shared_pages(&meta.sketch);
        if shared > 0 {
            others.push(Candidate {
                key: h.key.clone(),
                id: meta.id(),
                size: meta.size,
                resemblance: sketch.resemblance(&meta.sketch),
                shared_pages: shared,
            });
        }
    }
    others.sort_by(|a, b| b.shared_pages.cmp(&a.shared_pages).then_with(|| a.key.cmp(&b.key)));
    own.into_iter().chain(others).take(MAX_CANDIDATES).collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    fn hashes(range: std::ops::Range<u64>) -> Vec<u128> {
        range.map(|i| xxh3_128(&i.to_le_bytes())).collect()
    }

    #[test]
    fn resemblance_estimates_shared_pages() {
        let a = Sketch::of_hashes(&hashes(0..10_000));
        let b = Sketch::of_hashes(&hashes(5_000..15_000));
        let c = Sketch::of_hashes(&hashes(20_000..30_000));
        assert_eq!(a.resemblance(&a), 1.0);
        assert_eq!(a.resemblance(&c), 0.0);
        // True Jaccard 1/3; a 32-value sketch is within a few tenths.
        let j = a.resemblance(&b);
        assert!((0.1..0.6).contains(&j), "{j}");
        assert!(a.is_valid() && a.mins.len() == SKETCH_LEN && a.live_pages == 10_000);
    }

    #[test]
    fn image_and_hash_sketches_agree() {
        let mut image = vec![0u8; 64 * 4096];
        for (i, b) in image.iter_mut().enumerate().skip(4096) {
            *b = (i / 4096) as u8;
        }
        let hashes: Vec<u128> =
            image.chunks(4096).map(|p| if p.iter().all(|&b| b == 0) { 0 } else { xxh3_128(p) }).collect();
        assert_eq!(Sketch::of_image(&image, 4096, 3), Sketch::of_hashes(&hashes));
        assert_eq!(Sketch::of_hashes(&hashes).live_pages, 63);
    }

    #[test]
    fn rank_puts_the_key_first_then_the_most_similar() {
        let meta = |seq, sketch: Sketch| BaselineMeta {
            holder: 2,
            seq,
            checksum: seq,
            size: 1,
            codec: String::new(),
            keyframe: true,
            time_ms: 0,
            sketch,
        };
        let image = Sketch::of_hashes(&hashes(0..1000));
        let entries = [
            (Holding { key: "far".into(), node: 2 }, meta(1, Sketch::of_hashes(&hashes(900..1900)))),
            (Holding { key: "near".into(), node: 2 }, meta(2, Sketch::of_hashes(&hashes(100..1100)))),
            (Holding { key: "none".into(), node: 2 }, meta(3, Sketch::of_hashes(&hashes(5000..6000)))),
            (Holding { key: "vm".into(), node: 2 }, meta(4, Sketch::default())),
            (Holding { key: "near".into(), node: 3 }, meta(5, image.clone())),
        ];
        let ranked = rank(entries.iter().map(|(h, m)| (h, m)), 2, "vm", &image);
        let keys: Vec<&str> = ranked.iter().map(|c| c.key.as_str()).collect();
        assert_eq!(keys[..2], ["vm", "near"]);
        assert!(!keys.contains(&"none"));
    }
}
