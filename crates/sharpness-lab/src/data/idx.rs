//! Reader (and a small writer) for the idx format used by MNIST and Fashion-MNIST.
//!
//! An idx file is a 4-byte big-endian magic number (`0x0000_08NN`: unsigned bytes,
//! `NN` dimensions), one big-endian `u32` per dimension, then the payload. Only the
//! two layouts the datasets use are accepted: u8 images (magic 2051, dims
//! `n × rows × cols`) and u8 labels (magic 2049, dims `n`). Files may be raw or
//! gzip-compressed; compression is detected by the gzip magic `1f 8b`, not by the
//! file name.
//!
//! Every failure is an [`IdxError`] naming the file and the byte offset (in the
//! decompressed stream for gzip files) where reading went wrong. The payload buffer
//! grows with the data actually read, so a corrupt header cannot cause a huge
//! allocation.

use std::fs::File;
use std::io::{self, BufReader, Read};
use std::path::{Path, PathBuf};

use flate2::read::GzDecoder;

/// Magic number of a u8 image file (`n × rows × cols`).
pub const IMAGES_MAGIC: u32 = 0x0000_0803;
/// Magic number of a u8 label file (`n`).
pub const LABELS_MAGIC: u32 = 0x0000_0801;
/// Largest accepted payload, in bytes (product of all dimensions).
pub const MAX_PAYLOAD: u64 = 1 << 31;
/// Labels must be below this value (ten classes).
pub const NUM_CLASSES: u8 = 10;

/// Initial payload buffer size cap; the buffer grows only as data arrives.
const INITIAL_CAPACITY: u64 = 1 << 26;

/// An error while reading an idx file.
#[derive(Debug, thiserror::Error)]
pub enum IdxError {
    /// The file could not be opened.
    #[error("{path}: cannot open: {source}")]
    Open {
        /// The file.
        path: PathBuf,
        /// The underlying error.
        source: io::Error,
    },
    /// Reading (or decompressing) failed part-way.
    #[error("{path}: read error at byte {offset}: {source}")]
    Io {
        /// The file.
        path: PathBuf,
        /// Offset (decompressed) of the first byte that could not be read.
        offset: u64,
        /// The underlying error.
        source: io::Error,
    },
    /// The file ended before the header or payload was complete.
    #[error("{path}: truncated at byte {offset}: expected {expected} bytes")]
    Truncated {
        /// The file.
        path: PathBuf,
        /// Offset (decompressed) where the data ran out.
        offset: u64,
        /// Total number of bytes the header promises.
        expected: u64,
    },
    /// The magic number is not the one expected.
    #[error(
        "{path}: bad magic number at byte {offset}: found {found:#010x}, expected {expected:#010x}"
    )]
    BadMagic {
        /// The file.
        path: PathBuf,
        /// Always 0.
        offset: u64,
        /// Magic number found.
        found: u32,
        /// Magic number expected.
        expected: u32,
    },
    /// A dimension is zero where it must not be, or the payload would be too large.
    #[error("{path}: bad dimension at byte {offset}: {reason}")]
    BadDims {
        /// The file.
        path: PathBuf,
        /// Offset of the offending dimension field.
        offset: u64,
        /// What is wrong.
        reason: String,
    },
    /// There are bytes after the payload.
    #[error("{path}: unexpected data at byte {offset}: the header promises only {offset} bytes")]
    TrailingData {
        /// The file.
        path: PathBuf,
        /// Offset of the first extra byte (= expected length).
        offset: u64,
    },
    /// A label is not a class index.
    #[error("{path}: label {label} at byte {offset} is not below {NUM_CLASSES}")]
    BadLabel {
        /// The file.
        path: PathBuf,
        /// Offset of the offending label.
        offset: u64,
        /// The label found.
        label: u8,
    },
    /// Images and labels loaded as a pair have different counts.
    #[error("{images_path} holds {images} images but {labels_path} holds {labels} labels")]
    CountMismatch {
        /// The image file.
        images_path: PathBuf,
        /// Its number of images.
        images: usize,
        /// The label file.
        labels_path: PathBuf,
        /// Its number of labels.
        labels: usize,
    },
}

