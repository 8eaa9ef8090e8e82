//! Parameters seen as one vector.
//!
//! Every rule in the SAM family needs *global* quantities — ‖g‖ over all parameters, gᵀd, elementwise
//! products — while a Burn module stores its parameters as many tensors of different ranks. A
//! [`ParamSet`] is the bridge: an ordered set of tensors keyed by [`ParamId`], each kept flat (rank 1)
//! with its original shape, plus the few global operations the rules use. Norms and dot products are
//! reduced per tensor and then summed across tensors with a single device read ("norms are
//! global", `docs/algorithms.md` §0).

use std::collections::HashMap;
use std::sync::OnceLock;

use burn::module::{Module, ModuleMapper, ModuleVisitor, Param, ParamId};
use burn::optim::{GradientsParams, RecordState, StateSink, StateSource, join_path};
use burn::tensor::{DType, Device, GradientCheckpointingStrategy, Tensor, TensorData};
use burn_pack::Scalar;
use rayon::prelude::*;

use crate::error::SharpnessError;

/// One tensor of a [`ParamSet`]: a flattened value with the parameter's id, shape and module path.
#[derive(Clone, Debug)]
pub struct ParamTensor {
    /// The id of the module parameter this tensor belongs to.
    pub id: ParamId,
    /// The module path of the parameter, e.g. `"fc1.weight"` or `"bn.gamma"`.
    pub path: String,
    /// The parameter's shape.
    pub dims: Vec<usize>,
    /// The values, flattened to rank 1, without autodiff.
    pub value: Tensor<1>,
}

impl ParamTensor {
    /// The last segment of the module path (the field name: `weight`, `bias`, `gamma`, …).
    pub fn field_name(&self) -> &str {
        self.path.rsplit('.').next().unwrap_or(&self.path)
    }
}

/// An ordered set of flat tensors keyed by [`ParamId`]: gradients, weights or perturbations of a
/// module, treated as one vector.
///
/// Binary operations require both sets to hold the same ids in the same order (which is the case
/// for sets built from the same module); they panic otherwise, since that is a programming error.
#[derive(Clone, Debug, Default)]
pub struct ParamSet {
    entries: Vec<ParamTensor>,
    index: HashMap<ParamId, usize>,
    /// ‖x‖², computed on first use: a set is never modified, so it never goes stale. The norm
    /// a step computes for its NaN check then also serves ‖g‖ in the perturbation.
    squared_norm: OnceLock<f64>,
}

impl ParamSet {
    /// An empty set.
    pub fn new() -> Self {
        Self::default()
    }

    /// Builds a set from entries (in the given order).
    pub fn from_entries(entries: Vec<ParamTensor>) -> Self {
        let index = entries.iter().enumerate().map(|(i, e)| (e.id, i)).collect();
        Self {
            entries,
            index,
            squared_norm: OnceLock::new(),
        }
    }

    /// A set built from plain values (fresh ids), e.g. for tests and small problems: each item is
    /// (path, shape, row-major values), stored as `f64` tensors on `device`.
    pub fn from_values(device: &Device, tensors: &[(&str, &[usize], &[f64])]) -> Self {
        let entries = tensors
            .iter()
            .map(|(path, dims, values)| {
                assert_eq!(
                    dims.iter().product::<usize>(),
                    values.len(),
                    "shape of `{path}`"
                );
                let data = TensorData::new(values.to_vec(), [values.len()]);
                ParamTensor {
                    id: ParamId::new(),
                    path: path.to_string(),
                    dims: dims.to_vec(),
                    value: Tensor::from_data(data, (device, DType::F64)),
                }
            })
            .collect();
        Self::from_entries(entries)
    }

