//! Monge SAM (Jacobsen & Arvanitidis 2025, eq. 9; spec §4).

use super::{Coordinate, DiagonalRule, Normalization, Preconditioner, diagonal};
use crate::params::ParamTensor;

/// M-SAM: the perturbation under the Monge metric G = I + ∇ℓ∇ℓᵀ of the loss surface seen as the
/// graph θ ↦ (θ, ℓ(θ)):
///
/// δ* = ρ g / (‖g‖ · √(1 + ‖g‖²)),
///
/// i.e. SAM's perturbation shrunk by 1/√(1+‖g‖²), so εᵀGε = ρ², ‖ε‖ ≤ ρ, ε → SAM's as ‖g‖ → 0 and
/// ε → 0 (plain gradient descent) as ‖g‖ → ∞. As a preconditioner: constraint form with
/// C = G⁻¹ = I − ggᵀ/(1+‖g‖²) (Sherman–Morrison, eq. 7), so C g = g/(1+‖g‖²).
///
/// M-SAM is not invariant to scaling the loss (‖g‖ scales): use a mean-reduced loss, as the paper.
#[derive(Clone, Copy, Debug, Default, PartialEq)]
pub struct MongeSam;

impl MongeSam {
    /// M-SAM has no hyperparameter besides ρ.
    pub fn new() -> Self {
        MongeSam
    }
}

impl Preconditioner for MongeSam {
    fn name(&self) -> String {
        "msam".into()
    }

    fn normalization(&self) -> Normalization {
        Normalization::Constraint
    }

    diagonal::diagonal_preconditioner!();
}

impl DiagonalRule for MongeSam {
    /// C g = g/(1+‖g‖²): the coordinates are g, the global factor 1/(1+‖g‖²).
    fn rule_for<X: Coordinate>(&self, _: &ParamTensor) -> impl Fn(X, X, Option<X>) -> X + Sync {
        |g, _w, _aux| g
    }

    fn keeps_gradient(&self) -> bool {
        true
    }

    fn global_factor(&self, grad_squared_norm: impl FnOnce() -> f64) -> f64 {
        1.0 / (1.0 + grad_squared_norm())
    }
}
