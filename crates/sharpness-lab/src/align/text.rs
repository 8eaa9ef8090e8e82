//! The text tower: all-MiniLM-L6-v2 (BERT, 6 layers, 384 wide, 12 heads) as a Burn module.

use std::path::Path;

use anyhow::{Result, bail};
use burn::prelude::*;

/// The width of a sentence embedding.
pub const TEXT_DIM: usize = 384;

/// The frozen text encoder and its tokenizer.
pub struct TextEncoder {
    _device: Device,
}

impl TextEncoder {
    /// Loads the weights and tokenizer from `dir` (see [`super::minilm_dir`]).
    pub fn load(dir: &Path, device: &Device) -> Result<Self> {
        let _ = device;
        bail!("the text tower is not built yet ({})", dir.display())
    }

    /// Sentence embeddings, `[texts.len(), TEXT_DIM]`: mean over real tokens, L2-normalised.
    pub fn embed(&self, texts: &[&str]) -> Result<Tensor<2>> {
        let _ = texts;
        bail!("the text tower is not built yet")
    }
}
