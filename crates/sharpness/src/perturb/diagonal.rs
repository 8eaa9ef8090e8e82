//! Diagonal preconditioners, written once and evaluated two ways.
//!
//! Every built-in geometry acts coordinate by coordinate, up to one global factor:
//! d = λ(‖g‖²) · (f(gᵢ, wᵢ, aᵢ))ᵢ, with `a` an optional per-coordinate state (infoSAM's moving
//! average, SSAM's mask). A [`DiagonalRule`] writes f once, generic over [`Coordinate`]:
//!
//! - with `X = Tensor<1>` the rule runs as tensor operations on any backend ([`direction`], which
//!   [`super::Preconditioner::perturbation`] normalises: the path every step takes);
//! - with `X = f32` / `f64` it is inlined into a fused, block-parallel loop over the host memory of
//!   CPU (Flex) tensors ([`fused`]): one pass reads g, w, a and accumulates ‖g‖², gᵀd̃ and ‖d̃‖²,
//!   a second writes ε = s·d̃.
//!
//! Both compute the same formula, and the tests check them against each other. The fused loop is
//! not the default: with Flex's `simd` and `rayon` features its own kernels measured faster here
//! (SAM's ε on an MLP 784-512-512-10: 0.37–0.41 ms as tensor operations, 0.72–1.0 ms fused; see
//! `cargo bench -p sharpness --bench step`).

use std::ops::{Add, Div, Mul, Sub};

use burn::backend::Flex;
use burn::backend::flex::FlexTensor;
use burn::tensor::{DType, Tensor, TensorData};
use rayon::prelude::*;

use super::{Normalization, Perturbation, XI};
use crate::params::{ParamSet, ParamTensor};

/// The numbers a [`DiagonalRule`] is written in: one coordinate (`f32`, `f64`) or a whole flat
/// tensor. Scalars are `f64` and are converted to the element type.
pub trait Coordinate:
    Clone + Add<Output = Self> + Sub<Output = Self> + Mul<Output = Self> + Div<Output = Self>
{
    /// |x|.
    fn abs(self) -> Self;
    /// x².
    fn square(self) -> Self;
    /// x + c.
    fn add_scalar(self, c: f64) -> Self;
    /// c · x.
    fn mul_scalar(self, c: f64) -> Self;
}

impl Coordinate for Tensor<1> {
    fn abs(self) -> Self {
        self.abs() // the inherent method (inherent methods take precedence)
    }
    fn square(self) -> Self {
        self.square() // the inherent method (inherent methods take precedence)
    }
    fn add_scalar(self, c: f64) -> Self {
        self.add_scalar(c)
    }
    fn mul_scalar(self, c: f64) -> Self {
        self.mul_scalar(c)
    }
}

macro_rules! coordinate_for_float {
    ($t:ty) => {
        impl Coordinate for $t {
            #[inline(always)]
            fn abs(self) -> Self {
                <$t>::abs(self)
            }
            #[inline(always)]
            fn square(self) -> Self {
                self * self
            }
            #[inline(always)]
            fn add_scalar(self, c: f64) -> Self {
                self + c as $t
            }
            #[inline(always)]
            fn mul_scalar(self, c: f64) -> Self {
                self * c as $t
            }
        }
    };
}
coordinate_for_float!(f32);
coordinate_for_float!(f64);

/// A preconditioner that acts coordinate by coordinate: d = λ(‖g‖²) · (f(gᵢ, wᵢ, aᵢ))ᵢ.
///
/// A [`super::Preconditioner`] built on a rule implements `direction` with [`direction`], so the
/// formula lives in [`DiagonalRule::rule_for`] only.
pub trait DiagonalRule {
    /// f for the coordinates of one tensor, (g, w, aux) ↦ f(g, w, aux), given the gradient, the
    /// weights and the per-coordinate state (see [`DiagonalRule::auxiliary`]; `None` when the rule
    /// has none). Whatever depends on the tensor (its path, e.g. ASAM's scope) is decided here,
    /// once, not in the returned map, which the fused path calls for every coordinate.
    fn rule_for<X: Coordinate>(&self, tensor: &ParamTensor)
    -> impl Fn(X, X, Option<X>) -> X + Sync;

    /// Per-coordinate state the rule reads as `aux`, with the gradient's layout.
    fn auxiliary(&self) -> Option<&ParamSet> {
        None
    }

    /// The global factor λ as a function of ‖g‖² (1 unless overridden; Monge: 1/(1+‖g‖²)).
    /// ‖g‖² is passed lazily: only a rule that calls it pays for the reduction.
    fn global_factor(&self, _grad_squared_norm: impl FnOnce() -> f64) -> f64 {
        1.0
    }
}

