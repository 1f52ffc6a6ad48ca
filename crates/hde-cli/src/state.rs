//! `hde state list` and `hde state drop`: what a `--state` directory holds.

use std::io::Write as _;
use std::path::PathBuf;
use std::process::ExitCode;
use std::time::SystemTime;

use anyhow::{bail, Context as _, Result};
use clap::Subcommand;
use hde_core::delta::checksum;
use hde_core::state::{Side, StateDir};
use hde_core::HdeConfig;

use crate::parse_key;

/// What to do with a state directory.
#[derive(Subcommand)]
pub(crate) enum Action {
    /// Print the keys held, per side: rounds, image size, age of the last round, and whether the
    /// saved baseline still verifies against its checksum.
    List {
        /// The state directory.
        #[arg(long)]
        state: PathBuf,
    },
    /// Forget KEY (both sides): its next round is a keyframe.
    Drop {
        /// The state directory.
        #[arg(long)]
        state: PathBuf,
        /// The key to forget.
        #[arg(value_parser = parse_key)]
        key: String,
    },
}

const SIDES: [(Side, &str); 2] = [(Side::Send, "send"), (Side::Receive, "recv")];

pub(crate) fn run(action: Action) -> Result<ExitCode> {
    match action {
        Action::List { state } => list(&state).map(|()| ExitCode::SUCCESS),
        Action::Drop { state, key } => {
            let dir = StateDir::open(&state)?;
            let mut dropped = Vec::new();
            for (side, name) in SIDES {
                if dir.remove(side, &key)? {
                    dropped.push(name);
                }
            }
            if dropped.is_empty() {
                bail!(
                    "{} holds no key {key:?} (hde state list --state {} shows what it holds)",
                    state.display(),
                    state.display()
                );
            }
            println!("dropped {key:?} ({})", dropped.join(", "));
            Ok(ExitCode::SUCCESS)
        }
    }
}

/// `secs` as the largest whole unit: 42s, 5m, 3h, 2d.
fn age(secs: u64) -> String {
    match secs {
        s if s < 120 => format!("{s}s"),
        s if s < 7_200 => format!("{}m", s / 60),
        s if s < 172_800 => format!("{}h", s / 3_600),
        s => format!("{}d", s / 86_400),
    }
}

fn list(root: &std::path::Path) -> Result<()> {
    if !root.is_dir() {
        bail!("{} is not a state directory (nothing has been saved there)", root.display());
    }
    let dir = StateDir::open(root)?;
    let config = HdeConfig::new(0);
    let mut out = std::io::stdout().lock();
    writeln!(
        out,
        "{:<5} {:<24} {:>7} {:>14} {:>6}  {:<20} baseline",
        "side", "key", "rounds", "bytes", "age", "sequence"
    )?;
    let mut count = 0;
    for (side, name) in SIDES {
        for key in dir.keys(side).with_context(|| format!("cannot list {}", root.display()))? {
            count += 1;
            let modified = dir.modified(side, &key).ok();
            let age = modified
                .and_then(|m| SystemTime::now().duration_since(m).ok())
                .map_or_else(|| "?".to_owned(), |d| age(d.as_secs()));
            match dir.load(side, &key, config.delta.max_image_size) {
                Ok(Some(saved)) => {
                    let status = match &saved.hashed {
                        None if checksum(&saved.image, config.delta.page_size) == saved.id.checksum => {
                            "verifies".to_owned()
                        }
                        None => "DAMAGED: image differs from its checksum".to_owned(),
                        Some(h) => {
                            let source = std::fs::read(&h.source).ok();
                            let same = source.is_some_and(|b| checksum(&b, h.page_size as usize) == saved.id.checksum);
                            if same {
                                format!("verifies (hashes; image in {})", h.source.display())
                            } else {
                                format!(
                                    "hashes only: {} changed or gone (changed pages are sent whole)",
                                    h.source.display()
                                )
                            }
                        }
                    };
                    writeln!(
                        out,
                        "{name:<5} {key:<24} {:>7} {:>14} {age:>6}  {:<20} {status}",
                        if saved.rounds == 0 { "?".to_owned() } else { saved.rounds.to_string() },
                        saved.len(),
                        saved.id.seq,
                    )?;
                }
                Ok(None) => {}
                Err(e) => {
                    writeln!(out, "{name:<5} {key:<24} {:>7} {:>14} {age:>6}  {:<20} DAMAGED: {e}", "?", "?", "?")?
                }
            }
        }
    }
    if count == 0 {
        writeln!(out, "(no keys in {})", root.display())?;
    }
    Ok(())
}
