//! `hde`: the command-line shell over `hde-core`.
//!
//! Every subcommand parses arguments, calls the library and prints; no logic lives here that a
//! library user would have to copy.
//!
//! Exit codes: 0 success; 1 failure (one line on stderr names the file and the cause, and a
//! `rounds` run with a round that fails to verify); 2 usage error (from clap).

use std::fs::{self, File};
use std::io::{self, IsTerminal, Read, Write};
use std::path::{Path, PathBuf};
use std::process::ExitCode;
use std::time::{Duration, Instant};

use anyhow::{bail, Context as _, Result};
use clap::{Args, Parser, Subcommand};
use hde_core::codec::{CodecSet, CodecSpec};
use hde_core::corpus::{self, Corpus, CorpusConfig};
use hde_core::delta::{ClassCounts, EncodeOptions, Image, PageClass};
use hde_core::frame::{self, FrameLimits};
use hde_core::selector::NetworkMode;
use hde_core::state::StateDir;
use hde_core::{Hde, HdeConfig};
use indicatif::{ProgressBar, ProgressStyle};

#[derive(Parser)]
#[command(
    name = "hde",
    version,
    about = "Hierarchical delta encoding of VM memory and disk images",
    after_help = "Exit codes: 0 success, 1 failure (including a round that fails to verify), 2 usage error."
)]
struct Cli {
    #[command(subcommand)]
    command: Command,
}

/// Options of the engine shared by encode, rounds and demo.
#[derive(Args, Clone)]
struct EngineArgs {
    /// Network mode: datacenter (speed first), internet (ratio first) or hybrid (fastest
    /// delivery for --bandwidth).
    #[arg(long, default_value = "hybrid", value_parser = parse_mode)]
    mode: NetworkMode,
    /// Link bandwidth for hybrid mode, e.g. 100mbit, 1gbit, 50MB/s.
    #[arg(long, value_parser = parse_rate)]
    bandwidth: Option<f64>,
    /// Worker threads (default: all cores).
    #[arg(long)]
    threads: Option<usize>,
}

