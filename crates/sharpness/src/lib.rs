//! # sharpness — sharpness-aware minimization on Burn
//!
//! Every sharpness-aware method is a [`GradientEstimator`]: from the batch gradient g₀ at w and an
//! [`Oracle`] that evaluates the same batch at perturbed weights, it returns the gradient the base
//! optimizer applies at w. The two-pass family is preSAM — a [`perturb::Preconditioner`] applied
//! to g and normalised on a ball ([`perturb::Normalization`]) — and [`SharpnessAware`] is the one
//! optimizer wrapper for all of them, around any Burn optimizer. Every rule is written with Burn
//! tensor operations, so the library runs on whichever backend its user enables (it enables none
//! itself; its tests and `sharpness-lab` use Flex, Burn's CPU backend).
//!
//! | method | type | perturbation |
//! |---|---|---|
//! | SAM | [`perturb::Sam`] | ρ g/‖g‖ |
//! | ASAM | [`perturb::Asam`] | ρ T²g/‖Tg‖, T = \|w\|+η |
//! | Fisher SAM | [`perturb::FisherSam`] | ρ F⁻¹g/√(gᵀF⁻¹g), F = I+η diag g² |
//! | Monge SAM | [`perturb::MongeSam`] | ρ g/(‖g‖√(1+‖g‖²)) |
//! | SSAM-F | [`perturb::Ssam`] | ρ (M⊙g)/‖g‖ |
//! | infoSAM | [`perturb::InfoSam`] | ρ (g/σ̂²)/‖g/σ̂²‖ |
//!
//! ```
//! use burn::nn::{Linear, LinearConfig};
//! use burn::prelude::*;
//! use sharpness::{RhoSchedule, SharpnessAware, optim::base, perturb::{MongeSam, TwoPass}};
//!
//! let device = Device::flex().autodiff();
//! let model: Linear = LinearConfig::new(3, 1).init(&device);
//! let x = Tensor::<2>::from_floats([[1.0, 2.0, 3.0], [0.5, -1.0, 2.0]], &device);
//! let y = Tensor::<2>::from_floats([[1.0], [0.0]], &device);
//!
//! let mut optimizer = SharpnessAware::new(
//!     TwoPass::new(MongeSam::new()),
//!     base::sgd(0.9, 5e-4, false).unwrap(),
//!     RhoSchedule::constant(0.05).unwrap(),
//! );
//! // The objective is evaluated once per pass, on the same batch.
//! let mut mse = |m: &Linear| (m.forward(x.clone()) - y.clone()).square().mean();
//! let step = optimizer.step(&model, 0.1, &mut mse).unwrap();
//! assert_eq!(step.passes, 2);
//! let model = step.model; // the caller's model was never modified
//! ```

