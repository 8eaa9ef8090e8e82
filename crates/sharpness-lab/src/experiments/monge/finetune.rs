//! Fine-tuning from a bad global minimum (Monge SAM §4.1, Figure 6; `docs/algorithms.md` §9.4).
//!
//! **The start.** Liu et al. (2020)'s adversarial initialisation, on the lab's MLP: (1) fit the
//! clean training subset together with `random_copies` copies of every image carrying uniformly
//! random labels; each copy is shifted by a random 1–`max_shift` pixel offset (the stand-in for
//! the data augmentation Liu et al. use), since an exact copy with another label could not be
//! fitted next to its original; (2) train on the clean subset without any regularisation until
//! 100 % training accuracy. The *normal* model is step (2) alone from the same random weights.
//! Both are built from a seed and cached (`<cache>/monge-start/<key>.bin`, a lab checkpoint,
//! plus a JSON of their accuracies), keyed by the start's settings and the data's hash.
//!
//! **The fine-tune.** From the bad model, SGD, SAM and M-SAM at lr 10⁻³, batch 128, NLL of the
//! log-softmax, ρ ∈ {0.005, 0.01, 0.03, 0.05}, several seeds (the seed changes the batch order;
//! the start is the same, as in the paper). Measured every `eval_every` epochs: training and
//! test accuracy and the distance ‖w − w₀‖ travelled from the start; at a few epochs the SAM
//! sharpness max_{‖ε‖≤ρ_m} L(w+ε) − L(w) of the library ([`Hessian::sam_sharpness`]) on the
//! training subset.

use std::path::Path;
use std::time::Instant;

use anyhow::{Context, Result};
use burn::nn::loss::{CrossEntropyLoss, CrossEntropyLossConfig};
use burn::prelude::*;
use burn::tensor::DType;
use indicatif::ProgressBar;
use plotters::chart::SeriesLabelPosition;
use rand::rngs::Xoshiro256PlusPlus;
use rand::{RngExt, SeedableRng};
use serde::{Deserialize, Serialize};
use sha2::{Digest, Sha256};
use sharpness::measure::{Batches, Hessian, MeasureConfig, SamAscent};
use sharpness::{ParamSet, StateRecord};

use super::{ResumeFile, epoch, measure, optimizer};
use crate::data::{self, DatasetName, IMAGE_SIDE, NUM_CLASSES, Split, Variant};
use crate::methods::Method;
use crate::models::{ModelKind, Network};
use crate::report::{Figure, Panel, ReportSection, Series, Style, write_atomic};
use crate::stats::Summary;
use crate::train::{
    Checkpoint, CheckpointMeta, batch_tensors, cross_entropy, load_model, model_bytes,
};

/// How the bad (and the normal) starting model is built.
#[derive(Clone, Debug, Serialize, PartialEq)]
pub struct StartSettings {
    /// Dataset.
    pub dataset: DatasetName,
    /// Clean training examples (the first ones); the fine-tune trains on the same.
    pub train_examples: usize,
    /// MLP hidden width.
    pub width: usize,
    /// Randomly labelled copies per image in the adversarial phase.
    pub random_copies: usize,
    /// Largest shift (pixels, each axis) of a copy.
    pub max_shift: usize,
    /// Epochs of the adversarial phase.
    pub adversarial_epochs: usize,
    /// At most this many epochs of clean training to reach 100 % training accuracy.
    pub clean_max_epochs: usize,
    /// Learning rate of both phases.
    pub lr: f64,
    /// Momentum of both phases (no weight decay).
    pub momentum: f64,
    /// Batch size of both phases.
    pub batch_size: usize,
    /// Seed of the weights, the random labels and shifts, and the batch orders.
    pub seed: u64,
}

/// The experiment's settings.
#[derive(Clone, Debug, Serialize, PartialEq)]
pub struct Settings {
    /// Preset name.
    pub preset: String,
    /// The starting point.
    pub start: StartSettings,
    /// Test examples (the first ones).
    pub test_examples: usize,
    /// Radii (one panel each); SGD runs once per seed and appears in every panel.
    pub rhos: Vec<f64>,
    /// Fine-tuning seeds (batch order).
    pub seeds: Vec<u64>,
    /// Fine-tuning epochs.
    pub epochs: usize,
    /// Fine-tuning learning rate.
    pub lr: f64,
    /// Fine-tuning momentum (the paper does not say; no weight decay).
    pub momentum: f64,
    /// Fine-tuning batch size.
    pub batch_size: usize,
    /// Accuracies and distance every this many epochs (and at 0 and the end).
    pub eval_every: usize,
    /// Epochs at which the SAM sharpness is measured.
    pub sharpness_at: Vec<usize>,
    /// Radius ρ_m of the measured SAM sharpness.
    pub sharpness_rho: f64,
    /// Ascent steps of the measure.
    pub sharpness_steps: usize,
    /// Training examples the measure uses (the first ones).
    pub sharpness_examples: usize,
}

