//! Diagonal preconditioners, written once and evaluated two ways.
//!
//! Every built-in geometry acts coordinate by coordinate, up to one global factor:
//! d = λ(‖g‖²) · (f(gᵢ, wᵢ, aᵢ))ᵢ, with `a` an optional per-coordinate state (infoSAM's moving
//! average, SSAM's mask). A [`DiagonalRule`] writes f once, generic over [`Coordinate`]:
//!
//! - with `X = Tensor<1>` the rule runs as tensor operations on any backend ([`direction`]);
//! - with `X = f32` / `f64`, and on lanes of eight of them (a private type whose operations the
//!   compiler turns into SIMD instructions), it is inlined into fused, block-parallel loops over
//!   the host memory of CPU (Flex) tensors ([`fused`], [`perturbed_weights`]), each of which
//!   reads g, w, a once and sums only what the normalisation still needs.
//!
//! [`perturbation`] takes the fused loop when it can and tensor operations ([`unfused`])
//! otherwise; the tests check the two against each other. Both return ε = s·f with the
//! normalisation and λ in the scalar s, so no pass over memory is spent on scaling. A step's
//! second pass needs w + ε, which [`perturbed_weights`] writes directly, f never stored: one
//! read-only pass for the norm of the constraint or objective form, none for SSAM's gradient
//! form, then one pass that writes w + s·f and sums ‖f‖² on the way; the same bits as
//! `perturbation(..).apply_to(w)`. SAM and Monge, whose f is g itself, only need ‖g‖², which the
//! step's NaN check has already computed. A rule whose state moves with every step (infoSAM's
//! moving average, [`DiagonalRule::state_update`]) is evaluated by
//! [`perturbed_weights_and_state`] in another shape: one pass writes f and the next state a' and
//! sums ‖f‖², a second turns f into w + s·f in place. That reads g and a once instead of three
//! times (norm, write, state update) and evaluates f once.
//!
//! Measured inside real steps (`cargo bench -p sharpness --bench step`, MLP 784-512-512-10,
//! 2 cores), what a rule adds to the write of w + ε that every method pays: SSAM-F ≤ 0.07 ms,
//! Fisher 0.13–0.15, ASAM 0.15–0.17, infoSAM (with its state update) 0.16–0.19, of a 6–7 ms
//! step.

use std::any::Any;
use std::mem::MaybeUninit;
use std::ops::{Add, Div, Mul, Range, Sub};

use burn::backend::flex::FlexTensor;
use burn::tensor::{DType, Tensor};

use super::{Normalization, Perturbation, Perturbed, Preconditioner, XI};
use crate::host::{self, HostFloat};
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

    /// Whether f(g, w, a) = g at every coordinate (SAM, Monge): the perturbation then uses g
    /// itself as its direction, and needs no pass over memory besides ‖g‖².
    fn keeps_gradient(&self) -> bool {
        false
    }

    /// The per-coordinate state after this step, (g, a) ↦ a' (infoSAM's moving average); the
    /// default keeps a. Read only when the rule [updates its state](DiagonalRule::updates_state).
    fn state_update<X: Coordinate>(&self) -> impl Fn(X, X) -> X + Sync {
        |_g, a| a
    }

    /// Whether every step moves the state by [`DiagonalRule::state_update`]: the fused pass of
    /// [`perturbed_weights_and_state`] then writes a' while it reads g and a for f.
    fn updates_state(&self) -> bool {
        false
    }
}

/// The [`Preconditioner`] methods of a built-in diagonal rule (inside its `impl Preconditioner`
/// block): `direction`, `perturbation` and `perturbed_weights` by this module, so each rule states
/// only its name, normalisation and state.
macro_rules! diagonal_preconditioner {
    () => {
        fn direction(
            &self,
            g: &crate::params::ParamSet,
            w: &crate::params::ParamSet,
        ) -> crate::params::ParamSet {
            crate::perturb::diagonal::direction(self, g, w)
        }

        fn perturbation(
            &self,
            rho: f64,
            g: &crate::params::ParamSet,
            w: &crate::params::ParamSet,
        ) -> crate::perturb::Perturbation {
            crate::perturb::diagonal::perturbation(self, rho, g, w)
        }

        fn perturbed_weights(
            &self,
            rho: f64,
            g: &crate::params::ParamSet,
            w: &crate::params::ParamSet,
        ) -> crate::perturb::Perturbed {
            crate::perturb::diagonal::perturbed_weights(self, rho, g, w)
        }
    };
}
pub(crate) use diagonal_preconditioner;

