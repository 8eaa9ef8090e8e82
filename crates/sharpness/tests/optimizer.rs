//! Invariants of the one optimizer wrapper, for every estimator (`docs/peers.md`, B3, B4, B5, B8, B10, B12):
//! exact restore, one evaluation per pass on the same batch, ρ = 0 equals the base optimizer bit
//! for bit, non-finite losses are errors that leave everything as it was, resumes are bit-identical.

use std::cell::Cell;

use burn::module::{Module, Param};
use burn::nn::{Linear, LinearConfig};
use burn::optim::{GradientsParams, ModuleOptimizer};
use burn::prelude::*;
use burn::tensor::DType;
use sharpness::optim::base;
use sharpness::perturb::{FisherSam, InfoSam, MongeSam, Sam, Ssam, TwoPass};
use sharpness::universal::{Sampler, det_sam, frob_sam, trace_sam};
use sharpness::{
    Evaluation, GradientEstimator, Lifecycle, Objective, Oracle, ParamSet, RhoSchedule,
    SharpnessAware, SharpnessError, StepContext,
};

#[derive(Module, Debug)]
struct TwoLayer {
    a: Linear,
    b: Linear,
}

fn device() -> Device {
    Device::flex().autodiff()
}

/// Deterministic weights (tests run in parallel; a seeded global RNG would race).
fn linear(d_in: usize, d_out: usize, offset: f32) -> Linear {
    linear_on(&device(), d_in, d_out, offset)
}

fn linear_on(device: &Device, d_in: usize, d_out: usize, offset: f32) -> Linear {
    let mut layer: Linear = LinearConfig::new(d_in, d_out).init(device);
    let w: Vec<f32> = (0..d_in * d_out)
        .map(|k| ((k as f32 * 0.37 + offset).sin()) * 0.5)
        .collect();
    let b: Vec<f32> = (0..d_out)
        .map(|k| ((k as f32 * 0.11 - offset).cos()) * 0.1)
        .collect();
    layer.weight =
        Param::from_tensor(Tensor::<1>::from_floats(w.as_slice(), device).reshape([d_in, d_out]));
    layer.bias = Some(Param::from_tensor(Tensor::<1>::from_floats(
        b.as_slice(),
        device,
    )));
    layer
}

fn model() -> TwoLayer {
    TwoLayer {
        a: linear(3, 4, 0.3),
        b: linear(4, 2, 1.7),
    }
}

fn batch() -> (Tensor<2>, Tensor<2>) {
    let x = Tensor::<2>::from_floats(
        [[0.5, -1.0, 2.0], [1.5, 0.3, -0.7], [-0.2, 0.8, 0.1]],
        &device(),
    );
    let y = Tensor::<2>::from_floats([[1.0, 0.0], [0.0, 1.0], [0.5, 0.5]], &device());
    (x, y)
}

fn mse(m: &TwoLayer, x: &Tensor<2>, y: &Tensor<2>) -> Tensor<1> {
    (m.b.forward(m.a.forward(x.clone()).tanh()) - y.clone())
        .square()
        .mean()
}

fn weights(m: &TwoLayer) -> Vec<f64> {
    ParamSet::trainable_weights(m).to_vec()
}

fn bits(v: &[f64]) -> Vec<u64> {
    v.iter().map(|x| x.to_bits()).collect()
}

fn optimizer(estimator: impl GradientEstimator + 'static, rho: f64) -> SharpnessAware {
    SharpnessAware::new(
        estimator,
        base::sgd(0.9, 1e-3, false).unwrap(),
        RhoSchedule::constant(rho).unwrap(),
    )
}

/// An objective over the fixed batch that also provides per-example losses (for SSAM).
struct Batch {
    x: Tensor<2>,
    y: Tensor<2>,
}

impl Objective<TwoLayer> for Batch {
    fn loss(&mut self, m: &TwoLayer) -> Tensor<1> {
        mse(m, &self.x, &self.y)
    }

