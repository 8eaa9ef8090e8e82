//! The two-tower CLIP model of the alignment experiment: trainable projection heads on the frozen
//! towers' features, and CLIP's learned temperature (Radford et al., 2021).
//!
//! Each head maps its tower's feature into the shared space, where embeddings are L2-normalised;
//! the loss is CLIP's symmetric cross-entropy over the batch's similarity matrix scaled by
//! exp(s), s the learned log inverse temperature (initialised at ln(1/0.07), as CLIP).

use burn::module::{Module, Param};
use burn::nn::Linear;
use burn::prelude::*;

use super::knn::normalize_rows;
use crate::models::Init;
use crate::train::epoch::cross_entropy;

/// CLIP's initial temperature, 0.07.
pub const INITIAL_TEMPERATURE: f64 = 0.07;

/// CLIP caps the logit scale exp(s) at 100 (it clamps s after each step); here the cap is in the
/// forward pass, so s above ln 100 gets no gradient, with the same effect and no extra step hook.
pub const MAX_LOGIT_SCALE: f64 = 100.0;

/// Projection heads and temperature.
#[derive(Module, Debug)]
pub struct Clip {
    /// Image feature → shared space.
    pub image: Linear,
    /// Text feature → shared space.
    pub text: Linear,
    /// s, the log of the logit scale exp(s) = 1/temperature.
    pub log_scale: Param<Tensor<1>>,
}

impl Clip {
    /// Heads from `image_dim` and `text_dim` into `embed_dim`, seeded (PyTorch's default rule).
    pub fn new(
        image_dim: usize,
        text_dim: usize,
        embed_dim: usize,
        seed: u64,
        device: &Device,
    ) -> Self {
        let mut init = Init::new(seed, device);
        Self {
            image: init.linear(image_dim, embed_dim),
            text: init.linear(text_dim, embed_dim),
            log_scale: Param::from_tensor(Tensor::from_floats(
                [(1.0 / INITIAL_TEMPERATURE).ln() as f32],
                device,
            )),
        }
    }

    /// Normalised image embeddings `[n, embed_dim]` of image features `[n, image_dim]`.
    pub fn embed_images(&self, features: Tensor<2>) -> Tensor<2> {
        normalize_rows(self.image.forward(features))
    }

    /// Normalised text embeddings `[n, embed_dim]` of text features `[n, text_dim]`.
    pub fn embed_texts(&self, features: Tensor<2>) -> Tensor<2> {
        normalize_rows(self.text.forward(features))
    }

    /// The mean CLIP loss of a batch of paired features (row i of both is pair i).
    pub fn loss(&self, images: Tensor<2>, texts: Tensor<2>) -> Tensor<1> {
        clip_loss(
            self.embed_images(images),
            self.embed_texts(texts),
            self.log_scale.val(),
        )
    }

    /// The temperature 1/exp(s) (before the cap).
    pub fn temperature(&self) -> f64 {
        (-self.log_scale.val().into_scalar::<f64>()).exp()
    }
}

/// CLIP's loss of normalised embeddings `[b, d]`: with logits = min(exp(s), 100) · I Tᵀ, the mean
/// of the cross-entropies of image→text (rows) and text→image (columns), pair i the target of
/// row and column i.
pub fn clip_loss(images: Tensor<2>, texts: Tensor<2>, log_scale: Tensor<1>) -> Tensor<1> {
    let [b, _] = images.dims();
    let scale = log_scale.exp().clamp_max(MAX_LOGIT_SCALE).reshape([1, 1]);
    let logits = images.matmul(texts.transpose()) * scale;
    let targets = Tensor::<1, Int>::arange(0..b as i64, &logits.device());
    (cross_entropy(logits.clone(), targets.clone()) + cross_entropy(logits.transpose(), targets))
        / 2.0
}

#[cfg(test)]
mod tests {
    use burn::tensor::DType;

    use super::*;

    fn tensor<const D: usize>(values: &[f64], dims: [usize; D], device: &Device) -> Tensor<D> {
        Tensor::from_data(TensorData::new(values.to_vec(), dims), (device, DType::F64))
    }

    #[test]
    fn loss_of_a_hand_computed_batch() {
        // I = [[1, 0], [0, 1]], T = [[1, 0], [0.6, 0.8]], exp(s) = 2: logits [[2, 1.2], [0, 1.6]].
        // Rows (targets on the diagonal): ln(1 + e^−0.8), ln(1 + e^−1.6); columns: ln(1 + e^−2),
        // ln(1 + e^−0.4).
        let device = Device::flex();
        let i = tensor(&[1.0, 0.0, 0.0, 1.0], [2, 2], &device);
        let t = tensor(&[1.0, 0.0, 0.6, 0.8], [2, 2], &device);
        let s = tensor(&[2f64.ln()], [1], &device);
        let got = clip_loss(i, t, s).into_scalar::<f64>();
        let l = |x: f64| (1.0 + (-x).exp()).ln();
        let want = ((l(0.8) + l(1.6)) / 2.0 + (l(2.0) + l(0.4)) / 2.0) / 2.0;
        assert!((got - want).abs() < 1e-12, "{got} vs {want}");
    }

    #[test]
    fn the_logit_scale_is_capped_at_100() {
        let device = Device::flex();
        let i = tensor(&[1.0, 0.0, 0.0, 1.0], [2, 2], &device);
        let t = tensor(&[0.0, 1.0, 1.0, 0.0], [2, 2], &device);
        // Every target logit is 0 and every other 100: both cross-entropies are ln(1 + e^100).
        let loss = clip_loss(i, t, tensor(&[10.0], [1], &device)).into_scalar::<f64>();
        assert!(
            (loss - (100.0 + (-100f64).exp().ln_1p())).abs() < 1e-9,
            "{loss}"
        );
    }

    #[test]
    fn temperature_gradient_matches_finite_differences() {
        let device = Device::flex().autodiff();
        let f64_linear = |l: Linear| Linear {
            weight: Param::from_tensor(l.weight.val().cast(DType::F64).detach()),
            bias: l
                .bias
                .map(|b| Param::from_tensor(b.val().cast(DType::F64).detach())),
        };
        let clip = Clip::new(5, 3, 4, 7, &device);
        let clip = Clip {
            image: f64_linear(clip.image),
            text: f64_linear(clip.text),
            log_scale: Param::from_tensor(clip.log_scale.val().cast(DType::F64).detach()),
        };
        let features = |seed: u64, dim: usize| {
            let values: Vec<f64> = (0..6 * dim)
                .map(|j| ((j as u64 * 2654435761 + seed) % 1000) as f64 / 500.0 - 1.0)
                .collect();
            tensor(&values, [6, dim], &device)
        };
        let (x, y) = (features(1, 5), features(2, 3));
        let loss = |s: f64| {
            let mut c = clip.clone();
            c.log_scale = Param::from_tensor(tensor(&[s], [1], &device));
            c.loss(x.clone(), y.clone()).into_scalar::<f64>()
        };
        let s0 = clip.log_scale.val().into_scalar::<f64>();
        let grads = clip.loss(x.clone(), y.clone()).backward();
        let analytic = clip.log_scale.grad(&grads).unwrap().into_scalar::<f64>();
        let h = 1e-6;
        let numeric = (loss(s0 + h) - loss(s0 - h)) / (2.0 * h);
        assert!(
            analytic.abs() > 1e-3,
            "a gradient that tests something: {analytic}"
        );
        assert!(
            (analytic - numeric).abs() < 1e-7 * analytic.abs().max(1.0),
            "{analytic} vs {numeric}"
        );
    }
}