/// d = λ · f(g, w, a) by tensor operations (any backend).
pub fn direction<R: DiagonalRule>(rule: &R, g: &ParamSet, w: &ParamSet) -> ParamSet {
    let f = direction_without_factor(rule, g, w);
    let lambda = rule.global_factor(|| g.squared_norm());
    if lambda == 1.0 { f } else { f.scale(lambda) }
}

/// ε for a diagonal rule: by the fused host loop ([`fused`]) when every tensor is a CPU (Flex)
/// tensor, else by tensor operations ([`unfused`]). In both, Monge's factor λ goes into the scale:
/// ε = s · f(g, w, a) with s = ρλ/(‖λf‖_* + ξ).
pub fn perturbation<R: DiagonalRule + Preconditioner>(
    rule: &R,
    rho: f64,
    g: &ParamSet,
    w: &ParamSet,
) -> Perturbation {
    fused(rule, rule.normalization(), rho, g, w).unwrap_or_else(|| unfused(rule, rho, g, w))
}

/// ε for a diagonal rule by tensor operations (any backend), with λ in the scale as in [`fused`].
pub fn unfused<R: DiagonalRule + Preconditioner>(
    rule: &R,
    rho: f64,
    g: &ParamSet,
    w: &ParamSet,
) -> Perturbation {
    let normalization = rule.normalization();
    if rule.keeps_gradient() {
        return gradient_direction(rule, normalization, rho, g);
    }
    let f = direction_without_factor(rule, g, w);
    let sums = Sums {
        gd: match normalization {
            Normalization::Constraint => g.dot(&f),
            _ => 0.0,
        },
        dd: f.squared_norm(),
    };
    normalized(rule, normalization, rho, (g, f), sums)
}

/// ε for a rule that keeps the gradient (f = g): only ‖g‖² is needed, and Flex's dot product
/// gives it fastest, so both paths take this one.
fn gradient_direction<R: DiagonalRule>(
    rule: &R,
    normalization: Normalization,
    rho: f64,
    g: &ParamSet,
) -> Perturbation {
    let gg = g.squared_norm();
    let sums = Sums { gd: gg, dd: gg };
    normalized(rule, normalization, rho, (g, g.clone()), sums)
}

/// ε = s·f from the sums of f (see [`scale`]).
fn normalized<R: DiagonalRule>(
    rule: &R,
    normalization: Normalization,
    rho: f64,
    (g, f): (&ParamSet, ParamSet),
    sums: Sums,
) -> Perturbation {
    scaled(f, scale(rule, normalization, rho, g, sums), sums.dd)
}

/// s = ρλ/(‖λf‖_* + ξ) from the sums of f. ‖g‖² (for the gradient form and for λ) is the
/// gradient set's cached norm, which the step's NaN check has already computed.
fn scale<R: DiagonalRule>(
    rule: &R,
    normalization: Normalization,
    rho: f64,
    g: &ParamSet,
    sums: Sums,
) -> f64 {
    let lambda = rule.global_factor(|| g.squared_norm());
    let norm = match normalization {
        Normalization::Constraint => (lambda * sums.gd).max(0.0).sqrt(),
        Normalization::Objective => lambda.abs() * sums.dd.sqrt(),
        Normalization::Gradient => g.squared_norm().sqrt(),
    };
    rho * lambda / (norm + XI)
}

/// The perturbation s·f with ‖f‖² = `ff`.
fn scaled(direction: ParamSet, scale: f64, ff: f64) -> Perturbation {
    Perturbation {
        direction,
        scale,
        squared_norm: scale * scale * ff,
    }
}

/// f(g, w, a) by tensor operations.
fn direction_without_factor<R: DiagonalRule>(rule: &R, g: &ParamSet, w: &ParamSet) -> ParamSet {
    let aux = rule.auxiliary();
    g.map(|e| {
        let a = aux.map(|a| matching(a, e, "state").value.clone());
        let weight = matching(w, e, "weights").value.clone();
        rule.rule_for(e)(e.value.clone(), weight, a)
    })
}

