//! How a batch is split: exact gradient accumulation (one ε from the whole batch's gradient,
//! passes run micro-batch by micro-batch), m-sharpness (one ε per chunk), gradient-returning
//! objectives with an output, and per-group learning rates. References are computed here by hand
//! (plain f64 arithmetic on gradients from Burn's autodiff), not by the code under test.

use burn::module::{Module, Param, ParamGroup};
use burn::nn::{Linear, LinearConfig};
use burn::optim::GradientsParams;
use burn::optim::lr_scheduler::module_lr_scheduler::ModuleLrScheduler;
use burn::prelude::*;
use sharpness::optim::base;
use sharpness::perturb::{FisherSam, InfoSam, Sam, TwoPass};
use sharpness::universal::frob_sam;
use sharpness::{
    Accumulate, GradientEstimator, ParamSet, Pass, RhoSchedule, SharpnessAware, SharpnessGradient,
};

#[derive(Module, Debug)]
struct TwoLayer {
    a: Linear,
    b: Linear,
}

fn device() -> Device {
    Device::flex().autodiff()
}

fn linear(d_in: usize, d_out: usize, offset: f32) -> Linear {
    let device = device();
    let mut layer: Linear = LinearConfig::new(d_in, d_out).init(&device);
    let w: Vec<f32> = (0..d_in * d_out)
        .map(|k| ((k as f32 * 0.37 + offset).sin()) * 0.5)
        .collect();
    let b: Vec<f32> = (0..d_out)
        .map(|k| ((k as f32 * 0.11 - offset).cos()) * 0.1)
        .collect();
    layer.weight =
        Param::from_tensor(Tensor::<1>::from_floats(w.as_slice(), &device).reshape([d_in, d_out]));
    layer.bias = Some(Param::from_tensor(Tensor::<1>::from_floats(
        b.as_slice(),
        &device,
    )));
    layer
}

fn model() -> TwoLayer {
    TwoLayer {
        a: linear(3, 5, 0.3),
        b: linear(5, 2, 1.7),
    }
}

/// Eight examples; rows `range` of them.
fn rows(range: std::ops::Range<usize>) -> (Tensor<2>, Tensor<2>) {
    let x: Vec<f32> = (0..24).map(|k| ((k as f32) * 0.71).sin() * 1.5).collect();
    let y: Vec<f32> = (0..16).map(|k| ((k as f32) * 0.43).cos()).collect();
    let x = Tensor::<1>::from_floats(x.as_slice(), &device()).reshape([8, 3]);
    let y = Tensor::<1>::from_floats(y.as_slice(), &device()).reshape([8, 2]);
    (x.slice([range.clone()]), y.slice([range]))
}

fn mse(m: &TwoLayer, (x, y): &(Tensor<2>, Tensor<2>)) -> Tensor<1> {
    (m.b.forward(m.a.forward(x.clone()).tanh()) - y.clone())
        .square()
        .mean()
}

/// The batch as `k` equal micro-batches (or chunks).
fn split(k: usize) -> Vec<impl FnMut(&TwoLayer) -> Tensor<1>> {
    let n = 8 / k;
    (0..k)
        .map(|i| {
            let data = rows(i * n..(i + 1) * n);
            move |m: &TwoLayer| mse(m, &data)
        })
        .collect()
}

fn weights(m: &TwoLayer) -> Vec<f64> {
    ParamSet::trainable_weights(m).to_vec()
}

fn max_relative_difference(a: &[f64], b: &[f64]) -> f64 {
    assert_eq!(a.len(), b.len());
    a.iter()
        .zip(b)
        .map(|(a, b)| (a - b).abs() / a.abs().max(b.abs()).max(1e-3))
        .fold(0.0, f64::max)
}

fn optimizer(estimator: impl GradientEstimator + 'static) -> SharpnessAware {
    SharpnessAware::new(
        estimator,
        base::sgd(0.9, 0.0, false).unwrap(),
        RhoSchedule::constant(0.3).unwrap(),
    )
}

