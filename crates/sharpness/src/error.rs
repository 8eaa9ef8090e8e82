//! Errors of the library.

use thiserror::Error;

/// Everything that can go wrong in a sharpness-aware step or at construction.
#[derive(Debug, Error, Clone, PartialEq)]
pub enum SharpnessError {
    /// A hyperparameter is outside its valid range (raised at construction).
    #[error("invalid hyperparameter `{name}` = {value}: {expected}")]
    InvalidHyperparameter {
        /// The name of the hyperparameter.
        name: &'static str,
        /// The rejected value, formatted.
        value: String,
        /// What a valid value is.
        expected: &'static str,
    },
    /// The loss or a gradient was NaN or infinite. The model and all optimizer state are left
    /// as they were before the step.
    #[error(
        "step {step}: non-finite {what} in pass {pass} (model and optimizer state left unchanged)"
    )]
    NonFinite {
        /// The optimizer step (0-based) in which it happened.
        step: u64,
        /// Which forward/backward pass (0 = at the unperturbed weights).
        pass: usize,
        /// `"loss"` or `"gradient"`.
        what: &'static str,
    },
    /// The objective produced no gradient for any parameter.
    #[error("step {step}: the loss has no gradient with respect to any parameter")]
    NoGradient {
        /// The optimizer step.
        step: u64,
    },
    /// A method needs something the objective does not provide (e.g. SSAM's per-example losses).
    #[error("{0}")]
    Unsupported(String),
    /// Saved state could not be decoded or does not fit this optimizer.
    #[error("cannot load optimizer state: {0}")]
    State(String),
}

/// Checks `value` with `valid`; otherwise an [`SharpnessError::InvalidHyperparameter`].
pub(crate) fn check(
    name: &'static str,
    value: f64,
    valid: bool,
    expected: &'static str,
) -> Result<(), SharpnessError> {
    if valid {
        Ok(())
    } else {
        Err(SharpnessError::InvalidHyperparameter {
            name,
            value: format!("{value}"),
            expected,
        })
    }
}

/// ρ ≥ 0 and finite.
pub(crate) fn check_non_negative(name: &'static str, value: f64) -> Result<(), SharpnessError> {
    check(
        name,
        value,
        value.is_finite() && value >= 0.0,
        "a finite number ≥ 0",
    )
}

/// A list (of micro-batches, chunks) that must not be empty.
pub(crate) fn at_least_one(name: &'static str, len: usize) -> Result<(), SharpnessError> {
    check(name, len as f64, len > 0, "at least one")
}
