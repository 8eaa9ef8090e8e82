//! The two-pass family as **preconditioned perturbations** (preSAM; `docs/math.md` §2).
//!
//! Every two-pass method perturbs the weights by ε = ρ · d / ‖d‖_*, where the direction d is a
//! preconditioner applied to the batch gradient g, and the normalisation says which ball ε lies
//! on ([`Normalization`]):
//!
//! | method | form | d | ε |
//! |---|---|---|---|
//! | [`Sam`] | constraint = objective, C = P = I | g | ρ g/‖g‖ |
//! | [`Asam`] | constraint, C = T_w² | T_w² g | ρ T_w²g/‖T_w g‖ |
//! | [`FisherSam`] | constraint, C = (I + η diag g²)⁻¹ | g/(1+ηg²) | ρ d/√(gᵀd) |
//! | [`MongeSam`] | constraint, C = G⁻¹ = I − ggᵀ/(1+‖g‖²), computed as eq. 9 | g/√(1+‖g‖²) | ρ d/‖g‖ = ρ g/(‖g‖√(1+‖g‖²)) |
//! | [`InfoSam`] | objective, P = diag(1/σ̂²) | g/σ̂² | ρ d/‖d‖ |
//! | [`Ssam`] | gradient-normalised mask, P = diag(M) | M ⊙ g | ρ d/‖g‖ |
//!
//! A geometry is one small trait, [`Preconditioner`]: its name, its normalisation and its
//! direction d(g, w), written with Burn tensor operations on the parameter sets (so it runs on
//! every backend, and a backend that fuses operations fuses it), plus the [`Lifecycle`] of its
//! state. [`TwoPass`] turns any of them into a [`GradientEstimator`]: pass 1 at w (done by the
//! optimizer), ε = [`perturbation`], pass 2 at w + ε on the same batch, G = ∇L(w + ε).
//!
//! Every built-in geometry is diagonal (up to Monge's global factor): its direction maps each
//! tensor of g on its own, with [`ParamSet::map`] or [`ParamSet::zip_map`] (with the weights or
//! the state, tensor by tensor).

mod asam;
mod fisher;
mod infosam;
mod monge;
mod sam;
mod ssam;

pub use asam::{Asam, AsamScope};
pub use fisher::FisherSam;
pub use infosam::InfoSam;
pub use monge::MongeSam;
pub use sam::Sam;
pub use ssam::Ssam;

use burn::optim::{StateSink, StateSource};
use burn::tensor::Device;

use crate::error::SharpnessError;
use crate::estimator::{Evaluation, GradientEstimator, Lifecycle, Oracle, StepContext};
use crate::params::ParamSet;

/// The stabiliser ξ added to every normalising denominator (davda54/sam's 1e-12), so a zero
/// gradient gives the finite perturbation ε = 0.
pub const XI: f64 = 1e-12;

/// Which ball the perturbation lies on (preSAM's two places for a preconditioner, plus SSAM's).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Normalization {
    /// Constraint preconditioning (CP): max gᵀε s.t. εᵀC⁻¹ε ≤ ρ² ⇒ ε = ρ C g / √(gᵀ C g).
    /// C must be positive semi-definite (where gᵀCg ≤ 0 the perturbation is zero).
    Constraint,
    /// Objective preconditioning (OP): max (P g)ᵀε s.t. ‖ε‖ ≤ ρ ⇒ ε = ρ P g / ‖P g‖.
    Objective,
    /// ε = ρ P g / ‖g‖, as SSAM's reference code normalises its masked gradient (so ‖ε‖ ≤ ρ).
    Gradient,
}

/// A geometry of the two-pass family: the direction d (= C g or P g) of its perturbation and
/// the ball it is normalised on. A new geometry implements this trait and [`Lifecycle`] (empty
/// when it keeps no state); see the crate docs for an example.
pub trait Preconditioner: Lifecycle + Send + Sync {
    /// A short name, e.g. `"msam"`.
    fn name(&self) -> String;

    /// How d is normalised to radius ρ.
    fn normalization(&self) -> Normalization;

