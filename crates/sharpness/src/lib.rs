//! # sharpness — sharpness-aware minimization on Burn
//!
//! Every sharpness-aware method is a [`GradientEstimator`]: from the batch gradient g₀ at w and an
//! [`Oracle`] that evaluates the same batch at perturbed weights, it returns the gradient the base
//! optimizer applies at w. The two-pass family is preSAM — a [`perturb::Preconditioner`] applied
//! to g and normalised on a ball ([`perturb::Normalization`]) — and [`SharpnessAware`] is the one
//! optimizer wrapper for all of them, around any Burn optimizer.
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

#![warn(missing_docs)]

pub mod error;
pub mod estimator;
pub mod measure;
pub mod optim;
pub mod params;
pub mod perturb;
pub mod state;
pub mod universal;

pub use error::SharpnessError;
pub use estimator::{Evaluation, GradientEstimator, Lifecycle, Oracle, Plain, StepContext};
pub use optim::{Objective, RhoSchedule, SharpnessAware, StepOutput};
pub use params::{ParamSet, ParamTensor};
pub use state::StateRecord;
