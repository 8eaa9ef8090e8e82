use std::collections::HashMap;
use std::path::PathBuf;

use image::{Rgba, RgbaImage};
use safetensors::tensor::TensorView;

use super::*;

fn device() -> Device {
    Device::flex()
}

fn values<const D: usize>(t: Tensor<D>) -> Vec<f32> {
    t.into_data().try_to_vec::<f32>().unwrap()
}

/// A convolution picking one kernel tap per channel (weight 1 there, 0 elsewhere), with TF
/// "SAME" padding: its output at `(i, j)` is the padded input at `(s·i + r, s·j + c)`.
fn tap_conv(channels: usize, k: usize, stride: usize, taps: &[(usize, usize)]) -> Conv2d {
    let mut w = vec![0.0; channels * k * k];
    for (ch, &(r, c)) in taps.iter().enumerate() {
        w[ch * k * k + r * k + c] = 1.0;
    }
    Conv2d {
        weight: Param::from_tensor(Tensor::from_data(
            TensorData::new(w, [channels, 1, k, k]),
            &device(),
        )),
        bias: None,
        stride: [stride, stride],
        kernel_size: [k, k],
        dilation: [1, 1],
        groups: channels,
        padding: PaddingConfig2d::Same,
    }
}

/// `[1, channels, n, n]` holding `100·ch + n·row + col + 1` (never 0, so padding shows).
fn ramp(channels: usize, n: usize) -> Tensor<4> {
    let v: Vec<f32> = (0..channels * n * n)
        .map(|i| ((i / (n * n)) * 100 + i % (n * n) + 1) as f32)
        .collect();
    Tensor::from_data(TensorData::new(v, [1, channels, n, n]), &device())
}

/// TF "SAME": out = ⌈in / s⌉, total padding max((out − 1)·s + k − in, 0), the smaller half on
/// top/left. Each case: input side, kernel, stride, expected output side, expected top padding.
#[test]
fn same_padding_matches_tf_by_hand() {
    let cases = [
        // 224 → 112 at stride 2, k 3: total (111·2 + 3 − 224) = 1 → (0, 1).
        (224, 3, 2, 112, 0),
        // 4 → 2, k 3, s 2: total 1 → (0, 1).
        (4, 3, 2, 2, 0),
        // 5 → 3, k 3, s 2: total 2 → (1, 1).
        (5, 3, 2, 3, 1),
        // 8 → 4, k 5, s 2: total 3 → (1, 2).
        (8, 5, 2, 4, 1),
        // 7 → 4, k 5, s 2: total 4 → (2, 2).
        (7, 5, 2, 4, 2),
        // Stride 1 keeps the side: k 3 → (1, 1), k 5 → (2, 2).
        (6, 3, 1, 6, 1),
        (6, 5, 1, 6, 2),
    ];
    for (n, k, s, out, top) in cases {
        // Two channels (depthwise, as in the blocks): the top-left tap and the bottom-right tap.
        let conv = tap_conv(2, k, s, &[(0, 0), (k - 1, k - 1)]);
        let y = conv.forward(ramp(2, n));
        assert_eq!(y.dims(), [1, 2, out, out], "n {n} k {k} s {s}");
        let y = values(y);
        let input = |ch: usize, r: isize, c: isize| -> f32 {
            if r < 0 || c < 0 || r >= n as isize || c >= n as isize {
                0.0
            } else {
                (ch * 100 + r as usize * n + c as usize + 1) as f32
            }
        };
        for ch in 0..2 {
            let tap = if ch == 0 { 0 } else { k - 1 } as isize;
            for i in 0..out {
                for j in 0..out {
                    let r = (s * i) as isize + tap - top as isize;
                    let c = (s * j) as isize + tap - top as isize;
                    assert_eq!(
                        y[ch * out * out + i * out + j],
                        input(ch, r, c),
                        "n {n} k {k} s {s} ch {ch} at ({i}, {j})"
                    );
                }
            }
        }
    }
}

/// Safetensors bytes of f32 tensors.
fn safetensors_bytes(tensors: &[(&str, Vec<usize>, Vec<f32>)]) -> Vec<u8> {
    let bytes: Vec<Vec<u8>> = tensors
        .iter()
        .map(|(_, _, v)| v.iter().flat_map(|x| x.to_le_bytes()).collect())
        .collect();
    let views: HashMap<String, TensorView> = tensors
        .iter()
        .zip(&bytes)
        .map(|((name, shape, _), b)| {
            (
                name.to_string(),
                TensorView::new(Dtype::F32, shape.clone(), b).unwrap(),
            )
        })
        .collect();
    safetensors::serialize(&views, None).unwrap()
}

