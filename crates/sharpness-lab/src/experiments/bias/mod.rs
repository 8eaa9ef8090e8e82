//! The explicit-bias experiment of the universal-SAM paper (Tahmasebi et al., ICML 2024, Fig. 2;
//! `docs/algorithms.md` §7.5): train a 6-layer ReLU MLP on MNIST with Frob-SAM (and Trace-SAM) for a range of λ
//! and follow the sharpness measure each one biases towards — ‖∇²L‖²_F (and tr ∇²L) of the
//! first 1 280 training examples, evaluated after every epoch with the library's
//! [`sharpness::measure`] — next to the test accuracy. The paper's claim: the Frobenius norm
//! falls as λ grows.
//!
//! Model: [`Mlp6`] (six distinct Linear layers, as the paper describes), cross-entropy on the
//! logits (= NLL of log-softmax). Training and test accuracy go through the shared epoch loop and
//! evaluation ([`crate::train::epoch`]); this module keeps what is the experiment's own (presets,
//! the runs, the Hessian measurement, resuming) and [`report`] its figures and text.
//! Training: momentum SGD (lr 10⁻³, momentum 0.9, dampening 0, no weight decay), batch 128,
//! constant learning rate, ρ = 0.01; Frob-SAM with m = 2 Gaussian samples; Trace-SAM with m = 1
//! per-coordinate Gaussian samples (what the reference code ran; `docs/algorithms.md` §7.3).
//! Measures: [`Hessian`] in evaluation mode and `f64`, central differences with h = 10⁻⁵,
//! Gaussian probes for ‖H‖²_F = E‖Hv‖², Rademacher probes for tr H = E vᵀHv.

use std::path::{Path, PathBuf};
use std::time::Instant;

use anyhow::{Context, Result, bail};
use burn::module::Module;
use burn::prelude::*;
use burn::tensor::DType;
use indicatif::ProgressBar;
use serde::Serialize;
use sharpness::measure::{Batches, DatasetLoss, Hessian, MeasureConfig};
use sharpness::optim::base;
use sharpness::{RhoSchedule, SharpnessAware};

use crate::data::{self, DatasetName, IMAGE_PIXELS, Split, Variant};
use crate::methods::{self, Method, MethodParams};
use crate::models::Mlp6;
use crate::report::{ReportSection, csv_bytes, write_atomic};
use crate::train::{Classifier, cross_entropy, evaluate, train_epoch};

mod report;

/// How much of the paper's protocol to run.
#[derive(Clone, Copy, Debug, PartialEq, Eq, clap::ValueEnum)]
pub enum Preset {
    /// The paper's: 60 000 training examples, 20 epochs, 100 probes, Frob-SAM
    /// λ ∈ {0, 10⁻³, 5·10⁻³, 10⁻², 5·10⁻²}, Trace-SAM λ ∈ {0, 0.01, 0.1, 1}.
    Full,
    /// For `reproduce`: see [`Preset::settings`].
    Reduced,
    /// For `reproduce --quick`: a smoke run, not informative.
    Quick,
}

/// The settings of a preset.
#[derive(Clone, Debug, Serialize)]
pub struct Settings {
    /// Training examples (the first ones of the training set).
    pub train_examples: usize,
    /// Epochs.
    pub epochs: usize,
    /// Probes per Hessian estimate.
    pub probes: usize,
    /// Examples the Hessian is measured on (the first ones of the training set).
    pub measure_examples: usize,
    /// Frob-SAM strengths (0 = SGD).
    pub frob_lambdas: Vec<f64>,
    /// Trace-SAM strengths (0 = SGD).
    pub trace_lambdas: Vec<f64>,
    /// Perturbation radius.
    pub rho: f64,
    /// Learning rate.
    pub lr: f64,
    /// Momentum.
    pub momentum: f64,
    /// Batch size (training and measurement).
    pub batch_size: usize,
    /// Seeds of the initialisation, the shuffles and the samplers (one run per seed and λ).
    pub seeds: Vec<u64>,
}

