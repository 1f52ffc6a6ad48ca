//! Sender and receiver sessions: the protocol of moving a key's rounds, without a transport.
//!
//! A [`Sender`] turns images into frames and consumes the receiver's [`Reply`] to each; a
//! [`Receiver`] consumes frames, keeps baselines (in memory, and in a [`StateDir`] if given)
//! and produces the replies. The rules they implement (design brief §4, §9):
//!
//! * A sender's baseline for a key advances only when the receiver confirmed the frame
//!   ([`Reply::Applied`] naming the baseline the frame produces). A frame lost in flight, or
//!   refused, leaves the sender's baseline as it was.
//! * A refusal for want of the right baseline (missing, mismatched, stale, damaged) makes the
//!   sender's next round of that key a keyframe, by itself.
//! * A receiver applies a frame only if it verifies; the frame it applied last, received again
//!   (a resend after a lost reply), is a retry and is confirmed again without decoding.
//! * A receiver persists a round only when the caller says the round's image is where it
//!   belongs ([`Receiver::finish`]): a failure before that leaves the state on disk as it was.
//!
//! Nothing here does I/O of its own besides the state directory: the file commands of the
//! `hde` binary and the network transport drive the same types.

use std::collections::{HashMap, HashSet};
use std::io::{Read, Write};

use hde_delta::{BaselineId, DeltaEncoder, EncodeOptions, Image, PageDeltaEncoder};
use hde_selector::{LearningSelector, Selector};

use crate::frame::{self, FrameHeader, FrameLimits};
use crate::state::StateDir;
use crate::{CodecBank, Error, FrameSummary, Hde, Result};
use hde_sync::{lock, Mutex};

/// Why a receiver refused a frame.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
#[non_exhaustive]
pub enum Refusal {
    /// A delta for a key the receiver holds no baseline of.
    MissingBaseline,
    /// A delta against another baseline than the one held (a frame was missed).
    BaselineMismatch,
    /// A frame older than the baseline held.
    Stale,
    /// The frame is damaged, or what it rebuilt does not verify.
    Corrupt,
    /// The frame claims more than the receiver accepts.
    OverLimit,
    /// The receiver failed for a reason of its own (its disk, its memory).
    Failed,
}

impl Refusal {
    /// The refusal a receiver replies for `err`.
    pub fn of(err: &Error) -> Self {
        use hde_delta::Error as D;
        match err {
            Error::Delta(D::MissingBaseline { .. }) => Refusal::MissingBaseline,
            Error::Delta(D::BaselineMismatch { .. }) => Refusal::BaselineMismatch,
            Error::Delta(D::StaleSequence { .. }) => Refusal::Stale,
            Error::Delta(D::TooLarge { .. } | D::OutOfMemory { .. }) | Error::LimitExceeded { .. } => {
                Refusal::OverLimit
            }
            Error::Delta(D::ChecksumMismatch { .. } | D::Corrupt { .. })
            | Error::NotAFrame { .. }
            | Error::EmptyInput
            | Error::CorruptFrame { .. }
            | Error::DamagedState { .. }
            | Error::ChecksumMismatch { .. }
            | Error::Codec(_) => Refusal::Corrupt,
            _ => Refusal::Failed,
        }
    }

    /// Whether the sender's next round of the key must be a keyframe.
    pub fn needs_keyframe(self) -> bool {
        matches!(self, Refusal::MissingBaseline | Refusal::BaselineMismatch | Refusal::Stale | Refusal::Corrupt)
    }

    /// A short name, for metrics and messages.
    pub fn name(self) -> &'static str {
        match self {
            Refusal::MissingBaseline => "missing_baseline",
            Refusal::BaselineMismatch => "baseline_mismatch",
            Refusal::Stale => "stale",
            Refusal::Corrupt => "corrupt",
            Refusal::OverLimit => "over_limit",
            Refusal::Failed => "failed",
        }
    }
}