/// Folding BatchNorm into the convolution gives `γ (w·x − μ) / √(σ² + 10⁻³) + β`.
#[test]
fn batchnorm_folds_with_tf_epsilon() {
    // A 1×1 conv 2 → 2 and its BatchNorm.
    let bytes = safetensors_bytes(&[
        ("c.weight", vec![2, 2, 1, 1], vec![1.0, 2.0, -3.0, 0.5]),
        ("bn.weight", vec![2], vec![2.0, 0.5]),
        ("bn.bias", vec![2], vec![0.25, -1.0]),
        ("bn.running_mean", vec![2], vec![1.0, -2.0]),
        ("bn.running_var", vec![2], vec![3.999, 0.249]),
    ]);
    let dev = device();
    let w = Weights {
        st: SafeTensors::deserialize(&bytes).unwrap(),
        device: &dev,
    };
    let conv = w.conv_bn("c", "bn", 1, false).unwrap();
    let x = Tensor::<4>::from_data(TensorData::new(vec![3.0f32, -1.0], [1, 2, 1, 1]), &dev);
    let y = values(conv.forward(x));
    // Channel 0: w·x = 3 − 2 = 1; 2 (1 − 1) / √4 + 0.25 = 0.25.
    // Channel 1: w·x = −9 − 0.5 = −9.5; 0.5 (−9.5 + 2) / √0.25 − 1 = −8.5.
    assert!((y[0] - 0.25).abs() < 1e-6, "{y:?}");
    assert!((y[1] + 8.5).abs() < 1e-5, "{y:?}");
    // A wrong shape is an error naming the tensor.
    let err = w.conv_bn("c", "bn", 1, true).unwrap_err().to_string();
    assert!(err.contains("c.weight"), "{err}");
    let err = w.conv_bn("c", "nobn", 1, false).unwrap_err().to_string();
    assert!(err.contains("nobn.weight"), "{err}");
}

#[test]
fn center_crop_by_hand() {
    // 224 · 224 / 256 = 196, centred: (224 − 196 + 1) / 2 = 14.
    assert_eq!(center_crop(224, 224, 224), (14, 14, 196));
    // ⌊224 · 375 / 256⌋ = 328; x (500 − 328 + 1) / 2 = 86, y (375 − 328 + 1) / 2 = 24.
    assert_eq!(center_crop(500, 375, 224), (86, 24, 328));
    // An emoji cell: ⌊224 · 32 / 256⌋ = 28, offsets 2.
    assert_eq!(center_crop(32, 32, 224), (2, 2, 28));
    // An odd leftover loses its extra pixel at the top/left: ⌊128 · 41 / 160⌋ = 32, offset
    // (41 − 32 + 1) / 2 = 5 (4 left at the bottom/right).
    assert_eq!(center_crop(41, 41, 128), (5, 5, 32));
    // Degenerate inputs still give a 1-pixel crop inside the image.
    assert_eq!(center_crop(1, 1, 224), (0, 0, 1));
}

/// At size 2 a 36 × 34 image crops to ⌊2 · 34 / 34⌋ = 2 pixels at x (36 − 2 + 1) / 2 = 17,
/// y (34 − 2 + 1) / 2 = 16, and a 2 → 2 resize is the identity: the input is those four pixels,
/// alpha composited over white (`c · a / 255 + 255 − a`), in CHW order.
#[test]
fn preprocess_tiny_image_by_hand() {
    let img = RgbaImage::from_fn(36, 34, |x, y| Rgba([x as u8, y as u8, (x + y) as u8, 255]));
    let mut img = img;
    img.put_pixel(18, 16, Rgba([0, 0, 0, 0])); // transparent: white
    img.put_pixel(17, 17, Rgba([100, 0, 200, 51])); // 100·0.2 + 204 = 224, 204, 40 + 204 = 244
    let input = preprocess(&DynamicImage::ImageRgba8(img), 2);
    #[rustfmt::skip]
    let expected = [
        // R: (17, 16), (18, 16), (17, 17), (18, 17)
        17.0, 255.0, 224.0, 18.0,
        // G
        16.0, 255.0, 204.0, 17.0,
        // B
        33.0, 255.0, 244.0, 35.0,
    ];
    assert_eq!(input, expected);
    // A real resize: 40 × 40 at size 16 crops ⌊16 · 40 / 48⌋ = 13 pixels, resized to 16. A
    // constant image stays constant, on the 0–255 scale.
    let flat = RgbaImage::from_pixel(40, 40, Rgba([10, 128, 250, 255]));
    let t = to_input(&[DynamicImage::ImageRgba8(flat)], 16, &device());
    assert_eq!(t.dims(), [1, 3, 16, 16]);
    let v = values(t);
    for (c, want) in [10.0, 128.0, 250.0].into_iter().enumerate() {
        for x in &v[c * 256..(c + 1) * 256] {
            assert!((x - want).abs() < 1e-3, "channel {c}: {x} vs {want}");
        }
    }
}