#[derive(Subcommand)]
enum Command {
    /// Encode IN as the next round of --key into the frame OUT (a delta if --state holds the
    /// key's baseline).
    Encode {
        /// The image (`-` for stdin).
        input: PathBuf,
        /// Where to write the frame (`-` for stdout).
        #[arg(short, long)]
        output: PathBuf,
        /// The key (VM); default: the input's file stem.
        #[arg(long)]
        key: Option<String>,
        /// Keep baselines here between runs.
        #[arg(long)]
        state: Option<PathBuf>,
        /// Encode against this image as the baseline (e.g. the previous round's file, as
        /// `zstd --patch-from` takes it); the decoder needs the same file as its --base.
        #[arg(long, conflicts_with = "state")]
        base: Option<PathBuf>,
        /// Send a keyframe whatever the baseline (what a receiver that lost its baseline, or
        /// missed a frame, needs); a damaged saved baseline is then replaced.
        #[arg(long)]
        keyframe: bool,
        #[command(flatten)]
        engine: EngineArgs,
    },
    /// Decode the frame IN into the image OUT (against --state's baseline for a delta).
    Decode {
        /// The frame (`-` for stdin).
        input: PathBuf,
        /// Where to write the image (`-` for stdout); nothing is written if decoding fails.
        #[arg(short, long)]
        output: PathBuf,
        /// Keep baselines here between runs.
        #[arg(long)]
        state: Option<PathBuf>,
        /// The image the frame was encoded against with `encode --base`.
        #[arg(long, conflicts_with = "state")]
        base: Option<PathBuf>,
        /// Worker threads (default: all cores).
        #[arg(long)]
        threads: Option<usize>,
    },
    /// Encode FILES as successive pre-copy rounds of one key, decode each frame with an
    /// independent decoder, verify, and report per round.
    Rounds {
        /// The rounds, in order.
        #[arg(required = true)]
        files: Vec<PathBuf>,
        /// Print one JSON object instead of a table.
        #[arg(long)]
        json: bool,
        #[command(flatten)]
        engine: EngineArgs,
    },
    /// Print a frame's header, codecs, baseline identity, page classes and sizes.
    Inspect {
        /// The frame.
        frame: PathBuf,
    },
    /// Generate the default corpus in a temporary folder and run `rounds` on it in all three
    /// modes (hybrid for a 1 Gbit/s link), with one comparison table.
    Demo {
        /// Image size.
        #[arg(long, default_value = "64M", value_parser = parse_size)]
        size: usize,
        /// Rounds.
        #[arg(long, default_value_t = 6)]
        rounds: usize,
        /// Worker threads (default: all cores).
        #[arg(long)]
        threads: Option<usize>,
    },
    /// Compress an image with each codec, round 0 alone and round 1 against round 0 as
    /// reference, verify every round trip, and print sizes and speeds.
    Codecs {
        /// Two rounds of one image (e.g. snap_00.raw snap_01.raw); default: a generated corpus.
        files: Vec<PathBuf>,
        /// Size of the generated image when no files are given (e.g. 64M).
        #[arg(long, default_value = "64M", value_parser = parse_size)]
        size: usize,
        /// Seed of the generated image.
        #[arg(long, default_value_t = 1)]
        seed: u64,
        /// Segment size: each segment is compressed alone, as the engine does.
        #[arg(long, default_value = "4M", value_parser = parse_size)]
        segment: usize,
        /// Codecs to run (comma-separated: raw, lz4, zstd-N, zstd-N-long).
        #[arg(long, value_delimiter = ',', default_value = "raw,lz4,zstd-1,zstd-3,zstd-9")]
        codecs: Vec<CodecSpec>,
    },
    /// Write a deterministic VM-memory corpus: DIR/snap_00.raw .. snap_{N-1}.raw.
    Corpus {
        /// Output directory.
        #[arg(long)]
        out: PathBuf,
        /// Image size (e.g. 64M).
        #[arg(long, default_value = "64M", value_parser = parse_size)]
        size: usize,
        /// Number of rounds.
        #[arg(long, default_value_t = 6)]
        rounds: usize,
        /// Seed.
        #[arg(long, default_value_t = 1)]
        seed: u64,
    },
}

fn parse_size(text: &str) -> Result<usize, String> {
    corpus::parse_size(text).map_err(|e| e.to_string())
}

fn parse_mode(text: &str) -> Result<NetworkMode, String> {
    text.parse().map_err(|e: hde_core::selector::Error| e.to_string())
}

/// Bytes per second from `100mbit`, `1gbit`, `50MB/s`, `12500000`.
fn parse_rate(text: &str) -> Result<f64, String> {
    let t = text.trim().to_ascii_lowercase();
    let t = t.strip_suffix("/s").or_else(|| t.strip_suffix("ps")).unwrap_or(&t).to_owned();
    let units: [(&str, f64); 8] = [
        ("gbit", 1e9 / 8.0),
        ("mbit", 1e6 / 8.0),
        ("kbit", 1e3 / 8.0),
        ("bit", 1.0 / 8.0),
        ("gb", 1e9),
        ("mb", 1e6),
        ("kb", 1e3),
        ("b", 1.0),
    ];
    let (number, scale) =
        units.iter().find_map(|(u, s)| t.strip_suffix(u).map(|n| (n, *s))).unwrap_or((t.as_str(), 1.0));
    match number.trim().parse::<f64>() {
        Ok(n) if n.is_finite() && n > 0.0 => Ok(n * scale),
        _ => Err(format!("invalid rate {text:?}: expected e.g. 100mbit, 1gbit or 50MB/s")),
    }
}

fn main() -> ExitCode {
    match run(Cli::parse()) {
        Ok(code) => code,
        // `hde ... | head`: the reader left; that is not our failure.
        Err(err) if is_broken_pipe(&err) => ExitCode::SUCCESS,
        Err(err) => {
            eprintln!("hde: error: {err:#}");
            ExitCode::FAILURE
        }
    }
}