    /// The same layout (ids, shapes, paths) with new flat values (as `f64`, then cast to each
    /// tensor's dtype).
    pub fn with_values(&self, values: &[f64]) -> Self {
        assert_eq!(values.len(), self.num_elements(), "number of values");
        let starts: Vec<usize> = self
            .entries
            .iter()
            .scan(0, |offset, e| {
                let start = *offset;
                *offset += e.dims.iter().product::<usize>();
                Some(start)
            })
            .collect();
        self.map_indexed(|i, e| {
            let n = e.dims.iter().product::<usize>();
            let data = TensorData::new(values[starts[i]..starts[i] + n].to_vec(), [n]);
            Tensor::<1>::from_data(data, (&e.value.device(), DType::F64)).cast(e.value.dtype())
        })
    }

    /// The gradients of `module`'s parameters present in `grads`, in module order.
    pub fn from_gradients<M: Module>(module: &M, grads: &GradientsParams) -> Self {
        let mut collector = Collector::new(Source::Gradients(grads));
        module.visit(&mut collector);
        Self::from_entries(collector.entries)
    }

    /// The current values (without autodiff) of the parameters of `module` whose ids are in
    /// `like`, in module order.
    pub fn weights_like<M: Module>(module: &M, like: &ParamSet) -> Self {
        let mut collector = Collector::new(Source::WeightsLike(like));
        module.visit(&mut collector);
        Self::from_entries(collector.entries)
    }

    /// The current values of every parameter of `module` that requires a gradient.
    pub fn trainable_weights<M: Module>(module: &M) -> Self {
        let mut collector = Collector::new(Source::Weights);
        module.visit(&mut collector);
        Self::from_entries(collector.entries)
    }

    /// Number of tensors.
    pub fn len(&self) -> usize {
        self.entries.len()
    }

    /// Whether the set holds no tensor.
    pub fn is_empty(&self) -> bool {
        self.entries.is_empty()
    }

    /// Total number of scalar coordinates.
    pub fn num_elements(&self) -> usize {
        self.entries
            .iter()
            .map(|e| e.dims.iter().product::<usize>())
            .sum()
    }

    /// Whether a tensor with this id is in the set.
    pub fn contains(&self, id: ParamId) -> bool {
        self.index.contains_key(&id)
    }

    /// The tensor with this id.
    pub fn get(&self, id: ParamId) -> Option<&ParamTensor> {
        self.index.get(&id).map(|&i| &self.entries[i])
    }

    /// The tensors in order.
    pub fn iter(&self) -> impl Iterator<Item = &ParamTensor> {
        self.entries.iter()
    }

