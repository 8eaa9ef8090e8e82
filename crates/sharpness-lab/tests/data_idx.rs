//! Property tests of the idx reader: round trips, truncations and corruptions.

use std::io::Write;
use std::path::{Path, PathBuf};

use proptest::prelude::*;
use sharpness_lab::data::idx::{self, IdxError};

fn gzip(bytes: &[u8]) -> Vec<u8> {
    let mut enc = flate2::write::GzEncoder::new(Vec::new(), flate2::Compression::default());
    enc.write_all(bytes).unwrap();
    enc.finish().unwrap()
}

fn write(dir: &Path, name: &str, bytes: &[u8]) -> PathBuf {
    let path = dir.join(name);
    std::fs::write(&path, bytes).unwrap();
    path
}

/// Asserts the error names `path` (structurally and in its message) and an offset
/// no larger than `max_offset`.
fn assert_names_file_and_offset(err: &IdxError, path: &Path, max_offset: u64) {
    assert_eq!(err.path(), path, "{err}");
    let offset = err
        .offset()
        .unwrap_or_else(|| panic!("no offset in {err:?}"));
    assert!(
        offset <= max_offset,
        "offset {offset} > {max_offset}: {err}"
    );
    let message = err.to_string();
    assert!(message.contains(&path.display().to_string()), "{message}");
    assert!(message.contains(&offset.to_string()), "{message}");
}

/// A valid image file: (n, rows, cols, pixels).
fn images_strategy() -> impl Strategy<Value = (usize, usize, usize, Vec<u8>)> {
    (0usize..12, 1usize..7, 1usize..7).prop_flat_map(|(n, r, c)| {
        proptest::collection::vec(any::<u8>(), n * r * c).prop_map(move |px| (n, r, c, px))
    })
}

/// Small valid image files, for tests that try every cut point.
fn small_images_strategy() -> impl Strategy<Value = (usize, usize, usize, Vec<u8>)> {
    (0usize..4, 1usize..5, 1usize..5).prop_flat_map(|(n, r, c)| {
        proptest::collection::vec(any::<u8>(), n * r * c).prop_map(move |px| (n, r, c, px))
    })
}

/// Small non-empty label files, for tests that try every cut point.
fn small_labels_strategy() -> impl Strategy<Value = Vec<u8>> {
    proptest::collection::vec(0u8..10, 1..40)
}

fn labels_strategy(min_len: usize) -> impl Strategy<Value = Vec<u8>> {
    proptest::collection::vec(0u8..10, min_len..200)
}

/// Reads `bytes` (written as a file) as images or labels, discarding the value.
fn read_as(kind: u32, path: &Path) -> Result<(), IdxError> {
    if kind == idx::IMAGES_MAGIC {
        idx::read_images(path).map(|_| ())
    } else {
        idx::read_labels(path).map(|_| ())
    }
}