fn is_broken_pipe(err: &anyhow::Error) -> bool {
    err.chain().any(|e| e.downcast_ref::<io::Error>().is_some_and(|e| e.kind() == io::ErrorKind::BrokenPipe))
}

fn engine_config(engine: &EngineArgs, node: u64) -> HdeConfig {
    let mut c = HdeConfig::new(node);
    c.network_mode = engine.mode;
    if let Some(bandwidth) = engine.bandwidth {
        c.bandwidth = bandwidth;
    }
    if let Some(threads) = engine.threads {
        c.threads = threads;
    }
    c
}

fn receiver_config(threads: Option<usize>) -> HdeConfig {
    let mut c = HdeConfig::new(2);
    if let Some(threads) = threads {
        c.threads = threads;
    }
    c
}

fn is_stdio(path: &Path) -> bool {
    path.as_os_str() == "-"
}

/// An input's bytes: a regular file mapped into memory, or read (stdin, empty files).
enum Input {
    Mapped(memmap2::Mmap),
    Read(Vec<u8>),
}

impl std::ops::Deref for Input {
    type Target = [u8];
    fn deref(&self) -> &[u8] {
        match self {
            Input::Mapped(m) => m,
            Input::Read(v) => v,
        }
    }
}

impl Input {
    /// The bytes as an [`Image`] the library can keep without a copy.
    fn into_image(self) -> Image {
        match self {
            Input::Mapped(m) => Image::shared(std::sync::Arc::new(m)),
            Input::Read(v) => Image::from(v),
        }
    }
}

fn read_input(path: &Path) -> Result<Input> {
    if is_stdio(path) {
        let mut data = Vec::new();
        io::stdin().lock().read_to_end(&mut data).context("cannot read stdin")?;
        return Ok(Input::Read(data));
    }
    let file = File::open(path).with_context(|| format!("cannot read {}", path.display()))?;
    let meta = file.metadata().with_context(|| format!("cannot read {}", path.display()))?;
    if meta.is_file() && meta.len() > 0 {
        // Mapped with all pages populated up front: no copy through a read buffer, no page
        // fault per page later.
        // SAFETY: the map is read-only and private to this process. Another process changing
        // the file while we run could change the bytes under us; the frame checksums catch
        // the result at the receiver (a typed error there), as with any input changed mid-read.
        let map = unsafe { memmap2::MmapOptions::new().populate().map(&file) };
        if let Ok(map) = map {
            return Ok(Input::Mapped(map));
        }
    }
    let mut data = Vec::new();
    (&file).read_to_end(&mut data).with_context(|| format!("cannot read {}", path.display()))?;
    Ok(Input::Read(data))
}

/// Writes through `f` to `path` atomically (a temporary file renamed into place, so a failure
/// leaves no partial output), or to stdout for `-`. With `durable` the file is fsynced before
/// the rename: needed when a state directory will record the round as done.
fn write_output<T>(path: &Path, durable: bool, f: impl FnOnce(&mut dyn Write) -> Result<T>) -> Result<T> {
    if is_stdio(path) {
        let stdout = io::stdout();
        let mut lock = io::BufWriter::new(stdout.lock());
        let value = f(&mut lock)?;
        lock.flush().context("cannot write stdout")?;
        return Ok(value);
    }
    replace_file(path, durable, |file| {
        let mut w = io::BufWriter::new(file);
        let value = f(&mut w)?;
        w.flush().with_context(|| format!("cannot write {}", path.display()))?;
        Ok(value)
    })
}

/// Writes a decoded image to `path` like [`write_output`], as a sparse file (zero blocks left
/// as holes, as `zstd -d` does) when `path` is a file.
fn write_image(path: &Path, durable: bool, image: &[u8]) -> Result<()> {
    if is_stdio(path) {
        return write_output(path, durable, |w| w.write_all(image).context("cannot write stdout"));
    }
    replace_file(path, durable, |file| {
        hde_core::state::write_sparse(file, 0, image).with_context(|| format!("cannot write {}", path.display()))
    })
}