/// A receiver's answer to one frame.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Reply {
    /// The frame was applied (or had been: a retry); the receiver now holds `holds`.
    Applied {
        /// The key.
        key: String,
        /// The baseline the receiver holds now.
        holds: BaselineId,
    },
    /// The frame was not applied; the receiver's state is as it was.
    Refused {
        /// The key.
        key: String,
        /// Why.
        reason: Refusal,
        /// The baseline the receiver holds for the key, if any.
        holds: Option<BaselineId>,
        /// The receiver's error, for people.
        message: String,
    },
}

impl Reply {
    /// The key the reply is about.
    pub fn key(&self) -> &str {
        match self {
            Reply::Applied { key, .. } | Reply::Refused { key, .. } => key,
        }
    }
}

/// What the sender learned from a reply.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Confirmed {
    /// The receiver holds the round; it is the sender's baseline now.
    Committed(BaselineId),
    /// The receiver refused the round; the sender's baseline is as it was, and the next round
    /// of the key is a keyframe where the reason calls for one.
    Refused {
        /// Why.
        reason: Refusal,
        /// The receiver's message.
        message: String,
    },
}

/// A round written to the transport and not yet confirmed. Holds the image borrowed until it
/// is confirmed or dropped (dropped: as if the frame was lost).
#[derive(Debug)]
pub struct InFlight<'a, D: DeltaEncoder + 'a = PageDeltaEncoder> {
    summary: FrameSummary,
    round: D::Round<'a>,
}

impl<D: DeltaEncoder> InFlight<'_, D> {
    /// What was written.
    pub fn summary(&self) -> &FrameSummary {
        &self.summary
    }

    /// The baseline the receiver holds once it applied this frame.
    pub fn produces(&self) -> BaselineId {
        self.summary.header.round.produces()
    }
}

/// The sending side of a session: one per node, shared by all its keys.
#[derive(Debug)]
pub struct Sender<'h, D = PageDeltaEncoder, S = LearningSelector, B = crate::codec::CodecSet>
where
    D: DeltaEncoder,
    S: Selector,
    B: CodecBank,
{
    hde: &'h Hde<D, S, B>,
    /// Keys whose next round must be a keyframe (the receiver refused the last one).
    resync: Mutex<HashSet<String>>,
}

impl<'h, D: DeltaEncoder, S: Selector, B: CodecBank> Sender<'h, D, S, B> {
    /// A sender over `hde`'s encoder and baselines.
    pub fn new(hde: &'h Hde<D, S, B>) -> Self {
        Sender { hde, resync: Mutex::new(HashSet::new()) }
    }

    /// Whether the next round of `key` will be a keyframe because the receiver asked for one.
    pub fn needs_keyframe(&self, key: &str) -> bool {
        lock(&self.resync).contains(key)
    }

