//! The toy landscapes of the Monge SAM paper (`docs/algorithms.md` §9.1–9.2), run through the library.

use sharpness_lab::methods::{Method, MethodParams};
use sharpness_lab::toys::loss::{Loss, autodiff_gradient, device, hessian};
use sharpness_lab::toys::sim;
use strum::VariantArray;

fn params() -> MethodParams {
    MethodParams {
        num_samples: 1,
        ..MethodParams::default()
    }
}

/// Solves f(a) = 0 for an increasing f on [0, 10] by bisection.
fn bisect(f: impl Fn(f64) -> f64) -> f64 {
    let (mut lo, mut hi) = (0.0, 10.0);
    for _ in 0..200 {
        let mid = 0.5 * (lo + hi);
        if f(mid) < 0.0 { lo = mid } else { hi = mid }
    }
    0.5 * (lo + hi)
}

#[test]
fn paraboloid_two_cycles_match_their_closed_forms() {
    // θ' = (1−2α)θ − 2α·ρ·sign θ·s(θ), s = 1 (SAM) or 1/√(1+4θ²) (M-SAM). A symmetric 2-cycle
    // θ' = −θ = −a solves a(2 − 2α) = 2αρ s(a).
    let rho = 0.3;
    for (lr, sam_rounded, msam_rounded) in [(0.66, 0.582, 0.438), (0.74, 0.854, 0.566)] {
        let sam_exact = bisect(|a| a * (1.0 - lr) - lr * rho);
        let msam_exact = bisect(|a| a * (1.0 - lr) - lr * rho / (1.0 + 4.0 * a * a).sqrt());
        // The spec's rounded values agree with the exact fixed points.
        assert!((sam_exact - sam_rounded).abs() < 5e-4, "{sam_exact}");
        assert!((msam_exact - msam_rounded).abs() < 5e-4, "{msam_exact}");
        for (method, exact) in [(Method::Sam, sam_exact), (Method::Msam, msam_exact)] {
            let t = sim::run(
                Loss::Paraboloid,
                method,
                &params(),
                rho,
                lr,
                300,
                [0.5, 0.0],
            )
            .unwrap();
            let (a, b) = (t.points[299][0], t.points[300][0]);
            assert!(
                (a.abs() - exact).abs() < 1e-9,
                "{method} lr {lr}: |θ| = {} vs {exact}",
                a.abs()
            );
            assert!(
                (b.abs() - exact).abs() < 1e-9,
                "{method} lr {lr}: |θ| = {} vs {exact}",
                b.abs()
            );
            assert!(
                a * b < 0.0,
                "{method} lr {lr}: not a sign-alternating 2-cycle ({a}, {b})"
            );
            // The inert second coordinate never moves.
            assert_eq!(t.last()[1], 0.0);
        }
        // M-SAM oscillates lower in the loss than SAM (the paper's conservativeness).
        assert!(msam_exact < sam_exact);
    }
    // α₁: SAM moves away from θ₀ = 0.5 while M-SAM moves towards 0 (Fig. 3's description).
    let sam = sim::run(
        Loss::Paraboloid,
        Method::Sam,
        &params(),
        rho,
        0.66,
        11,
        [0.5, 0.0],
    )
    .unwrap();
    let msam = sim::run(
        Loss::Paraboloid,
        Method::Msam,
        &params(),
        rho,
        0.66,
        11,
        [0.5, 0.0],
    )
    .unwrap();
    assert!(sam.points[1][0].abs() > 0.5 && msam.points[1][0].abs() < 0.5);
}

#[test]
fn banana_hessian_matches_the_analytic_one_and_has_eigenvalues_pm2_at_the_saddle() {
    let device = device();
    for theta in [
        [0.0, 0.0],
        [0.3, 0.2],
        [-1.5, 0.5],
        [1.0, 1.0],
        [2.7, -2.9],
        [-3.0, 3.0],
    ] {
        let numeric = hessian(Loss::Banana, theta, &device);
        let exact = Loss::Banana.analytic_hessian(theta).unwrap();
        for i in 0..2 {
            for j in 0..2 {
                assert!(
                    (numeric[i][j] - exact[i][j]).abs() < 1e-6,
                    "H{i}{j} at {theta:?}: {} vs {}",
                    numeric[i][j],
                    exact[i][j]
                );
            }
        }
    }
    let ev = sim::eigenvalues2(hessian(Loss::Banana, [0.0, 0.0], &device));
    assert!(
        (ev[0][0] + 2.0).abs() < 1e-6 && (ev[1][0] - 2.0).abs() < 1e-6,
        "{ev:?}"
    );
    assert_eq!((ev[0][1], ev[1][1]), (0.0, 0.0));
}

