//! `sharpness-lab align …`: the alignment experiment's set-up commands.

use anyhow::Result;
use clap::Subcommand;

use crate::data::CacheArg;

/// `sharpness-lab align <command>`.
#[derive(Subcommand, Debug)]
pub enum AlignCommand {
    /// Fetch the encoders and the image–text data into the cache (set-up step; SHA-256 checked).
    Fetch(CacheArg),
    /// Verify the cached alignment files against the recorded sums.
    Verify(CacheArg),
    /// Fetch if needed, build the image–text pairs and cache both towers' frozen features.
    Prepare(super::prepare::PrepareArgs),
}

/// Runs `sharpness-lab align …`.
pub fn run(command: AlignCommand) -> Result<()> {
    match command {
        AlignCommand::Fetch(cache) => {
            super::fetch::fetch_all(&cache.dir(), &mut |line| eprintln!("{line}"))
        }
        AlignCommand::Verify(cache) => {
            let cache = cache.dir();
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