    /// Encodes `image` as the next round of `key` into `out`: a delta against the last round
    /// the receiver confirmed, or a keyframe (when `keyframe` is set, when there is no
    /// baseline, when the refresh policy says so, or when the receiver asked for one).
    pub fn encode<'a>(
        &'a self,
        key: &str,
        image: &'a [u8],
        out: &mut impl Write,
        keyframe: bool,
    ) -> Result<InFlight<'a, D>> {
        self.encode_with(key, image, out, EncodeOptions { force_keyframe: keyframe, ..EncodeOptions::default() })
    }

    /// [`encode`](Self::encode) with the delta layer's options (e.g.
    /// [`EncodeOptions::hashes_only`] for the last round of a process that saves its baseline
    /// with [`StateDir::save_sender`](crate::state::StateDir::save_sender)). A keyframe the
    /// receiver asked for is forced whatever `options` say; `detached` is not for sessions.
    pub fn encode_with<'a>(
        &'a self,
        key: &str,
        image: &'a [u8],
        out: &mut impl Write,
        options: EncodeOptions,
    ) -> Result<InFlight<'a, D>> {
        self.encode_observed(key, image, out, options, &mut |_| {})
    }

    /// [`encode_with`](Self::encode_with) that calls `observe` after each segment is written
    /// (a progress display's hook).
    pub fn encode_observed<'a>(
        &'a self,
        key: &str,
        image: &'a [u8],
        out: &mut impl Write,
        options: EncodeOptions,
        observe: &mut dyn FnMut(&crate::engine::Written),
    ) -> Result<InFlight<'a, D>> {
        let force_keyframe = options.force_keyframe || self.needs_keyframe(key);
        let options = EncodeOptions { force_keyframe, detached: false, ..options };
        let (summary, round) = self.hde.compress_observed(key, image, out, options, observe)?;
        Ok(InFlight { summary, round })
    }

    /// Takes the receiver's reply to `flight`: commits the round if it was applied.
    ///
    /// A reply that names another key or another baseline than the frame produces is a
    /// protocol error ([`Error::UnexpectedReply`]); the round is not committed and the next
    /// one is a keyframe.
    pub fn confirm(&self, flight: InFlight<'_, D>, reply: &Reply) -> Result<Confirmed> {
        let key = flight.summary.header.key.clone();
        let produces = flight.produces();
        match reply {
            Reply::Applied { key: k, holds } if *k == key && *holds == produces => {
                let id = self.hde.commit(&flight.summary, flight.round)?;
                lock(&self.resync).remove(&key);
                Ok(Confirmed::Committed(id))
            }
            Reply::Refused { key: k, reason, message, .. } if *k == key => {
                if reason.needs_keyframe() {
                    lock(&self.resync).insert(key);
                }
                Ok(Confirmed::Refused { reason: *reason, message: message.clone() })
            }
            other => {
                lock(&self.resync).insert(key.clone());
                Err(Error::UnexpectedReply {
                    expected: format!("key {key:?} applied at {produces}"),
                    got: format!("{other:?}"),
                })
            }
        }
    }

    /// Commits `flight` without a reply: for a transport whose delivery is the confirmation
    /// (a frame file written durably, which the receiver will read).
    pub fn delivered(&self, flight: InFlight<'_, D>) -> Result<BaselineId> {
        let key = flight.summary.header.key.clone();
        let id = self.hde.commit(&flight.summary, flight.round)?;
        lock(&self.resync).remove(&key);
        Ok(id)
    }
}

/// Where a sender's first round of a key starts, given what the receiver holds.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Base {
    /// The key's own baseline, which both sides hold.
    Own(BaselineId),
    /// Another key's baseline, which both sides hold: the first round is a delta against it.
    Other {
        /// That key.
        key: String,
        /// Its baseline.
        id: BaselineId,
    },
    /// Nothing in common known: the sender starts from what it has (a keyframe if nothing).
    None,
}

/// The fewest pages in common, by the index's estimate, for another key's baseline to be used.
const MIN_SHARED_PAGES: u64 = 16;

impl Sender<'_> {
    /// Chooses what the first round of `key` is encoded against, from what the receiver holds
    /// (`offers`, its index's [`candidates`](crate::Hde::candidates): the key's own baseline
    /// first, then the most similar others) and what this sender holds, in memory or saved in
    /// `state` on either side (a VM that returns to a node it left is sent against the round
    /// that node sent or received last). Another key's baseline is taken
    /// ([`fork`](hde_delta::PageDeltaEncoder::fork)) only where the index estimates shared
    /// pages. Nothing here is trusted: the frame names the baseline, and a receiver that no
    /// longer holds it refuses the round, after which the next one is a keyframe.
    pub fn adopt(&self, key: &str, offers: &[crate::index::Candidate], state: Option<&StateDir>) -> Base {
        let holds = |k: &str, id: BaselineId| {
            self.hde.sender().baseline(k) == Some(id)
                || state.is_some_and(|dir| dir.restore_sender_from(self.hde, k, id).unwrap_or(false))
        };
        if let Some(own) = offers.iter().find(|c| c.key == key) {
            if holds(key, own.id) {
                lock(&self.resync).remove(key);
                return Base::Own(own.id);
            }
        }
        for c in offers.iter().filter(|c| c.key != key && c.shared_pages >= MIN_SHARED_PAGES) {
            if holds(&c.key, c.id) && self.hde.sender().fork(&c.key, key).is_some() {
                lock(&self.resync).remove(key);
                return Base::Other { key: c.key.clone(), id: c.id };
            }
        }
        Base::None
    }
}

