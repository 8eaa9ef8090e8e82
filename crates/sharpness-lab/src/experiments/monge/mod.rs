//! The Monge SAM paper's two network claims (Jacobsen & Arvanitidis 2025, §4.1, Figure 6 and
//! Appendix B; `docs/algorithms.md` §9.4), on the data the lab has (MNIST / Fashion-MNIST; CIFAR-10
//! and the CLIP/WIT set-up of the paper are not available here):
//!
//! - [`finetune`]: fine-tuning from a bad global minimum (adversarial initialisation as Liu et al.
//!   2020) with SGD, SAM and M-SAM at a small learning rate; does SAM escape the valley at large ρ
//!   while M-SAM stays in it?
//! - [`grid`]: learning rate × ρ grids; does M-SAM diverge in fewer cells than SAM?
//!
//! Both train the lab's MLP ([`Network::Mlp`]) with the shared epoch loop and cross-entropy on
//! the logits (= NLL of the log-softmax, the paper's loss), and resume an interrupted invocation
//! from the runs it completed ([`ResumeFile`]).

pub mod alignment;
pub mod finetune;
pub mod grid;

use std::path::{Path, PathBuf};

use anyhow::{Context, Result};
use burn::nn::loss::CrossEntropyLoss;
use burn::prelude::*;
use indicatif::ProgressBar;
use serde::Serialize;
use serde::de::DeserializeOwned;
use sharpness::optim::base;
use sharpness::{RhoSchedule, SharpnessAware};

use crate::data::{self, Split};
use crate::methods::{self, Method, MethodParams};
use crate::models::Network;
use crate::report::{ReportSection, csv_bytes, write_atomic};
use crate::train::{BatchObjective, EpochSummary, batch_tensors, evaluate, train_epoch};

/// The flags both commands share.
#[derive(clap::Args, Debug, Clone)]
pub struct PresetArgs {
    /// Run the reduced preset (the one of `reproduce`) instead of the full one.
    #[arg(long)]
    pub reduced: bool,
    /// Output directory (files go to OUT/<experiment>/, the report section to OUT/<experiment>.md).
    #[arg(long, default_value = "results")]
    pub out: PathBuf,
    /// Write into `--out` even if it is a non-empty directory that is not a lab run.
    #[arg(long)]
    pub force_out: bool,
    /// No progress bar.
    #[arg(long)]
    pub quiet: bool,
}

/// A command around `run` (which writes `OUT/<dir>/` and returns the section): claims `--out`,
/// shows the progress bar, writes `OUT/<dir>.md`.
fn command(
    args: &PresetArgs,
    dir: &str,
    title: &str,
    run: impl FnOnce(&Path, &Device, &ProgressBar) -> Result<String>,
) -> Result<()> {
    let _run_dir = crate::outdir::claim(&args.out, args.force_out)?;
    let progress = crate::reproduce::progress_bar(args.quiet);
    let section = run(&args.out, &crate::train::device(), &progress)?;
    progress.finish_and_clear();
    let path = args.out.join(format!("{dir}.md"));
    write_atomic(&path, format!("# {title}\n\n{section}").as_bytes())?;
    eprintln!(
        "wrote {} and {}",
        path.display(),
        args.out.join(dir).display()
    );
    Ok(())
}

/// `method` at radius `rho` over momentum SGD (dampening 0, no weight decay: the experiments
/// train without regularisation), ρ constant.
fn optimizer(method: Method, rho: f64, momentum: f64) -> Result<SharpnessAware> {
    Ok(SharpnessAware::from_boxed(
        methods::estimator(method, &MethodParams::default())?,
        base::sgd(momentum, 0.0, false)?,
        RhoSchedule::constant(rho)?,
    ))
}

/// One epoch over `split` in the order of (`seed`, `epoch`), cross-entropy per batch, pass-0
/// training accuracy counted.
#[allow(clippy::too_many_arguments)]
fn epoch(
    optimizer: &mut SharpnessAware,
    model: Network,
    lr: f64,
    split: &Split,
    batch_size: usize,
    (seed, epoch): (u64, usize),
    loss_fn: &CrossEntropyLoss,
    device: &Device,
) -> Result<(Network, EpochSummary)> {
    let order = data::epoch_order(split.n, seed, epoch);
    let objective = |batch: &[usize], step| {
        let (x, y) = batch_tensors(split, batch, device);
        BatchObjective {
            x,
            y,
            loss_fn,
            train: split,
            seed,
            step,
            device,
            first_logits: None,
        }
    };
    train_epoch(optimizer, model, lr, &order, batch_size, objective, None)
}

