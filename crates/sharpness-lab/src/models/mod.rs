//! The networks of the lab, all for 28×28 single-channel inputs and 10 classes: an MLP, a small
//! CNN with BatchNorm and a small ResNet.
//!
//! Weights are initialised from the lab's own seeded generator (PyTorch's default rule,
//! U(−1/√fan_in, 1/√fan_in) for weights and biases; BatchNorm γ = 1, β = 0), never from the
//! backend's global RNG, so the same seed gives the same network whatever else runs in the
//! process (tests run in parallel).

use burn::module::{Module, Param};
use burn::nn::conv::{Conv2d, Conv2dConfig};
use burn::nn::pool::{AdaptiveAvgPool2d, AdaptiveAvgPool2dConfig, MaxPool2d, MaxPool2dConfig};
use burn::nn::{BatchNorm, BatchNormConfig, Linear, LinearConfig, PaddingConfig2d};
use burn::prelude::*;
use burn::tensor::TensorData;
use burn::tensor::activation::relu;
use rand::rngs::Xoshiro256PlusPlus;
use rand::{RngExt, SeedableRng};
use serde::{Deserialize, Serialize};

use crate::data::{IMAGE_PIXELS, IMAGE_SIDE, NUM_CLASSES};

mod mlp6;
pub use mlp6::Mlp6;

/// Which network.
#[derive(
    Clone,
    Copy,
    Debug,
    PartialEq,
    Eq,
    Hash,
    Serialize,
    Deserialize,
    clap::ValueEnum,
    strum::Display,
    strum::IntoStaticStr,
    strum::VariantArray,
)]
#[serde(rename_all = "kebab-case")]
#[strum(serialize_all = "kebab-case")]
pub enum ModelKind {
    /// 784 → w → w → 10 with ReLU (w = `width`, default 256).
    Mlp,
    /// Two conv(3×3)–BatchNorm–ReLU–maxpool blocks (16, 32 channels), then a linear layer.
    Cnn,
    /// A ResNet-8 for 28×28: stem + three basic blocks (16, 32, 64 channels), global pooling.
    #[value(alias = "resnet8")]
    Resnet,
}

impl ModelKind {
    /// The command-line name.
    pub fn name(self) -> &'static str {
        self.into()
    }
}

/// Any of the lab's networks.
// Built once per run and never moved in a loop: boxing the large variants would buy nothing.
#[allow(clippy::large_enum_variant)]
#[derive(Module, Debug)]
pub enum Network {
    /// See [`Mlp`].
    Mlp(Mlp),
    /// See [`Cnn`].
    Cnn(Cnn),
    /// See [`ResNet`].
    Resnet(ResNet),
}

impl Network {
    /// A freshly initialised network; `width` is the MLP's hidden width (ignored otherwise).
    pub fn new(kind: ModelKind, width: usize, seed: u64, device: &Device) -> Self {
        let mut init = Init::new(seed, device);
        match kind {
            ModelKind::Mlp => Network::Mlp(Mlp::new(width, &mut init)),
            ModelKind::Cnn => Network::Cnn(Cnn::new(&mut init)),
            ModelKind::Resnet => Network::Resnet(ResNet::new(&mut init)),
        }
    }

    /// Logits `[batch, 10]` of images `[batch, 1, 28, 28]`.
    pub fn forward(&self, x: Tensor<4>) -> Tensor<2> {
        match self {
            Network::Mlp(m) => m.forward(x),
            Network::Cnn(m) => m.forward(x),
            Network::Resnet(m) => m.forward(x),
        }
    }
}

/// Seeded initialisation (PyTorch's default rule).
pub(crate) struct Init {
    rng: Xoshiro256PlusPlus,
    device: Device,
}

impl Init {
    pub(crate) fn new(seed: u64, device: &Device) -> Self {
        Self {
            rng: Xoshiro256PlusPlus::seed_from_u64(seed ^ 0x6d6f_6465_6c5f_696e),
            device: device.clone(),
        }
    }

    fn uniform<const D: usize>(&mut self, dims: [usize; D], bound: f64) -> Tensor<D> {
        let n: usize = dims.iter().product();
        let values: Vec<f32> = (0..n)
            .map(|_| self.rng.random_range(-bound..bound) as f32)
            .collect();
        Tensor::from_data(TensorData::new(values, dims), &self.device)
    }

    pub(crate) fn linear(&mut self, d_in: usize, d_out: usize) -> Linear {
        let mut layer = LinearConfig::new(d_in, d_out).init(&self.device);
        let bound = 1.0 / (d_in as f64).sqrt();
        layer.weight = Param::from_tensor(self.uniform([d_in, d_out], bound));
        layer.bias = Some(Param::from_tensor(self.uniform([d_out], bound)));
        layer
    }

    fn conv(
        &mut self,
        c_in: usize,
        c_out: usize,
        kernel: usize,
        stride: usize,
        bias: bool,
    ) -> Conv2d {
        let mut layer = Conv2dConfig::new([c_in, c_out], [kernel, kernel])
            .with_stride([stride, stride])
            .with_padding(PaddingConfig2d::Explicit(
                kernel / 2,
                kernel / 2,
                kernel / 2,
                kernel / 2,
            ))
            .with_bias(bias)
            .init(&self.device);
        let bound = 1.0 / ((c_in * kernel * kernel) as f64).sqrt();
        layer.weight = Param::from_tensor(self.uniform([c_out, c_in, kernel, kernel], bound));
        layer.bias = bias.then(|| Param::from_tensor(self.uniform([c_out], bound)));
        layer
    }

