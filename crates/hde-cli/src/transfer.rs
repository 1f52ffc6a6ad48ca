//! `hde encode`, `hde decode` and `hde inspect`: images to frame streams and back.
//!
//! A frame stream is frames one after another (what `cat r0.hde r1.hde` or several rounds
//! piped through ssh give): `encode` writes one for its inputs, `decode` applies every frame in
//! order and writes the last image, `inspect` describes each.

use std::io::{self, IsTerminal as _, Read as _, Write as _};
use std::path::{Path, PathBuf};

use anyhow::{Context as _, Result};
use clap::Args;
use hde_core::delta::{DeltaConfig, DeltaDecoder as _, EncodeOptions, Image};
use hde_core::frame::{self, FrameHeader, FrameLimits};
use hde_core::session::{Receiver, Sender, StreamOutput};
use hde_core::state::{SenderImage, StateDir};
use hde_core::{Decoder, Hde, HdeConfig};

use crate::output::{ids, is_stdio, Output};
use crate::{display, parse_key, parse_threads, usage_error, EngineArgs};
use hde_core::fsio::ImageFile;

/// The flags of `hde encode`.
#[derive(Args)]
pub(crate) struct EncodeArgs {
    /// The images, in order: rounds of one key (`-` for stdin, once).
    #[arg(required = true)]
    inputs: Vec<PathBuf>,
    /// Where to write the frames (`-` for stdout).
    #[arg(short, long)]
    output: PathBuf,
    /// Overwrite an existing output file (devices and FIFOs are always written in place).
    #[arg(short, long)]
    force: bool,
    /// The key (VM) the rounds belong to; required with --state, whose baselines it names.
    /// Default without --state: the first input's file stem.
    #[arg(long, value_parser = parse_key)]
    key: Option<String>,
    /// Keep baselines here between runs (each run's first round is a delta of the last one's).
    #[arg(long, requires = "key")]
    state: Option<PathBuf>,
    /// Encode against this image as the baseline (e.g. the previous round's file, as
    /// `zstd --patch-from` takes it); the decoder needs the same file as its --base.
    #[arg(long, conflicts_with = "state")]
    base: Option<PathBuf>,
    /// Make the first frame a keyframe whatever the baseline (what a receiver that lost its
    /// baseline, or missed a frame, needs); a damaged saved baseline is then replaced.
    #[arg(long)]
    keyframe: bool,
    /// Flush outputs to stable storage before exiting (as rsync's --fsync). Without it a
    /// power cut can lose the latest output; a baseline saved with --state is then found
    /// damaged by its checksum and the next round is a keyframe, never a wrong image.
    #[arg(long)]
    fsync: bool,
    #[command(flatten)]
    pub(crate) engine: EngineArgs,
}

/// The flags of `hde decode`.
#[derive(Args)]
pub(crate) struct DecodeArgs {
    /// The frame or frame stream (`-` for stdin).
    input: PathBuf,
    /// Where to write the last frame's image (`-` for stdout); nothing is written if decoding
    /// fails.
    #[arg(short, long)]
    output: PathBuf,
    /// Overwrite an existing output file (devices and FIFOs are always written in place).
    #[arg(short, long)]
    force: bool,
    /// Keep baselines here between runs.
    #[arg(long)]
    state: Option<PathBuf>,
    /// The image the frames were encoded against with `encode --base`.
    #[arg(long, conflicts_with = "state")]
    base: Option<PathBuf>,
    /// Flush outputs to stable storage before exiting (as rsync's --fsync). Without it a
    /// power cut can lose the latest output; a baseline saved with --state is then found
    /// damaged by its checksum and the next round is a keyframe, never a wrong image.
    #[arg(long)]
    fsync: bool,
    /// Worker threads (default: all cores).
    #[arg(long, value_parser = parse_threads)]
    threads: Option<usize>,
}

/// An input's bytes: a regular file mapped (its holes left unread), or read (stdin, pipes,
/// empty files).
fn read_input(path: &Path) -> Result<ImageFile> {
    if is_stdio(path) {
        let mut data = Vec::new();
        io::stdin().lock().read_to_end(&mut data).context("cannot read stdin")?;
        return Ok(ImageFile { image: Image::from(data), holes: None, mapped: false });
    }
    hde_core::fsio::open_image(path).with_context(|| format!("cannot read {}", path.display()))
}

