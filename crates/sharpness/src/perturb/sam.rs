//! SAM (Foret et al., ICLR 2021).

use super::{Normalization, Preconditioner};
use crate::estimator::Lifecycle;
use crate::params::ParamSet;

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

impl Lifecycle for Sam {}

impl Preconditioner for Sam {
    fn name(&self) -> String {
        "sam".into()
    }

    /// For C = I the constraint and objective forms coincide (√(gᵀCg) = ‖Cg‖ = ‖g‖); the
    /// objective form reads ‖g‖ from the step's NaN check instead of a dot product.
    fn normalization(&self) -> Normalization {
        Normalization::Objective
    }

    /// d = g (the set shares g's tensors and its known norm: no pass over memory).
    fn direction(&self, g: &ParamSet, _w: &ParamSet) -> ParamSet {
        g.clone()
    }
}
