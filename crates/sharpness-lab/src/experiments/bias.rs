//! The explicit-bias experiment of the universal-SAM paper (Tahmasebi et al., ICML 2024, Fig. 2;
//! `docs/algorithms.md` §7.5): train a 6-layer ReLU MLP on MNIST with Frob-SAM (and Trace-SAM) for a range of λ
//! and follow the sharpness measure each one biases towards — ‖∇²L‖²_F (and tr ∇²L) of the
//! first 1 280 training examples, evaluated after every epoch with the library's
//! [`sharpness::measure`] — next to the test accuracy. The paper's claim: the Frobenius norm
//! falls as λ grows.
//!
//! Model: 784 → 128 → 128 → 128 → 128 → 128 → 10, ReLU after every hidden layer, cross-entropy
//! on the logits (= NLL of log-softmax), PyTorch's default initialisation. The reference code
//! (`models/build.py`, `simple_mnist`) applies its `fc2` twice, i.e. seven affine maps with one
//! shared; we follow the paper's description (six distinct Linear layers).
//! Training: momentum SGD (lr 10⁻³, momentum 0.9, dampening 0, no weight decay), batch 128,
//! constant learning rate, ρ = 0.01; Frob-SAM with m = 2 Gaussian samples; Trace-SAM with m = 1
//! per-coordinate Gaussian samples (what the reference code ran; `docs/algorithms.md` §7.3).
//! Measures: [`Hessian`] in evaluation mode and `f64`, central differences with h = 10⁻⁵,
//! Gaussian probes for ‖H‖²_F = E‖Hv‖², Rademacher probes for tr H = E vᵀHv.

use std::path::{Path, PathBuf};
use std::time::Instant;

use anyhow::{Context, Result, bail};
use burn::module::{Module, Param};
use burn::nn::{Linear, LinearConfig};
use burn::prelude::*;
use burn::tensor::activation::{log_softmax, relu};
use burn::tensor::{DType, TensorData};
use indicatif::ProgressBar;
use plotters::style::RGBColor;
use rand::rngs::Xoshiro256PlusPlus;
use rand::{RngExt, SeedableRng};
use serde::Serialize;
use sharpness::measure::{Batches, DatasetLoss, Hessian, MeasureConfig};
use sharpness::optim::base;
use sharpness::{RhoSchedule, SharpnessAware};

use crate::data::{self, DatasetName, IMAGE_PIXELS, NUM_CLASSES, Split, Variant};
use crate::methods::{self, Method, MethodParams};
use crate::report::{
    Figure, Panel, ReportSection, Series, Style, csv_bytes, markdown_table, write_atomic,
};

/// How much of the paper's protocol to run.
#[derive(Clone, Copy, Debug, PartialEq, Eq, clap::ValueEnum)]
pub enum Preset {
    /// The paper's: 60 000 training examples, 20 epochs, 100 probes, Frob-SAM
    /// λ ∈ {0, 10⁻³, 5·10⁻³, 10⁻², 5·10⁻²}, Trace-SAM λ ∈ {0, 0.01, 0.1, 1}.
    Full,
    /// For `reproduce` (about 3 minutes on 2 cores): the full training set for 3 epochs,
    /// 20 probes, Frob-SAM λ ∈ {0, 10⁻², 5·10⁻²}, Trace-SAM λ ∈ {0, 1}.
    Reduced,
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
    /// Seed of the initialisation, the shuffles and the samplers.
    pub seed: u64,
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
            seed: 0,
        };
        match self {
            Preset::Full => common,
            Preset::Reduced => Settings {
                epochs: 3,
                probes: 20,
                frob_lambdas: vec![0.0, 1e-2, 5e-2],
                trace_lambdas: vec![0.0, 1.0],
                ..common
            },
        }
    }
}

/// `sharpness-lab bias` flags.
#[derive(clap::Args, Debug, Clone)]
pub struct BiasArgs {
    /// Run the reduced preset (3 epochs, 20 probes, fewer λ) instead of the paper's.
    #[arg(long)]
    pub reduced: bool,
    /// Output directory (files go to OUT/bias/, the report section to OUT/bias.md).
    #[arg(long, default_value = "results")]
    pub out: PathBuf,
    /// Write into `--out` even if it is a non-empty directory that is not a lab run.
    #[arg(long)]
    pub force_out: bool,
}