/// `n` bytes in the largest unit that keeps them readable.
fn bytes(n: u64) -> String {
    match n {
        n if n >= 10 << 20 => format!("{:.1} MiB", n as f64 / (1 << 20) as f64),
        n if n >= 10 << 10 => format!("{:.1} KiB", n as f64 / 1024.0),
        n => format!("{n} B"),
    }
}

pub(crate) fn encode(a: EncodeArgs) -> Result<()> {
    if a.inputs.iter().filter(|p| is_stdio(p)).count() > 1 {
        usage_error(clap::error::ErrorKind::ArgumentConflict, "stdin (`-`) can be read once only");
    }
    let key = a.key.clone().unwrap_or_else(|| match a.inputs.first() {
        Some(first) if !is_stdio(first) => {
            first.file_stem().map_or_else(|| "stdin".to_owned(), |s| s.to_string_lossy().into_owned())
        }
        _ => "stdin".to_owned(),
    });
    let inputs = ids(a.inputs.iter().map(PathBuf::as_path).chain(a.base.as_deref()));
    let mut out = Output::open(&a.output, a.force, &inputs)?;
    let hde = Hde::new(crate::engine_config(&a.engine, 1))?;
    let state = a.state.as_ref().map(StateDir::open).transpose()?;
    // Rounds of this key before this run (counted by the state directory).
    let mut rounds = 0;
    if let Some(dir) = &state {
        // A keyframe needs no baseline: a damaged saved one is replaced.
        let (held, ignored) = dir.restore_sender_or_replace(&hde, &key, a.keyframe).with_context(|| {
            format!(
                "cannot load the saved baseline of {key} from {} (`hde encode --keyframe` replaces it)",
                dir.root().display()
            )
        })?;
        rounds = held;
        if let Some(e) = ignored {
            eprintln!("hde: ignoring the saved baseline of {key}: {e:#}");
        }
    }
    if let Some(base) = &a.base {
        let image = read_input(base)?.image;
        hde.sender().install(&key, image).with_context(|| format!("cannot use {} as base", base.display()))?;
    }
    let sender = Sender::new(&hde);
    let mut summaries = Vec::with_capacity(a.inputs.len());
    let mut last = None;
    out.write_with(|w| {
        let mut w = w;
        for (i, input) in a.inputs.iter().enumerate() {
            let image = read_input(input)?;
            let is_last = i + 1 == a.inputs.len();
            // The last round of a run with --state is saved as hashes beside its file: no copy
            // of the image is kept in memory for it.
            let options = EncodeOptions {
                force_keyframe: a.keyframe && i == 0,
                hashes_only: is_last && state.is_some(),
                known_zero: image.holes.clone(),
                ..EncodeOptions::default()
            };
            let flight = sender
                .encode_with(&key, &image.image, &mut w, options)
                .with_context(|| format!("cannot encode {}", display(input)))?;
            summaries.push(flight.summary().clone());
            // A frame file is its own delivery: the next round (in this stream, or in the
            // next run through --state) is a delta of this one. Without --state nothing keeps
            // the last round, so it stays uncommitted.
            if state.is_some() || !is_last {
                sender.delivered(flight)?;
            }
            if is_last {
                last = Some(image);
            }
        }
        Ok(())
    })?;
    out.commit(a.fsync)?;
    let total = rounds + a.inputs.len() as u64;
    if let (Some(dir), Some(image)) = (&state, &last) {
        let file = a.inputs.last().filter(|p| !is_stdio(p) && image.mapped);
        let image = SenderImage { bytes: &image.image, file: file.map(PathBuf::as_path) };
        dir.save_sender(&hde, &key, image, total).context("cannot save the baseline")?;
    }
    if io::stderr().is_terminal() {
        for (i, s) in summaries.iter().enumerate() {
            let round = rounds + i as u64;
            let kind = match s.header.round.base {
                None => "keyframe".to_owned(),
                Some(_) if round > 0 => format!("delta of round {}", round - 1),
                Some(_) => "delta".to_owned(),
            };
            eprintln!(
                "hde: {key}: round {round}, {kind}: {} -> {} ({:.4}), sequence {}",
                bytes(s.input_bytes),
                bytes(s.output_bytes),
                s.output_bytes as f64 / s.input_bytes.max(1) as f64,
                s.header.round.seq
            );
        }
    }
    Ok(())
}