/// ε by the fused host loop, or `None` if some tensor is not a contiguous `f32`/`f64` CPU (Flex)
/// tensor: one pass reads g, w and a, writes f(g, w, a) and accumulates ‖f‖² and, for the
/// constraint form, gᵀf (‖g‖², for the gradient form and Monge's λ, is the set's cached norm; a
/// rule that [keeps the gradient](DiagonalRule::keeps_gradient) needs nothing else and writes
/// nothing). The tests check it against the tensor operations.
pub fn fused<R: DiagonalRule + Sync>(
    rule: &R,
    normalization: Normalization,
    rho: f64,
    g: &ParamSet,
    w: &ParamSet,
) -> Option<Perturbation> {
    let inputs = host_inputs(rule, g, w)?;
    if rule.keeps_gradient() {
        return Some(gradient_direction(rule, normalization, rho, g));
    }
    let has_state = rule.auxiliary().is_some();
    let (columns, sums) = host::in_pool(|| {
        let mut sums = Sums::default();
        let columns: Vec<Tensor<1>> = g
            .iter()
            .zip(&inputs)
            .map(|(e, x)| {
                by_dtype!(e.value.dtype(), |E| {
                    let (f, s) = kernel::<E, R>(rule, e, x, has_state).direction(normalization);
                    sums.add(s);
                    host::tensor_like(f, &e.value)
                })
            })
            .collect();
        (columns, sums)
    });
    let f = g.map_indexed(|i, _| columns[i].clone());
    Some(normalized(rule, normalization, rho, (g, f), sums))
}

/// w + ε for a diagonal rule, the weights of a step's second pass, with ‖ε‖²: by fused host
/// passes when every tensor is a CPU (Flex) tensor, else w + [`unfused`]. f is never stored:
///
/// 1. a read-only pass over (g, w, a) sums what the scale s needs: gᵀf for the constraint form,
///    ‖f‖² for the objective form, nothing for the gradient form (‖g‖ is known), which skips it;
/// 2. a pass evaluates f again, writes w + s·f and sums ‖f‖² (for ‖ε‖²) unless pass 1 had it.
///
/// The same values as `perturbation(..).apply_to(w)`, ‖ε‖² included, bit for bit: every fused
/// pass sums in the same order.
pub fn perturbed_weights<R: DiagonalRule + Preconditioner>(
    rule: &R,
    rho: f64,
    g: &ParamSet,
    w: &ParamSet,
) -> Perturbed {
    perturb(rule, rho, g, w, false).0
}

/// [`perturbed_weights`], and the rule's state for the next step, a' = u(g, a) for every
/// coordinate, when it [updates its state](DiagonalRule::updates_state) and has one (`None`
/// otherwise). On the fused path one pass reads g and a and writes f and a', and a second turns f
/// into w + s·f in place, where w + ε and a separate update would read g and a three times and
/// evaluate f twice. The same bits as [`perturbed_weights`] and [`updated_state`].
pub fn perturbed_weights_and_state<R: DiagonalRule + Preconditioner>(
    rule: &R,
    rho: f64,
    g: &ParamSet,
    w: &ParamSet,
) -> (Perturbed, Option<ParamSet>) {
    perturb(rule, rho, g, w, true)
}

/// The rule's state after this step, a' = u(g, a) for every coordinate
/// ([`DiagonalRule::state_update`]), by a fused host pass or tensor operations (the same bits);
/// `None` unless the rule [updates its state](DiagonalRule::updates_state) and has one.
pub fn updated_state<R: DiagonalRule + Sync>(rule: &R, g: &ParamSet) -> Option<ParamSet> {
    let a = rule.auxiliary().filter(|_| rule.updates_state())?;
    // The weights are not read: g stands in for them.
    let Some(inputs) = host_inputs(rule, g, g) else {
        let update = rule.state_update::<Tensor<1>>();
        return Some(g.map(|e| update(e.value.clone(), matching(a, e, "state").value.clone())));
    };
    Some(host::in_pool(|| {
        g.map_indexed(|i, e| {
            by_dtype!(e.value.dtype(), |E| {
                let kernel = kernel::<E, R>(rule, e, &inputs[i], true);
                host::tensor_like(kernel.written(Output::State, Need::NOTHING).0, &e.value)
            })
        })
    }))
}

