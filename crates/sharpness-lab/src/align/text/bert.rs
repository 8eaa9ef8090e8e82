//! The BERT encoder (Hugging Face's `BertModel`, post-LayerNorm, absolute positions, exact erf
//! GELU) as a Burn module, built from a `model.safetensors` with PyTorch's names and layouts.

use anyhow::{Result, anyhow, ensure};
use burn::module::Param;
use burn::nn::{Embedding, EmbeddingConfig, LayerNorm, LayerNormConfig, Linear};
use burn::prelude::*;
use burn::tensor::activation::gelu;
use burn::tensor::module::attention;
use burn::tensor::ops::AttentionModuleOptions;
use safetensors::{Dtype, SafeTensors};
use serde::Deserialize;

/// The architecture as `config.json` (a Hugging Face `BertConfig`) states it; the fields the
/// encoder uses, each checked against the shapes of the weights when they are loaded.
#[derive(Clone, Debug, Deserialize, PartialEq)]
pub struct BertConfig {
    /// Rows of the word embedding (token ids are below it).
    pub vocab_size: usize,
    /// Width of every hidden state (384 for all-MiniLM-L6-v2).
    pub hidden_size: usize,
    /// Encoder layers.
    pub num_hidden_layers: usize,
    /// Attention heads per layer (they split `hidden_size`).
    pub num_attention_heads: usize,
    /// Width of the feed-forward block.
    pub intermediate_size: usize,
    /// Rows of the position embedding: the longest input the model takes.
    pub max_position_embeddings: usize,
    /// Rows of the token-type (segment) embedding.
    pub type_vocab_size: usize,
    /// LayerNorm's ε.
    pub layer_norm_eps: f64,
    /// The activation of the feed-forward block; only `gelu` (the exact, erf form) is built.
    pub hidden_act: String,
    /// Only `absolute` (learned position embeddings) is built.
    #[serde(default = "absolute")]
    pub position_embedding_type: String,
}

fn absolute() -> String {
    "absolute".into()
}

impl BertConfig {
    /// Rejects an architecture the encoder does not implement.
    pub fn check(&self) -> Result<()> {
        let sizes = [
            ("vocab_size", self.vocab_size),
            ("hidden_size", self.hidden_size),
            ("num_hidden_layers", self.num_hidden_layers),
            ("num_attention_heads", self.num_attention_heads),
            ("intermediate_size", self.intermediate_size),
            ("max_position_embeddings", self.max_position_embeddings),
            ("type_vocab_size", self.type_vocab_size),
        ];
        for (name, size) in sizes {
            ensure!(size > 0, "{name} is 0");
        }
        ensure!(
            self.hidden_size.is_multiple_of(self.num_attention_heads),
            "hidden_size {} is not a multiple of num_attention_heads {}",
            self.hidden_size,
            self.num_attention_heads
        );
        ensure!(
            self.layer_norm_eps.is_finite() && self.layer_norm_eps > 0.0,
            "layer_norm_eps {} is not a positive number",
            self.layer_norm_eps
        );
        ensure!(
            self.hidden_act == "gelu",
            "hidden_act {:?}: only BERT's exact (erf) \"gelu\" is implemented",
            self.hidden_act
        );
        ensure!(
            self.position_embedding_type == "absolute",
            "position_embedding_type {:?}: only \"absolute\" is implemented",
            self.position_embedding_type
        );
        Ok(())
    }
}

/// BERT's embeddings and encoder layers (no pooler: sentence embeddings pool the last hidden
/// states).
#[derive(Module, Debug)]
pub struct Bert {
    word_embeddings: Embedding,
    position_embeddings: Embedding,
    token_type_embeddings: Embedding,
    embeddings_norm: LayerNorm,
    layers: Vec<BertLayer>,
}

/// One encoder layer: self-attention then the feed-forward block, each followed by a residual
/// connection and LayerNorm.
#[derive(Module, Debug)]
struct BertLayer {
    query: Linear,
    key: Linear,
    value: Linear,
    attention_output: Linear,
    attention_norm: LayerNorm,
    intermediate: Linear,
    output: Linear,
    output_norm: LayerNorm,
    heads: usize,
}

