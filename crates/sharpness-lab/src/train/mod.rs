//! Training a network with any method of the library: the loop, metrics, checkpoints, resuming.
//!
//! A run is a pure function of its [`TrainConfig`] and data: the initialisation, the epoch
//! shuffles ([`crate::data::epoch_order`]) and SSAM's single-example draws are all derived from
//! the seed, and a checkpoint holds everything else (weights with BatchNorm statistics, the
//! optimizer and estimator state, the metrics so far), so `--resume` continues bit-identically.

pub mod bench;
pub mod checkpoint;
pub mod cli;
pub mod config;
pub mod epoch;

use std::path::{Path, PathBuf};

use anyhow::{Context, Result, bail};
use burn::module::{Module, ModuleVisitor, Param};
use burn::nn::loss::{CrossEntropyLoss, CrossEntropyLossConfig};
use burn::prelude::*;
use burn::store::ModuleRecord;
use burn::tensor::{Bytes, TensorData};
use indicatif::{ProgressBar, ProgressStyle};
use serde::{Deserialize, Serialize};
use sharpness::{Objective, SharpnessAware, StateRecord};

pub use checkpoint::{Checkpoint, CheckpointMeta, write_atomic};
pub use config::{LrScheduleKind, OptimizerKind, RhoScheduleKind, TrainConfig};
pub use epoch::{
    Classifier, EpochSummary, TrainObjective, count_correct, cross_entropy, evaluate, in_pool,
    train_epoch,
};

use crate::data::{self, Dataset, IMAGE_PIXELS, IMAGE_SIDE, Split};
use crate::models::Network;

/// File names inside a run directory.
pub const CONFIG_FILE: &str = "config.toml";
/// Per-epoch metrics as CSV.
pub const METRICS_CSV: &str = "metrics.csv";
/// Per-epoch metrics as JSON.
pub const METRICS_JSON: &str = "metrics.json";
/// The checkpoint, rewritten after every epoch.
pub const CHECKPOINT_FILE: &str = "checkpoint.bin";

/// The metrics of one epoch.
#[derive(Clone, Debug, Serialize, Deserialize, PartialEq)]
pub struct EpochMetrics {
    /// 1-based epoch.
    pub epoch: usize,
    /// Learning rate used.
    pub lr: f64,
    /// ρ at the epoch's last step.
    pub rho: f64,
    /// Mean pass-0 training loss over the epoch's batches.
    pub train_loss: f64,
    /// Training accuracy of the pass-0 predictions over the epoch.
    pub train_acc: f64,
    /// Mean test loss (model in evaluation mode).
    pub test_loss: f64,
    /// Test accuracy.
    pub test_acc: f64,
    /// Wall-clock seconds of the epoch's training steps (not deterministic).
    pub seconds: f64,
    /// Training examples per second (not deterministic).
    pub examples_per_sec: f64,
    /// The device the epoch ran on (`--device`; a resumed run may change it).
    #[serde(default)]
    pub device: String,
}

impl EpochMetrics {
    /// The deterministic part (everything but the timings), for comparisons.
    pub fn deterministic(&self) -> [f64; 7] {
        [
            self.epoch as f64,
            self.lr,
            self.rho,
            self.train_loss,
            self.train_acc,
            self.test_loss,
            self.test_acc,
        ]
    }
}

/// How to run (not part of the results).
#[derive(Clone, Debug)]
pub struct RunOptions {
    /// The run directory (config, metrics, checkpoint).
    pub out_dir: PathBuf,
    /// Continue from `out_dir/checkpoint.bin` (which must exist and match the configuration).
    pub resume: bool,
    /// Show a progress bar.
    pub progress: bool,
    /// Stop after this many completed epochs (the checkpoint allows resuming later).
    pub stop_after: Option<usize>,
}

impl RunOptions {
    /// Quiet options for `out_dir`.
    pub fn new(out_dir: impl Into<PathBuf>) -> Self {
        Self {
            out_dir: out_dir.into(),
            resume: false,
            progress: false,
            stop_after: None,
        }
    }
}

/// The outcome of a run.
#[derive(Debug)]
pub struct RunResult {
    /// Metrics of every completed epoch (including those before a resume).
    pub metrics: Vec<EpochMetrics>,
    /// The trained network.
    pub model: Network,
    /// Optimizer steps taken in total.
    pub steps: u64,
}

pub use crate::device::device;

/// Loads the configuration's dataset from the cache after verifying it against the recorded sums
/// (applying `train_limit`/`test_limit`).
pub fn load_data(config: &TrainConfig, cache: &Path) -> Result<Dataset> {
    let mut dataset = data::load_verified(config.dataset, config.variant, cache, config.data_seed)?;
    limit(&mut dataset, config);
    Ok(dataset)
}

