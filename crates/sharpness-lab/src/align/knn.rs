//! Mutual k-nearest-neighbour alignment of two representations of the same items (Huh et al.,
//! 2024, "The Platonic Representation Hypothesis"; the measure of Monge SAM §4.2, k = 8).
//!
//! Rows are L2-normalised; N_X(i) is the set of the k rows most cosine-similar to row i, itself
//! excluded; the score is (1/n) Σᵢ |N_X(i) ∩ N_Y(i)| / k ∈ [0, 1]. The reference code
//! (minyoungg/platonic-rep, `metrics.py`) optionally clamps features to their 0.95 quantile first;
//! whether the Monge SAM paper did is not stated, and this does not.

use anyhow::{Result, ensure};
use burn::prelude::*;

/// Rows of the similarity matrix computed at once: bounds the memory to `ROW_CHUNK × n` floats.
const ROW_CHUNK: usize = 512;

/// The mutual k-NN score of paired representations `x` `[n, dx]` and `y` `[n, dy]` (row i of
/// both describes item i).
pub fn mutual_knn(x: Tensor<2>, y: Tensor<2>, k: usize) -> Result<f64> {
    let [n, _] = x.dims();
    ensure!(
        y.dims()[0] == n,
        "mutual k-NN needs paired rows: {n} and {}",
        y.dims()[0]
    );
    ensure!(k >= 1, "mutual k-NN needs k ≥ 1");
    ensure!(
        k < n,
        "mutual k-NN with k = {k} needs more than k items (have {n})"
    );
    let (nx, ny) = (neighbours(x, k), neighbours(y, k));
    let shared: usize = nx
        .chunks(k)
        .zip(ny.chunks(k))
        .map(|(a, b)| a.iter().filter(|i| b.contains(i)).count())
        .sum();
    Ok(shared as f64 / (n * k) as f64)
}

/// The k nearest rows of every row by cosine similarity, itself excluded: `n × k` indices, row
/// by row, most similar first (ties to the lower index, so the result is deterministic).
pub fn neighbours(x: Tensor<2>, k: usize) -> Vec<usize> {
    let [n, _] = x.dims();
    let x = normalize_rows(x);
    let mut out = Vec::with_capacity(n * k);
    for start in (0..n).step_by(ROW_CHUNK) {
        let rows = ROW_CHUNK.min(n - start);
        let similarity = x
            .clone()
            .narrow(0, start, rows)
            .matmul(x.clone().transpose())
            .into_data()
            .try_into_vec_as::<f32>()
            .expect("similarities convert to f32");
        for (r, row) in similarity.chunks(n).enumerate() {
            let i = start + r;
            let mut order: Vec<usize> = (0..n).filter(|&j| j != i).collect();
            let by_similarity = |a: &usize, b: &usize| row[*b].total_cmp(&row[*a]).then(a.cmp(b));
            order.select_nth_unstable_by(k - 1, by_similarity);
            order.truncate(k);
            order.sort_by(by_similarity);
            out.extend(order);
        }
    }
    out
}

/// Rows divided by their Euclidean norms (zero rows stay zero).
pub fn normalize_rows(x: Tensor<2>) -> Tensor<2> {
    let norm = x.clone().square().sum_dim(1).sqrt().clamp_min(1e-12);
    x / norm
}

#[cfg(test)]
mod tests {
    use super::*;

    fn points(angles_deg: &[f64], scale: f32) -> Tensor<2> {
        let values: Vec<f32> = angles_deg
            .iter()
            .flat_map(|a| {
                let r = a.to_radians();
                [scale * r.cos() as f32, scale * r.sin() as f32]
            })
            .collect();
        Tensor::from_data(
            TensorData::new(values, [angles_deg.len(), 2]),
            &Device::flex(),
        )
    }

    // Gaps of 10°, 25°, 40°, 50°, 65° between consecutive points, and 170° from the last back to
    // the first: no two distances from one point are equal.
    const ANGLES: [f64; 6] = [0.0, 10.0, 35.0, 75.0, 125.0, 190.0];

    #[test]
    fn neighbours_by_angle() {
        // By hand: 0→(1, 2), 1→(0, 2), 2→(1, 0) (25° then 35°), 3→(2, 4) (40° then 50°),
        // 4→(3, 5) (50° then 65°), 5→(4, 3) (65° then 115°; the first point is 170° away).
        let n = neighbours(points(&ANGLES, 1.0), 2);
        assert_eq!(n, vec![1, 2, 0, 2, 1, 0, 2, 4, 3, 5, 4, 3]);
    }

    #[test]
    fn identical_and_rescaled_spaces_align_fully() {
        let x = points(&ANGLES, 1.0);
        assert_eq!(mutual_knn(x.clone(), x.clone(), 2).unwrap(), 1.0);
        // Row norms do not matter (rows are normalised).
        assert_eq!(mutual_knn(x, points(&ANGLES, 7.0), 3).unwrap(), 1.0);
    }

    #[test]
    fn a_known_permutation() {
        // y_i = x_{π(i)} with π swapping items 0 and 5. With k = 1, N_X = [1, 0, 1, 2, 3, 4]
        // and N_Y(i) = π(N_X(π(i))) = [4, 5, 1, 2, 3, 1] (item 0 of Y sits at 190°, item 5 at
        // 0°): items 2, 3 and 4 agree, so the score is 3/6.
        let mut swapped = ANGLES;
        swapped.swap(0, 5);
        let score = mutual_knn(points(&ANGLES, 1.0), points(&swapped, 1.0), 1).unwrap();
        assert_eq!(score, 0.5);
    }

    #[test]
    fn k_must_be_smaller_than_the_set() {
        let x = points(&ANGLES, 1.0);
        let err = mutual_knn(x.clone(), x.clone(), 6).unwrap_err().to_string();
        assert!(err.contains("k = 6") && err.contains("have 6"), "{err}");
        assert!(mutual_knn(x.clone(), x, 0).is_err());
    }

    #[test]
    fn chunked_rows_match_one_chunk() {
        // More rows than ROW_CHUNK: every row's neighbours are its ring neighbours.
        let n = ROW_CHUNK + 3;
        let angles: Vec<f64> = (0..n)
            .map(|i| 360.0 * i as f64 / n as f64 + 1e-3 * (i % 2) as f64)
            .collect();
        let nb = neighbours(points(&angles, 1.0), 2);
        for i in 0..n {
            let mut got = [nb[2 * i], nb[2 * i + 1]];
            got.sort();
            let mut want = [(i + 1) % n, (i + n - 1) % n];
            want.sort();
            assert_eq!(got, want, "row {i}");
        }
    }
}