impl Bert {
    /// Builds the encoder from a safetensors file's bytes (PyTorch `BertModel` names), checking
    /// every tensor's dtype and shape against `config` and that the file holds exactly
    /// `num_hidden_layers` layers. Other tensors (a pooler, `position_ids`) are ignored.
    pub fn from_safetensors(bytes: &[u8], config: &BertConfig, device: &Device) -> Result<Self> {
        config.check()?;
        let tensors = SafeTensors::deserialize(bytes)
            .map_err(|e| anyhow!("not a readable safetensors file: {e}"))?;
        let layers_held = tensors
            .names()
            .iter()
            .filter_map(|name| name.strip_prefix("encoder.layer."))
            .filter_map(|rest| rest.split('.').next()?.parse::<usize>().ok())
            .max()
            .map_or(0, |last| last + 1);
        ensure!(
            layers_held == config.num_hidden_layers,
            "the weights hold {layers_held} encoder layers, config.json says {}",
            config.num_hidden_layers
        );
        let w = Weights { tensors, device };
        let (d, eps) = (config.hidden_size, config.layer_norm_eps);
        let layers = (0..config.num_hidden_layers)
            .map(|i| {
                let p = format!("encoder.layer.{i}");
                Ok(BertLayer {
                    query: w.linear(&format!("{p}.attention.self.query"), d, d)?,
                    key: w.linear(&format!("{p}.attention.self.key"), d, d)?,
                    value: w.linear(&format!("{p}.attention.self.value"), d, d)?,
                    attention_output: w.linear(&format!("{p}.attention.output.dense"), d, d)?,
                    attention_norm: w.layer_norm(
                        &format!("{p}.attention.output.LayerNorm"),
                        d,
                        eps,
                    )?,
                    intermediate: w.linear(
                        &format!("{p}.intermediate.dense"),
                        d,
                        config.intermediate_size,
                    )?,
                    output: w.linear(&format!("{p}.output.dense"), config.intermediate_size, d)?,
                    output_norm: w.layer_norm(&format!("{p}.output.LayerNorm"), d, eps)?,
                    heads: config.num_attention_heads,
                })
            })
            .collect::<Result<Vec<_>>>()?;
        Ok(Self {
            word_embeddings: w.embedding("embeddings.word_embeddings", config.vocab_size, d)?,
            position_embeddings: w.embedding(
                "embeddings.position_embeddings",
                config.max_position_embeddings,
                d,
            )?,
            token_type_embeddings: w.embedding(
                "embeddings.token_type_embeddings",
                config.type_vocab_size,
                d,
            )?,
            embeddings_norm: w.layer_norm("embeddings.LayerNorm", d, eps)?,
            layers,
        })
    }

    /// The last hidden states `[batch, seq, hidden]` of token ids `[batch, seq]`; `real`
    /// (`[batch, seq]`) is true at real tokens and false at padding, which no token attends to.
    /// `seq` must not exceed `max_position_embeddings`.
    pub fn forward(
        &self,
        ids: Tensor<2, Int>,
        type_ids: Tensor<2, Int>,
        real: Tensor<2, Bool>,
    ) -> Tensor<3> {
        let [batch, seq] = ids.dims();
        let device = ids.device();
        let positions = Tensor::<1, Int>::arange(0..seq as i64, &device).reshape([1, seq]);
        let x = self.word_embeddings.forward(ids)
            + self.position_embeddings.forward(positions)
            + self.token_type_embeddings.forward(type_ids);
        let mut x = self.embeddings_norm.forward(x);
        if let Some(heads) = self.layers.first().map(|l| l.heads) {
            // `attention` masks where the mask is true: every query ignores the padded keys.
            let padding = real
                .bool_not()
                .reshape([batch, 1, 1, seq])
                .expand([batch, heads, seq, seq]);
            for layer in &self.layers {
                x = layer.forward(x, padding.clone());
            }
        }
        x
    }

    /// Sentence embeddings `[batch, hidden]`: the last hidden states averaged over the real
    /// tokens, then L2-normalised (sentence-transformers' mean pooling and `Normalize`).
    pub fn sentence_embeddings(
        &self,
        ids: Tensor<2, Int>,
        type_ids: Tensor<2, Int>,
        real: Tensor<2, Bool>,
    ) -> Tensor<2> {
        let hidden = self.forward(ids, type_ids, real.clone());
        l2_normalize(mean_pool(hidden, real))
    }
}