/// w + ε, with the state for the next step if `update_state` (see [`perturbed_weights_and_state`]).
fn perturb<R: DiagonalRule + Preconditioner>(
    rule: &R,
    rho: f64,
    g: &ParamSet,
    w: &ParamSet,
    update_state: bool,
) -> (Perturbed, Option<ParamSet>) {
    let normalization = rule.normalization();
    let by_epsilon = |p: Perturbation| {
        let perturbed = Perturbed {
            weights: p.apply_to(w),
            squared_norm: p.squared_norm,
        };
        (
            perturbed,
            update_state.then(|| updated_state(rule, g)).flatten(),
        )
    };
    let Some(inputs) = host_inputs(rule, g, w) else {
        return by_epsilon(unfused(rule, rho, g, w));
    };
    if rule.keeps_gradient() {
        return by_epsilon(gradient_direction(rule, normalization, rho, g));
    }
    let has_state = rule.auxiliary().is_some();
    let for_scale = match normalization {
        Normalization::Constraint => Need::GD,
        Normalization::Objective => Need::DD,
        Normalization::Gradient => Need::NOTHING,
    };
    if update_state && has_state && rule.updates_state() {
        return with_state(rule, rho, g, &inputs);
    }
    host::in_pool(|| {
        let mut sums = Sums::default();
        if for_scale != Need::NOTHING {
            for (e, x) in g.iter().zip(&inputs) {
                sums.add(by_dtype!(e.value.dtype(), |E| {
                    kernel::<E, R>(rule, e, x, has_state).sums(for_scale)
                }));
            }
        }
        let s = scale(rule, normalization, rho, g, sums);
        let while_writing = match for_scale.dd {
            true => Need::NOTHING,
            false => Need::DD,
        };
        let weights = g.map_indexed(|i, e| {
            by_dtype!(e.value.dtype(), |E| {
                let kernel = kernel::<E, R>(rule, e, &inputs[i], has_state);
                let (values, written) =
                    kernel.written(Output::Perturbed(E::from_f64(s)), while_writing);
                sums.add(written);
                host::tensor_like(values, &e.value)
            })
        });
        let perturbed = Perturbed {
            weights,
            squared_norm: s * s * sums.dd,
        };
        (perturbed, None)
    })
}

/// The fused path of [`perturbed_weights_and_state`] for a rule that writes its state: one pass
/// reads (g, w, a) and writes f, into the buffer that becomes w + ε, and a', with the sums; a
/// second turns f into w + s·f in place. Evaluating f again in the second pass instead, as
/// [`perturb`] does without state, would read g and a again: the same traffic as storing f, with
/// f evaluated twice (infoSAM's has a division per coordinate). The same bits either way.
///
/// Measured (step benchmark, 2 cores): infoSAM's w + ε with its state 0.18–0.20 ms alone and
/// 0.33–0.34 ms inside steps, against 0.30–0.32 and 0.41–0.44 when f was evaluated twice. For
/// rules without state, storing f measured slower than evaluating it twice (ASAM 0.27–0.29 against
/// 0.24 ms alone; Fisher 0.29 against 0.23), since their norm pass writes nothing.
fn with_state<R: DiagonalRule + Preconditioner>(
    rule: &R,
    rho: f64,
    g: &ParamSet,
    inputs: &[[FlexTensor; 3]],
) -> (Perturbed, Option<ParamSet>) {
    let normalization = rule.normalization();
    let need = match normalization {
        Normalization::Constraint => Need::GD_DD,
        _ => Need::DD,
    };
    host::in_pool(|| {
        let mut sums = Sums::default();
        // f of each tensor (a `Vec` of its element type) until it becomes w + ε.
        let mut directions: Vec<Box<dyn Any + Send>> = Vec::with_capacity(inputs.len());
        let state = g.map_indexed(|i, e| {
            by_dtype!(e.value.dtype(), |E| {
                let kernel = kernel::<E, R>(rule, e, &inputs[i], true);
                let ([f, state], s) = kernel.direction_and_state(need);
                sums.add(s);
                directions.push(Box::new(f));
                host::tensor_like(state, &e.value)
            })
        });
        let s = scale(rule, normalization, rho, g, sums);
        let mut directions = directions.into_iter();
        let weights = g.map_indexed(|i, e| {
            let f = directions.next().expect("a direction per tensor");
            by_dtype!(e.value.dtype(), |E| {
                let mut f = *f
                    .downcast::<Vec<E>>()
                    .expect("f in the tensor's element type");
                let (s, w) = (E::from_f64(s), host::values::<E>(&inputs[i][1], f.len()));
                // w + s·f, as `fused_block` and `ParamSet::add_scaled` compute it.
                host::update_blocks(&mut f, |r, out| {
                    for (o, &w) in out.iter_mut().zip(&w[r]) {
                        *o = w + s * *o;
                    }
                });
                host::tensor_like(f, &e.value)
            })
        });
        let perturbed = Perturbed {
            weights,
            squared_norm: s * s * sums.dd,
        };
        (perturbed, Some(state))
    })
}

