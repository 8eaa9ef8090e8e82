//! Cost of one sharpness-aware step relative to one base-optimizer step (issue: ≤ 2.1×, with the
//! perturbation itself ≤ 3% of the step), on an MLP 784-512-512-10, batch 128, Flex CPU backend.
//!
//! `cargo bench -p sharpness --bench step` runs the criterion groups (whole steps; ε and w + ε
//! alone), then prints a table: each method's step and an SGD step timed alternately (101 rounds,
//! medians, so both see the same machine load), w + ε with the state update timed inside those
//! steps, ε's own cost there (w + ε less SAM's, whose ε is free: what a rule adds to the write
//! every method pays), and the parts alone (fastest of 101 calls). The row `infosam/apart`
//! commits infoSAM's moving average as a pass of its own (the trait's default) instead of in the
//! pass that reads g and m for the norm.
//! `SHARPNESS_BENCH_BREAKDOWN=1 cargo bench -p sharpness --bench step` prints instead where one
//! step's time goes (fastest of 101 runs per part); `SHARPNESS_BENCH_PROFILE=<part>` then repeats
//! one part, e.g. under `perf record`.

use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use burn::module::Module;
use burn::nn::loss::CrossEntropyLossConfig;
use burn::nn::{Linear, LinearConfig, Relu};
use burn::prelude::*;
use burn::tensor::{Distribution, Int};
use criterion::{Criterion, criterion_group};
use sharpness::optim::base;
use sharpness::perturb::diagonal::{self, DiagonalRule};
use sharpness::perturb::{
    Asam, FisherSam, InfoSam, MongeSam, Normalization, Perturbation, Perturbed, Preconditioner,
    Sam, Ssam, TwoPass,
};
use sharpness::{
    GradientEstimator, Oracle, ParamSet, Plain, RhoSchedule, SharpnessAware, SharpnessError,
    StepContext,
};

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

