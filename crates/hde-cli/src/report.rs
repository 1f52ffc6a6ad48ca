//! `hde rounds`, `hde demo` and `hde codecs`: runs that encode, decode, verify and report.

use std::fs;
use std::io::{self, Write};
use std::path::PathBuf;
use std::process::ExitCode;
use std::time::{Duration, Instant};

use anyhow::{bail, Context as _, Result};
use hde_core::codec::{CodecSet, CodecSpec};
use hde_core::selector::NetworkMode;
use hde_core::units::Rate;
use hde_core::{Hde, HdeConfig};
use hde_corpus::{self as corpus, Corpus, CorpusConfig};
use indicatif::{ProgressBar, ProgressStyle};

use crate::{engine_config, EngineArgs};

/// One round of `hde rounds`.
pub(crate) struct RoundReport {
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

/// `hde rounds`: prints the table (or JSON) and fails if a round did not verify.
pub(crate) fn rounds(files: &[PathBuf], json: bool, engine: &EngineArgs) -> Result<ExitCode> {
    let reports = run_rounds(files, engine)?;
    let mut out = io::stdout().lock();
    if json {
        writeln!(out, "{}", rounds_json(engine, &reports))?;
    } else {
        print_rounds(&mut out, engine, &reports)?;
    }
    Ok(if reports.iter().all(|r| r.verified) { ExitCode::SUCCESS } else { ExitCode::FAILURE })
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

fn print_rounds(out: &mut impl Write, engine: &EngineArgs, reports: &[RoundReport]) -> Result<()> {
    match engine.link_rate() {
        Some(rate) => writeln!(out, "mode {} for a {rate} link", engine.mode)?,
        None => writeln!(out, "mode {}", engine.mode)?,
    }
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

fn rounds_json(engine: &EngineArgs, reports: &[RoundReport]) -> serde_json::Value {
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
        "mode": engine.mode.name(),
        // The link rate the hybrid cost model was given, in bits per second (null: the mode
        // ignores the link).
        "bandwidth_bits_per_second": engine.link_rate().map(Rate::bits_per_second),
        "rounds": rounds,
        "total": {"input_bytes": input, "output_bytes": output, "encode_seconds": enc, "decode_seconds": dec},
    })
}

pub(crate) fn demo(size: usize, rounds: usize, threads: Option<usize>) -> Result<ExitCode> {
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
            (NetworkMode::Hybrid, Some(Rate::from_bits_per_second(1e9)?), "hybrid@1G"),
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
        all_verified &= crate::net::demo_transport(&files, &dir, threads, &mut out)?;
        Ok(())
    })();
    let _ = fs::remove_dir_all(&dir);
    result?;
    Ok(if all_verified { ExitCode::SUCCESS } else { ExitCode::FAILURE })
}

pub(crate) fn load_pair(files: &[PathBuf], size: usize, seed: u64) -> Result<(Vec<u8>, Vec<u8>)> {
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

pub(crate) fn codecs_table(old: &[u8], new: &[u8], segment: usize, codecs: &[CodecSpec]) -> Result<()> {
    let mb_s = |n: usize, d: Duration| n as f64 / 1e6 / d.as_secs_f64().max(1e-9);
    let mut set = CodecSet::new();
    let mut stdout = io::stdout().lock();
    writeln!(stdout, "{:<30} {:>12} {:>7} {:>10} {:>10}", "codec / input", "bytes", "ratio", "comp MB/s", "dec MB/s")?;
    for (label, data, reference) in [("round 0", old, &[][..]), ("round 1 vs round 0", new, old)] {
        for &spec in codecs {
            let o = hde_core::codec::measure(&mut set, spec, data, reference, segment)?;
            let name = if reference.is_empty() { format!("{spec} {label}") } else { format!("{spec}+ref {label}") };
            writeln!(
                stdout,
                "{:<30} {:>12} {:>7.3} {:>10.0} {:>10.0}",
                name,
                o.stored_bytes,
                o.ratio(),
                mb_s(data.len(), o.compress),
                mb_s(data.len(), o.decompress)
            )?;
        }
    }
    writeln!(stdout, "all round trips verified ({} + {} bytes, {segment}-byte segments)", old.len(), new.len())?;
    Ok(())
}