/// Evaluates `$body` with `$E` the element type of `$dtype` (`f32`, else `f64`).
macro_rules! by_dtype {
    ($dtype:expr, |$E:ident| $body:expr) => {
        match $dtype {
            DType::F32 => {
                type $E = f32;
                $body
            }
            _ => {
                type $E = f64;
                $body
            }
        }
    };
}
use by_dtype;

/// The host storages (g, w, a) of every tensor, `None` unless all are contiguous `f32`/`f64` CPU
/// tensors. Without state, `g` stands in for `a` (the rule never reads it).
fn host_inputs<R: DiagonalRule>(
    rule: &R,
    g: &ParamSet,
    w: &ParamSet,
) -> Option<Vec<[FlexTensor; 3]>> {
    let aux = rule.auxiliary();
    g.iter()
        .map(|e| {
            let weights = &matching(w, e, "weights").value;
            let state = aux.map_or(&e.value, |a| &matching(a, e, "state").value);
            host::hosts([&e.value, weights, state])
        })
        .collect()
}

/// The tensor of `set` with the id of the gradient tensor `e`. A set without it is a programming
/// error (weights and state always have the gradient's layout).
fn matching<'a>(set: &'a ParamSet, e: &ParamTensor, what: &str) -> &'a ParamTensor {
    set.get(e.id)
        .unwrap_or_else(|| panic!("the {what} have no tensor for `{}`", e.path))
}

/// Sums over the coordinates of f: gᵀf (the constraint form's norm) and ‖f‖² (for ‖ε‖², and the
/// objective form's norm).
#[derive(Default, Clone, Copy)]
struct Sums {
    gd: f64,
    dd: f64,
}

impl Sums {
    fn add(&mut self, o: Sums) {
        self.gd += o.gd;
        self.dd += o.dd;
    }

    /// The sum of per-block sums, in block order (so it does not depend on the thread count).
    fn total(blocks: Vec<Sums>) -> Sums {
        let mut sums = Sums::default();
        blocks.iter().for_each(|s| sums.add(*s));
        sums
    }
}

/// Which [`Sums`] a fused pass accumulates.
#[derive(Clone, Copy, PartialEq, Eq)]
struct Need {
    gd: bool,
    dd: bool,
}

impl Need {
    const NOTHING: Need = Need {
        gd: false,
        dd: false,
    };
    const GD: Need = Need {
        gd: true,
        dd: false,
    };
    const DD: Need = Need {
        gd: false,
        dd: true,
    };
    const GD_DD: Need = Need { gd: true, dd: true };
}

/// What a fused pass writes for each coordinate.
#[derive(Clone, Copy)]
enum Output<E> {
    /// Nothing: a read-only pass for sums.
    Nothing,
    /// f(g, w, a).
    Direction,
    /// w + s·f(g, w, a).
    Perturbed(E),
    /// The rule's state for the next step, u(g, a), into the state output.
    State,
    /// f(g, w, a), and u(g, a) into the state output.
    DirectionAndState,
}

/// The fused loops over one tensor: its host slices, and the rule and its state update on
/// [`Lanes`] and on single coordinates.
struct Kernel<'a, E, FL, F1, UL, U1> {
    g: &'a [E],
    w: &'a [E],
    a: &'a [E],
    has_state: bool,
    lanes: FL,
    one: F1,
    update_lanes: UL,
    update_one: U1,
}

#[allow(clippy::type_complexity)] // the two closures of `rule_for` (no alias for `impl Fn` types)
fn kernel<'a, E: HostFloat, R: DiagonalRule>(
    rule: &'a R,
    e: &'a ParamTensor,
    [g, w, a]: &'a [FlexTensor; 3],
    has_state: bool,
) -> Kernel<
    'a,
    E,
    impl Fn(Lanes<E>, Lanes<E>, Option<Lanes<E>>) -> Lanes<E> + Sync + 'a,
    impl Fn(E, E, Option<E>) -> E + Sync + 'a,
    impl Fn(Lanes<E>, Lanes<E>) -> Lanes<E> + Sync + 'a,
    impl Fn(E, E) -> E + Sync + 'a,
> {
    let n = e.value.dims()[0];
    Kernel {
        g: host::values(g, n),
        w: host::values(w, n),
        a: host::values(a, n),
        has_state,
        lanes: rule.rule_for::<Lanes<E>>(e),
        one: rule.rule_for::<E>(e),
        update_lanes: rule.state_update::<Lanes<E>>(),
        update_one: rule.state_update::<E>(),
    }
}

