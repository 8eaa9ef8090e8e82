//! The GPU code path (feature `wgpu`), checked on any Vulkan device, e.g. Mesa's lavapipe on a CPU
//! (`scripts/lavapipe-tests.sh`): every method's steps on a small network with BatchNorm match
//! Flex within f32 tolerance; ρ = 0 is the base optimizer bit for bit; a NaN pass is an error that
//! changes nothing; a resume is bit-identical. Without a Vulkan device the tests say so and pass,
//! unless `SHARPNESS_REQUIRE_WGPU=1` (set by the script) makes that a failure.
#![cfg(feature = "wgpu")]

use burn::module::{Module, Param, RunningState};
use burn::nn::{BatchNorm, BatchNormConfig, Linear};
use burn::prelude::*;
use burn::tensor::DeviceKind;
use sharpness::optim::base;
use sharpness::perturb::{Asam, AsamScope, FisherSam, InfoSam, MongeSam, Sam, Ssam, TwoPass};
use sharpness::universal::{Sampler, det_sam, frob_sam, trace_sam};
use sharpness::{GradientEstimator, Objective, ParamSet, Plain, RhoSchedule, SharpnessAware};

/// The wgpu device on a CPU adapter (lavapipe), if there is one.
fn wgpu_device() -> Option<Device> {
    let probe = std::panic::catch_unwind(|| {
        let device = Device::wgpu(DeviceKind::Cpu);
        let one = Tensor::<1>::ones([1], &device).into_scalar::<f32>();
        (one == 1.0).then_some(device)
    });
    match probe.ok().flatten() {
        Some(device) => Some(device.autodiff()),
        None if std::env::var_os("SHARPNESS_REQUIRE_WGPU").is_some() => {
            panic!("SHARPNESS_REQUIRE_WGPU is set but no Vulkan CPU adapter was found")
        }
        None => {
            eprintln!(
                "skipped: no Vulkan CPU adapter (install Mesa's lavapipe: \
                 apt-get install -y mesa-vulkan-drivers libvulkan1)"
            );
            None
        }
    }
}

#[derive(Module, Debug)]
struct Tiny {
    fc1: Linear,
    bn: BatchNorm,
    fc2: Linear,
}

impl Tiny {
    fn new(device: &Device) -> Self {
        let tensor = |values: Vec<f32>, dims: [usize; 2]| {
            Tensor::<1>::from_floats(values.as_slice(), device).reshape(dims)
        };
        let vector = |values: Vec<f32>| Tensor::<1>::from_floats(values.as_slice(), device);
        let linear = |w: Vec<f32>, dims: [usize; 2], b: Vec<f32>| Linear {
            weight: Param::from_tensor(tensor(w, dims)),
            bias: Some(Param::from_tensor(vector(b))),
        };
        let mut bn: BatchNorm = BatchNormConfig::new(4).init(device);
        bn.gamma = Param::from_tensor(vector(vec![1.0, 0.9, 1.1, 1.2]));
        bn.beta = Param::from_tensor(vector(vec![0.0, 0.1, -0.1, 0.05]));
        bn.running_mean = RunningState::new(vector(vec![0.0; 4]).inner());
        bn.running_var = RunningState::new(vector(vec![1.0; 4]).inner());
        Self {
            fc1: linear(
                (0..12).map(|k| 0.1 * (k % 7) as f32 - 0.3).collect(),
                [3, 4],
                vec![0.01, -0.02, 0.03, 0.0],
            ),
            bn,
            fc2: linear(
                (0..8).map(|k| 0.2 * (k % 5) as f32 - 0.4).collect(),
                [4, 2],
                vec![0.05, -0.05],
            ),
        }
    }

    fn forward(&self, x: Tensor<2>) -> Tensor<2> {
        // tanh, not ReLU: a kink would let a pre-activation within rounding of 0 fall on
        // different sides on the two backends and change a gradient by O(1).
        self.fc2
            .forward(self.bn.forward(self.fc1.forward(x)).tanh())
    }
}

/// A fixed batch of eight, with per-example losses for SSAM.
struct Batch {
    x: Tensor<2>,
    y: Tensor<2>,
    nan: bool,
}