impl Settings {
    /// The full preset: 3 seeds × 200 epochs (the paper: 5 × 500 on CIFAR-10; see the README for
    /// its run time).
    pub fn full() -> Self {
        let epochs = 200;
        Self {
            preset: "full".into(),
            start: StartSettings {
                dataset: DatasetName::Mnist,
                train_examples: 2560,
                width: 512,
                random_copies: 4,
                max_shift: 2,
                adversarial_epochs: 40,
                clean_max_epochs: 200,
                lr: 0.01,
                momentum: 0.9,
                batch_size: 128,
                seed: 0,
            },
            test_examples: 10_000,
            rhos: vec![0.005, 0.01, 0.03, 0.05],
            seeds: vec![0, 1, 2],
            epochs,
            lr: 1e-3,
            momentum: 0.9,
            batch_size: 128,
            eval_every: 5,
            sharpness_at: vec![0, epochs / 4, epochs / 2, epochs],
            sharpness_rho: 0.05,
            sharpness_steps: 3,
            sharpness_examples: 1024,
        }
    }

    /// For `reproduce`: the same start, 3 seeds × 8 epochs, 5 000 test examples.
    pub fn reduced() -> Self {
        let epochs = 8;
        Self {
            preset: "reduced".into(),
            test_examples: 5000,
            epochs,
            eval_every: 4,
            sharpness_at: vec![0, epochs],
            ..Self::full()
        }
    }

    /// The runs: SGD per seed, then SAM and M-SAM per ρ and seed.
    fn runs(&self) -> Vec<(Method, f64, u64)> {
        let mut runs: Vec<_> = self.seeds.iter().map(|&s| (Method::Sgd, 0.0, s)).collect();
        for &rho in &self.rhos {
            for method in [Method::Sam, Method::Msam] {
                runs.extend(self.seeds.iter().map(|&s| (method, rho, s)));
            }
        }
        runs
    }

    /// Epochs at which a run is measured.
    fn eval_epochs(&self) -> Vec<usize> {
        let mut e: Vec<usize> = (0..=self.epochs).step_by(self.eval_every.max(1)).collect();
        if e.last() != Some(&self.epochs) {
            e.push(self.epochs);
        }
        e
    }
}

/// The adversarial training set: the clean examples, then `copies` copies of each, shifted by a
/// random offset in [−max_shift, max_shift]² other than (0, 0) (vacated pixels take
/// `background`, the normalised value of a black pixel) and labelled uniformly at random.
pub fn adversarial_split(
    clean: &Split,
    copies: usize,
    max_shift: usize,
    background: f32,
    seed: u64,
) -> Split {
    let mut rng = Xoshiro256PlusPlus::seed_from_u64(seed ^ 0x6164_7665_7273_6172);
    let mut out = clean.clone();
    let m = max_shift as i64;
    let side = IMAGE_SIDE as i64;
    for _ in 0..copies {
        for i in 0..clean.n {
            let (dx, dy) = loop {
                let d = (rng.random_range(-m..=m), rng.random_range(-m..=m));
                if d != (0, 0) {
                    break d;
                }
            };
            let image = clean.image(i);
            for r in 0..side {
                for c in 0..side {
                    let (sr, sc) = (r - dy, c - dx);
                    let inside = (0..side).contains(&sr) && (0..side).contains(&sc);
                    out.images.push(match inside {
                        true => image[(sr * side + sc) as usize],
                        false => background,
                    });
                }
            }
            out.labels.push(rng.random_range(0..NUM_CLASSES as u8));
        }
    }
    out.n = clean.n * (copies + 1);
    out
}

/// What the start's construction measured.
#[derive(Clone, Debug, Serialize, Deserialize, PartialEq)]
pub struct StartInfo {
    /// Accuracy on the adversarial set after its phase.
    pub adversarial_fit: f64,
    /// Clean epochs the bad model needed to reach its final training accuracy.
    pub bad_clean_epochs: usize,
    /// Training accuracy of the bad model (1 = the goal was reached).
    pub bad_train_acc: f64,
    /// Test accuracy of the bad model.
    pub bad_test_acc: f64,
    /// Clean epochs of the normal model.
    pub normal_clean_epochs: usize,
    /// Training accuracy of the normal model.
    pub normal_train_acc: f64,
    /// Test accuracy of the normal model.
    pub normal_test_acc: f64,
    /// Seconds the construction took (0 when read from the cache is not recorded: the build's).
    pub seconds: f64,
}