/// `tolerance`: f32 rounding, amplified by a method that differences gradients.
fn accumulation_equals_the_whole_batch(make: fn() -> Box<dyn GradientEstimator>, tolerance: f64) {
    let (mut whole_model, mut accumulated_model) = (model(), model());
    let (mut whole, mut accumulated) = (
        SharpnessAware::from_boxed(make(), base::sgd(0.9, 0.0, false).unwrap(), rho()),
        SharpnessAware::from_boxed(make(), base::sgd(0.9, 0.0, false).unwrap(), rho()),
    );
    let batch = rows(0..8);
    for _ in 0..3 {
        let step = whole.step(&whole_model, 0.2, &mut |m: &TwoLayer| mse(m, &batch));
        let step = step.unwrap();
        let passes = step.passes;
        whole_model = step.model;
        let mut micro_batches = split(4);
        let mut objective = Accumulate::new(&mut micro_batches).unwrap();
        let step = accumulated.step_with(&accumulated_model, 0.2, &mut objective);
        let step = step.unwrap();
        assert_eq!(
            step.passes, passes,
            "a pass over the micro-batches counts once"
        );
        accumulated_model = step.model;
    }
    let (a, b) = (weights(&whole_model), weights(&accumulated_model));
    let difference = max_relative_difference(&a, &b);
    assert!(difference < tolerance, "{}: {difference}", make().name());
    // Three steps moved the weights far more than that.
    assert!(max_relative_difference(&a, &weights(&model())) > 1e-2);
}

fn rho() -> RhoSchedule {
    RhoSchedule::constant(0.3).unwrap()
}

#[test]
fn accumulated_micro_batches_step_as_the_whole_batch_for_sam() {
    accumulation_equals_the_whole_batch(|| Box::new(TwoPass::new(Sam)), 1e-5);
}

#[test]
fn accumulated_micro_batches_step_as_the_whole_batch_for_fisher_sam() {
    // Not scale-invariant: a sum over micro-batches instead of the mean would change ε.
    accumulation_equals_the_whole_batch(
        || Box::new(TwoPass::new(FisherSam::new(5.0).unwrap())),
        1e-5,
    );
}

#[test]
fn accumulated_micro_batches_step_as_the_whole_batch_for_infosam_and_frob_sam() {
    accumulation_equals_the_whole_batch(|| Box::new(TwoPass::new(InfoSam::default())), 1e-5);
    // Frob-SAM weighs gradient differences gᵢ − g₀ by finite differences of the loss, Δᵢ =
    // (L(w+ρuᵢ) − L(w))/ρ² (`docs/algorithms.md` §7.3): f32 rounding of 1e-5 there.
    accumulation_equals_the_whole_batch(|| Box::new(frob_sam(1.0, 2, 7).unwrap()), 1e-4);
}

#[test]
fn one_micro_batch_is_the_plain_step_bit_for_bit() {
    let batch = rows(0..8);
    let mut plain = optimizer(TwoPass::new(Sam));
    let mut accumulated = optimizer(TwoPass::new(Sam));
    let a = plain.step(&model(), 0.2, &mut |m: &TwoLayer| mse(m, &batch));
    let mut one = [|m: &TwoLayer| mse(m, &batch)];
    let b = accumulated.step_with(&model(), 0.2, &mut Accumulate::new(&mut one).unwrap());
    let bits = |m: &TwoLayer| weights(m).iter().map(|x| x.to_bits()).collect::<Vec<_>>();
    assert_eq!(bits(&a.unwrap().model), bits(&b.unwrap().model));
}

#[test]
fn empty_micro_batch_and_chunk_lists_are_errors() {
    let mut none: [fn(&TwoLayer) -> Tensor<1>; 0] = [];
    assert!(Accumulate::new(&mut none).is_err());
    let mut sam = optimizer(TwoPass::new(Sam));
    assert!(sam.step_chunks(&model(), 0.1, &mut none).is_err());
    assert_eq!(sam.steps(), 0);
}

/// ∇L at `m` on `data`, as plain numbers.
fn gradient(m: &TwoLayer, data: &(Tensor<2>, Tensor<2>)) -> Vec<f64> {
    let grads = GradientsParams::from_grads(mse(m, data).backward(), m);
    ParamSet::from_gradients(m, &grads).to_vec()
}