fn receiver_config(threads: Option<usize>) -> HdeConfig {
    let mut c = HdeConfig::new(2);
    if let Some(threads) = threads {
        c.threads = threads;
    }
    c
}

/// What a decode knows to explain a refused frame.
struct DecodeContext<'a> {
    state: Option<&'a Path>,
    base: Option<&'a Path>,
    /// Rounds of the frame's key this side had applied (0: unknown).
    rounds: u64,
}

/// A decode error with what the user typed and the remedy.
fn explain(err: hde_core::Error, cx: &DecodeContext<'_>) -> anyhow::Error {
    use hde_core::delta::Error as D;
    let keyframe = "or have the sender encode a keyframe (hde encode --keyframe)";
    let held = |have: u64| match cx.rounds {
        0 => format!("sequence {have}"),
        n => format!("round {} (sequence {have})", n - 1),
    };
    let text = match (&err, cx.state, cx.base) {
        (hde_core::Error::Delta(D::MissingBaseline { key, want }), Some(state), _) => format!(
            "this is a delta of key {key:?} (against sequence {}), and {} holds no baseline of that key: decode it with the --state directory that decoded the round before it, {keyframe}",
            want.seq,
            state.display()
        ),
        (hde_core::Error::Delta(D::MissingBaseline { key, want }), None, _) => format!(
            "this is a delta of key {key:?} (against sequence {}), and nothing here holds its baseline: decode it with --state DIR (the receiver's state, which decoded the round before) or --base FILE (the image it was encoded against with encode --state/--base), {keyframe}",
            want.seq
        ),
        (hde_core::Error::Delta(D::BaselineMismatch { have, want, .. }), _, Some(base)) => format!(
            "this frame was made against another base file (checksum {:#018x}, yours {:#018x} in {})",
            want.checksum,
            have.checksum,
            base.display()
        ),
        (hde_core::Error::Delta(D::BaselineMismatch { key, have, want }), state, None) => format!(
            "key {key:?}: {} holds {}, and this delta applies to sequence {}: a frame between them was missed, or the frames come from another sender; decode the frames in order, {keyframe}",
            state.map_or_else(|| "this stream".into(), |s| s.display().to_string()),
            held(have.seq),
            want.seq
        ),
        (hde_core::Error::Delta(D::StaleSequence { key, have, got }), state, _) => format!(
            "key {key:?}: this frame (sequence {got}) is older than {} that {} holds already: decode the frames that follow it, {keyframe} to start over",
            held(*have),
            state.map_or_else(|| "this stream".into(), |s| s.display().to_string())
        ),
        _ => return err.into(),
    };
    anyhow::Error::new(err).context(text)
}

/// Context for frame `index` of `input` (named only in a stream of several).
fn frame_name(input: &Path, index: usize, several: bool) -> String {
    if several || index > 0 {
        format!("frame {index} of {}", display(input))
    } else {
        display(input).into_owned()
    }
}