impl Preset {
    /// The preset's settings.
    pub fn settings(self) -> Settings {
        let common = Settings {
            train_examples: 60_000,
            epochs: 20,
            probes: 100,
            measure_examples: 1280,
            frob_lambdas: vec![0.0, 1e-3, 5e-3, 1e-2, 5e-2],
            trace_lambdas: vec![0.0, 0.01, 0.1, 1.0],
            rho: 0.01,
            lr: 1e-3,
            momentum: 0.9,
            batch_size: 128,
            seeds: vec![0],
        };
        match self {
            Preset::Full => common,
            // The paper's data and learning rate for 8 of its 20 epochs: measured here, SGD leaves
            // the initial plateau in epoch 4 (test accuracy 45 % after 3 epochs, 81 % after 4,
            // 92.6 % after 8) and Frob-SAM with λ = 0.01 then holds ‖∇²L‖²_F at a third of
            // SGD's. All of the paper's Frob-SAM λ, one Trace-SAM λ, 15 probes, one seed.
            Preset::Reduced => Settings {
                epochs: 8,
                probes: 15,
                trace_lambdas: vec![0.0, 1.0],
                ..common
            },
            Preset::Quick => Settings {
                train_examples: 1024,
                epochs: 1,
                probes: 4,
                measure_examples: 256,
                frob_lambdas: vec![0.0, 5e-2],
                trace_lambdas: vec![0.0, 1.0],
                ..common
            },
        }
    }
}

/// `sharpness-lab bias` flags.
#[derive(clap::Args, Debug, Clone)]
pub struct BiasArgs {
    /// Run the reduced preset of `reproduce` instead of the paper's.
    #[arg(long, conflicts_with = "quick")]
    pub reduced: bool,
    /// Run the smoke preset of `reproduce --quick` (not informative).
    #[arg(long)]
    pub quick: bool,
    /// Override the preset's epochs.
    #[arg(long)]
    pub epochs: Option<usize>,
    /// Override the preset's training examples (the first ones of MNIST's training set).
    #[arg(long)]
    pub train_examples: Option<usize>,
    /// Override the preset's learning rate.
    #[arg(long)]
    pub lr: Option<f64>,
    /// Override the preset's probes per Hessian estimate.
    #[arg(long)]
    pub probes: Option<usize>,
    /// Override the preset's seeds.
    #[arg(long, value_delimiter = ',')]
    pub seeds: Option<Vec<u64>>,
    /// Override the preset's Frob-SAM λ (0 = SGD).
    #[arg(long, value_delimiter = ',')]
    pub frob_lambdas: Option<Vec<f64>>,
    /// Override the preset's Trace-SAM λ (0 = SGD; none: no Trace-SAM runs).
    #[arg(long, value_delimiter = ',', num_args = 0..)]
    pub trace_lambdas: Option<Vec<f64>>,
    /// Output directory (files go to OUT/bias/, the report section to OUT/bias.md).
    #[arg(long, default_value = "results")]
    pub out: PathBuf,
    /// Write into `--out` even if it is a non-empty directory that is not a lab run.
    #[arg(long)]
    pub force_out: bool,
}

/// `sharpness-lab bias`.
pub fn cli(args: BiasArgs) -> Result<()> {
    let preset = if args.quick {
        Preset::Quick
    } else if args.reduced {
        Preset::Reduced
    } else {
        Preset::Full
    };
    let mut settings = preset.settings();
    let overridden = args.epochs.is_some()
        || args.train_examples.is_some()
        || args.lr.is_some()
        || args.probes.is_some()
        || args.seeds.is_some()
        || args.frob_lambdas.is_some()
        || args.trace_lambdas.is_some();
    settings.epochs = args.epochs.unwrap_or(settings.epochs);
    settings.train_examples = args.train_examples.unwrap_or(settings.train_examples);
    settings.lr = args.lr.unwrap_or(settings.lr);
    settings.probes = args.probes.unwrap_or(settings.probes);
    settings.seeds = args.seeds.unwrap_or(settings.seeds);
    settings.frob_lambdas = args.frob_lambdas.unwrap_or(settings.frob_lambdas);
    settings.trace_lambdas = args.trace_lambdas.unwrap_or(settings.trace_lambdas);
    settings.validate()?;
    let _run_dir = crate::outdir::claim(&args.out, args.force_out)?;
    let name = format!(
        "{preset:?}{}",
        if overridden { " (overridden)" } else { "" }
    );
    let section = run(&name, &settings, &args.out)?;
    let path = args.out.join("bias.md");
    let device = crate::device::name();
    write_atomic(
        &path,
        format!("{section}\nComputed on {device}.\n").as_bytes(),
    )?;
    eprintln!(
        "wrote {} and {}",
        path.display(),
        args.out.join("bias").display()
    );
    Ok(())
}