    fn example_loss(&mut self, m: &TwoLayer, draw: usize) -> Option<Tensor<1>> {
        let i = draw % 3;
        Some(mse(
            m,
            &self.x.clone().slice([i..i + 1]),
            &self.y.clone().slice([i..i + 1]),
        ))
    }
}

#[test]
fn every_pass_sees_the_same_batch_at_w_then_w_plus_epsilon_and_the_callers_model_is_untouched() {
    let (x, y) = batch();
    let m = model();
    let before = weights(&m);
    let seen = std::cell::RefCell::new(Vec::new());
    let mut objective = |model: &TwoLayer| {
        seen.borrow_mut().push(weights(model));
        mse(model, &x, &y)
    };
    let mut sam = optimizer(TwoPass::new(Sam), 0.05);
    let out = sam.step(&m, 0.1, &mut objective).unwrap();
    assert_eq!(out.passes, 2);
    let seen = seen.into_inner();
    assert_eq!(
        seen.len(),
        2,
        "one evaluation per pass: the second gradient is never the first (B5)"
    );
    assert_eq!(bits(&seen[0]), bits(&before), "pass 1 at w");
    // pass 2 at w + ε with ‖ε‖ = ρ
    let eps: f64 = seen[1]
        .iter()
        .zip(&before)
        .map(|(a, b)| (a - b) * (a - b))
        .sum::<f64>()
        .sqrt();
    assert!((eps - 0.05).abs() < 1e-6, "‖ε‖ = {eps}");
    // The caller's model is bitwise what it was (exact restore, B8/B10), and the new model moved.
    assert_eq!(bits(&weights(&m)), bits(&before));
    assert_ne!(bits(&weights(&out.model)), bits(&before));
}

#[test]
fn a_parameter_without_gradient_in_pass_two_is_restored_exactly() {
    // Layer `b` is used only in pass 1; pass 2 sees only `a` (B3: davda54 leaves such a parameter
    // perturbed). With momentum 0 and no weight decay, its zero pass-2 gradient leaves it at w.
    let (x, y) = batch();
    let m = model();
    let calls = Cell::new(0);
    let mut objective = |model: &TwoLayer| {
        calls.set(calls.get() + 1);
        if calls.get() == 1 {
            mse(model, &x, &y)
        } else {
            model.a.forward(x.clone()).square().mean()
        }
    };
    let mut sam = SharpnessAware::new(
        TwoPass::new(Sam),
        base::sgd(0.0, 0.0, false).unwrap(),
        RhoSchedule::constant(0.5).unwrap(),
    );
    let out = sam.step(&m, 0.1, &mut objective).unwrap();
    let before = ParamSet::trainable_weights(&m.b).to_vec();
    let after = ParamSet::trainable_weights(&out.model.b).to_vec();
    assert_eq!(bits(&before), bits(&after));
    assert_ne!(
        bits(&weights(&m)),
        bits(&weights(&out.model)),
        "layer a did move"
    );
}

#[test]
fn rho_zero_is_bit_identical_to_the_base_optimizer_for_every_estimator() {
    let (x, y) = batch();
    // Reference: Burn's optimizer alone.
    let mut reference = model();
    let mut base_opt: ModuleOptimizer = base::sgd(0.9, 1e-3, false).unwrap();
    for _ in 0..3 {
        let grads = GradientsParams::from_grads(mse(&reference, &x, &y).backward(), &reference);
        reference = base_opt.step(0.1, reference, grads);
    }
    let estimators: Vec<Box<dyn GradientEstimator>> = vec![
        Box::new(TwoPass::new(Sam)),
        Box::new(TwoPass::new(MongeSam)),
        Box::new(TwoPass::new(FisherSam::default())),
        Box::new(TwoPass::new(InfoSam::default())),
        Box::new(trace_sam(1.0, 1, Sampler::Sphere, 0).unwrap()),
        Box::new(frob_sam(0.1, 2, 0).unwrap()),
        Box::new(det_sam(1.0, 1, 0.01, 0).unwrap()),
    ];
    for estimator in estimators {
        let name = estimator.name();
        let mut opt = SharpnessAware::from_boxed(
            estimator,
            base::sgd(0.9, 1e-3, false).unwrap(),
            RhoSchedule::constant(0.0).unwrap(),
        );
        let mut m = model();
        for _ in 0..3 {
            let out = opt
                .step(&m, 0.1, &mut |model: &TwoLayer| mse(model, &x, &y))
                .unwrap();
            assert_eq!(out.passes, 1, "{name}");
            m = out.model;
        }
        assert_eq!(
            bits(&weights(&m)),
            bits(&weights(&reference)),
            "{name} with ρ = 0 (B12)"
        );
    }
}

