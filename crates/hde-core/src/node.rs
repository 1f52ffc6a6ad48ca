//! An HDE node: encoder, decoder, metrics and the replicated baseline metadata, in one object.

use std::collections::BTreeMap;
use std::io::{Read, Write};
use std::time::{SystemTime, UNIX_EPOCH};

use hde_codec::CodecSet;
use hde_crdt::{Limits, ORMap, SyncMessage};
use hde_delta::{ClassCounts, DeltaDecoder, DeltaEncoder, EncodeOptions, Image, PageDeltaEncoder};
use hde_selector::{LearningSelector, NetworkMode, Selector};

use crate::frame::FrameHeader;
use crate::index::{BaselineMeta, Candidate, Holding, Sketch};
use crate::ledger::{EncodeRecord, Ledger};
use crate::{CodecBank, Decoder, Encoder, FrameSummary, HdeConfig, Result};

/// The node's counters, as `metrics()` reports them.
#[derive(Debug, Clone, PartialEq, Default)]
pub struct Metrics {
    /// Frames encoded.
    pub frames_encoded: u64,
    /// Frames decoded.
    pub frames_decoded: u64,
    /// Image bytes encoded.
    pub bytes_in: u64,
    /// Frame bytes produced.
    pub bytes_out: u64,
    /// Bytes of the frames decoded and verified.
    pub decoded_frame_bytes: u64,
    /// Bytes of the images they produced.
    pub decoded_image_bytes: u64,
    /// Frame bytes over image bytes, frames encoded and decoded together.
    pub compression_ratio: f64,
    /// `100 * (1 - compression_ratio)`.
    pub bandwidth_saving_percent: f64,
    /// Share of rounds encoded or decoded that were deltas.
    pub delta_hit_rate: f64,
    /// Segments encoded per codec choice of their referenced stream (`zstd-3+ref`).
    pub codec_use: BTreeMap<String, u64>,
    /// Segments decoded per codec of their referenced stream (`zstd+ref`; frames do not
    /// carry levels).
    pub decoded_codec_use: BTreeMap<String, u64>,
    /// Page counts over all encoded rounds, as the delta layer reports them.
    pub pages: ClassCounts,
    /// Baselines held by the encoder, and their memory.
    pub baselines: u64,
    /// Bytes of baseline state held by the encoder.
    pub baseline_memory: u64,
    /// CRDT merges of remote state.
    pub crdt_merges: u64,
    /// Of which merged without concurrent writes to resolve.
    pub crdt_conflict_free: u64,
}

/// The node's health: is it within its limits?
#[derive(Debug, Clone, PartialEq)]
pub struct Health {
    /// Everything within limits.
    pub healthy: bool,
    /// The current network mode.
    pub network_mode: NetworkMode,
    /// Baselines held by the encoder.
    pub baselines: u64,
    /// Their memory, and the limit.
    pub memory_bytes: u64,
    /// `max_memory_usage`.
    pub memory_limit: u64,
    /// What is wrong, if anything.
    pub problems: Vec<String>,
}

fn now_ms() -> u64 {
    SystemTime::now().duration_since(UNIX_EPOCH).map_or(0, |d| u64::try_from(d.as_millis()).unwrap_or(u64::MAX))
}

/// An HDE node: sends rounds of its keys, receives rounds from peers, replicates baseline
/// metadata. Generic over the delta layer, selector and codec bank of its encoder and the
/// delta layer of its decoder, with the defaults as type defaults
/// ([`with_all_layers`](Self::with_all_layers) takes them all). Shared by many threads:
/// different keys at once. Saving baselines between processes
/// ([`state::StateDir`](crate::state::StateDir)) works for delta layers that implement
/// [`SenderBaselines`](hde_delta::SenderBaselines) and
/// [`ReceiverBaselines`](hde_delta::ReceiverBaselines), the defaults among them.
#[derive(Debug)]
pub struct Hde<D = PageDeltaEncoder, S = LearningSelector, B = CodecSet, R = hde_delta::PageDeltaDecoder>
where
    D: DeltaEncoder,
    S: Selector,
    B: CodecBank,
    R: DeltaDecoder,
{
    config: HdeConfig,
    encoder: Encoder<D, S, B>,
    decoder: Decoder<R, B>,
    ledger: Ledger,
}

