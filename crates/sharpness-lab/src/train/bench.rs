//! Training speed: whole optimizer steps (all passes, base step) on a fixed batch of synthetic
//! images. [`run`] times every method of the lab; [`compare_pytorch`] times SGD, SAM and M-SAM
//! side by side with the PyTorch script `bench/pytorch_sam.py` (runs interleaved, medians);
//! [`floor`] holds the library's SAM step against a hand-written two-pass SAM in plain Burn and
//! against the floor (two plain forward/backward passes and the base step); [`pool_ab`] times
//! steps run inside the rayon pool against steps run from the calling thread.

use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::Instant;

use anyhow::{Context, Result, bail};
use burn::module::{Module, ModuleMapper, ModuleVisitor, Param};
use burn::nn::loss::{CrossEntropyLoss, CrossEntropyLossConfig};
use burn::optim::{GradientsParams, ModuleOptimizer};
use burn::prelude::*;
use serde::{Deserialize, Serialize};
use sharpness::SharpnessAware;

use super::{BatchObjective, TrainConfig, batch_tensors, device, in_pool};
use crate::data::{IMAGE_PIXELS, NUM_CLASSES, Split};
use crate::methods::{Method, MethodParams};
use crate::models::{ModelKind, Network};

/// The PyTorch script, compiled in so that an installed binary needs no checkout.
pub const PYTORCH_SCRIPT: &str = include_str!("../../../../bench/pytorch_sam.py");

/// One method's measurement.
#[derive(Clone, Debug, Serialize, Deserialize)]
pub struct BenchRow {
    /// Method.
    pub method: Method,
    /// Forward/backward passes per step.
    pub passes: usize,
    /// Median seconds per step.
    pub median_step_s: f64,
    /// Examples per second at the median step time.
    pub examples_per_sec: f64,
    /// Throughput relative to SGD (SGD = 1).
    pub ratio_to_sgd: f64,
}

/// What was measured and how.
#[derive(Clone, Debug, Serialize, Deserialize)]
pub struct BenchReport {
    /// Network.
    pub model: ModelKind,
    /// Batch size.
    pub batch_size: usize,
    /// Timed steps per method (after `warmup` untimed ones).
    pub steps: usize,
    /// Untimed warm-up steps.
    pub warmup: usize,
    /// Build profile (`release` or `debug`).
    pub profile: String,
    /// The device (`--device`).
    pub device: String,
    /// Rows, in `methods` order.
    pub rows: Vec<BenchRow>,
}

/// The bench's fixed batch: synthetic images (pixel k = (7919 k mod 255)/127 − 1, label i mod 10,
/// as `bench/pytorch_sam.py`) and a training set of 4 batches for SSAM's single-example draws.
struct Setup {
    split: Split,
    x: Tensor<4>,
    y: Tensor<1, Int>,
    loss_fn: CrossEntropyLoss,
    device: Device,
}

impl Setup {
    fn new(batch_size: usize) -> Self {
        let device = device();
        let n = batch_size * 4;
        let images: Vec<f32> = (0..n * IMAGE_PIXELS)
            .map(|k| ((k * 7919) % 255) as f32 / 127.0 - 1.0)
            .collect();
        let labels: Vec<u8> = (0..n).map(|i| (i % NUM_CLASSES) as u8).collect();
        let split = Split { images, labels, n };
        let batch: Vec<usize> = (0..batch_size).collect();
        let (x, y) = batch_tensors(&split, &batch, &device);
        let loss_fn = CrossEntropyLossConfig::new().init(&device);
        Self {
            split,
            x,
            y,
            loss_fn,
            device,
        }
    }

    fn objective(&self, step: u64) -> BatchObjective<'_> {
        BatchObjective {
            x: self.x.clone(),
            y: self.y.clone(),
            loss_fn: &self.loss_fn,
            train: &self.split,
            seed: 0,
            step,
            device: &self.device,
            first_logits: None,
        }
    }

    fn loss(&self, net: &Network) -> Tensor<1> {
        self.loss_fn
            .forward(net.forward(self.x.clone()), self.y.clone())
    }
}

