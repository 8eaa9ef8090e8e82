//! SSAM-F, sparse SAM with a Fisher mask (Mi et al., NeurIPS 2022; `docs/algorithms.md` §5).

use burn::optim::{StateSink, StateSource};
use burn::tensor::Device;

use super::{Normalization, Preconditioner};
use crate::error::{SharpnessError, check};
use crate::estimator::{Lifecycle, Oracle, StepContext};
use crate::params::ParamSet;

/// SSAM-F: SAM restricted to a sparse set of coordinates chosen by the empirical Fisher,
///
/// ε = ρ (g ⊙ M) / ‖g‖,   M ∈ {0,1}^d,
///
/// normalised by the **unmasked** gradient as the reference code does (so ‖ε‖ ≤ ρ; `docs/algorithms.md` §5
/// and open question 6). The mask keeps the ⌊d(1−s)⌋ coordinates with the largest diagonal Fisher
/// F_j = Σᵢ (∂ℓᵢ/∂w_j)² over `num_samples` single examples, chosen globally over all tensors.
///
/// Schedule, as the reference: the mask starts all zeros (the first step is plain SGD) and is
/// recomputed at the weights produced by every step whose index is a multiple of
/// `refresh_every`, at the start of the next step (the reference
/// refreshes after the first batch of every `update_freq`-th epoch: set `refresh_every` to
/// steps-per-epoch × update_freq). Unlike the reference, the single-example passes run on a copy
/// of the model and do not move the BatchNorm running statistics.
#[derive(Clone, Debug)]
pub struct Ssam {
    sparsity: f64,
    num_samples: usize,
    refresh_every: u64,
    mask: Option<ParamSet>,
}

impl Ssam {
    /// SSAM-F with sparsity s ∈ [0, 1), `num_samples` ≥ 1 and `refresh_every` ≥ 1 steps.
    /// The universal-SAM paper's setting: s = 0.5, 16 samples, every epoch.
    pub fn new(
        sparsity: f64,
        num_samples: usize,
        refresh_every: u64,
    ) -> Result<Self, SharpnessError> {
        check(
            "sparsity",
            sparsity,
            (0.0..1.0).contains(&sparsity),
            "a number in [0, 1)",
        )?;
        check(
            "num_samples",
            num_samples as f64,
            num_samples >= 1,
            "at least 1",
        )?;
        check(
            "refresh_every",
            refresh_every as f64,
            refresh_every >= 1,
            "at least 1 step",
        )?;
        Ok(Self {
            sparsity,
            num_samples,
            refresh_every,
            mask: None,
        })
    }

    /// The current mask (None before the first refresh).
    pub fn mask(&self) -> Option<&ParamSet> {
        self.mask.as_ref()
    }

    /// Sets the mask from a diagonal Fisher: 1 on the ⌊d(1−s)⌋ largest coordinates (ties broken
    /// by position), 0 elsewhere.
    pub fn set_mask_from_fisher(&mut self, fisher: &ParamSet) {
        let values = fisher.to_vec();
        let keep = ((values.len() as f64) * (1.0 - self.sparsity)).floor() as usize;
        let mut order: Vec<usize> = (0..values.len()).collect();
        order.sort_by(|&a, &b| values[b].total_cmp(&values[a]).then(a.cmp(&b)));
        let mut flat_mask = vec![0.0; values.len()];
        for &i in &order[..keep] {
            flat_mask[i] = 1.0;
        }
        self.mask = Some(fisher.with_values(&flat_mask));
    }
}

impl Lifecycle for Ssam {
    /// Refreshes the mask from the diagonal empirical Fisher F_j = Σᵢ (∂ℓᵢ/∂w_j)² over
    /// `num_samples` single examples at this step's weights, in the steps that follow a step whose
    /// index is a multiple of `refresh_every` (the reference refreshes after those steps, at the
    /// weights they produced: the same weights).
    fn before_estimate(
        &mut self,
        oracle: &mut dyn Oracle,
        ctx: &StepContext,
    ) -> Result<(), SharpnessError> {
        if ctx.step == 0 || !(ctx.step - 1).is_multiple_of(self.refresh_every) {
            return Ok(());
        }
        let mut fisher = oracle.weights().zeros_like();
        for draw in 0..self.num_samples {
            let g = oracle.evaluate_example(draw)?.grad;
            fisher = fisher.add(&g.mul(&g));
        }
        self.set_mask_from_fisher(&fisher);
        Ok(())
    }

    fn save_state(&self, prefix: &str, out: &mut StateSink) {
        ParamSet::save_optional(self.mask.as_ref(), prefix, "mask", out);
    }

    fn load_state(
        &mut self,
        prefix: &str,
        source: &mut StateSource,
        device: &Device,
    ) -> Result<(), SharpnessError> {
        self.mask = ParamSet::load_optional(prefix, "mask", source, device)?;
        Ok(())
    }
}

impl Preconditioner for Ssam {
    fn name(&self) -> String {
        "ssam".into()
    }

    fn normalization(&self) -> Normalization {
        Normalization::Gradient
    }

    /// M ⊙ g; 0 before the first mask (so the first step is plain SGD).
    fn direction(&self, g: &ParamSet, _w: &ParamSet) -> ParamSet {
        match &self.mask {
            Some(mask) => g.mul(mask),
            None => g.zeros_like(),
        }
    }
}
