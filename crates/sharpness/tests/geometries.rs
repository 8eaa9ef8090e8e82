//! Every built-in geometry against an independent evaluation of its formula (plain f64 loops
//! over the coordinates), on parameter sets of several tensors in f32 and f64; a user-defined
//! geometry from outside the crate, diagonal and not; and state restored on an autodiff device.

use burn::optim::{StateSink, StateSource};
use burn::tensor::{DType, Device, Distribution, Tensor};
use sharpness::perturb::{
    Asam, AsamScope, FisherSam, InfoSam, MongeSam, Normalization, Preconditioner, Sam, Ssam, XI,
    perturbation,
};
use sharpness::{Lifecycle, ParamSet, StateRecord};

fn normal_values(seed: u64, n: usize, scale: f64) -> Vec<f64> {
    let device = Device::flex();
    device.seed(seed);
    Tensor::<1>::random([n], Distribution::Normal(0.0, scale), &device)
        .into_data()
        .convert::<f64>()
        .try_into_vec::<f64>()
        .unwrap()
}

/// A weight matrix, a norm scale and a bias (`sizes` coordinates each), in `dtype`.
fn random_set(seed: u64, sizes: [usize; 3], dtype: DType, scale: f64) -> ParamSet {
    let values = normal_values(seed, sizes.iter().sum(), scale);
    let (a, b) = (sizes[0], sizes[0] + sizes[1]);
    ParamSet::from_values(
        &Device::flex(),
        &[
            ("fc.weight", &[sizes[0]], &values[..a]),
            ("bn.gamma", &[sizes[1]], &values[a..b]),
            ("fc.bias", &[sizes[2]], &values[b..]),
        ],
    )
    .map(|e| e.value.clone().cast(dtype))
}

/// The coordinates of `set` with the field name of the tensor each belongs to.
fn fields(set: &ParamSet) -> Vec<String> {
    set.iter()
        .flat_map(|e| vec![e.field_name().to_string(); e.dims.iter().product()])
        .collect()
}

/// ε = ρ d/‖d‖_* from the reference direction, in f64.
fn reference_epsilon(form: Normalization, rho: f64, g: &[f64], d: &[f64]) -> Vec<f64> {
    let dot = |a: &[f64], b: &[f64]| a.iter().zip(b).map(|(x, y)| x * y).sum::<f64>();
    let norm = match form {
        Normalization::Constraint => dot(g, d).max(0.0).sqrt(),
        Normalization::Objective => dot(d, d).sqrt(),
        Normalization::Gradient => dot(g, g).sqrt(),
    };
    d.iter().map(|x| rho * x / (norm + XI)).collect()
}

/// Checks ε and w + ε of `geometry` against the reference direction `d` normalised by the
/// paper's `form`.
fn check(
    name: &str,
    geometry: &impl Preconditioner,
    (g, w): (&ParamSet, &ParamSet),
    form: Normalization,
    d: &[f64],
) {
    let tol = match g.iter().next().unwrap().value.dtype() {
        DType::F64 => 1e-12,
        _ => 2e-5,
    };
    let rho = 0.07;
    let expected = reference_epsilon(form, rho, &g.to_vec(), d);
    let scale = expected.iter().fold(0.0f64, |m, x| m.max(x.abs()));
    assert!(scale > 0.0, "{name}: the reference ε is zero");
    let p = perturbation(geometry, rho, g, w);
    let close = |what: &str, actual: &[f64], expected: &[f64]| {
        for (i, (a, e)) in actual.iter().zip(expected).enumerate() {
            assert!(
                (a - e).abs() <= tol * scale.max(e.abs()),
                "{name}, {what}, coordinate {i}: {a} vs reference {e}"
            );
        }
    };
    close("ε", &p.epsilon().to_vec(), &expected);
    let norm: f64 = expected.iter().map(|e| e * e).sum();
    assert!(
        (p.squared_norm() - norm).abs() <= 10.0 * tol * norm && !p.is_zero,
        "{name}: ‖ε‖² {} vs {norm}",
        p.squared_norm()
    );
    let w_plus: Vec<f64> = w
        .to_vec()
        .iter()
        .zip(&expected)
        .map(|(w, e)| w + e)
        .collect();
    close("w + ε", &p.apply_to(w).to_vec(), &w_plus);
    // Perturbing leaves the geometry's state as it was: the same ε again.
    let again = perturbation(geometry, rho, g, w).epsilon().to_vec();
    close("ε again", &again, &expected);
}