/// The reduced preset (the quick one under `reproduce --quick`) as a section of `reproduce`.
pub fn reproduce(out: &Path, progress: &ProgressBar) -> Result<ReportSection> {
    let preset = if crate::reproduce::quick() {
        Preset::Quick
    } else {
        Preset::Reduced
    };
    let body = run_with(
        &format!("{preset:?}"),
        &preset.settings(),
        out,
        Some(progress),
    )?;
    Ok(ReportSection {
        title: SECTION_TITLE.into(),
        body,
    })
}

const SECTION_TITLE: &str =
    "Explicit bias of Frob-SAM and Trace-SAM on MNIST (universal SAM, Fig. 2)";

/// Runs the experiment, writes `out_dir/bias/` (metrics CSV/JSON, figures) and returns the
/// markdown section (figure links relative to `out_dir`).
/// An interrupted invocation resumes: the runs it completed with the same settings and data are
/// read back from `bias/metrics.csv` instead of being trained again.
pub fn run(preset: &str, settings: &Settings, out_dir: &Path) -> Result<String> {
    run_with(preset, settings, out_dir, None)
}

impl Settings {
    /// Refuses settings that cannot run or would count a run twice.
    pub fn validate(&self) -> Result<()> {
        if self.epochs == 0 || self.probes < 2 || self.train_examples < self.batch_size {
            bail!("the explicit-bias runs need ≥ 1 epoch, ≥ 2 probes and ≥ one batch of examples");
        }
        if self.seeds.is_empty()
            || (1..self.seeds.len()).any(|i| self.seeds[..i].contains(&self.seeds[i]))
        {
            bail!("--seeds must list at least one seed, each once");
        }
        for lambdas in [&self.frob_lambdas, &self.trace_lambdas] {
            if lambdas.iter().any(|l| !l.is_finite() || *l < 0.0) {
                bail!("λ must be finite and ≥ 0");
            }
        }
        Ok(())
    }
}

/// Flat images `[b, 784]` (f32) and labels of the examples `indices`, for the measurement's
/// frozen-pattern forward.
fn batch(split: &Split, indices: &[usize], device: &Device) -> (Tensor<2>, Tensor<1, Int>) {
    let (x, y) = crate::train::batch_tensors(split, indices, device);
    (x.reshape([indices.len(), IMAGE_PIXELS]), y)
}

/// The measurement loss: the first `n` training examples in batches, inputs in `f64`, with the
/// ReLU activation pattern **frozen at the measured weights** w.
///
/// Why frozen: a central difference ∇L(w ± h v̂) crosses a ReLU kink wherever a pre-activation
/// lies within ~h·‖x‖/√d of 0; with 1 280 examples × 640 units that happens about once per
/// gradient at h = 10⁻⁵ (measured: ‖H‖²_F estimates jumping by 10⁶ between epochs), and each
/// crossing adds a spike ∝ 1/h. With the pattern fixed, L is smooth along the difference and the
/// product is the Hessian of the linear region containing w — the almost-everywhere Hessian that
/// double backpropagation (PyTorch/PyHessian, the paper's code) computes, since relu'' = 0.
fn measurement_data(
    model: &Mlp6,
    train: &Split,
    n: usize,
    batch_size: usize,
    device: &Device,
) -> impl DatasetLoss<Mlp6> + use<> {
    let indices: Vec<usize> = (0..n.min(train.n)).collect();
    let reference = model.valid();
    let plain = device.clone().inner();
    let batches: Vec<(Tensor<2>, Tensor<1, Int>, Vec<Tensor<2>>, usize)> = indices
        .chunks(batch_size)
        .map(|chunk| {
            let (x, y) = batch(train, chunk, &plain);
            let masks = reference
                .relu_masks(x.clone())
                .into_iter()
                .map(|m| m.cast(DType::F64).autodiff())
                .collect();
            (
                x.cast(DType::F64).autodiff(),
                y.autodiff(),
                masks,
                chunk.len(),
            )
        })
        .collect();
    Batches::new(batches.len(), move |model: &Mlp6, b: usize| {
        let (x, y, masks, n) = &batches[b];
        (
            cross_entropy(model.forward_masked(x.clone(), masks), y.clone()),
            *n,
        )
    })
}