impl<E, FL, F1, UL, U1> Kernel<'_, E, FL, F1, UL, U1>
where
    E: HostFloat,
    FL: Fn(Lanes<E>, Lanes<E>, Option<Lanes<E>>) -> Lanes<E> + Sync,
    F1: Fn(E, E, Option<E>) -> E + Sync,
    UL: Fn(Lanes<E>, Lanes<E>) -> Lanes<E> + Sync,
    U1: Fn(E, E) -> E + Sync,
{
    /// f, written once, with the sums `normalization` needs and ‖f‖².
    fn direction(&self, normalization: Normalization) -> (Vec<E>, Sums) {
        let constraint = normalization == Normalization::Constraint;
        // SAFETY: `Output::Direction` writes all of `out` (see `block`), which is then read as
        // initialised.
        let ([f], blocks) = unsafe {
            host::write_blocks(self.g.len(), |r, [out]| {
                self.block(r.clone(), [out, &mut []], Output::Direction, Need::NOTHING);
                let f = std::slice::from_raw_parts(out.as_ptr().cast::<E>(), out.len());
                // The sums over the block just written, still in cache: as simple loops these
                // measured 2× faster than summing inside the loop that writes f. The same order
                // of additions as there, so the bits agree with `perturbed`'s.
                let g = &self.g[r];
                Sums {
                    gd: if constraint { dot(g, f) } else { 0.0 },
                    dd: dot(f, f),
                }
            })
        };
        (f, Sums::total(blocks))
    }

    /// The sums `need`, reading only.
    fn sums(&self, need: Need) -> Sums {
        Sums::total(host::reduce_blocks(self.g.len(), |r| {
            self.block(r, [&mut [], &mut []], Output::Nothing, need)
        }))
    }

    /// `output` (w + s·f, or the next state), with the sums `need`.
    fn written(&self, output: Output<E>, need: Need) -> (Vec<E>, Sums) {
        // SAFETY: `Output::Perturbed` writes all of the main output, `Output::State` all of the
        // state output (see `block`).
        let ([values], blocks) = unsafe {
            host::write_blocks(self.g.len(), |r, [out]| match output {
                Output::Perturbed(_) => self.block(r, [out, &mut []], output, need),
                Output::State => self.block(r, [&mut [], out], output, need),
                _ => unreachable!("`written` writes w + s·f or the state"),
            })
        };
        (values, Sums::total(blocks))
    }

    /// f and the next state, in one pass, with the sums `need`.
    fn direction_and_state(&self, need: Need) -> ([Vec<E>; 2], Sums) {
        // SAFETY: `Output::DirectionAndState` writes all of both outputs (see `block`).
        let (values, blocks) = unsafe {
            host::write_blocks(self.g.len(), |r, outs| {
                self.block(r, outs, Output::DirectionAndState, need)
            })
        };
        (values, Sums::total(blocks))
    }

    /// One block, coordinates `r`: `output` into `outs` (see [`Outs`]; an output that is written
    /// has the length of `r` and is written whole, the others are empty), and the block's sums
    /// `need`.
    #[inline(always)]
    fn block(&self, r: Range<usize>, outs: Outs<'_, E>, output: Output<E>, need: Need) -> Sums {
        match (need.gd, need.dd) {
            (false, false) => self.block_for::<false, false>(r, outs, output),
            (true, false) => self.block_for::<true, false>(r, outs, output),
            (false, true) => self.block_for::<false, true>(r, outs, output),
            (true, true) => self.block_for::<true, true>(r, outs, output),
        }
    }

    /// [`Kernel::block`] with the sums as constants, so each combination is its own loop.
    #[inline(always)]
    fn block_for<const GD: bool, const DD: bool>(
        &self,
        r: Range<usize>,
        outs: Outs<'_, E>,
        output: Output<E>,
    ) -> Sums {
        let (g, w) = (&self.g[r.clone()], &self.w[r.clone()]);
        let (lanes, one) = (&self.lanes, &self.one);
        match self.has_state {
            true => fused_block::<E, GD, DD>(
                (g, w, &self.a[r], outs),
                (|g, w, a| lanes(g, w, Some(a)), &self.update_lanes),
                (|g, w, a| one(g, w, Some(a)), &self.update_one),
                output,
            ),
            // Without state there is no update (`Output::State` is never asked for).
            false => fused_block::<E, GD, DD>(
                (g, w, g, outs),
                (|g, w, _| lanes(g, w, None), |_, a| a),
                (|g, w, _| one(g, w, None), |_, a| a),
                output,
            ),
        }
    }
}

