//! Checkpoints: one file, written atomically, checked by SHA-256 on load.
//!
//! Layout: the magic `SHARPCK1`, then three length-prefixed (u64 little-endian) sections —
//! metadata JSON, the model record (Burn's burnpack bytes, which keep the `ParamId`s so the
//! optimizer state keyed by them lines up after loading), the optimizer state
//! ([`sharpness::SharpnessAware::save_state`]) — and the SHA-256 of everything before it.

use std::fs;
use std::path::Path;

use anyhow::{Context, Result, bail};
use serde::{Deserialize, Serialize};
use sha2::{Digest, Sha256};

use super::EpochMetrics;

const MAGIC: &[u8; 8] = b"SHARPCK1";

/// What a checkpoint records besides the tensors.
#[derive(Clone, Debug, Serialize, Deserialize, PartialEq)]
pub struct CheckpointMeta {
    /// The run's configuration, as TOML (a resumed run must have the same).
    pub config_toml: String,
    /// Epochs completed.
    pub epochs_done: usize,
    /// Optimizer steps taken.
    pub steps: u64,
    /// Metrics of the completed epochs (stored bit-exactly: JSON text does not round-trip every
    /// f64, and a resumed run must report exactly what an uninterrupted one does).
    #[serde(with = "exact_metrics")]
    pub metrics: Vec<EpochMetrics>,
    /// SHA-256 of the verified training data ([`crate::data::Dataset::sha256`]); a resume on
    /// other data is refused. `None`: unverified data (or a checkpoint older than this field).
    #[serde(default)]
    pub data_sha256: Option<String>,
}

/// [`EpochMetrics`] as the bit patterns of their numbers.
mod exact_metrics {
    use serde::{Deserialize, Deserializer, Serialize, Serializer};

    use super::EpochMetrics;

    pub fn serialize<S: Serializer>(metrics: &[EpochMetrics], s: S) -> Result<S::Ok, S::Error> {
        let rows: Vec<[u64; 9]> = metrics
            .iter()
            .map(|m| {
                [
                    m.epoch as u64,
                    m.lr.to_bits(),
                    m.rho.to_bits(),
                    m.train_loss.to_bits(),
                    m.train_acc.to_bits(),
                    m.test_loss.to_bits(),
                    m.test_acc.to_bits(),
                    m.seconds.to_bits(),
                    m.examples_per_sec.to_bits(),
                ]
            })
            .collect();
        rows.serialize(s)
    }

    pub fn deserialize<'de, D: Deserializer<'de>>(d: D) -> Result<Vec<EpochMetrics>, D::Error> {
        let rows = Vec::<[u64; 9]>::deserialize(d)?;
        Ok(rows
            .into_iter()
            .map(|r| {
                let f = f64::from_bits;
                EpochMetrics {
                    epoch: r[0] as usize,
                    lr: f(r[1]),
                    rho: f(r[2]),
                    train_loss: f(r[3]),
                    train_acc: f(r[4]),
                    test_loss: f(r[5]),
                    test_acc: f(r[6]),
                    seconds: f(r[7]),
                    examples_per_sec: f(r[8]),
                }
            })
            .collect())
    }
}

/// A decoded checkpoint.
pub struct Checkpoint {
    /// Metadata.
    pub meta: CheckpointMeta,
    /// Burn `ModuleRecord` bytes of the (synced) model.
    pub model: Vec<u8>,
    /// [`sharpness::SharpnessAware::save_state`] bytes.
    pub optimizer: Vec<u8>,
}

impl Checkpoint {
    /// Encodes the checkpoint.
    pub fn to_bytes(&self) -> Result<Vec<u8>> {
        let meta = serde_json::to_vec(&self.meta)?;
        let mut out = Vec::with_capacity(meta.len() + self.model.len() + self.optimizer.len() + 64);
        out.extend_from_slice(MAGIC);
        for section in [&meta, &self.model, &self.optimizer] {
            out.extend_from_slice(&(section.len() as u64).to_le_bytes());
            out.extend_from_slice(section);
        }
        let digest = Sha256::digest(&out);
        out.extend_from_slice(&digest);
        Ok(out)
    }

    /// Decodes and verifies a checkpoint; any damage is an error saying so.
    pub fn from_bytes(bytes: &[u8]) -> Result<Self> {
        if bytes.len() < MAGIC.len() + 32 || &bytes[..MAGIC.len()] != MAGIC {
            bail!(
                "not a sharpness-lab checkpoint (bad header or truncated to {} bytes)",
                bytes.len()
            );
        }
        let (body, digest) = bytes.split_at(bytes.len() - 32);
        if Sha256::digest(body).as_slice() != digest {
            bail!("checksum mismatch: the file is corrupt or truncated");
        }
        let mut rest = &body[MAGIC.len()..];
        let mut sections = Vec::new();
        for _ in 0..3 {
            if rest.len() < 8 {
                bail!("truncated section header");
            }
            let (len, tail) = rest.split_at(8);
            let len = u64::from_le_bytes(len.try_into().expect("8 bytes")) as usize;
            if tail.len() < len {
                bail!("truncated section");
            }
            let (section, tail) = tail.split_at(len);
            sections.push(section.to_vec());
            rest = tail;
        }
        if !rest.is_empty() {
            bail!("{} unexpected trailing bytes", rest.len());
        }
        let optimizer = sections.pop().expect("3 sections");
        let model = sections.pop().expect("3 sections");
        let meta =
            serde_json::from_slice(&sections[0]).context("unreadable checkpoint metadata")?;
        Ok(Self {
            meta,
            model,
            optimizer,
        })
    }

    /// Writes the checkpoint atomically.
    pub fn save(&self, path: &Path) -> Result<()> {
        write_atomic(path, &self.to_bytes()?)
    }

    /// Reads and verifies a checkpoint; errors name the file.
    pub fn load(path: &Path) -> Result<Self> {
        let bytes =
            fs::read(path).with_context(|| format!("cannot read checkpoint {}", path.display()))?;
        Self::from_bytes(&bytes).with_context(|| {
            format!(
                "checkpoint {} is unusable; delete it (or its run directory) and start again",
                path.display()
            )
        })
    }
}

pub use crate::report::write_atomic;
