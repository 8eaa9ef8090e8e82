//! The organising idea: every sharpness-aware method is a **gradient estimator**.
//!
//! Given the batch loss L and its gradient g₀ = ∇L(w) at the current weights, and an [`Oracle`]
//! that evaluates (L, ∇L) at other weights on the *same* batch, an estimator returns the gradient
//! G that the base optimizer applies at w:
//!
//! - the two-pass family (SAM, ASAM, Fisher, Monge, SSAM, infoSAM; see [`crate::perturb`]) asks
//!   the oracle once, at w + ε(g₀, w), and returns G = ∇L(w + ε);
//! - the universal (φ,ψ,μ) class ([`crate::universal`]) asks it m times at w + ρuᵢ and combines
//!   the answers;
//! - plain training never asks ([`Plain`]).
//!
//! The oracle is where the invariants live, once for every method: each evaluation runs on a
//! fresh copy of the model (so BatchNorm running statistics come from pass 0 only, and the
//! caller's weights are never modified: "restoring" them is exact by construction), and every
//! loss and gradient is checked for NaN/∞.

use burn::optim::{StateSink, StateSource};
use burn::tensor::Device;

use crate::error::SharpnessError;
use crate::params::ParamSet;

/// A loss and its gradient at one point.
#[derive(Clone, Debug)]
pub struct Evaluation {
    /// The loss.
    pub loss: f64,
    /// Its gradient with respect to the parameters that have one.
    pub grad: ParamSet,
}

/// What an estimator knows about the current step.
#[derive(Clone, Copy, Debug, PartialEq)]
pub struct StepContext {
    /// The step index, starting at 0.
    pub step: u64,
    /// The perturbation radius for this step (from the ρ schedule).
    pub rho: f64,
    /// The learning rate of this step.
    pub lr: f64,
}

/// Evaluates the loss and gradient of the current batch at other weights.
///
/// Implemented by the optimizer wrapper; estimators only consume it. Each call is one
/// forward/backward pass on a fresh copy of the model; nothing it does changes the model that the
/// base optimizer will step.
pub trait Oracle {
    /// The unperturbed weights w of the parameters that have a gradient (same layout as g₀).
    fn weights(&self) -> &ParamSet;

    /// (L, ∇L) at the given weights (the layout of [`Oracle::weights`]) on the same batch. A
    /// parameter that gets no gradient there has a zero gradient in the answer.
    fn evaluate_at(&mut self, weights: &ParamSet) -> Result<Evaluation, SharpnessError>;

    /// (ℓ, ∇ℓ) at w for one training example, the `draw`-th that the objective picks
    /// ([`crate::Objective::example_loss`]), in training mode on a copy of the model (BatchNorm
    /// running statistics are not touched). A method that needs per-example information (SSAM's
    /// Fisher mask) builds it from these.
    fn evaluate_example(&mut self, draw: usize) -> Result<Evaluation, SharpnessError>;
}

/// The lifecycle of everything that keeps state across steps, declared once for estimators and
/// the geometries below [`crate::perturb::TwoPass`]: a hook at the start of each step, and the
/// state a resumed run needs. Every method has a default, so a stateless type implements it with
/// an empty `impl Lifecycle for MyType {}`.
///
/// State is written into Burn's record containers ([`StateSink`] / [`StateSource`], the
/// burnpack records of burn-optim's optimizers) as named tensors and scalars under `prefix`;
/// [`ParamSet`] implements Burn's `RecordState`, so a set is one call.
pub trait Lifecycle {
    /// Called in every step after pass 0 and before the estimate, with an oracle at the step's
    /// weights w: for schedules such as SSAM's mask refresh. (Here rather than after the base
    /// optimizer's step, whose weights are the next step's w, so that a caller that applies the
    /// estimate itself runs the same schedule.) Whatever it changes is rolled back if the step
    /// fails.
    fn before_estimate(
        &mut self,
        _oracle: &mut dyn Oracle,
        _ctx: &StepContext,
    ) -> Result<(), SharpnessError> {
        Ok(())
    }

    /// Writes the state (moving averages, masks, random-number generator position) under
    /// `prefix`.
    fn save_state(&self, _prefix: &str, _out: &mut StateSink) {}

    /// Restores a state written by [`Lifecycle::save_state`]; tensors go on `device`.
    fn load_state(
        &mut self,
        _prefix: &str,
        _source: &mut StateSource,
        _device: &Device,
    ) -> Result<(), SharpnessError> {
        Ok(())
    }
}

/// A sharpness-aware gradient estimator (see the module docs).
///
/// Contract: `estimate` may only call the oracle with weights of the oracle's layout, and
/// `clone_box` must produce an independent copy (state included): the optimizer wrapper keeps one
/// to roll the estimator back when a step fails.
pub trait GradientEstimator: Lifecycle + Send + Sync {
    /// A short name, e.g. `"sam"` or `"frob-sam"`.
    fn name(&self) -> String;

    /// The gradient the base optimizer should apply at w, given pass 0 (`at_weights`).
    fn estimate(
        &mut self,
        at_weights: &Evaluation,
        oracle: &mut dyn Oracle,
        ctx: &StepContext,
    ) -> Result<ParamSet, SharpnessError>;

    /// An independent copy.
    fn clone_box(&self) -> Box<dyn GradientEstimator>;
}

impl Clone for Box<dyn GradientEstimator> {
    fn clone(&self) -> Self {
        self.clone_box()
    }
}

/// Plain training: G = g₀, the oracle is never called (ρ = 0 of every method reduces to this).
#[derive(Clone, Debug, Default)]
pub struct Plain;

impl Lifecycle for Plain {}

impl GradientEstimator for Plain {
    fn name(&self) -> String {
        "sgd".into()
    }

    fn estimate(
        &mut self,
        at_weights: &Evaluation,
        _: &mut dyn Oracle,
        _: &StepContext,
    ) -> Result<ParamSet, SharpnessError> {
        Ok(at_weights.grad.clone())
    }

    fn clone_box(&self) -> Box<dyn GradientEstimator> {
        Box::new(self.clone())
    }
}

/// A missing or malformed entry of a saved state.
pub(crate) fn missing(prefix: &str) -> SharpnessError {
    SharpnessError::State(format!("missing or malformed entry `{prefix}`"))
}