/// Trains on the clean set with plain momentum SGD until 100 % training accuracy (or the cap);
/// returns the model, the epochs and the final training accuracy.
fn fit_clean(
    mut model: Network,
    s: &StartSettings,
    train: &Split,
    loss_fn: &CrossEntropyLoss,
    device: &Device,
    progress: &ProgressBar,
) -> Result<(Network, usize, f64)> {
    let mut opt = optimizer(Method::Sgd, 0.0, s.momentum)?;
    let mut acc = measure(&model, train, loss_fn, device).1;
    let mut epochs = 0;
    while acc < 1.0 && epochs < s.clean_max_epochs {
        let (trained, _) = epoch(
            &mut opt,
            model,
            s.lr,
            train,
            s.batch_size,
            (s.seed, epochs),
            loss_fn,
            device,
        )?;
        model = trained;
        epochs += 1;
        acc = measure(&model, train, loss_fn, device).1;
        progress.set_message(format!(
            "bad-minimum start: clean epoch {epochs}, train acc {:.2} %",
            100.0 * acc
        ));
    }
    Ok((model, epochs, acc))
}

/// Builds the bad and the normal model (see the module docs); returns the bad one.
fn build_start(
    s: &StartSettings,
    train: &Split,
    test: &Split,
    background: f32,
    device: &Device,
    progress: &ProgressBar,
) -> Result<(Network, StartInfo)> {
    let started = Instant::now();
    let loss_fn = CrossEntropyLossConfig::new().init(device);
    let init = Network::new(ModelKind::Mlp, s.width, s.seed, device);
    let adversarial = adversarial_split(train, s.random_copies, s.max_shift, background, s.seed);
    let mut opt = optimizer(Method::Sgd, 0.0, s.momentum)?;
    let mut model = Network::new(ModelKind::Mlp, s.width, s.seed, device);
    for e in 0..s.adversarial_epochs {
        let (trained, summary) = epoch(
            &mut opt,
            model,
            s.lr,
            &adversarial,
            s.batch_size,
            (s.seed, e),
            &loss_fn,
            device,
        )?;
        model = trained;
        progress.set_message(format!(
            "bad-minimum start: adversarial epoch {}/{}, fit {:.1} %",
            e + 1,
            s.adversarial_epochs,
            100.0 * summary.accuracy
        ));
    }
    let adversarial_fit = measure(&model, &adversarial, &loss_fn, device).1;
    let (bad, bad_clean_epochs, bad_train_acc) =
        fit_clean(model, s, train, &loss_fn, device, progress)?;
    let (normal, normal_clean_epochs, normal_train_acc) =
        fit_clean(init, s, train, &loss_fn, device, progress)?;
    let info = StartInfo {
        adversarial_fit,
        bad_clean_epochs,
        bad_train_acc,
        bad_test_acc: measure(&bad, test, &loss_fn, device).1,
        normal_clean_epochs,
        normal_train_acc,
        normal_test_acc: measure(&normal, test, &loss_fn, device).1,
        seconds: started.elapsed().as_secs_f64(),
    };
    Ok((bad, info))
}

/// The bad model and its construction's record: read from the cache, or built and cached.
fn start(
    s: &StartSettings,
    dataset: &data::Dataset,
    train: &Split,
    test: &Split,
    device: &Device,
    progress: &ProgressBar,
) -> Result<(Network, StartInfo)> {
    let key = serde_json::json!({ "start": s, "data_sha256": dataset.sha256 });
    let hash: String = Sha256::digest(key.to_string().as_bytes())
        .iter()
        .take(8)
        .map(|b| format!("{b:02x}"))
        .collect();
    let dir = data::default_cache_dir().join("monge-start");
    let (ckpt_path, info_path) = (
        dir.join(format!("{hash}.bin")),
        dir.join(format!("{hash}.json")),
    );
    if ckpt_path.exists() && info_path.exists() {
        let ckpt = Checkpoint::load(&ckpt_path)?;
        let info: StartInfo = serde_json::from_slice(&std::fs::read(&info_path)?)
            .with_context(|| format!("reading {}", info_path.display()))?;
        let model = Network::new(ModelKind::Mlp, s.width, s.seed, device);
        let model =
            load_model(model, ckpt.model).with_context(|| format!("{}", ckpt_path.display()))?;
        return Ok((model, info));
    }
    let (mean, std) = dataset.name.normalisation();
    let (model, info) = build_start(s, train, test, -mean / std, device, progress)?;
    Checkpoint {
        meta: CheckpointMeta {
            config_toml: key.to_string(),
            epochs_done: 0,
            steps: 0,
            metrics: vec![],
            data_sha256: dataset.sha256.clone(),
        },
        model: StateRecord::from_bytes(model_bytes(&model)?)?,
        optimizer: StateRecord::default(),
    }
    .save(&ckpt_path)?;
    write_atomic(&info_path, serde_json::to_string_pretty(&info)?.as_bytes())?;
    Ok((model, info))
}

