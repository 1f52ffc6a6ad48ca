//! `cargo xtask corpus`: the deterministic VM-memory corpus, written to files.

use std::path::PathBuf;

use anyhow::Result;
use hde_corpus::{stats, CorpusConfig};

#[derive(clap::Args)]
pub(crate) struct Args {
    /// Output directory (created if missing).
    #[arg(long)]
    out: PathBuf,
    /// Image size, e.g. 64M or 1G.
    #[arg(long, default_value = "64M", value_parser = crate::parse_size)]
    size: usize,
    /// Number of rounds (files).
    #[arg(long, default_value_t = 6)]
    rounds: usize,
    /// Seed: same arguments, same bytes on every machine.
    #[arg(long, default_value_t = 1)]
    seed: u64,
    /// Print page statistics of the result (zero, duplicate, changed pages).
    #[arg(long)]
    stats: bool,
}

pub(crate) fn run(args: &Args) -> Result<()> {
    let config = CorpusConfig { size: args.size, rounds: args.rounds, seed: args.seed, ..CorpusConfig::default() };
    let paths = hde_corpus::write_corpus(&args.out, &config)?;
    for path in &paths {
        println!("{}", path.display());
    }
    if args.stats {
        let mut previous: Option<Vec<u8>> = None;
        for (round, path) in paths.iter().enumerate() {
            let image = std::fs::read(path)?;
            let s = stats::image_stats(&image, config.page_size);
            let pct = |n: usize| 100.0 * n as f64 / s.pages.max(1) as f64;
            print!("round {round}: zero {:.1} %, duplicate {:.1} %", pct(s.zero), pct(s.duplicate));
            if let Some(old) = &previous {
                let r = stats::round_stats(old, &image, config.page_size);
                let of = |n: usize| 100.0 * n as f64 / r.changed.max(1) as f64;
                print!(
                    ", changed {:.1} % (<=8 B {:.0} %, 9-32 {:.0} %, 33-128 {:.0} %, more {:.0} %, rewritten {:.0} %; median {} B, mean {} B)",
                    pct(r.changed), of(r.buckets[0]), of(r.buckets[1]), of(r.buckets[2]), of(r.buckets[3]), of(r.buckets[4]),
                    r.median_diff, r.mean_diff
                );
            }
            println!();
            previous = Some(image);
        }
    }
    Ok(())
}