/// The lab's optimizer for `method` as the bench runs it (SGD with momentum as base, ρ = 0.05).
fn optimizer(model: ModelKind, method: Method) -> Result<SharpnessAware> {
    let config = TrainConfig {
        model,
        method,
        ..TrainConfig::default()
    };
    let params = MethodParams {
        refresh_every: Some(1),
        ..bench_params(method)
    };
    let estimator = crate::methods::estimator(method, &params)?;
    let rho = if method == Method::Sgd {
        0.0
    } else {
        config.rho
    };
    Ok(SharpnessAware::from_boxed(
        estimator,
        config.base_optimizer()?,
        sharpness::RhoSchedule::constant(rho)?,
    ))
}

/// The base optimizer alone (SGD, momentum 0.9, weight decay 5e-4), for the plain-Burn steps.
fn base_sgd() -> Result<ModuleOptimizer> {
    TrainConfig::default().base_optimizer()
}

/// One step of the library's `optimizer` on the setup's batch, inside the rayon pool or not:
/// the new network, the pass-0 loss and the passes run.
fn library_step(
    optimizer: &mut SharpnessAware,
    net: Network,
    setup: &Setup,
    pooled: bool,
) -> Result<(Network, f64, usize)> {
    let mut step = || {
        let mut objective = setup.objective(optimizer.steps());
        let out = optimizer.step(&net, 0.01, &mut objective)?;
        // Force the step's work to finish (the backend may be lazy).
        let _ = super::tensor_values_first(&out.model);
        Ok::<_, sharpness::SharpnessError>((out.model, out.loss, out.passes))
    };
    Ok(if pooled { in_pool(step) } else { step() }?)
}

/// Step times (seconds) of `steps` steps of `method` after `warmup` untimed ones, from the
/// seed-0 network; and the passes per step.
fn time_method(
    setup: &Setup,
    model: ModelKind,
    method: Method,
    steps: usize,
    warmup: usize,
) -> Result<(Vec<f64>, usize)> {
    let mut optimizer = optimizer(model, method)?;
    let mut net = Network::new(model, TrainConfig::default().width, 0, &setup.device);
    let mut times = Vec::with_capacity(steps);
    let mut passes = 0;
    for k in 0..warmup + steps {
        let started = Instant::now();
        let (next, _, n) = library_step(&mut optimizer, net, setup, true)
            .with_context(|| format!("bench {method}"))?;
        if k >= warmup {
            times.push(started.elapsed().as_secs_f64());
        }
        net = next;
        passes = n;
    }
    Ok((times, passes))
}

/// Times `steps` optimizer steps per method (median step time), SGD with momentum as base.
pub fn run(
    model: ModelKind,
    batch_size: usize,
    steps: usize,
    warmup: usize,
    methods: &[Method],
    log: &mut dyn FnMut(&str),
) -> Result<BenchReport> {
    let setup = Setup::new(batch_size);
    let mut rows: Vec<BenchRow> = Vec::new();
    for &method in methods {
        let (times, passes) = time_method(&setup, model, method, steps, warmup)?;
        let median = crate::stats::upper_median(&times);
        let rate = batch_size as f64 / median;
        let sgd_rate = rows
            .iter()
            .find(|r| r.method == Method::Sgd)
            .map_or(rate, |r| r.examples_per_sec);
        let row = BenchRow {
            method,
            passes,
            median_step_s: median,
            examples_per_sec: rate,
            ratio_to_sgd: rate / sgd_rate,
        };
        log(&format!(
            "{:<11} passes {:>2}  {:>8.1} ms/step  {:>8.0} ex/s  ×{:.2} of SGD",
            method.display_name(),
            row.passes,
            1e3 * row.median_step_s,
            row.examples_per_sec,
            row.ratio_to_sgd
        ));
        rows.push(row);
    }
    Ok(BenchReport {
        model,
        batch_size,
        steps,
        warmup,
        profile: profile().into(),
        device: crate::device::name(),
        rows,
    })
}

fn profile() -> &'static str {
    if cfg!(debug_assertions) {
        "debug"
    } else {
        "release"
    }
}

/// The method hyperparameters used by the bench (the library defaults; m as the table uses).
fn bench_params(method: Method) -> MethodParams {
    let mut params = MethodParams::default();
    match method {
        Method::FrobSam => params.samples = Some(2),
        Method::TraceSam | Method::DetSam => params.samples = Some(1),
        _ => {}
    }
    params
}