    /// The ids in order.
    pub fn ids(&self) -> impl Iterator<Item = ParamId> + '_ {
        self.entries.iter().map(|e| e.id)
    }

    /// Applies `f` to every tensor (same ids, shapes and paths), in parallel where that is safe
    /// and pays ([`ParamSet::parallel`]).
    pub fn map(&self, f: impl Fn(&ParamTensor) -> Tensor<1> + Sync) -> Self {
        self.map_indexed(|_, e| f(e))
    }

    /// As [`ParamSet::map`], with each tensor's position.
    fn map_indexed(&self, f: impl Fn(usize, &ParamTensor) -> Tensor<1> + Sync) -> Self {
        let map = |(i, e): (usize, &ParamTensor)| ParamTensor {
            value: f(i, e),
            ..e.clone()
        };
        let entries = match self.parallel() {
            true => self.entries.par_iter().enumerate().map(map).collect(),
            false => self.entries.iter().enumerate().map(map).collect(),
        };
        Self {
            entries,
            index: self.index.clone(),
            squared_norm: OnceLock::new(),
        }
    }

    /// Whether maps run tensor by tensor on the rayon pool: only on Flex, which runs each
    /// operation on the calling thread (one thread per operation), so independent tensors fill
    /// the cores (measured: ε 20–35 % faster on the step benchmark). GPU backends queue their
    /// operations anyway, and CubeCL's wgpu runtime computed wrong results when several threads
    /// submitted to one device (`tests/wgpu.rs` on lavapipe); an unknown backend stays sequential.
    pub fn parallel(&self) -> bool {
        self.entries.first().is_some_and(|e| {
            let device = e.value.device().inner();
            format!("{:?}", device.as_dispatch()).starts_with("Flex(")
        })
    }

    /// Combines two sets with the same layout tensor by tensor.
    pub fn zip_map(
        &self,
        other: &ParamSet,
        f: impl Fn(Tensor<1>, Tensor<1>) -> Tensor<1> + Sync,
    ) -> Self {
        self.zip_map_entries(other, |e, x| f(e.value.clone(), x))
    }

    /// As [`ParamSet::zip_map`], consuming `self`: a tensor of `self` that no other set shares
    /// reaches `f` unshared, so that backends which reuse such memory (Flex) write in place.
    pub fn into_zip_map(
        self,
        other: &ParamSet,
        f: impl Fn(Tensor<1>, Tensor<1>) -> Tensor<1> + Sync,
    ) -> Self {
        self.assert_same_layout(other);
        let map = |(e, o): (ParamTensor, &ParamTensor)| ParamTensor {
            value: f(e.value, o.value.clone()),
            ..e
        };
        let entries = match self.parallel() {
            true => self
                .entries
                .into_par_iter()
                .zip(&other.entries)
                .map(map)
                .collect(),
            false => self
                .entries
                .into_iter()
                .zip(&other.entries)
                .map(map)
                .collect(),
        };
        Self {
            entries,
            index: self.index,
            squared_norm: OnceLock::new(),
        }
    }

    /// As [`ParamSet::zip_map`], with the whole entry of `self` (id, path, shape) for rules that
    /// depend on the tensor, e.g. ASAM's scope.
    pub fn zip_map_entries(
        &self,
        other: &ParamSet,
        f: impl Fn(&ParamTensor, Tensor<1>) -> Tensor<1> + Sync,
    ) -> Self {
        self.assert_same_layout(other);
        self.map_indexed(|i, e| f(e, other.entries[i].value.clone()))
    }

    /// Whether both sets hold the same ids in the same order.
    pub fn same_layout(&self, other: &ParamSet) -> bool {
        self.len() == other.len()
            && self
                .entries
                .iter()
                .zip(&other.entries)
                .all(|(a, b)| a.id == b.id)
    }

    fn assert_same_layout(&self, other: &ParamSet) {
        assert!(
            self.same_layout(other),
            "ParamSet layouts differ ({} vs {} tensors): sets must come from the same module",
            self.len(),
            other.len()
        );
    }

    /// `a · x` for a scalar `a`. A known ‖x‖² carries over as a²‖x‖² (no pass over memory).
    pub fn scale(&self, a: f64) -> Self {
        let scaled = self.map(|e| e.value.clone().mul_scalar(a));
        if let Some(&xx) = self.squared_norm.get() {
            let _ = scaled.squared_norm.set(a * a * xx);
        }
        scaled
    }

    /// `self + other`.
    pub fn add(&self, other: &ParamSet) -> Self {
        self.zip_map(other, |a, b| a + b)
    }

    /// `self − other`.
    pub fn sub(&self, other: &ParamSet) -> Self {
        self.zip_map(other, |a, b| a - b)
    }

    /// Elementwise product `self ⊙ other`.
    pub fn mul(&self, other: &ParamSet) -> Self {
        self.zip_map(other, |a, b| a * b)
    }

    /// `self + a · other`.
    pub fn add_scaled(&self, a: f64, other: &ParamSet) -> Self {
        self.zip_map(other, |x, y| x + y.mul_scalar(a))
    }

    /// All zeros with the same layout.
    pub fn zeros_like(&self) -> Self {
        self.map(|e| e.value.zeros_like())
    }

    /// Global dot product Σ_p ⟨self_p, other_p⟩.
    pub fn dot(&self, other: &ParamSet) -> f64 {
        self.assert_same_layout(other);
        sum_of_partials(
            self.entries
                .iter()
                .zip(&other.entries)
                .map(|(a, b)| flat_dot(&a.value, &b.value)),
        )
    }

    /// Global squared Euclidean norm Σ_p ‖x_p‖² (computed once per set).
    pub fn squared_norm(&self) -> f64 {
        *self.squared_norm.get_or_init(|| {
            sum_of_partials(self.entries.iter().map(|e| flat_dot(&e.value, &e.value)))
        })
    }

    /// Global Euclidean norm.
    pub fn norm(&self) -> f64 {
        self.squared_norm().sqrt()
    }

    /// Whether every coordinate is finite. One global reduction: a NaN or ±∞ anywhere (or a
    /// squared norm overflowing the float type, which only a useless gradient can cause) makes
    /// the squared norm non-finite.
    pub fn all_finite(&self) -> bool {
        self.squared_norm().is_finite()
    }

    /// The values of every tensor, concatenated in order, as `f64` (for tests and small problems).
    pub fn to_vec(&self) -> Vec<f64> {
        self.entries
            .iter()
            .flat_map(|e| {
                e.value
                    .to_data()
                    .convert::<f64>()
                    .try_into_vec::<f64>()
                    .expect("float tensor")
            })
            .collect()
    }

    /// Converts to Burn's gradient container (original shapes), e.g. for a base optimizer step.
    pub fn to_gradients(&self) -> GradientsParams {
        let mut grads = GradientsParams::new();
        for e in &self.entries {
            register_reshaped(&mut grads, e);
        }
        grads
    }

    /// Returns `module` with `delta` added to the matching parameters (`w + δ`). Parameters not in
    /// `delta` are left as they are. Works on modules with or without autodiff.
    pub fn add_to_module<M: Module>(&self, module: M) -> M {
        module.map(&mut MapMatching {
            values: self,
            add: true,
        })
    }

    /// Returns `module` with the matching parameters set to these values. Parameters not in the
    /// set are left as they are. Works on modules with or without autodiff.
    pub fn set_in_module<M: Module>(&self, module: M) -> M {
        module.map(&mut MapMatching {
            values: self,
            add: false,
        })
    }
}