/// A block's outputs: the main one (f or w + s·f) and the state's.
type Outs<'a, E> = [&'a mut [MaybeUninit<E>]; 2];

/// One block's inputs g, w, a (of equal length) and its outputs.
type BlockIo<'a, E> = (&'a [E], &'a [E], &'a [E], Outs<'a, E>);

/// The fused loop over one block: f(g, w, a) on [`Lanes`] of coordinates (`f_lanes`, which the
/// compiler turns into SIMD instructions) and on single coordinates for the block's tail
/// (`f_one`), each with the state update u(g, a) (`u_lanes`, `u_one`); `output` written to `out`
/// and the state to `state`, every element of those it names (the chunks and the tail of
/// equal-length slices cover them); and, in the same loop, the sums gᵀf (if `GD`) and ‖f‖² (if
/// `DD`) on independent lanes in the element type, the tail in f64. Every fused pass sums this
/// way, so they all agree bit for bit; w + s·f is computed as in [`ParamSet::add_scaled`], so the
/// two agree bit for bit.
///
/// Measured inside real steps (MLP benchmark), this one loop beats computing f into a small
/// buffer and then running the sums and the output as separate simple loops, although that
/// variant is up to 2× faster when the data is already in cache: ASAM's w + ε 0.57 against
/// 0.70–0.79 ms, SSAM-F's 0.44–0.50 against 0.60–0.70; and infoSAM's f with its state, summed in
/// the loop, 0.33–0.34 ms in steps against 0.41 with the sums as separate loops (0.17 against
/// 0.18–0.20 alone).
#[inline(always)]
fn fused_block<E: HostFloat, const GD: bool, const DD: bool>(
    (g, w, a, [out, state]): BlockIo<'_, E>,
    (f_lanes, u_lanes): (
        impl Fn(Lanes<E>, Lanes<E>, Lanes<E>) -> Lanes<E>,
        impl Fn(Lanes<E>, Lanes<E>) -> Lanes<E>,
    ),
    (f_one, u_one): (impl Fn(E, E, E) -> E, impl Fn(E, E) -> E),
    output: Output<E>,
) -> Sums {
    let n = g.len();
    let (w, a) = (&w[..n], &a[..n]);
    let ((gc, gt), (wc, wt), (ac, at)) = (
        g.as_chunks::<LANES>(),
        w.as_chunks::<LANES>(),
        a.as_chunks::<LANES>(),
    );
    let zero = Lanes([E::from_f64(0.0); LANES]);
    let (mut gd, mut dd) = (zero, zero);
    let (mut gd_tail, mut dd_tail) = (0.0f64, 0.0f64);
    macro_rules! accumulate {
        ($g:expr, $f:expr) => {
            if GD {
                gd = gd + $g * $f;
            }
            if DD {
                dd = dd + $f * $f;
            }
        };
    }
    let chunks = gc.iter().zip(wc).zip(ac);
    match output {
        Output::Nothing => {
            for ((g, w), a) in chunks {
                let f = f_lanes(Lanes(*g), Lanes(*w), Lanes(*a));
                accumulate!(Lanes(*g), f);
            }
        }
        Output::Direction => {
            for (((g, w), a), out) in chunks.zip(out.as_chunks_mut::<LANES>().0) {
                let f = f_lanes(Lanes(*g), Lanes(*w), Lanes(*a));
                accumulate!(Lanes(*g), f);
                write_lanes(out, f);
            }
        }
        Output::Perturbed(s) => {
            let s_lanes = Lanes([s; LANES]);
            for (((g, w), a), out) in chunks.zip(out.as_chunks_mut::<LANES>().0) {
                let f = f_lanes(Lanes(*g), Lanes(*w), Lanes(*a));
                accumulate!(Lanes(*g), f);
                write_lanes(out, Lanes(*w) + s_lanes * f);
            }
        }
        Output::State => {
            for (((g, w), a), state) in chunks.zip(state.as_chunks_mut::<LANES>().0) {
                let f = f_lanes(Lanes(*g), Lanes(*w), Lanes(*a));
                accumulate!(Lanes(*g), f);
                write_lanes(state, u_lanes(Lanes(*g), Lanes(*a)));
            }
        }
        Output::DirectionAndState => {
            let outs = out.as_chunks_mut::<LANES>().0.iter_mut();
            for ((((g, w), a), out), state) in
                chunks.zip(outs).zip(state.as_chunks_mut::<LANES>().0)
            {
                let f = f_lanes(Lanes(*g), Lanes(*w), Lanes(*a));
                accumulate!(Lanes(*g), f);
                write_lanes(out, f);
                write_lanes(state, u_lanes(Lanes(*g), Lanes(*a)));
            }
        }
    }
    let tail_start = n - gt.len();
    for (i, ((&g, &w), &a)) in gt.iter().zip(wt).zip(at).enumerate() {
        let f = f_one(g, w, a);
        if GD {
            gd_tail += g.into() * f.into();
        }
        if DD {
            dd_tail += f.into() * f.into();
        }
        match output {
            Output::Nothing => {}
            Output::Direction => _ = out[tail_start + i].write(f),
            Output::Perturbed(s) => _ = out[tail_start + i].write(w + s * f),
            Output::State => _ = state[tail_start + i].write(u_one(g, a)),
            Output::DirectionAndState => {
                out[tail_start + i].write(f);
                state[tail_start + i].write(u_one(g, a));
            }
        }
    }
    Sums {
        gd: if GD { gd.total() + gd_tail } else { 0.0 },
        dd: if DD { dd.total() + dd_tail } else { 0.0 },
    }
}