/// d = λ · f(g, w, a) by tensor operations (any backend).
pub fn direction<R: DiagonalRule>(rule: &R, g: &ParamSet, w: &ParamSet) -> ParamSet {
    let aux = rule.auxiliary();
    let f = g.map(|e| {
        let a = aux.map(|a| matching(a, e, "state").value.clone());
        let weight = matching(w, e, "weights").value.clone();
        rule.rule_for(e)(e.value.clone(), weight, a)
    });
    let lambda = rule.global_factor(|| g.squared_norm());
    if lambda == 1.0 { f } else { f.scale(lambda) }
}

/// The inputs of one tensor as host memory.
struct HostInputs {
    g: FlexTensor,
    w: FlexTensor,
    aux: Option<FlexTensor>,
}

/// ε by the fused host loops, or `None` if some tensor is not a contiguous `f32`/`f64` CPU (Flex)
/// tensor. An independent evaluation of the same ε as [`super::Preconditioner::perturbation`] (see the module
/// docs for why it is not the default).
pub fn fused<R: DiagonalRule>(
    rule: &R,
    normalization: Normalization,
    rho: f64,
    g: &ParamSet,
    w: &ParamSet,
) -> Option<Perturbation> {
    let aux = rule.auxiliary();
    let inputs: Vec<HostInputs> = g
        .iter()
        .map(|e| {
            let dtype = e.value.dtype();
            Some(HostInputs {
                g: host(&e.value, dtype)?,
                w: host(&matching(w, e, "weights").value, dtype)?,
                aux: match aux {
                    Some(a) => Some(host(&matching(a, e, "state").value, dtype)?),
                    None => None,
                },
            })
        })
        .collect::<Option<_>>()?;
    // Pass 1: ‖g‖², gᵀd̃, ‖d̃‖² (f64 accumulators).
    let mut sums = Sums::default();
    for (e, x) in g.iter().zip(&inputs) {
        let s = match e.value.dtype() {
            DType::F32 => sums_of::<f32, R>(rule, e, x),
            _ => sums_of::<f64, R>(rule, e, x),
        };
        sums.add(s);
    }
    let lambda = rule.global_factor(|| sums.gg);
    let norm = match normalization {
        Normalization::Constraint => (lambda * sums.gd).max(0.0).sqrt(),
        Normalization::Objective => lambda.abs() * sums.dd.sqrt(),
        Normalization::Gradient => sums.gg.sqrt(),
    };
    let scale = rho * lambda / (norm + XI);
    // Pass 2: ε = scale · d̃.
    let epsilon = g.map_indexed(|i, e| match e.value.dtype() {
        DType::F32 => scaled::<f32, R>(rule, e, &inputs[i], scale),
        _ => scaled::<f64, R>(rule, e, &inputs[i], scale),
    });
    Some(Perturbation {
        epsilon,
        squared_norm: scale * scale * sums.dd,
    })
}

/// The tensor of `set` with the id of the gradient tensor `e`. A set without it is a programming
/// error (weights and state always have the gradient's layout).
fn matching<'a>(set: &'a ParamSet, e: &ParamTensor, what: &str) -> &'a ParamTensor {
    set.get(e.id)
        .unwrap_or_else(|| panic!("the {what} have no tensor for `{}`", e.path))
}

/// A contiguous `f32`/`f64` Flex tensor of the given dtype, shared (no copy).
fn host(t: &Tensor<1>, dtype: DType) -> Option<FlexTensor> {
    if t.dtype() != dtype || !matches!(dtype, DType::F32 | DType::F64) {
        return None;
    }
    // Parameter sets hold values without autodiff; a state restored on an autodiff device is
    // stripped of it here, so that it takes the same path (and rounding) as before the restore.
    let flex = t
        .clone()
        .without_autodiff()
        .try_into_primitive::<Flex>()
        .ok()?;
    let layout = flex.layout();
    (layout.is_contiguous() && layout.start_offset() == 0).then_some(flex)
}

/// Element types of the fused loops.
trait HostFloat:
    Coordinate + Copy + bytemuck::Pod + Into<f64> + burn::tensor::Element + Send + Sync
{
    fn from_f64(x: f64) -> Self;
}
impl HostFloat for f32 {
    fn from_f64(x: f64) -> Self {
        x as f32
    }
}
impl HostFloat for f64 {
    fn from_f64(x: f64) -> Self {
        x
    }
}

/// The first `n` elements of a host tensor.
fn slice<E: HostFloat>(t: &FlexTensor, n: usize) -> &[E] {
    let bytes = &t.bytes()[..n * size_of::<E>()];
    bytemuck::try_cast_slice(bytes).expect("Flex buffers are aligned")
}