/// A markdown table of the report.
pub fn markdown(report: &BenchReport) -> String {
    let headers = [
        "method",
        "passes/step",
        "ms/step (median)",
        "examples/s",
        "ratio to SGD",
    ];
    let rows: Vec<Vec<String>> = report
        .rows
        .iter()
        .map(|r| {
            vec![
                r.method.display_name().to_string(),
                r.passes.to_string(),
                format!("{:.1}", 1e3 * r.median_step_s),
                format!("{:.0}", r.examples_per_sec),
                format!("{:.2}", r.ratio_to_sgd),
            ]
        })
        .collect();
    format!(
        "{} on {}, batch {}, {} build:\n\n{}",
        report.model,
        report.device,
        report.batch_size,
        report.profile,
        crate::report::markdown_table(&headers, &rows)
    )
}

// ---------------------------------------------------------------------------------------------
// Side by side with PyTorch.

/// The methods the PyTorch script implements, with its names for them.
pub const PYTORCH_METHODS: [(Method, &str); 3] = [
    (Method::Sgd, "sgd"),
    (Method::Sam, "sam"),
    (Method::Msam, "msam"),
];

/// How to run the comparison.
#[derive(Clone, Debug)]
pub struct PytorchOptions {
    /// Networks.
    pub models: Vec<ModelKind>,
    /// Batch size.
    pub batch_size: usize,
    /// Timed steps per method, side and round.
    pub steps: usize,
    /// Untimed warm-up steps per method, side and round.
    pub warmup: usize,
    /// Rounds: each runs the lab's steps, then PyTorch's, for every network.
    pub rounds: usize,
    /// The Python interpreter (with torch).
    pub python: String,
    /// Threads of each side (torch's intra-op threads; the lab's rayon pool is set by the caller).
    pub threads: usize,
    /// SAM steps whose losses both sides print from the same initial weights.
    pub check_steps: usize,
}

/// One network and method on both sides.
#[derive(Clone, Debug, Serialize, Deserialize)]
pub struct PytorchRow {
    /// Network.
    pub model: ModelKind,
    /// Method.
    pub method: Method,
    /// The lab's median step (ms) over all rounds.
    pub rust_ms: f64,
    /// PyTorch's median step (ms) over all rounds.
    pub pytorch_ms: f64,
    /// `rust_ms / pytorch_ms`.
    pub ratio: f64,
}

/// One network's memory and correctness check.
#[derive(Clone, Debug, Serialize, Deserialize)]
pub struct PytorchNetwork {
    /// Network.
    pub model: ModelKind,
    /// Parameter values in the lab / in PyTorch (BatchNorm's running statistics included).
    pub params: [usize; 2],
    /// Peak resident memory (MiB) of the lab's process while it ran this network's steps
    /// (`None` where the OS does not tell), and of the PyTorch process.
    pub peak_rss_mib: [Option<f64>; 2],
    /// Pass-0 losses of SAM steps from the same initial weights: the lab's, PyTorch's.
    pub check_losses: [Vec<f64>; 2],
}

/// The comparison.
#[derive(Clone, Debug, Serialize, Deserialize)]
pub struct PytorchReport {
    /// torch's version.
    pub torch: String,
    /// Threads on each side.
    pub threads: usize,
    /// Batch size.
    pub batch_size: usize,
    /// Rounds × steps per method and side.
    pub rounds: usize,
    /// Timed steps per round.
    pub steps: usize,
    /// Build profile of the lab.
    pub profile: String,
    /// Rows, network by network.
    pub rows: Vec<PytorchRow>,
    /// Per network: parameters, memory, loss check.
    pub networks: Vec<PytorchNetwork>,
}

/// What the script prints.
#[derive(Deserialize)]
struct ScriptOutput {
    torch: String,
    params: usize,
    times: std::collections::BTreeMap<String, Vec<f64>>,
    peak_rss_mib: f64,
    #[serde(default)]
    check_losses: Vec<f64>,
}

/// torch's version, or why `python` cannot import it.
pub fn probe_torch(python: &str) -> std::result::Result<String, String> {
    let out = Command::new(python)
        .args(["-c", "import torch; print(torch.__version__)"])
        .output()
        .map_err(|e| format!("cannot run `{python}`: {e}"))?;
    if !out.status.success() {
        let err = String::from_utf8_lossy(&out.stderr);
        let last = err.lines().last().unwrap_or("").trim();
        return Err(format!("`{python}` cannot import torch ({last})"));
    }
    Ok(String::from_utf8_lossy(&out.stdout).trim().to_string())
}

