//! The fused CPU paths against tensor operations: every diagonal rule, on f32 and f64 parameter
//! sets whose sizes exercise the vector loop, its tail and the block-parallel loops; the one-pass
//! linear combinations of `ParamSet`; and a user-defined, non-diagonal preconditioner plugged into
//! the same two-pass machinery.

use burn::tensor::{DType, Device, Distribution, Tensor};
use sharpness::ParamSet;
use sharpness::perturb::diagonal::{self, DiagonalRule};
use sharpness::perturb::{
    Asam, AsamScope, FisherSam, InfoSam, MongeSam, Normalization, Preconditioner, Sam, Ssam,
    TwoPass, normalize,
};

fn normal_values(seed: u64, scale: f64) -> Vec<f64> {
    let device = Device::flex();
    device.seed(seed);
    Tensor::<1>::random([1037], Distribution::Normal(0.0, scale), &device)
        .into_data()
        .convert::<f64>()
        .try_into_vec::<f64>()
        .unwrap()
}

/// Three tensors (a weight matrix, a norm scale, a bias) of 1 037 coordinates, in `dtype`.
fn random_set(seed: u64, dtype: DType, scale: f64) -> ParamSet {
    let values = normal_values(seed, scale);
    let set = ParamSet::from_values(
        &Device::flex(),
        &[
            ("fc.weight", &[40, 25], &values[..1000]),
            ("bn.gamma", &[29], &values[1000..1029]),
            ("fc.bias", &[8], &values[1029..]),
        ],
    );
    set.map(|e| e.value.clone().cast(dtype))
}

/// Random values with the layout (and dtypes) of `like`.
fn random_like(like: &ParamSet, seed: u64, scale: f64) -> ParamSet {
    like.with_values(&normal_values(seed, scale))
}

fn assert_same(
    name: &str,
    fused: &sharpness::perturb::Perturbation,
    ops: &sharpness::perturb::Perturbation,
    tol: f64,
) {
    let (a, b) = (fused.epsilon().to_vec(), ops.epsilon().to_vec());
    let scale = b.iter().fold(0.0f64, |m, x| m.max(x.abs()));
    assert!(scale > 0.0, "{name}: ε is zero");
    for (i, (x, y)) in a.iter().zip(&b).enumerate() {
        assert!(
            (x - y).abs() <= tol * scale,
            "{name}, coordinate {i}: fused {x} vs tensor ops {y}"
        );
    }
    let n = ops.epsilon().squared_norm();
    assert!(
        (fused.squared_norm - n).abs() <= tol * n,
        "{name}: ‖ε‖² {} vs {n}",
        fused.squared_norm
    );
}

fn check<R: DiagonalRule + Preconditioner>(
    name: &str,
    rule: &R,
    g: &ParamSet,
    w: &ParamSet,
    tol: f64,
) {
    let rho = 0.07;
    let n = rule.normalization();
    let fused = diagonal::fused(rule, n, rho, g, w).expect("Flex tensors take the fused path");
    // The rule as tensor operations, normalised two ways: λ in the scale (the fallback of
    // `diagonal::perturbation` on other backends) and λ in the direction (the trait's default).
    let unfused = diagonal::unfused(rule, rho, g, w);
    let by_direction = normalize(n, rho, g, &rule.direction(g, w));
    assert_same(name, &fused, &unfused, tol);
    assert_same(name, &fused, &by_direction, tol);
    // What a step uses is the fused path, and w + ε in one pass equals w + ε by tensor
    // operations bit for bit.
    let used = rule.perturbation(rho, g, w);
    assert_eq!(used.epsilon().to_vec(), fused.epsilon().to_vec(), "{name}");
    let by_ops = w.zip_map(&used.epsilon(), |w, e| w + e);
    assert_eq!(used.apply_to(w).to_vec(), by_ops.to_vec(), "{name}: w + ε");
    // The second pass's weights, with f evaluated again instead of stored: the same bits.
    let perturbed = rule.perturbed_weights(rho, g, w);
    assert_eq!(
        perturbed.weights.to_vec(),
        by_ops.to_vec(),
        "{name}: perturbed weights"
    );
    assert_eq!(perturbed.squared_norm, used.squared_norm, "{name}: ‖ε‖²");
    // The state for the next step, written by the pass that reads g and a for the scale: the
    // same w + ε, and the same state as on its own and as by tensor operations.
    let (with_state, state) = diagonal::perturbed_weights_and_state(rule, rho, g, w);
    assert_eq!(
        with_state.weights.to_vec(),
        perturbed.weights.to_vec(),
        "{name}"
    );
    assert_eq!(with_state.squared_norm, perturbed.squared_norm, "{name}");
    let alone = diagonal::updated_state(rule, g);
    let by_ops = rule.auxiliary().filter(|_| rule.updates_state()).map(|a| {
        let update = rule.state_update::<Tensor<1>>();
        g.zip_map(a, update)
    });
    let values = |s: Option<ParamSet>| s.map(|s| s.to_vec());
    assert_eq!(values(state), values(by_ops.clone()), "{name}: state");
    assert_eq!(values(alone), values(by_ops), "{name}: state alone");
    if rule.keeps_gradient() {
        let f = diagonal::direction(rule, g, w);
        let lambda = rule.global_factor(|| g.squared_norm());
        assert_eq!(
            f.to_vec(),
            g.scale(lambda).to_vec(),
            "{name} keeps the gradient"
        );
    }
}

