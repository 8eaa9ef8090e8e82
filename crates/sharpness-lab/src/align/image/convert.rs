//! The one-off conversion of the package's legacy torch pickle into safetensors.
//!
//! The EfficientNet-Lite0 weights ship as a legacy (pre-1.6, non-zip) `torch.save` stream: a
//! magic-number pickle, the protocol version, system info, the state-dict pickle (storages as
//! persistent ids, tensors as `torch._utils._rebuild_tensor_v2`), the storage key list, then each
//! storage as an `i64` element count and its raw little-endian bytes. Burn's `pytorch-reader`
//! parses that format (bounds-checked, sizes checked before allocating, strided views gathered
//! to row-major); this module keeps only the glue to safetensors. Several of the package's
//! tensors are stored TF-style (HWIO), so the gather matters.

use std::path::Path;

use anyhow::{Context, Result, anyhow};
use pytorch_reader::{DType, PytorchReader};
use safetensors::Dtype;
use safetensors::tensor::TensorView;

use crate::report::write_atomic;

/// Converts the legacy torch checkpoint `pth` into `safetensors` (written atomically), keeping
/// every tensor under its state-dict name, in its dtype and row-major layout.
pub fn convert_checkpoint(pth: &Path, safetensors: &Path) -> Result<()> {
    let len = std::fs::metadata(pth)
        .with_context(|| format!("reading {}", pth.display()))?
        .len();
    let reader = PytorchReader::new(pth).map_err(|e| {
        anyhow!(
            "{} ({len} bytes) is not a readable torch checkpoint (truncated or corrupt?): {e}",
            pth.display()
        )
    })?;
    let mut names = reader.keys();
    names.sort();
    let mut tensors = Vec::with_capacity(names.len());
    for name in names {
        let t = &reader.tensors()[&name];
        let dtype = safetensors_dtype(t.dtype())
            .with_context(|| format!("{}: tensor {name}", pth.display()))?;
        // `read` gives native-endian bytes; safetensors is little-endian, as is every target
        // this lab runs on.
        let bytes = t.read().map_err(|e| {
            anyhow!(
                "{} ({len} bytes) is truncated or corrupt: {e}",
                pth.display()
            )
        })?;
        tensors.push((name, dtype, t.shape().to_vec(), bytes));
    }
    let views = tensors
        .iter()
        .map(|(name, dtype, shape, bytes)| {
            Ok((name, TensorView::new(*dtype, shape.clone(), bytes)?))
        })
        .collect::<Result<Vec<_>, safetensors::SafeTensorError>>()
        .with_context(|| format!("converting {}", pth.display()))?;
    let out = safetensors::serialize(views, None)
        .with_context(|| format!("converting {}", pth.display()))?;
    write_atomic(safetensors, &out)
}

fn safetensors_dtype(dtype: DType) -> Result<Dtype> {
    Ok(match dtype {
        DType::F64 => Dtype::F64,
        DType::F32 => Dtype::F32,
        DType::F16 => Dtype::F16,
        DType::BF16 => Dtype::BF16,
        DType::I64 => Dtype::I64,
        DType::I32 => Dtype::I32,
        DType::I16 => Dtype::I16,
        DType::I8 => Dtype::I8,
        DType::U64 => Dtype::U64,
        DType::U32 => Dtype::U32,
        DType::U16 => Dtype::U16,
        DType::U8 => Dtype::U8,
        DType::Bool => Dtype::BOOL,
    })
}

#[cfg(test)]
pub(crate) mod tests {
    use super::*;
    use safetensors::SafeTensors;

    /// Pickle protocol-2 opcodes, as `torch.save` (legacy) emits them.
    mod op {
        pub const PROTO: u8 = 0x80;
        pub const LONG1: u8 = 0x8a;
        pub const BININT: u8 = b'J';
        pub const BININT2: u8 = b'M';
        pub const BINUNICODE: u8 = b'X';
        pub const EMPTY_DICT: u8 = b'}';
        pub const EMPTY_LIST: u8 = b']';
        pub const EMPTY_TUPLE: u8 = b')';
        pub const MARK: u8 = b'(';
        pub const TUPLE: u8 = b't';
        pub const SETITEMS: u8 = b'u';
        pub const APPENDS: u8 = b'e';
        pub const GLOBAL: u8 = b'c';
        pub const REDUCE: u8 = b'R';
        pub const BINPERSID: u8 = b'Q';
        pub const NEWTRUE: u8 = 0x88;
        pub const NEWFALSE: u8 = 0x89;
        pub const NONE: u8 = b'N';
        pub const STOP: u8 = b'.';
    }