/// xᵀy as [`fused_block`] sums it: [`LANES`] independent accumulators in the element type over
/// the whole lanes, in order, then the ragged tail in f64.
#[inline(always)]
fn dot<E: HostFloat>(x: &[E], y: &[E]) -> f64 {
    let ((xc, xt), (yc, yt)) = (x.as_chunks::<LANES>(), y[..x.len()].as_chunks::<LANES>());
    let mut lanes = Lanes([E::from_f64(0.0); LANES]);
    for (x, y) in xc.iter().zip(yc) {
        lanes = lanes + Lanes(*x) * Lanes(*y);
    }
    let mut tail = 0.0f64;
    for (&x, &y) in xt.iter().zip(yt) {
        tail += x.into() * y.into();
    }
    lanes.total() + tail
}

#[inline(always)]
fn write_lanes<E: HostFloat>(out: &mut [MaybeUninit<E>; LANES], values: Lanes<E>) {
    for (o, &x) in out.iter_mut().zip(&values.0) {
        o.write(x);
    }
}

/// Coordinates per [`Lanes`] value.
const LANES: usize = 8;

/// [`LANES`] consecutive coordinates, a [`Coordinate`] whose operations act lane by lane: the
/// fused loops run a rule on these, which the compiler turns into SIMD instructions.
#[derive(Clone, Copy)]
struct Lanes<E>([E; LANES]);

impl<E: HostFloat> Lanes<E> {
    #[inline(always)]
    fn map(mut self, f: impl Fn(E) -> E) -> Self {
        for x in &mut self.0 {
            *x = f(*x);
        }
        self
    }
    #[inline(always)]
    fn zip(mut self, other: Self, f: impl Fn(E, E) -> E) -> Self {
        for (x, y) in self.0.iter_mut().zip(other.0) {
            *x = f(*x, y);
        }
        self
    }
    /// The sum of the lanes, in f64.
    fn total(self) -> f64 {
        self.0.iter().map(|&x| x.into()).sum()
    }
}

macro_rules! lane_wise {
    ($($trait:ident :: $method:ident),*) => {$(
        impl<E: HostFloat> $trait for Lanes<E> {
            type Output = Self;
            #[inline(always)]
            fn $method(self, other: Self) -> Self {
                self.zip(other, |a, b| a.$method(b))
            }
        }
    )*};
}
lane_wise!(Add::add, Sub::sub, Mul::mul, Div::div);

impl<E: HostFloat> Coordinate for Lanes<E> {
    #[inline(always)]
    fn abs(self) -> Self {
        self.map(E::abs)
    }
    #[inline(always)]
    fn square(self) -> Self {
        self.map(E::square)
    }
    #[inline(always)]
    fn add_scalar(self, c: f64) -> Self {
        let c = E::from_f64(c);
        self.map(|x| x + c)
    }
    #[inline(always)]
    fn mul_scalar(self, c: f64) -> Self {
        let c = E::from_f64(c);
        self.map(|x| x * c)
    }
}