/// Creates a temporary file beside `path`, fills it with `f`, fsyncs it if `durable`, and
/// renames it over `path`; on any failure the temporary file is removed and `path` is untouched.
fn replace_file<T>(path: &Path, durable: bool, f: impl FnOnce(&File) -> Result<T>) -> Result<T> {
    let tmp = path.with_extension(format!("hde-tmp.{}", std::process::id()));
    let result = (|| -> Result<T> {
        // Readable too: a decode straight into the file copies pages between its segments.
        let file = fs::OpenOptions::new()
            .read(true)
            .write(true)
            .create(true)
            .truncate(true)
            .open(&tmp)
            .with_context(|| format!("cannot create {}", tmp.display()))?;
        let value = f(&file)?;
        if durable {
            file.sync_all().with_context(|| format!("cannot write {}", path.display()))?;
        }
        fs::rename(&tmp, path).with_context(|| format!("cannot write {}", path.display()))?;
        Ok(value)
    })();
    if result.is_err() {
        let _ = fs::remove_file(&tmp);
    }
    result
}

fn run(cli: Cli) -> Result<ExitCode> {
    match cli.command {
        Command::Encode { input, output, key, state, base, keyframe, engine } => {
            let image = read_input(&input)?;
            let key = key.unwrap_or_else(|| match input.file_stem() {
                Some(stem) if !is_stdio(&input) => stem.to_string_lossy().into_owned(),
                _ => "stdin".to_owned(),
            });
            let hde = Hde::new(engine_config(&engine, 1))?;
            let state = state.map(StateDir::open).transpose()?;
            if let Some(dir) = &state {
                match dir.restore_sender(&hde, &key) {
                    Ok(_) => {}
                    // A keyframe needs no baseline: a damaged saved one is replaced.
                    Err(e) if keyframe => eprintln!("hde: ignoring the saved baseline of {key}: {e}"),
                    Err(e) => return Err(e).context("cannot load the saved baseline (a --keyframe replaces it)"),
                }
            }
            if let Some(base) = &base {
                let image = read_input(base)?.into_image();
                hde.sender().install(&key, image).with_context(|| format!("cannot use {} as base", base.display()))?;
            }
            // Without --state nothing keeps the new baseline: a detached frame skips the commit.
            let options = EncodeOptions { detached: state.is_none(), force_keyframe: keyframe };
            let summary = write_output(&output, state.is_some(), |w| {
                let mut w = w;
                Ok(hde.compress_with(&key, &image, &mut w, options)?)
            })
            .with_context(|| format!("cannot encode {}", input.display()))?;
            if let Some(dir) = &state {
                dir.save_sender(&hde, &key, &image).context("cannot save the baseline")?;
            }
            if io::stderr().is_terminal() {
                let kind = if summary.header.round.is_keyframe() { "keyframe" } else { "delta" };
                eprintln!(
                    "hde: {key}: {kind}, {} -> {} bytes ({:.4})",
                    summary.input_bytes,
                    summary.output_bytes,
                    summary.output_bytes as f64 / summary.input_bytes.max(1) as f64
                );
            }
            Ok(ExitCode::SUCCESS)
        }
        Command::Decode { input, output, state, base, threads } => {
            let bytes = read_input(&input)?;
            let header = frame::read_header(&mut &bytes[..], &FrameLimits::default())
                .with_context(|| format!("cannot decode {}", input.display()))?;
            let hde = Hde::new(receiver_config(threads))?;
            let state = state.map(StateDir::open).transpose()?;
            if let Some(dir) = &state {
                match dir.restore_receiver(&hde, &header.key) {
                    Ok(_) => {}
                    // A keyframe needs no baseline: a damaged saved one is replaced.
                    Err(e) if header.round.is_keyframe() => {
                        eprintln!("hde: ignoring the saved baseline of {}: {e}", header.key);
                    }
                    Err(e) => return Err(e).context("cannot load the saved baseline (a keyframe replaces it)"),
                }
            }
            if let Some(base) = &base {
                let image = read_input(base)?.into_image();
                hde.receiver()
                    .install(&header.key, header.round.page_size as usize, image)
                    .with_context(|| format!("cannot use {} as base", base.display()))?;
            }
            // The same frame again (a retry after a crash that came after the state was saved):
            // the baseline held is exactly the image this frame produces, so write that.
            if let Some(image) = hde
                .receiver()
                .baseline(&header.key)
                .filter(|id| state.is_some() && *id == header.round.produces())
                .and_then(|_| hde.receiver().image(&header.key))
            {
                write_image(&output, true, &image)?;
                return Ok(ExitCode::SUCCESS);
            }
            if state.is_none() && !is_stdio(&output) {
                // Nothing keeps the image: each segment goes straight to the file.
                replace_file(&output, false, |file| {
                    hde.decompress_to_file(&mut &bytes[..], file)
                        .with_context(|| format!("cannot decode {}", input.display()))
                })?;
                return Ok(ExitCode::SUCCESS);
            }
            let (_, image) = hde.decompress(&bytes).with_context(|| format!("cannot decode {}", input.display()))?;
            write_image(&output, state.is_some(), &image)?;
            if let Some(dir) = &state {
                dir.save_receiver(&hde, &header.key).context("cannot save the baseline")?;
            }
            Ok(ExitCode::SUCCESS)
        }
        Command::Rounds { files, json, engine } => {
            let reports = run_rounds(&files, &engine)?;
            let mut out = io::stdout().lock();
            if json {
                writeln!(out, "{}", rounds_json(engine.mode, &reports))?;
            } else {
                print_rounds(&mut out, engine.mode, &reports)?;
            }
            Ok(if reports.iter().all(|r| r.verified) { ExitCode::SUCCESS } else { ExitCode::FAILURE })
        }
        Command::Inspect { frame } => inspect(&frame).map(|()| ExitCode::SUCCESS),
        Command::Demo { size, rounds, threads } => demo(size, rounds, threads),
        Command::Codecs { files, size, seed, segment, codecs } => {
            let (old, new) = load_pair(&files, size, seed)?;
            if segment == 0 {
                bail!("--segment must be at least 1 byte");
            }
            codecs_table(&old, &new, segment, &codecs).map(|()| ExitCode::SUCCESS)
        }
        Command::Corpus { out, size, rounds, seed } => {
            let config = CorpusConfig { size, rounds, seed, ..CorpusConfig::default() };
            let paths = corpus::write_corpus(&out, &config)?;
            writeln!(io::stdout(), "wrote {} rounds of {} bytes to {}", paths.len(), size, out.display())?;
            Ok(ExitCode::SUCCESS)
        }
    }
}