/// A frame the receiver applied (not yet persisted: see [`Receiver::finish`]).
#[derive(Debug)]
pub struct Received {
    /// The frame's header.
    pub header: FrameHeader,
    /// The image the frame produced; also the key's baseline now.
    pub image: Image,
    /// The frame had been applied before (a resend): nothing was decoded.
    pub retry: bool,
    /// Rounds of the key this receiver holds, this one included (counted from the state
    /// directory's count; 0 if unknown).
    pub rounds: u64,
}

/// Where [`Receiver::receive_stream`] puts the last image of a stream.
#[derive(Debug, Clone, Copy)]
pub enum StreamOutput<'f> {
    /// In memory: [`ReceivedStream::image`].
    Memory,
    /// Into this fresh regular file, segment by segment as decoded (zero blocks as holes).
    #[cfg(unix)]
    File(&'f std::fs::File),
}

/// A stream of frames applied by [`Receiver::receive_stream`], not yet persisted.
#[derive(Debug)]
pub struct ReceivedStream {
    /// The last frame's image, where the output was [`StreamOutput::Memory`].
    pub image: Option<Image>,
    /// Whether the last image went into the output file.
    pub written: bool,
    /// The last frame applied of each key, in the order they were applied.
    applied: Vec<Received>,
}

impl ReceivedStream {
    /// The frames to persist: the last applied of each key.
    pub fn applied(&self) -> &[Received] {
        &self.applied
    }
}

/// A frame of a stream that was not applied, and what the receiver held of its key.
#[derive(Debug, thiserror::Error)]
#[error("frame {index} of the stream was not applied")]
pub struct StreamError {
    /// The frame's position in the stream.
    pub index: usize,
    /// Its key, if its header was read.
    pub key: Option<String>,
    /// Rounds of that key the receiver held when the frame came (0: unknown or none).
    pub rounds: u64,
    /// Why it was not applied.
    #[source]
    pub error: Error,
}

/// A frame slice must hold one frame and nothing after it.
fn whole(rest: &[u8]) -> Result<()> {
    if rest.is_empty() {
        Ok(())
    } else {
        Err(Error::CorruptFrame { reason: "bytes after the last segment" })
    }
}

/// The receiving side of a session: one per node, shared by all its keys.
#[derive(Debug)]
pub struct Receiver<'h> {
    hde: &'h Hde,
    state: Option<StateDir>,
    /// Rounds held per key seen (restored from the state on first sight).
    rounds: Mutex<HashMap<String, u64>>,
}

impl<'h> Receiver<'h> {
    /// A receiver over `hde`'s decoder, keeping baselines in memory only.
    pub fn new(hde: &'h Hde) -> Self {
        Receiver { hde, state: None, rounds: Mutex::new(HashMap::new()) }
    }

    /// A receiver whose baselines also live in `state` between processes.
    pub fn with_state(hde: &'h Hde, state: StateDir) -> Self {
        Receiver { hde, state: Some(state), rounds: Mutex::new(HashMap::new()) }
    }

    fn limits(&self) -> FrameLimits {
        FrameLimits { max_image: self.hde.config().delta.max_image_size }
    }

    /// Loads `key`'s saved baseline (once per key). A damaged saved baseline is an error,
    /// except for a keyframe, which needs none: then it is returned as a note and replaced
    /// by the keyframe's image.
    fn ensure_key(&self, header: &FrameHeader) -> Result<Option<Error>> {
        if lock(&self.rounds).contains_key(&header.key) {
            return Ok(None);
        }
        let (rounds, note) = match &self.state {
            None => (0, None),
            Some(dir) => match dir.restore_receiver(self.hde, &header.key) {
                Ok(n) => (n.unwrap_or(0), None),
                Err(e) if header.round.is_keyframe() => (0, Some(e)),
                Err(e) => return Err(e),
            },
        };
        lock(&self.rounds).insert(header.key.clone(), rounds);
        Ok(note)
    }