/// `sharpness-lab bias`.
pub fn cli(args: BiasArgs) -> Result<()> {
    let preset = if args.reduced {
        Preset::Reduced
    } else {
        Preset::Full
    };
    let _run_dir = crate::outdir::claim(&args.out, args.force_out)?;
    let section = run(preset, &args.out)?;
    let path = args.out.join("bias.md");
    write_atomic(&path, section.as_bytes())?;
    eprintln!(
        "wrote {} and {}",
        path.display(),
        args.out.join("bias").display()
    );
    Ok(())
}

/// The reduced preset as a section of `reproduce`.
pub fn reproduce(out: &Path, progress: &ProgressBar) -> Result<ReportSection> {
    let body = run_with(Preset::Reduced, out, Some(progress))?;
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
pub fn run(preset: Preset, out_dir: &Path) -> Result<String> {
    run_with(preset, out_dir, None)
}

/// The 6-layer MLP of the experiment.
#[derive(Module, Debug)]
pub struct Mlp6 {
    layers: Vec<Linear>,
}

impl Mlp6 {
    /// Hidden width.
    pub const WIDTH: usize = 128;

    /// PyTorch's default initialisation, U(−1/√fan_in, 1/√fan_in) for weights and biases, from a
    /// seeded generator.
    pub fn new(seed: u64, device: &Device) -> Self {
        let mut rng = Xoshiro256PlusPlus::seed_from_u64(seed ^ 0x6269_6173);
        let dims = [
            IMAGE_PIXELS,
            Self::WIDTH,
            Self::WIDTH,
            Self::WIDTH,
            Self::WIDTH,
            Self::WIDTH,
            NUM_CLASSES,
        ];
        let mut uniform = |n: usize, bound: f64| -> Vec<f32> {
            (0..n)
                .map(|_| rng.random_range(-bound..bound) as f32)
                .collect()
        };
        let layers = dims
            .windows(2)
            .map(|w| {
                let (d_in, d_out) = (w[0], w[1]);
                let bound = 1.0 / (d_in as f64).sqrt();
                let mut layer = LinearConfig::new(d_in, d_out).init(device);
                layer.weight = Param::from_tensor(Tensor::from_data(
                    TensorData::new(uniform(d_in * d_out, bound), [d_in, d_out]),
                    device,
                ));
                layer.bias = Some(Param::from_tensor(Tensor::from_data(
                    TensorData::new(uniform(d_out, bound), [d_out]),
                    device,
                )));
                layer
            })
            .collect();
        Self { layers }
    }

    /// Logits `[b, 10]` of flat images `[b, 784]`.
    pub fn forward(&self, x: Tensor<2>) -> Tensor<2> {
        let last = self.layers.len() - 1;
        self.layers.iter().enumerate().fold(x, |h, (i, layer)| {
            let h = layer.forward(h);
            if i < last { relu(h) } else { h }
        })
    }

    /// Logits with the ReLU activation pattern fixed by `masks` (one 0/1 tensor per hidden layer,
    /// in the input's dtype) instead of recomputed from the pre-activations.
    pub fn forward_masked(&self, x: Tensor<2>, masks: &[Tensor<2>]) -> Tensor<2> {
        let last = self.layers.len() - 1;
        self.layers.iter().enumerate().fold(x, |h, (i, layer)| {
            let h = layer.forward(h);
            if i < last { h * masks[i].clone() } else { h }
        })
    }

    /// The ReLU activation pattern (pre-activation > 0) of every hidden layer on `x`.
    pub fn relu_masks(&self, x: Tensor<2>) -> Vec<Tensor<2>> {
        let last = self.layers.len() - 1;
        let mut masks = Vec::with_capacity(last);
        let mut h = x;
        for layer in self.layers.iter().take(last) {
            let z = layer.forward(h);
            let mask = z.clone().greater_elem(0.0).float();
            h = z * mask.clone();
            masks.push(mask);
        }
        masks
    }
}

/// Mean cross-entropy of logits against labels.
fn cross_entropy(logits: Tensor<2>, labels: Tensor<1, Int>) -> Tensor<1> {
    let [b, _] = logits.dims();
    log_softmax(logits, 1)
        .gather(1, labels.reshape([b, 1]))
        .mean()
        .neg()
}

/// Flat images `[b, 784]` (f32) and labels of the examples `indices` (the training loop's
/// batches, flattened for the MLP).
fn batch(split: &Split, indices: &[usize], device: &Device) -> (Tensor<2>, Tensor<1, Int>) {
    let (x, y) = crate::train::batch_tensors(split, indices, device);
    (x.reshape([indices.len(), IMAGE_PIXELS]), y)
}

fn test_accuracy(model: &Mlp6, test: &Split, device: &Device) -> f64 {
    let model = model.valid();
    let device = device.clone().inner();
    let indices: Vec<usize> = (0..test.n).collect();
    let mut correct = 0usize;
    for chunk in indices.chunks(1000) {
        let (x, y) = batch(test, chunk, &device);
        let predicted = model.forward(x).argmax(1).reshape([chunk.len()]);
        correct += predicted.equal(y).int().sum().into_scalar::<i64>() as usize;
    }
    correct as f64 / test.n.max(1) as f64
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
    frobenius: bool,
    trace: bool,
}

fn runs(settings: &Settings) -> Vec<Run> {
    // λ = 0 is SGD, shared by both sweeps and measured with both measures.
    let mut runs = vec![Run {
        method: Method::Sgd,
        lambda: 0.0,
        frobenius: true,
        trace: true,
    }];
    for &lambda in settings.frob_lambdas.iter().filter(|&&l| l > 0.0) {
        runs.push(Run {
            method: Method::FrobSam,
            lambda,
            frobenius: true,
            trace: false,
        });
    }
    for &lambda in settings.trace_lambdas.iter().filter(|&&l| l > 0.0) {
        runs.push(Run {
            method: Method::TraceSam,
            lambda,
            frobenius: false,
            trace: true,
        });
    }
    runs
}

fn run_with(preset: Preset, out_dir: &Path, progress: Option<&ProgressBar>) -> Result<String> {
    let settings = preset.settings();
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
    let runs = runs(&settings);
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
        let done = series_of(&earlier, run.method.name(), run.lambda);
        if done.len() == settings.epochs + 1 {
            records.extend(done.into_iter().cloned());
            if let Some(p) = progress {
                p.inc((settings.epochs + 1) as u64);
            }
            continue;
        }
        records.extend(train_run(
            run,
            &settings,
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
        serde_json::to_string_pretty(&serde_json::json!({ "preset": format!("{preset:?}"), "settings": settings, "records": records }))?
            .as_bytes(),
    )?;
    plot(&settings, &records, &dir)?;
    Ok(section(preset, &settings, &records, total))
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
        sampler_seed: settings.seed,
        ..MethodParams::default()
    };
    let estimator = methods::estimator(run.method, &params)?;
    let mut optimizer = SharpnessAware::from_boxed(
        estimator,
        base::sgd(settings.momentum, 0.0, false)?,
        RhoSchedule::constant(settings.rho)?,
    );
    let mut model = Mlp6::new(settings.seed, device);
    let mut records = Vec::new();
    let steps = train.n / settings.batch_size;
    for epoch in 0..=settings.epochs {
        let t = Instant::now();
        let mut loss_sum = 0.0;
        if epoch > 0 {
            let order = data::epoch_order(train.n, settings.seed, epoch - 1);
            for chunk in order.chunks_exact(settings.batch_size) {
                let (x, y) = batch(train, chunk, device);
                let mut objective = |m: &Mlp6| cross_entropy(m.forward(x.clone()), y.clone());
                let step = optimizer
                    .step(&model, settings.lr, &mut objective)
                    .with_context(|| format!("{name} λ = {}: epoch {epoch}", run.lambda))?;
                model = step.model;
                loss_sum += step.loss;
            }
        }
        let epoch_seconds = t.elapsed().as_secs_f64();
        let data = measurement_data(
            &model,
            train,
            settings.measure_examples,
            settings.batch_size,
            device,
        );
        let mut hessian = Hessian::new(&model, data, MeasureConfig::default())?;
        let seed = settings.seed ^ (epoch as u64) << 8;
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
        let test_acc = test_accuracy(&model, test, device);
        let record = EpochRecord {
            method: name.into(),
            lambda: run.lambda,
            epoch,
            train_loss: if epoch > 0 {
                loss_sum / steps as f64
            } else {
                f64::NAN
            },
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
            "bias: {name} λ={} epoch {epoch}/{}: loss {:.4} test acc {:.2}% ‖H‖²_F {:.4e} tr H {:.4e} ({:.1} s train, {:.1} s + {:.1} s measures)",
            run.lambda,
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

const COLORS: [RGBColor; 6] = [
    RGBColor(0, 0, 0),
    RGBColor(31, 119, 180),
    RGBColor(44, 160, 44),
    RGBColor(255, 127, 14),
    RGBColor(214, 39, 40),
    RGBColor(148, 103, 189),
];

fn series_of<'a>(records: &'a [EpochRecord], method: &str, lambda: f64) -> Vec<&'a EpochRecord> {
    records
        .iter()
        .filter(|r| r.method == method && r.lambda == lambda)
        .collect()
}

/// The runs of one sweep: SGD then the method's λ > 0.
fn sweep<'a>(
    records: &'a [EpochRecord],
    method: &str,
    lambdas: &[f64],
) -> Vec<(f64, Vec<&'a EpochRecord>)> {
    lambdas
        .iter()
        .map(|&l| {
            (
                l,
                if l == 0.0 {
                    series_of(records, "sgd", 0.0)
                } else {
                    series_of(records, method, l)
                },
            )
        })
        .filter(|(_, s)| !s.is_empty())
        .collect()
}

fn range(values: impl Iterator<Item = f64>) -> (f64, f64) {
    let (lo, hi) = values
        .filter(|v| v.is_finite())
        .fold((f64::INFINITY, f64::NEG_INFINITY), |(a, b), v| {
            (a.min(v), b.max(v))
        });
    if !lo.is_finite() {
        return (0.0, 1.0);
    }
    let pad = ((hi - lo) * 0.08).max(1e-9);
    (lo - pad, hi + pad)
}

fn plot(settings: &Settings, records: &[EpochRecord], dir: &Path) -> Result<()> {
    let epochs = (0.0, settings.epochs as f64);
    for (method, lambdas, label, log_scale, file) in [
        (
            "frob-sam",
            &settings.frob_lambdas,
            "log10 ‖∇²L‖²_F",
            true,
            "frobenius",
        ),
        (
            "trace-sam",
            &settings.trace_lambdas,
            "tr ∇²L",
            false,
            "trace",
        ),
    ] {
        let runs = sweep(records, method, lambdas);
        let measure = |r: &EpochRecord| {
            let v = if method == "frob-sam" {
                r.frobenius
            } else {
                r.trace
            };
            if log_scale { v.log10() } else { v }
        };
        let mut sharp = Panel::new(
            format!(
                "{label}, first {} training examples",
                settings.measure_examples
            ),
            "epoch",
            label,
            epochs,
            range(runs.iter().flat_map(|(_, s)| s.iter().map(|r| measure(r)))),
        );
        let mut acc =
            Panel::new(
                "test accuracy (%)",
                "epoch",
                "test accuracy (%)",
                epochs,
                range(runs.iter().flat_map(|(_, s)| {
                    s.iter().filter(|r| r.epoch > 0).map(|r| 100.0 * r.test_acc)
                })),
            );
        acc.legend = Some(plotters::chart::SeriesLabelPosition::LowerRight);
        for (i, (lambda, s)) in runs.iter().enumerate() {
            let name = if *lambda == 0.0 {
                "SGD (λ = 0)".to_string()
            } else {
                format!("λ = {lambda}")
            };
            let color = COLORS[i % COLORS.len()];
            sharp.series.push(Series::new(
                &name,
                s.iter().map(|r| (r.epoch as f64, measure(r))).collect(),
                color,
                Style::LinePoints(3),
            ));
            acc.series.push(Series::new(
                &name,
                s.iter()
                    .filter(|r| r.epoch > 0)
                    .map(|r| (r.epoch as f64, 100.0 * r.test_acc))
                    .collect(),
                color,
                Style::LinePoints(3),
            ));
        }
        let title = if method == "frob-sam" {
            "Frob-SAM"
        } else {
            "Trace-SAM"
        };
        Figure {
            title: format!(
                "{title} on MNIST (6×128 ReLU MLP, ρ = {}, {} training examples, {} probes)",
                settings.rho, settings.train_examples, settings.probes
            ),
            panels: vec![sharp, acc],
            cols: 2,
            panel_size: (620, 480),
        }
        .save(&dir.join(file))?;
    }
    Ok(())
}

fn fmt_estimate(mean: f64, se: f64) -> String {
    if mean.is_finite() {
        format!("{mean:.4e} ± {se:.1e}")
    } else {
        "–".into()
    }
}

/// The mean of the finite values (timings of runs that were not measured are NaN).
fn mean(values: impl Iterator<Item = f64>) -> f64 {
    let finite: Vec<f64> = values.filter(|x| x.is_finite()).collect();
    crate::stats::mean(&finite)
}

fn section(
    preset: Preset,
    settings: &Settings,
    records: &[EpochRecord],
    total_seconds: f64,
) -> String {
    let mut body = format!(
        "Preset `{preset:?}`: {} MNIST training examples, {} epochs, batch {}, momentum SGD (lr {}, momentum {}, \
         dampening 0, no weight decay), ρ = {}, Frob-SAM m = 2, Trace-SAM m = 1 with per-coordinate Gaussian samples \
         (as the reference code ran). Model: 784–128–128–128–128–128–10 ReLU MLP with six distinct Linear layers as the \
         paper describes (the reference code applies `fc2` twice: seven affine maps, one shared). After every epoch: \
         ‖∇²L‖²_F (Gaussian probes, E‖Hv‖²) and tr ∇²L (Rademacher probes, Hutchinson) with {} probes on the first {} \
         training examples in batches of {} (evaluation mode, `f64`, central differences h = 10⁻⁵ with the ReLU \
         activation pattern frozen at w, i.e. the almost-everywhere Hessian that double backprop gives; \
         `sharpness::measure::Hessian`), and the accuracy on the 10 000 test images. Estimates are mean ± standard error \
         over probes. Run time {:.0} s.\n\n",
        settings.train_examples,
        settings.epochs,
        settings.batch_size,
        settings.lr,
        settings.momentum,
        settings.rho,
        settings.probes,
        settings.measure_examples,
        settings.batch_size,
        total_seconds
    );
    for (method, lambdas, title, file) in [
        ("frob-sam", &settings.frob_lambdas, "Frob-SAM", "frobenius"),
        ("trace-sam", &settings.trace_lambdas, "Trace-SAM", "trace"),
    ] {
        let runs = sweep(records, method, lambdas);
        body.push_str(&format!("**{title}** ([PNG](bias/{file}.png), [SVG](bias/{file}.svg))\n\n![{title}](bias/{file}.png)\n\n"));
        let rows: Vec<Vec<String>> = runs
            .iter()
            .filter_map(|(lambda, s)| {
                let last = s.last()?;
                Some(vec![
                    if *lambda == 0.0 {
                        "0 (SGD)".into()
                    } else {
                        format!("{lambda}")
                    },
                    fmt_estimate(last.frobenius, last.frobenius_se),
                    fmt_estimate(last.trace, last.trace_se),
                    format!("{:.2}", 100.0 * last.test_acc),
                    format!("{:.4}", last.train_loss),
                ])
            })
            .collect();
        body.push_str(&markdown_table(
            &[
                "λ",
                "final ‖∇²L‖²_F",
                "final tr ∇²L",
                "final test acc. (%)",
                "final train loss",
            ],
            &rows,
        ));
        let finals: Vec<(f64, f64)> = runs
            .iter()
            .filter_map(|(l, s)| {
                s.last().map(|r| {
                    (
                        *l,
                        if method == "frob-sam" {
                            r.frobenius
                        } else {
                            r.trace
                        },
                    )
                })
            })
            .collect();
        let decreasing = finals.windows(2).all(|w| w[1].1 < w[0].1);
        let measure = if method == "frob-sam" {
            "‖∇²L‖²_F"
        } else {
            "tr ∇²L"
        };
        let claim = if method == "frob-sam" {
            "Paper (Fig. 2): the Frobenius norm of the Hessian falls as λ grows (Frob-SAM lowers ‖∇²L‖²_F roughly in proportion to λ)."
        } else {
            "Expected by the same theory (Theorem 3; not a figure of the paper): Trace-SAM's bias λρ²/2·tr ∇²L lowers the trace as λ grows."
        };
        let verdict = if decreasing {
            format!(
                "**Measured:** the final {measure} decreases monotonically with λ — consistent with the claim."
            )
        } else {
            format!(
                "**Measured:** the final {measure} is *not* monotonically decreasing in λ (see the table) — the claim is not reproduced at this budget."
            )
        };
        let caveat = if preset == Preset::Reduced {
            " *Caveat:* after 3 epochs at lr 10⁻³ the networks are still leaving the initial plateau (test accuracy < 50 %), and a higher training loss alone lowers the curvature; the `Full` preset (20 epochs) is the test of the claim."
        } else {
            ""
        };
        body.push_str(&format!("\n{claim}\n{verdict}{caveat}\n\n"));
    }
    // Timings and the full preset's expected run time.
    let epoch_time = |method: &str| {
        mean(
            records
                .iter()
                .filter(|r| r.method == method && r.epoch > 0)
                .map(|r| r.epoch_seconds),
        )
    };
    let frob_time = mean(
        records
            .iter()
            .filter(|r| r.frobenius.is_finite())
            .map(|r| r.frobenius_seconds),
    );
    let trace_time = mean(
        records
            .iter()
            .filter(|r| r.trace.is_finite())
            .map(|r| r.trace_seconds),
    );
    let per_example = |method: &str| epoch_time(method) / settings.train_examples as f64;
    let full = Preset::Full.settings();
    let per_probe = |t: f64| t / settings.probes as f64;
    let full_runs = runs(&full);
    let full_seconds: f64 = full_runs
        .iter()
        .map(|r| {
            let train =
                per_example(r.method.name()) * full.train_examples as f64 * full.epochs as f64;
            let measures = (full.epochs + 1) as f64
                * full.probes as f64
                * (if r.frobenius {
                    per_probe(frob_time)
                } else {
                    0.0
                } + if r.trace { per_probe(trace_time) } else { 0.0 });
            train + measures
        })
        .sum();
    body.push_str(&format!(
        "**Cost** (this machine, release build): one epoch over {} examples takes {:.1} s with SGD, {:.1} s with Frob-SAM \
         (3 passes per step) and {:.1} s with Trace-SAM (2 passes); one ‖∇²L‖²_F estimate ({} probes = {} gradients over \
         {} examples in `f64`) takes {:.1} s ({:.2} s per probe), one trace estimate {:.1} s. Expected time of the `Full` \
         preset ({} runs × {} epochs on 60 000 examples, 100 probes): about {:.0} min.\n",
        settings.train_examples,
        epoch_time("sgd"),
        epoch_time("frob-sam"),
        epoch_time("trace-sam"),
        settings.probes,
        2 * settings.probes,
        settings.measure_examples,
        frob_time,
        per_probe(frob_time),
        trace_time,
        full_runs.len(),
        full.epochs,
        full_seconds / 60.0
    ));
    body
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn mlp_has_six_layers_and_the_expected_parameter_count() {
        let device = crate::train::device();
        let model = Mlp6::new(0, &device);
        assert_eq!(model.layers.len(), 6);
        let expected = 784 * 128 + 128 + 4 * (128 * 128 + 128) + 128 * 10 + 10;
        assert_eq!(model.num_params(), expected);
        let logits = model.forward(Tensor::zeros([3, IMAGE_PIXELS], &device));
        assert_eq!(logits.dims(), [3, 10]);
    }

    #[test]
    fn frozen_pattern_forward_equals_the_relu_forward_at_the_same_weights() {
        let device = crate::train::device();
        let model = Mlp6::new(1, &device);
        let x = Tensor::<2>::random(
            [4, IMAGE_PIXELS],
            burn::tensor::Distribution::Normal(0.0, 1.0),
            &device,
        );
        let masks = model.relu_masks(x.clone());
        assert_eq!(masks.len(), 5);
        let diff = (model.forward(x.clone()) - model.forward_masked(x, &masks))
            .abs()
            .max()
            .into_scalar::<f64>();
        assert!(diff < 1e-6, "{diff}");
    }

    #[test]
    fn an_interrupted_invocation_resumes_from_its_completed_runs() {
        let tmp = tempfile::tempdir().unwrap();
        let dir = tmp.path();
        let record = |method: &str, epoch| EpochRecord {
            method: method.into(),
            lambda: 0.01,
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
    }
}