pub(crate) fn decode(a: DecodeArgs) -> Result<()> {
    let bytes = read_input(&a.input)?.image;
    let inputs = ids([a.input.as_path()].into_iter().chain(a.base.as_deref()));
    let hde = Hde::new(receiver_config(a.threads))?;
    let limits = FrameLimits { max_image: hde.config().delta.max_image_size };
    // The frames' structure is checked before any output exists: an empty input or a stray
    // file creates nothing.
    let frames: Vec<&[u8]> = frame::frames(&bytes, &limits, hde.receiver().layout())
        .enumerate()
        .map(|(i, f)| f.with_context(|| format!("cannot decode {}", frame_name(&a.input, i, false))))
        .collect::<Result<_>>()?;
    let several = frames.len() > 1;
    let mut out = Output::open(&a.output, a.force, &inputs)?;
    let receiver = match &a.state {
        Some(dir) => Receiver::with_state(&hde, StateDir::open(dir)?),
        None => Receiver::new(&hde),
    };
    // A base file is the baseline of the first frame's key.
    if let (Some(base), Some(first)) = (&a.base, frames.first()) {
        let header = frame::read_header(&mut &first[..], &limits)?;
        let image = read_input(base)?.image;
        receiver
            .install_base(&header.key, header.round.page_size as usize, image)
            .with_context(|| format!("cannot use {} as base", base.display()))?;
    }
    let output = match out.regular_file() {
        Some(file) => StreamOutput::File(file),
        None => StreamOutput::Memory,
    };
    let note = |_: usize, header: &FrameHeader, note: Option<&hde_core::Error>| {
        if let Some(e) = note {
            eprintln!("hde: ignoring the saved baseline of {}: {e:#} (this keyframe replaces it)", header.key);
        }
        Ok(())
    };
    let stream = receiver.receive_stream(&frames, output, note).map_err(|e| {
        let cx = DecodeContext { state: a.state.as_deref(), base: a.base.as_deref(), rounds: e.rounds };
        explain(e.error, &cx).context(format!("cannot decode {}", frame_name(&a.input, e.index, several)))
    })?;
    if !stream.written {
        let Some(image) = &stream.image else { return Ok(()) };
        out.write_image(image)?;
    }
    let target = out.target().map(Path::to_path_buf);
    out.commit(a.fsync)?;
    // The image is in place: now the state may move.
    receiver.finish_stream(&stream, target.as_deref()).context("cannot save the baseline")
}

pub(crate) fn inspect(path: &Path) -> Result<()> {
    let bytes = read_input(path)?.image;
    let decoder = Decoder::new(DeltaConfig::default())?;
    let limits = FrameLimits::default();
    let mut out = io::stdout().lock();
    let mut offset = 0;
    for (index, frame) in frame::frames(&bytes, &limits, decoder.delta().layout()).enumerate() {
        let frame = frame.with_context(|| format!("cannot inspect {}", frame_name(path, index, false)))?;
        if index > 0 {
            writeln!(out)?;
        }
        inspect_frame(&mut out, &decoder, path, index, offset, frame)
            .with_context(|| format!("cannot inspect {}", frame_name(path, index, true)))?;
        offset += frame.len();
    }
    Ok(())
}

fn inspect_frame(
    out: &mut impl io::Write,
    decoder: &Decoder,
    path: &Path,
    index: usize,
    offset: usize,
    bytes: &[u8],
) -> Result<()> {
    // The delta layer says what the streams are and counts their pages.
    let report = decoder.inspect(bytes)?;
    let (header, round) = (&report.header, report.header.round);
    writeln!(
        out,
        "frame      {} #{index} at byte {offset} ({} bytes, {} streams per segment)",
        display(path),
        bytes.len(),
        header.streams
    )?;
    writeln!(out, "key        {}", header.key)?;
    writeln!(out, "kind       {}", if round.is_keyframe() { "keyframe" } else { "delta" })?;
    writeln!(out, "sequence   {}", round.seq)?;
    match round.base {
        Some(base) => writeln!(out, "baseline   {base}")?,
        None => writeln!(out, "baseline   none")?,
    }
    writeln!(out, "image      {} bytes, checksum {:#018x}", round.image_len, round.checksum)?;
    writeln!(
        out,
        "geometry   {} B pages, {} B segments, {} segments",
        round.page_size,
        round.segment_size,
        round.segment_count()
    )?;
    writeln!(out, "{:<10} {:>12} {:>12}  codecs (segments)", "stream", "raw bytes", "stored")?;
    for stream in &report.streams {
        let used: Vec<String> = stream.codecs.iter().map(|(c, n)| format!("{c}x{n}")).collect();
        writeln!(out, "{:<10} {:>12} {:>12}  {}", stream.name, stream.raw_bytes, stream.stored_bytes, used.join(", "))?;
    }
    let pages = report.pages;
    writeln!(
        out,
        "pages      unchanged {}, zero {}, duplicate {}, xor {}, literal {}",
        pages.unchanged, pages.zero, pages.duplicate, pages.xor, pages.literal
    )?;
    Ok(())
}