/// ⟨a, b⟩ of two flat tensors as a one-element tensor. A 1×n by n×1 matrix product: on the CPU
/// backend this runs through the optimised GEMM and is ~10× faster than `(a * b).sum()`.
/// Half-precision tensors are widened to f32 first: a squared gradient norm overflows f16's
/// largest value (65 504) long before the gradient does, and the NaN check would then reject it.
fn flat_dot(a: &Tensor<1>, b: &Tensor<1>) -> Tensor<1> {
    let n = a.dims()[0];
    let widen = |t: &Tensor<1>| match t.dtype() {
        DType::F16 | DType::BF16 => t.clone().cast(DType::F32),
        _ => t.clone(),
    };
    if n == 0 {
        return Tensor::<1>::zeros([1], (&a.device(), widen(a).dtype()));
    }
    widen(a)
        .reshape([1, n])
        .matmul(widen(b).reshape([n, 1]))
        .reshape([1])
}

/// Sums scalar tensors (one per parameter tensor) with a single read back from the device.
fn sum_of_partials(partials: impl Iterator<Item = Tensor<1>>) -> f64 {
    let partials: Vec<Tensor<1>> = partials.collect();
    if partials.is_empty() {
        return 0.0;
    }
    Tensor::cat(partials, 0).sum().into_scalar::<f64>()
}

fn register_reshaped(grads: &mut GradientsParams, e: &ParamTensor) {
    macro_rules! by_rank {
        ($($d:literal),*) => {
            match e.dims.len() {
                $($d => {
                    let dims: [usize; $d] = e.dims.clone().try_into().expect("rank");
                    grads.register::<$d>(e.id, e.value.clone().reshape(dims));
                })*
                r => panic!("unsupported parameter rank {r}"),
            }
        };
    }
    by_rank!(1, 2, 3, 4, 5, 6);
}

