//! The `train`, `table`, `data` and `bench` subcommands.

use std::path::PathBuf;

use anyhow::{Context, Result, bail};
use clap::{Args, Subcommand};
use strum::VariantArray;

use super::{RunOptions, TrainConfig};
use crate::experiments::table::{self, TableConfig};
use crate::methods::Method;
use crate::models::ModelKind;
use crate::{data, limits, outdir};

/// `sharpness-lab train`.
#[derive(Args, Debug)]
pub struct TrainArgs {
    /// A TOML configuration (keys as the flags, with underscores); the run's flags cannot be
    /// given with it.
    #[arg(long, conflicts_with_all = super::config::FLAG_IDS)]
    pub config: Option<PathBuf>,
    /// Run directory: config.toml, metrics.csv, metrics.json, checkpoint.bin.
    #[arg(long, default_value = "results/train")]
    pub out: PathBuf,
    /// Write into `--out` even if it is a non-empty directory that is not a lab run.
    #[arg(long)]
    pub force_out: bool,
    /// Continue the run in `--out` from its checkpoint (bit-identical to an uninterrupted run).
    #[arg(long)]
    pub resume: bool,
    /// Stop after this many completed epochs (resume later with `--resume`).
    #[arg(long)]
    pub stop_after: Option<usize>,
    /// Data cache (default `$SHARPNESS_CACHE` or `~/.cache/sharpness`).
    #[arg(long)]
    pub cache: Option<PathBuf>,
    /// No progress bar.
    #[arg(long)]
    pub quiet: bool,
    /// The run's configuration.
    #[command(flatten)]
    pub train: TrainConfig,
}

/// Runs `sharpness-lab train`.
pub fn train(args: TrainArgs) -> Result<()> {
    let given = match &args.config {
        Some(path) => TrainConfig::from_toml_file(path)?,
        None => args.train.clone(),
    };
    given.validate()?;
    let config = given.normalised();
    if config.rho != given.rho {
        eprintln!(
            "note: {} does not use ρ; the run records rho = {}",
            config.method, config.rho
        );
    }
    let _run_dir = outdir::claim(&args.out, args.force_out)?;
    let cache = args.cache.clone().unwrap_or_else(data::default_cache_dir);
    let dataset = super::load_data(&config, &cache)?;
    let options = RunOptions {
        out_dir: args.out.clone(),
        resume: args.resume,
        progress: !args.quiet,
        stop_after: args.stop_after,
    };
    let result = super::run(&config, &dataset, &options)?;
    if let Some(last) = result.metrics.last() {
        println!(
            "{}: epoch {}/{}: train loss {:.4} acc {:.2}%, test loss {:.4} acc {:.2}% → {}",
            config.label(),
            last.epoch,
            config.epochs,
            last.train_loss,
            100.0 * last.train_acc,
            last.test_loss,
            100.0 * last.test_acc,
            args.out.display()
        );
    }
    Ok(())
}

/// `sharpness-lab table`.
#[derive(Args, Debug)]
pub struct TableArgs {
    /// The smoke-test preset (every method and variant, tiny subsets, not informative).
    #[arg(long, conflicts_with = "reduced")]
    pub quick: bool,
    /// The reduced preset of `reproduce` (Fashion-MNIST -S/-C, SGD against SAM, 4 seeds).
    #[arg(long)]
    pub reduced: bool,
    /// Output directory.
    #[arg(long, default_value = "results/table")]
    pub out: PathBuf,
    /// Write into `--out` even if it is a non-empty directory that is not a lab run.
    #[arg(long)]
    pub force_out: bool,
    /// Data cache (default `$SHARPNESS_CACHE` or `~/.cache/sharpness`).
    #[arg(long)]
    pub cache: Option<PathBuf>,
    /// Override the preset's seeds.
    #[arg(long, value_delimiter = ',')]
    pub seeds: Option<Vec<u64>>,
    /// Override the preset's methods.
    #[arg(long, value_enum, ignore_case = true, value_delimiter = ',')]
    pub methods: Option<Vec<Method>>,
    /// Override the preset's datasets.
    #[arg(long, value_enum, ignore_case = true, value_delimiter = ',')]
    pub datasets: Option<Vec<data::DatasetName>>,
    /// Override the preset's variants.
    #[arg(long, value_enum, ignore_case = true, value_delimiter = ',')]
    pub variants: Option<Vec<data::Variant>>,
    /// Override the preset's epochs.
    #[arg(long)]
    pub epochs: Option<usize>,
    /// Override the preset's training-set limit (0: no limit).
    #[arg(long)]
    pub train_limit: Option<usize>,
}

