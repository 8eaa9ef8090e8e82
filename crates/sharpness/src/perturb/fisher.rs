//! Fisher SAM (Kim, Li, Hu & Hospedales, ICML 2022).

use super::{Normalization, Preconditioner};
use crate::error::{SharpnessError, check_non_negative};
use crate::estimator::Lifecycle;
use crate::params::ParamSet;

/// Fisher SAM: the perturbation on the Fisher ball δᵀF δ ≤ ρ² with the diagonal empirical Fisher
/// from the batch gradient, F = I + η diag(g ⊙ g):
///
/// h = g / (1 + η g²) (per coordinate),  ε = ρ h / √(gᵀh),
///
/// so that εᵀ(I + η diag g²)ε = ρ² exactly — normalised in the **Fisher** metric, not the
/// Euclidean one (one public port normalises by ‖h‖ instead; `docs/peers.md`, B6). η = 0 gives
/// SAM. As a preconditioner: constraint form with C = F⁻¹.
///
/// For a cross-entropy loss g ⊙ g is the square of the batch-mean log-likelihood gradient, as the
/// paper's practical estimator (no extra pass). Default η = 1.0 (a third-party default; no
/// official code exists).
#[derive(Clone, Copy, Debug, PartialEq)]
pub struct FisherSam {
    eta: f64,
}

impl FisherSam {
    /// Default η.
    pub const DEFAULT_ETA: f64 = 1.0;

    /// Fisher SAM with damping η ≥ 0.
    pub fn new(eta: f64) -> Result<Self, SharpnessError> {
        check_non_negative("eta", eta)?;
        Ok(Self { eta })
    }

    /// η.
    pub fn eta(&self) -> f64 {
        self.eta
    }
}

impl Default for FisherSam {
    fn default() -> Self {
        Self {
            eta: Self::DEFAULT_ETA,
        }
    }
}

impl Lifecycle for FisherSam {}

impl Preconditioner for FisherSam {
    fn name(&self) -> String {
        "fisher".into()
    }

    fn normalization(&self) -> Normalization {
        Normalization::Constraint
    }

    /// F⁻¹g = g / (1 + η g²).
    fn direction(&self, g: &ParamSet, _w: &ParamSet) -> ParamSet {
        let eta = self.eta;
        g.map(|e| {
            let g = e.value.clone();
            g.clone() / g.square().mul_scalar(eta).add_scalar(1.0)
        })
    }
}
