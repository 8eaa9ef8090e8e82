//! A geometry defined outside the library: ε = ρ d/‖d‖ with d = sign(g) ⊙ √|g|, which damps the
//! largest gradient coordinates. One struct, one `Preconditioner` impl, an empty `Lifecycle`.
//!
//! `cargo run -p sharpness --example custom_geometry`

use burn::nn::{Linear, LinearConfig};
use burn::prelude::*;
use burn::tensor::Distribution;
use sharpness::perturb::{Normalization, Preconditioner, TwoPass, perturbation};
use sharpness::{Lifecycle, ParamSet, RhoSchedule, SharpnessAware, optim::base};

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

fn main() -> Result<(), sharpness::SharpnessError> {
    // The perturbation on its own: d = (2, −3) for g = (4, −9), so ε = 0.1·d/√13.
    let g = ParamSet::from_values(&Device::flex(), &[("w", &[2], &[4.0, -9.0])]);
    println!(
        "ε = {:?}",
        perturbation(&SqrtSam, 0.1, &g, &g).epsilon().to_vec()
    );

    // Trained like any built-in method.
    let device = Device::flex().autodiff();
    device.seed(1);
    let mut model: Linear = LinearConfig::new(3, 1).init(&device);
    let x = Tensor::<2>::random([32, 3], Distribution::Normal(0.0, 1.0), &device);
    let y = x.clone().sum_dim(1);
    let mut opt = SharpnessAware::new(
        TwoPass::new(SqrtSam),
        base::sgd(0.0, 0.0, false)?,
        RhoSchedule::constant(0.05)?,
    );
    for _ in 0..50 {
        let out = opt.step(&model, 0.1, &mut |m: &Linear| {
            (m.forward(x.clone()) - y.clone()).square().mean()
        })?;
        model = out.model;
    }
    let last = opt.step(&model, 0.1, &mut |m: &Linear| {
        (m.forward(x.clone()) - y.clone()).square().mean()
    })?;
    println!("{} after 50 steps: loss {:.6}", opt.name(), last.loss);
    Ok(())
}