    /// A pickle being written with the opcodes `torch.save` (PyTorch ≤ 1.5, protocol 2) writes
    /// for a state dict, except that every int is a `BININT` (torch's pickler picks the
    /// shortest int opcode) and there is no memo (`BINPUT`), which only shares repeated objects.
    /// Python's `pickle` reads the result as the same structure as the package's real file.
    #[derive(Default)]
    struct Pickle(Vec<u8>);

    impl Pickle {
        fn new() -> Self {
            Self(vec![op::PROTO, 2])
        }
        fn op(&mut self, op: u8) -> &mut Self {
            self.0.push(op);
            self
        }
        fn int(&mut self, v: i32) -> &mut Self {
            self.op(op::BININT);
            self.0.extend(v.to_le_bytes());
            self
        }
        fn str(&mut self, s: &str) -> &mut Self {
            self.op(op::BINUNICODE);
            self.0.extend((s.len() as u32).to_le_bytes());
            self.0.extend(s.as_bytes());
            self
        }
        fn global(&mut self, module: &str, name: &str) -> &mut Self {
            self.op(op::GLOBAL);
            self.0.extend(format!("{module}\n{name}\n").as_bytes());
            self
        }
        fn tuple(&mut self, ints: &[i32]) -> &mut Self {
            self.op(op::MARK);
            for &i in ints {
                self.int(i);
            }
            self.op(op::TUPLE)
        }
        fn ordered_dict(&mut self) -> &mut Self {
            self.global("collections", "OrderedDict")
                .op(op::EMPTY_TUPLE)
                .op(op::REDUCE)
        }
        fn stop(&mut self) -> Vec<u8> {
            self.op(op::STOP);
            std::mem::take(&mut self.0)
        }
    }

    /// A tensor of the test checkpoint: a view into one of its storages.
    struct View {
        name: &'static str,
        storage: &'static str,
        offset: i32,
        shape: &'static [i32],
        stride: &'static [i32],
    }

    /// The storages: key, torch storage class, element count, little-endian bytes.
    fn storages() -> Vec<(&'static str, &'static str, usize, Vec<u8>)> {
        let floats: Vec<f32> = vec![0.5, -1.0, 2.25, 3.0, -4.5, 5.125];
        vec![
            (
                "0",
                "FloatStorage",
                6,
                floats.iter().flat_map(|v| v.to_le_bytes()).collect(),
            ),
            ("1", "LongStorage", 1, 7i64.to_le_bytes().to_vec()),
        ]
    }

    const VIEWS: [View; 3] = [
        // Column-major [2, 3] (strides (1, 2)), like the package's HWIO weights:
        // element [i, j] is storage[i + 2j].
        View {
            name: "a.weight",
            storage: "0",
            offset: 0,
            shape: &[2, 3],
            stride: &[1, 2],
        },
        // Shares storage 0 at offset 4.
        View {
            name: "a.bias",
            storage: "0",
            offset: 4,
            shape: &[2],
            stride: &[1],
        },
        // A 0-d int64, like `num_batches_tracked`.
        View {
            name: "bn.num_batches_tracked",
            storage: "1",
            offset: 0,
            shape: &[],
            stride: &[],
        },
    ];

    /// The bytes of a legacy `torch.save(state_dict)` holding [`VIEWS`], laid out as PyTorch
    /// ≤ 1.5 writes them (`torch/serialization.py`, `_legacy_save`).
    pub(crate) fn legacy_checkpoint() -> Vec<u8> {
        let storages = storages();
        let mut out = Vec::new();
        // The magic number 0x1950a86a20f9469cfc6c as a LONG1, then the protocol version.
        let mut p = Pickle::new();
        p.op(op::LONG1).0.push(10);
        p.0.extend(0x1950a86a20f9469cfc6cu128.to_le_bytes()[..10].iter());
        out.extend(p.stop());
        let mut p = Pickle::new();
        p.op(op::BININT2).0.extend(1001u16.to_le_bytes());
        out.extend(p.stop());
        // System info.
        let mut p = Pickle::new();
        p.op(op::EMPTY_DICT).op(op::MARK);
        p.str("protocol_version").int(1001);
        p.str("little_endian").op(op::NEWTRUE);
        p.str("type_sizes").op(op::EMPTY_DICT).op(op::MARK);
        p.str("short").int(2).str("int").int(4).str("long").int(4);
        p.op(op::SETITEMS).op(op::SETITEMS);
        out.extend(p.stop());
        // The state dict: an OrderedDict of rebuilt tensors whose storages are persistent ids
        // ('storage', class, key, location, size, view_metadata).
        let mut p = Pickle::new();
        p.ordered_dict().op(op::MARK);
        for v in &VIEWS {
            let (_, class, size, _) = storages.iter().find(|s| s.0 == v.storage).unwrap();
            p.str(v.name);
            p.global("torch._utils", "_rebuild_tensor_v2").op(op::MARK);
            p.op(op::MARK).str("storage").global("torch", class);
            p.str(v.storage).str("cpu").int(*size as i32).op(op::NONE);
            p.op(op::TUPLE).op(op::BINPERSID);
            p.int(v.offset)
                .tuple(v.shape)
                .tuple(v.stride)
                .op(op::NEWFALSE);
            p.ordered_dict().op(op::TUPLE).op(op::REDUCE);
        }
        p.op(op::SETITEMS);
        out.extend(p.stop());
        // The storage keys, then each storage: element count (i64) and bytes.
        let mut p = Pickle::new();
        p.op(op::EMPTY_LIST).op(op::MARK);
        for (key, ..) in &storages {
            p.str(key);
        }
        p.op(op::APPENDS);
        out.extend(p.stop());
        for (_, _, size, bytes) in &storages {
            out.extend((*size as i64).to_le_bytes());
            out.extend(bytes);
        }
        out
    }