/// Times SGD, SAM and M-SAM on the lab and in PyTorch, `rounds` times alternately, and checks
/// that both sides compute the same SAM steps from the same initial weights.
pub fn compare_pytorch(
    options: &PytorchOptions,
    work_dir: &Path,
    log: &mut dyn FnMut(&str),
) -> Result<PytorchReport> {
    if options.rounds == 0 || options.steps == 0 {
        bail!("--rounds and --steps must be ≥ 1");
    }
    let script = work_dir.join("pytorch_sam.py");
    std::fs::write(&script, PYTORCH_SCRIPT)
        .with_context(|| format!("cannot write {}", script.display()))?;
    let setup = Setup::new(options.batch_size);
    let mut rows = Vec::new();
    let mut networks = Vec::new();
    let mut torch = String::new();
    for &model in &options.models {
        let net = Network::new(model, TrainConfig::default().width, 0, &setup.device);
        let weights = work_dir.join(format!("init-{model}.json"));
        write_weights(&net, &weights)?;
        let rust_losses = check_losses(&setup, model, options.check_steps)?;
        let mut rust: Vec<Vec<f64>> = vec![Vec::new(); PYTORCH_METHODS.len()];
        let mut torch_times: Vec<Vec<f64>> = vec![Vec::new(); PYTORCH_METHODS.len()];
        let mut torch_params = 0;
        let mut torch_losses = Vec::new();
        let (mut rust_rss, mut torch_rss) = (None::<f64>, 0.0f64);
        for round in 0..options.rounds {
            reset_peak_rss();
            for (i, &(method, _)) in PYTORCH_METHODS.iter().enumerate() {
                let (times, _) = time_method(&setup, model, method, options.steps, options.warmup)?;
                rust[i].extend(times);
            }
            if let Some(rss) = peak_rss_mib() {
                rust_rss = Some(rust_rss.map_or(rss, |r| r.max(rss)));
            }
            let check = if round == 0 { options.check_steps } else { 0 };
            let out = run_script(&script, options, model, &weights, check)?;
            for (i, &(_, name)) in PYTORCH_METHODS.iter().enumerate() {
                let times = out
                    .times
                    .get(name)
                    .with_context(|| format!("the PyTorch script returned no `{name}` times"))?;
                torch_times[i].extend(times);
            }
            torch_params = out.params;
            torch_rss = torch_rss.max(out.peak_rss_mib);
            if round == 0 {
                torch_losses = out.check_losses;
            }
            torch = out.torch;
            log(&format!(
                "{model} round {}/{}: SAM {:.1} ms (lab) / {:.1} ms (PyTorch)",
                round + 1,
                options.rounds,
                1e3 * crate::stats::upper_median(&rust[1]),
                1e3 * crate::stats::upper_median(&torch_times[1]),
            ));
        }
        for (i, &(method, _)) in PYTORCH_METHODS.iter().enumerate() {
            let rust_ms = 1e3 * crate::stats::upper_median(&rust[i]);
            let pytorch_ms = 1e3 * crate::stats::upper_median(&torch_times[i]);
            rows.push(PytorchRow {
                model,
                method,
                rust_ms,
                pytorch_ms,
                ratio: rust_ms / pytorch_ms,
            });
        }
        networks.push(PytorchNetwork {
            model,
            params: [net.num_params(), torch_params],
            peak_rss_mib: [rust_rss, Some(torch_rss)],
            check_losses: [rust_losses, torch_losses],
        });
    }
    Ok(PytorchReport {
        torch,
        threads: options.threads,
        batch_size: options.batch_size,
        rounds: options.rounds,
        steps: options.steps,
        profile: profile().into(),
        rows,
        networks,
    })
}