/// The paper's form of each method: SAM, ASAM, Fisher and Monge are constraint-preconditioned
/// (Monge with C g = g/(1+‖g‖²)), infoSAM objective-preconditioned, SSAM gradient-normalised.
fn all_geometries(g: &ParamSet, w: &ParamSet) {
    use Normalization::{Constraint, Gradient, Objective};
    let (gv, wv, names) = (g.to_vec(), w.to_vec(), fields(g));
    let gg: f64 = gv.iter().map(|x| x * x).sum();
    check("sam", &Sam, (g, w), Constraint, &gv);
    let monge: Vec<f64> = gv.iter().map(|x| x / (1.0 + gg)).collect();
    check("msam", &MongeSam, (g, w), Constraint, &monge);
    let eta = 2.0;
    let fisher: Vec<f64> = gv.iter().map(|x| x / (1.0 + eta * x * x)).collect();
    check(
        "fisher",
        &FisherSam::new(eta).unwrap(),
        (g, w),
        Constraint,
        &fisher,
    );
    for (scope, eta) in [(AsamScope::Weights, 0.01), (AsamScope::All, 0.1)] {
        let asam: Vec<f64> = (0..gv.len())
            .map(|i| {
                let rescaled = scope == AsamScope::All || names[i] != "bias";
                match rescaled {
                    true => gv[i] * (wv[i].abs() + eta).powi(2),
                    false => gv[i],
                }
            })
            .collect();
        let name = format!("asam ({scope:?})");
        check(
            &name,
            &Asam::new(eta, scope).unwrap(),
            (g, w),
            Constraint,
            &asam,
        );
    }
    // infoSAM: plain SAM on the first step, then g/(α²(m − g)² + δ) with m the committed average.
    let (alpha, damping) = (0.8, 1e-6);
    let mut info = InfoSam::new(alpha, damping).unwrap();
    check("infosam (first step)", &info, (g, w), Objective, &gv);
    let first = w.scale(0.5); // any earlier gradient
    info.commit(&first);
    let m = first.to_vec();
    let infosam: Vec<f64> = (0..gv.len())
        .map(|i| gv[i] / (alpha * alpha * (m[i] - gv[i]).powi(2) + damping))
        .collect();
    check("infosam", &info, (g, w), Objective, &infosam);
    // SSAM: the mask keeps the half of the coordinates with the largest Fisher value (here w²).
    let mut ssam = Ssam::new(0.5, 4, 1).unwrap();
    ssam.set_mask_from_fisher(&w.mul(w));
    let mut order: Vec<usize> = (0..wv.len()).collect();
    order.sort_by(|&a, &b| (wv[b] * wv[b]).total_cmp(&(wv[a] * wv[a])).then(a.cmp(&b)));
    let mut masked = vec![0.0; gv.len()];
    for &i in &order[..gv.len() / 2] {
        masked[i] = gv[i];
    }
    check("ssam", &ssam, (g, w), Gradient, &masked);
}

#[test]
fn every_geometry_matches_its_formula_in_f64() {
    let g = random_set(1, [1000, 29, 8], DType::F64, 0.3);
    let w = g.with_values(&normal_values(2, g.num_elements(), 1.0));
    all_geometries(&g, &w);
}

#[test]
fn every_geometry_matches_its_formula_in_f32_on_large_tensors() {
    // Large gradients make Monge's global factor matter (‖g‖² ≈ 70 000 · 0.25).
    let g = random_set(3, [70_001, 300, 17], DType::F32, 0.5);
    let w = g.with_values(&normal_values(4, g.num_elements(), 1.0));
    all_geometries(&g, &w);
}

#[test]
fn ssam_without_a_mask_is_exactly_zero() {
    let g = random_set(6, [100, 5, 3], DType::F32, 1.0);
    let p = perturbation(&Ssam::new(0.5, 4, 1).unwrap(), 0.1, &g, &g);
    assert!(p.is_zero);
    assert_eq!(p.squared_norm(), 0.0);
    assert!(p.epsilon().to_vec().iter().all(|x| *x == 0.0));
}

/// A user's diagonal geometry, written outside the crate: d = sign(g) ⊙ |g|^½ (a damped SAM),
/// normalised on the objective ball. One struct, one `Preconditioner`, an empty `Lifecycle`.
#[derive(Clone)]
struct SqrtSam;

impl Lifecycle for SqrtSam {}