#[test]
fn missing_or_corrupt_weights_are_errors_naming_the_file() {
    let dir = tempfile::tempdir().unwrap();
    let msg = format!(
        "{:#}",
        ImageEncoder::load(dir.path(), &device()).err().unwrap()
    );
    assert!(
        msg.contains("model.safetensors") && msg.contains(FETCH_COMMAND),
        "{msg}"
    );
    std::fs::write(dir.path().join(CHECKPOINT_FILE), b"x").unwrap();
    let msg = format!(
        "{:#}",
        ImageEncoder::load(dir.path(), &device()).err().unwrap()
    );
    assert!(
        msg.contains("unconverted") && msg.contains(FETCH_COMMAND),
        "{msg}"
    );
    // A truncated safetensors file, and one holding the wrong tensors.
    let good = safetensors_bytes(&[("x", vec![4], vec![1.0; 4])]);
    for bytes in [&good[..good.len() - 3], &good[..5], &good[..]] {
        std::fs::write(dir.path().join(WEIGHTS_FILE), bytes).unwrap();
        let msg = format!(
            "{:#}",
            ImageEncoder::load(dir.path(), &device()).err().unwrap()
        );
        assert!(msg.contains("model.safetensors"), "{msg}");
    }
}

/// The converted weights: the cache's `model.safetensors`, else the cache's `.pth` converted
/// into a temporary directory (what the fetch step does).
fn real_weights() -> (PathBuf, Option<tempfile::TempDir>) {
    let dir = crate::align::efficientnet_dir(&crate::data::default_cache_dir());
    if dir.join(WEIGHTS_FILE).exists() {
        return (dir, None);
    }
    let tmp = tempfile::tempdir().unwrap();
    convert_checkpoint(&dir.join(CHECKPOINT_FILE), &tmp.path().join(WEIGHTS_FILE)).unwrap();
    (tmp.path().to_path_buf(), Some(tmp))
}

/// The package's checkpoint converts to its 296 tensors, values read independently (Python's
/// `pickle` on the raw file, each element at `offset + Σ index·stride` of its storage).
#[test]
#[ignore = "needs `sharpness-lab align fetch`"]
fn package_checkpoint_converts() {
    let dir = crate::align::efficientnet_dir(&crate::data::default_cache_dir());
    let tmp = tempfile::tempdir().unwrap();
    let out = tmp.path().join(WEIGHTS_FILE);
    convert_checkpoint(&dir.join(CHECKPOINT_FILE), &out).unwrap();
    let bytes = std::fs::read(&out).unwrap();
    let st = SafeTensors::deserialize(&bytes).unwrap();
    assert_eq!(st.len(), 296);
    let dev = device();
    let w = Weights { st, device: &dev };
    let at = |name: &str, shape: &[usize], idx: &[usize]| -> f32 {
        let v = w.f32s(name, shape).unwrap();
        let flat = idx.iter().zip(shape).fold(0, |acc, (&i, &n)| acc * n + i);
        v[flat]
    };
    let stem = [32, 3, 3, 3];
    assert_eq!(at("_conv_stem.weight", &stem, &[0, 0, 0, 1]), -1.308_770_4);
    assert_eq!(
        at("_conv_stem.weight", &stem, &[31, 2, 1, 0]),
        -1.490_116_1e-8
    );
    let dw = [144, 1, 5, 5];
    assert_eq!(
        at("_blocks.3._depthwise_conv.weight", &dw, &[100, 0, 4, 2]),
        0.039_767_087
    );
    let fc = [1000, 1280];
    assert_eq!(at("_fc.weight", &fc, &[999, 1279]), 0.040_857_97);
    assert_eq!(at("_fc.weight", &fc, &[1, 0]), -0.004_970_256_2);
    assert_eq!(at("_bn1.running_var", &[1280], &[7]), 10.647_316);
}