fn run_script(
    script: &Path,
    options: &PytorchOptions,
    model: ModelKind,
    weights: &Path,
    check_steps: usize,
) -> Result<ScriptOutput> {
    let methods: Vec<&str> = PYTORCH_METHODS.iter().map(|&(_, name)| name).collect();
    let out = Command::new(&options.python)
        .arg(script)
        .args(["--model", model.name()])
        .args(["--methods", &methods.join(",")])
        .args(["--batch-size", &options.batch_size.to_string()])
        .args(["--steps", &options.steps.to_string()])
        .args(["--warmup", &options.warmup.to_string()])
        .args(["--threads", &options.threads.to_string()])
        .args(["--width", &TrainConfig::default().width.to_string()])
        .arg("--weights")
        .arg(weights)
        .args(["--check-steps", &check_steps.to_string()])
        .output()
        .with_context(|| format!("cannot run `{}`", options.python))?;
    if !out.status.success() {
        bail!(
            "{} {} failed: {}",
            options.python,
            script.display(),
            String::from_utf8_lossy(&out.stderr).trim()
        );
    }
    serde_json::from_slice(&out.stdout).with_context(|| {
        format!(
            "the PyTorch script printed no result: {}",
            String::from_utf8_lossy(&out.stdout)
        )
    })
}

/// Pass-0 losses of `steps` SAM steps of the seed-0 network.
fn check_losses(setup: &Setup, model: ModelKind, steps: usize) -> Result<Vec<f64>> {
    let mut optimizer = optimizer(model, Method::Sam)?;
    let mut net = Network::new(model, TrainConfig::default().width, 0, &setup.device);
    let mut losses = Vec::with_capacity(steps);
    for _ in 0..steps {
        let (next, loss, _) = library_step(&mut optimizer, net, setup, true)?;
        losses.push(loss);
        net = next;
    }
    Ok(losses)
}

/// The network's trainable parameters in visiting order, as JSON (`{"params": [{"shape",
/// "values"}]}`) for the script's `--weights`.
fn write_weights(net: &Network, path: &Path) -> Result<()> {
    #[derive(Serialize)]
    struct Entry {
        shape: Vec<usize>,
        values: Vec<f32>,
    }
    #[derive(Serialize)]
    struct Weights {
        params: Vec<Entry>,
    }
    struct Collect(Vec<Entry>);
    impl ModuleVisitor for Collect {
        fn visit_float<const D: usize>(&mut self, param: &Param<Tensor<D>>) {
            let value = param.val();
            let shape = value.dims().to_vec();
            let values = value.into_data().try_into_vec::<f32>().unwrap_or_default();
            self.0.push(Entry { shape, values });
        }
    }
    let mut collect = Collect(Vec::new());
    net.visit(&mut collect);
    let json = serde_json::to_vec(&Weights { params: collect.0 })?;
    std::fs::write(path, json).with_context(|| format!("cannot write {}", path.display()))
}

/// Resets the process's peak resident set (Linux `clear_refs`; elsewhere nothing).
fn reset_peak_rss() {
    let _ = std::fs::write("/proc/self/clear_refs", "5");
}

/// The process's peak resident set in MiB since the last reset (Linux `VmHWM`).
pub fn peak_rss_mib() -> Option<f64> {
    let status = std::fs::read_to_string("/proc/self/status").ok()?;
    let line = status.lines().find(|l| l.starts_with("VmHWM:"))?;
    let kib: f64 = line.split_whitespace().nth(1)?.parse().ok()?;
    Some(kib / 1024.0)
}

/// The comparison as markdown: step medians and ratios, then memory and the loss check.
pub fn pytorch_markdown(report: &PytorchReport) -> String {
    let headers = [
        "network",
        "method",
        "lab (ms/step)",
        "PyTorch (ms/step)",
        "lab / PyTorch",
    ];
    let rows: Vec<Vec<String>> = report
        .rows
        .iter()
        .map(|r| {
            vec![
                r.model.to_string(),
                r.method.display_name().to_string(),
                format!("{:.1}", r.rust_ms),
                format!("{:.1}", r.pytorch_ms),
                format!("{:.2}", r.ratio),
            ]
        })
        .collect();
    let mib = |m: Option<f64>| m.map_or("n/a".to_string(), |m| format!("{m:.0}"));
    let memory: Vec<Vec<String>> = report
        .networks
        .iter()
        .map(|n| {
            let losses = |l: &[f64]| {
                l.iter()
                    .map(|v| format!("{v:.5}"))
                    .collect::<Vec<_>>()
                    .join(", ")
            };
            vec![
                n.model.to_string(),
                format!("{} / {}", n.params[0], n.params[1]),
                mib(n.peak_rss_mib[0]),
                mib(n.peak_rss_mib[1]),
                losses(&n.check_losses[0]),
                losses(&n.check_losses[1]),
            ]
        })
        .collect();
    format!(
        "lab ({} build, Flex) against PyTorch {} on CPU, {} threads each, batch {}, medians of \
         {} rounds × {} steps, run alternately:\n\n{}\n\n{}",
        report.profile,
        report.torch,
        report.threads,
        report.batch_size,
        report.rounds,
        report.steps,
        crate::report::markdown_table(&headers, &rows),
        crate::report::markdown_table(
            &[
                "network",
                "values incl. BN statistics (lab / PyTorch)",
                "lab peak RSS (MiB)",
                "PyTorch peak RSS (MiB)",
                "SAM losses, lab",
                "SAM losses, PyTorch",
            ],
            &memory
        )
    )
}