proptest! {
    #[test]
    fn images_round_trip_raw_and_gzip((n, rows, cols, pixels) in images_strategy()) {
        let dir = tempfile::tempdir().unwrap();
        let bytes = idx::encode_images(n, rows, cols, &pixels);
        for (name, data) in [("img", bytes.clone()), ("img.gz", gzip(&bytes)), ("img-no-ext", gzip(&bytes))] {
            let got = idx::read_images(&write(dir.path(), name, &data)).unwrap();
            prop_assert_eq!((got.n, got.rows, got.cols), (n, rows, cols));
            prop_assert_eq!(&got.pixels, &pixels);
        }
    }

    #[test]
    fn labels_round_trip_raw_and_gzip(labels in labels_strategy(0)) {
        let dir = tempfile::tempdir().unwrap();
        let bytes = idx::encode_labels(&labels);
        for (name, data) in [("lbl", bytes.clone()), ("lbl.gz", gzip(&bytes))] {
            prop_assert_eq!(idx::read_labels(&write(dir.path(), name, &data)).unwrap(), labels.clone());
        }
    }

    #[test]
    fn pair_counts_must_agree((n, rows, cols, pixels) in images_strategy(), labels in labels_strategy(0)) {
        let dir = tempfile::tempdir().unwrap();
        let images = write(dir.path(), "img", &idx::encode_images(n, rows, cols, &pixels));
        let label_path = write(dir.path(), "lbl", &idx::encode_labels(&labels));
        let result = idx::read_pair(&images, &label_path);
        if n == labels.len() {
            prop_assert!(result.is_ok());
        } else {
            let is_count_mismatch = matches!(result, Err(IdxError::CountMismatch { .. }));
            prop_assert!(is_count_mismatch);
        }
    }

    #[test]
    fn any_single_header_byte_change_is_an_error(
        (n, rows, cols, pixels) in images_strategy().prop_filter("non-empty", |t| t.0 > 0),
        labels in labels_strategy(1),
        position in 0usize..16,
        flip in 1u8..=255,
        gzipped in any::<bool>(),
    ) {
        let dir = tempfile::tempdir().unwrap();
        let files = [
            (idx::IMAGES_MAGIC, idx::encode_images(n, rows, cols, &pixels), 16),
            (idx::LABELS_MAGIC, idx::encode_labels(&labels), 8),
        ];
        for (kind, mut bytes, header_len) in files {
            let at = position % header_len;
            bytes[at] ^= flip;
            let file_len = bytes.len() as u64;
            let data = if gzipped { gzip(&bytes) } else { bytes };
            let path = write(dir.path(), "corrupt", &data);
            let err = read_as(kind, &path).unwrap_err();
            assert_names_file_and_offset(&err, &path, file_len);
        }
    }

    #[test]
    fn random_corruption_never_panics(
        labels in labels_strategy(1),
        edits in proptest::collection::vec((any::<usize>(), any::<u8>()), 1..8),
        gzip_first in any::<bool>(),
    ) {
        let dir = tempfile::tempdir().unwrap();
        let raw = idx::encode_labels(&labels);
        let mut bytes = if gzip_first { gzip(&raw) } else { raw };
        for (at, value) in edits {
            let len = bytes.len();
            bytes[at % len] = value;
        }
        let path = write(dir.path(), "mangled", &bytes);
        if let Err(err) = idx::read_labels(&path) {
            prop_assert_eq!(err.path(), path.as_path());
            prop_assert!(err.to_string().contains(&path.display().to_string()));
        }
    }

    #[test]
    fn out_of_range_label_is_reported_at_its_offset(
        mut labels in labels_strategy(1),
        index in any::<usize>(),
        bad in 10u8..,
    ) {
        let dir = tempfile::tempdir().unwrap();
        let i = index % labels.len();
        labels[i] = bad;
        let path = write(dir.path(), "bad-label", &idx::encode_labels(&labels));
        let err = idx::read_labels(&path).unwrap_err();
        let is_bad_label = matches!(err, IdxError::BadLabel { label, .. } if label >= 10);
        prop_assert!(is_bad_label, "{}", err);
        prop_assert_eq!(err.offset(), Some(8 + i as u64));
    }
}

proptest! {
    // Every cut point of each file is tried, so a few dozen small files suffice.
    #![proptest_config(ProptestConfig::with_cases(32))]

    #[test]
    fn every_raw_truncation_is_an_error((n, rows, cols, pixels) in small_images_strategy(), labels in small_labels_strategy()) {
        let dir = tempfile::tempdir().unwrap();
        let files = [
            (idx::IMAGES_MAGIC, idx::encode_images(n, rows, cols, &pixels)),
            (idx::LABELS_MAGIC, idx::encode_labels(&labels)),
        ];
        for (kind, bytes) in files {
            for cut in 0..bytes.len() {
                let path = write(dir.path(), &format!("cut-{cut}"), &bytes[..cut]);
                let err = read_as(kind, &path).unwrap_err();
                assert_names_file_and_offset(&err, &path, cut as u64);
                prop_assert_eq!(err.offset(), Some(cut as u64));
            }
        }
    }

    #[test]
    fn every_gzip_truncation_is_an_error((n, rows, cols, pixels) in small_images_strategy(), labels in small_labels_strategy()) {
        let dir = tempfile::tempdir().unwrap();
        let files = [
            (idx::IMAGES_MAGIC, idx::encode_images(n, rows, cols, &pixels)),
            (idx::LABELS_MAGIC, idx::encode_labels(&labels)),
        ];
        for (kind, raw) in files {
            let bytes = gzip(&raw);
            for cut in 0..bytes.len() {
                let path = write(dir.path(), &format!("gzcut-{cut}.gz"), &bytes[..cut]);
                let err = read_as(kind, &path).unwrap_err();
                assert_names_file_and_offset(&err, &path, raw.len() as u64);
            }
        }
    }
}

#[test]
fn header_claiming_huge_dims_is_rejected() {
    let dir = tempfile::tempdir().unwrap();
    let mut bytes = idx::encode_images(1, 1, 1, &[0]);
    bytes[4..16].copy_from_slice(&[0xff; 12]);
    let path = write(dir.path(), "huge", &bytes);
    let err = idx::read_images(&path).unwrap_err();
    assert!(matches!(err, IdxError::BadDims { .. }), "{err}");
    assert_names_file_and_offset(&err, &path, 16);
}

#[test]
fn missing_file_names_path() {
    let path = PathBuf::from("/nonexistent/sharpness/idx");
    let err = idx::read_labels(&path).unwrap_err();
    assert!(matches!(err, IdxError::Open { .. }));
    assert!(err.to_string().contains("/nonexistent/sharpness/idx"));
}
