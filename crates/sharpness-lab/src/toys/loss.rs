//! The toy losses of the Monge SAM paper (`docs/algorithms.md` §9.1), as Burn modules and in closed form.
//!
//! A toy loss is evaluated on a [`Point`], a Burn module with a single 2-element `f64`
//! parameter, so that toys run through exactly the optimizer code that trains networks. The
//! parameter is named `weight` so that ASAM's official scope (tensors named `weight`/`gamma`)
//! rescales it, as the paper's ASAM does.
//!
//! The 1-D paraboloid ℓ(θ) = θ² is modelled as ℓ(θ₁, θ₂) = θ₁²: θ₂ gets a zero gradient and never
//! moves, so every global norm ‖g‖ equals |∂ℓ/∂θ₁| and the iterates of θ₁ are those of the 1-D
//! problem (the second coordinate is reported but meaningless).

use burn::module::{Module, Param};
use burn::optim::GradientsParams;
use burn::prelude::*;
use burn::tensor::{DType, TensorData};
use sharpness::{Objective, ParamSet};

/// Below this s = x² + y² the sinc loss uses its Taylor expansion 5(1 − s²/6).
pub const SINC_TAYLOR_BELOW: f64 = 1e-4;

/// A toy loss.
#[derive(
    Clone,
    Copy,
    Debug,
    PartialEq,
    Eq,
    serde::Serialize,
    clap::ValueEnum,
    strum::Display,
    strum::IntoStaticStr,
    strum::VariantArray,
)]
#[serde(rename_all = "kebab-case")]
#[strum(serialize_all = "kebab-case")]
pub enum Loss {
    /// ℓ = (1 − θ₁θ₂)²: saddle at 0, banana of minima θ₁θ₂ = 1, flattest at ±(1, 1).
    Banana,
    /// ℓ = 5 sin(x² + y²)/(x² + y²): maximum 5 at 0, ring of minima at r ≈ 2.1198.
    Sinc,
    /// ℓ = θ₁² (the 1-D paraboloid θ²; θ₂ is inert).
    Paraboloid,
}

impl Loss {
    /// The command-line name.
    pub fn name(self) -> &'static str {
        self.into()
    }

    /// ℓ(θ) in closed form.
    pub fn value(self, t: [f64; 2]) -> f64 {
        match self {
            Loss::Banana => (1.0 - t[0] * t[1]).powi(2),
            Loss::Sinc => {
                let s = t[0] * t[0] + t[1] * t[1];
                if s < SINC_TAYLOR_BELOW {
                    5.0 * (1.0 - s * s / 6.0)
                } else {
                    5.0 * s.sin() / s
                }
            }
            Loss::Paraboloid => t[0] * t[0],
        }
    }

    /// ∇ℓ(θ) in closed form.
    pub fn gradient(self, t: [f64; 2]) -> [f64; 2] {
        match self {
            Loss::Banana => {
                let r = -2.0 * (1.0 - t[0] * t[1]);
                [r * t[1], r * t[0]]
            }
            Loss::Sinc => {
                let s = t[0] * t[0] + t[1] * t[1];
                // d/ds [5 sin s / s] = 5 (s cos s − sin s)/s²; ∂s/∂θ = 2θ.
                let d = if s < SINC_TAYLOR_BELOW {
                    -5.0 * s / 3.0
                } else {
                    5.0 * (s * s.cos() - s.sin()) / (s * s)
                };
                [2.0 * d * t[0], 2.0 * d * t[1]]
            }
            Loss::Paraboloid => [2.0 * t[0], 0.0],
        }
    }

    /// The banana's analytic Hessian (`docs/algorithms.md` §9.1); `None` for the other losses.
    pub fn analytic_hessian(self, t: [f64; 2]) -> Option<[[f64; 2]; 2]> {
        match self {
            Loss::Banana => {
                let off = 4.0 * t[0] * t[1] - 2.0;
                Some([[2.0 * t[1] * t[1], off], [off, 2.0 * t[0] * t[0]]])
            }
            Loss::Paraboloid => Some([[2.0, 0.0], [0.0, 0.0]]),
            Loss::Sinc => None,
        }
    }

    /// ℓ as a Burn expression of the parameter `theta` (2 elements), a one-element tensor.
    pub fn tensor(self, theta: Tensor<1>) -> Tensor<1> {
        let x = theta.clone().slice([0..1]);
        let y = theta.clone().slice([1..2]);
        match self {
            Loss::Banana => (x * y).neg().add_scalar(1.0).square(),
            Loss::Sinc => {
                let s = x.clone().square() + y.clone().square();
                let s_value = s.clone().inner().into_scalar::<f64>();
                if s_value < SINC_TAYLOR_BELOW {
                    s.square().mul_scalar(-5.0 / 6.0).add_scalar(5.0)
                } else {
                    s.clone().sin().mul_scalar(5.0) / s
                }
            }
            Loss::Paraboloid => x.square(),
        }
    }
}