#[test]
fn a_zero_gradient_gives_a_finite_no_op_perturbation() {
    let (x, _) = batch();
    let m = model();
    for estimator in [
        Box::new(TwoPass::new(Sam)) as Box<dyn GradientEstimator>,
        Box::new(TwoPass::new(MongeSam)),
    ] {
        let mut opt = SharpnessAware::from_boxed(
            estimator,
            base::sgd(0.0, 0.0, false).unwrap(),
            RhoSchedule::constant(0.05).unwrap(),
        );
        let out = opt
            .step(&m, 0.1, &mut |model: &TwoLayer| {
                model.a.forward(x.clone()).sum().mul_scalar(0.0)
            })
            .unwrap();
        assert_eq!(out.grad_norm, 0.0);
        assert_eq!(
            bits(&weights(&out.model)),
            bits(&weights(&m)),
            "finite no-op (B4)"
        );
    }
}

#[test]
fn a_non_finite_loss_is_an_error_naming_step_and_pass_and_leaves_all_state_as_it_was() {
    let (x, y) = batch();
    let mut objective = Batch {
        x: x.clone(),
        y: y.clone(),
    };
    let mut opt = optimizer(TwoPass::new(InfoSam::default()), 0.05);
    let m = opt.step(&model(), 0.1, &mut objective).unwrap().model;
    let state_before = opt.save_state().unwrap();
    let weights_before = weights(&m);

    let calls = Cell::new(0);
    let mut nan_in_pass_two = |model: &TwoLayer| {
        calls.set(calls.get() + 1);
        let loss = mse(model, &x, &y);
        if calls.get() == 2 {
            loss.mul_scalar(f32::NAN)
        } else {
            loss
        }
    };
    let err = opt.step(&m, 0.1, &mut nan_in_pass_two).unwrap_err();
    assert_eq!(
        err,
        SharpnessError::NonFinite {
            step: 1,
            pass: 1,
            what: "loss"
        }
    );
    assert!(
        err.to_string().contains("step 1") && err.to_string().contains("unchanged"),
        "{err}"
    );
    assert_eq!(
        opt.save_state().unwrap(),
        state_before,
        "optimizer state rolled back"
    );
    assert_eq!(bits(&weights(&m)), bits(&weights_before));
    assert_eq!(opt.steps(), 1);

    // After the failure the optimizer continues exactly as if the bad batch had never happened.
    let mut twin = optimizer(TwoPass::new(InfoSam::default()), 0.05);
    let twin_model = twin.step(&model(), 0.1, &mut objective).unwrap().model;
    let a = opt.step(&m, 0.1, &mut objective).unwrap().model;
    let b = twin.step(&twin_model, 0.1, &mut objective).unwrap().model;
    assert_eq!(bits(&weights(&a)), bits(&weights(&b)));
}

#[test]
fn a_non_finite_gradient_is_an_error_too() {
    let (x, _) = batch();
    let mut opt = optimizer(TwoPass::new(Sam), 0.05);
    // sqrt at 0 has an infinite derivative: finite loss, non-finite gradient.
    let err = opt
        .step(&model(), 0.1, &mut |m: &TwoLayer| {
            m.a.forward(x.clone()).mul_scalar(0.0).sqrt().mean()
        })
        .unwrap_err();
    assert!(
        matches!(
            err,
            SharpnessError::NonFinite {
                step: 0,
                pass: 0,
                what: "gradient"
            }
        ),
        "{err}"
    );
}