fn all_rules(g: &ParamSet, w: &ParamSet, tol: f64) {
    check("sam", &Sam, g, w, tol);
    check("msam", &MongeSam, g, w, tol);
    check("fisher", &FisherSam::new(2.0).unwrap(), g, w, tol);
    check("asam (weights)", &Asam::default(), g, w, tol);
    check(
        "asam (all)",
        &Asam::new(0.1, AsamScope::All).unwrap(),
        g,
        w,
        tol,
    );
    let mut info = InfoSam::new(0.8, 1e-6).unwrap();
    check("infosam (first step)", &info, g, w, tol);
    info.commit(&g.scale(0.5));
    assert!(diagonal::updated_state(&info, g).is_some());
    check("infosam", &info, g, w, tol);
    let mut ssam = Ssam::new(0.5, 4, 1).unwrap();
    ssam.set_mask_from_fisher(&w.mul(w));
    check("ssam", &ssam, g, w, tol);
}

#[test]
fn fused_and_tensor_paths_agree_in_f64() {
    let g = random_set(1, DType::F64, 0.3);
    let w = random_like(&g, 2, 1.0);
    all_rules(&g, &w, 1e-12);
}

#[test]
fn fused_and_tensor_paths_agree_in_f32() {
    // Large gradients make Monge's global factor matter (‖g‖² ≈ 1 037 · 0.25).
    let g = random_set(3, DType::F32, 0.5);
    let w = random_like(&g, 4, 1.0);
    all_rules(&g, &w, 1e-5);
}

#[test]
fn fused_monge_is_sam_shrunk_by_the_monge_factor() {
    let g = random_set(5, DType::F32, 0.5);
    let sam = Sam.perturbation(0.1, &g, &g);
    let monge = MongeSam.perturbation(0.1, &g, &g);
    let factor = 1.0 / (1.0 + g.squared_norm()).sqrt();
    let (s, m) = (sam.epsilon().to_vec(), monge.epsilon().to_vec());
    for (a, b) in s.iter().zip(&m) {
        assert!(
            (a * factor - b).abs() <= 1e-6 * a.abs().max(1e-6),
            "{a} · {factor} vs {b}"
        );
    }
    assert!((monge.squared_norm - 0.01 * factor * factor).abs() < 1e-9);
}

#[test]
fn ssam_without_a_mask_is_exactly_zero_on_both_paths() {
    let g = random_set(6, DType::F32, 1.0);
    let ssam = Ssam::new(0.5, 4, 1).unwrap();
    let fused = diagonal::fused(&ssam, Normalization::Gradient, 0.1, &g, &g).unwrap();
    assert_eq!(fused.squared_norm, 0.0);
    assert!(fused.epsilon().to_vec().iter().all(|x| *x == 0.0));
    assert_eq!(ssam.perturbed_weights(0.1, &g, &g).squared_norm, 0.0);
    let ops = diagonal::unfused(&ssam, 0.1, &g, &g);
    assert_eq!(ops.squared_norm, 0.0);
    assert!(ops.epsilon().to_vec().iter().all(|x| *x == 0.0));
}