impl Preconditioner for SqrtSam {
    fn name(&self) -> String {
        "sqrt-sam".into()
    }
    fn normalization(&self) -> Normalization {
        Normalization::Objective
    }
    fn direction(&self, g: &ParamSet, _w: &ParamSet) -> ParamSet {
        g.map(|e| e.value.clone().sign() * e.value.clone().abs().sqrt())
    }
}

#[test]
fn a_user_diagonal_geometry_is_normalised_like_the_built_in_ones() {
    use Normalization::Objective;
    let g = random_set(9, [300, 10, 4], DType::F64, 1.0);
    let d: Vec<f64> = g
        .to_vec()
        .iter()
        .map(|x| x.signum() * x.abs().sqrt())
        .collect();
    check("sqrt-sam", &SqrtSam, (&g, &g), Objective, &d);
}

/// A user's geometry that is not diagonal: C = I + u uᵀ for a fixed vector u, so
/// C g = g + u (uᵀg) — a rank-one correction.
#[derive(Clone)]
struct RankOne {
    u: ParamSet,
}

impl Lifecycle for RankOne {}

impl Preconditioner for RankOne {
    fn name(&self) -> String {
        "rank-one".into()
    }
    fn normalization(&self) -> Normalization {
        Normalization::Constraint
    }
    fn direction(&self, g: &ParamSet, _w: &ParamSet) -> ParamSet {
        g.add_scaled(self.u.dot(g), &self.u)
    }
}

#[test]
fn a_user_preconditioner_gets_the_constraint_form_closed_form() {
    use Normalization::Constraint;
    let g = random_set(7, [40, 29, 8], DType::F64, 1.0);
    let u = g.with_values(&normal_values(8, g.num_elements(), 0.1));
    let (gv, uv) = (g.to_vec(), u.to_vec());
    let ug: f64 = gv.iter().zip(&uv).map(|(a, b)| a * b).sum();
    let cg: Vec<f64> = gv.iter().zip(&uv).map(|(g, u)| g + u * ug).collect();
    check(
        "rank-one",
        &RankOne { u: u.clone() },
        (&g, &g),
        Constraint,
        &cg,
    );
    // It lies on its constraint ball: εᵀC⁻¹ε = ρ², i.e. gᵀε = ρ √(gᵀCg).
    let rho = 0.2;
    let eps = perturbation(&RankOne { u }, rho, &g, &g).epsilon().to_vec();
    let gcg: f64 = gv.iter().zip(&cg).map(|(a, b)| a * b).sum();
    let ge: f64 = gv.iter().zip(&eps).map(|(a, b)| a * b).sum();
    assert!((ge - rho * gcg.sqrt()).abs() < 1e-9);
}

/// State saved from gradients of a model on an autodiff device and restored there (as after a
/// resume) gives the same perturbation, bit for bit.
#[test]
fn state_restored_on_an_autodiff_device_gives_the_same_perturbation() {
    use burn::nn::{Linear, LinearConfig};
    let device = Device::flex().autodiff();
    device.seed(0);
    let model: Linear = LinearConfig::new(13, 5).init(&device);
    let x = Tensor::<2>::random([4, 13], Distribution::Normal(0.0, 1.0), &device);
    let loss = model.forward(x).square().mean();
    let grads = burn::optim::GradientsParams::from_grads(loss.backward(), &model);
    let g = ParamSet::from_gradients(&model, &grads);
    let w = ParamSet::weights_like(&model, &g);
    assert_eq!(g.len(), 2);

    let mut info = InfoSam::default();
    info.commit(&g.scale(0.5));
    let mut sink = StateSink::default();
    info.save_state("info", &mut sink);
    let bytes = StateRecord::from_sink(sink).into_bytes().unwrap();
    let mut source: StateSource = StateRecord::from_bytes(bytes)
        .unwrap()
        .into_source()
        .unwrap();
    let mut restored = InfoSam::default();
    restored.load_state("info", &mut source, &device).unwrap();
    let before = perturbation(&info, 0.1, &g, &w).epsilon().to_vec();
    let after = perturbation(&restored, 0.1, &g, &w).epsilon().to_vec();
    assert_eq!(after, before);
    // Without a saved average the state is the first step's (none), not an error.
    let mut fresh = InfoSam::default();
    let mut empty = StateRecord::default().into_source().unwrap();
    fresh.load_state("info", &mut empty, &device).unwrap();
    assert_eq!(
        perturbation(&fresh, 0.1, &g, &w).epsilon().to_vec(),
        perturbation(&Sam, 0.1, &g, &w).epsilon().to_vec()
    );
}