impl Batch {
    fn new(device: &Device) -> Self {
        let x: Vec<f32> = (0..24).map(|k| ((k as f32) * 0.71).sin() * 1.5).collect();
        let y: Vec<f32> = (0..16).map(|k| ((k as f32) * 0.43).cos()).collect();
        Self {
            x: Tensor::<1>::from_floats(x.as_slice(), device).reshape([8, 3]),
            y: Tensor::<1>::from_floats(y.as_slice(), device).reshape([8, 2]),
            nan: false,
        }
    }

    fn mse(&self, m: &Tiny, rows: std::ops::Range<usize>) -> Tensor<1> {
        let x = self.x.clone().slice([rows.clone()]);
        let loss = (m.forward(x) - self.y.clone().slice([rows]))
            .square()
            .mean();
        if self.nan { loss * f32::NAN } else { loss }
    }
}

impl Objective<Tiny> for Batch {
    fn loss(&mut self, m: &Tiny) -> Tensor<1> {
        self.mse(m, 0..8)
    }

    fn example_loss(&mut self, m: &Tiny, draw: usize) -> Option<Tensor<1>> {
        // BatchNorm in training mode needs two rows: a pair of examples per draw.
        let i = 2 * (draw % 4);
        Some(self.mse(m, i..i + 2))
    }
}

type Make = fn() -> Box<dyn GradientEstimator>;

fn methods() -> Vec<(&'static str, Make)> {
    vec![
        ("sgd", || Box::new(Plain)),
        ("sam", || Box::new(TwoPass::new(Sam))),
        ("asam", || {
            Box::new(TwoPass::new(Asam::new(0.01, AsamScope::Weights).unwrap()))
        }),
        ("fisher", || {
            Box::new(TwoPass::new(FisherSam::new(1.0).unwrap()))
        }),
        ("msam", || Box::new(TwoPass::new(MongeSam::new()))),
        ("ssam", || {
            Box::new(TwoPass::new(Ssam::new(0.5, 4, 1).unwrap()))
        }),
        // Damping 1e-2, not the default 1e-8: with 1e-8, a coordinate whose gradient is 0 up to
        // rounding (the bias before BatchNorm) gets weight ~1e8 from its rounding noise, which
        // differs between backends, and ε follows that noise.
        ("infosam", || {
            Box::new(TwoPass::new(InfoSam::new(0.9, 1e-2).unwrap()))
        }),
        ("trace", || {
            Box::new(trace_sam(0.5, 2, Sampler::Gaussian, 1).unwrap())
        }),
        ("frob", || Box::new(frob_sam(0.5, 2, 2).unwrap())),
        ("det", || Box::new(det_sam(0.5, 2, 0.5, 3).unwrap())),
    ]
}

fn optimizer(estimator: Box<dyn GradientEstimator>, rho: f64) -> SharpnessAware {
    SharpnessAware::from_boxed(
        estimator,
        base::sgd(0.9, 1e-3, false).unwrap(),
        RhoSchedule::constant(rho).unwrap(),
    )
}

/// Everything a run leaves behind: the weights, the BatchNorm statistics and the losses.
#[derive(Debug, PartialEq)]
struct Trace {
    weights: Vec<f64>,
    statistics: Vec<f64>,
    losses: Vec<f64>,
}

fn values(t: Tensor<1>) -> Vec<f64> {
    t.into_data()
        .convert::<f64>()
        .try_into_vec::<f64>()
        .unwrap()
}

fn trace(model: &Tiny, losses: Vec<f64>) -> Trace {
    let mut statistics = values(model.bn.running_mean.value_sync());
    statistics.extend(values(model.bn.running_var.value_sync()));
    Trace {
        weights: ParamSet::trainable_weights(model).to_vec(),
        statistics,
        losses,
    }
}

fn run(
    device: &Device,
    optimizer: &mut SharpnessAware,
    model: Tiny,
    steps: usize,
) -> (Tiny, Vec<f64>) {
    let mut batch = Batch::new(device);
    let mut model = model;
    let mut losses = Vec::new();
    for _ in 0..steps {
        let out = optimizer.step(&model, 0.1, &mut batch).unwrap();
        losses.push(out.loss);
        model = out.model;
    }
    (model, losses)
}