#[test]
fn ssam_without_per_example_losses_is_a_clear_error() {
    let (x, y) = batch();
    let mut opt = optimizer(TwoPass::new(Ssam::new(0.5, 4, 1).unwrap()), 0.05);
    let mut loss = |m: &TwoLayer| mse(m, &x, &y);
    // Step 0 runs without a mask; the first refresh, at the start of step 1, needs the examples.
    let first = opt.step(&model(), 0.1, &mut loss).unwrap();
    let err = opt.step(&first.model, 0.1, &mut loss).unwrap_err();
    assert!(err.to_string().contains("example_loss"), "{err}");
    assert_eq!(opt.steps(), 1);
}

#[test]
fn ssam_starts_as_plain_sgd_and_then_runs_two_passes() {
    let (x, y) = batch();
    let mut objective = Batch { x, y };
    let mut opt = optimizer(TwoPass::new(Ssam::new(0.5, 3, 1).unwrap()), 0.05);
    let first = opt.step(&model(), 0.1, &mut objective).unwrap();
    assert_eq!(
        first.passes, 1,
        "mask starts empty: first step is plain SGD"
    );
    let second = opt.step(&first.model, 0.1, &mut objective).unwrap();
    assert_eq!(second.passes, 2);
}

/// An oracle with fixed per-example gradients (SSAM's mask reads nothing else).
struct Examples {
    w: ParamSet,
    grads: Vec<Vec<f64>>,
}

impl Oracle for Examples {
    fn weights(&self) -> &ParamSet {
        &self.w
    }
    fn evaluate_at(&mut self, _: &ParamSet) -> Result<Evaluation, SharpnessError> {
        unreachable!("the mask needs single examples only")
    }
    fn evaluate_example(&mut self, draw: usize) -> Result<Evaluation, SharpnessError> {
        let grad = self.w.with_values(&self.grads[draw % self.grads.len()]);
        Ok(Evaluation { loss: 0.0, grad })
    }
}

#[test]
fn ssam_mask_keeps_the_largest_empirical_fisher_coordinates_on_its_schedule() {
    let w = ParamSet::from_values(
        &device(),
        &[
            ("fc.weight", &[2, 2], &[0.0; 4]),
            ("fc.bias", &[2], &[0.0; 2]),
        ],
    );
    // Σᵢ gᵢ² = (1+0, 4+1, 0+0, 1+9, 0+4, 1+1) = (1, 5, 0, 10, 4, 2): the top half is {3, 1, 4}.
    let grads = vec![
        vec![1.0, 2.0, 0.0, -1.0, 0.0, 1.0],
        vec![0.0, 1.0, 0.0, 3.0, -2.0, 1.0],
    ];
    let mut oracle = Examples { w, grads };
    let mut ssam = Ssam::new(0.5, 2, 2).unwrap();
    let ctx = |step| StepContext {
        step,
        rho: 0.05,
        lr: 0.1,
    };
    // Refreshed at the weights that steps 0, 2, 4, … produce: at the start of steps 1, 3, 5, …
    for step in [0, 2] {
        ssam.before_estimate(&mut oracle, &ctx(step)).unwrap();
        assert!(
            ssam.mask().is_none(),
            "no refresh at the start of step {step}"
        );
    }
    ssam.before_estimate(&mut oracle, &ctx(3)).unwrap();
    assert_eq!(
        ssam.mask().unwrap().to_vec(),
        [0.0, 1.0, 0.0, 1.0, 1.0, 0.0]
    );
}

