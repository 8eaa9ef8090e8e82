//! ASAM (Kwon et al., ICML 2021).

use super::{Normalization, Preconditioner};
use crate::error::{SharpnessError, check_non_negative};
use crate::estimator::Lifecycle;
use crate::params::{ParamSet, ParamTensor};

/// Which tensors ASAM rescales by T_w = |w| + η. The two public conventions differ by a factor of
/// about 4 in the useful ρ (`docs/peers.md`, B7), so the choice is explicit.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub enum AsamScope {
    /// The official code (SamsungLabs/ASAM): only tensors whose name contains "weight" — linear
    /// and convolution weights and the normalisation scale (PyTorch's BN `weight`, Burn's
    /// `gamma`); biases and BN shifts get T = 1.
    #[default]
    Weights,
    /// Every tensor, biases included (dbahri/universal_sam; with η = 0 this is davda54's
    /// `adaptive=True`).
    All,
}

/// ASAM: adaptive SAM with the normalisation operator T_w = diag(|w| + η),
///
/// ε = ρ T_w² g / ‖T_w g‖,
///
/// the solution of max gᵀε s.t. ‖T_w⁻¹ε‖ ≤ ρ. As a preconditioner: constraint form with C = T_w².
/// Default η = 0.01 and the official [`AsamScope::Weights`].
#[derive(Clone, Copy, Debug, PartialEq)]
pub struct Asam {
    eta: f64,
    scope: AsamScope,
}

impl Asam {
    /// Default η (ASAM paper and class default).
    pub const DEFAULT_ETA: f64 = 0.01;

    /// ASAM with η ≥ 0 and a scope.
    pub fn new(eta: f64, scope: AsamScope) -> Result<Self, SharpnessError> {
        check_non_negative("eta", eta)?;
        Ok(Self { eta, scope })
    }

    /// Whether T_w = |w| + η applies to this tensor (else T = 1).
    pub fn rescales(&self, tensor: &ParamTensor) -> bool {
        match self.scope {
            AsamScope::All => true,
            AsamScope::Weights => matches!(tensor.field_name(), "weight" | "gamma"),
        }
    }
}

impl Default for Asam {
    fn default() -> Self {
        Self {
            eta: Self::DEFAULT_ETA,
            scope: AsamScope::Weights,
        }
    }
}

impl Lifecycle for Asam {}

impl Preconditioner for Asam {
    fn name(&self) -> String {
        "asam".into()
    }

    fn normalization(&self) -> Normalization {
        Normalization::Constraint
    }

    /// T_w² g with T_w = |w| + η on the rescaled tensors, g elsewhere.
    fn direction(&self, g: &ParamSet, w: &ParamSet) -> ParamSet {
        g.zip_map_entries(w, |e, w| match self.rescales(e) {
            true => e.value.clone() * w.abs().add_scalar(self.eta).square(),
            false => e.value.clone(),
        })
    }
}