#[test]
fn m_sharpness_averages_independent_sam_gradients() {
    let (m, rho, k) = (model(), 0.3, 4);
    let w = ParamSet::trainable_weights(&m);
    // By hand: each chunk's own ε = ρ gᵢ/‖gᵢ‖, its gradient at w + εᵢ, averaged.
    let mut expected = vec![0.0; w.num_elements()];
    for i in 0..k {
        let data = rows(2 * i..2 * i + 2);
        let g = gradient(&m, &data);
        let norm = g.iter().map(|x| x * x).sum::<f64>().sqrt();
        let perturbed: Vec<f64> = w
            .to_vec()
            .iter()
            .zip(&g)
            .map(|(w, g)| w + rho * g / (norm + 1e-12))
            .collect();
        let at = w.with_values(&perturbed).set_in_module(m.clone());
        for (e, g) in expected.iter_mut().zip(gradient(&at, &data)) {
            *e += g / k as f64;
        }
    }
    let mut sam = SharpnessGradient::new(TwoPass::new(Sam), RhoSchedule::constant(rho).unwrap());
    let estimate = sam.estimate_chunks(&m, 0.1, &mut split(k)).unwrap();
    assert_eq!(estimate.passes, 2 * k);
    let got = ParamSet::from_gradients(&m, &estimate.grads).to_vec();
    let difference = max_relative_difference(&got, &expected);
    assert!(difference < 1e-5, "{difference}");
    // Not the whole-batch SAM gradient: the chunks' ε differ.
    let whole = sam.estimate(&m, 0.1, &mut |m: &TwoLayer| mse(m, &rows(0..8)));
    let whole = ParamSet::from_gradients(&m, &whole.unwrap().grads).to_vec();
    assert!(max_relative_difference(&whole, &expected) > 1e-3);
}

#[test]
fn m_sharpness_with_one_chunk_is_plain_sam_bit_for_bit() {
    let batch = rows(0..8);
    let mut plain = optimizer(TwoPass::new(Sam));
    let mut chunked = optimizer(TwoPass::new(Sam));
    let a = plain.step(&model(), 0.2, &mut |m: &TwoLayer| mse(m, &batch));
    let b = chunked.step_chunks(&model(), 0.2, &mut [|m: &TwoLayer| mse(m, &batch)]);
    let (a, b) = (a.unwrap(), b.unwrap());
    assert_eq!(a.loss.to_bits(), b.loss.to_bits());
    assert_eq!(a.grad_norm.to_bits(), b.grad_norm.to_bits());
    let bits = |m: &TwoLayer| weights(m).iter().map(|x| x.to_bits()).collect::<Vec<_>>();
    assert_eq!(bits(&a.model), bits(&b.model));
}

#[test]
fn a_gradient_objective_returns_the_output_of_pass_zero_only() {
    let batch = rows(0..8);
    let mut calls = 0;
    // As Burn's TrainStep::step: forward, backward, and an output for the metrics.
    let mut train_step = |m: &TwoLayer| {
        calls += 1;
        let loss = mse(m, &batch);
        let value = loss.clone().into_scalar::<f64>();
        Pass::backward(m, loss, (calls, value))
    };
    let mut sam = optimizer(TwoPass::new(Sam));
    let step = sam.step_with(&model(), 0.2, &mut train_step).unwrap();
    assert_eq!(step.output.0, 1, "the output is pass 0's");
    assert_eq!(step.output.1, step.loss);
    // The same step as with the loss objective.
    let mut by_loss = optimizer(TwoPass::new(Sam));
    let reference = by_loss.step(&model(), 0.2, &mut |m: &TwoLayer| mse(m, &batch));
    assert_eq!(weights(&reference.unwrap().model), weights(&step.model));
}

#[test]
fn per_group_learning_rates_reach_the_base_optimizer_and_rho_reads_the_base_rate() {
    let batch = rows(0..8);
    let m = model();
    // Layer b learns at 0 (frozen), everything else at 0.2.
    let lr = ModuleLrScheduler::new(0.2)
        .with_group(ParamGroup::ids_from_module(m.b.clone()), 0.0)
        .step();
    let schedule = RhoSchedule::proportional_to_lr(0.0, 0.4, 0.0, 0.4).unwrap();
    let mut sam = SharpnessAware::new(
        TwoPass::new(Sam),
        base::sgd(0.0, 0.0, false).unwrap(),
        schedule,
    );
    let step = sam
        .step(&m, lr, &mut |m: &TwoLayer| mse(m, &batch))
        .unwrap();
    assert_eq!(step.rho, 0.2, "ρ follows the base rate 0.2");
    let before = ParamSet::trainable_weights(&m.b).to_vec();
    assert_eq!(ParamSet::trainable_weights(&step.model.b).to_vec(), before);
    let moved = ParamSet::trainable_weights(&step.model.a).to_vec();
    assert!(max_relative_difference(&moved, &ParamSet::trainable_weights(&m.a).to_vec()) > 1e-3);
}