/// A caller that owns the base optimizer (as Burn's `Learner` does) applies `estimate`'s
/// gradient to `estimate`'s model: the same weights as `step`, bit for bit, for stateful
/// geometries and SSAM's schedule too.
#[test]
fn estimate_then_the_callers_own_base_step_equals_step() {
    let makers: [fn() -> Box<dyn GradientEstimator>; 3] = [
        || Box::new(TwoPass::new(InfoSam::default())),
        || Box::new(TwoPass::new(Ssam::new(0.5, 3, 1).unwrap())),
        || Box::new(frob_sam(0.5, 2, 42).unwrap()),
    ];
    for make in makers {
        let (x, y) = batch();
        let mut objective = Batch { x, y };
        let build = || {
            SharpnessAware::from_boxed(
                make(),
                base::sgd(0.9, 1e-3, false).unwrap(),
                RhoSchedule::constant(0.05).unwrap(),
            )
        };
        let (mut by_step, mut by_estimate) = (build(), build());
        let mut own_base = base::sgd(0.9, 1e-3, false).unwrap();
        let (mut a, mut b) = (model(), model());
        for _ in 0..3 {
            a = by_step.step(&a, 0.1, &mut objective).unwrap().model;
            let estimate = by_estimate.estimate(&b, 0.1, &mut objective).unwrap();
            b = own_base.step(0.1, estimate.model, estimate.grads);
        }
        assert_eq!(by_estimate.steps(), 3);
        assert_eq!(bits(&weights(&b)), bits(&weights(&a)), "{}", by_step.name());
    }
}

/// Runs 4 steps straight, and 2 steps + save + a fresh optimizer + load + 2 steps: bitwise equal.
fn resume_is_bit_identical(make: fn() -> Box<dyn GradientEstimator>) {
    let (x, y) = batch();
    let mut objective = Batch { x, y };
    let build = || {
        SharpnessAware::from_boxed(
            make(),
            base::sgd(0.9, 1e-3, false).unwrap(),
            RhoSchedule::constant(0.05).unwrap(),
        )
    };
    let mut straight = build();
    let mut m = model();
    for _ in 0..4 {
        m = straight.step(&m, 0.1, &mut objective).unwrap().model;
    }
    let mut first = build();
    let mut r = model();
    for _ in 0..2 {
        r = first.step(&r, 0.1, &mut objective).unwrap().model;
    }
    let bytes = first.save_state().unwrap();
    let mut resumed = build();
    resumed.load_state(&bytes, &device()).unwrap();
    assert_eq!(resumed.steps(), 2);
    for _ in 0..2 {
        r = resumed.step(&r, 0.1, &mut objective).unwrap().model;
    }
    assert_eq!(
        bits(&weights(&r)),
        bits(&weights(&m)),
        "{}",
        straight.name()
    );
}

#[test]
fn resume_is_bit_identical_for_sam_with_momentum() {
    resume_is_bit_identical(|| Box::new(TwoPass::new(Sam)));
}

#[test]
fn resume_is_bit_identical_for_infosam() {
    resume_is_bit_identical(|| Box::new(TwoPass::new(InfoSam::default())));
}

#[test]
fn resume_is_bit_identical_for_ssam() {
    resume_is_bit_identical(|| Box::new(TwoPass::new(Ssam::new(0.5, 3, 1).unwrap())));
}

#[test]
fn resume_is_bit_identical_for_frob_sam() {
    resume_is_bit_identical(|| Box::new(frob_sam(0.5, 2, 42).unwrap()));
}

#[test]
fn corrupt_or_foreign_state_is_an_error_and_changes_nothing() {
    let (x, y) = batch();
    let mut opt = optimizer(TwoPass::new(InfoSam::default()), 0.05);
    opt.step(&model(), 0.1, &mut |m: &TwoLayer| mse(m, &x, &y))
        .unwrap();
    let bytes = opt.save_state().unwrap();
    let err = opt
        .load_state(&bytes[..bytes.len() / 2], &device())
        .unwrap_err()
        .to_string();
    assert!(err.contains("burnpack"), "{err}");
    assert!(opt.load_state(b"garbage!", &device()).is_err());
    // A readable record without the optimizer's entries (e.g. a model's record).
    let err = opt
        .load_state(
            &sharpness::StateRecord::default().into_bytes().unwrap(),
            &device(),
        )
        .unwrap_err()
        .to_string();
    assert!(err.contains("base optimizer"), "{err}");
    assert_eq!(opt.save_state().unwrap(), bytes, "nothing changed");
}

