//! The organising idea: every sharpness-aware method is a **gradient estimator**.
//!
//! Given the batch loss L and its gradient g₀ = ∇L(w) at the current weights, and an [`Oracle`]
//! that evaluates (L, ∇L) at w + δ on the *same* batch, an estimator returns the gradient G that the
//! base optimizer applies at w:
//!
//! - the two-pass family (SAM, ASAM, Fisher, Monge, SSAM, infoSAM; see [`crate::perturb`]) asks
//!   the oracle once, at δ = ε(g₀, w), and returns G = ∇L(w + ε);
//! - the universal (φ,ψ,μ) class ([`crate::universal`]) asks it m times at δᵢ = ρuᵢ and combines
//!   the answers;
//! - plain training never asks ([`Plain`]).
//!
//! The oracle is where the invariants live, once for every method: each evaluation runs on a
//! fresh copy of the model (so BatchNorm running statistics come from pass 0 only, and the
//! caller's weights are never modified: "restoring" them is exact by construction), and every
//! loss and gradient is checked for NaN/∞.

use std::collections::BTreeMap;

use burn::module::ParamId;
use burn::tensor::{DType, Device, Tensor, TensorData};

use crate::error::SharpnessError;
use crate::params::{ParamSet, ParamTensor};

/// A loss and its gradient at one point.
#[derive(Clone, Debug)]
pub struct Evaluation {
    /// The batch loss.
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

/// Evaluates the loss and gradient of the current batch at perturbed weights.
///
/// Implemented by the optimizer wrapper; estimators only consume it. Each call is one
/// forward/backward pass on a fresh copy of the model at w + δ; nothing it does changes the model
/// that the base optimizer will step.
pub trait Oracle {
    /// The unperturbed weights w of the parameters that have a gradient (same layout as g₀).
    fn weights(&self) -> &ParamSet;

    /// (L, ∇L) at the given weights (the layout of [`Oracle::weights`]) on the same batch. A
    /// parameter that gets no gradient there has a zero gradient in the answer.
    fn evaluate_at(&mut self, weights: &ParamSet) -> Result<Evaluation, SharpnessError>;

    /// (L, ∇L) at w + δ on the same batch (see [`Oracle::evaluate_at`]).
    fn evaluate(&mut self, delta: &ParamSet) -> Result<Evaluation, SharpnessError> {
        let perturbed = self.weights().add(delta);
        self.evaluate_at(&perturbed)
    }

    /// The diagonal empirical Fisher Σᵢ (∂ℓᵢ/∂w)² over `num_samples` single training examples
    /// drawn by the objective (used by SSAM's mask). Evaluated at w in training mode on a copy of
    /// the model, so BatchNorm running statistics are not touched.
    fn empirical_fisher(&mut self, num_samples: usize) -> Result<ParamSet, SharpnessError>;
}

/// A sharpness-aware gradient estimator (see the module docs).
///
/// Contract: `estimate` may only call the oracle with perturbations of the weights' layout, and
/// `clone_box` must produce an independent copy (state included): the optimizer wrapper keeps one
/// to roll the estimator back when a step fails.
pub trait GradientEstimator: Send + Sync {
    /// A short name, e.g. `"sam"` or `"frob-sam"`.
    fn name(&self) -> String;

    /// The gradient the base optimizer should apply at w, given pass 0 (`at_weights`).
    fn estimate(
        &mut self,
        at_weights: &Evaluation,
        oracle: &mut dyn Oracle,
        ctx: &StepContext,
    ) -> Result<ParamSet, SharpnessError>;

    /// Called after a successful base step (for schedules such as SSAM's mask refresh).
    fn after_step(
        &mut self,
        _oracle: &mut dyn Oracle,
        _ctx: &StepContext,
    ) -> Result<(), SharpnessError> {
        Ok(())
    }

    /// The estimator's state (moving averages, masks, random-number generator position).
    fn save_state(&self) -> StateRecord {
        StateRecord::default()
    }