impl BertLayer {
    fn forward(&self, x: Tensor<3>, padding: Tensor<4, Bool>) -> Tensor<3> {
        let [batch, seq, width] = x.dims();
        let head_dim = width / self.heads;
        let split = |t: Tensor<3>| {
            t.reshape([batch, seq, self.heads, head_dim])
                .swap_dims(1, 2)
        };
        let context = attention(
            split(self.query.forward(x.clone())),
            split(self.key.forward(x.clone())),
            split(self.value.forward(x.clone())),
            Some(padding),
            None,
            AttentionModuleOptions::default(), // scale 1/√head_dim, not causal
        )
        .swap_dims(1, 2)
        .reshape([batch, seq, width]);
        let x = self
            .attention_norm
            .forward(self.attention_output.forward(context) + x);
        let hidden = gelu(self.intermediate.forward(x.clone()));
        self.output_norm.forward(self.output.forward(hidden) + x)
    }
}

/// The mean of `hidden` (`[batch, seq, width]`) over the positions where `real` (`[batch, seq]`)
/// is true: padding does not count. A row with no real token gives zeros.
pub fn mean_pool(hidden: Tensor<3>, real: Tensor<2, Bool>) -> Tensor<2> {
    let weights = real.float().unsqueeze_dim::<3>(2);
    let sum = (hidden * weights.clone()).sum_dim(1).squeeze_dim::<2>(1);
    let count = weights.sum_dim(1).squeeze_dim::<2>(1).clamp_min(1e-9);
    sum / count
}

/// Each row divided by its Euclidean norm (at least 1e-12, as PyTorch's `F.normalize`).
pub fn l2_normalize(x: Tensor<2>) -> Tensor<2> {
    let norm = x.clone().powi_scalar(2).sum_dim(1).sqrt().clamp_min(1e-12);
    x / norm
}

/// The tensors of a safetensors file, turned into Burn layers on `device`.
struct Weights<'a> {
    tensors: SafeTensors<'a>,
    device: &'a Device,
}