/// Runs `sharpness-lab table`.
pub fn table(args: TableArgs) -> Result<()> {
    let mut config = if args.quick {
        TableConfig::quick()
    } else if args.reduced {
        TableConfig::reduced()
    } else {
        TableConfig::full()
    };
    config.cache = args.cache;
    if let Some(seeds) = args.seeds {
        config.seeds = seeds;
    }
    if let Some(methods) = args.methods {
        config.methods = methods;
    }
    if let Some(datasets) = args.datasets {
        config.datasets = datasets;
    }
    if let Some(variants) = args.variants {
        config.variants = variants;
    }
    if let Some(epochs) = args.epochs {
        config.epochs = epochs;
    }
    if let Some(limit) = args.train_limit {
        config.train_limit = (limit > 0).then_some(limit);
    }
    config.validate()?;
    let _run_dir = outdir::claim(&args.out, args.force_out)?;
    eprintln!(
        "table preset `{}`: {} runs → {}",
        config.preset,
        config.runs(),
        args.out.display()
    );
    table::run(&config, &args.out, true)?;
    println!("wrote {}", args.out.join("report.md").display());
    Ok(())
}

/// `sharpness-lab data`.
#[derive(Subcommand, Debug)]
pub enum DataCommand {
    /// Fetch MNIST and Fashion-MNIST into the cache (set-up step; verifies SHA-256 sums).
    Fetch(data::CacheArg),
    /// Verify the cached files against the recorded SHA-256 sums.
    Verify(data::CacheArg),
}

/// Runs `sharpness-lab data …`.
pub fn data(command: DataCommand) -> Result<()> {
    match command {
        DataCommand::Fetch(cache) => data::fetch_all(&cache.dir(), &mut |line| eprintln!("{line}")),
        DataCommand::Verify(cache) => {
            let cache = cache.dir();
            data::verify_cache(&cache).with_context(|| {
                format!(
                    "the cache does not hold the recorded data; fetch it with `{}`",
                    data::fetch_command(&cache)
                )
            })?;
            println!(
                "all data files in {} match the recorded sums",
                cache.display()
            );
            Ok(())
        }
    }
}

/// `sharpness-lab bench`.
#[derive(Args, Debug)]
pub struct BenchArgs {
    /// Network(s); `--pytorch`, `--floor` and `--pool-ab` take a list (e.g. `mlp,cnn,resnet`).
    #[arg(
        long,
        value_enum,
        ignore_case = true,
        value_delimiter = ',',
        default_value = "cnn"
    )]
    pub model: Vec<ModelKind>,
    /// Batch size.
    #[arg(long, default_value_t = 128)]
    pub batch_size: usize,
    /// Timed steps per method (median reported); per round with `--pytorch`.
    #[arg(long, default_value_t = 10)]
    pub steps: usize,
    /// Untimed warm-up steps per method.
    #[arg(long, default_value_t = 2)]
    pub warmup: usize,
    /// Methods (default: all; SGD is always measured first for the ratios).
    #[arg(long, value_enum, ignore_case = true, value_delimiter = ',')]
    pub methods: Option<Vec<Method>>,
    /// Side by side with PyTorch (`bench/pytorch_sam.py`): SGD, SAM and M-SAM, rounds run
    /// alternately, medians, peak memory, and the SAM losses of both from the same weights.
    #[arg(long, conflicts_with_all = ["floor", "pool_ab", "methods"])]
    pub pytorch: bool,
    /// The Python interpreter with torch (default `$SHARPNESS_PYTHON`, else `python3`).
    #[arg(long)]
    pub python: Option<String>,
    /// Rounds of `--pytorch` (each: the lab's steps, then PyTorch's).
    #[arg(long, default_value_t = 3)]
    pub rounds: usize,
    /// Threads of each side: the lab's rayon pool and torch's intra-op threads.
    #[arg(long, default_value_t = 2)]
    pub threads: usize,
    /// The library's SAM step against a hand-written plain-Burn SAM and the floor (two plain
    /// passes and the base step), `--steps` interleaved rounds.
    #[arg(long, conflicts_with_all = ["pool_ab", "methods"])]
    pub floor: bool,
    /// SAM steps inside the rayon pool against steps from the main thread, interleaved.
    #[arg(long, conflicts_with = "methods")]
    pub pool_ab: bool,
    /// JSON output.
    #[arg(long, default_value = "results/bench.json")]
    pub out: PathBuf,
}