/// One measurement of a fine-tuning run.
#[derive(Clone, Debug, Serialize, Deserialize, PartialEq)]
pub struct Record {
    /// Method.
    pub method: Method,
    /// ρ (0 for SGD).
    pub rho: f64,
    /// Seed of the batch order.
    pub seed: u64,
    /// Epoch (0 = the start).
    pub epoch: usize,
    /// Training loss on the training subset (evaluation mode).
    pub train_loss: f64,
    /// Training accuracy.
    pub train_acc: f64,
    /// Test accuracy.
    pub test_acc: f64,
    /// ‖w − w₀‖ over all trainable parameters.
    pub distance: f64,
    /// SAM sharpness at ρ_m (NaN where not measured).
    pub sam_sharpness: f64,
    /// Mean mini-batch gradient norm ‖g‖ (NaN where not measured).
    pub grad_norm: f64,
    /// Seconds of training since the previous record (not deterministic).
    pub seconds: f64,
}

/// At the weights of `model`, on the first `sharpness_examples` training examples (library
/// measures, f64): the SAM sharpness max_{‖ε‖≤ρ_m} L(w+ε) − L(w) (`sharpness_steps` projected
/// ascent steps; a loss difference, so ReLU kinks do not matter), and the mean gradient norm
/// ‖g‖ of its batches of `batch_size`, the quantity that shrinks M-SAM's perturbation
/// (‖ε‖ = ρ/√(1+‖g‖²)).
fn sharpness_measures(
    model: &Network,
    train: &Split,
    s: &Settings,
    device: &Device,
) -> Result<(f64, f64)> {
    let plain = device.clone().inner();
    let indices: Vec<usize> = (0..s.sharpness_examples.min(train.n)).collect();
    let batches: Vec<_> = indices
        .chunks(s.batch_size)
        .map(|chunk| {
            let (x, y) = batch_tensors(train, chunk, &plain);
            (x.cast(DType::F64).autodiff(), y.autodiff(), chunk.len())
        })
        .collect();
    let loss = |batches: Vec<(Tensor<4>, Tensor<1, Int>, usize)>| {
        Batches::new(batches.len(), move |m: &Network, b: usize| {
            let (x, y, n) = &batches[b];
            (cross_entropy(m.forward(x.clone()), y.clone()), *n)
        })
    };
    let mut norms = vec![];
    for batch in &batches {
        let mut one = Hessian::new(model, loss(vec![batch.clone()]), MeasureConfig::default())?;
        norms.push(one.gradient()?.grad.norm());
    }
    let mut hessian = Hessian::new(model, loss(batches), MeasureConfig::default())?;
    let ascent = SamAscent::new(s.sharpness_rho).with_steps(s.sharpness_steps);
    Ok((
        hessian.sam_sharpness(&ascent)?.value,
        crate::stats::mean(&norms),
    ))
}

/// One fine-tuning run from `start`.
#[allow(clippy::too_many_arguments)]
fn finetune_run(
    (method, rho, seed): (Method, f64, u64),
    start: &Network,
    s: &Settings,
    train: &Split,
    test: &Split,
    loss_fn: &CrossEntropyLoss,
    device: &Device,
    progress: &ProgressBar,
    at_start: &mut Option<Record>,
) -> Result<Vec<Record>> {
    let w0 = ParamSet::trainable_weights(start);
    let mut opt = optimizer(method, rho, s.momentum)?;
    let mut model = start.clone();
    let mut records = vec![];
    let mut seconds = 0.0;
    let eval = s.eval_epochs();
    for e in 0..=s.epochs {
        if e > 0 {
            let (trained, summary) = epoch(
                &mut opt,
                model,
                s.lr,
                train,
                s.batch_size,
                (seed, e - 1),
                loss_fn,
                device,
            )
            .with_context(|| format!("{method} ρ = {rho} seed {seed}: epoch {e}"))?;
            model = trained;
            seconds += summary.seconds;
            progress.inc(1);
        }
        if !eval.contains(&e) {
            continue;
        }
        // Every run starts from the same weights: epoch 0 is measured once.
        if let (0, Some(first)) = (e, at_start.as_ref()) {
            records.push(Record {
                method,
                rho,
                seed,
                ..first.clone()
            });
            continue;
        }
        let (train_loss, train_acc) = measure(&model, train, loss_fn, device);
        let (_, test_acc) = measure(&model, test, loss_fn, device);
        let (sharp, grad_norm) = match s.sharpness_at.contains(&e) {
            true => sharpness_measures(&model, train, s, device)?,
            false => (f64::NAN, f64::NAN),
        };
        records.push(Record {
            method,
            rho,
            seed,
            epoch: e,
            train_loss,
            train_acc,
            test_acc,
            distance: ParamSet::trainable_weights(&model).sub(&w0).norm(),
            sam_sharpness: sharp,
            grad_norm,
            seconds,
        });
        if e == 0 {
            *at_start = records.last().cloned();
        }
        seconds = 0.0;
        progress.set_message(format!(
            "bad-minimum: {} ρ {rho} seed {seed} epoch {e}/{}: test acc {:.2} %",
            method.display_name(),
            s.epochs,
            100.0 * test_acc
        ));
    }
    Ok(records)
}

