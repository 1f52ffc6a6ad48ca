//! `hde`: the command-line shell over `hde-core`.
//!
//! Every subcommand parses arguments, calls the library and prints; no logic lives here that a
//! library user would have to copy. Exit codes: 0 success, 1 failure (one line on stderr names
//! the file and the cause), 2 usage error (from clap).

use std::io::{self, Write};
use std::path::PathBuf;
use std::process::ExitCode;
use std::time::{Duration, Instant};

use anyhow::{bail, Context as _, Result};
use clap::{Parser, Subcommand};
use hde_core::codec::{CodecSet, CodecSpec};
use hde_core::corpus::{self, Corpus, CorpusConfig};

#[derive(Parser)]
#[command(name = "hde", version, about = "Hierarchical delta encoding of VM memory and disk images")]
struct Cli {
    #[command(subcommand)]
    command: Command,
}

#[derive(Subcommand)]
enum Command {
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
        /// Segment size: each segment is compressed alone, as the engine will.
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

fn main() -> ExitCode {
    match run(Cli::parse()) {
        Ok(()) => ExitCode::SUCCESS,
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

fn run(cli: Cli) -> Result<()> {
    match cli.command {
        Command::Codecs { files, size, seed, segment, codecs } => {
            let (old, new) = load_pair(&files, size, seed)?;
            if segment == 0 {
                bail!("--segment must be at least 1 byte");
            }
            codecs_table(&old, &new, segment, &codecs)
        }
        Command::Corpus { out, size, rounds, seed } => {
            let config = CorpusConfig { size, rounds, seed, ..CorpusConfig::default() };
            let paths = corpus::write_corpus(&out, &config)?;
            writeln!(io::stdout(), "wrote {} rounds of {} bytes to {}", paths.len(), size, out.display())?;
            Ok(())
        }
    }
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
