//! Diagonal preconditioners, written once and evaluated two ways.
//!
//! Every built-in geometry acts coordinate by coordinate, up to one global factor:
//! d = λ(‖g‖²) · (f(gᵢ, wᵢ, aᵢ))ᵢ, with `a` an optional per-coordinate state (infoSAM's moving
//! average, SSAM's mask). A [`DiagonalRule`] writes f once, generic over [`Coordinate`]:
//!
//! - with `X = Tensor<1>` the rule runs as tensor operations on any backend ([`direction`]);
//! - with `X = f32` / `f64` it is inlined into a fused loop over the host memory of CPU (Flex)
//!   tensors ([`perturbation`]): one pass reads g, w, a and accumulates ‖g‖², gᵀd̃ and ‖d̃‖², a
//!   second pass writes ε = s·d̃. Tensor operations would need one pass over memory per
//!   elementwise operation (ASAM: six), which costs more than the rule's arithmetic.
//!
//! Both ways compute the same formula; the tests check them against each other.

use std::ops::{Add, Div, Mul, Sub};

use burn::backend::Flex;
use burn::backend::flex::FlexTensor;
use burn::tensor::{DType, Tensor, TensorData};

use super::{Normalization, Perturbation, XI, normalize};
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
/// A [`super::Preconditioner`] built on a rule implements `direction` with [`direction`] and
/// `perturbation` with [`perturbation`], so the formula lives in [`DiagonalRule::rule_for`] only.
pub trait DiagonalRule {
    /// f for the coordinates of one tensor, (g, w, aux) ↦ f(g, w, aux), given the gradient, the
    /// weights and the per-coordinate state (see [`DiagonalRule::auxiliary`]; `None` when the rule
    /// has none). Whatever depends on the tensor (its path, e.g. ASAM's scope) is decided here,
    /// once, not in the returned map, which the fused path calls for every coordinate.
    fn rule_for<X: Coordinate>(&self, tensor: &ParamTensor) -> impl Fn(X, X, Option<X>) -> X;

    /// Per-coordinate state the rule reads as `aux`, with the gradient's layout.
    fn auxiliary(&self) -> Option<&ParamSet> {
        None
    }

    /// The global factor λ as a function of ‖g‖² (1 unless overridden; Monge: 1/(1+‖g‖²)).
    fn global_factor(&self, _grad_squared_norm: f64) -> f64 {
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
    let lambda = rule.global_factor(g.squared_norm());
    if lambda == 1.0 { f } else { f.scale(lambda) }
}

/// ε = ρ d/‖d‖_* for a diagonal rule: fused host loops when every tensor involved is a contiguous
/// `f32`/`f64` CPU tensor, else tensor operations (same formula).
pub fn perturbation<R: DiagonalRule>(
    rule: &R,
    normalization: Normalization,
    rho: f64,
    g: &ParamSet,
    w: &ParamSet,
) -> Perturbation {
    fused(rule, normalization, rho, g, w)
        .unwrap_or_else(|| by_tensor_ops(rule, normalization, rho, g, w))
}

/// The tensor-operation path of [`perturbation`] (public so the two paths can be compared).
pub fn by_tensor_ops<R: DiagonalRule>(
    rule: &R,
    normalization: Normalization,
    rho: f64,
    g: &ParamSet,
    w: &ParamSet,
) -> Perturbation {
    let d = direction(rule, g, w);
    let epsilon = normalize(normalization, rho, g, &d);
    let squared_norm = epsilon.squared_norm();
    Perturbation {
        epsilon,
        squared_norm,
    }
}

/// The inputs of one tensor as host memory.
struct HostInputs {
    g: FlexTensor,
    w: FlexTensor,
    aux: Option<FlexTensor>,
}

/// The fused path of [`perturbation`], or `None` if some tensor is not a contiguous `f32`/`f64`
/// CPU (Flex) tensor.
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
    let lambda = rule.global_factor(sums.gg);
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
trait HostFloat: Coordinate + Copy + bytemuck::Pod + Into<f64> + burn::tensor::Element {
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

/// Runs `body(d̃_at)` with `d̃_at(i)` the rule at coordinate i of one tensor.
macro_rules! with_rule {
    ($rule:expr, $e:expr, $x:expr, $n:expr, |$g:ident, $at:ident| $body:expr) => {{
        let $g: &[E] = slice(&$x.g, $n);
        let w: &[E] = slice(&$x.w, $n);
        let f = $rule.rule_for::<E>($e);
        match &$x.aux {
            Some(a) => {
                let a: &[E] = slice(a, $n);
                let $at = |i: usize| f($g[i], w[i], Some(a[i]));
                $body
            }
            None => {
                let $at = |i: usize| f($g[i], w[i], None);
                $body
            }
        }
    }};
}

fn sums_of<E: HostFloat, R: DiagonalRule>(rule: &R, e: &ParamTensor, x: &HostInputs) -> Sums {
    let n = e.value.dims()[0];
    with_rule!(rule, e, x, n, |g, at| accumulate(g, at))
}

/// Σ g², Σ g·d̃, Σ d̃² with eight independent f64 lanes (so the loop vectorises).
#[inline(always)]
fn accumulate<E: HostFloat>(g: &[E], at: impl Fn(usize) -> E) -> Sums {
    const LANES: usize = 8;
    let (mut gg, mut gd, mut dd) = ([0.0f64; LANES], [0.0f64; LANES], [0.0f64; LANES]);
    let chunks = g.len() / LANES;
    for c in 0..chunks {
        for k in 0..LANES {
            let i = c * LANES + k;
            let (gi, di): (f64, f64) = (g[i].into(), at(i).into());
            gg[k] += gi * gi;
            gd[k] += gi * di;
            dd[k] += di * di;
        }
    }
    let mut s = Sums {
        gg: gg.iter().sum(),
        gd: gd.iter().sum(),
        dd: dd.iter().sum(),
    };
    for i in chunks * LANES..g.len() {
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
    let values: Vec<E> = with_rule!(rule, e, x, n, |g, at| {
        let _ = g;
        (0..n).map(|i| at(i) * s).collect()
    });
    Tensor::from_data(
        TensorData::new(values, [n]),
        (&e.value.device(), e.value.dtype()),
    )
}