impl Hde {
    /// A node with the default layers; the configuration is validated first.
    pub fn new(config: HdeConfig) -> Result<Self> {
        config.validate()?;
        let encoder = Encoder::with_layers(
            PageDeltaEncoder::new(config.delta_config())?,
            LearningSelector::new(config.selector_config())
                .map_err(|e| crate::Error::InvalidConfig { what: e.to_string() })?,
            config.threads,
        );
        Hde::assemble(config, encoder)
    }
}

impl<D, S> Hde<D, S>
where
    D: DeltaEncoder,
    S: Selector,
{
    /// A node whose encoder uses the caller's delta layer and selector (its decoder the page
    /// hierarchy's).
    pub fn with_layers(config: HdeConfig, delta: D, selector: S) -> Result<Self> {
        let receiver = hde_delta::PageDeltaDecoder::new(config.delta_config())?;
        Hde::with_all_layers(config, delta, selector, receiver)
    }

    fn assemble(config: HdeConfig, encoder: Encoder<D, S>) -> Result<Self> {
        let receiver = hde_delta::PageDeltaDecoder::new(config.delta_config())?;
        Ok(Hde::from_parts(config, encoder, receiver))
    }
}

impl<D, S, R> Hde<D, S, CodecSet, R>
where
    D: DeltaEncoder,
    S: Selector,
    R: DeltaDecoder,
{
    /// A node of the caller's layers: the encoder's delta layer and selector, and the
    /// decoder's delta layer (which must read the frames the encoder's layer writes to talk
    /// to a node of the same layers); the built-in codecs
    /// ([`with_codecs`](Self::with_codecs) swaps them).
    pub fn with_all_layers(config: HdeConfig, delta: D, selector: S, receiver: R) -> Result<Self> {
        config.validate()?;
        let threads = config.threads;
        Ok(Hde::from_parts(config, Encoder::with_layers(delta, selector, threads), receiver))
    }

    fn from_parts(config: HdeConfig, encoder: Encoder<D, S>, receiver: R) -> Self {
        let decoder = Decoder::with_layers(
            receiver,
            crate::frame::FrameLimits { max_image: config.delta.max_image_size },
            config.threads,
        );
        Hde { config, encoder, decoder, ledger: Ledger::default() }
    }
}