/// ε alone (what `Preconditioner::perturbation` returns) and w + ε from g and w (what a step's
/// second pass uses), for every two-pass method, from a real gradient of the MLP.
fn bench_perturbations(c: &mut Criterion) {
    let s = setup();
    let loss = Batch(&s).loss_of(&s.model);
    let grads = burn::optim::GradientsParams::from_grads(loss.backward(), &s.model);
    let g = ParamSet::from_gradients(&s.model, &grads);
    let w = ParamSet::weights_like(&s.model, &g);
    let mut ssam = Ssam::new(0.5, 16, 1).unwrap();
    ssam.set_mask_from_fisher(&g.mul(&g));
    let mut info = InfoSam::default();
    info.commit(&g.scale(0.9));
    let mut group = c.benchmark_group("perturbation_mlp_784_512_512_10");
    group
        .measurement_time(Duration::from_secs(2))
        .sample_size(50);
    // What an infoSAM step computes: w + ε with the moving average for the next step.
    group.bench_function("infosam/w_plus_epsilon_and_state", |b| {
        b.iter(|| info.clone().perturb_and_commit(0.05, &g, &w))
    });
    let rules: Vec<(&str, Box<dyn Preconditioner>)> = vec![
        ("sam", Box::new(Sam)),
        ("asam", Box::new(Asam::default())),
        ("fisher", Box::new(FisherSam::default())),
        ("msam", Box::new(MongeSam)),
        ("ssam", Box::new(ssam)),
        ("infosam", Box::new(info)),
    ];
    for (name, rule) in &rules {
        group.bench_function(format!("{name}/epsilon"), |b| {
            b.iter(|| rule.perturbation(0.05, &g, &w))
        });
        group.bench_function(format!("{name}/w_plus_epsilon"), |b| {
            b.iter(|| rule.perturbed_weights(0.05, &g, &w))
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

/// A preconditioner that records how long w + ε and its state update take together inside real
/// steps (the clones a step keeps for roll-back share the record). With `apart`, the state update
/// is a `commit` of its own after w + ε (the trait's default) instead of the rule's fused one.
#[derive(Clone)]
struct Timed<P> {
    inner: P,
    apart: bool,
    perturbed: Arc<Mutex<Vec<f64>>>,
}

impl<P: Preconditioner> Preconditioner for Timed<P> {
    fn name(&self) -> String {
        self.inner.name()
    }
    fn normalization(&self) -> Normalization {
        self.inner.normalization()
    }
    fn direction(&self, g: &ParamSet, w: &ParamSet) -> ParamSet {
        self.inner.direction(g, w)
    }
    fn perturbation(&self, rho: f64, g: &ParamSet, w: &ParamSet) -> Perturbation {
        self.inner.perturbation(rho, g, w)
    }
    fn perturbed_weights(&self, rho: f64, g: &ParamSet, w: &ParamSet) -> Perturbed {
        self.inner.perturbed_weights(rho, g, w)
    }
    fn commit(&mut self, g: &ParamSet) {
        self.inner.commit(g);
    }
    fn perturb_and_commit(&mut self, rho: f64, g: &ParamSet, w: &ParamSet) -> Perturbed {
        let t = Instant::now();
        let p = match self.apart {
            true => {
                let p = self.inner.perturbed_weights(rho, g, w);
                self.inner.commit(g);
                p
            }
            false => self.inner.perturb_and_commit(rho, g, w),
        };
        self.perturbed
            .lock()
            .unwrap()
            .push(t.elapsed().as_secs_f64());
        p
    }
    fn after_step(
        &mut self,
        oracle: &mut dyn Oracle,
        ctx: &StepContext,
    ) -> Result<(), SharpnessError> {
        self.inner.after_step(oracle, ctx)
    }
}

/// In real steps (interleaved with SGD steps): median seconds of the SGD step, of the method's
/// step, and of its perturbed weights w + ε (from g and w) with its state update.
fn in_steps<P: Preconditioner + Clone + 'static>(
    s: &Setup,
    inner: P,
    apart: bool,
    rounds: usize,
) -> [f64; 3] {
    let timed = Timed {
        inner,
        apart,
        perturbed: Arc::default(),
    };
    let perturbed = timed.perturbed.clone();
    let (base, step) = interleaved(s, Box::new(TwoPass::new(timed)), rounds);
    let perturbed = median_of(perturbed.lock().unwrap()[WARMUP..].to_vec());
    [base, step, perturbed]
}

/// Times of a method's parts on their own, in seconds (fastest of 101 calls: without
/// interference from the rest of the machine).
struct Parts {
    /// w + ε from g and w, with the state update, as a step computes them.
    perturbed: f64,
    /// ε alone, materialised ([`Preconditioner::perturbation`]).
    perturbation: f64,
    /// ε by tensor operations (the path of other backends).
    tensor_ops: f64,
}

fn ratio_table() {
    let s = setup();
    // The parts alone: from a real gradient and weights.
    let loss = Batch(&s).loss_of(&s.model);
    let grads = burn::optim::GradientsParams::from_grads(loss.backward(), &s.model);
    let g = ParamSet::from_gradients(&s.model, &grads);
    let w = ParamSet::weights_like(&s.model, &g);
    println!("\nmedians of 101 steps, each after an SGD step | parts alone, fastest of 101 calls");
    println!("(w + ε: with the state update; ε's own: w + ε in steps less SAM's, whose ε is free,");
    println!(" i.e. what the rule adds to the write of w + ε that every method pays;");
    println!(" infosam/apart: its moving average as a pass of its own after w + ε)");
    println!(
        "{:13} {:>8} {:>9} {:>6} {:>11} {:>6} {:>8} {:>6} | {:>8} {:>6} {:>8} {:>10}",
        "method",
        "SGD (ms)",
        "step (ms)",
        "ratio",
        "w + ε (ms)",
        "share",
        "ε's own",
        "share",
        "w + ε",
        "share",
        "ε",
        "ε (tensor)"
    );
    let mut write_only = f64::NAN;
    for name in [
        "sam",
        "asam",
        "fisher",
        "msam",
        "ssam",
        "infosam",
        "infosam/apart",
    ] {
        let rounds = 101;
        let [base, step, perturbed] = match name {
            "sam" => in_steps(&s, Sam, false, rounds),
            "asam" => in_steps(&s, Asam::default(), false, rounds),
            "fisher" => in_steps(&s, FisherSam::default(), false, rounds),
            "msam" => in_steps(&s, MongeSam, false, rounds),
            "ssam" => in_steps(&s, Ssam::new(0.5, 16, 1000).unwrap(), false, rounds),
            "infosam" => in_steps(&s, InfoSam::default(), false, rounds),
            _ => in_steps(&s, InfoSam::default(), true, rounds),
        };
        let parts = parts(name, &g, &w);
        if name == "sam" {
            write_only = perturbed;
        }
        let own = (perturbed - write_only).max(0.0);
        let ms = 1e3;
        println!(
            "{name:13} {:8.2} {:9.2} {:6.2} {:11.3} {:5.1}% {:8.3} {:5.1}% | {:8.3} {:5.1}% {:8.3} {:10.3}",
            base * ms,
            step * ms,
            step / base,
            perturbed * ms,
            100.0 * perturbed / step,
            own * ms,
            100.0 * own / step,
            parts.perturbed * ms,
            100.0 * parts.perturbed / step,
            parts.perturbation * ms,
            parts.tensor_ops * ms,
        );
    }
}

fn parts(name: &str, g: &ParamSet, w: &ParamSet) -> Parts {
    fn of<R: DiagonalRule + Preconditioner + Clone>(
        r: R,
        g: &ParamSet,
        w: &ParamSet,
        apart: bool,
    ) -> Parts {
        let with_state = || {
            let mut r = r.clone();
            match apart {
                true => {
                    drop(r.perturbed_weights(0.05, g, w));
                    r.commit(g);
                }
                false => drop(r.perturb_and_commit(0.05, g, w)),
            }
        };
        Parts {
            perturbed: fastest(with_state, 101),
            perturbation: fastest(|| drop(r.perturbation(0.05, g, w)), 101),
            tensor_ops: fastest(|| drop(diagonal::unfused(&r, 0.05, g, w)), 101),
        }
    }
    match name {
        "sam" => of(Sam, g, w, false),
        "asam" => of(Asam::default(), g, w, false),
        "fisher" => of(FisherSam::default(), g, w, false),
        "msam" => of(MongeSam, g, w, false),
        "ssam" => {
            let mut ssam = Ssam::new(0.5, 16, 1).unwrap();
            ssam.set_mask_from_fisher(&g.mul(g));
            of(ssam, g, w, false)
        }
        _ => {
            let mut info = InfoSam::default();
            info.commit(&g.scale(0.9));
            of(info, g, w, name == "infosam/apart")
        }
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
    let (sam, asam, fisher) = (Sam, Asam::default(), FisherSam::default());
    let mut ssam = Ssam::new(0.5, 16, 1).unwrap();
    ssam.set_mask_from_fisher(&g.mul(&g));
    let mut info = InfoSam::default();
    info.commit(&g.scale(0.9));
    let p = sam.perturbation(0.05, &g, &w);
    let perturbed = p.apply_to(&w);
    println!("\nbreakdown of one step (ms, fastest of 101)");
    let rows: Vec<(&str, Box<dyn FnMut() + '_>)> = vec![
        ("forward+backward+collect", Box::new(|| drop(pass()))),
        (
            "model.valid().train()",
            Box::new(|| drop(s.model.valid().train())),
        ),
        (
            "‖g‖² (a fresh set)",
            Box::new(|| _ = ParamSet::from_entries(g.iter().cloned().collect()).squared_norm()),
        ),
        (
            "SAM ε (‖g‖² known)",
            Box::new(|| drop(sam.perturbation(0.05, &g, &w))),
        ),
        (
            "SAM ε (tensor ops, known)",
            Box::new(|| drop(diagonal::unfused(&sam, 0.05, &g, &w))),
        ),
        (
            "ASAM ε (fused)",
            Box::new(|| drop(asam.perturbation(0.05, &g, &w))),
        ),
        (
            "ASAM ε (tensor ops)",
            Box::new(|| drop(diagonal::unfused(&asam, 0.05, &g, &w))),
        ),
        (
            "SSAM ε (fused)",
            Box::new(|| drop(ssam.perturbation(0.05, &g, &w))),
        ),
        (
            "Fisher ε (fused)",
            Box::new(|| drop(fisher.perturbation(0.05, &g, &w))),
        ),
        (
            "infoSAM ε (fused)",
            Box::new(|| drop(info.perturbation(0.05, &g, &w))),
        ),
        ("infoSAM commit", Box::new(|| info.clone().commit(&g))),
        (
            "infoSAM w + ε and commit",
            Box::new(|| drop(info.clone().perturb_and_commit(0.05, &g, &w))),
        ),
        ("w + ε from ε (one pass)", Box::new(|| drop(p.apply_to(&w)))),
        (
            "ASAM w + ε from g, w",
            Box::new(|| drop(asam.perturbed_weights(0.05, &g, &w))),
        ),
        (
            "w + ε (tensor ops)",
            Box::new(|| drop(w.zip_map(&p.epsilon(), |w, e| w + e))),
        ),
        (
            "set_in_module(..).train()",
            Box::new(|| drop(perturbed.set_in_module(s.model.valid()).train())),
        ),
        (
            "base SGD step",
            Box::new(|| model = sgd.step(0.01, model.clone(), g.to_gradients())),
        ),
    ];
    // SHARPNESS_BENCH_PROFILE=<row> repeats one row (e.g. under `perf record`).
    let profile = std::env::var("SHARPNESS_BENCH_PROFILE").ok();
    for (name, mut f) in rows {
        if profile.as_deref() == Some(name) {
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