#[derive(Default, Clone, Copy)]
struct Sums {
    gg: f64,
    gd: f64,
    dd: f64,
}

impl Sums {
    fn add(&mut self, o: Sums) {
        self.gg += o.gg;
        self.gd += o.gd;
        self.dd += o.dd;
    }
}

/// Evaluates `body` (with `g` the block's gradient slice and `at(i)` the rule at coordinate i of
/// the block) on every block of one tensor, in block order. The inputs are re-sliced to the
/// block's length first, so the compiler drops the bounds checks and vectorises the loops; a
/// macro rather than a function so that `at` is a concrete closure, inlined into the loop.
macro_rules! map_blocks {
    ($rule:expr, $e:expr, $x:expr, |$g:ident, $at:ident| $body:expr) => {{
        let n = $e.value.dims()[0];
        let (g, w): (&[E], &[E]) = (slice(&$x.g, n), slice(&$x.w, n));
        let aux: Option<&[E]> = $x.aux.as_ref().map(|a| slice(a, n));
        let f = $rule.rule_for::<E>($e);
        over_blocks(n, |b| {
            let range = b * BLOCK..((b + 1) * BLOCK).min(n);
            let $g = &g[range.clone()];
            let w = &w[range.clone()][..$g.len()];
            match aux {
                Some(a) => {
                    let a = &a[range][..$g.len()];
                    let $at = |i: usize| f($g[i], w[i], Some(a[i]));
                    $body
                }
                None => {
                    let $at = |i: usize| f($g[i], w[i], None);
                    $body
                }
            }
        })
    }};
}

fn sums_of<E: HostFloat, R: DiagonalRule>(rule: &R, e: &ParamTensor, x: &HostInputs) -> Sums {
    let mut sums = Sums::default();
    for s in map_blocks!(rule, e, x, |g, at| block_sums(g, at)) {
        sums.add(s);
    }
    sums
}

/// Coordinates per block of the fused loops. Blocks have a fixed size and their sums are added in
/// block order, so the result does not depend on the number of threads.
const BLOCK: usize = 8192;
/// Tensors smaller than this run on the calling thread (toy problems, biases).
const PARALLEL_MIN: usize = 4 * BLOCK;

/// Runs `f` on every block `b` (coordinates `b·BLOCK ..`), in parallel for large tensors, and
/// returns the results in block order.
fn over_blocks<T: Send>(n: usize, f: impl Fn(usize) -> T + Sync) -> Vec<T> {
    let blocks = n.div_ceil(BLOCK);
    match n >= PARALLEL_MIN {
        true => (0..blocks).into_par_iter().map(&f).collect(),
        false => (0..blocks).map(f).collect(),
    }
}

/// Σ g², Σ g·d̃, Σ d̃² over one block: in the element type on independent lanes (so the loop
/// vectorises), then in f64.
#[inline(always)]
fn block_sums<E: HostFloat>(g: &[E], at: impl Fn(usize) -> E) -> Sums {
    const LANES: usize = 16;
    let zero = E::from_f64(0.0);
    let (mut gg, mut gd, mut dd) = ([zero; LANES], [zero; LANES], [zero; LANES]);
    let full = g.len() / LANES * LANES;
    for c in 0..g.len() / LANES {
        for k in 0..LANES {
            let i = c * LANES + k;
            let (gi, di) = (g[i], at(i));
            gg[k] = gg[k] + gi * gi;
            gd[k] = gd[k] + gi * di;
            dd[k] = dd[k] + di * di;
        }
    }
    let total = |lanes: [E; LANES]| lanes.iter().map(|&x| x.into()).sum::<f64>();
    let mut s = Sums {
        gg: total(gg),
        gd: total(gd),
        dd: total(dd),
    };
    for i in full..g.len() {
        let (gi, di): (f64, f64) = (g[i].into(), at(i).into());
        s.gg += gi * gi;
        s.gd += gi * di;
        s.dd += di * di;
    }
    s
}

fn scaled<E: HostFloat, R: DiagonalRule>(
    rule: &R,
    e: &ParamTensor,
    x: &HostInputs,
    scale: f64,
) -> Tensor<1> {
    let n = e.value.dims()[0];
    let s = E::from_f64(scale);
    let blocks: Vec<Vec<E>> = map_blocks!(rule, e, x, |g, at| {
        (0..g.len()).map(|i| at(i) * s).collect::<Vec<E>>()
    });
    let values = match blocks.len() {
        1 => blocks.into_iter().next().expect("one block"),
        _ => blocks.concat(),
    };
    Tensor::from_data(
        TensorData::new(values, [n]),
        (&e.value.device(), e.value.dtype()),
    )
}