impl IdxError {
    /// The file the error is about (the image file for a count mismatch).
    pub fn path(&self) -> &Path {
        match self {
            Self::Open { path, .. }
            | Self::Io { path, .. }
            | Self::Truncated { path, .. }
            | Self::BadMagic { path, .. }
            | Self::BadDims { path, .. }
            | Self::TrailingData { path, .. }
            | Self::BadLabel { path, .. } => path,
            Self::CountMismatch { images_path, .. } => images_path,
        }
    }

    /// The byte offset where reading went wrong, if the error has one.
    pub fn offset(&self) -> Option<u64> {
        match self {
            Self::Io { offset, .. }
            | Self::Truncated { offset, .. }
            | Self::BadMagic { offset, .. }
            | Self::BadDims { offset, .. }
            | Self::TrailingData { offset, .. }
            | Self::BadLabel { offset, .. } => Some(*offset),
            Self::Open { .. } | Self::CountMismatch { .. } => None,
        }
    }
}

/// A stack of u8 images, row-major, `n × rows × cols` bytes.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct IdxImages {
    /// Number of images.
    pub n: usize,
    /// Rows per image.
    pub rows: usize,
    /// Columns per image.
    pub cols: usize,
    /// Pixels, `n * rows * cols` bytes, image after image.
    pub pixels: Vec<u8>,
}

/// Reads a u8 image file (magic 2051), raw or gzip.
pub fn read_images(path: &Path) -> Result<IdxImages, IdxError> {
    let (dims, pixels) = read_idx(path, IMAGES_MAGIC, 3)?;
    Ok(IdxImages {
        n: dims[0],
        rows: dims[1],
        cols: dims[2],
        pixels,
    })
}

/// Reads a u8 label file (magic 2049), raw or gzip; every label must be below 10.
pub fn read_labels(path: &Path) -> Result<Vec<u8>, IdxError> {
    let (_, labels) = read_idx(path, LABELS_MAGIC, 1)?;
    check_labels(path, &labels)?;
    Ok(labels)
}

/// Reads an image file and its label file, checking that the counts agree.
pub fn read_pair(images_path: &Path, labels_path: &Path) -> Result<(IdxImages, Vec<u8>), IdxError> {
    let images = read_images(images_path)?;
    let labels = read_labels(labels_path)?;
    if images.n != labels.len() {
        return Err(IdxError::CountMismatch {
            images_path: images_path.to_path_buf(),
            images: images.n,
            labels_path: labels_path.to_path_buf(),
            labels: labels.len(),
        });
    }
    Ok((images, labels))
}

/// Encodes images as a raw idx file (the inverse of [`read_images`]).
///
/// Panics if `pixels.len() != n * rows * cols` or a dimension exceeds `u32`.
pub fn encode_images(n: usize, rows: usize, cols: usize, pixels: &[u8]) -> Vec<u8> {
    assert_eq!(
        pixels.len(),
        n * rows * cols,
        "pixel count does not match dims"
    );
    encode(IMAGES_MAGIC, &[n, rows, cols], pixels)
}

/// Encodes labels as a raw idx file (the inverse of [`read_labels`]).
pub fn encode_labels(labels: &[u8]) -> Vec<u8> {
    encode(LABELS_MAGIC, &[labels.len()], labels)
}

fn encode(magic: u32, dims: &[usize], payload: &[u8]) -> Vec<u8> {
    let mut out = Vec::with_capacity(4 + 4 * dims.len() + payload.len());
    out.extend_from_slice(&magic.to_be_bytes());
    for &d in dims {
        let d = u32::try_from(d).expect("idx dimension exceeds u32");
        out.extend_from_slice(&d.to_be_bytes());
    }
    out.extend_from_slice(payload);
    out
}

/// Reads one idx file: validates the header and returns the dims and payload.
fn read_idx(path: &Path, magic: u32, ndims: usize) -> Result<(Vec<usize>, Vec<u8>), IdxError> {
    let mut reader = open(path)?;
    let header_len = 4 + 4 * ndims as u64;
    let found = be_u32(&read_header(&mut reader, 4, header_len)?, 0);
    if found != magic {
        return Err(reader.err_magic(found, magic));
    }
    let dim_bytes = read_header(&mut reader, header_len - 4, header_len)?;
    let dims: Vec<u64> = (0..ndims)
        .map(|i| u64::from(be_u32(&dim_bytes, 4 * i)))
        .collect();
    let payload_len = check_dims(&reader.path, &dims)?;
    let payload = read_payload(&mut reader, header_len, payload_len)?;
    Ok((dims.iter().map(|&d| d as usize).collect(), payload))
}

