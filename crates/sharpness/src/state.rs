//! Saved state as one record in Burn's **burnpack** format, the format of Burn's module and
//! optimizer records.
//!
//! A [`StateRecord`] holds named tensors (with their parameter ids), scalars and text metadata.
//! Records nest: [`StateRecord::nest`] files one record under a prefix of another and
//! [`StateRecord::take`] takes it out again, so the optimizer state (the base optimizer's own
//! record, the estimator's state, the step counter) is one record, and a training checkpoint
//! can put the model's record beside it in one file.

use std::collections::BTreeMap;

use burn::optim::{StateSink, StateSource};
use burn::tensor::{Bytes, TensorData};
use burn_pack::{Reader, Scalar, Tensor, Writer};

use crate::error::SharpnessError;

/// Named tensors, scalars and metadata, written and read as one burnpack buffer.
#[derive(Default)]
pub struct StateRecord {
    tensors: Vec<Tensor>,
    /// Named scalars (counters, hyperparameters).
    pub scalars: BTreeMap<String, Scalar>,
    /// Named text.
    pub metadata: BTreeMap<String, String>,
}

impl std::fmt::Debug for StateRecord {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("StateRecord")
            .field("tensors", &self.tensors.len())
            .field("scalars", &self.scalars)
            .field("metadata", &self.metadata.keys().collect::<Vec<_>>())
            .finish()
    }
}

impl StateRecord {
    /// Decodes a burnpack buffer; damage to its header or layout is an error saying what.
    pub fn from_bytes(bytes: Vec<u8>) -> Result<Self, SharpnessError> {
        let reader = Reader::from_bytes(Bytes::from_bytes_vec(bytes)).map_err(corrupt)?;
        let scalars = reader.scalars().clone();
        let metadata = reader.metadata().clone();
        let tensors = reader.into_tensors().map_err(corrupt)?;
        Ok(Self {
            tensors,
            scalars,
            metadata,
        })
    }

    /// Encodes the record as a burnpack buffer.
    pub fn into_bytes(self) -> Result<Vec<u8>, SharpnessError> {
        let mut writer = Writer::new(self.tensors);
        for (key, value) in &self.scalars {
            writer = writer.with_scalar(key, *value);
        }
        for (key, value) in &self.metadata {
            writer = writer.with_metadata(key, value);
        }
        Ok(writer.into_bytes().map_err(corrupt)?.to_vec())
    }

    /// Files every entry of `other` under `prefix` (`name` becomes `prefix.name`).
    pub fn nest(&mut self, prefix: &str, other: StateRecord) {
        let under = |name: &str| format!("{prefix}.{name}");
        self.tensors.extend(other.tensors.into_iter().map(|mut t| {
            t.name = under(&t.name);
            t
        }));
        self.scalars
            .extend(other.scalars.into_iter().map(|(k, v)| (under(&k), v)));
        self.metadata
            .extend(other.metadata.into_iter().map(|(k, v)| (under(&k), v)));
    }

    /// Removes the entries under `prefix` and returns them as a record of their own (the inverse
    /// of [`StateRecord::nest`]).
    pub fn take(&mut self, prefix: &str) -> StateRecord {
        let pat = format!("{prefix}.");
        let strip = |name: &str| name.strip_prefix(&pat).map(str::to_owned);
        let mut taken = StateRecord::default();
        for mut t in std::mem::take(&mut self.tensors) {
            match strip(&t.name) {
                Some(name) => {
                    t.name = name;
                    taken.tensors.push(t);
                }
                None => self.tensors.push(t),
            }
        }
        for (key, value) in std::mem::take(&mut self.scalars) {
            match strip(&key) {
                Some(name) => taken.scalars.insert(name, value),
                None => self.scalars.insert(key, value),
            };
        }
        for (key, value) in std::mem::take(&mut self.metadata) {
            match strip(&key) {
                Some(name) => taken.metadata.insert(name, value),
                None => self.metadata.insert(key, value),
            };
        }
        taken
    }

    /// Whether the record holds nothing.
    pub fn is_empty(&self) -> bool {
        self.tensors.is_empty() && self.scalars.is_empty() && self.metadata.is_empty()
    }

    /// The names and raw little-endian bytes of the tensors, in order (e.g. for a checksum).
    pub fn tensor_bytes(&self) -> Result<Vec<(&str, Bytes)>, SharpnessError> {
        self.tensors
            .iter()
            .map(|t| Ok((t.name.as_str(), t.to_bytes().map_err(corrupt)?)))
            .collect()
    }

    /// An unsigned integer scalar.
    pub fn integer(&self, name: &str) -> Result<u64, SharpnessError> {
        self.scalars
            .get(name)
            .and_then(|s| u64::try_from(*s).ok())
            .ok_or_else(|| SharpnessError::State(format!("missing integer `{name}`")))
    }

    /// The record of what Burn's state visitors wrote ([`crate::Lifecycle::save_state`]).
    pub fn from_sink(sink: StateSink) -> Self {
        let tensors = sink
            .tensors
            .into_iter()
            .map(|(name, data)| {
                let shape = data.shape().to_vec();
                let dtype = data.dtype();
                Tensor::new(name, dtype, shape, None, data.into_bytes())
            })
            .collect();
        Self {
            tensors,
            scalars: sink.scalars.into_iter().collect(),
            metadata: BTreeMap::new(),
        }
    }

    /// The record as the source Burn's state visitors read ([`crate::Lifecycle::load_state`]).
    pub fn into_source(self) -> Result<StateSource, SharpnessError> {
        let mut source = StateSource::new(self.scalars);
        for t in self.tensors {
            let (name, dtype, shape, _, bytes) = t.into_parts().map_err(corrupt)?;
            source.insert_tensor(name, TensorData::from_bytes(bytes, shape, dtype));
        }
        Ok(source)
    }
}

fn corrupt(error: burn_pack::Error) -> SharpnessError {
    SharpnessError::State(format!("not a readable burnpack record: {error}"))
}
