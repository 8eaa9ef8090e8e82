//! `sharpness-lab align …`: the alignment experiment's set-up commands.

use std::path::PathBuf;

use anyhow::Result;
use clap::Subcommand;

/// `sharpness-lab align <command>`.
#[derive(Subcommand, Debug)]
pub enum AlignCommand {
    /// Fetch the encoders and the image–text data into the cache (set-up step; SHA-256 checked).
    Fetch {
        /// Cache directory (default `$SHARPNESS_CACHE` or `~/.cache/sharpness`).
        #[arg(long)]
        cache: Option<PathBuf>,
    },
    /// Verify the cached alignment files against the recorded sums.
    Verify {
        /// Cache directory (default `$SHARPNESS_CACHE` or `~/.cache/sharpness`).
        #[arg(long)]
        cache: Option<PathBuf>,
    },
    /// Fetch if needed, build the image–text pairs and cache both towers' frozen features.
    Prepare(super::prepare::PrepareArgs),
}

/// Runs `sharpness-lab align …`.
pub fn run(command: AlignCommand) -> Result<()> {
    let cache_or_default = |c: Option<PathBuf>| c.unwrap_or_else(crate::data::default_cache_dir);
    match command {
        AlignCommand::Fetch { cache } => {
            super::fetch::fetch_all(&cache_or_default(cache), &mut |line| eprintln!("{line}"))
        }
        AlignCommand::Verify { cache } => {
            let cache = cache_or_default(cache);
            super::fetch::verify(&cache)?;
            println!(
                "all alignment files in {} match the recorded sums",
                super::dir(&cache).display()
            );
            Ok(())
        }
        AlignCommand::Prepare(args) => super::prepare::cli(args),
    }
}
