//! The image tower: EfficientNet-Lite0 (ImageNet-pretrained) as a Burn module.

use std::path::Path;

use anyhow::{Result, bail};
use burn::prelude::*;

/// The width of the pooled image feature.
pub const IMAGE_DIM: usize = 1280;

/// The frozen image encoder.
pub struct ImageEncoder {
    _device: Device,
}

impl ImageEncoder {
    /// Loads the converted weights from `dir` (see [`super::efficientnet_dir`]).
    pub fn load(dir: &Path, device: &Device) -> Result<Self> {
        let _ = device;
        bail!("the image tower is not built yet ({})", dir.display())
    }

    /// The input side length in pixels the encoder is run at.
    pub fn input_size(&self) -> usize {
        224
    }

    /// Pooled features, `[n, IMAGE_DIM]`, of RGB images already resized to
    /// [`Self::input_size`] (`[n, 3, size, size]`, values 0–255).
    pub fn features(&self, images: Tensor<4>) -> Result<Tensor<2>> {
        let _ = images;
        bail!("the image tower is not built yet")
    }
}