    /// The direction d for gradient `g` at weights `w` (same layout), by tensor operations. May
    /// read state; state that depends on this step's gradient changes only in
    /// [`Preconditioner::commit`].
    fn direction(&self, g: &ParamSet, w: &ParamSet) -> ParamSet;

    /// Commits state for this step's gradient `g` (e.g. infoSAM's moving average). [`TwoPass`]
    /// calls it once per step, after the direction: if the second pass then fails, the optimizer
    /// rolls the whole estimator back (it keeps a copy from before the step).
    fn commit(&mut self, _g: &ParamSet) {}
}

/// A perturbation ε = s·d: a direction and the scalar that normalises it.
///
/// Kept in this form so that w + ε is computed from d directly ([`Perturbation::apply_to`]).
#[derive(Clone, Debug)]
pub struct Perturbation {
    /// d, the preconditioned gradient.
    pub direction: ParamSet,
    /// s, so that ε = s·d.
    pub scale: f64,
    /// Whether ε = 0 exactly (a zero gradient, or a direction that is zero, as SSAM's before its
    /// first mask): the second pass is then skipped.
    pub is_zero: bool,
}

impl Perturbation {
    /// ε = s·d.
    pub fn epsilon(&self) -> ParamSet {
        self.direction.scale(self.scale)
    }

    /// ‖ε‖² = s²‖d‖².
    pub fn squared_norm(&self) -> f64 {
        self.scale * self.scale * self.direction.squared_norm()
    }

    /// w + ε = w + s·d. Consumes the perturbation, so that a direction no one else holds is
    /// scaled in place (Flex then writes w + s·d into that same memory).
    pub fn apply_to(self, w: &ParamSet) -> ParamSet {
        let scale = self.scale;
        self.direction
            .into_zip_map(w, |d, w| w + d.mul_scalar(scale))
    }
}

/// The perturbation ε = ρ d/‖d‖_* of a geometry for gradient `g` at weights `w`: the one place
/// where a direction is normalised (see [`Normalization`]). ε = 0 when g = 0.
///
/// One reduction over memory at most: gᵀd for the constraint form (zero exactly when d is, C
/// being positive semi-definite), ‖d‖² for the other two (‖g‖ is known from the step's NaN
/// check).
pub fn perturbation<P: Preconditioner + ?Sized>(
    preconditioner: &P,
    rho: f64,
    g: &ParamSet,
    w: &ParamSet,
) -> Perturbation {
    let d = preconditioner.direction(g, w);
    let (norm, is_zero) = match preconditioner.normalization() {
        Normalization::Constraint => {
            let gd = g.dot(&d).max(0.0);
            (gd.sqrt(), gd == 0.0)
        }
        Normalization::Objective => {
            let dd = d.squared_norm();
            (dd.sqrt(), dd == 0.0)
        }
        Normalization::Gradient => (g.norm(), d.squared_norm() == 0.0),
    };
    Perturbation {
        direction: d,
        scale: rho / (norm + XI),
        is_zero,
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
}

impl<P: Preconditioner> Lifecycle for TwoPass<P> {
    fn before_estimate(
        &mut self,
        oracle: &mut dyn Oracle,
        ctx: &StepContext,
    ) -> Result<(), SharpnessError> {
        self.preconditioner.before_estimate(oracle, ctx)
    }

    fn save_state(&self, prefix: &str, out: &mut StateSink) {
        self.preconditioner.save_state(prefix, out)
    }

    fn load_state(
        &mut self,
        prefix: &str,
        source: &mut StateSource,
        device: &Device,
    ) -> Result<(), SharpnessError> {
        self.preconditioner.load_state(prefix, source, device)
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
        let epsilon = perturbation(&self.preconditioner, ctx.rho, g, oracle.weights());
        self.preconditioner.commit(g);
        if epsilon.is_zero {
            return Ok(g.clone());
        }
        Ok(oracle
            .evaluate_at(&epsilon.apply_to(oracle.weights()))?
            .grad)
    }

    fn clone_box(&self) -> Box<dyn GradientEstimator> {
        Box::new(self.clone())
    }
}