fn limit(dataset: &mut Dataset, config: &TrainConfig) {
    if let Some(n) = config.train_limit {
        dataset.train = data::subset(&dataset.train, n);
    }
    if let Some(n) = config.test_limit {
        dataset.test = data::subset(&dataset.test, n);
    }
}

/// Trains per `config` on `dataset` (limits of the configuration applied here), writing
/// `config.toml`, `metrics.csv`, `metrics.json` and `checkpoint.bin` into `options.out_dir`.
pub fn run(config: &TrainConfig, dataset: &Dataset, options: &RunOptions) -> Result<RunResult> {
    config.validate()?;
    let mut dataset_view;
    let dataset = if config.train_limit.is_some() || config.test_limit.is_some() {
        dataset_view = dataset.clone();
        limit(&mut dataset_view, config);
        &dataset_view
    } else {
        dataset
    };
    let train = &dataset.train;
    if dataset.test.n == 0 {
        bail!(
            "the test set of {} is empty: there is nothing to measure",
            dataset.tag()
        );
    }
    let steps_per_epoch = train.n / config.batch_size;
    if steps_per_epoch == 0 {
        bail!(
            "{} training examples are fewer than one batch of {}",
            train.n,
            config.batch_size
        );
    }
    let device = device();
    let out = &options.out_dir;
    std::fs::create_dir_all(out).with_context(|| format!("cannot create {}", out.display()))?;
    let config_toml = config.to_toml()?;
    let checkpoint_path = out.join(CHECKPOINT_FILE);

    let mut model = Network::new(config.model, config.width, config.seed, &device);
    // SSAM-F refreshes its mask once per epoch unless told otherwise (the reference schedule).
    let mut method_params = config.method_params.clone();
    method_params
        .refresh_every
        .get_or_insert(steps_per_epoch as u64);
    let estimator = crate::methods::estimator(config.method, &method_params)?;
    let mut optimizer =
        SharpnessAware::from_boxed(estimator, config.base_optimizer()?, config.rho_schedule()?);
    let mut metrics = Vec::new();
    let mut start_epoch = 0;
    if options.resume {
        let ckpt = Checkpoint::load(&checkpoint_path)?;
        if ckpt.meta.config_toml != config_toml {
            bail!(
                "cannot resume {}: the checkpoint was written with another configuration; to \
                 continue it, pass its saved configuration: `--resume --out {} --config {}` \
                 (or choose another --out for this one)",
                checkpoint_path.display(),
                out.display(),
                out.join(CONFIG_FILE).display()
            );
        }
        check_counters(&ckpt.meta, config)
            .and_then(|()| {
                let expected = (ckpt.meta.epochs_done * steps_per_epoch) as u64;
                if ckpt.meta.steps != expected {
                    bail!(
                        "{} steps recorded, {} epochs of {steps_per_epoch} steps are {expected}",
                        ckpt.meta.steps,
                        ckpt.meta.epochs_done
                    );
                }
                Ok(())
            })
            .with_context(|| format!("checkpoint {} is inconsistent", checkpoint_path.display()))?;
        if ckpt.meta.data_sha256.is_some() && ckpt.meta.data_sha256 != dataset.sha256 {
            bail!(
                "cannot resume {}: it was trained on data with sha256 {}, the data now is {}; \
                 resume with the same data or start the run again",
                checkpoint_path.display(),
                ckpt.meta.data_sha256.as_deref().unwrap_or("?"),
                dataset
                    .sha256
                    .as_deref()
                    .unwrap_or("unverified (built in memory)")
            );
        }
        model = load_model(model, ckpt.model)
            .with_context(|| format!("checkpoint {}", checkpoint_path.display()))?;
        optimizer
            .load_state_record(ckpt.optimizer, &device)
            .with_context(|| {
                format!(
                    "checkpoint {}: bad optimizer state",
                    checkpoint_path.display()
                )
            })?;
        start_epoch = ckpt.meta.epochs_done;
        metrics = ckpt.meta.metrics;
    } else if checkpoint_path.exists() {
        bail!(
            "{} already holds a run (checkpoint {}); pass --resume to continue it (with its \
             configuration: --config {}) or choose another --out",
            out.display(),
            checkpoint_path.display(),
            out.join(CONFIG_FILE).display()
        );
    }
    write_atomic(&out.join(CONFIG_FILE), config_toml.as_bytes())?;

    let loss_fn = CrossEntropyLossConfig::new().init(&device);
    let end_epoch = options
        .stop_after
        .map_or(config.epochs, |s| s.min(config.epochs));
    for epoch in start_epoch..end_epoch {
        let lr = config.lr_at(epoch);
        let order = data::epoch_order(train.n, config.seed, epoch);
        let bar = progress_bar(options.progress, steps_per_epoch as u64, config, epoch);
        let objective = |batch: &[usize], step| {
            let (x, y) = batch_tensors(train, batch, &device);
            BatchObjective {
                x,
                y,
                loss_fn: &loss_fn,
                train,
                seed: config.seed,
                step,
                device: &device,
                first_logits: None,
            }
        };
        let (trained, epoch_summary) = train_epoch(
            &mut optimizer,
            model,
            lr,
            &order,
            config.batch_size,
            objective,
            bar.as_ref(),
        )
        .with_context(|| format!("{}: epoch {}", config.label(), epoch + 1))?;
        model = trained;
        let (test_loss, test_acc) = evaluate(
            &model,
            &dataset.test,
            |logits, y| loss_fn.forward(logits, y),
            &device,
        );
        let EpochSummary {
            mean_loss,
            accuracy,
            rho,
            examples,
            seconds,
        } = epoch_summary;
        let m = EpochMetrics {
            epoch: epoch + 1,
            lr,
            rho,
            train_loss: mean_loss,
            train_acc: accuracy,
            test_loss,
            test_acc,
            seconds,
            examples_per_sec: examples as f64 / seconds.max(1e-9),
            device: crate::device::name(),
        };
        if let Some(bar) = bar {
            bar.finish_with_message(format!(
                "loss {:.4} acc {:.2}% | test loss {:.4} acc {:.2}% | {:.0} ex/s",
                m.train_loss,
                100.0 * m.train_acc,
                m.test_loss,
                100.0 * m.test_acc,
                m.examples_per_sec
            ));
        }
        metrics.push(m);
        write_metrics(out, &metrics)?;
        let ckpt = Checkpoint {
            meta: CheckpointMeta {
                config_toml: config_toml.clone(),
                epochs_done: epoch + 1,
                steps: optimizer.steps(),
                metrics: metrics.clone(),
                data_sha256: dataset.sha256.clone(),
            },
            model: StateRecord::from_bytes(model_bytes(&model)?)?,
            optimizer: optimizer.state_record()?,
        };
        ckpt.save(&checkpoint_path)?;
    }
    Ok(RunResult {
        metrics,
        model,
        steps: optimizer.steps(),
    })
}