impl<D, S, B, R> Hde<D, S, B, R>
where
    D: DeltaEncoder,
    S: Selector,
    B: CodecBank,
    R: DeltaDecoder,
{
    /// The same node running the codecs of `codecs` on both sides (a [`CodecSet`] with codecs
    /// of the caller's added, or a bank that wraps one). A node it talks to needs a bank that
    /// decodes every codec id this one's selector may choose.
    pub fn with_codecs<C: CodecBank>(self, codecs: C) -> Hde<D, S, C, R> {
        Hde {
            config: self.config,
            encoder: self.encoder.with_codecs(codecs.clone()),
            decoder: self.decoder.with_codecs(codecs),
            ledger: self.ledger,
        }
    }

    /// The sender's delta layer (to save and restore its baselines, or feed it dirty pages).
    pub fn sender(&self) -> &D {
        self.encoder.delta()
    }

    /// The receiver's delta layer (to save and restore its baselines).
    pub fn receiver(&self) -> &R {
        self.decoder.delta()
    }

    /// The configuration.
    pub fn config(&self) -> &HdeConfig {
        &self.config
    }

    /// Encodes `data` as the next round of `key` into a frame.
    pub fn compress(&self, key: &str, data: &[u8]) -> Result<Vec<u8>> {
        let mut out = Vec::new();
        self.compress_to(key, data, &mut out)?;
        Ok(out)
    }

    /// Encodes `data` as the next round of `key`, writing the frame to `out`.
    pub fn compress_to(&self, key: &str, data: &[u8], out: &mut impl Write) -> Result<FrameSummary> {
        self.compress_with(key, data, out, EncodeOptions::default())
    }

    /// [`compress_to`](Self::compress_to) with options: force a keyframe, or send a detached
    /// one-off frame that leaves the key's baseline as it is.
    pub fn compress_with(
        &self,
        key: &str,
        data: &[u8],
        out: &mut impl Write,
        options: EncodeOptions,
    ) -> Result<FrameSummary> {
        let detached = options.detached;
        let (summary, round) = self.compress_pending(key, data, out, options)?;
        if !detached {
            self.commit(&summary, round)?;
        }
        Ok(summary)
    }

    /// Encodes `data` as the next round of `key` into `out` without committing it: the key's
    /// baseline moves only when the returned round is given to [`commit`](Self::commit) (once
    /// the receiver confirmed it). [`Sender`](crate::session::Sender) builds on this.
    pub fn compress_pending<'a>(
        &'a self,
        key: &str,
        data: &'a [u8],
        out: &mut impl Write,
        options: EncodeOptions,
    ) -> Result<(FrameSummary, D::Round<'a>)> {
        self.compress_observed(key, data, out, options, &mut |_| {})
    }

    /// [`compress_pending`](Self::compress_pending) that calls `observe` after each segment
    /// is written.
    pub fn compress_observed<'a>(
        &'a self,
        key: &str,
        data: &'a [u8],
        out: &mut impl Write,
        mut options: EncodeOptions,
        observe: &mut dyn FnMut(&crate::engine::Written),
    ) -> Result<(FrameSummary, D::Round<'a>)> {
        options.force_keyframe |= !self.config.enable_delta;
        let (summary, round) = self.encoder.compress_observed(key, data, out, options, observe)?;
        self.ledger.encoded(&EncodeRecord {
            input_bytes: summary.input_bytes,
            output_bytes: summary.output_bytes,
            pages: &summary.pages,
            codecs: &summary.codecs,
        });
        Ok((summary, round))
    }

    /// Makes a round of [`compress_pending`](Self::compress_pending) the key's baseline, and
    /// records in the replica that this node's peer now holds it.
    pub fn commit(&self, summary: &FrameSummary, round: D::Round<'_>) -> Result<hde_delta::BaselineId> {
        let id = self.encoder.commit(round)?;
        let codec = summary.codecs.iter().max_by_key(|(_, n)| *n).map_or_else(String::new, |(c, _)| c.clone());
        self.record(&summary.header.key, &summary.header.round, codec);
        Ok(id)
    }

    /// Reads the whole image from `input` (once: it is held in memory only once) and encodes
    /// it as the next round of `key`, writing the frame to `output` segment by segment.
    pub fn compress_stream(&self, key: &str, input: &mut impl Read, output: &mut impl Write) -> Result<FrameSummary> {
        let mut image = Vec::new();
        input.read_to_end(&mut image)?;
        self.compress_to(key, &image, output)
    }

    /// Decodes a frame received from a peer; returns its header and the image.
    pub fn decompress(&self, frame: &[u8]) -> Result<(FrameHeader, Image)> {
        let (header, image) = self.decoder.decompress(frame)?;
        self.after_decode(&header);
        Ok((header, image))
    }

    /// Reads one frame from `r` and decodes it.
    pub fn decompress_from(&self, r: &mut impl Read) -> Result<(FrameHeader, Image)> {
        let (header, image) = self.decoder.decompress_from(r)?;
        self.after_decode(&header);
        Ok((header, image))
    }

    /// Decodes the rest of a frame whose header was read already, segment by segment as
    /// they are read from `r` (a network stream: decoding overlaps the transfer).
    pub fn decompress_body(&self, header: &FrameHeader, r: &mut impl Read) -> Result<Image> {
        let image = self.decoder.decompress_body(header, r)?;
        self.after_decode(header);
        Ok(image)
    }

    /// [`decompress_body`](Self::decompress_body) into `file`, keeping no image and no baseline
    /// (see [`decompress_to_file`](Self::decompress_to_file)).
    #[cfg(unix)]
    pub fn decompress_body_to_file(&self, header: &FrameHeader, r: &mut impl Read, file: &std::fs::File) -> Result<()> {
        self.decoder.decompress_body_to_file(header, r, file)?;
        self.ledger.decoded();
        Ok(())
    }

    /// [`decompress_body_to_file`](Self::decompress_body_to_file) into a file that holds an
    /// older image, writing only the blocks that differ ([`Decoder::decompress_body_over_file`]).
    #[cfg(unix)]
    pub fn decompress_body_over_file(
        &self,
        header: &FrameHeader,
        r: &mut impl Read,
        file: &std::fs::File,
    ) -> Result<()> {
        self.decoder.decompress_body_over_file(header, r, file)?;
        self.ledger.decoded();
        Ok(())
    }

    /// Reads one frame from `r` and writes its image into `file`, without keeping the image
    /// or making it a baseline ([`Decoder::decompress_to_file`]); counted as a decoded frame,
    /// not recorded in the replica (this node does not hold the result).
    #[cfg(unix)]
    pub fn decompress_to_file(&self, r: &mut impl Read, file: &std::fs::File) -> Result<FrameHeader> {
        let header = self.decoder.decompress_to_file(r, file)?;
        self.ledger.decoded();
        Ok(header)
    }

    /// Records in the replica that this node holds the baseline `header`'s round produced,
    /// for a frame decoded to a file that became the baseline after all.
    pub(crate) fn record_decoded(&self, header: &FrameHeader) {
        self.record(&header.key, &header.round, String::new());
    }

    fn after_decode(&self, header: &FrameHeader) {
        self.ledger.decoded();
        self.record(&header.key, &header.round, String::new());
    }

    /// Records in the replica that this node now holds the baseline `round` produced.
    fn record(&self, key: &str, round: &hde_delta::RoundHeader, codec: String) {
        let meta = BaselineMeta {
            holder: self.config.node_id,
            seq: round.seq,
            checksum: round.checksum,
            size: round.image_len,
            codec,
            keyframe: round.is_keyframe(),
            time_ms: now_ms(),
            sketch: Sketch::default(),
        };
        self.note_held(key, meta);
    }

    /// Records in the replica that this node holds `meta` of `key` (a baseline found in its
    /// state directory, or one whose sketch was just computed). Nothing is written when the
    /// replica says so already (same baseline, same sketch), so a periodic rescan of the
    /// state costs no replication traffic.
    pub fn note_held(&self, key: &str, mut meta: BaselineMeta) {
        if !self.config.enable_crdt {
            return;
        }
        meta.holder = self.config.node_id;
        let holding = Holding { key: key.to_owned(), node: self.config.node_id };
        self.ledger.record_if_changed(self.config.node_id, holding, meta);
    }

    /// Removes this node's holding of `key` from the replica (the baseline was dropped).
    pub fn forget_held(&self, key: &str) {
        let holding = Holding { key: key.to_owned(), node: self.config.node_id };
        self.ledger.remove(self.config.node_id, &holding);
    }

    /// Switches the network mode; the next frame uses it.
    pub fn update_network_mode(&self, mode: NetworkMode) {
        self.encoder.selector().set_mode(mode);
    }

    /// Sets the link bandwidth used by hybrid mode (bytes/s), e.g. from a measurement.
    pub fn set_bandwidth(&self, bytes_per_second: f64) {
        self.encoder.selector().set_bandwidth(bytes_per_second);
    }

    /// This node's replica of the baseline metadata, encoded for a peer.
    pub fn export_crdt_state(&self) -> Vec<u8> {
        self.ledger.export()
    }

    /// Merges a peer's exported state; a malformed one is an error and changes nothing.
    pub fn merge_remote_crdt(&self, bytes: &[u8]) -> Result<()> {
        let remote: ORMap<Holding, BaselineMeta> = ORMap::from_bytes(bytes, &Limits::default())?;
        self.ledger.merge(&remote);
        Ok(())
    }

    /// The newest record of `key`'s baseline, whichever node holds it.
    pub fn baseline_record(&self, key: &str) -> Option<BaselineMeta> {
        self.ledger.entries().into_iter().filter(|(h, _)| h.key == key).map(|(_, m)| m).max_by_key(|m| m.seq)
    }

    /// Every entry of the replica: who holds which baseline of which key.
    pub fn index_entries(&self) -> Vec<(Holding, BaselineMeta)> {
        self.ledger.entries()
    }

    /// What `node` holds that a sender of `key` could encode an image of sketch `sketch`
    /// against, per this replica: `key`'s own baseline first, then the most similar others.
    pub fn candidates(&self, node: u64, key: &str, sketch: &Sketch) -> Vec<Candidate> {
        let entries = self.ledger.entries();
        crate::index::rank(entries.iter().map(|(h, m)| (h, m)), node, key, sketch)
    }

    /// The first message of an anti-entropy exchange with a peer (its digest's group hashes).
    pub fn index_sync_start(&self) -> Vec<u8> {
        self.ledger.sync_start().to_bytes()
    }

    /// Handles a peer's anti-entropy message: merges what it carries and returns the answer
    /// to send, if the exchange goes on. A malformed message is an error and changes nothing.
    pub fn index_sync_handle(&self, bytes: &[u8]) -> Result<Option<Vec<u8>>> {
        let message = SyncMessage::<Holding, BaselineMeta>::from_bytes(bytes, &Limits::default())?;
        Ok(self.ledger.sync_handle(&message).map(|m| m.to_bytes()))
    }

    /// A hash of the replica's content: equal on two nodes when their replicas agree.
    pub fn index_digest(&self) -> u64 {
        self.ledger.digest()
    }

    /// The node's counters.
    pub fn metrics(&self) -> Metrics {
        let delta = self.encoder.delta().stats();
        let (c, crdt) = self.ledger.snapshot();
        let decoded = self.decoder.counters();
        // Both directions: a node that only receives reports what its senders achieved.
        let (images, frames) = (c.bytes_in + decoded.image_bytes, c.bytes_out + decoded.frame_bytes);
        let ratio = if images == 0 { 0.0 } else { frames as f64 / images as f64 };
        let rounds = delta.rounds + decoded.frames;
        Metrics {
            frames_encoded: c.frames_encoded,
            frames_decoded: c.frames_decoded,
            bytes_in: c.bytes_in,
            bytes_out: c.bytes_out,
            decoded_frame_bytes: decoded.frame_bytes,
            decoded_image_bytes: decoded.image_bytes,
            compression_ratio: ratio,
            bandwidth_saving_percent: if images == 0 { 0.0 } else { 100.0 * (1.0 - ratio) },
            delta_hit_rate: if rounds == 0 { 0.0 } else { (delta.deltas + decoded.deltas) as f64 / rounds as f64 },
            codec_use: c.codec_use,
            decoded_codec_use: decoded.codec_use,
            pages: c.pages,
            baselines: delta.baselines,
            baseline_memory: delta.memory,
            crdt_merges: crdt.merges,
            crdt_conflict_free: crdt.conflict_free,
        }
    }

    /// Whether the node is within its limits.
    pub fn health(&self) -> Health {
        let delta = self.encoder.delta().stats();
        let mut problems = Vec::new();
        if delta.memory > self.config.max_memory_usage {
            problems.push(format!("baseline memory {} over the limit {}", delta.memory, self.config.max_memory_usage));
        }
        if delta.baselines > self.config.max_baselines as u64 {
            problems.push(format!("{} baselines over the limit {}", delta.baselines, self.config.max_baselines));
        }
        Health {
            healthy: problems.is_empty(),
            network_mode: self.encoder.selector().mode(),
            baselines: delta.baselines,
            memory_bytes: delta.memory,
            memory_limit: self.config.max_memory_usage,
            problems,
        }
    }
}
