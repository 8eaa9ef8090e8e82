//! Checkpoints: one burnpack file (Burn's record format), written atomically, checked by SHA-256
//! on load.
//!
//! The file holds the model's record under `model` (Burn's module record, which keeps the
//! `ParamId`s so that the optimizer state keyed by them lines up after loading), the optimizer's
//! record under `optimizer` ([`sharpness::SharpnessAware::state_record`]), the run's metadata as
//! JSON (metadata entry `meta`), and the SHA-256 of all of it (metadata entry `sha256`).

use std::fs;
use std::path::Path;

use anyhow::{Context, Result, bail};
use serde::{Deserialize, Serialize};
use sha2::{Digest, Sha256};
use sharpness::StateRecord;

use super::EpochMetrics;

/// What a checkpoint records besides the tensors.
#[derive(Clone, Debug, Serialize, Deserialize, PartialEq)]
pub struct CheckpointMeta {
    /// The run's configuration, as TOML (a resumed run must have the same).
    pub config_toml: String,
    /// Epochs completed.
    pub epochs_done: usize,
    /// Optimizer steps taken.
    pub steps: u64,
    /// Metrics of the completed epochs (exact: `serde_json`'s `float_roundtrip` writes every f64
    /// so that it reads back bit for bit, and a resumed run must report exactly what an
    /// uninterrupted one does).
    pub metrics: Vec<EpochMetrics>,
    /// SHA-256 of the verified training data ([`crate::data::Dataset::sha256`]); a resume on
    /// other data is refused. `None`: unverified data (or a checkpoint older than this field).
    #[serde(default)]
    pub data_sha256: Option<String>,
}

/// A decoded checkpoint.
pub struct Checkpoint {
    /// Metadata.
    pub meta: CheckpointMeta,
    /// The (synced) model's record.
    pub model: StateRecord,
    /// The optimizer's record.
    pub optimizer: StateRecord,
}

impl Checkpoint {
    /// Encodes the checkpoint.
    pub fn into_bytes(self) -> Result<Vec<u8>> {
        let mut record = StateRecord::default();
        record.nest("model", self.model);
        record.nest("optimizer", self.optimizer);
        record
            .metadata
            .insert("meta".into(), serde_json::to_string(&self.meta)?);
        let digest = digest(&record)?;
        record.metadata.insert("sha256".into(), digest);
        Ok(record.into_bytes()?)
    }

    /// Decodes and verifies a checkpoint; any damage is an error saying so.
    pub fn from_bytes(bytes: Vec<u8>) -> Result<Self> {
        let mut record = StateRecord::from_bytes(bytes)
            .context("not a sharpness-lab checkpoint (unreadable, or truncated)")?;
        let Some(stored) = record.metadata.remove("sha256") else {
            bail!("not a sharpness-lab checkpoint (no checksum)");
        };
        if digest(&record)? != stored {
            bail!("checksum mismatch: the file is corrupt");
        }
        let meta = record
            .metadata
            .remove("meta")
            .context("checkpoint without metadata")?;
        let meta = serde_json::from_str(&meta).context("unreadable checkpoint metadata")?;
        Ok(Self {
            meta,
            model: record.take("model"),
            optimizer: record.take("optimizer"),
        })
    }

    /// Writes the checkpoint atomically.
    pub fn save(self, path: &Path) -> Result<()> {
        write_atomic(path, &self.into_bytes()?)
    }

    /// Reads and verifies a checkpoint; errors name the file.
    pub fn load(path: &Path) -> Result<Self> {
        let bytes =
            fs::read(path).with_context(|| format!("cannot read checkpoint {}", path.display()))?;
        Self::from_bytes(bytes).with_context(|| {
            format!(
                "checkpoint {} is unusable; delete it (or its run directory) and start again",
                path.display()
            )
        })
    }
}

/// The SHA-256 (hex) of every tensor, scalar and metadata entry of `record`, in name order
/// (burnpack does not keep the order in which tensors were written).
fn digest(record: &StateRecord) -> Result<String> {
    let mut hasher = Sha256::new();
    let mut tensors = record.tensor_bytes()?;
    tensors.sort_by(|a, b| a.0.cmp(b.0));
    for (name, bytes) in tensors {
        hasher.update(name.as_bytes());
        hasher.update((bytes.len() as u64).to_le_bytes());
        hasher.update(&bytes[..]);
    }
    for (name, value) in &record.scalars {
        hasher.update(format!("{name}={value:?}\n").as_bytes());
    }
    for (name, value) in &record.metadata {
        hasher.update(format!("{name}={}\n", value.len()).as_bytes());
        hasher.update(value.as_bytes());
    }
    Ok(hasher
        .finalize()
        .iter()
        .map(|b| format!("{b:02x}"))
        .collect())
}

pub use crate::report::write_atomic;