/// Refuses a checkpoint whose counters disagree with its metrics or its configuration.
pub fn check_counters(meta: &CheckpointMeta, config: &TrainConfig) -> Result<()> {
    if meta.epochs_done != meta.metrics.len() {
        bail!(
            "{} epochs done but metrics of {} epochs",
            meta.epochs_done,
            meta.metrics.len()
        );
    }
    if meta.epochs_done > config.epochs {
        bail!(
            "{} epochs done, more than the configured {}",
            meta.epochs_done,
            config.epochs
        );
    }
    if let Some((i, m)) = meta
        .metrics
        .iter()
        .enumerate()
        .find(|(i, m)| m.epoch != i + 1)
    {
        bail!("metrics row {} is for epoch {}", i + 1, m.epoch);
    }
    Ok(())
}

/// The model's record as bytes; `valid()` first, so that BatchNorm's lazily applied running
/// statistics are synced into what is saved.
pub fn model_bytes(model: &Network) -> Result<Vec<u8>> {
    let bytes = model
        .valid()
        .into_record()
        .into_bytes()
        .map_err(|e| anyhow::anyhow!("cannot encode model: {e:?}"))?;
    Ok(bytes.to_vec())
}

/// `model` with the weights (and `ParamId`s) of a record written by [`model_bytes`].
pub fn load_model(model: Network, record: StateRecord) -> Result<Network> {
    let record = ModuleRecord::from_bytes(Bytes::from_bytes_vec(record.into_bytes()?))
        .map_err(|e| anyhow::anyhow!("bad model record: {e:?}"))?;
    model
        .try_load_record(record)
        .map_err(|e| anyhow::anyhow!("model does not match: {e:?}"))
}

/// Every float tensor of the model (parameters and BatchNorm statistics), in module order.
pub fn tensor_values(model: &Network) -> Vec<Vec<f32>> {
    struct Collect(Vec<Vec<f32>>);
    impl ModuleVisitor for Collect {
        fn visit_float<const D: usize>(&mut self, param: &Param<Tensor<D>>) {
            self.0.push(
                param
                    .val()
                    .into_data()
                    .convert::<f32>()
                    .try_into_vec::<f32>()
                    .expect("f32 data"),
            );
        }
    }
    let mut collect = Collect(Vec::new());
    model.valid().visit(&mut collect);
    collect.0
}