// ---------------------------------------------------------------------------------------------
// The wrapper against plain Burn, and the rayon pool.

/// The library's SAM step against plain Burn on one network (medians, ms).
#[derive(Clone, Debug, Serialize, Deserialize)]
pub struct FloorRow {
    /// Network.
    pub model: ModelKind,
    /// The library's SAM step (`SharpnessAware` with `TwoPass<Sam>`).
    pub library_ms: f64,
    /// A two-pass SAM written in plain Burn (mapper for w + ε, `GradientsParams`, base step).
    pub hand_ms: f64,
    /// Two plain forward/backward passes and the base step: no SAM can be faster.
    pub floor_ms: f64,
}

/// Rounds of steps of each variant in rotating order (so all see the same machine load);
/// returns each variant's step times.
fn interleave(
    variants: &mut [&mut dyn FnMut() -> Result<()>],
    rounds: usize,
    warmup: usize,
) -> Result<Vec<Vec<f64>>> {
    let n = variants.len();
    let mut times = vec![Vec::with_capacity(rounds); n];
    for round in 0..warmup + rounds {
        for k in 0..n {
            let i = (round + k) % n;
            let started = Instant::now();
            (variants[i])()?;
            if round >= warmup {
                times[i].push(started.elapsed().as_secs_f64());
            }
        }
    }
    Ok(times)
}

/// ε = ρ g/‖g‖ added to each parameter with a gradient, as a plain-Burn user writes it.
struct Perturb<'a> {
    grads: &'a GradientsParams,
    scale: f32,
}

impl ModuleMapper for Perturb<'_> {
    fn map_float<const D: usize>(&mut self, param: Param<Tensor<D>>) -> Param<Tensor<D>> {
        let (id, value, mapper) = param.consume();
        let value = match self.grads.get::<D>(id) {
            Some(g) => Tensor::from_inner(value.inner() + g.mul_scalar(self.scale)).require_grad(),
            None => value,
        };
        Param::from_mapped_value(id, value, mapper)
    }
}

/// ‖g‖² over every parameter with a gradient.
struct SquaredNorm<'a> {
    grads: &'a GradientsParams,
    sum: Option<Tensor<1>>,
}

impl ModuleVisitor for SquaredNorm<'_> {
    fn visit_float<const D: usize>(&mut self, param: &Param<Tensor<D>>) {
        if let Some(g) = self.grads.get::<D>(param.id) {
            let s = g.square().sum();
            self.sum = Some(match self.sum.take() {
                Some(acc) => acc + s,
                None => s,
            });
        }
    }
}

/// A two-pass SAM step in plain Burn.
fn hand_sam(setup: &Setup, net: &Network, base: &mut ModuleOptimizer, rho: f64) -> Result<Network> {
    let grads = GradientsParams::from_grads(setup.loss(net).backward(), net);
    let mut norm = SquaredNorm {
        grads: &grads,
        sum: None,
    };
    net.visit(&mut norm);
    let norm = norm
        .sum
        .context("no gradients")?
        .sqrt()
        .into_scalar::<f32>();
    let perturbed = net.clone().map(&mut Perturb {
        grads: &grads,
        scale: (rho / (f64::from(norm) + 1e-12)) as f32,
    });
    let grads = GradientsParams::from_grads(setup.loss(&perturbed).backward(), &perturbed);
    Ok(base.step(0.01, net.clone(), grads))
}

/// Two plain passes and the base step.
fn floor_step(setup: &Setup, net: &Network, base: &mut ModuleOptimizer) -> Network {
    let first = GradientsParams::from_grads(setup.loss(net).backward(), net);
    drop(first);
    let grads = GradientsParams::from_grads(setup.loss(net).backward(), net);
    base.step(0.01, net.clone(), grads)
}