/// One round of `hde rounds`.
struct RoundReport {
    keyframe: bool,
    input_bytes: u64,
    output_bytes: u64,
    encode: Duration,
    decode: Duration,
    codecs: Vec<(String, u64)>,
    pages: hde_core::delta::ClassCounts,
    verified: bool,
}

fn progress(len: usize, what: &str) -> ProgressBar {
    // Drawn on a terminal only: piped output stays clean.
    let bar = ProgressBar::new(len as u64);
    if let Ok(style) = ProgressStyle::with_template("{msg} [{bar:30}] {pos}/{len} {elapsed}") {
        bar.set_style(style.progress_chars("=> "));
    }
    bar.set_message(what.to_owned());
    bar
}

fn run_rounds(files: &[PathBuf], engine: &EngineArgs) -> Result<Vec<RoundReport>> {
    let sender = Hde::new(engine_config(engine, 1))?;
    let receiver = Hde::new(HdeConfig { threads: sender.config().threads, ..HdeConfig::new(2) })?;
    let bar = progress(files.len(), &format!("{} rounds", engine.mode));
    let mut reports = Vec::with_capacity(files.len());
    for file in files {
        let image = fs::read(file).with_context(|| format!("cannot read {}", file.display()))?;
        let mut frame = Vec::new();
        let t = Instant::now();
        let summary = sender
            .compress_to("rounds", &image, &mut frame)
            .with_context(|| format!("cannot encode {}", file.display()))?;
        let encode = t.elapsed();
        let t = Instant::now();
        let decoded = receiver.decompress(&frame);
        let decode = t.elapsed();
        let verified = match decoded {
            Ok((_, decoded)) => decoded.as_slice() == image.as_slice(),
            Err(e) => {
                bar.suspend(|| eprintln!("hde: error: cannot decode the frame of {}: {e}", file.display()));
                false
            }
        };
        if !verified {
            bar.suspend(|| eprintln!("hde: error: {} did not verify", file.display()));
        }
        reports.push(RoundReport {
            keyframe: summary.header.round.is_keyframe(),
            input_bytes: summary.input_bytes,
            output_bytes: summary.output_bytes,
            encode,
            decode,
            codecs: summary.codecs,
            pages: summary.pages,
            verified,
        });
        bar.inc(1);
    }
    bar.finish_and_clear();
    Ok(reports)
}