/// Validates dims: every dimension after the first (the count) must be non-zero and
/// the product at most [`MAX_PAYLOAD`]. Returns the payload length.
fn check_dims(path: &Path, dims: &[u64]) -> Result<u64, IdxError> {
    let mut product: u64 = 1;
    for (i, &d) in dims.iter().enumerate() {
        let offset = 4 + 4 * i as u64;
        let bad = |reason: String| IdxError::BadDims {
            path: path.to_path_buf(),
            offset,
            reason,
        };
        if i > 0 && d == 0 {
            return Err(bad(format!("dimension {i} is zero")));
        }
        product = product.saturating_mul(d);
        if product > MAX_PAYLOAD {
            return Err(bad(format!("payload exceeds {MAX_PAYLOAD} bytes")));
        }
    }
    Ok(product)
}

/// Errors at the first label that is not a class index (labels start at byte 8).
fn check_labels(path: &Path, labels: &[u8]) -> Result<(), IdxError> {
    match labels.iter().position(|&l| l >= NUM_CLASSES) {
        None => Ok(()),
        Some(i) => Err(IdxError::BadLabel {
            path: path.to_path_buf(),
            offset: 8 + i as u64,
            label: labels[i],
        }),
    }
}

/// The big-endian `u32` at `bytes[at..at + 4]`.
fn be_u32(bytes: &[u8], at: usize) -> u32 {
    u32::from_be_bytes([bytes[at], bytes[at + 1], bytes[at + 2], bytes[at + 3]])
}

/// Reads exactly `len` bytes of a header that is `header_len` bytes long.
fn read_header(reader: &mut Tracked, len: u64, header_len: u64) -> Result<Vec<u8>, IdxError> {
    let bytes = reader.read_up_to(len)?;
    if (bytes.len() as u64) < len {
        return Err(reader.err_truncated(header_len));
    }
    Ok(bytes)
}

/// Reads exactly `len` payload bytes and checks that nothing follows them.
fn read_payload(reader: &mut Tracked, header_len: u64, len: u64) -> Result<Vec<u8>, IdxError> {
    let payload = reader.read_up_to(len)?;
    let total = header_len + len;
    if (payload.len() as u64) < len {
        return Err(reader.err_truncated(total));
    }
    if !reader.read_up_to(1)?.is_empty() {
        return Err(IdxError::TrailingData {
            path: reader.path.clone(),
            offset: total,
        });
    }
    Ok(payload)
}

/// A (possibly decompressing) reader that knows its file and position.
struct Tracked {
    path: PathBuf,
    inner: Box<dyn Read>,
    pos: u64,
}

/// Opens `path`, wrapping it in a gzip decoder when it starts with `1f 8b`.
fn open(path: &Path) -> Result<Tracked, IdxError> {
    let open_err = |source| IdxError::Open {
        path: path.to_path_buf(),
        source,
    };
    let mut file = File::open(path).map_err(open_err)?;
    let mut magic = Vec::with_capacity(2);
    (&mut file)
        .take(2)
        .read_to_end(&mut magic)
        .map_err(open_err)?;
    let prefix = io::Cursor::new(magic.clone());
    let raw = BufReader::new(prefix.chain(file));
    let inner: Box<dyn Read> = if magic == [0x1f, 0x8b] {
        Box::new(BufReader::new(GzDecoder::new(raw)))
    } else {
        Box::new(raw)
    };
    Ok(Tracked {
        path: path.to_path_buf(),
        inner,
        pos: 0,
    })
}

impl Tracked {
    /// Reads up to `len` bytes (fewer only at end of stream).
    fn read_up_to(&mut self, len: u64) -> Result<Vec<u8>, IdxError> {
        let mut buf = Vec::with_capacity(len.min(INITIAL_CAPACITY) as usize);
        let result = (&mut self.inner).take(len).read_to_end(&mut buf);
        self.pos += buf.len() as u64;
        match result {
            Ok(_) => Ok(buf),
            Err(source) => Err(IdxError::Io {
                path: self.path.clone(),
                offset: self.pos,
                source,
            }),
        }
    }

    fn err_truncated(&self, expected: u64) -> IdxError {
        IdxError::Truncated {
            path: self.path.clone(),
            offset: self.pos,
            expected,
        }
    }