/// One training run's per-epoch record.
#[derive(Clone, Debug, Serialize, serde::Deserialize, PartialEq)]
pub struct EpochRecord {
    /// `sgd`, `frob-sam` or `trace-sam`.
    pub method: String,
    /// λ (0 for SGD).
    pub lambda: f64,
    /// Seed of the run.
    pub seed: u64,
    /// Epoch (1-based; 0 = initialisation).
    pub epoch: usize,
    /// Mean training loss over the epoch's steps (at the unperturbed weights).
    pub train_loss: f64,
    /// Test accuracy.
    pub test_acc: f64,
    /// ‖H‖²_F estimate (NaN where not measured).
    pub frobenius: f64,
    /// Its standard error.
    pub frobenius_se: f64,
    /// tr H estimate (NaN where not measured).
    pub trace: f64,
    /// Its standard error.
    pub trace_se: f64,
    /// Seconds of training in this epoch.
    pub epoch_seconds: f64,
    /// Seconds of the ‖H‖²_F estimate.
    pub frobenius_seconds: f64,
    /// Seconds of the trace estimate.
    pub trace_seconds: f64,
}

/// One run: which method, which λ, which measures.
#[derive(Clone, Copy, Debug)]
struct Run {
    method: Method,
    lambda: f64,
    seed: u64,
    frobenius: bool,
    trace: bool,
}

/// The runs, seed by seed: SGD (λ = 0, shared by both sweeps and measured with both measures,
/// the trace only if there is a Trace-SAM sweep), then Frob-SAM's and Trace-SAM's λ > 0.
fn runs(settings: &Settings) -> Vec<Run> {
    let trace_sweep = settings.trace_lambdas.iter().any(|&l| l > 0.0);
    let mut runs = vec![];
    for &seed in &settings.seeds {
        let run = |method, lambda, frobenius, trace| Run {
            method,
            lambda,
            seed,
            frobenius,
            trace,
        };
        runs.push(run(Method::Sgd, 0.0, true, trace_sweep));
        for &lambda in settings.frob_lambdas.iter().filter(|&&l| l > 0.0) {
            runs.push(run(Method::FrobSam, lambda, true, false));
        }
        for &lambda in settings.trace_lambdas.iter().filter(|&&l| l > 0.0) {
            runs.push(run(Method::TraceSam, lambda, false, true));
        }
    }
    runs
}

fn run_with(
    preset: &str,
    settings: &Settings,
    out_dir: &Path,
    progress: Option<&ProgressBar>,
) -> Result<String> {
    let dir = out_dir.join("bias");
    std::fs::create_dir_all(&dir).with_context(|| format!("creating {}", dir.display()))?;
    let dataset = data::load_verified(
        DatasetName::Mnist,
        Variant::Full,
        &data::fetch::default_cache_dir(),
        0,
    )
    .context("loading MNIST")?;
    let train = data::subset(&dataset.train, settings.train_examples);
    let device = crate::train::device();
    let runs = runs(settings);
    if let Some(p) = progress {
        p.inc_length((runs.len() * (settings.epochs + 1)) as u64);
    }
    let started = Instant::now();
    // Runs completed by an interrupted invocation with the same settings and data are kept.
    let key = serde_json::json!({ "settings": settings, "data_sha256": dataset.sha256 });
    let earlier = earlier_records(&dir, &key);
    write_atomic(
        &dir.join(RESUME_KEY_FILE),
        serde_json::to_string_pretty(&key)?.as_bytes(),
    )?;
    let mut records = Vec::new();
    for run in &runs {
        let done = series_of(&earlier, run.method.name(), run.lambda, run.seed);
        if done.len() == settings.epochs + 1 {
            records.extend(done.into_iter().cloned());
            if let Some(p) = progress {
                p.inc((settings.epochs + 1) as u64);
            }
            continue;
        }
        records.extend(train_run(
            run,
            settings,
            &train,
            &dataset.test,
            &device,
            progress,
        )?);
        write_atomic(&dir.join("metrics.csv"), &csv_bytes(&records)?)?;
    }
    let total = started.elapsed().as_secs_f64();
    write_atomic(
        &dir.join("metrics.json"),
        serde_json::to_string_pretty(
            &serde_json::json!({ "preset": preset, "settings": settings, "records": records }),
        )?
        .as_bytes(),
    )?;
    report::plot(settings, &records, &dir)?;
    Ok(report::section(preset, settings, &records, total))
}