    /// Installs `image` as `key`'s baseline with sequence 0 and its own checksum: the other
    /// side of a sender's `install` (`--base`).
    pub fn install_base(&self, key: &str, page_size: usize, image: Image) -> Result<BaselineId> {
        let id = self.hde.receiver().install(key, page_size, image)?;
        lock(&self.rounds).entry(key.to_owned()).or_insert(0);
        Ok(id)
    }

    /// Rounds of `key` this receiver holds (0 if unknown or none).
    pub fn rounds(&self, key: &str) -> u64 {
        lock(&self.rounds).get(key).copied().unwrap_or(0)
    }

    /// The frame's header, checked; and, for a key seen for the first time, its saved
    /// baseline loaded (a damaged one is returned as a note when the frame is a keyframe).
    pub fn prepare(&self, frame: &[u8]) -> Result<(FrameHeader, Option<Error>)> {
        let header = frame::read_header(&mut &frame[..], &self.limits())?;
        let note = self.ensure_key(&header)?;
        self.ensure_base(&header);
        Ok((header, note))
    }

    /// Applies one frame (which must hold exactly one frame) and keeps its image as the key's
    /// baseline. The frame this receiver applied last is a retry: its image is returned again.
    pub fn receive(&self, frame: &[u8]) -> Result<Received> {
        let mut r = frame;
        let header = self.read_header(&mut r)?;
        let got = self.receive_body(header, &mut r)?;
        if !got.retry {
            whole(r)?;
        }
        Ok(got)
    }

    /// [`receive`](Self::receive) straight into `file` (a fresh regular file, written from
    /// offset 0 with zero blocks as holes): segments are written as they are decoded, and no
    /// copy of the image is made in memory. The returned image is `file` mapped, and is the
    /// key's baseline from now on; [`finish_linked`](Self::finish_linked) keeps the file
    /// itself as the saved baseline.
    #[cfg(unix)]
    pub fn receive_to_file(&self, frame: &[u8], file: &std::fs::File) -> Result<Received> {
        let mut r = frame;
        let header = self.read_header(&mut r)?;
        let got = self.receive_body_to_file(header, &mut r, file)?;
        if !got.retry {
            whole(r)?;
        }
        Ok(got)
    }

    /// Reads and checks a frame's header from `r` (a network stream), and loads the key's
    /// saved baseline if it is the first frame of the key: the first half of
    /// [`receive`](Self::receive), for a caller that needs the key before the body arrives.
    pub fn read_header(&self, r: &mut impl Read) -> Result<FrameHeader> {
        let header = frame::read_header(r, &self.limits())?;
        self.ensure_key(&header)?;
        self.ensure_base(&header);
        Ok(header)
    }

    /// Loads the baseline a delta names if it is saved here but not held: another key's (a
    /// frame with a base key), or this key's as the node last sent it (a VM that comes back).
    /// What cannot be loaded stays missing, and decoding refuses the frame for it.
    fn ensure_base(&self, header: &FrameHeader) {
        let (Some(want), Some(dir)) = (header.round.base, &self.state) else { return };
        let key = header.base_key.as_deref().unwrap_or(&header.key);
        if self.hde.receiver().baseline(key) != Some(want) {
            let _ = dir.restore_receiver_from(self.hde, key, want);
        }
    }

    /// Whether the frame of `header` was applied already (its round is the baseline held):
    /// a resend after a lost reply, confirmed again without decoding.
    pub fn is_retry(&self, header: &FrameHeader) -> bool {
        self.hde.receiver().baseline(&header.key) == Some(header.round.produces())
    }

    fn retry(&self, header: FrameHeader) -> Result<Received> {
        let image =
            self.hde.receiver().image(&header.key).ok_or(Error::CorruptFrame { reason: "baseline without image" })?;
        let rounds = self.rounds(&header.key);
        Ok(Received { header, image, retry: true, rounds })
    }

    fn applied(&self, header: FrameHeader, image: Image) -> Received {
        let rounds = self.rounds(&header.key).saturating_add(1);
        lock(&self.rounds).insert(header.key.clone(), rounds);
        Received { header, image, retry: false, rounds }
    }