/// What a [`Collector`] takes from each trainable parameter.
enum Source<'a> {
    /// Its gradient, when it has one.
    Gradients(&'a GradientsParams),
    /// Its value, when its id is in the set.
    WeightsLike(&'a ParamSet),
    /// Its value.
    Weights,
}

/// Visits a module and collects flat tensors of its trainable parameters.
struct Collector<'a> {
    source: Source<'a>,
    path: Vec<String>,
    entries: Vec<ParamTensor>,
}

impl<'a> Collector<'a> {
    fn new(source: Source<'a>) -> Self {
        Self {
            source,
            path: Vec::new(),
            entries: Vec::new(),
        }
    }
}

impl ModuleVisitor for Collector<'_> {
    fn enter_module(&mut self, name: &str, _container_type: &str) {
        self.path.push(name.to_string());
    }

    fn exit_module(&mut self, _name: &str, _container_type: &str) {
        self.path.pop();
    }

    fn visit_float<const D: usize>(&mut self, param: &Param<Tensor<D>>) {
        // Running statistics (BatchNorm) are visited as parameters too; they never require grad.
        if !param.is_require_grad() {
            return;
        }
        let picked: Option<Tensor<D>> = match self.source {
            Source::Gradients(grads) => grads.get::<D>(param.id),
            Source::WeightsLike(like) => like.contains(param.id).then(|| param.val().inner()),
            Source::Weights => Some(param.val().inner()),
        };
        if let Some(value) = picked {
            let dims = value.dims().to_vec();
            let flat = value.reshape([dims.iter().product::<usize>()]);
            self.entries.push(ParamTensor {
                id: param.id,
                path: self.path.join("."),
                dims,
                value: flat,
            });
        }
    }
}

/// The autodiff context of a parameter: its gradient-checkpointing strategy and its distributed
/// mark, which `Tensor::from_inner` and `Module::train` do not restore (burn-optim keeps them the
/// same way, in its `ParameterContext`). Burn refuses to combine tensors of two strategies.
#[derive(Clone, Copy)]
pub(crate) struct AutodiffContext {
    checkpointing: Option<GradientCheckpointingStrategy>,
    distributed: bool,
}

impl AutodiffContext {
    pub(crate) fn of<const D: usize>(parameter: &Tensor<D>) -> Self {
        Self {
            checkpointing: parameter.gradient_checkpointing_strategy(),
            distributed: parameter.is_distributed(),
        }
    }

    /// `value` lifted to a trainable parameter with this context.
    pub(crate) fn apply<const D: usize>(self, value: Tensor<D>, id: ParamId) -> Tensor<D> {
        let mut lifted = match value.is_autodiff() {
            true => value,
            false => Tensor::from_inner(value),
        };
        if let Some(strategy) = self.checkpointing {
            lifted = lifted.with_gradient_checkpointing_strategy(strategy);
        }
        lifted = lifted.require_grad();
        if self.distributed {
            lifted = lifted.set_distributed(id);
        }
        lifted
    }
}

/// A training copy of `module` with running state of its own (`valid().train()`: a plain clone
/// shares BatchNorm's running statistics), whose parameters keep the original's autodiff context.
pub(crate) fn fresh_copy<M: Module>(module: &M) -> M {
    struct Contexts(HashMap<ParamId, AutodiffContext>);
    impl ModuleVisitor for Contexts {
        fn visit_float<const D: usize>(&mut self, param: &Param<Tensor<D>>) {
            if param.is_require_grad() {
                self.0.insert(param.id, AutodiffContext::of(&param.val()));
            }
        }
    }
    impl ModuleMapper for Contexts {
        fn map_float<const D: usize>(&mut self, param: Param<Tensor<D>>) -> Param<Tensor<D>> {
            match self.0.get(&param.id).copied() {
                Some(context) => {
                    let (id, value, mapper) = param.consume();
                    Param::from_mapped_value(id, context.apply(value, id), mapper)
                }
                None => param,
            }
        }
    }
    let mut contexts = Contexts(HashMap::new());
    module.visit(&mut contexts);
    module.valid().train().map(&mut contexts)
}