    fn batch_norm(&self, channels: usize) -> BatchNorm {
        BatchNormConfig::new(channels).init(&self.device)
    }
}

/// 784 → w → w → 10 with ReLU.
#[derive(Module, Debug)]
pub struct Mlp {
    fc1: Linear,
    fc2: Linear,
    fc3: Linear,
}

impl Mlp {
    fn new(width: usize, init: &mut Init) -> Self {
        Self {
            fc1: init.linear(IMAGE_PIXELS, width),
            fc2: init.linear(width, width),
            fc3: init.linear(width, NUM_CLASSES),
        }
    }

    /// Logits of `[batch, 1, 28, 28]` images.
    pub fn forward(&self, x: Tensor<4>) -> Tensor<2> {
        let [batch, _, _, _] = x.dims();
        let x = x.reshape([batch, IMAGE_PIXELS]);
        let x = relu(self.fc1.forward(x));
        let x = relu(self.fc2.forward(x));
        self.fc3.forward(x)
    }
}

/// conv3×3(1→16)–BN–ReLU–maxpool2 → conv3×3(16→32)–BN–ReLU–maxpool2 → linear(32·7·7 → 10).
#[derive(Module, Debug)]
pub struct Cnn {
    conv1: Conv2d,
    bn1: BatchNorm,
    conv2: Conv2d,
    bn2: BatchNorm,
    pool: MaxPool2d,
    fc: Linear,
}

impl Cnn {
    const C1: usize = 16;
    const C2: usize = 32;

    fn new(init: &mut Init) -> Self {
        let side = IMAGE_SIDE / 4;
        Self {
            conv1: init.conv(1, Self::C1, 3, 1, false),
            bn1: init.batch_norm(Self::C1),
            conv2: init.conv(Self::C1, Self::C2, 3, 1, false),
            bn2: init.batch_norm(Self::C2),
            pool: MaxPool2dConfig::new([2, 2]).init(),
            fc: init.linear(Self::C2 * side * side, NUM_CLASSES),
        }
    }

    /// Logits of `[batch, 1, 28, 28]` images.
    pub fn forward(&self, x: Tensor<4>) -> Tensor<2> {
        let x = self
            .pool
            .forward(relu(self.bn1.forward(self.conv1.forward(x))));
        let x = self
            .pool
            .forward(relu(self.bn2.forward(self.conv2.forward(x))));
        let [batch, c, h, w] = x.dims();
        self.fc.forward(x.reshape([batch, c * h * w]))
    }
}

/// The ResNet basic block: conv–BN–ReLU–conv–BN plus a (projected) shortcut, then ReLU.
#[derive(Module, Debug)]
pub struct BasicBlock {
    conv1: Conv2d,
    bn1: BatchNorm,
    conv2: Conv2d,
    bn2: BatchNorm,
    shortcut: Option<Shortcut>,
}

/// A 1×1 strided projection with BatchNorm, where the block changes shape.
#[derive(Module, Debug)]
pub struct Shortcut {
    conv: Conv2d,
    bn: BatchNorm,
}

impl BasicBlock {
    fn new(c_in: usize, c_out: usize, stride: usize, init: &mut Init) -> Self {
        let shortcut = (stride != 1 || c_in != c_out).then(|| Shortcut {
            conv: init.conv(c_in, c_out, 1, stride, false),
            bn: init.batch_norm(c_out),
        });
        Self {
            conv1: init.conv(c_in, c_out, 3, stride, false),
            bn1: init.batch_norm(c_out),
            conv2: init.conv(c_out, c_out, 3, 1, false),
            bn2: init.batch_norm(c_out),
            shortcut,
        }
    }

    fn forward(&self, x: Tensor<4>) -> Tensor<4> {
        let out = relu(self.bn1.forward(self.conv1.forward(x.clone())));
        let out = self.bn2.forward(self.conv2.forward(out));
        let skip = match &self.shortcut {
            Some(s) => s.bn.forward(s.conv.forward(x)),
            None => x,
        };
        relu(out + skip)
    }
}

/// ResNet-8 for 28×28: conv3×3(1→16)–BN–ReLU, blocks 16 (28×28), 32 (14×14), 64 (7×7), global
/// average pooling, linear(64 → 10).
#[derive(Module, Debug)]
pub struct ResNet {
    stem: Conv2d,
    bn: BatchNorm,
    blocks: Vec<BasicBlock>,
    pool: AdaptiveAvgPool2d,
    fc: Linear,
}

impl ResNet {
    fn new(init: &mut Init) -> Self {
        let stem = init.conv(1, 16, 3, 1, false);
        let bn = init.batch_norm(16);
        let blocks = vec![
            BasicBlock::new(16, 16, 1, init),
            BasicBlock::new(16, 32, 2, init),
            BasicBlock::new(32, 64, 2, init),
        ];
        Self {
            stem,
            bn,
            blocks,
            pool: AdaptiveAvgPool2dConfig::new([1, 1]).init(),
            fc: init.linear(64, NUM_CLASSES),
        }
    }

    /// Logits of `[batch, 1, 28, 28]` images.
    pub fn forward(&self, x: Tensor<4>) -> Tensor<2> {
        let mut x = relu(self.bn.forward(self.stem.forward(x)));
        for block in &self.blocks {
            x = block.forward(x);
        }
        let [batch, c, _, _] = x.dims();
        self.fc.forward(self.pool.forward(x).reshape([batch, c]))
    }
}