    /// Restores a state produced by [`GradientEstimator::save_state`].
    fn load_state(&mut self, _state: &StateRecord, _device: &Device) -> Result<(), SharpnessError> {
        Ok(())
    }

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

/// A tensor stored in a [`StateRecord`] (values widened to `f64`, which is exact for `f32`).
#[derive(Clone, Debug, PartialEq)]
pub struct StoredTensor {
    /// The parameter id the tensor belongs to.
    pub param_id: u64,
    /// The parameter's module path.
    pub path: String,
    /// Shape.
    pub dims: Vec<usize>,
    /// `true` when the tensor was `f64`.
    pub is_f64: bool,
    /// Values, row-major.
    pub values: Vec<f64>,
}

/// Serialisable optimizer/estimator state: named scalars, integers and parameter sets.
///
/// [`StateRecord::to_bytes`] and [`StateRecord::from_bytes`] give a compact, exact binary form, so
/// a resumed run continues bit-identically.
#[derive(Clone, Debug, Default, PartialEq)]
pub struct StateRecord {
    /// Named floating-point scalars.
    pub scalars: BTreeMap<String, f64>,
    /// Named integers.
    pub integers: BTreeMap<String, u64>,
    /// Named byte strings (e.g. a nested record).
    pub blobs: BTreeMap<String, Vec<u8>>,
    /// Named parameter sets.
    pub sets: BTreeMap<String, Vec<StoredTensor>>,
}

const STATE_MAGIC: &[u8; 8] = b"SHRPST01";

impl StateRecord {
    /// Stores a parameter set under `name`.
    pub fn put_set(&mut self, name: &str, set: &ParamSet) {
        let stored = set
            .iter()
            .map(|e| {
                let data = e.value.to_data();
                StoredTensor {
                    param_id: e.id.val(),
                    path: e.path.clone(),
                    dims: e.dims.clone(),
                    is_f64: data.dtype() == DType::F64,
                    values: data
                        .convert::<f64>()
                        .try_into_vec::<f64>()
                        .expect("float tensor"),
                }
            })
            .collect();
        self.sets.insert(name.to_string(), stored);
    }

    /// Reads back a parameter set stored under `name`, on `device`.
    pub fn get_set(&self, name: &str, device: &Device) -> Result<ParamSet, SharpnessError> {
        let stored = self
            .sets
            .get(name)
            .ok_or_else(|| SharpnessError::State(format!("missing tensor set `{name}`")))?;
        let entries = stored
            .iter()
            .map(|t| {
                let n = t.values.len();
                let value = if t.is_f64 {
                    Tensor::<1>::from_data(
                        TensorData::new(t.values.clone(), [n]),
                        (device, DType::F64),
                    )
                } else {
                    let values: Vec<f32> = t.values.iter().map(|&v| v as f32).collect();
                    Tensor::<1>::from_data(TensorData::new(values, [n]), (device, DType::F32))
                };
                ParamTensor {
                    id: ParamId::from(t.param_id),
                    path: t.path.clone(),
                    dims: t.dims.clone(),
                    // State is never differentiated (and `device` may be an autodiff device).
                    value: value.without_autodiff(),
                }
            })
            .collect();
        Ok(ParamSet::from_entries(entries))
    }

    /// Reads an integer.
    pub fn integer(&self, name: &str) -> Result<u64, SharpnessError> {
        self.integers
            .get(name)
            .copied()
            .ok_or_else(|| SharpnessError::State(format!("missing integer `{name}`")))
    }

    /// Reads a scalar.
    pub fn scalar(&self, name: &str) -> Result<f64, SharpnessError> {
        self.scalars
            .get(name)
            .copied()
            .ok_or_else(|| SharpnessError::State(format!("missing scalar `{name}`")))
    }

    /// Encodes the record (little-endian, self-describing, exact).
    pub fn to_bytes(&self) -> Vec<u8> {
        let mut out = Vec::new();
        out.extend_from_slice(STATE_MAGIC);
        put_u64(&mut out, self.scalars.len() as u64);
        for (k, v) in &self.scalars {
            put_str(&mut out, k);
            out.extend_from_slice(&v.to_le_bytes());
        }
        put_u64(&mut out, self.integers.len() as u64);
        for (k, v) in &self.integers {
            put_str(&mut out, k);
            put_u64(&mut out, *v);
        }
        put_u64(&mut out, self.blobs.len() as u64);
        for (k, v) in &self.blobs {
            put_str(&mut out, k);
            put_u64(&mut out, v.len() as u64);
            out.extend_from_slice(v);
        }
        put_u64(&mut out, self.sets.len() as u64);
        for (k, tensors) in &self.sets {
            put_str(&mut out, k);
            put_u64(&mut out, tensors.len() as u64);
            for t in tensors {
                put_u64(&mut out, t.param_id);
                put_str(&mut out, &t.path);
                put_u64(&mut out, t.dims.len() as u64);
                for &d in &t.dims {
                    put_u64(&mut out, d as u64);
                }
                out.push(t.is_f64 as u8);
                put_u64(&mut out, t.values.len() as u64);
                for v in &t.values {
                    out.extend_from_slice(&v.to_le_bytes());
                }
            }
        }
        out
    }

