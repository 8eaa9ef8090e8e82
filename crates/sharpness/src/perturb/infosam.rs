//! infoSAM (Zhang, Li & Giannakis, ICASSP 2025; spec §8) — a documented reconstruction.

use burn::tensor::Device;

use super::{Coordinate, DiagonalRule, Normalization, Perturbed, Preconditioner, diagonal};
use crate::error::{SharpnessError, check};
use crate::estimator::StateRecord;
use crate::params::{ParamSet, ParamTensor};

/// infoSAM: SAM whose perturbation weights each gradient coordinate by the inverse of an estimate
/// of its stochastic-gradient noise variance, so that the adversary does not chase noise.
///
/// **Reconstruction.** The published update rule is not available; this follows the draft
/// `INFOSAM` class of the co-author's VaSSO repository (spec §8), per coordinate:
///
/// m_t = α m_{t−1} + (1−α) g_t   (m initialised to the first g),
/// σ̂²_t = (m_t − g_t)² = α² (m_{t−1} − g_t)²,
/// ε_t = ρ (g_t ⊘ (σ̂²_t + δ)) / ‖g_t ⊘ (σ̂²_t + δ)‖   (global norm),
///
/// an objective-preconditioned perturbation with P = diag(1/(σ̂² + δ)). Choices made here (the spec marks them INFER):
/// the first step is plain SAM (the draft sets σ̂² = 1 there); the damping δ (default 1e-8) keeps
/// coordinates with σ̂² = 0 finite (the draft divides by zero); α defaults to 0.9.
#[derive(Clone, Debug)]
pub struct InfoSam {
    alpha: f64,
    damping: f64,
    /// m_{t−1}, the moving average of the gradients of the steps so far.
    mean: Option<ParamSet>,
}

impl InfoSam {
    /// Default α (weight of the past in the gradient moving average).
    pub const DEFAULT_ALPHA: f64 = 0.9;
    /// Default damping δ added to the variance estimate.
    pub const DEFAULT_DAMPING: f64 = 1e-8;

    /// infoSAM with 0 ≤ α < 1 and damping δ > 0.
    pub fn new(alpha: f64, damping: f64) -> Result<Self, SharpnessError> {
        check(
            "alpha",
            alpha,
            (0.0..1.0).contains(&alpha),
            "a number in [0, 1)",
        )?;
        check(
            "damping",
            damping,
            damping.is_finite() && damping > 0.0,
            "a finite number > 0",
        )?;
        Ok(Self {
            alpha,
            damping,
            mean: None,
        })
    }
}

impl Default for InfoSam {
    fn default() -> Self {
        Self {
            alpha: Self::DEFAULT_ALPHA,
            damping: Self::DEFAULT_DAMPING,
            mean: None,
        }
    }
}

impl InfoSam {
    /// Stores m_t: the updated average, or g itself on the first step (no average yet).
    fn advance(&mut self, updated: Option<ParamSet>, g: &ParamSet) {
        self.mean = Some(updated.unwrap_or_else(|| g.clone()));
    }
}

impl Preconditioner for InfoSam {
    fn name(&self) -> String {
        "infosam".into()
    }

    fn normalization(&self) -> Normalization {
        Normalization::Objective
    }

    diagonal::diagonal_preconditioner!();

    fn commit(&mut self, g: &ParamSet) {
        let next = diagonal::updated_state(self, g);
        self.advance(next, g);
    }

    /// w + ε, with the moving average written by the pass that reads g and m for ‖f‖².
    fn perturb_and_commit(&mut self, rho: f64, g: &ParamSet, w: &ParamSet) -> Perturbed {
        let (perturbed, next) = diagonal::perturbed_weights_and_state(self, rho, g, w);
        self.advance(next, g);
        perturbed
    }

    fn save_state(&self) -> StateRecord {
        let mut state = StateRecord::default();
        if let Some(m) = &self.mean {
            state.put_set("infosam.mean", m);
        }
        state
    }

    fn load_state(&mut self, state: &StateRecord, device: &Device) -> Result<(), SharpnessError> {
        self.mean = match state.sets.contains_key("infosam.mean") {
            true => Some(state.get_set("infosam.mean", device)?),
            false => None,
        };
        Ok(())
    }
}

impl DiagonalRule for InfoSam {
    /// g / (α²(m_{t−1} − g)² + δ); g on the first step (no average yet).
    fn rule_for<X: Coordinate>(&self, _: &ParamTensor) -> impl Fn(X, X, Option<X>) -> X + Sync {
        let (alpha_squared, damping) = (self.alpha * self.alpha, self.damping);
        move |g, _w, mean| match mean {
            Some(m) => {
                let variance = (m - g.clone()).square().mul_scalar(alpha_squared);
                g / variance.add_scalar(damping)
            }
            None => g,
        }
    }

    fn auxiliary(&self) -> Option<&ParamSet> {
        self.mean.as_ref()
    }

    /// m_t = α m_{t−1} + (1−α) g_t.
    fn state_update<X: Coordinate>(&self) -> impl Fn(X, X) -> X + Sync {
        let (alpha, beta) = (self.alpha, 1.0 - self.alpha);
        move |g, mean| mean.mul_scalar(alpha) + g.mul_scalar(beta)
    }

    fn updates_state(&self) -> bool {
        true
    }
}