fn codecs_text(codecs: &[(String, u64)]) -> String {
    codecs.iter().map(|(c, n)| format!("{c}x{n}")).collect::<Vec<_>>().join(",")
}

fn print_rounds(out: &mut impl Write, mode: NetworkMode, reports: &[RoundReport]) -> Result<()> {
    writeln!(out, "mode {mode}")?;
    writeln!(
        out,
        "{:>5} {:>5} {:>12} {:>11} {:>7} {:>8} {:>8}  {:<28} pages (unchanged/zero/dup/xor/literal)",
        "round", "kind", "input", "output", "ratio", "enc s", "dec s", "codecs"
    )?;
    for (i, r) in reports.iter().enumerate() {
        writeln!(
            out,
            "{:>5} {:>5} {:>12} {:>11} {:>7.4} {:>8.3} {:>8.3}  {:<28} {}/{}/{}/{}/{}{}",
            i,
            if r.keyframe { "full" } else { "delta" },
            r.input_bytes,
            r.output_bytes,
            r.output_bytes as f64 / r.input_bytes.max(1) as f64,
            r.encode.as_secs_f64(),
            r.decode.as_secs_f64(),
            codecs_text(&r.codecs),
            r.pages.unchanged,
            r.pages.zero,
            r.pages.duplicate,
            r.pages.xor,
            r.pages.literal,
            if r.verified { "" } else { "  NOT VERIFIED" }
        )?;
    }
    let (input, output, enc, dec) = totals(reports);
    writeln!(
        out,
        "{:>5} {:>5} {:>12} {:>11} {:>7.4} {:>8.3} {:>8.3}",
        "total",
        "",
        input,
        output,
        output as f64 / input.max(1) as f64,
        enc,
        dec
    )?;
    Ok(())
}

fn totals(reports: &[RoundReport]) -> (u64, u64, f64, f64) {
    reports.iter().fold((0, 0, 0.0, 0.0), |(i, o, e, d), r| {
        (i + r.input_bytes, o + r.output_bytes, e + r.encode.as_secs_f64(), d + r.decode.as_secs_f64())
    })
}

fn rounds_json(mode: NetworkMode, reports: &[RoundReport]) -> serde_json::Value {
    let rounds: Vec<serde_json::Value> = reports
        .iter()
        .enumerate()
        .map(|(i, r)| {
            let codecs: serde_json::Map<String, serde_json::Value> =
                r.codecs.iter().map(|(c, n)| (c.clone(), serde_json::Value::from(*n))).collect();
            serde_json::json!({
                "round": i,
                "kind": if r.keyframe { "full" } else { "delta" },
                "input_bytes": r.input_bytes,
                "output_bytes": r.output_bytes,
                "encode_seconds": r.encode.as_secs_f64(),
                "decode_seconds": r.decode.as_secs_f64(),
                "codecs": codecs,
                "pages": {
                    "unchanged": r.pages.unchanged,
                    "zero": r.pages.zero,
                    "duplicate": r.pages.duplicate,
                    "xor": r.pages.xor,
                    "literal": r.pages.literal,
                },
                "verified": r.verified,
            })
        })
        .collect();
    let (input, output, enc, dec) = totals(reports);
    serde_json::json!({
        "mode": mode.name(),
        "rounds": rounds,
        "total": {"input_bytes": input, "output_bytes": output, "encode_seconds": enc, "decode_seconds": dec},
    })
}