    /// The second half of [`receive`](Self::receive): the frame's segments, read from `r`
    /// and rebuilt as they arrive. For a retry nothing more is read from `r` (the caller
    /// discards the rest of the frame).
    pub fn receive_body(&self, header: FrameHeader, r: &mut impl Read) -> Result<Received> {
        if self.is_retry(&header) {
            return self.retry(header);
        }
        let image = self.hde.decompress_body(&header, r)?;
        Ok(self.applied(header, image))
    }

    /// [`receive_to_file`](Self::receive_to_file) for a frame whose header was read with
    /// [`read_header`](Self::read_header): the segments are read from `r`, rebuilt as they
    /// arrive and written to `file`.
    #[cfg(unix)]
    pub fn receive_body_to_file(
        &self,
        header: FrameHeader,
        r: &mut impl Read,
        file: &std::fs::File,
    ) -> Result<Received> {
        self.body_to_file(header, r, file, false)
    }

    /// [`receive_body_to_file`](Self::receive_body_to_file) into a file that holds other
    /// content (an older round of the key, kept for this): only the blocks that differ are
    /// written ([`Decoder::decompress_body_over_file`](crate::Decoder::decompress_body_over_file)).
    /// The file must be this receiver's alone: nothing else may map or read it meanwhile,
    /// and it must not be the file of the baseline the frame applies to.
    #[cfg(unix)]
    pub fn receive_body_over_file(
        &self,
        header: FrameHeader,
        r: &mut impl Read,
        file: &std::fs::File,
    ) -> Result<Received> {
        self.body_to_file(header, r, file, true)
    }

    #[cfg(unix)]
    fn body_to_file(
        &self,
        header: FrameHeader,
        r: &mut impl Read,
        file: &std::fs::File,
        over: bool,
    ) -> Result<Received> {
        if self.is_retry(&header) {
            let got = self.retry(header)?;
            if over {
                file.set_len(0)?;
            }
            crate::state::write_sparse(file, 0, &got.image)?;
            return Ok(got);
        }
        if over {
            self.hde.decompress_body_over_file(&header, r, file)?;
        } else {
            self.hde.decompress_body_to_file(&header, r, file)?;
        }
        let image = if header.round.image_len == 0 {
            Image::from(Vec::new())
        } else {
            // The file this call just wrote and verified, which only this process holds
            // (unnamed or not yet renamed into place).
            crate::fsio::map_whole(file, false)?
        };
        // The file, as mapped, is the baseline: decoding just verified it against the frame's
        // checksum (a later process restoring it checks it again).
        let (id, ps) = (header.round.produces(), header.round.page_size as usize);
        self.hde.receiver().install_verified(&header.key, id, ps, image.clone())?;
        self.hde.record_decoded(&header);
        Ok(self.applied(header, image))
    }

    /// Applies one frame straight into `file` (from offset 0, zero blocks as holes), keeping
    /// no image and no baseline: for a receiver that needs the image on disk only.
    #[cfg(unix)]
    pub fn receive_into(&self, frame: &[u8], file: &std::fs::File) -> Result<FrameHeader> {
        self.prepare(frame)?;
        self.hde.decompress_to_file(&mut &frame[..], file)
    }

    /// Persists `received` (if this receiver has a state directory and the frame was not a
    /// retry) and returns the reply that confirms it. Call it once the image is where it
    /// belongs: the state on disk moves only then.
    pub fn finish(&self, received: &Received) -> Result<Reply> {
        let key = &received.header.key;
        if let (Some(dir), false) = (&self.state, received.retry) {
            dir.save_receiver(self.hde, key, received.rounds)?;
        }
        Ok(Reply::Applied { key: key.clone(), holds: received.header.round.produces() })
    }

    /// [`finish`](Self::finish) for a caller that wrote the image to `image_file` (durably):
    /// the state keeps that file as the baseline (a hard link) instead of a second copy.
    pub fn finish_linked(&self, received: &Received, image_file: &std::path::Path) -> Result<Reply> {
        let key = &received.header.key;
        if let (Some(dir), false) = (&self.state, received.retry) {
            let id = received.header.round.produces();
            dir.save_receiver_linked(key, id, received.rounds, image_file, &received.image)?;
        }
        Ok(Reply::Applied { key: key.clone(), holds: received.header.round.produces() })
    }

