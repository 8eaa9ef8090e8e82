//! SAM (Foret et al., ICLR 2021; spec §1).

use super::{Coordinate, DiagonalRule, Normalization, Preconditioner, diagonal};
use crate::params::ParamTensor;

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

    diagonal::diagonal_preconditioner!();
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