    fn err_magic(&self, found: u32, expected: u32) -> IdxError {
        IdxError::BadMagic {
            path: self.path.clone(),
            offset: 0,
            found,
            expected,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn write(dir: &Path, name: &str, bytes: &[u8]) -> PathBuf {
        let path = dir.join(name);
        std::fs::write(&path, bytes).unwrap();
        path
    }

    fn gzip(bytes: &[u8]) -> Vec<u8> {
        use std::io::Write;
        let mut enc = flate2::write::GzEncoder::new(Vec::new(), flate2::Compression::fast());
        enc.write_all(bytes).unwrap();
        enc.finish().unwrap()
    }

    #[test]
    fn round_trips_raw_and_gzip_images() {
        let tmp = tempfile::tempdir().unwrap();
        let dir = tmp.path();
        let pixels: Vec<u8> = (0..2 * 3 * 4).map(|i| i as u8 * 7).collect();
        let bytes = encode_images(2, 3, 4, &pixels);
        for (name, data) in [("raw", bytes.clone()), ("gz.bin", gzip(&bytes))] {
            let got = read_images(&write(dir, name, &data)).unwrap();
            assert_eq!((got.n, got.rows, got.cols), (2, 3, 4));
            assert_eq!(got.pixels, pixels);
        }
    }

    #[test]
    fn truncated_payload_reports_offset() {
        let tmp = tempfile::tempdir().unwrap();
        let dir = tmp.path();
        let bytes = encode_labels(&[1, 2, 3, 4]);
        let path = write(dir, "trunc", &bytes[..10]);
        let err = read_labels(&path).unwrap_err();
        assert!(
            matches!(
                err,
                IdxError::Truncated {
                    offset: 10,
                    expected: 12,
                    ..
                }
            ),
            "{err}"
        );
        assert!(err.to_string().contains("trunc"), "{err}");
    }

    #[test]
    fn bad_label_reports_offset() {
        let tmp = tempfile::tempdir().unwrap();
        let dir = tmp.path();
        let path = write(dir, "badlabel", &encode_labels(&[1, 2, 10, 4]));
        let err = read_labels(&path).unwrap_err();
        assert!(
            matches!(
                err,
                IdxError::BadLabel {
                    offset: 10,
                    label: 10,
                    ..
                }
            ),
            "{err}"
        );
    }

    #[test]
    fn huge_header_is_rejected_without_allocating() {
        let tmp = tempfile::tempdir().unwrap();
        let dir = tmp.path();
        let mut bytes = encode_images(1, 1, 1, &[0]);
        bytes[4..8].copy_from_slice(&65536u32.to_be_bytes());
        bytes[8..12].copy_from_slice(&65536u32.to_be_bytes());
        let err = read_images(&write(dir, "huge", &bytes)).unwrap_err();
        // 2^16 * 2^16 = 2^32 > 2^31: rejected at the second dimension.
        assert!(matches!(err, IdxError::BadDims { offset: 8, .. }), "{err}");
    }

    #[test]
    fn trailing_data_is_rejected() {
        let tmp = tempfile::tempdir().unwrap();
        let dir = tmp.path();
        let mut bytes = encode_labels(&[1, 2]);
        bytes.push(0);
        let err = read_labels(&write(dir, "trailing", &bytes)).unwrap_err();
        assert!(
            matches!(err, IdxError::TrailingData { offset: 10, .. }),
            "{err}"
        );
    }

    #[test]
    fn wrong_kind_is_bad_magic() {
        let tmp = tempfile::tempdir().unwrap();
        let dir = tmp.path();
        let path = write(dir, "labels-as-images", &encode_labels(&[1, 2]));
        let err = read_images(&path).unwrap_err();
        assert!(matches!(
            err,
            IdxError::BadMagic {
                offset: 0,
                found: 2049,
                expected: 2051,
                ..
            }
        ));
    }

    #[test]
    fn pair_count_mismatch() {
        let tmp = tempfile::tempdir().unwrap();
        let dir = tmp.path();
        let images = write(dir, "pair-img", &encode_images(3, 1, 1, &[0, 1, 2]));
        let labels = write(dir, "pair-lbl", &encode_labels(&[0, 1]));
        let err = read_pair(&images, &labels).unwrap_err();
        assert!(
            matches!(
                err,
                IdxError::CountMismatch {
                    images: 3,
                    labels: 2,
                    ..
                }
            ),
            "{err}"
        );
    }
}