/// A point of the plane as a Burn module: one 2-element `f64` parameter.
#[derive(Module, Debug)]
pub struct Point {
    /// θ = (θ₁, θ₂).
    pub weight: Param<Tensor<1>>,
}

/// The autodiff `f64` device the toys run on.
pub fn device() -> Device {
    Device::flex().autodiff()
}

impl Point {
    /// The point θ on `device`.
    pub fn new(theta: [f64; 2], device: &Device) -> Self {
        let t = Tensor::<1>::from_data(TensorData::new(theta.to_vec(), [2]), (device, DType::F64));
        Self {
            weight: Param::from_tensor(t),
        }
    }

    /// The current θ.
    pub fn theta(&self) -> [f64; 2] {
        let v = ParamSet::trainable_weights(self).to_vec();
        [v[0], v[1]]
    }
}

/// The objective of a toy: the full, deterministic loss. SSAM's per-example loss
/// ([`Objective::example_loss`]) is the full loss too — a deterministic toy has a single
/// "example", so every Fisher draw is the same and the empirical Fisher is `num_samples`·g².
#[derive(Clone, Copy, Debug)]
pub struct ToyObjective(pub Loss);

impl Objective<Point> for ToyObjective {
    fn loss(&mut self, model: &Point) -> Tensor<1> {
        self.0.tensor(model.weight.val())
    }

    fn example_loss(&mut self, model: &Point, _draw: usize) -> Option<Tensor<1>> {
        Some(self.loss(model))
    }
}

/// (ℓ(θ), ∇ℓ(θ)) by Burn's autodiff, in `f64`.
pub fn autodiff_gradient(loss: Loss, theta: [f64; 2], device: &Device) -> (f64, [f64; 2]) {
    let point = Point::new(theta, device);
    let value = loss.tensor(point.weight.val());
    let l = value.clone().inner().into_scalar::<f64>();
    let grads = GradientsParams::from_grads(value.backward(), &point);
    let g = ParamSet::from_gradients(&point, &grads).to_vec();
    match g.len() {
        2 => (l, [g[0], g[1]]),
        _ => (l, [0.0, 0.0]),
    }
}

/// Step of the central differences in [`hessian`].
pub const HESSIAN_STEP: f64 = 1e-5;

/// ∇²ℓ(θ) by central differences of autodiff gradients (Burn 0.22 has no double backward),
/// symmetrised: H[:, j] = (∇ℓ(θ + h eⱼ) − ∇ℓ(θ − h eⱼ)) / 2h, h = [`HESSIAN_STEP`].
pub fn hessian(loss: Loss, theta: [f64; 2], device: &Device) -> [[f64; 2]; 2] {
    let h = HESSIAN_STEP;
    let mut cols = [[0.0; 2]; 2];
    for (j, col) in cols.iter_mut().enumerate() {
        let mut plus = theta;
        let mut minus = theta;
        plus[j] += h;
        minus[j] -= h;
        let gp = autodiff_gradient(loss, plus, device).1;
        let gm = autodiff_gradient(loss, minus, device).1;
        *col = [(gp[0] - gm[0]) / (2.0 * h), (gp[1] - gm[1]) / (2.0 * h)];
    }
    let off = 0.5 * (cols[0][1] + cols[1][0]);
    [[cols[0][0], off], [off, cols[1][1]]]
}