/// The library's SAM step, a hand-written plain-Burn SAM and the floor, interleaved, for each
/// network; every step runs inside the rayon pool.
pub fn floor(
    models: &[ModelKind],
    batch_size: usize,
    rounds: usize,
    log: &mut dyn FnMut(&str),
) -> Result<Vec<FloorRow>> {
    let setup = Setup::new(batch_size);
    let width = TrainConfig::default().width;
    let mut rows = Vec::new();
    for &model in models {
        let mut library = optimizer(model, Method::Sam)?;
        let (mut hand_base, mut floor_base) = (base_sgd()?, base_sgd()?);
        let start = Network::new(model, width, 0, &setup.device);
        let (mut a, mut b, mut c) = (Some(start.clone()), start.clone(), start);
        let setup = &setup;
        let mut lib = || -> Result<()> {
            let net = a.take().context("network")?;
            a = Some(library_step(&mut library, net, setup, true)?.0);
            Ok(())
        };
        let mut hand = || -> Result<()> {
            b = in_pool(|| hand_sam(setup, &b, &mut hand_base, 0.05))?;
            let _ = super::tensor_values_first(&b);
            Ok(())
        };
        let mut flo = || -> Result<()> {
            c = in_pool(|| floor_step(setup, &c, &mut floor_base));
            let _ = super::tensor_values_first(&c);
            Ok(())
        };
        let times = interleave(&mut [&mut lib, &mut hand, &mut flo], rounds, 2)?;
        let [library_ms, hand_ms, floor_ms] =
            [0, 1, 2].map(|i| 1e3 * crate::stats::upper_median(&times[i]));
        log(&format!(
            "{model}: library {library_ms:.2} ms, plain-Burn SAM {hand_ms:.2} ms, floor \
             {floor_ms:.2} ms: library/floor {:.3}",
            library_ms / floor_ms
        ));
        rows.push(FloorRow {
            model,
            library_ms,
            hand_ms,
            floor_ms,
        });
    }
    Ok(rows)
}

/// The floor report as markdown.
pub fn floor_markdown(rows: &[FloorRow], batch_size: usize, rounds: usize) -> String {
    let table: Vec<Vec<String>> = rows
        .iter()
        .map(|r| {
            vec![
                r.model.to_string(),
                format!("{:.2}", r.library_ms),
                format!("{:.2}", r.hand_ms),
                format!("{:.2}", r.floor_ms),
                format!("{:.3}", r.library_ms / r.floor_ms),
                format!("{:.3}", r.hand_ms / r.floor_ms),
            ]
        })
        .collect();
    format!(
        "SAM step, batch {batch_size}, medians of {rounds} interleaved rounds ({} build):\n\n{}",
        profile(),
        crate::report::markdown_table(
            &[
                "network",
                "library (ms)",
                "plain-Burn SAM (ms)",
                "floor: 2 passes + base step (ms)",
                "library / floor",
                "plain-Burn / floor",
            ],
            &table
        )
    )
}

/// SAM steps inside the rayon pool against steps from the calling thread, interleaved: medians
/// (ms) `[pooled, unpooled]` per network.
pub fn pool_ab(
    models: &[ModelKind],
    batch_size: usize,
    rounds: usize,
    log: &mut dyn FnMut(&str),
) -> Result<Vec<(ModelKind, [f64; 2])>> {
    let setup = Setup::new(batch_size);
    let width = TrainConfig::default().width;
    let mut rows = Vec::new();
    for &model in models {
        let (mut opt_in, mut opt_out) = (
            optimizer(model, Method::Sam)?,
            optimizer(model, Method::Sam)?,
        );
        let start = Network::new(model, width, 0, &setup.device);
        let (mut a, mut b) = (Some(start.clone()), Some(start));
        let setup = &setup;
        let mut pooled = || -> Result<()> {
            let net = a.take().context("network")?;
            a = Some(library_step(&mut opt_in, net, setup, true)?.0);
            Ok(())
        };
        let mut unpooled = || -> Result<()> {
            let net = b.take().context("network")?;
            b = Some(library_step(&mut opt_out, net, setup, false)?.0);
            Ok(())
        };
        let times = interleave(&mut [&mut pooled, &mut unpooled], rounds, 2)?;
        let medians = [0, 1].map(|i| 1e3 * crate::stats::upper_median(&times[i]));
        log(&format!(
            "{model}: SAM step in the pool {:.2} ms, outside {:.2} ms ({:+.1} %)",
            medians[0],
            medians[1],
            100.0 * (medians[0] / medians[1] - 1.0)
        ));
        rows.push((model, medians));
    }
    Ok(rows)
}

