//! SAM (Foret et al., ICLR 2021; spec §1).

use super::{
    Coordinate, DiagonalRule, Normalization, Perturbation, Perturbed, Preconditioner, diagonal,
};
use crate::params::{ParamSet, ParamTensor};

/// SAM: ε = ρ g / (‖g‖ + ξ), the first-order solution of max_{‖ε‖≤ρ} L(w + ε), with the norm taken
/// globally over all parameter tensors. As a preconditioner: constraint form with C = I.
#[derive(Clone, Copy, Debug, Default, PartialEq)]
pub struct Sam;

impl Sam {
    /// SAM has no hyperparameter besides ρ (which comes from the optimizer's schedule).
    pub fn new() -> Self {
        Sam
    }
}

impl Preconditioner for Sam {
    fn name(&self) -> String {
        "sam".into()
    }

    fn normalization(&self) -> Normalization {
        Normalization::Constraint
    }

    fn direction(&self, g: &ParamSet, w: &ParamSet) -> ParamSet {
        diagonal::direction(self, g, w)
    }

    fn perturbation(&self, rho: f64, g: &ParamSet, w: &ParamSet) -> Perturbation {
        diagonal::perturbation(self, rho, g, w)
    }

    fn perturbed_weights(&self, rho: f64, g: &ParamSet, w: &ParamSet) -> Perturbed {
        diagonal::perturbed_weights(self, rho, g, w)
    }
}

impl DiagonalRule for Sam {
    /// d = g.
    fn rule_for<X: Coordinate>(&self, _: &ParamTensor) -> impl Fn(X, X, Option<X>) -> X + Sync {
        |g, _w, _aux| g
    }

    fn keeps_gradient(&self) -> bool {
        true
    }
}