/// foolbox's 20 ImageNet images, `imagenet_{idx}_{label}.jpg`, sorted.
fn foolbox_images() -> Vec<(String, DynamicImage, usize)> {
    let dir = crate::align::foolbox_dir(&crate::data::default_cache_dir());
    let mut out = Vec::new();
    for entry in std::fs::read_dir(&dir).unwrap() {
        let path = entry.unwrap().path();
        let name = path.file_name().unwrap().to_string_lossy().into_owned();
        let Some(stem) = name.strip_prefix("imagenet_") else {
            continue;
        };
        let label = stem.split(['_', '.']).nth(1).unwrap().parse().unwrap();
        out.push((name.clone(), image::open(&path).unwrap(), label));
    }
    out.sort_by(|a, b| a.0.cmp(&b.0));
    assert_eq!(out.len(), 20, "{}", dir.display());
    out
}

/// Top-1 on foolbox's 20 labelled ImageNet images at each input size in `SHARPNESS_SIZES`
/// (default: the encoder's default and 224): at least 17 of 20 (an independent forward pass
/// reached 17/20 at 224). Measured: 224 17/20, 192 18/20, 160 18/20, 128 16/20.
#[test]
#[ignore = "needs `sharpness-lab align fetch`"]
fn foolbox_top1() {
    let (dir, _tmp) = real_weights();
    let images = foolbox_images();
    let sizes: Vec<usize> = std::env::var("SHARPNESS_SIZES")
        .map(|s| s.split(',').map(|x| x.trim().parse().unwrap()).collect())
        .unwrap_or_else(|_| vec![DEFAULT_INPUT_SIZE, 224]);
    for size in sizes {
        let enc = ImageEncoder::load(&dir, &device())
            .unwrap()
            .with_input_size(size);
        let imgs: Vec<DynamicImage> = images.iter().map(|(_, i, _)| i.clone()).collect();
        let x = to_input(&imgs, size, enc.device());
        let start = std::time::Instant::now();
        let p = enc.probabilities(x).unwrap();
        let secs = start.elapsed().as_secs_f64();
        let top: Vec<i64> = p.clone().argmax(1).into_data().iter::<i64>().collect();
        let p = values(p);
        let mut correct = 0;
        for (i, (name, _, label)) in images.iter().enumerate() {
            let pred = top[i] as usize;
            correct += usize::from(pred == *label);
            println!(
                "{size}: {name}: top-1 {pred} (p {:.3}), label {label} (p {:.3})",
                p[i * IMAGENET_CLASSES + pred],
                p[i * IMAGENET_CLASSES + label]
            );
        }
        println!("size {size}: top-1 {correct}/20 ({secs:.2} s for the batch of 20)");
        assert!(correct >= 17, "size {size}: top-1 {correct}/20");
    }
}

/// Forward time per image, batch `SHARPNESS_BATCH` (default 32), at each size in
/// `SHARPNESS_SIZES` (default 224, 192, 160, 128): one warm-up batch, then the median of 3
/// (content does not change the cost).
#[test]
#[ignore = "needs `sharpness-lab align fetch`"]
fn forward_timing() {
    let (dir, _tmp) = real_weights();
    let sizes: Vec<usize> = std::env::var("SHARPNESS_SIZES")
        .map(|s| s.split(',').map(|x| x.trim().parse().unwrap()).collect())
        .unwrap_or_else(|_| vec![224, 192, 160, 128]);
    let batch = std::env::var("SHARPNESS_BATCH").map_or(32, |b| b.parse().unwrap());
    for size in sizes {
        let enc = ImageEncoder::load(&dir, &device())
            .unwrap()
            .with_input_size(size);
        let x = Tensor::<4>::random(
            [batch, 3, size, size],
            burn::tensor::Distribution::Uniform(0.0, 255.0),
            enc.device(),
        );
        let mut times = Vec::new();
        for run in 0..4 {
            let start = std::time::Instant::now();
            let f = enc.features(x.clone()).unwrap();
            assert_eq!(f.dims(), [batch, IMAGE_DIM]);
            let _ = f.into_data();
            if run > 0 {
                times.push(start.elapsed().as_secs_f64());
            }
        }
        times.sort_by(f64::total_cmp);
        let per_image = times[1] / batch as f64;
        println!(
            "size {size}: {:.1} ms per image (batch {batch}, median of 3: {:.2} s), 12 000 images {:.1} min",
            per_image * 1e3,
            times[1],
            per_image * 12_000.0 / 60.0
        );
    }
}