/// Maps a module's parameters present in `values` to `w + values` (`add`) or to `values`.
struct MapMatching<'a> {
    values: &'a ParamSet,
    add: bool,
}

impl ModuleMapper for MapMatching<'_> {
    fn map_float<const D: usize>(&mut self, param: Param<Tensor<D>>) -> Param<Tensor<D>> {
        let Some(given) = self.values.get(param.id) else {
            return param;
        };
        let (id, value, mapper) = param.consume();
        let dims: [usize; D] = value.dims();
        let given = given.value.clone().reshape(dims);
        let new = match self.add {
            true => value.clone().inner() + given,
            false => given,
        };
        let new = match value.is_require_grad() {
            true => AutodiffContext::of(&value).apply(new, id),
            false => new,
        };
        Param::from_mapped_value(id, new, mapper)
    }
}

impl ParamSet {
    /// Writes an optional set (a geometry's state, which may not exist yet) under
    /// `prefix.leaf`; nothing when it is `None`.
    pub fn save_optional(set: Option<&ParamSet>, prefix: &str, leaf: &str, out: &mut StateSink) {
        if let Some(set) = set {
            set.state_flatten(&join_path(prefix, leaf), out);
        }
    }

    /// Reads a set written by [`ParamSet::save_optional`]: `None` when nothing was saved there.
    pub fn load_optional(
        prefix: &str,
        leaf: &str,
        source: &mut StateSource,
        device: &Device,
    ) -> Result<Option<ParamSet>, SharpnessError> {
        let path = join_path(prefix, leaf);
        if !source.has_under(&path) {
            return Ok(None);
        }
        Self::state_unflatten(&path, source, device)
            .map(Some)
            .ok_or_else(|| crate::estimator::missing(&path))
    }
}

/// A set in Burn's optimizer-state records: under `prefix`, the scalar `len`, and for the i-th
/// tensor the tensor `i` (with the parameter's shape) and the scalar `i.id` (its [`ParamId`]).
/// Module paths are not stored: state sets are matched to parameters by id.
impl RecordState for ParamSet {
    fn state_flatten(&self, prefix: &str, out: &mut StateSink) {
        out.push_scalar(prefix, "len", Scalar::from(self.len()));
        for (i, e) in self.entries.iter().enumerate() {
            out.push_scalar(prefix, &format!("{i}.id"), Scalar::from(e.id.val()));
            let data = e.value.to_data();
            let (bytes, dtype) = (data.into_bytes(), e.value.dtype());
            out.push_tensor(
                prefix,
                &i.to_string(),
                TensorData::from_bytes(bytes, e.dims.clone(), dtype),
            );
        }
    }

    fn state_unflatten(prefix: &str, source: &mut StateSource, device: &Device) -> Option<Self> {
        let len = usize::try_from(source.take_scalar(prefix, "len")?).ok()?;
        let entries = (0..len)
            .map(|i| {
                let id = u64::try_from(source.take_scalar(prefix, &format!("{i}.id"))?).ok()?;
                let data = source.take_tensor(prefix, &i.to_string())?;
                let dims = data.shape().to_vec();
                let dtype = data.dtype();
                let n = dims.iter().product::<usize>();
                let flat = TensorData::from_bytes(data.into_bytes(), [n], dtype);
                let value = Tensor::<1>::from_data(flat, (device, dtype));
                Some(ParamTensor {
                    id: ParamId::from(id),
                    path: String::new(),
                    dims,
                    // State is never differentiated (and `device` may be an autodiff device).
                    value: value.without_autodiff(),
                })
            })
            .collect::<Option<Vec<_>>>()?;
        Some(Self::from_entries(entries))
    }
}