#[test]
fn autodiff_gradients_match_the_closed_forms() {
    let device = device();
    let points = [
        [0.0, 0.0],
        [0.3, 0.2],
        [-1.5, 0.5],
        [1.2, -0.7],
        [0.004, -0.003],
        [2.0, 1.1],
        [-2.9, 3.0],
    ];
    for &loss in Loss::VARIANTS {
        for theta in points {
            let (value, g) = autodiff_gradient(loss, theta, &device);
            let exact = loss.gradient(theta);
            assert!(
                (value - loss.value(theta)).abs() < 1e-12 * (1.0 + value.abs()),
                "{loss} value at {theta:?}"
            );
            for k in 0..2 {
                assert!(
                    (g[k] - exact[k]).abs() < 1e-10 * (1.0 + exact[k].abs()),
                    "{loss} ∂{k} at {theta:?}: {} vs {}",
                    g[k],
                    exact[k]
                );
            }
            // …and the closed form against central differences of the value.
            let h = 1e-6;
            for k in 0..2 {
                let (mut p, mut m) = (theta, theta);
                p[k] += h;
                m[k] -= h;
                let fd = (loss.value(p) - loss.value(m)) / (2.0 * h);
                assert!(
                    (fd - exact[k]).abs() < 1e-5,
                    "{loss} fd ∂{k} at {theta:?}: {fd} vs {}",
                    exact[k]
                );
            }
        }
    }
}

#[test]
fn stability_matrix_and_the_equilibrium_criterion_at_the_saddle() {
    let device = device();
    let h0 = hessian(Loss::Banana, [0.0, 0.0], &device);
    // At the saddle, A = H(I + ρ̃H) has eigenvalues λ + ρ̃λ² = −2 + 4ρ̃ and 2 + 4ρ̃: stable iff
    // ρ̃ > −1/λ₋ = 1/2 (eq. 11).
    for (rt, stable) in [(0.3, false), (0.49, false), (0.51, true), (1.0, true)] {
        let s = sim::stability_from_hessians([0.0; 2], [0.0; 2], rt, [0.0; 2], h0, h0);
        assert!(
            (s.eigenvalues[0][0] - (-2.0 + 4.0 * rt)).abs() < 1e-6,
            "{s:?}"
        );
        assert_eq!(s.eigenvalues[0][0] > 0.0, stable, "ρ̃ = {rt}");
    }
    // GD (ρ = 0): A = H.
    let s = sim::stability(Loss::Banana, Method::Sgd, 0.0, [0.3, 0.2]).unwrap();
    let h = Loss::Banana.analytic_hessian([0.3, 0.2]).unwrap();
    let ev = sim::eigenvalues2(h);
    assert!(
        (s.eigenvalues[0][0] - ev[0][0]).abs() < 1e-6
            && (s.eigenvalues[1][0] - ev[1][0]).abs() < 1e-6
    );
    // SAM and M-SAM: ρ̃ from the library's perturbation equals the closed forms.
    let g = Loss::Banana.gradient([0.3, 0.2]);
    let n = g[0].hypot(g[1]);
    let sam = sim::stability(Loss::Banana, Method::Sam, 1.0, [0.3, 0.2]).unwrap();
    let msam = sim::stability(Loss::Banana, Method::Msam, 1.0, [0.3, 0.2]).unwrap();
    assert!((sam.rho_tilde - 1.0 / n).abs() < 1e-9 * sam.rho_tilde);
    assert!((msam.rho_tilde - 1.0 / (n * (1.0 + n * n).sqrt())).abs() < 1e-9 * msam.rho_tilde);
    assert!(sim::stability(Loss::Banana, Method::Asam, 1.0, [0.3, 0.2]).is_err());
}

#[test]
fn figure_one_end_points() {
    let run = |m| {
        sim::run(Loss::Banana, m, &params(), 1.0, 0.01, 200, [-1.5, 0.5])
            .unwrap()
            .last()
    };
    let msam = run(Method::Msam);
    let sam = run(Method::Sam);
    let gd = run(Method::Sgd);
    eprintln!("M-SAM {msam:?}, SAM {sam:?}, GD {gd:?}");
    // M-SAM walks along the valley to the flattest minimum (−1, −1).
    assert!(
        (msam[0] + 1.0).hypot(msam[1] + 1.0) < 0.1,
        "M-SAM ends at {msam:?}"
    );
    // SAM is attracted to the saddle.
    assert!(sam[0].hypot(sam[1]) < 0.3, "SAM ends at {sam:?}");
    // GD converges into the valley θ₁θ₂ = 1.
    assert!((gd[0] * gd[1] - 1.0).abs() < 0.05, "GD ends at {gd:?}");
}
