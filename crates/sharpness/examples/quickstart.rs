//! The README's snippet as a program: Monge SAM around SGD on a small regression problem.
//!
//! `cargo run -p sharpness --example quickstart`

use burn::nn::{Linear, LinearConfig};
use burn::prelude::*;
use burn::tensor::Distribution;
use sharpness::perturb::{MongeSam, TwoPass};
use sharpness::{RhoSchedule, SharpnessAware, optim::base};

fn main() -> Result<(), sharpness::SharpnessError> {
    let device = Device::flex().autodiff();
    device.seed(0);
    let mut model: Linear = LinearConfig::new(4, 1).init(&device);
    let x = Tensor::<2>::random([64, 4], Distribution::Normal(0.0, 1.0), &device);
    let truth = Tensor::<2>::from_floats([[1.0], [-2.0], [0.5], [3.0]], &device);
    let y = x.clone().matmul(truth);
    let loss = |m: &Linear| (m.forward(x.clone()) - y.clone()).square().mean();

    let mut opt = SharpnessAware::new(
        TwoPass::new(MongeSam::new()),
        base::sgd(0.9, 5e-4, false)?,
        RhoSchedule::constant(0.05)?,
    );
    for step in 0..100 {
        // Every pass of the step evaluates the same batch; the caller's model is never modified.
        let out = opt.step(&model, 0.05, &mut |m: &Linear| loss(m))?;
        model = out.model;
        if step % 20 == 0 {
            println!(
                "step {step:3}  loss {:.5}  ‖g‖ {:.4}",
                out.loss, out.grad_norm
            );
        }
    }
    Ok(())
}
