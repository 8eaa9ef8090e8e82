//! Cost of one sharpness-aware step relative to one base-optimizer step (issue: ≤ 2.1×, with the
//! perturbation itself ≤ 3% of the step), on an MLP 784-512-512-10, batch 128, Flex CPU backend.
//!
//! `cargo bench -p sharpness --bench step` runs the criterion groups and then prints a table of
//! medians and ratios (also measured here with plain timers, so the ratio is printed in one place).

use std::time::{Duration, Instant};

use burn::module::Module;
use burn::nn::loss::CrossEntropyLossConfig;
use burn::nn::{Linear, LinearConfig, Relu};
use burn::prelude::*;
use burn::tensor::{Distribution, Int};
use criterion::{Criterion, criterion_group};
use sharpness::optim::base;
use sharpness::perturb::diagonal::{self, DiagonalRule};
use sharpness::perturb::{Asam, FisherSam, InfoSam, MongeSam, Preconditioner, Sam, Ssam, TwoPass};
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

/// Median seconds of `iters` calls after `warmup` calls.
fn median(mut f: impl FnMut(), warmup: usize, iters: usize) -> f64 {
    for _ in 0..warmup {
        f();
    }
    let mut times: Vec<f64> = (0..iters)
        .map(|_| {
            let t = Instant::now();
            f();
            t.elapsed().as_secs_f64()
        })
        .collect();
    times.sort_by(f64::total_cmp);
    times[iters / 2]
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

fn ratio_table() {
    let s = setup();
    let steps = |estimator: Box<dyn GradientEstimator>| {
        let mut opt = optimizer(estimator);
        let mut model = s.model.clone();
        median(
            || model = opt.step(&model, 0.01, &mut Batch(&s)).unwrap().model,
            5,
            31,
        )
    };
    let base = steps(Box::new(Plain));
    // The perturbation alone: ε from a real gradient and weights.
    let loss = Batch(&s).loss_of(&s.model);
    let grads = burn::optim::GradientsParams::from_grads(loss.backward(), &s.model);
    let g = ParamSet::from_gradients(&s.model, &grads);
    let w = ParamSet::weights_like(&s.model, &g);
    println!(
        "\nmethod    step (ms)  ratio to SGD  perturbation (ms)  share of step  fused loop (ms)"
    );
    println!("sgd       {:9.2}  {:12.2}", base * 1e3, 1.0);
    for (name, estimator) in methods().into_iter().skip(1) {
        let t = steps(estimator);
        let (default, fused) = perturbation_time(name, &g, &w);
        println!(
            "{name:9} {:9.2}  {:12.2}  {:17.3}  {:12.1}%  {:14.3}",
            t * 1e3,
            t / base,
            default * 1e3,
            100.0 * default / t,
            fused * 1e3
        );
    }
}

fn perturbation_time(name: &str, g: &ParamSet, w: &ParamSet) -> (f64, f64) {
    fn both<R: DiagonalRule + Preconditioner + Clone>(
        r: R,
        g: &ParamSet,
        w: &ParamSet,
    ) -> (f64, f64) {
        let n = r.normalization();
        let time = |fused: bool| {
            median(
                || {
                    let mut r = r.clone();
                    drop(match fused {
                        true => r.perturbation(0.05, g, w),
                        false => diagonal::fused(&r, n, 0.05, g, w).expect("Flex tensors"),
                    });
                    r.commit(g);
                },
                3,
                21,
            )
        };
        (time(true), time(false))
    }
    match name {
        "sam" => both(Sam, g, w),
        "asam" => both(Asam::default(), g, w),
        "fisher" => both(FisherSam::default(), g, w),
        "msam" => both(MongeSam, g, w),
        "ssam" => {
            let mut ssam = Ssam::new(0.5, 16, 1).unwrap();
            ssam.set_mask_from_fisher(&g.mul(g));
            both(ssam, g, w)
        }
        _ => {
            let mut info = InfoSam::default();
            info.commit(&g.scale(0.9));
            both(info, g, w)
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

criterion_group!(benches, bench_steps);

fn main() {
    benches();
    Criterion::default().configure_from_args().final_summary();
    ratio_table();
}
