//! Baselines that outlive a process: what a state directory asks of a delta layer.
//!
//! A delta layer that keeps baselines implements these so that its holder (`hde-core`'s
//! `StateDir`) can save them after a round and restore them in the next process, whatever
//! the layer is. The page hierarchy ([`PageDeltaEncoder`](crate::PageDeltaEncoder),
//! [`PageDeltaDecoder`]) implements both; a layer that wraps it forwards them.

use std::time::Duration;

use crate::{BaselineId, BaselineInfo, Image, PageDeltaDecoder, Result};

/// The sending side's baselines, saved as page hashes plus where the bytes are (the sender's
/// input file), so that saving costs no copy of the image.
pub trait SenderBaselines: Send + Sync {
    /// The baseline held for `key`, with its chain length and age (for the keyframe policy).
    fn baseline_info(&self, key: &str) -> Option<BaselineInfo>;

    /// The page hashes of `key`'s baseline, in page order (what
    /// [`restore_hashed`](Self::restore_hashed) takes back).
    fn baseline_hashes(&self, key: &str) -> Option<Vec<u128>>;

    /// Installs `image` as `key`'s baseline `id`, after verifying it against `id`; `chain`
    /// and `since_keyframe` carry the keyframe policy over.
    fn restore_image(
        &self,
        key: &str,
        id: BaselineId,
        image: Image,
        chain: u32,
        since_keyframe: Duration,
    ) -> Result<()>;

    /// Installs `key`'s baseline `id` from its page `hashes` and the `content` that may still
    /// hold its bytes (a file that may have changed since, or is gone): pages whose bytes no
    /// longer match their hash are known by hash alone. Returns how many pages that is.
    #[allow(clippy::too_many_arguments)] // reason: what one saved baseline is.
    fn restore_hashed(
        &self,
        key: &str,
        id: BaselineId,
        len: u64,
        hashes: Vec<u128>,
        content: Option<Image>,
        chain: u32,
        since_keyframe: Duration,
    ) -> Result<usize>;
}

/// The receiving side's baselines, saved as images.
pub trait ReceiverBaselines: Send + Sync {
    /// The identity of the baseline held for `key`.
    fn baseline_id(&self, key: &str) -> Option<BaselineId>;

    /// The image of the baseline held for `key`.
    fn baseline_image(&self, key: &str) -> Option<Image>;

    /// Installs `image` (pages of `page_size`) as `key`'s baseline `id`, after verifying it.
    fn restore_image(&self, key: &str, id: BaselineId, page_size: usize, image: Image) -> Result<()>;
}

impl ReceiverBaselines for PageDeltaDecoder {
    fn baseline_id(&self, key: &str) -> Option<BaselineId> {
        self.baseline(key)
    }
    fn baseline_image(&self, key: &str) -> Option<Image> {
        self.image(key)
    }
    fn restore_image(&self, key: &str, id: BaselineId, page_size: usize, image: Image) -> Result<()> {
        self.restore(key, id, page_size, image)
    }
}
