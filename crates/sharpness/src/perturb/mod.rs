//! The two-pass family as **preconditioned perturbations** (preSAM, spec §8).
//!
//! Every two-pass method perturbs the weights by ε = ρ · d / ‖d‖_*, where the direction d is a
//! preconditioner applied to the batch gradient g, and the normalisation says which ball ε lies
//! on ([`Normalization`]):
//!
//! | method | form | d | ε |
//! |---|---|---|---|
//! | [`Sam`] | constraint, C = I | g | ρ g/‖g‖ |
//! | [`Asam`] | constraint, C = T_w² | T_w² g | ρ T_w²g/‖T_w g‖ |
//! | [`FisherSam`] | constraint, C = (I + η diag g²)⁻¹ | g/(1+ηg²) | ρ d/√(gᵀd) |
//! | [`MongeSam`] | constraint, C = G⁻¹ = I − ggᵀ/(1+‖g‖²) | g/(1+‖g‖²) | ρ g/(‖g‖√(1+‖g‖²)) |
//! | [`InfoSam`] | objective, P = diag(1/σ̂²) | g/σ̂² | ρ d/‖d‖ |
//! | [`Ssam`] | gradient-normalised mask, P = diag(M) | M ⊙ g | ρ d/‖g‖ |
//!
//! A new geometry is one small [`Preconditioner`]; [`TwoPass`] turns any of them into a
//! [`GradientEstimator`]: pass 1 at w (done by the optimizer), ε, pass 2
//! at w + ε on the same batch, G = ∇L(w + ε). Every method above is diagonal (up to Monge's
//! global factor), so each writes its formula once as a [`DiagonalRule`], generic over
//! [`Coordinate`]: the library evaluates it as tensor operations on any backend, and the tests
//! cross-check that against a fused per-coordinate loop over CPU memory (see [`diagonal`]). A preconditioner that is not diagonal implements
//! [`Preconditioner::direction`] with tensor operations and keeps the default
//! [`Preconditioner::perturbation`].

mod asam;
pub mod diagonal;
mod fisher;
mod infosam;
mod monge;
mod sam;
mod ssam;

pub use asam::{Asam, AsamScope};
pub use diagonal::{Coordinate, DiagonalRule};
pub use fisher::FisherSam;
pub use infosam::InfoSam;
pub use monge::MongeSam;
pub use sam::Sam;
pub use ssam::Ssam;

use burn::tensor::Device;

use crate::error::SharpnessError;
use crate::estimator::{Evaluation, GradientEstimator, Oracle, StateRecord, StepContext};
use crate::params::ParamSet;

/// The stabiliser ξ added to every normalising denominator (davda54/sam's 1e-12, spec §0), so a
/// zero gradient gives the finite perturbation ε = 0.
pub const XI: f64 = 1e-12;

/// Which ball the perturbation lies on (preSAM's two places for a preconditioner, plus SSAM's).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Normalization {
    /// Constraint preconditioning (CP): max gᵀε s.t. εᵀC⁻¹ε ≤ ρ² ⇒ ε = ρ C g / √(gᵀ C g).
    Constraint,
    /// Objective preconditioning (OP): max (P g)ᵀε s.t. ‖ε‖ ≤ ρ ⇒ ε = ρ P g / ‖P g‖.
    Objective,
    /// ε = ρ P g / ‖g‖, as SSAM's reference code normalises its masked gradient (so ‖ε‖ ≤ ρ).
    Gradient,
}

/// A preconditioner: the direction d (= C g or P g) of a two-pass perturbation.
pub trait Preconditioner: Send + Sync {
    /// A short name, e.g. `"msam"`.
    fn name(&self) -> String;

    /// How d is normalised to radius ρ.
    fn normalization(&self) -> Normalization;

    /// The direction d for gradient `g` at weights `w` (same layout). May read state; state that
    /// depends on this step's gradient must only be committed in [`Preconditioner::commit`].
    fn direction(&self, g: &ParamSet, w: &ParamSet) -> ParamSet;

    /// The perturbation ε = ρ d/‖d‖_* ([`normalize`] of [`Preconditioner::direction`]).
    fn perturbation(&self, rho: f64, g: &ParamSet, w: &ParamSet) -> Perturbation {
        normalize(self.normalization(), rho, g, &self.direction(g, w))
    }

    /// w + ε, the weights a step's second pass evaluates, with ‖ε‖². The default applies
    /// [`Preconditioner::perturbation`] to w ([`Perturbation::apply_to`]).
    fn perturbed_weights(&self, rho: f64, g: &ParamSet, w: &ParamSet) -> Perturbed {
        let p = self.perturbation(rho, g, w);
        Perturbed {
            weights: p.apply_to(w),
            squared_norm: p.squared_norm,
        }
    }

    /// Commits state for this step's gradient `g` (e.g. infoSAM's moving average). [`TwoPass`]
    /// calls it (through [`Preconditioner::perturb_and_commit`] when ρ > 0) before the second
    /// pass: if that pass fails, the optimizer wrapper rolls the whole estimator back (it keeps a
    /// copy from before the step), so a failed step leaves no trace.
    fn commit(&mut self, _g: &ParamSet) {}

    /// w + ε with ‖ε‖², and the state committed for g: what [`TwoPass`] calls once per step with
    /// ρ > 0. The default is [`Preconditioner::perturbed_weights`], then
    /// [`Preconditioner::commit`]; a rule may fuse the two, as infoSAM writes its moving average
    /// in the pass that already reads g and the average for the norm. Either way the state is the
    /// same, bit for bit, as `commit` alone would leave it.
    fn perturb_and_commit(&mut self, rho: f64, g: &ParamSet, w: &ParamSet) -> Perturbed {
        let perturbed = self.perturbed_weights(rho, g, w);
        self.commit(g);
        perturbed
    }