/// Perturbed copies keep each parameter's autodiff context: on a device with gradient
/// checkpointing, SAM's second pass combines the perturbed parameters with inputs of that
/// strategy (Burn refuses to mix strategies), and the step equals the one without it.
#[test]
fn a_model_on_a_gradient_checkpointing_device_steps_as_without_checkpointing() {
    let run = |device: Device| {
        let m = TwoLayer {
            a: linear_on(&device, 3, 4, 0.3),
            b: linear_on(&device, 4, 2, 1.7),
        };
        let x = Tensor::<2>::from_floats([[0.5, -1.0, 2.0], [1.5, 0.3, -0.7]], &device);
        let y = Tensor::<2>::from_floats([[1.0, 0.0], [0.0, 1.0]], &device);
        let mut opt = optimizer(TwoPass::new(Sam), 0.05);
        let mut m = m;
        for _ in 0..2 {
            m = opt
                .step(&m, 0.1, &mut |m: &TwoLayer| mse(m, &x, &y))
                .unwrap()
                .model;
        }
        let w = m.a.weight.val();
        (w.gradient_checkpointing_strategy(), bits(&weights(&m)))
    };
    let (plain_strategy, plain) = run(Device::flex().autodiff());
    let (strategy, checkpointed) = run(Device::flex().autodiff().gradient_checkpointing());
    assert_ne!(strategy, plain_strategy, "the device's strategy is kept");
    assert_eq!(checkpointed, plain);
}

/// A half-precision model: its global norms accumulate in f32 (the squared gradient norm here,
/// ≈ 2·10⁵, is beyond f16's largest value 65 504), so SAM steps it like the f32 model.
#[test]
fn a_half_precision_model_steps_like_the_f32_model() {
    struct Cast(DType);
    impl burn::module::ModuleMapper for Cast {
        fn map_float<const D: usize>(&mut self, param: Param<Tensor<D>>) -> Param<Tensor<D>> {
            let (id, value, mapper) = param.consume();
            let cast = value.inner().cast(self.0).autodiff().require_grad();
            Param::from_mapped_value(id, cast, mapper)
        }
    }
    let run = |dtype: DType| {
        let m = model().map(&mut Cast(dtype));
        let (x, y) = batch();
        let (x, y) = (x.cast(dtype), y.cast(dtype));
        let mut opt = optimizer(TwoPass::new(Sam), 0.05);
        let step = opt
            .step(&m, 0.01, &mut |m: &TwoLayer| {
                mse(m, &x, &y).mul_scalar(600.0)
            })
            .unwrap();
        (step.grad_norm, weights(&step.model))
    };
    let (norm, w) = run(DType::F32);
    assert!(norm * norm > 65_504.0, "‖g‖² = {}", norm * norm);
    for dtype in [DType::F16, DType::BF16] {
        let (half_norm, half_w) = run(dtype);
        assert!(
            (half_norm - norm).abs() < 2e-2 * norm,
            "{dtype:?}: ‖g‖ {half_norm} vs {norm}"
        );
        for (a, b) in half_w.iter().zip(&w) {
            assert!(
                (a - b).abs() < 2e-2 * (1.0 + b.abs()),
                "{dtype:?}: {a} vs {b}"
            );
        }
    }
}

#[test]
fn rho_schedules() {
    let prop = RhoSchedule::proportional_to_lr(0.02, 0.05, 0.001, 0.1).unwrap();
    assert!((prop.rho(0, 0.1).unwrap() - 0.05).abs() < 1e-15);
    assert!((prop.rho(0, 0.001).unwrap() - 0.02).abs() < 1e-15);
    assert!((prop.rho(0, 0.0505).unwrap() - 0.035).abs() < 1e-12);
    // A warm-up from lr = 0 never gives a negative ρ (big_vision #80).
    assert_eq!(prop.rho(0, 0.0).unwrap(), 0.02);
    assert!(RhoSchedule::proportional_to_lr(0.02, 0.05, 0.1, 0.1).is_err());
    let custom = RhoSchedule::custom(|step, _| 0.1 - 0.05 * step as f64);
    assert_eq!(custom.rho(1, 0.1).unwrap(), 0.05);
    assert!(custom.rho(3, 0.1).unwrap_err().to_string().contains("rho"));
}
