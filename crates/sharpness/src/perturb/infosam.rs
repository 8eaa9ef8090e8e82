//! infoSAM (Zhang, Li & Giannakis, ICASSP 2025; spec §8) — a documented reconstruction.

use std::sync::Mutex;

use burn::tensor::Device;

use super::{Normalization, Preconditioner};
use crate::error::{SharpnessError, check};
use crate::estimator::StateRecord;
use crate::params::ParamSet;

/// infoSAM: SAM whose perturbation weights each gradient coordinate by the inverse of an estimate
/// of its stochastic-gradient noise variance, so that the adversary does not chase noise.
///
/// **Reconstruction.** The published update rule is not available; this follows the draft
/// `INFOSAM` class of the co-author's VaSSO repository (spec §8), per coordinate:
///
/// m_t = α m_{t−1} + (1−α) g_t   (m initialised to the first g),
/// σ̂²_t = (m_t − g_t)²,
/// ε_t = ρ (g_t ⊘ (σ̂²_t + δ)) / ‖g_t ⊘ (σ̂²_t + δ)‖   (global norm),
///
/// an objective-preconditioned perturbation with P = diag(1/(σ̂² + δ)). Choices made here (the spec marks them INFER):
/// the first step is plain SAM (the draft sets σ̂² = 1 there); the damping δ (default 1e-8) keeps
/// coordinates with σ̂² = 0 finite (the draft divides by zero); α defaults to 0.9.
#[derive(Debug)]
pub struct InfoSam {
    alpha: f64,
    damping: f64,
    mean: Option<ParamSet>,
    /// m_t computed by `direction`, kept until `commit` (so it is computed once per step).
    pending: Mutex<Option<ParamSet>>,
}

impl Clone for InfoSam {
    fn clone(&self) -> Self {
        Self {
            alpha: self.alpha,
            damping: self.damping,
            mean: self.mean.clone(),
            pending: Mutex::new(None),
        }
    }
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
            pending: Mutex::new(None),
        })
    }

    /// The gradient moving average m_t after this step's gradient `g`.
    fn updated_mean(&self, g: &ParamSet) -> Option<ParamSet> {
        self.mean
            .as_ref()
            .map(|m| m.scale(self.alpha).add_scaled(1.0 - self.alpha, g))
    }
}

impl Default for InfoSam {
    fn default() -> Self {
        Self {
            alpha: Self::DEFAULT_ALPHA,
            damping: Self::DEFAULT_DAMPING,
            mean: None,
            pending: Mutex::new(None),
        }
    }
}

impl Preconditioner for InfoSam {
    fn name(&self) -> String {
        "infosam".into()
    }

    fn normalization(&self) -> Normalization {
        Normalization::Objective
    }

    fn direction(&self, g: &ParamSet, _w: &ParamSet) -> ParamSet {
        match self.updated_mean(g) {
            None => g.clone(),
            Some(m) => {
                let damping = self.damping;
                let d = g.zip_map(&m, |g, m| g.clone() / (m - g).square().add_scalar(damping));
                *self.pending.lock().expect("infoSAM state") = Some(m);
                d
            }
        }
    }

    fn commit(&mut self, g: &ParamSet) {
        let pending = self.pending.get_mut().expect("infoSAM state").take();
        self.mean = Some(
            pending
                .or_else(|| self.updated_mean(g))
                .unwrap_or_else(|| g.clone()),
        );
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