    fn f32s(bytes: &[u8]) -> Vec<f32> {
        bytes
            .chunks_exact(4)
            .map(|c| f32::from_le_bytes(c.try_into().unwrap()))
            .collect()
    }

    #[test]
    fn converts_a_legacy_checkpoint() {
        let dir = tempfile::tempdir().unwrap();
        let pth = dir.path().join("tiny.pth");
        let out = dir.path().join("tiny.safetensors");
        std::fs::write(&pth, legacy_checkpoint()).unwrap();
        convert_checkpoint(&pth, &out).unwrap();

        let bytes = std::fs::read(&out).unwrap();
        let st = SafeTensors::deserialize(&bytes).unwrap();
        let mut names = st.names();
        names.sort();
        assert_eq!(names, ["a.bias", "a.weight", "bn.num_batches_tracked"]);

        let w = st.tensor("a.weight").unwrap();
        assert_eq!((w.dtype(), w.shape()), (Dtype::F32, &[2, 3][..]));
        // Row-major gather of storage [0.5, -1, 2.25, 3, -4.5, 5.125] at strides (1, 2).
        assert_eq!(f32s(w.data()), [0.5, 2.25, -4.5, -1.0, 3.0, 5.125]);
        let b = st.tensor("a.bias").unwrap();
        assert_eq!((b.dtype(), b.shape()), (Dtype::F32, &[2][..]));
        assert_eq!(f32s(b.data()), [-4.5, 5.125]);
        let n = st.tensor("bn.num_batches_tracked").unwrap();
        assert_eq!((n.dtype(), n.shape()), (Dtype::I64, &[][..]));
        assert_eq!(n.data(), 7i64.to_le_bytes());
        // Atomic write: no temporary file left behind.
        assert_eq!(std::fs::read_dir(dir.path()).unwrap().count(), 2);
    }

    #[test]
    fn truncated_or_corrupt_checkpoints_are_errors_naming_the_file() {
        let full = legacy_checkpoint();
        let dir = tempfile::tempdir().unwrap();
        let pth = dir.path().join("cut.pth");
        let out = dir.path().join("cut.safetensors");
        // Inside the magic, the sys info, the state dict, the key list, a storage header, the
        // last storage's bytes.
        let storage_bytes = 8 + 24 + 8 + 8;
        let cuts = [
            0,
            5,
            40,
            full.len() / 2,
            full.len() - storage_bytes - 3,
            full.len() - storage_bytes + 4,
            full.len() - 1,
        ];
        for cut in cuts {
            std::fs::write(&pth, &full[..cut]).unwrap();
            let err = convert_checkpoint(&pth, &out).unwrap_err();
            let msg = format!("{err:#}");
            println!("cut at {cut}: {msg}");
            assert!(msg.contains("cut.pth"), "cut at {cut}: {msg}");
            assert!(!out.exists(), "cut at {cut}");
        }
        // An invalid opcode in the state dict.
        let mut bad = full.clone();
        let at = full.windows(8).position(|w| w == b"a.weight").unwrap() - 6;
        bad[at] = 0xff;
        std::fs::write(&pth, &bad).unwrap();
        let msg = format!("{:#}", convert_checkpoint(&pth, &out).unwrap_err());
        assert!(msg.contains("cut.pth"), "{msg}");
        // A missing file.
        let missing = dir.path().join("missing.pth");
        let msg = format!("{:#}", convert_checkpoint(&missing, &out).unwrap_err());
        assert!(msg.contains("missing.pth"), "{msg}");
    }
}