    /// Called after every successful step, e.g. to refresh SSAM's mask.
    fn after_step(
        &mut self,
        _oracle: &mut dyn Oracle,
        _ctx: &StepContext,
    ) -> Result<(), SharpnessError> {
        Ok(())
    }

    /// The preconditioner's state.
    fn save_state(&self) -> StateRecord {
        StateRecord::default()
    }

    /// Restores a state produced by [`Preconditioner::save_state`].
    fn load_state(&mut self, _state: &StateRecord, _device: &Device) -> Result<(), SharpnessError> {
        Ok(())
    }
}

/// A perturbation ε = s·d: a direction, the scalar that normalises it, and ‖ε‖².
///
/// Kept in this form so that no pass over memory is spent on scaling: the second pass evaluates
/// w + s·d, which [`Perturbation::apply_to`] computes in one pass on the CPU backend.
#[derive(Clone, Debug)]
pub struct Perturbation {
    /// d: the preconditioned gradient, up to a positive factor (Monge's λ goes into `scale`).
    pub direction: ParamSet,
    /// s, so that ε = s·d.
    pub scale: f64,
    /// ‖ε‖² = s²‖d‖² (exactly 0 when ε = 0, e.g. for a zero gradient).
    pub squared_norm: f64,
}

impl Perturbation {
    /// ε = s·d.
    pub fn epsilon(&self) -> ParamSet {
        self.direction.scale(self.scale)
    }

    /// w + ε = w + s·d (the same values as `w.add(&self.epsilon())`, in one pass).
    pub fn apply_to(&self, w: &ParamSet) -> ParamSet {
        w.add_scaled(self.scale, &self.direction)
    }
}

/// The perturbed weights w + ε of a second pass, and ‖ε‖².
#[derive(Clone, Debug)]
pub struct Perturbed {
    /// w + ε, with the layout of w.
    pub weights: ParamSet,
    /// ‖ε‖² (exactly 0 when ε = 0: the second pass is then skipped).
    pub squared_norm: f64,
}

/// ε = ρ · d / norm for a preconditioner's direction d (see [`Normalization`]); ε = 0 when g = 0.
pub fn normalize(
    normalization: Normalization,
    rho: f64,
    g: &ParamSet,
    d: &ParamSet,
) -> Perturbation {
    let dd = d.squared_norm();
    let norm = match normalization {
        Normalization::Constraint => g.dot(d).max(0.0).sqrt(),
        Normalization::Objective => dd.sqrt(),
        Normalization::Gradient => g.norm(),
    };
    let scale = rho / (norm + XI);
    Perturbation {
        direction: d.clone(),
        scale,
        squared_norm: scale * scale * dd,
    }
}

/// Any [`Preconditioner`] as a two-pass [`GradientEstimator`]: G = ∇L(w + ε(g, w)).
///
/// With ρ = 0, or when ε is exactly zero (a zero gradient), the second pass would reproduce g, so
/// it is skipped and G = g: the step is then bit-identical to the base optimizer's.
#[derive(Clone, Debug)]
pub struct TwoPass<P> {
    preconditioner: P,
}

impl<P: Preconditioner> TwoPass<P> {
    /// Wraps a preconditioner.
    pub fn new(preconditioner: P) -> Self {
        Self { preconditioner }
    }

    /// The wrapped preconditioner.
    pub fn preconditioner(&self) -> &P {
        &self.preconditioner
    }

    /// The perturbation this estimator would apply for gradient `g` at weights `w`.
    pub fn perturbation(&self, rho: f64, g: &ParamSet, w: &ParamSet) -> ParamSet {
        self.preconditioner.perturbation(rho, g, w).epsilon()
    }
}

impl<P: Preconditioner + Clone + 'static> GradientEstimator for TwoPass<P> {
    fn name(&self) -> String {
        self.preconditioner.name()
    }

    fn estimate(
        &mut self,
        at_weights: &Evaluation,
        oracle: &mut dyn Oracle,
        ctx: &StepContext,
    ) -> Result<ParamSet, SharpnessError> {
        let g = &at_weights.grad;
        if ctx.rho == 0.0 {
            self.preconditioner.commit(g);
            return Ok(g.clone());
        }
        // The state is committed with the perturbation, while g (and the state the perturbation
        // reads) are in cache: if the second pass fails, the optimizer rolls the whole estimator
        // back.
        let perturbed = self
            .preconditioner
            .perturb_and_commit(ctx.rho, g, oracle.weights());
        if perturbed.squared_norm == 0.0 {
            return Ok(g.clone());
        }
        Ok(oracle.evaluate_at(&perturbed.weights)?.grad)
    }

    fn after_step(
        &mut self,
        oracle: &mut dyn Oracle,
        ctx: &StepContext,
    ) -> Result<(), SharpnessError> {
        self.preconditioner.after_step(oracle, ctx)
    }

    fn save_state(&self) -> StateRecord {
        self.preconditioner.save_state()
    }

    fn load_state(&mut self, state: &StateRecord, device: &Device) -> Result<(), SharpnessError> {
        self.preconditioner.load_state(state, device)
    }

    fn clone_box(&self) -> Box<dyn GradientEstimator> {
        Box::new(self.clone())
    }
}