/// Runs `sharpness-lab bench`.
pub fn bench(args: BenchArgs) -> Result<()> {
    if args.steps == 0 {
        bail!("--steps must be ≥ 1");
    }
    if args.batch_size == 0 {
        bail!("--batch-size must be ≥ 1");
    }
    if args.threads == 0 {
        bail!("--threads must be ≥ 1");
    }
    // The synthetic training set: 4 batches of f32 images.
    let data_bytes = 4.0 * args.batch_size as f64 * (4 * crate::data::IMAGE_PIXELS) as f64;
    let width = TrainConfig::default().width;
    for &model in &args.model {
        limits::ensure_training_fits(model, width, args.batch_size, data_bytes)?;
    }
    outdir::check_output_file(&args.out, "--out")?;
    // Both sides get the same number of threads (a second call finds the pool built: ignored).
    let _ = rayon::ThreadPoolBuilder::new()
        .num_threads(args.threads)
        .build_global();
    if cfg!(debug_assertions) {
        eprintln!("note: debug build; measure with --release");
    }
    // Timings are only comparable at the same load: print it beside them.
    if let Ok(load) = std::fs::read_to_string("/proc/loadavg") {
        let cores = std::thread::available_parallelism().map_or(0, |n| n.get());
        let one_minute = load.split_whitespace().next().unwrap_or("?");
        println!("load average {one_minute} on {cores} cores at the start");
    }
    let log = &mut |line: &str| eprintln!("{line}");
    let json = if args.pytorch {
        let python = args
            .python
            .clone()
            .or_else(|| std::env::var("SHARPNESS_PYTHON").ok())
            .unwrap_or_else(|| "python3".into());
        let torch = match super::bench::probe_torch(&python) {
            Ok(version) => version,
            Err(why) => {
                println!(
                    "skipping the PyTorch comparison: {why}; install torch (e.g. `python3 -m venv \
                     venv && venv/bin/pip install torch`) and pass --python venv/bin/python or \
                     set SHARPNESS_PYTHON"
                );
                return Ok(());
            }
        };
        eprintln!(
            "lab (Flex, rayon pool of {t}) against PyTorch {torch} (torch.set_num_threads({t}))",
            t = args.threads
        );
        let options = super::bench::PytorchOptions {
            models: args.model.clone(),
            batch_size: args.batch_size,
            steps: args.steps,
            warmup: args.warmup,
            rounds: args.rounds,
            python,
            threads: args.threads,
            check_steps: 3,
        };
        let scratch = super::bench::scratch_dir()?;
        let report = super::bench::compare_pytorch(&options, &scratch, log);
        let _ = std::fs::remove_dir_all(&scratch);
        let report = report?;
        println!("{}", super::bench::pytorch_markdown(&report));
        serde_json::to_string_pretty(&report)?
    } else if args.floor {
        let rows = super::bench::floor(&args.model, args.batch_size, args.steps, log)?;
        println!(
            "{}",
            super::bench::floor_markdown(&rows, args.batch_size, args.steps)
        );
        serde_json::to_string_pretty(&rows)?
    } else if args.pool_ab {
        let rows = super::bench::pool_ab(&args.model, args.batch_size, args.steps, log)?;
        serde_json::to_string_pretty(&rows)?
    } else {
        let mut methods = vec![Method::Sgd];
        methods.extend(
            args.methods
                .clone()
                .unwrap_or_else(|| Method::VARIANTS.to_vec())
                .into_iter()
                .filter(|&m| m != Method::Sgd),
        );
        let mut reports = Vec::new();
        for &model in &args.model {
            let report = super::bench::run(
                model,
                args.batch_size,
                args.steps,
                args.warmup,
                &methods,
                log,
            )?;
            println!("{}", super::bench::markdown(&report));
            reports.push(report);
        }
        if reports.len() == 1 {
            serde_json::to_string_pretty(&reports[0])?
        } else {
            serde_json::to_string_pretty(&reports)?
        }
    };
    crate::report::write_atomic(&args.out, json.as_bytes())?;
    println!("wrote {}", args.out.display());
    Ok(())
}
