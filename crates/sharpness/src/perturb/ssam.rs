//! SSAM-F, sparse SAM with a Fisher mask (Mi et al., NeurIPS 2022; spec §5).

use burn::tensor::{Device, Tensor, TensorData};

use super::{Coordinate, DiagonalRule, Normalization, Preconditioner, diagonal};
use crate::error::{SharpnessError, check};
use crate::estimator::{Oracle, StateRecord, StepContext};
use crate::params::{ParamSet, ParamTensor};

/// SSAM-F: SAM restricted to a sparse set of coordinates chosen by the empirical Fisher,
///
/// ε = ρ (g ⊙ M) / ‖g‖,   M ∈ {0,1}^d,
///
/// normalised by the **unmasked** gradient as the reference code does (so ‖ε‖ ≤ ρ; spec §5 and
/// open question 6). The mask keeps the ⌊d(1−s)⌋ coordinates with the largest diagonal Fisher
/// F_j = Σᵢ (∂ℓᵢ/∂w_j)² over `num_samples` single examples, chosen globally over all tensors.
///
/// Schedule, as the reference: the mask starts all zeros (the first step is plain SGD) and is
/// recomputed after every step whose index is a multiple of `refresh_every` (the reference
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
        let mut flat_mask = vec![0.0f32; values.len()];
        for &i in &order[..keep] {
            flat_mask[i] = 1.0;
        }
        let mut offset = 0;
        self.mask = Some(fisher.map(|e| {
            let n = e.dims.iter().product::<usize>();
            let data = TensorData::new(flat_mask[offset..offset + n].to_vec(), [n]);
            offset += n;
            Tensor::<1>::from_data(data, (&e.value.device(), e.value.dtype()))
        }));
    }
}

impl Preconditioner for Ssam {
    fn name(&self) -> String {
        "ssam".into()
    }

    fn normalization(&self) -> Normalization {
        Normalization::Gradient
    }

    diagonal::diagonal_preconditioner!();

    fn after_step(
        &mut self,
        oracle: &mut dyn Oracle,
        ctx: &StepContext,
    ) -> Result<(), SharpnessError> {
        if ctx.step.is_multiple_of(self.refresh_every) {
            let fisher = oracle.empirical_fisher(self.num_samples)?;
            self.set_mask_from_fisher(&fisher);
        }
        Ok(())
    }

    fn save_state(&self) -> StateRecord {
        let mut state = StateRecord::default();
        if let Some(mask) = &self.mask {
            state.put_set("ssam.mask", mask);
        }
        state
    }

    fn load_state(&mut self, state: &StateRecord, device: &Device) -> Result<(), SharpnessError> {
        self.mask = match state.sets.contains_key("ssam.mask") {
            true => Some(state.get_set("ssam.mask", device)?),
            false => None,
        };
        Ok(())
    }
}

impl DiagonalRule for Ssam {
    /// M ⊙ g; 0 before the first mask (so the first step is plain SGD).
    fn rule_for<X: Coordinate>(&self, _: &ParamTensor) -> impl Fn(X, X, Option<X>) -> X + Sync {
        |g, _w, mask| match mask {
            Some(m) => g * m,
            None => g.mul_scalar(0.0),
        }
    }

    fn auxiliary(&self) -> Option<&ParamSet> {
        self.mask.as_ref()
    }
}