fn assert_close(method: &str, what: &str, wgpu: &[f64], flex: &[f64]) {
    assert_eq!(wgpu.len(), flex.len());
    for (i, (a, b)) in wgpu.iter().zip(flex).enumerate() {
        // f32 arithmetic in a different order (GPU reductions): a few ulps, grown over 4 steps.
        let tolerance = 1e-4 * b.abs().max(1.0);
        assert!(
            (a - b).abs() <= tolerance,
            "{method} {what}[{i}]: wgpu {a} vs flex {b}"
        );
    }
}

#[test]
fn every_method_steps_on_wgpu_as_on_flex() {
    let Some(device) = wgpu_device() else { return };
    let flex = Device::flex().autodiff();
    for (name, make) in methods() {
        let on = |device: &Device| {
            let (model, losses) = run(device, &mut optimizer(make(), 0.1), Tiny::new(device), 4);
            trace(&model, losses)
        };
        let (gpu, cpu) = (on(&device), on(&flex));
        assert_close(name, "weights", &gpu.weights, &cpu.weights);
        assert_close(
            name,
            "BatchNorm statistics",
            &gpu.statistics,
            &cpu.statistics,
        );
        assert_close(name, "losses", &gpu.losses, &cpu.losses);
        // The steps moved the weights by far more than the tolerance.
        let start = ParamSet::trainable_weights(&Tiny::new(&flex)).to_vec();
        let moved = start.iter().zip(&cpu.weights).map(|(a, b)| (a - b).abs());
        assert!(moved.fold(0.0, f64::max) > 1e-2, "{name}");
    }
}

#[test]
fn rho_zero_is_the_base_optimizer_bit_for_bit_on_wgpu() {
    let Some(device) = wgpu_device() else { return };
    let (plain, plain_losses) = run(
        &device,
        &mut optimizer(Box::new(Plain), 0.0),
        Tiny::new(&device),
        3,
    );
    for (name, make) in methods() {
        let (model, losses) = run(&device, &mut optimizer(make(), 0.0), Tiny::new(&device), 3);
        assert_eq!(
            trace(&model, losses),
            trace(&plain, plain_losses.clone()),
            "{name}"
        );
    }
}

#[test]
fn a_nan_pass_on_wgpu_is_an_error_that_changes_nothing() {
    let Some(device) = wgpu_device() else { return };
    let mut sam = optimizer(Box::new(TwoPass::new(InfoSam::default())), 0.1);
    let (model, _) = run(&device, &mut sam, Tiny::new(&device), 2);
    let state = sam.save_state().unwrap();
    let before = trace(&model, vec![]);
    let mut poisoned = Batch::new(&device);
    poisoned.nan = true;
    assert!(sam.step(&model, 0.1, &mut poisoned).is_err());
    assert_eq!(sam.save_state().unwrap(), state);
    assert_eq!(trace(&model, vec![]), before);
    assert_eq!(sam.steps(), 2);
}

#[test]
fn a_resume_on_wgpu_is_bit_identical() {
    let Some(device) = wgpu_device() else { return };
    let make = || optimizer(Box::new(TwoPass::new(InfoSam::default())), 0.1);
    let mut straight = make();
    let (straight_model, _) = run(&device, &mut straight, Tiny::new(&device), 4);
    let mut first = make();
    let (halfway, _) = run(&device, &mut first, Tiny::new(&device), 2);
    let mut resumed = make();
    resumed
        .load_state(&first.save_state().unwrap(), &device)
        .unwrap();
    let (resumed_model, _) = run(&device, &mut resumed, halfway, 2);
    assert_eq!(
        trace(&resumed_model, vec![]),
        trace(&straight_model, vec![])
    );
}

#[test]
fn wgpu_sets_map_sequentially_and_flex_sets_in_parallel() {
    let Some(device) = wgpu_device() else { return };
    let on = |device: &Device| ParamSet::trainable_weights(&Tiny::new(device)).parallel();
    assert!(!on(&device));
    assert!(on(&Device::flex().autodiff()));
    let plain = |device: Device| ParamSet::from_values(&device, &[("w", &[1], &[1.0])]).parallel();
    assert!(!plain(device.inner()));
    assert!(plain(Device::flex()));
}
