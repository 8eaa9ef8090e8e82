//! Training throughput (examples/s) of SGD and each SAM-family method: whole optimizer steps
//! (all passes, base step) on a fixed batch of synthetic images.

use std::time::Instant;

use anyhow::{Context, Result};
use serde::{Deserialize, Serialize};
use sharpness::SharpnessAware;

use super::{BatchObjective, TrainConfig, batch_tensors, device};
use crate::data::{IMAGE_PIXELS, NUM_CLASSES, Split};
use crate::methods::{Method, MethodParams};
use crate::models::{ModelKind, Network};
use burn::nn::loss::CrossEntropyLossConfig;

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

/// Times `steps` optimizer steps per method (median step time), SGD with momentum as base.
pub fn run(
    model: ModelKind,
    batch_size: usize,
    steps: usize,
    warmup: usize,
    methods: &[Method],
    log: &mut dyn FnMut(&str),
) -> Result<BenchReport> {
    let device = device();
    // A synthetic training set: SSAM draws its single examples from it.
    let n = batch_size * 4;
    let images: Vec<f32> = (0..n * IMAGE_PIXELS)
        .map(|k| ((k * 7919) % 255) as f32 / 127.0 - 1.0)
        .collect();
    let labels: Vec<u8> = (0..n).map(|i| (i % NUM_CLASSES) as u8).collect();
    let split = Split { images, labels, n };
    let batch: Vec<usize> = (0..batch_size).collect();
    let loss_fn = CrossEntropyLossConfig::new().init(&device);
    let mut rows: Vec<BenchRow> = Vec::new();
    for &method in methods {
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
        let mut optimizer = SharpnessAware::from_boxed(
            estimator,
            config.base_optimizer()?,
            sharpness::RhoSchedule::constant(rho)?,
        );
        let mut net = Network::new(model, config.width, 0, &device);
        let mut times = Vec::with_capacity(steps);
        let mut passes = 0;
        for k in 0..warmup + steps {
            let (x, y) = batch_tensors(&split, &batch, &device);
            let mut objective = BatchObjective {
                x,
                y,
                loss_fn: &loss_fn,
                train: &split,
                seed: 0,
                step: optimizer.steps(),
                device: &device,
                first_logits: None,
            };
            let started = Instant::now();
            let out = optimizer
                .step(&net, 0.01, &mut objective)
                .with_context(|| format!("bench {method}"))?;
            net = out.model;
            // Force the step's work to finish (the backend may be lazy).
            let _ = super::tensor_values_first(&net);
            if k >= warmup {
                times.push(started.elapsed().as_secs_f64());
            }
            passes = out.passes;
        }
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
    let profile = if cfg!(debug_assertions) {
        "debug"
    } else {
        "release"
    }
    .to_string();
    Ok(BenchReport {
        model,
        batch_size,
        steps,
        warmup,
        profile,
        device: crate::device::name(),
        rows,
    })
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
