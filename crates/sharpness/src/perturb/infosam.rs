//! infoSAM (Zhang, Li & Giannakis, ICASSP 2025; `docs/algorithms.md` §8) — a documented reconstruction.

use burn::optim::{StateSink, StateSource};
use burn::tensor::Device;

use super::{Normalization, Preconditioner};
use crate::error::{SharpnessError, check};
use crate::estimator::Lifecycle;
use crate::params::ParamSet;

/// infoSAM: SAM whose perturbation weights each gradient coordinate by the inverse of an estimate
/// of its stochastic-gradient noise variance, so that the adversary does not chase noise.
///
/// **Reconstruction.** The published update rule is not available; this follows the draft
/// `INFOSAM` class of the co-author's VaSSO repository, per coordinate:
///
/// m_t = α m_{t−1} + (1−α) g_t   (m initialised to the first g),
/// σ̂²_t = (m_t − g_t)² = α² (m_{t−1} − g_t)²,
/// ε_t = ρ (g_t ⊘ (σ̂²_t + δ)) / ‖g_t ⊘ (σ̂²_t + δ)‖   (global norm),
///
/// an objective-preconditioned perturbation with P = diag(1/(σ̂² + δ)). Choices made here
/// (marked \[INFER\] in `docs/algorithms.md` §8):
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

impl InfoSam {
    /// m, the moving average of the gradients so far (None before the first step).
    pub fn mean(&self) -> Option<&ParamSet> {
        self.mean.as_ref()
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

impl Lifecycle for InfoSam {
    fn save_state(&self, prefix: &str, out: &mut StateSink) {
        ParamSet::save_optional(self.mean.as_ref(), prefix, "mean", out);
    }

    fn load_state(
        &mut self,
        prefix: &str,
        source: &mut StateSource,
        device: &Device,
    ) -> Result<(), SharpnessError> {
        self.mean = ParamSet::load_optional(prefix, "mean", source, device)?;
        Ok(())
    }
}

impl Preconditioner for InfoSam {
    fn name(&self) -> String {
        "infosam".into()
    }

    fn normalization(&self) -> Normalization {
        Normalization::Objective
    }

    /// g / (α²(m_{t−1} − g)² + δ); g on the first step (no average yet).
    fn direction(&self, g: &ParamSet, _w: &ParamSet) -> ParamSet {
        let Some(mean) = &self.mean else {
            return g.clone();
        };
        let (alpha_squared, damping) = (self.alpha * self.alpha, self.damping);
        g.zip_map(mean, |g, m| {
            let variance = (m - g.clone()).square().mul_scalar(alpha_squared);
            g / variance.add_scalar(damping)
        })
    }

    /// m_t = α m_{t−1} + (1−α) g_t; m_1 = g_1.
    fn commit(&mut self, g: &ParamSet) {
        let (alpha, beta) = (self.alpha, 1.0 - self.alpha);
        self.mean = Some(match &self.mean {
            Some(mean) => mean.zip_map(g, |m, g| m.mul_scalar(alpha) + g.mul_scalar(beta)),
            None => g.clone(),
        });
    }
}
