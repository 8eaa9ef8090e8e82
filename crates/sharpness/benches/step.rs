//! Cost of one sharpness-aware step relative to one base-optimizer step, on an MLP
//! 784-512-512-10, batch 128, Flex CPU backend.
//!
//! `cargo bench -p sharpness --bench step` runs the criterion groups (whole steps; ε and w + ε
//! alone), then prints a table: each method's step and an SGD step timed alternately (101 rounds,
//! medians, so both see the same machine load), and the perturbation's parts alone (fastest of
//! 101 calls). `cargo bench -p sharpness --bench step -- zzz` prints the table only.
//! `SHARPNESS_BENCH_BREAKDOWN=1 cargo bench -p sharpness --bench step` prints instead where one
//! step's time goes (fastest of 101 runs per part); `SHARPNESS_BENCH_PROFILE=<part>` then repeats
//! one part, e.g. under `perf record`.

use std::time::{Duration, Instant};

use burn::module::Module;
use burn::nn::loss::CrossEntropyLossConfig;
use burn::nn::{Linear, LinearConfig, Relu};
use burn::prelude::*;
use burn::tensor::{Distribution, Int};
use criterion::{Criterion, criterion_group};
use sharpness::optim::base;
use sharpness::perturb::{
    Asam, FisherSam, InfoSam, MongeSam, Preconditioner, Sam, Ssam, TwoPass, perturbation,
};
use sharpness::{GradientEstimator, ParamSet, Plain, RhoSchedule, SharpnessAware};

#[derive(Module, Debug)]
struct Mlp {
    fc1: Linear,
    fc2: Linear,
    fc3: Linear,
    relu: Relu,
}

impl Mlp {
    fn new(device: &Device) -> Self {
        Self {
            fc1: LinearConfig::new(784, 512).init(device),
            fc2: LinearConfig::new(512, 512).init(device),
            fc3: LinearConfig::new(512, 10).init(device),
            relu: Relu::new(),
        }
    }

    fn forward(&self, x: Tensor<2>) -> Tensor<2> {
        self.fc3.forward(
            self.relu
                .forward(self.fc2.forward(self.relu.forward(self.fc1.forward(x)))),
        )
    }
}

struct Setup {
    model: Mlp,
    x: Tensor<2>,
    y: Tensor<1, Int>,
}

fn setup() -> Setup {
    let device = Device::flex().autodiff();
    device.seed(0);
    let x = Tensor::<2>::random([128, 784], Distribution::Normal(0.0, 1.0), &device);
    let y = Tensor::<1, Int>::from_ints(
        (0..128).map(|i| i % 10).collect::<Vec<i64>>().as_slice(),
        &device,
    );
    Setup {
        model: Mlp::new(&device),
        x,
        y,
    }
}

struct Batch<'a>(&'a Setup);

impl sharpness::Objective<Mlp> for Batch<'_> {
    fn loss(&mut self, m: &Mlp) -> Tensor<1> {
        let logits = m.forward(self.0.x.clone());
        CrossEntropyLossConfig::new()
            .init(&logits.device())
            .forward(logits, self.0.y.clone())
    }

    fn example_loss(&mut self, m: &Mlp, draw: usize) -> Option<Tensor<1>> {
        let i = draw % 128;
        let logits = m.forward(self.0.x.clone().slice([i..i + 1]));
        Some(
            CrossEntropyLossConfig::new()
                .init(&logits.device())
                .forward(logits, self.0.y.clone().slice([i..i + 1])),
        )
    }
}

fn methods() -> Vec<(&'static str, Box<dyn GradientEstimator>)> {
    vec![
        ("sgd", Box::new(Plain)),
        ("sam", Box::new(TwoPass::new(Sam))),
        ("asam", Box::new(TwoPass::new(Asam::default()))),
        ("fisher", Box::new(TwoPass::new(FisherSam::default()))),
        ("msam", Box::new(TwoPass::new(MongeSam))),
        // SSAM's mask refresh (16 single-example passes) runs once per epoch; here every 1000 steps.
        (
            "ssam",
            Box::new(TwoPass::new(Ssam::new(0.5, 16, 1000).unwrap())),
        ),
        ("infosam", Box::new(TwoPass::new(InfoSam::default()))),
    ]
}