const DIR: &str = "bad-minimum";

/// Runs the experiment (the runs not finished by an earlier invocation), writes
/// `out/bad-minimum/` and returns the report section (links relative to `out`).
pub fn run(
    settings: &Settings,
    out: &Path,
    device: &Device,
    progress: &ProgressBar,
) -> Result<String> {
    let started = Instant::now();
    let dir = out.join(DIR);
    let s = &settings.start;
    let dataset = data::load_verified(s.dataset, Variant::Full, &data::default_cache_dir(), 0)
        .with_context(|| format!("loading {}", s.dataset))?;
    let train = data::subset(&dataset.train, s.train_examples);
    let test = data::subset(&dataset.test, settings.test_examples);
    // The start's accuracies are on the whole test set, whatever the preset evaluates on.
    let (start_model, info) = start(s, &dataset, &train, &dataset.test, device, progress)?;
    write_atomic(
        &dir.join("start.json"),
        serde_json::to_string_pretty(&info)?.as_bytes(),
    )?;
    let resume = ResumeFile::new(
        &dir,
        serde_json::json!({ "settings": settings, "data_sha256": dataset.sha256 }),
    );
    let mut records: Vec<Record> = resume.earlier();
    let n_eval = settings.eval_epochs().len();
    let runs = settings.runs();
    progress.inc_length((runs.len() * settings.epochs) as u64);
    let loss_fn = CrossEntropyLossConfig::new().init(device);
    let mut kept = vec![];
    let mut at_start = None;
    for &(method, rho, seed) in &runs {
        let of_run = |r: &&Record| r.method == method && r.rho == rho && r.seed == seed;
        let done: Vec<Record> = records.iter().filter(of_run).cloned().collect();
        if done.len() == n_eval {
            kept.extend(done);
            progress.inc(settings.epochs as u64);
            continue;
        }
        kept.extend(finetune_run(
            (method, rho, seed),
            &start_model,
            settings,
            &train,
            &test,
            &loss_fn,
            device,
            progress,
            &mut at_start,
        )?);
        resume.save(&kept)?;
    }
    records = kept;
    write_atomic(
        &dir.join("records.json"),
        serde_json::to_string_pretty(
            &serde_json::json!({ "settings": settings, "start": info, "records": records }),
        )?
        .as_bytes(),
    )?;
    figure(settings, &records).save(&dir.join("finetune"))?;
    Ok(section(
        settings,
        &info,
        &records,
        started.elapsed().as_secs_f64(),
    ))
}

/// Mean ± s.e. over seeds of `value` at `epoch` for (method, ρ).
fn summary_at(
    records: &[Record],
    method: Method,
    rho: f64,
    epoch: usize,
    value: fn(&Record) -> f64,
) -> Summary {
    let values: Vec<f64> = records
        .iter()
        .filter(|r| r.method == method && r.rho == rho && r.epoch == epoch)
        .map(value)
        .collect();
    Summary::of(&values)
}

/// The runs of a panel: SGD (ρ = 0) and SAM, M-SAM at `rho`.
fn panel_runs(rho: f64) -> [(Method, f64); 3] {
    [(Method::Sgd, 0.0), (Method::Sam, rho), (Method::Msam, rho)]
}