fn inspect(path: &Path) -> Result<()> {
    let bytes = fs::read(path).with_context(|| format!("cannot read {}", path.display()))?;
    let mut r = &bytes[..];
    let header = frame::read_header(&mut r, &FrameLimits::default())
        .with_context(|| format!("cannot inspect {}", path.display()))?;
    let round = header.round;
    let mut out = io::stdout().lock();
    writeln!(out, "frame      {} ({} bytes, format version {})", path.display(), bytes.len(), frame::VERSION)?;
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
    let mut set = CodecSet::new();
    let mut raw = [0u64; 4];
    let mut stored = [0u64; 4];
    let mut codecs: Vec<std::collections::BTreeMap<String, u64>> = vec![Default::default(); 4];
    let mut pages = ClassCounts::default();
    for index in 0..round.segment_count() {
        let index = u32::try_from(index).context("too many segments")?;
        let record = frame::read_segment(&mut r, &header, index)
            .with_context(|| format!("cannot inspect {}", path.display()))?;
        for (i, s) in record.streams.iter().enumerate() {
            raw[i] += u64::from(s.raw_len);
            stored[i] += u64::from(s.stored_len);
            let name = format!("{}{}", s.codec, if s.with_reference { "+ref" } else { "" });
            *codecs[i].entry(name).or_default() += 1;
        }
        let mut buf = vec![0u8; record.streams[0].raw_len as usize];
        set.decompress(record.streams[0].codec, record.stream(0), &[], &mut buf)?;
        for class in buf.into_iter().filter_map(PageClass::from_u8) {
            pages.count(class);
        }
    }
    writeln!(out, "{:<10} {:>12} {:>12}  codecs (segments)", "stream", "raw bytes", "stored")?;
    for (i, name) in frame::STREAMS.iter().enumerate() {
        let used: Vec<String> = codecs[i].iter().map(|(c, n)| format!("{c}x{n}")).collect();
        writeln!(out, "{:<10} {:>12} {:>12}  {}", name, raw[i], stored[i], used.join(", "))?;
    }
    writeln!(
        out,
        "pages      unchanged {}, zero {}, duplicate {}, xor {}, literal {}",
        pages.unchanged, pages.zero, pages.duplicate, pages.xor, pages.literal
    )?;
    Ok(())
}

fn demo(size: usize, rounds: usize, threads: Option<usize>) -> Result<ExitCode> {
    let dir = std::env::temp_dir().join(format!("hde-demo-{}", std::process::id()));
    let config = CorpusConfig { size, rounds, ..CorpusConfig::default() };
    eprintln!("hde demo: generating {rounds} rounds of {} MiB of VM-like memory in {}", size >> 20, dir.display());
    let files = corpus::write_corpus(&dir, &config)?;
    let mut out = io::stdout().lock();
    writeln!(
        out,
        "{:<11} {:>12} {:>12} {:>12} {:>8} {:>8} {:>8}  verified",
        "mode", "round 0 B", "rounds 1+ B", "total B", "ratio", "enc s", "dec s"
    )?;
    let mut all_verified = true;
    let result = (|| -> Result<()> {
        // Hybrid for a 1 Gbit/s link, where speed and bytes both count; over slower links it
        // converges on internet's choices, over faster ones on datacenter's.
        for (mode, bandwidth, label) in [
            (NetworkMode::Datacenter, None, "datacenter"),
            (NetworkMode::Internet, None, "internet"),
            (NetworkMode::Hybrid, Some(1.25e8), "hybrid@1G"),
        ] {
            let reports = run_rounds(&files, &EngineArgs { mode, bandwidth, threads })?;
            let (input, output, enc, dec) = totals(&reports);
            let first = reports.first().map_or(0, |r| r.output_bytes);
            let verified = reports.iter().all(|r| r.verified);
            all_verified &= verified;
            writeln!(
                out,
                "{:<11} {:>12} {:>12} {:>12} {:>8.4} {:>8.3} {:>8.3}  {}",
                label,
                first,
                output - first,
                output,
                output as f64 / input.max(1) as f64,
                enc,
                dec,
                if verified { "yes" } else { "NO" }
            )?;
        }
        writeln!(
            out,
            "{} rounds of {} bytes each; every frame decoded by an independent decoder and compared",
            rounds, size
        )?;
        Ok(())
    })();
    let _ = fs::remove_dir_all(&dir);
    result?;
    Ok(if all_verified { ExitCode::SUCCESS } else { ExitCode::FAILURE })
}

