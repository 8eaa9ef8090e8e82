//! Monge SAM (Jacobsen & Arvanitidis 2025, eq. 9).

use super::{Normalization, Preconditioner};
use crate::estimator::Lifecycle;
use crate::params::ParamSet;

/// M-SAM: the perturbation under the Monge metric G = I + ∇ℓ∇ℓᵀ of the loss surface seen as the
/// graph θ ↦ (θ, ℓ(θ)):
///
/// δ* = ρ g / (‖g‖ · √(1 + ‖g‖²)),
///
/// i.e. SAM's perturbation shrunk by 1/√(1+‖g‖²), so εᵀGε = ρ², ‖ε‖ ≤ ρ, ε → SAM's as ‖g‖ → 0 and
/// ε → 0 (plain gradient descent) as ‖g‖ → ∞. As a preconditioner it is the constraint form with
/// C = G⁻¹ = I − ggᵀ/(1+‖g‖²) (Sherman–Morrison, eq. 7): C g = g/(1+‖g‖²) and
/// √(gᵀCg) = ‖g‖/√(1+‖g‖²). Written as eq. 9 reads — d = g/√(1+‖g‖²) normalised by ‖g‖ — the
/// same ε needs no reduction over memory beyond ‖g‖, which the step's NaN check computed.
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

impl Lifecycle for MongeSam {}

impl Preconditioner for MongeSam {
    fn name(&self) -> String {
        "msam".into()
    }

    /// ε = ρ d/‖g‖ (eq. 9; see the type's docs for the constraint form it equals).
    fn normalization(&self) -> Normalization {
        Normalization::Gradient
    }

    /// d = g/√(1+‖g‖²).
    fn direction(&self, g: &ParamSet, _w: &ParamSet) -> ParamSet {
        g.scale(1.0 / (1.0 + g.squared_norm()).sqrt())
    }
}