/// A row of the figure: its y label, the plotted value, and whether it is measured only at
/// `sharpness_at` (points) rather than at every evaluation (a line).
type Row = (&'static str, fn(&Record) -> f64, bool);

fn figure(s: &Settings, records: &[Record]) -> Figure {
    let rows: [Row; 5] = [
        ("test accuracy (%)", |r| 100.0 * r.test_acc, false),
        ("training accuracy (%)", |r| 100.0 * r.train_acc, false),
        ("distance ‖w − w₀‖", |r| r.distance, false),
        ("SAM sharpness (ρ_m)", |r| r.sam_sharpness, true),
        ("mean batch ‖g‖", |r| r.grad_norm, true),
    ];
    let mut panels = vec![];
    for (row, &(label, value, sparse)) in rows.iter().enumerate() {
        // One y range per row, so the panels of a row compare at a glance.
        let all: Vec<f64> = records
            .iter()
            .map(value)
            .filter(|v| v.is_finite())
            .collect();
        let (lo, hi) = (
            all.iter().copied().fold(f64::INFINITY, f64::min),
            all.iter().copied().fold(f64::NEG_INFINITY, f64::max),
        );
        // A flat row (training accuracy stays at 100 %) gets ±1 % of its value, not ticks in 10⁻⁴.
        let pad = match hi - lo > 1e-9 {
            true => ((hi - lo) * 0.08).max(1e-3),
            false => 0.01 * hi.abs().max(1.0),
        };
        for (col, &rho) in s.rhos.iter().enumerate() {
            let mut panel = Panel::new(
                format!("ρ = {rho}"),
                "epoch",
                label,
                (0.0, s.epochs as f64),
                (lo - pad, hi + pad),
            );
            for (method, r) in panel_runs(rho) {
                let epochs = match sparse {
                    true => s.sharpness_at.clone(),
                    false => s.eval_epochs(),
                };
                let sums: Vec<(f64, Summary)> = epochs
                    .iter()
                    .map(|&e| (e as f64, summary_at(records, method, r, e, value)))
                    .filter(|(_, m)| m.mean.is_finite())
                    .collect();
                let color = method.spec().color;
                let mean: Vec<(f64, f64)> = sums.iter().map(|(e, m)| (*e, m.mean)).collect();
                for sign in [-1.0, 1.0] {
                    let band = sums
                        .iter()
                        .map(|(e, m)| {
                            (
                                *e,
                                m.mean + sign * if m.se.is_finite() { m.se } else { 0.0 },
                            )
                        })
                        .collect();
                    panel
                        .series
                        .push(Series::unlabelled(band, color, Style::Line));
                }
                panel.series.push(Series::new(
                    method.display_name(),
                    mean,
                    color,
                    if sparse {
                        Style::LinePoints(4)
                    } else {
                        Style::Line
                    },
                ));
            }
            panel.legend = (row == 0 && col == 0).then_some(SeriesLabelPosition::LowerRight);
            panels.push(panel);
        }
    }
    Figure {
        title: format!(
            "Fine-tuning a bad MLP minimum ({}, {} examples; preset {}): mean ± s.e. over {} seeds (thin lines)",
            s.start.dataset,
            s.start.train_examples,
            s.preset,
            s.seeds.len()
        ),
        cols: s.rhos.len(),
        panels,
        panel_size: (420, 320),
    }
}

const CLAIM: &str = "Fine-tuned from a bad global minimum with a small learning rate (α = 10⁻³), \
SAM and M-SAM both move along the valley and generalise better than SGD for ρ ∈ {0.005, 0.01, 0.03} \
(≈ 6 points over SGD at ρ = 0.03); at ρ = 0.05 SAM escapes the valley and improves much further, \
while M-SAM stays in it (its perturbation shrinks where gradients are large).";

/// A difference of two means and whether it exceeds twice its standard error.
fn diff(a: &Summary, b: &Summary) -> (f64, bool) {
    let d = a.mean - b.mean;
    let se = (a.se.powi(2) + b.se.powi(2)).sqrt();
    (d, d.abs() > 2.0 * se)
}

/// Per ρ: the final numbers and the verdict on the paper's finding for that ρ.
fn verdicts(s: &Settings, records: &[Record]) -> (Vec<Vec<String>>, Vec<String>) {
    let last = s.epochs;
    let acc = |r: &Record| 100.0 * r.test_acc;
    let dist = |r: &Record| r.distance;
    let sgd = summary_at(records, Method::Sgd, 0.0, last, acc);
    let mut rows = vec![];
    let mut text = vec![];
    let pm = |m: &Summary| format!("{:.2} ± {:.2}", m.mean, m.se);
    for &rho in &s.rhos {
        let (sam, msam) = (
            summary_at(records, Method::Sam, rho, last, acc),
            summary_at(records, Method::Msam, rho, last, acc),
        );
        let (dsam, dmsam) = (
            summary_at(records, Method::Sam, rho, last, dist),
            summary_at(records, Method::Msam, rho, last, dist),
        );
        let (sam_gain, sam_sig) = diff(&sam, &sgd);
        let (msam_gain, msam_sig) = diff(&msam, &sgd);
        let (gap, gap_sig) = diff(&sam, &msam);
        let verdict = if rho < 0.05 {
            let both = sam_gain > 0.0 && sam_sig && msam_gain > 0.0 && msam_sig;
            format!(
                "ρ = {rho}: paper: both beat SGD — {}: SAM {sam_gain:+.2}, M-SAM {msam_gain:+.2} points over SGD{}",
                if both {
                    "**holds**"
                } else {
                    "**does not hold**"
                },
                if both {
                    ""
                } else {
                    " (a gain counts when it exceeds 2 s.e. of the difference)"
                }
            )
        } else {
            let escapes = gap > 0.0 && gap_sig && dsam.mean > dmsam.mean;
            format!(
                "ρ = {rho}: paper: SAM escapes and beats M-SAM, which stays — {}: SAM − M-SAM = {gap:+.2} points, distance SAM {:.3} vs M-SAM {:.3}",
                if escapes {
                    "**holds**"
                } else {
                    "**does not hold**"
                },
                dsam.mean,
                dmsam.mean
            )
        };
        text.push(verdict);
        rows.push(vec![
            format!("{rho}"),
            pm(&sgd),
            pm(&sam),
            pm(&msam),
            format!("{:.3} / {:.3}", dsam.mean, dmsam.mean),
        ]);
    }
    (rows, text)
}

fn section(s: &Settings, info: &StartInfo, records: &[Record], seconds: f64) -> String {
    let (rows, text) = verdicts(s, records);
    let table =
        crate::report::markdown_table(&["ρ", "SGD", "SAM", "M-SAM", "distance SAM / M-SAM"], &rows);
    let train_seconds: f64 = records.iter().map(|r| r.seconds).sum();
    let st = &s.start;
    // What M-SAM sees at the start: its radius is SAM's times 1/√(1+‖g‖²).
    let g0 = summary_at(records, Method::Sgd, 0.0, 0, |r| r.grad_norm).mean;
    let mechanism = format!(
        "At the start the mean mini-batch gradient norm is ‖g‖ = {g0:.4}, so M-SAM's radius is \
         {:.5} × SAM's: at a minimum of a mean-reduced loss the two perturbations nearly coincide, \
         and M-SAM can only differ from SAM where ‖g‖ grows to order 1.",
        1.0 / (1.0 + g0 * g0).sqrt()
    );
    format!(
        "**Paper's claim** (ResNet-18 on CIFAR-10 from a 48 % start, 500 epochs, 5 seeds; CIFAR-10 is \
         not available here). {CLAIM}\n\n\
         **Start.** MLP 784–{w}–{w}–10 on the first {n} {ds} training examples. Adversarial phase: \
         the clean examples plus {copies} randomly labelled copies of each (shifted by 1–{shift} \
         pixels), {adv} epochs (fit {fit:.1} %); then clean training without regularisation (SGD \
         lr {blr}, momentum {bm}) to 100 % training accuracy: the **bad model** reached {bad_train:.2} % \
         training accuracy in {bad_ep} epochs with **{bad_test:.2} % test accuracy**; the **normal \
         model** (same procedure from the same random weights, no adversarial phase) reached \
         {normal_train:.2} % training accuracy in {normal_ep} epochs with **{normal_test:.2} % test \
         accuracy** (both on all 10 000 test examples; the fine-tune below evaluates on the first {nt}).\n\n\
         **Measured here** (preset `{preset}`: {epochs} epochs, seeds {seeds:?}, lr {lr}, momentum \
         {m}, batch {b}; final test accuracy (%), mean ± s.e.):\n\n{table}\n\n{verdicts}\n\n{mechanism}\n\n\
         ![fine-tuning from a bad minimum]({DIR}/finetune.png)\n\n*Rows: test accuracy, training \
         accuracy, distance from the start ‖w − w₀‖, SAM sharpness max over ‖ε‖ ≤ {rm} of \
         L(w+ε) − L(w) on the first {sn} training examples ({ss} ascent steps, library measure), mean \
         gradient norm ‖g‖ of those examples' batches of {b} (M-SAM's radius is ρ/√(1+‖g‖²)); \
         columns: ρ; thin lines: mean ± s.e.; M-SAM is drawn over SAM, so where only M-SAM's \
         colour shows the two coincide.*\n\n\
         Each seed changes the batch order only (the start is the same, as in the paper). Training \
         time of all runs {train_seconds:.0} s; this invocation {seconds:.0} s.\n",
        w = st.width,
        n = st.train_examples,
        ds = st.dataset,
        copies = st.random_copies,
        shift = st.max_shift,
        adv = st.adversarial_epochs,
        fit = 100.0 * info.adversarial_fit,
        blr = st.lr,
        bm = st.momentum,
        bad_train = 100.0 * info.bad_train_acc,
        bad_ep = info.bad_clean_epochs,
        bad_test = 100.0 * info.bad_test_acc,
        normal_train = 100.0 * info.normal_train_acc,
        normal_ep = info.normal_clean_epochs,
        normal_test = 100.0 * info.normal_test_acc,
        nt = s.test_examples,
        preset = s.preset,
        epochs = s.epochs,
        seeds = s.seeds,
        lr = s.lr,
        m = s.momentum,
        b = s.batch_size,
        verdicts = text
            .iter()
            .map(|t| format!("- {t}"))
            .collect::<Vec<_>>()
            .join("\n"),
        rm = s.sharpness_rho,
        sn = s.sharpness_examples,
        ss = s.sharpness_steps,
    )
}

/// `sharpness-lab bad-minimum` flags.
#[derive(clap::Args, Debug, Clone)]
pub struct FinetuneArgs {
    /// Preset, output and progress.
    #[command(flatten)]
    pub common: super::PresetArgs,
    /// Fine-tuning epochs instead of the preset's.
    #[arg(long)]
    pub epochs: Option<usize>,
}

/// `sharpness-lab bad-minimum`.
pub fn cli(args: FinetuneArgs) -> Result<()> {
    let mut settings = match args.common.reduced {
        true => Settings::reduced(),
        false => Settings::full(),
    };
    if let Some(epochs) = args.epochs {
        anyhow::ensure!(epochs > 0, "--epochs must be ≥ 1");
        settings.epochs = epochs;
        settings.sharpness_at.retain(|&e| e <= epochs);
        if !settings.sharpness_at.contains(&epochs) {
            settings.sharpness_at.push(epochs);
        }
    }
    super::command(&args.common, DIR, TITLE, |out, device, progress| {
        run(&settings, out, device, progress)
    })
}

const TITLE: &str = "Fine-tuning from a bad global minimum (Monge SAM, §4.1 and Figure 6)";

/// The reduced preset as a section of `reproduce`.
pub fn reproduce(out: &Path, progress: &ProgressBar) -> Result<ReportSection> {
    super::reproduce_section(
        out,
        progress,
        TITLE,
        "bad-minimum",
        |out, device, progress| run(&Settings::reduced(), out, device, progress),
    )
}

#[cfg(test)]
mod tests {
    use super::*;

    fn clean(n: usize) -> Split {
        Split {
            images: (0..n * IMAGE_SIDE * IMAGE_SIDE)
                .map(|v| (v % 251) as f32)
                .collect(),
            labels: (0..n).map(|i| (i % 10) as u8).collect(),
            n,
        }
    }

    #[test]
    fn adversarial_copies_are_shifted_images_with_seeded_random_labels() {
        let base = clean(50);
        let a = adversarial_split(&base, 3, 2, -1.0, 7);
        assert_eq!(a.n, 200);
        assert_eq!(a.images.len(), 200 * IMAGE_SIDE * IMAGE_SIDE);
        // The clean examples come first, unchanged.
        assert_eq!(a.labels[..50], base.labels[..]);
        assert_eq!(a.image(3), base.image(3));
        // Same seed, same set; another seed, other labels.
        assert_eq!(a, adversarial_split(&base, 3, 2, -1.0, 7));
        assert_ne!(a.labels, adversarial_split(&base, 3, 2, -1.0, 8).labels);
        // Labels are random: about 90 % differ from the original's, and every class occurs.
        let differ = (50..200)
            .filter(|&i| a.labels[i] != base.labels[i % 50])
            .count();
        assert!(
            (110..=149).contains(&differ),
            "{differ} of 150 labels differ"
        );
        for class in 0..10u8 {
            assert!(a.labels[50..].contains(&class));
        }
        // Each copy is its original shifted by a non-zero offset of at most 2 pixels.
        for i in 50..200 {
            let (copy, orig) = (a.image(i), base.image(i % 50));
            assert_ne!(copy, orig);
            let shifted = (-2i64..=2).any(|dy| {
                (-2i64..=2).any(|dx| {
                    let side = IMAGE_SIDE as i64;
                    (0..side).all(|r| {
                        (0..side).all(|c| {
                            let (sr, sc) = (r - dy, c - dx);
                            let want = if (0..side).contains(&sr) && (0..side).contains(&sc) {
                                orig[(sr * side + sc) as usize]
                            } else {
                                -1.0
                            };
                            copy[(r * side + c) as usize] == want
                        })
                    })
                })
            });
            assert!(shifted, "copy {i} is not a shift of its original");
        }
    }

    #[test]
    fn presets_keep_the_paper_fine_tuning_protocol() {
        for s in [Settings::full(), Settings::reduced()] {
            assert_eq!((s.lr, s.batch_size), (1e-3, 128));
            assert_eq!(s.rhos, [0.005, 0.01, 0.03, 0.05]);
            assert!(s.seeds.len() >= 3);
            assert_eq!(s.runs().len(), s.seeds.len() * (1 + 2 * s.rhos.len()));
            let eval = s.eval_epochs();
            assert_eq!((eval[0], *eval.last().unwrap()), (0, s.epochs));
            assert!(s.sharpness_at.iter().all(|e| eval.contains(e)));
        }
        // The reduced preset starts from the same cached model.
        assert_eq!(Settings::full().start, Settings::reduced().start);
    }
}