fn optimizer(estimator: Box<dyn GradientEstimator>) -> SharpnessAware {
    SharpnessAware::from_boxed(
        estimator,
        base::sgd(0.9, 5e-4, false).unwrap(),
        RhoSchedule::constant(0.05).unwrap(),
    )
}

/// The fastest of `iters` calls, in seconds (after one warm-up call).
fn fastest(mut f: impl FnMut(), iters: usize) -> f64 {
    f();
    (0..iters)
        .map(|_| {
            let t = Instant::now();
            f();
            t.elapsed().as_secs_f64()
        })
        .fold(f64::INFINITY, f64::min)
}

fn bench_steps(c: &mut Criterion) {
    let s = setup();
    let mut group = c.benchmark_group("step_mlp_784_512_512_10_b128");
    group
        .measurement_time(Duration::from_secs(3))
        .sample_size(20);
    for (name, estimator) in methods() {
        let mut opt = optimizer(estimator);
        let mut model = s.model.clone();
        group.bench_function(name, |b| {
            b.iter(|| model = opt.step(&model, 0.01, &mut Batch(&s)).unwrap().model);
        });
    }
    group.finish();
}

/// A geometry with its name.
type Named = (&'static str, Box<dyn Preconditioner>);

/// A real gradient g and the weights w of the MLP, and every geometry, its state set up as in
/// training (SSAM with a mask, infoSAM with an average).
fn geometries(s: &Setup) -> (ParamSet, ParamSet, Vec<Named>) {
    let loss = Batch(s).loss_of(&s.model);
    let grads = burn::optim::GradientsParams::from_grads(loss.backward(), &s.model);
    let g = ParamSet::from_gradients(&s.model, &grads);
    let w = ParamSet::weights_like(&s.model, &g);
    let mut ssam = Ssam::new(0.5, 16, 1).unwrap();
    ssam.set_mask_from_fisher(&g.mul(&g));
    let mut info = InfoSam::default();
    info.commit(&g.scale(0.9));
    let all: Vec<Named> = vec![
        ("sam", Box::new(Sam)),
        ("asam", Box::new(Asam::default())),
        ("fisher", Box::new(FisherSam::default())),
        ("msam", Box::new(MongeSam)),
        ("ssam", Box::new(ssam)),
        ("infosam", Box::new(info)),
    ];
    (g, w, all)
}

/// ε alone and w + ε from g and w (what a step's second pass uses), for every geometry.
fn bench_perturbations(c: &mut Criterion) {
    let s = setup();
    let (g, w, all) = geometries(&s);
    let mut group = c.benchmark_group("perturbation_mlp_784_512_512_10");
    group
        .measurement_time(Duration::from_secs(2))
        .sample_size(50);
    for (name, geometry) in &all {
        group.bench_function(format!("{name}/epsilon"), |b| {
            b.iter(|| perturbation(geometry.as_ref(), 0.05, &g, &w))
        });
        group.bench_function(format!("{name}/w_plus_epsilon"), |b| {
            b.iter(|| perturbation(geometry.as_ref(), 0.05, &g, &w).apply_to(&w))
        });
    }
    group.finish();
}

/// Steps of `estimator` and of plain SGD, interleaved so that both see the same machine load;
/// returns the median seconds of each.
fn interleaved(s: &Setup, estimator: Box<dyn GradientEstimator>, rounds: usize) -> (f64, f64) {
    let (mut base, mut method) = (optimizer(Box::new(Plain)), optimizer(estimator));
    let (mut base_model, mut model) = (s.model.clone(), s.model.clone());
    let (mut base_times, mut times) = (Vec::new(), Vec::new());
    for round in 0..rounds + WARMUP {
        let t = Instant::now();
        base_model = base.step(&base_model, 0.01, &mut Batch(s)).unwrap().model;
        let base_time = t.elapsed().as_secs_f64();
        let t = Instant::now();
        model = method.step(&model, 0.01, &mut Batch(s)).unwrap().model;
        if round >= WARMUP {
            base_times.push(base_time);
            times.push(t.elapsed().as_secs_f64());
        }
    }
    (median_of(base_times), median_of(times))
}

const WARMUP: usize = 5;

fn median_of(mut v: Vec<f64>) -> f64 {
    v.sort_by(f64::total_cmp);
    v[v.len() / 2]
}

fn ratio_table() {
    let s = setup();
    let (g, w, all) = geometries(&s);
    println!("\nmedians of 101 steps, each after an SGD step | parts alone, fastest of 101 calls");
    println!(
        "{:9} {:>8} {:>9} {:>6} | {:>8} {:>8} {:>6}",
        "method", "SGD (ms)", "step (ms)", "ratio", "ε (ms)", "w + ε", "share"
    );
    for ((name, estimator), (_, geometry)) in methods().into_iter().skip(1).zip(&all) {
        let (base, step) = interleaved(&s, estimator, 101);
        let epsilon = fastest(|| drop(perturbation(geometry.as_ref(), 0.05, &g, &w)), 101);
        let perturbed = fastest(
            || drop(perturbation(geometry.as_ref(), 0.05, &g, &w).apply_to(&w)),
            101,
        );
        let ms = 1e3;
        println!(
            "{name:9} {:8.2} {:9.2} {:6.3} | {:8.3} {:8.3} {:5.1}%",
            base * ms,
            step * ms,
            step / base,
            epsilon * ms,
            perturbed * ms,
            100.0 * perturbed / step,
        );
    }
}

trait LossOf {
    fn loss_of(&mut self, m: &Mlp) -> Tensor<1>;
}

impl LossOf for Batch<'_> {
    fn loss_of(&mut self, m: &Mlp) -> Tensor<1> {
        sharpness::Objective::loss(self, m)
    }
}