/// Where the comparison writes its scratch files (the script, the initial weights).
pub fn scratch_dir() -> Result<PathBuf> {
    let dir = std::env::temp_dir().join(format!("sharpness-bench-{}", std::process::id()));
    std::fs::create_dir_all(&dir).with_context(|| format!("cannot create {}", dir.display()))?;
    Ok(dir)
}

#[cfg(test)]
mod tests {
    use super::*;

    /// The first weight of each network, for comparing two trained copies.
    fn weights(net: &Network) -> Vec<f32> {
        struct All(Vec<f32>);
        impl ModuleVisitor for All {
            fn visit_float<const D: usize>(&mut self, param: &Param<Tensor<D>>) {
                let v = param.val().into_data().try_into_vec::<f32>().unwrap();
                self.0.extend(v);
            }
        }
        let mut all = All(Vec::new());
        net.visit(&mut all);
        all.0
    }

    /// The plain-Burn SAM of the floor bench computes the library's SAM step (so the bench
    /// compares like with like): the same weights after two steps of the MLP.
    #[test]
    fn hand_written_sam_is_the_library_step() {
        let setup = Setup::new(16);
        let start = Network::new(ModelKind::Mlp, 8, 3, &setup.device);
        let mut library = optimizer(ModelKind::Mlp, Method::Sam).unwrap();
        let mut base = base_sgd().unwrap();
        let (mut a, mut b) = (start.clone(), start);
        for _ in 0..2 {
            a = library_step(&mut library, a, &setup, true).unwrap().0;
            b = hand_sam(&setup, &b, &mut base, 0.05).unwrap();
        }
        let (a, b) = (weights(&a), weights(&b));
        assert_eq!(a.len(), 784 * 8 + 8 + 8 * 8 + 8 + 8 * 10 + 10);
        let worst = a
            .iter()
            .zip(&b)
            .map(|(x, y)| (x - y).abs())
            .fold(0.0, f32::max);
        assert!(worst < 1e-6, "largest difference {worst}");
        // The steps moved the weights (a comparison of two untouched copies proves nothing).
        let start = weights(&Network::new(ModelKind::Mlp, 8, 3, &setup.device));
        assert!(a.iter().zip(&start).any(|(x, y)| (x - y).abs() > 1e-5));
    }

    /// The weights file lists every tensor the lab visits, in order, with its shape and values.
    #[test]
    fn weights_file_lists_the_tensors_in_visiting_order() {
        let device = device();
        let net = Network::new(ModelKind::Cnn, 8, 0, &device);
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("w.json");
        write_weights(&net, &path).unwrap();
        let json: serde_json::Value =
            serde_json::from_slice(&std::fs::read(&path).unwrap()).unwrap();
        let shapes: Vec<Vec<u64>> = json["params"]
            .as_array()
            .unwrap()
            .iter()
            .map(|e| {
                let shape = e["shape"].as_array().unwrap();
                let shape: Vec<u64> = shape.iter().map(|d| d.as_u64().unwrap()).collect();
                let n: u64 = shape.iter().product();
                assert_eq!(e["values"].as_array().unwrap().len() as u64, n);
                shape
            })
            .collect();
        // conv1, bn1 (γ, β, running mean, running variance), conv2, bn2, fc (weight [in, out], bias).
        let expected: Vec<Vec<u64>> = vec![
            vec![16, 1, 3, 3],
            vec![16],
            vec![16],
            vec![16],
            vec![16],
            vec![32, 16, 3, 3],
            vec![32],
            vec![32],
            vec![32],
            vec![32],
            vec![1568, 10],
            vec![10],
        ];
        assert_eq!(shapes, expected);
        assert_eq!(
            json["params"][0]["values"][0].as_f64().unwrap() as f32,
            weights(&net)[0]
        );
    }

    #[test]
    fn a_python_without_torch_is_reported_not_fatal() {
        let err = probe_torch("/nonexistent/python3").unwrap_err();
        assert!(err.contains("cannot run `/nonexistent/python3`"), "{err}");
    }
}
