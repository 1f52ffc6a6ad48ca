//! `hde-fuzz`: the seed corpus writer and the stable-toolchain fuzz runner.
//!
//! ```text
//! hde-fuzz seeds CORPUS_DIR                       write every target's seeds (fuzz/corpus)
//! hde-fuzz run CORPUS_DIR --seconds N [TARGET..]  mutate seeds for N seconds per target
//! ```
//!
//! `run` is a blind mutation loop (no coverage feedback: that is what cargo-fuzz adds); it
//! exists so that the targets get millions of hostile inputs on any machine with the stable
//! toolchain. A panic or an input slower than a second is a finding: the input is written to
//! `CORPUS_DIR/../artifacts/<target>/` and the run fails.

use std::panic::AssertUnwindSafe;
use std::path::{Path, PathBuf};
use std::process::ExitCode;
use std::time::{Duration, Instant};

use hde_fuzz::{Mutator, Outcome, Target, TARGETS};

fn main() -> ExitCode {
    let args: Vec<String> = std::env::args().skip(1).collect();
    let result = match args.first().map(String::as_str) {
        Some("seeds") if args.len() == 2 => write_seeds(Path::new(&args[1])),
        Some("run") if args.len() >= 2 => run(&args[1..]),
        _ => Err("usage: hde-fuzz seeds CORPUS_DIR | hde-fuzz run CORPUS_DIR --seconds N [TARGET..]".to_owned()),
    };
    match result {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("hde-fuzz: {e}");
            ExitCode::FAILURE
        }
    }
}

fn write_seeds(dir: &Path) -> Result<(), String> {
    for t in TARGETS {
        let seeds = hde_fuzz::seeds(t.name);
        if seeds.is_empty() {
            return Err(format!("{}: no seeds", t.name));
        }
        let sub = dir.join(t.name);
        std::fs::create_dir_all(&sub).map_err(|e| format!("{}: {e}", sub.display()))?;
        for (name, bytes) in &seeds {
            let path = sub.join(name);
            std::fs::write(&path, bytes).map_err(|e| format!("{}: {e}", path.display()))?;
        }
        println!("{}: {} seeds", t.name, seeds.len());
    }
    Ok(())
}

/// Every file of `dir`, sorted by name.
fn load_corpus(dir: &Path) -> Result<Vec<Vec<u8>>, String> {
    let mut paths: Vec<PathBuf> = std::fs::read_dir(dir)
        .map_err(|e| format!("{}: {e}", dir.display()))?
        .filter_map(|e| e.ok().map(|e| e.path()))
        .filter(|p| p.is_file())
        .collect();
    paths.sort();
    paths.iter().map(|p| std::fs::read(p).map_err(|e| format!("{}: {e}", p.display()))).collect()
}

struct Totals {
    execs: u64,
    accepted: u64,
    slowest: Duration,
}

fn run(args: &[String]) -> Result<(), String> {
    let corpus = PathBuf::from(&args[0]);
    let mut seconds = 10u64;
    let mut names = Vec::new();
    let mut rest = args[1..].iter();
    while let Some(a) = rest.next() {
        if a == "--seconds" {
            seconds = rest.next().and_then(|s| s.parse().ok()).ok_or("--seconds needs a number")?;
        } else {
            names.push(a.clone());
        }
    }
    let targets: Vec<Target> = if names.is_empty() {
        TARGETS.to_vec()
    } else {
        names.iter().map(|n| hde_fuzz::target(n).ok_or(format!("unknown target {n}"))).collect::<Result<_, _>>()?
    };
    // Findings are reported by the runner, not by the default hook's backtrace per panic.
    std::panic::set_hook(Box::new(|_| {}));
    for t in targets {
        let seeds = load_corpus(&corpus.join(t.name))?;
        if seeds.is_empty() {
            return Err(format!("{}: empty corpus", t.name));
        }
        let totals = fuzz_one(t, &seeds, Duration::from_secs(seconds), &corpus)?;
        println!(
            "{:<18} {:>10} execs in {seconds} s ({:>7.0}/s), {:>5.2} % accepted, slowest input {:.1} ms",
            t.name,
            totals.execs,
            totals.execs as f64 / seconds.max(1) as f64,
            100.0 * totals.accepted as f64 / totals.execs.max(1) as f64,
            totals.slowest.as_secs_f64() * 1e3,
        );
    }
    Ok(())
}

fn fuzz_one(t: Target, seeds: &[Vec<u8>], budget: Duration, corpus: &Path) -> Result<Totals, String> {
    let mut m = Mutator::new(u64::from(std::process::id()) ^ budget.as_nanos() as u64);
    let mut totals = Totals { execs: 0, accepted: 0, slowest: Duration::ZERO };
    let start = Instant::now();
    let mut input = Vec::new();
    while start.elapsed() < budget {
        // Half the time a fresh seed, else keep mutating the last input (deeper havoc).
        if input.is_empty() || m.next_u64() % 2 == 0 {
            input = seeds[(m.next_u64() % seeds.len() as u64) as usize].clone();
        }
        let other = &seeds[(m.next_u64() % seeds.len() as u64) as usize];
        m.mutate(&mut input, other);
        let began = Instant::now();
        let result = std::panic::catch_unwind(AssertUnwindSafe(|| (t.run)(&input)));
        let took = began.elapsed();
        totals.execs += 1;
        totals.slowest = totals.slowest.max(took);
        let finding = match result {
            Ok(Outcome::Accepted) => {
                totals.accepted += 1;
                None
            }
            Ok(Outcome::Rejected) => None,
            Err(_) => Some("panic"),
        };
        let finding = finding.or((took > Duration::from_secs(1)).then_some("slow"));
        if let Some(kind) = finding {
            let dir = corpus.parent().unwrap_or(corpus).join("artifacts").join(t.name);
            std::fs::create_dir_all(&dir).map_err(|e| format!("{}: {e}", dir.display()))?;
            let path = dir.join(format!("{kind}-{:016x}", fnv(&input)));
            std::fs::write(&path, &input).map_err(|e| format!("{}: {e}", path.display()))?;
            return Err(format!("{}: {kind} on the input saved as {}", t.name, path.display()));
        }
    }
    Ok(totals)
}

/// A name for a finding: FNV-1a of its bytes.
fn fnv(bytes: &[u8]) -> u64 {
    bytes.iter().fold(0xcbf2_9ce4_8422_2325, |h, &b| (h ^ u64::from(b)).wrapping_mul(0x0100_0000_01b3))
}