/// A set with tensors large enough for the block-parallel loops (several blocks of 8 192 and a
/// ragged tail), in `dtype`.
fn large_set(seed: u64, dtype: DType, scale: f64) -> ParamSet {
    let device = Device::flex();
    device.seed(seed);
    let values: Vec<f64> =
        Tensor::<1>::random([70_001 + 300], Distribution::Normal(0.0, scale), &device)
            .into_data()
            .convert::<f64>()
            .try_into_vec::<f64>()
            .unwrap();
    ParamSet::from_values(
        &device,
        &[
            ("fc.weight", &[70_001], &values[..70_001]),
            ("fc.bias", &[300], &values[70_001..]),
        ],
    )
    .map(|e| e.value.clone().cast(dtype))
}

#[test]
fn the_parallel_loops_agree_with_the_tensor_operations() {
    for (dtype, tol) in [(DType::F32, 1e-5), (DType::F64, 1e-12)] {
        let g = large_set(9, dtype, 0.01);
        let w = g.with_values(&large_set(10, dtype, 1.0).to_vec());
        all_rules(&g, &w, tol);
    }
}

#[test]
fn linear_combinations_in_one_pass_equal_the_tensor_operations_bit_for_bit() {
    for dtype in [DType::F32, DType::F64] {
        let x = large_set(11, dtype, 1.0);
        let y = x.with_values(&large_set(12, dtype, 1.0).to_vec());
        let (a, b) = (0.9, -0.37);
        let by_ops = x.zip_map(&y, |x, y| x.mul_scalar(a) + y.mul_scalar(b));
        assert_eq!(x.axpby(a, b, &y).to_vec(), by_ops.to_vec());
        let by_ops = x.zip_map(&y, |x, y| x + y.mul_scalar(b));
        assert_eq!(x.add_scaled(b, &y).to_vec(), by_ops.to_vec());
        assert_eq!(x.add(&y).to_vec(), x.zip_map(&y, |x, y| x + y).to_vec());
    }
}

/// A user's preconditioner that is not diagonal: C = I + u uᵀ for a fixed vector u, so
/// C g = g + u (uᵀg) — a rank-one correction no diagonal rule can express.
#[derive(Clone)]
struct RankOne {
    u: ParamSet,
}

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
    let g = random_set(7, DType::F64, 1.0);
    let u = random_like(&g, 8, 0.1);
    let (gv, uv) = (g.to_vec(), u.to_vec());
    let ug: f64 = gv.iter().zip(&uv).map(|(a, b)| a * b).sum();
    let cg: Vec<f64> = gv.iter().zip(&uv).map(|(g, u)| g + u * ug).collect();
    let gcg: f64 = gv.iter().zip(&cg).map(|(a, b)| a * b).sum();
    let rho = 0.2;
    let expected: Vec<f64> = cg.iter().map(|x| rho * x / gcg.sqrt()).collect();
    let estimator = TwoPass::new(RankOne { u });
    let eps = estimator.perturbation(rho, &g, &g).to_vec();
    for (a, b) in eps.iter().zip(&expected) {
        assert!((a - b).abs() < 1e-12, "{a} vs {b}");
    }
    // It lies on its constraint ball: εᵀC⁻¹ε = ρ², i.e. gᵀε = ρ √(gᵀCg).
    let ge: f64 = gv.iter().zip(&eps).map(|(a, b)| a * b).sum();
    assert!((ge - rho * gcg.sqrt()).abs() < 1e-9);
}

/// The fused evaluation is available for what training produces: gradients and weights read from
/// a model on an autodiff device, and state restored onto that device after a resume.
#[test]
fn gradients_weights_and_restored_state_of_an_autodiff_model_take_the_fused_path() {
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
    let asam = Asam::new(0.01, AsamScope::All).unwrap();
    assert!(diagonal::fused(&asam, asam.normalization(), 0.1, &g, &w).is_some());

    let mut info = InfoSam::default();
    info.commit(&g);
    let mut restored = InfoSam::default();
    restored.load_state(&info.save_state(), &device).unwrap();
    let n = restored.normalization();
    let fused = diagonal::fused(&restored, n, 0.1, &g, &w).expect("fused after a restore");
    let before = diagonal::fused(&info, n, 0.1, &g, &w).unwrap();
    assert_eq!(fused.epsilon().to_vec(), before.epsilon().to_vec());
}