//!
//! ## Adding a geometry
//!
//! A new two-pass method is one struct with two trait impls:
//!
//! 1. [`perturb::Preconditioner`]: a name, a [`perturb::Normalization`] (which ball ε lies on),
//!    and the direction d(g, w) with tensor operations on [`ParamSet`]s — for a diagonal
//!    geometry a closure over each tensor ([`ParamSet::map`], [`ParamSet::zip_map`]);
//!    [`perturb::Preconditioner::commit`] if it keeps state that follows the gradient;
//! 2. [`Lifecycle`]: empty for a stateless geometry; otherwise its state (written with Burn's
//!    record containers; a [`ParamSet`] is one `state_flatten` call) and, if it has a
//!    schedule, [`Lifecycle::before_estimate`].
//!
//! [`perturb::TwoPass`] does the rest: the normalisation, w + ε, the second pass, ρ = 0, zero
//! gradients, NaN roll-back and state saving. Here ε = ρ d/‖d‖ with d = sign(g) ⊙ √|g|:
//!
//! ```
//! use burn::nn::{Linear, LinearConfig};
//! use burn::prelude::*;
//! use sharpness::perturb::{Normalization, Preconditioner, TwoPass, perturbation};
//! use sharpness::{Lifecycle, ParamSet, RhoSchedule, SharpnessAware, optim::base};
//!
//! #[derive(Clone)]
//! struct SqrtSam;
//!
//! impl Lifecycle for SqrtSam {}
//!
//! impl Preconditioner for SqrtSam {
//!     fn name(&self) -> String {
//!         "sqrt-sam".into()
//!     }
//!     fn normalization(&self) -> Normalization {
//!         Normalization::Objective
//!     }
//!     fn direction(&self, g: &ParamSet, _w: &ParamSet) -> ParamSet {
//!         g.map(|e| e.value.clone().sign() * e.value.clone().abs().sqrt())
//!     }
//! }
//!
//! let device = Device::flex();
//! let g = ParamSet::from_values(&device, &[("w", &[2], &[4.0, -9.0])]);
//! // d = (2, −3), ‖d‖ = √13: ε = ρ d/‖d‖.
//! let epsilon = perturbation(&SqrtSam, 0.1, &g, &g).epsilon().to_vec();
//! assert!((epsilon[0] - 0.2 / 13f64.sqrt()).abs() < 1e-12);
//! assert!((epsilon[1] + 0.3 / 13f64.sqrt()).abs() < 1e-12);
//!
//! // Trained like any built-in method.
//! let device = device.autodiff();
//! let model: Linear = LinearConfig::new(2, 1).init(&device);
//! let x = Tensor::<2>::from_floats([[1.0, 2.0]], &device);
//! let mut optimizer = SharpnessAware::new(
//!     TwoPass::new(SqrtSam),
//!     base::sgd(0.0, 0.0, false).unwrap(),
//!     RhoSchedule::constant(0.05).unwrap(),
//! );
//! let step = optimizer.step(&model, 0.1, &mut |m: &Linear| m.forward(x.clone()).square().mean());
//! assert_eq!(step.unwrap().passes, 2);
//! ```
//!
//! Tests of a geometry from outside the crate: `tests/geometries.rs`.
//!
//! ## Feature flags
//!
//! - `train`: SAM inside Burn's own training loop (the `train` module): a training strategy for
//!   `SupervisedTraining` that steps the `Learner`'s optimizer, and a helper for a user's own
//!   `TrainStep::step` (enables `burn/train`, without Burn's terminal UI).
//! - `wgpu`: Burn's wgpu backend, for the library's own GPU tests (`tests/wgpu.rs`, run on Mesa's
//!   lavapipe by `scripts/lavapipe-tests.sh`); a user enables the backend in their own `burn`.
//!
//! The library enables no Burn backend: add `burn` with the backend you train on (e.g.
//! `features = ["flex"]` for the CPU, `"wgpu"` for a GPU) to your own crate, and the library runs
//! there, since every rule is Burn tensor operations.
//!
//! ## Batches: accumulation, m-sharpness, outputs
//!
//! - [`Accumulate`]: exact gradient accumulation. Each pass runs micro-batch by micro-batch, so ε
//!   comes from the whole batch's gradient with the memory of one micro-batch.
//! - [`SharpnessGradient::estimate_chunks`] / [`SharpnessAware::step_chunks`]: m-sharpness, one ε
//!   per chunk of the batch, the k gradients averaged (what data-parallel SAM computes when each
//!   device perturbs with its own shard).
//! - [`GradientObjective`]: an objective that runs its own backward pass and returns an output
//!   (as Burn's `TrainStep::step`): pass 0's output comes back with the step, for metrics.
//! - Learning rates are a number or Burn's per-group `ModuleLearningRate`; ρ schedules read its
//!   base rate.

//! ## Precision
//!
//! Global norms and dot products of half-precision (f16, bf16) tensors accumulate in f32. The
//! perturbed weights w + ε are computed in the weights' own precision, so a coordinate of ε
//! smaller than half a unit in the last place of its weight (about |w|·2⁻¹¹ in f16, |w|·2⁻⁸ in
//! bf16) rounds away and that coordinate is not perturbed: keep the weights in f32 (Burn's
//! default) when ρ is small against them.

#![warn(missing_docs)]

pub mod error;
pub mod estimator;
pub mod measure;
pub mod objective;
pub mod optim;
pub mod params;
pub mod perturb;
pub mod state;
#[cfg(feature = "train")]
pub mod train;
pub mod universal;

pub use error::SharpnessError;
pub use estimator::{Evaluation, GradientEstimator, Lifecycle, Oracle, Plain, StepContext};
pub use objective::{Accumulate, GradientObjective, Objective, Pass};
pub use optim::{Estimate, RhoSchedule, SharpnessAware, SharpnessGradient, StepOutput};
pub use params::{ParamSet, ParamTensor};
pub use state::StateRecord;