    /// Applies a stream of frames in order, as `hde decode` does with a file of several
    /// rounds, and puts the last frame's image where `output` says. The frames stay
    /// unpersisted until [`finish_stream`](Self::finish_stream), called once the output is in
    /// place.
    ///
    /// `before(index, header, note)` runs for each frame once its header is checked and its
    /// key's saved baseline loaded, before it is applied (`note`: a damaged saved baseline
    /// that this keyframe replaces); an error from it stops the stream.
    ///
    /// The rules of a stream sent again in part: a frame older than the baseline held, other
    /// than the last, was applied before and is skipped; a retry of the frame a key holds
    /// leaves the frame this run applied of that key as the one to persist. Writing to a file
    /// without a state directory keeps nothing: the last frame is decoded straight into the
    /// file, and no baseline of its key is held afterwards.
    pub fn receive_stream(
        &self,
        frames: &[&[u8]],
        output: StreamOutput<'_>,
        mut before: impl FnMut(usize, &FrameHeader, Option<&Error>) -> Result<()>,
    ) -> std::result::Result<ReceivedStream, StreamError> {
        let mut stream = ReceivedStream { image: None, written: false, applied: Vec::new() };
        for (index, frame) in frames.iter().enumerate() {
            let failed = |key: Option<&FrameHeader>, rounds, error| StreamError {
                index,
                key: key.map(|h| h.key.clone()),
                rounds,
                error,
            };
            let (header, note) = self.prepare(frame).map_err(|e| failed(None, 0, e))?;
            let rounds = self.rounds(&header.key);
            before(index, &header, note.as_ref()).map_err(|e| failed(Some(&header), rounds, e))?;
            let last = index + 1 == frames.len();
            let got = match output {
                #[cfg(unix)]
                StreamOutput::File(file) if last && self.state.is_none() => {
                    self.receive_into(frame, file).map_err(|e| failed(Some(&header), rounds, e))?;
                    stream.written = true;
                    continue;
                }
                #[cfg(unix)]
                StreamOutput::File(file) if last => {
                    stream.written = true;
                    self.receive_to_file(frame, file)
                }
                _ => self.receive(frame).inspect(|got| stream.image = Some(got.image.clone())),
            };
            match got {
                Ok(got) => {
                    // A retry of a frame this run applied leaves that one to be saved.
                    let seen = stream.applied.iter().any(|r| r.header.key == got.header.key);
                    if !(got.retry && seen) {
                        stream.applied.retain(|r| r.header.key != got.header.key);
                        stream.applied.push(got);
                    }
                }
                // Inside a stream, a frame older than the baseline held was applied before:
                // the stream is being sent again (the last frame decides what is written).
                Err(e) if !last && Refusal::of(&e) == Refusal::Stale => {}
                Err(e) => return Err(failed(Some(&header), rounds, e)),
            }
        }
        Ok(stream)
    }

    /// Persists what [`receive_stream`](Self::receive_stream) applied: the last frame of each
    /// key. Call it once the output is in place (written, renamed, synced as the caller
    /// wants); the last frame's key keeps `image_file`, the stream's output where it is a
    /// regular file, as its saved baseline (a hard link, not a second copy).
    pub fn finish_stream(&self, stream: &ReceivedStream, image_file: Option<&std::path::Path>) -> Result<()> {
        let last_key = stream.applied.last().map(|r| &r.header.key);
        for got in &stream.applied {
            match image_file {
                Some(file) if Some(&got.header.key) == last_key => self.finish_linked(got, file)?,
                _ => self.finish(got)?,
            };
        }
        Ok(())
    }

    /// The reply that refuses a frame of `key` for `err`.
    pub fn refusal(&self, key: &str, err: &Error) -> Reply {
        Reply::Refused {
            key: key.to_owned(),
            reason: Refusal::of(err),
            holds: self.hde.receiver().baseline(key),
            message: err.to_string(),
        }
    }
}