/// What identifies an invocation's results in `bias/`: settings and data hash.
const RESUME_KEY_FILE: &str = "resume_key.json";

/// The records of `dir/metrics.csv` if they were written under `key` (else none).
fn earlier_records(dir: &Path, key: &serde_json::Value) -> Vec<EpochRecord> {
    let same = std::fs::read(dir.join(RESUME_KEY_FILE))
        .ok()
        .and_then(|b| serde_json::from_slice::<serde_json::Value>(&b).ok())
        .is_some_and(|earlier| &earlier == key);
    if !same {
        return vec![];
    }
    let Ok(mut reader) = csv::Reader::from_path(dir.join("metrics.csv")) else {
        return vec![];
    };
    reader
        .deserialize()
        .collect::<Result<_, _>>()
        .unwrap_or_default()
}

fn train_run(
    run: &Run,
    settings: &Settings,
    train: &Split,
    test: &Split,
    device: &Device,
    progress: Option<&ProgressBar>,
) -> Result<Vec<EpochRecord>> {
    let name = run.method.name();
    let params = MethodParams {
        lambda: run.lambda,
        samples: Some(if run.method == Method::FrobSam { 2 } else { 1 }),
        trace_gaussian: true,
        sampler_seed: run.seed,
        ..MethodParams::default()
    };
    let estimator = methods::estimator(run.method, &params)?;
    let mut optimizer = SharpnessAware::from_boxed(
        estimator,
        base::sgd(settings.momentum, 0.0, false)?,
        RhoSchedule::constant(settings.rho)?,
    );
    let mut model = Mlp6::new(run.seed, device);
    let mut records = Vec::new();
    for epoch in 0..=settings.epochs {
        // Epoch 0 measures the initialisation.
        let (mut train_loss, mut epoch_seconds) = (f64::NAN, 0.0);
        if epoch > 0 {
            let order = data::epoch_order(train.n, run.seed, epoch - 1);
            let objective = |indices: &[usize], _step| {
                let (x, y) = crate::train::batch_tensors(train, indices, device);
                move |m: &Mlp6| cross_entropy(m.logits(x.clone()), y.clone())
            };
            let (trained, summary) = train_epoch(
                &mut optimizer,
                model,
                settings.lr,
                &order,
                settings.batch_size,
                objective,
                None,
            )
            .with_context(|| format!("{name} λ = {}: epoch {epoch}", run.lambda))?;
            model = trained;
            (train_loss, epoch_seconds) = (summary.mean_loss, summary.seconds);
        }
        let data = measurement_data(
            &model,
            train,
            settings.measure_examples,
            settings.batch_size,
            device,
        );
        let mut hessian = Hessian::new(&model, data, MeasureConfig::default())?;
        let seed = run.seed ^ (epoch as u64) << 8;
        let t = Instant::now();
        let frobenius = if run.frobenius {
            Some(hessian.frobenius_squared(settings.probes, seed)?)
        } else {
            None
        };
        let frobenius_seconds = t.elapsed().as_secs_f64();
        let t = Instant::now();
        let trace = if run.trace {
            Some(hessian.trace(settings.probes, seed ^ 1)?)
        } else {
            None
        };
        let trace_seconds = t.elapsed().as_secs_f64();
        let (_, test_acc) = evaluate(&model, test, cross_entropy, device);
        let record = EpochRecord {
            method: name.into(),
            lambda: run.lambda,
            seed: run.seed,
            epoch,
            train_loss,
            test_acc,
            frobenius: frobenius.as_ref().map_or(f64::NAN, |e| e.mean),
            frobenius_se: frobenius.as_ref().map_or(f64::NAN, |e| e.std_err),
            trace: trace.as_ref().map_or(f64::NAN, |e| e.mean),
            trace_se: trace.as_ref().map_or(f64::NAN, |e| e.std_err),
            epoch_seconds,
            frobenius_seconds,
            trace_seconds,
        };
        let line = format!(
            "bias: {name} λ={} seed {} epoch {epoch}/{}: loss {:.4} test acc {:.2}% ‖H‖²_F {:.4e} tr H {:.4e} ({:.1} s train, {:.1} s + {:.1} s measures)",
            run.lambda,
            run.seed,
            settings.epochs,
            record.train_loss,
            100.0 * test_acc,
            record.frobenius,
            record.trace,
            epoch_seconds,
            frobenius_seconds,
            trace_seconds
        );
        match progress {
            Some(p) => {
                p.set_message(line);
                p.inc(1);
            }
            None => eprintln!("{line}"),
        }
        if (run.frobenius && !record.frobenius.is_finite())
            || (run.trace && !record.trace.is_finite())
        {
            bail!(
                "{name} λ = {}: non-finite Hessian estimate at epoch {epoch}",
                run.lambda
            );
        }
        records.push(record);
    }
    Ok(records)
}