/// Mean cross-entropy and accuracy of `model` on `split` (evaluation mode).
fn measure(
    model: &Network,
    split: &Split,
    loss_fn: &CrossEntropyLoss,
    device: &Device,
) -> (f64, f64) {
    evaluate(model, split, |logits, y| loss_fn.forward(logits, y), device)
}

/// Records that survive an interrupted invocation: `dir/records.csv`, valid while
/// `dir/resume_key.json` holds the same key (settings and data hash). An experiment reads the
/// earlier records, skips the runs they complete, and saves after every run.
struct ResumeFile {
    dir: PathBuf,
    key: serde_json::Value,
}

impl ResumeFile {
    const KEY: &'static str = "resume_key.json";
    const RECORDS: &'static str = "records.csv";

    fn new(dir: &Path, key: serde_json::Value) -> Self {
        Self {
            dir: dir.to_path_buf(),
            key,
        }
    }

    /// The records written under the same key (none if the key differs or nothing is there).
    fn earlier<T: DeserializeOwned>(&self) -> Vec<T> {
        let same = std::fs::read(self.dir.join(Self::KEY))
            .ok()
            .and_then(|b| serde_json::from_slice::<serde_json::Value>(&b).ok())
            .is_some_and(|earlier| earlier == self.key);
        if !same {
            return vec![];
        }
        let Ok(mut reader) = csv::Reader::from_path(self.dir.join(Self::RECORDS)) else {
            return vec![];
        };
        reader
            .deserialize()
            .collect::<Result<_, _>>()
            .unwrap_or_default()
    }

    /// Writes the key, then the records (each atomically).
    fn save<T: Serialize>(&self, records: &[T]) -> Result<()> {
        write_atomic(
            &self.dir.join(Self::KEY),
            serde_json::to_string_pretty(&self.key)?.as_bytes(),
        )?;
        write_atomic(&self.dir.join(Self::RECORDS), &csv_bytes(records)?)
            .with_context(|| format!("saving the records of {}", self.dir.display()))
    }
}

/// An experiment as a `reproduce` section: its reduced preset run by `run` into `out` (left out
/// under `--quick`), followed by the command of its full preset.
fn reproduce_section(
    out: &Path,
    progress: &ProgressBar,
    title: &str,
    command: &str,
    run: impl FnOnce(&Path, &Device, &ProgressBar) -> Result<String>,
) -> Result<ReportSection> {
    if crate::reproduce::quick() {
        return Ok(skipped_by_quick(title, command));
    }
    let body = run(out, &crate::train::device(), progress)?;
    Ok(ReportSection {
        title: title.into(),
        body: body + &format!("\nThe full preset: `sharpness-lab {command}`.\n"),
    })
}

/// The section of an experiment that `reproduce --quick` leaves out (its reduced preset alone
/// takes longer than the whole smoke run may).
pub fn skipped_by_quick(title: &str, command: &str) -> ReportSection {
    ReportSection {
        title: title.into(),
        body: format!(
            "Not run by `reproduce --quick`; `sharpness-lab reproduce` runs its reduced preset, \
             `sharpness-lab {command} --reduced` alone.\n"
        ),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[derive(Clone, Debug, Serialize, serde::Deserialize, PartialEq)]
    struct Row {
        name: String,
        value: f64,
    }

    #[test]
    fn records_come_back_only_under_the_same_key() {
        let tmp = tempfile::tempdir().unwrap();
        let rows = vec![
            Row {
                name: "a".into(),
                value: 0.1 + 1e-17,
            },
            Row {
                name: "b".into(),
                value: f64::NAN,
            },
        ];
        let file = ResumeFile::new(tmp.path(), serde_json::json!({ "lr": 0.1 }));
        assert!(file.earlier::<Row>().is_empty());
        file.save(&rows).unwrap();
        let back: Vec<Row> = file.earlier();
        assert_eq!(back.len(), 2);
        assert_eq!(back[0], rows[0]);
        assert!(back[1].value.is_nan());
        let other = ResumeFile::new(tmp.path(), serde_json::json!({ "lr": 0.2 }));
        assert!(other.earlier::<Row>().is_empty());
    }
}