/// The first element of the first tensor, read back (forces pending lazy work to finish).
pub(crate) fn tensor_values_first(model: &Network) -> f32 {
    struct First(Option<f32>);
    impl ModuleVisitor for First {
        fn visit_float<const D: usize>(&mut self, param: &Param<Tensor<D>>) {
            if self.0.is_none() {
                let flat = param.val().flatten::<1>(0, D - 1).slice([0..1]);
                self.0 = Some(flat.into_scalar::<f32>());
            }
        }
    }
    let mut first = First(None);
    model.visit(&mut first);
    first.0.unwrap_or(0.0)
}

fn progress_bar(show: bool, len: u64, config: &TrainConfig, epoch: usize) -> Option<ProgressBar> {
    show.then(|| {
        let bar = ProgressBar::new(len);
        bar.set_style(
            ProgressStyle::with_template("{prefix} [{bar:25}] {pos}/{len} {msg}")
                .expect("valid template")
                .progress_chars("=> "),
        );
        bar.set_prefix(format!(
            "{} epoch {}/{}",
            config.label(),
            epoch + 1,
            config.epochs
        ));
        bar
    })
}

fn write_metrics(out: &Path, metrics: &[EpochMetrics]) -> Result<()> {
    write_atomic(
        &out.join(METRICS_JSON),
        serde_json::to_string_pretty(metrics)?.as_bytes(),
    )?;
    let mut writer = csv::Writer::from_writer(Vec::new());
    for m in metrics {
        writer.serialize(m)?;
    }
    write_atomic(&out.join(METRICS_CSV), &writer.into_inner()?)
}

/// Images `[b, 1, 28, 28]` and labels `[b]` of the examples `indices`.
pub(crate) fn batch_tensors(
    split: &Split,
    indices: &[usize],
    device: &Device,
) -> (Tensor<4>, Tensor<1, Int>) {
    let mut pixels = Vec::with_capacity(indices.len() * IMAGE_PIXELS);
    for &i in indices {
        pixels.extend_from_slice(split.image(i));
    }
    let labels: Vec<i64> = indices
        .iter()
        .map(|&i| i64::from(split.labels[i]))
        .collect();
    let x = Tensor::from_data(
        TensorData::new(pixels, [indices.len(), 1, IMAGE_SIDE, IMAGE_SIDE]),
        device,
    );
    let y = Tensor::from_data(TensorData::new(labels, [indices.len()]), device);
    (x, y)
}

impl Classifier for Network {
    fn logits(&self, images: Tensor<4>) -> Tensor<2> {
        self.forward(images)
    }
}

/// The objective of one step: cross-entropy on the batch; single examples for SSAM drawn from
/// the training set by a generator keyed on (seed, step, draw).
pub(crate) struct BatchObjective<'a> {
    pub(crate) x: Tensor<4>,
    pub(crate) y: Tensor<1, Int>,
    pub(crate) loss_fn: &'a CrossEntropyLoss,
    pub(crate) train: &'a Split,
    pub(crate) seed: u64,
    pub(crate) step: u64,
    pub(crate) device: &'a Device,
    pub(crate) first_logits: Option<Tensor<2>>,
}

impl TrainObjective<Network> for BatchObjective<'_> {
    fn correct(&self) -> Option<usize> {
        Some(
            self.first_logits
                .clone()
                .map_or(0, |logits| count_correct(logits, self.y.clone().inner())),
        )
    }
}

impl Objective<Network> for BatchObjective<'_> {
    fn loss(&mut self, model: &Network) -> Tensor<1> {
        let logits = model.forward(self.x.clone());
        if self.first_logits.is_none() {
            self.first_logits = Some(logits.clone().inner());
        }
        self.loss_fn.forward(logits, self.y.clone())
    }

    fn example_loss(&mut self, model: &Network, draw: usize) -> Option<Tensor<1>> {
        let key = splitmix(splitmix(splitmix(self.seed ^ 0x5353_414d) ^ self.step) ^ draw as u64);
        let index = (key % self.train.n as u64) as usize;
        let (x, y) = batch_tensors(self.train, &[index], self.device);
        Some(self.loss_fn.forward(model.forward(x), y))
    }
}

fn splitmix(x: u64) -> u64 {
    let mut z = x.wrapping_add(0x9e37_79b9_7f4a_7c15);
    z = (z ^ (z >> 30)).wrapping_mul(0xbf58_476d_1ce4_e5b9);
    z = (z ^ (z >> 27)).wrapping_mul(0x94d0_49bb_1331_11eb);
    z ^ (z >> 31)
}
