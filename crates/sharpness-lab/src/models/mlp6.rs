//! The explicit-bias experiment's network, with the frozen-ReLU forward its Hessian measurement
//! needs.

use burn::module::{Module, Param};
use burn::nn::{Linear, LinearConfig};
use burn::prelude::*;
use burn::tensor::TensorData;
use burn::tensor::activation::relu;
use rand::rngs::Xoshiro256PlusPlus;
use rand::{RngExt, SeedableRng};

use crate::data::{IMAGE_PIXELS, NUM_CLASSES};
use crate::train::Classifier;

/// The 6-layer MLP of the explicit-bias experiment (universal SAM, Fig. 2): 784 → 128 → 128 →
/// 128 → 128 → 128 → 10, ReLU after every hidden layer, PyTorch's default initialisation. The
/// reference code (`models/build.py`, `simple_mnist`) applies its `fc2` twice, i.e. seven affine
/// maps with one shared; this follows the paper's description (six distinct Linear layers).
#[derive(Module, Debug)]
pub struct Mlp6 {
    layers: Vec<Linear>,
}

impl Mlp6 {
    /// Hidden width.
    pub const WIDTH: usize = 128;

    /// PyTorch's default initialisation, U(−1/√fan_in, 1/√fan_in) for weights and biases, from a
    /// seeded generator.
    pub fn new(seed: u64, device: &Device) -> Self {
        let mut rng = Xoshiro256PlusPlus::seed_from_u64(seed ^ 0x6269_6173);
        let dims = [
            IMAGE_PIXELS,
            Self::WIDTH,
            Self::WIDTH,
            Self::WIDTH,
            Self::WIDTH,
            Self::WIDTH,
            NUM_CLASSES,
        ];
        let mut uniform = |n: usize, bound: f64| -> Vec<f32> {
            (0..n)
                .map(|_| rng.random_range(-bound..bound) as f32)
                .collect()
        };
        let layers = dims
            .windows(2)
            .map(|w| {
                let (d_in, d_out) = (w[0], w[1]);
                let bound = 1.0 / (d_in as f64).sqrt();
                let mut layer = LinearConfig::new(d_in, d_out).init(device);
                layer.weight = Param::from_tensor(Tensor::from_data(
                    TensorData::new(uniform(d_in * d_out, bound), [d_in, d_out]),
                    device,
                ));
                layer.bias = Some(Param::from_tensor(Tensor::from_data(
                    TensorData::new(uniform(d_out, bound), [d_out]),
                    device,
                )));
                layer
            })
            .collect();
        Self { layers }
    }

    /// Logits `[b, 10]` of flat images `[b, 784]`.
    pub fn forward(&self, x: Tensor<2>) -> Tensor<2> {
        let last = self.layers.len() - 1;
        self.layers.iter().enumerate().fold(x, |h, (i, layer)| {
            let h = layer.forward(h);
            if i < last { relu(h) } else { h }
        })
    }

    /// Logits with the ReLU activation pattern fixed by `masks` (one 0/1 tensor per hidden layer,
    /// in the input's dtype) instead of recomputed from the pre-activations.
    pub fn forward_masked(&self, x: Tensor<2>, masks: &[Tensor<2>]) -> Tensor<2> {
        let last = self.layers.len() - 1;
        self.layers.iter().enumerate().fold(x, |h, (i, layer)| {
            let h = layer.forward(h);
            if i < last { h * masks[i].clone() } else { h }
        })
    }

    /// The ReLU activation pattern (pre-activation > 0) of every hidden layer on `x`.
    pub fn relu_masks(&self, x: Tensor<2>) -> Vec<Tensor<2>> {
        let last = self.layers.len() - 1;
        let mut masks = Vec::with_capacity(last);
        let mut h = x;
        for layer in self.layers.iter().take(last) {
            let z = layer.forward(h);
            let mask = z.clone().greater_elem(0.0).float();
            h = z * mask.clone();
            masks.push(mask);
        }
        masks
    }
}

impl Classifier for Mlp6 {
    fn logits(&self, images: Tensor<4>) -> Tensor<2> {
        let [b, ..] = images.dims();
        self.forward(images.reshape([b, IMAGE_PIXELS]))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn mlp_has_six_layers_and_the_expected_parameter_count() {
        let device = crate::train::device();
        let model = Mlp6::new(0, &device);
        assert_eq!(model.layers.len(), 6);
        let expected = 784 * 128 + 128 + 4 * (128 * 128 + 128) + 128 * 10 + 10;
        assert_eq!(model.num_params(), expected);
        let logits = model.forward(Tensor::zeros([3, IMAGE_PIXELS], &device));
        assert_eq!(logits.dims(), [3, 10]);
    }

    #[test]
    fn frozen_pattern_forward_equals_the_relu_forward_at_the_same_weights() {
        let device = crate::train::device();
        let model = Mlp6::new(1, &device);
        let x = Tensor::<2>::random(
            [4, IMAGE_PIXELS],
            burn::tensor::Distribution::Normal(0.0, 1.0),
            &device,
        );
        let masks = model.relu_masks(x.clone());
        assert_eq!(masks.len(), 5);
        let diff = (model.forward(x.clone()) - model.forward_masked(x, &masks))
            .abs()
            .max()
            .into_scalar::<f64>();
        assert!(diff < 1e-6, "{diff}");
    }
}