    /// Decodes bytes written by [`StateRecord::to_bytes`]; a truncated or corrupt input is an
    /// error naming the byte offset.
    pub fn from_bytes(bytes: &[u8]) -> Result<Self, SharpnessError> {
        let mut r = Reader { bytes, pos: 0 };
        if r.take(8)? != STATE_MAGIC {
            return Err(SharpnessError::State(
                "not a sharpness state record (bad magic at offset 0)".into(),
            ));
        }
        let mut record = StateRecord::default();
        for _ in 0..r.count()? {
            let k = r.string()?;
            record
                .scalars
                .insert(k, f64::from_le_bytes(r.take(8)?.try_into().unwrap()));
        }
        for _ in 0..r.count()? {
            let k = r.string()?;
            record.integers.insert(k, r.u64()?);
        }
        for _ in 0..r.count()? {
            let k = r.string()?;
            let n = r.count()?;
            record.blobs.insert(k, r.take(n)?.to_vec());
        }
        for _ in 0..r.count()? {
            let k = r.string()?;
            let mut tensors = Vec::new();
            for _ in 0..r.count()? {
                let param_id = r.u64()?;
                let path = r.string()?;
                let rank = r.count()?;
                let dims = (0..rank)
                    .map(|_| r.count())
                    .collect::<Result<Vec<_>, _>>()?;
                let is_f64 = r.take(1)?[0] == 1;
                let n = r.count()?;
                if n != dims.iter().product::<usize>() {
                    return Err(r.error("tensor length does not match its shape"));
                }
                let raw = r.take(
                    n.checked_mul(8)
                        .ok_or_else(|| r.error("tensor too large"))?,
                )?;
                let values = raw
                    .chunks_exact(8)
                    .map(|c| f64::from_le_bytes(c.try_into().unwrap()))
                    .collect();
                tensors.push(StoredTensor {
                    param_id,
                    path,
                    dims,
                    is_f64,
                    values,
                });
            }
            record.sets.insert(k, tensors);
        }
        if r.pos != bytes.len() {
            return Err(r.error("trailing bytes"));
        }
        Ok(record)
    }
}

fn put_u64(out: &mut Vec<u8>, v: u64) {
    out.extend_from_slice(&v.to_le_bytes());
}

fn put_str(out: &mut Vec<u8>, s: &str) {
    put_u64(out, s.len() as u64);
    out.extend_from_slice(s.as_bytes());
}

struct Reader<'a> {
    bytes: &'a [u8],
    pos: usize,
}

impl<'a> Reader<'a> {
    fn error(&self, what: &str) -> SharpnessError {
        SharpnessError::State(format!("{what} at byte offset {}", self.pos))
    }

    fn take(&mut self, n: usize) -> Result<&'a [u8], SharpnessError> {
        if self.bytes.len() - self.pos < n {
            return Err(self.error("truncated record"));
        }
        let slice = &self.bytes[self.pos..self.pos + n];
        self.pos += n;
        Ok(slice)
    }

    fn u64(&mut self) -> Result<u64, SharpnessError> {
        Ok(u64::from_le_bytes(self.take(8)?.try_into().unwrap()))
    }

    /// A length or count; bounded by the remaining input so corrupt headers cannot allocate.
    fn count(&mut self) -> Result<usize, SharpnessError> {
        let v = self.u64()?;
        if v > self.bytes.len() as u64 * 8 {
            return Err(self.error("implausible length"));
        }
        Ok(v as usize)
    }

    fn string(&mut self) -> Result<String, SharpnessError> {
        let n = self.count()?;
        String::from_utf8(self.take(n)?.to_vec()).map_err(|_| self.error("invalid UTF-8"))
    }
}