fn load_pair(files: &[PathBuf], size: usize, seed: u64) -> Result<(Vec<u8>, Vec<u8>)> {
    match files {
        [] => {
            let mut corpus = Corpus::new(CorpusConfig { size, seed, ..CorpusConfig::default() })?;
            let old = corpus.image().to_vec();
            corpus.advance();
            Ok((old, corpus.image().to_vec()))
        }
        [old, new] => {
            let read = |p: &PathBuf| std::fs::read(p).with_context(|| format!("cannot read {}", p.display()));
            Ok((read(old)?, read(new)?))
        }
        _ => bail!("give no files (generated image) or exactly two rounds of one image"),
    }
}

struct Outcome {
    bytes: usize,
    compress: Duration,
    decompress: Duration,
}

/// Compresses `data` segment by segment (against the same range of `reference`, if any),
/// decompresses and checks every segment.
fn measure(
    set: &mut CodecSet,
    spec: CodecSpec,
    data: &[u8],
    reference: Option<&[u8]>,
    segment: usize,
) -> Result<Outcome> {
    let mut streams = Vec::new();
    let mut out = Vec::new();
    let reference_of = |i: usize| -> &[u8] {
        let start = i * segment;
        reference.and_then(|r| r.get(start..(start + segment).min(r.len()))).unwrap_or(&[])
    };
    let t = Instant::now();
    for (i, chunk) in data.chunks(segment).enumerate() {
        let start = out.len();
        set.compress(spec, chunk, reference_of(i), &mut out)?;
        streams.push(start..out.len());
    }
    let compress = t.elapsed();
    let mut back = vec![0u8; segment];
    let t = Instant::now();
    for (i, (chunk, range)) in data.chunks(segment).zip(&streams).enumerate() {
        let dst = &mut back[..chunk.len()];
        set.for_id(spec.id()).decompress_exact(&out[range.clone()], reference_of(i), dst)?;
        if dst != chunk {
            bail!("{spec}: segment {i} did not round-trip");
        }
    }
    Ok(Outcome { bytes: out.len(), compress, decompress: t.elapsed() })
}

fn codecs_table(old: &[u8], new: &[u8], segment: usize, codecs: &[CodecSpec]) -> Result<()> {
    let mb_s = |n: usize, d: Duration| n as f64 / 1e6 / d.as_secs_f64().max(1e-9);
    let mut set = CodecSet::new();
    let mut stdout = io::stdout().lock();
    writeln!(stdout, "{:<30} {:>12} {:>7} {:>10} {:>10}", "codec / input", "bytes", "ratio", "comp MB/s", "dec MB/s")?;
    for (label, data, reference) in [("round 0", old, None), ("round 1 vs round 0", new, Some(old))] {
        for &spec in codecs {
            let o = measure(&mut set, spec, data, reference, segment)?;
            let name = if reference.is_some() { format!("{spec}+ref {label}") } else { format!("{spec} {label}") };
            writeln!(
                stdout,
                "{:<30} {:>12} {:>7.3} {:>10.0} {:>10.0}",
                name,
                o.bytes,
                o.bytes as f64 / data.len().max(1) as f64,
                mb_s(data.len(), o.compress),
                mb_s(data.len(), o.decompress)
            )?;
        }
    }
    writeln!(stdout, "all round trips verified ({} + {} bytes, {segment}-byte segments)", old.len(), new.len())?;
    Ok(())
}