criterion_group!(benches, bench_steps, bench_perturbations);

/// Where one SAM step's time goes: each part of `SharpnessAware::step` timed on its own.
fn breakdown() {
    let s = setup();
    // The fastest of 101 runs: what the code costs when nothing else competes for the cores.
    let time = |f: &mut dyn FnMut()| fastest(f, 101) * 1e3;
    let pass = || {
        let loss = Batch(&s).loss_of(&s.model);
        let grads = burn::optim::GradientsParams::from_grads(loss.backward(), &s.model);
        ParamSet::from_gradients(&s.model, &grads)
    };
    let g = pass();
    let w = ParamSet::weights_like(&s.model, &g);
    let mut sgd = base::sgd(0.9, 5e-4, false).unwrap();
    let mut model = s.model.clone();
    let (_, _, all) = geometries(&s);
    let sam = perturbation(&Sam, 0.05, &g, &w);
    let perturbed = sam.clone().apply_to(&w);
    println!("\nbreakdown of one step (ms, fastest of 101)");
    let mut rows: Vec<(String, Box<dyn FnMut() + '_>)> = vec![
        ("forward+backward+collect".into(), Box::new(|| drop(pass()))),
        (
            "model.valid().train()".into(),
            Box::new(|| drop(s.model.valid().train())),
        ),
        (
            "‖g‖² (a fresh set)".into(),
            Box::new(|| _ = ParamSet::from_entries(g.iter().cloned().collect()).squared_norm()),
        ),
    ];
    for (name, geometry) in &all {
        rows.push((
            format!("{name} ε"),
            Box::new(|| drop(perturbation(geometry.as_ref(), 0.05, &g, &w))),
        ));
    }
    rows.extend::<Vec<(String, Box<dyn FnMut() + '_>)>>(vec![
        (
            "w + ε from ε".into(),
            Box::new(|| drop(sam.clone().apply_to(&w))),
        ),
        (
            "set_in_module(..).train()".into(),
            Box::new(|| drop(perturbed.set_in_module(s.model.valid()).train())),
        ),
        (
            "base SGD step".into(),
            Box::new(|| model = sgd.step(0.01, model.clone(), g.to_gradients())),
        ),
    ]);
    // SHARPNESS_BENCH_PROFILE=<row> repeats one row (e.g. under `perf record`).
    let profile = std::env::var("SHARPNESS_BENCH_PROFILE").ok();
    for (name, mut f) in rows {
        if profile.as_deref() == Some(name.as_str()) {
            (0..3000).for_each(|_| f());
            continue;
        }
        println!("  {name:28} {:.3}", time(&mut f));
    }
}

fn main() {
    if std::env::var_os("SHARPNESS_BENCH_BREAKDOWN").is_some() {
        return breakdown();
    }
    benches();
    Criterion::default().configure_from_args().final_summary();
    ratio_table();
}