/// One run's records, in epoch order.
fn series_of<'a>(
    records: &'a [EpochRecord],
    method: &str,
    lambda: f64,
    seed: u64,
) -> Vec<&'a EpochRecord> {
    records
        .iter()
        .filter(|r| r.method == method && r.lambda == lambda && r.seed == seed)
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn an_interrupted_invocation_resumes_from_its_completed_runs() {
        let tmp = tempfile::tempdir().unwrap();
        let dir = tmp.path();
        let record = |method: &str, epoch| EpochRecord {
            method: method.into(),
            lambda: 0.01,
            seed: 0,
            epoch,
            train_loss: f64::NAN,
            test_acc: 0.1 + 1e-17,
            frobenius: 1.0 / 3.0,
            frobenius_se: f64::NAN,
            trace: f64::NAN,
            trace_se: 0.0,
            epoch_seconds: 1.0,
            frobenius_seconds: 2.0,
            trace_seconds: 0.0,
        };
        let records = vec![record("frob-sam", 0), record("frob-sam", 1)];
        write_atomic(&dir.join("metrics.csv"), &csv_bytes(&records).unwrap()).unwrap();
        let key = serde_json::json!({ "settings": Preset::Reduced.settings(), "data_sha256": "a" });
        write_atomic(&dir.join(RESUME_KEY_FILE), key.to_string().as_bytes()).unwrap();
        let earlier = earlier_records(dir, &key);
        assert_eq!(earlier.len(), 2);
        assert_eq!(earlier[0].frobenius, 1.0 / 3.0);
        assert!(earlier[0].train_loss.is_nan());
        let other = serde_json::json!({ "settings": Preset::Full.settings(), "data_sha256": "a" });
        assert!(earlier_records(dir, &other).is_empty());
    }

    #[test]
    fn presets_share_the_paper_hyperparameters() {
        let (full, reduced) = (Preset::Full.settings(), Preset::Reduced.settings());
        assert_eq!(
            (full.lr, full.momentum, full.rho, full.batch_size),
            (1e-3, 0.9, 0.01, 128)
        );
        assert_eq!(
            (full.epochs, full.probes, full.measure_examples),
            (20, 100, 1280)
        );
        assert_eq!(
            (reduced.lr, reduced.rho, reduced.measure_examples),
            (full.lr, full.rho, full.measure_examples)
        );
        assert_eq!(runs(&full).len(), 1 + 4 + 3);
        // The reduced preset trains past the initial plateau with all of the paper's Frob-SAM λ.
        assert!(reduced.epochs >= 8);
        assert_eq!(reduced.frob_lambdas, full.frob_lambdas);
        let quick = Preset::Quick.settings();
        assert!(quick.validate().is_ok() && reduced.validate().is_ok());
        let two_seeds = Settings {
            seeds: vec![3, 5],
            ..full.clone()
        };
        assert_eq!(runs(&two_seeds).len(), 2 * (1 + 4 + 3));
        let repeated = Settings {
            seeds: vec![3, 3],
            ..full
        };
        assert!(repeated.validate().is_err());
    }
}