impl Weights<'_> {
    /// The f32 values of tensor `name`, which must have `shape`.
    fn read(&self, name: &str, shape: &[usize]) -> Result<Vec<f32>> {
        let view = self
            .tensors
            .tensor(name)
            .map_err(|_| anyhow!("the weights hold no tensor `{name}`"))?;
        ensure!(
            view.dtype() == Dtype::F32,
            "tensor `{name}` is {:?}, expected F32",
            view.dtype()
        );
        ensure!(
            view.shape() == shape,
            "tensor `{name}` has shape {:?}, config.json implies {shape:?}",
            view.shape()
        );
        Ok(view
            .data()
            .chunks_exact(4)
            .map(|b| f32::from_le_bytes([b[0], b[1], b[2], b[3]]))
            .collect())
    }

    fn tensor<const D: usize>(&self, name: &str, shape: [usize; D]) -> Result<Tensor<D>> {
        let values = self.read(name, &shape)?;
        Ok(Tensor::from_data(
            TensorData::new(values, shape),
            self.device,
        ))
    }

    /// A `Linear` from PyTorch's `{prefix}.weight` (`[d_out, d_in]`, transposed here to Burn's
    /// `[d_in, d_out]`) and `{prefix}.bias`.
    fn linear(&self, prefix: &str, d_in: usize, d_out: usize) -> Result<Linear> {
        let weight = self.read(&format!("{prefix}.weight"), &[d_out, d_in])?;
        let mut transposed = vec![0.0; weight.len()];
        for (o, row) in weight.chunks_exact(d_in).enumerate() {
            for (i, &v) in row.iter().enumerate() {
                transposed[i * d_out + o] = v;
            }
        }
        let weight = Tensor::from_data(TensorData::new(transposed, [d_in, d_out]), self.device);
        Ok(Linear {
            weight: Param::from_tensor(weight),
            bias: Some(Param::from_tensor(
                self.tensor(&format!("{prefix}.bias"), [d_out])?,
            )),
        })
    }

    fn layer_norm(&self, prefix: &str, width: usize, eps: f64) -> Result<LayerNorm> {
        let mut norm = LayerNormConfig::new(width)
            .with_epsilon(eps)
            .init(self.device);
        norm.gamma = Param::from_tensor(self.tensor(&format!("{prefix}.weight"), [width])?);
        norm.beta = Some(Param::from_tensor(
            self.tensor(&format!("{prefix}.bias"), [width])?,
        ));
        Ok(norm)
    }

    fn embedding(&self, prefix: &str, rows: usize, width: usize) -> Result<Embedding> {
        let weight = self.tensor(&format!("{prefix}.weight"), [rows, width])?;
        let mut embedding = EmbeddingConfig::new(1, width).init(self.device);
        embedding.weight = Param::from_tensor(weight);
        Ok(embedding)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn values<const D: usize>(t: Tensor<D>) -> Vec<f32> {
        t.into_data()
            .convert::<f32>()
            .try_into_vec::<f32>()
            .unwrap()
    }

    #[test]
    fn mean_pool_averages_real_tokens_only() {
        let device = Device::flex();
        // Two sequences of three tokens, width 2; the second has one padded position whose
        // (large) values must not count.
        let hidden = Tensor::<3>::from_data(
            [
                [[1.0, 2.0], [3.0, 4.0], [5.0, 9.0]],
                [[2.0, -2.0], [4.0, 0.0], [100.0, 100.0]],
            ],
            &device,
        );
        let real = Tensor::<2, Bool>::from_data([[true, true, true], [true, true, false]], &device);
        let pooled = values(mean_pool(hidden, real));
        let expected = [3.0, 5.0, 3.0, -1.0];
        for (p, e) in pooled.iter().zip(expected) {
            assert!((p - e).abs() < 1e-6, "{pooled:?} vs {expected:?}");
        }
    }

    #[test]
    fn l2_normalize_gives_unit_rows() {
        let device = Device::flex();
        let x = Tensor::<2>::from_data([[3.0, 4.0], [0.0, -2.0]], &device);
        let y = values(l2_normalize(x));
        let expected = [0.6, 0.8, 0.0, -1.0];
        for (a, e) in y.iter().zip(expected) {
            assert!((a - e).abs() < 1e-6, "{y:?}");
        }
    }

    #[test]
    fn gelu_is_the_exact_erf_form() {
        // GELU(1) = Φ(1) = 0.841344746…; the tanh approximation gives 0.841191990….
        let y = values(gelu(Tensor::<1>::from_data([1.0, -1.0], &Device::flex())));
        assert!((y[0] - 0.841_344_8).abs() < 1e-6, "{y:?}");
        assert!((y[1] + 0.158_655_3).abs() < 1e-6, "{y:?}");
    }

    #[test]
    fn config_check_rejects_what_is_not_built() {
        let good = BertConfig {
            vocab_size: 10,
            hidden_size: 12,
            num_hidden_layers: 1,
            num_attention_heads: 3,
            intermediate_size: 8,
            max_position_embeddings: 16,
            type_vocab_size: 2,
            layer_norm_eps: 1e-12,
            hidden_act: "gelu".into(),
            position_embedding_type: "absolute".into(),
        };
        good.check().unwrap();
        let cases = [
            (
                BertConfig {
                    num_attention_heads: 5,
                    ..good.clone()
                },
                "multiple",
            ),
            (
                BertConfig {
                    hidden_act: "gelu_new".into(),
                    ..good.clone()
                },
                "gelu",
            ),
            (
                BertConfig {
                    position_embedding_type: "relative_key".into(),
                    ..good.clone()
                },
                "absolute",
            ),
            (
                BertConfig {
                    layer_norm_eps: 0.0,
                    ..good.clone()
                },
                "layer_norm_eps",
            ),
            (
                BertConfig {
                    num_hidden_layers: 0,
                    ..good.clone()
                },
                "num_hidden_layers",
            ),
        ];
        for (config, word) in cases {
            let err = config.check().unwrap_err().to_string();
            assert!(err.contains(word), "{err}");
        }
    }
}
