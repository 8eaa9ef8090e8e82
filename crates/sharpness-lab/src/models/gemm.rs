//! Layers of the lab's networks written as tensor operations that Burn's autodiff differentiates,
//! in place of Burn's `Conv2d` and `MaxPool2d` where that is faster on Flex.
//!
//! [`GemmConv2d`] is a convolution as unfold + matrix multiply: the k×k shifted (strided) views
//! of the zero-padded input stacked into columns `[batch, c_in·k·k, out_h·out_w]` and multiplied
//! by the weight `[c_out, c_in·k·k]`. Its weight gradient is then a matrix product of the output
//! gradient with the columns, where Burn's own `conv2d` backward runs it as a convolution whose
//! "kernel" is the whole output-gradient image. [`max_pool_2x2`] is the 2×2, stride-2 max pool
//! as the elementwise maximum of the four strided views.
//!
//! Both are tested against Burn's layers (forward and gradients) on random inputs.

use burn::module::{Module, Param};
use burn::prelude::*;
use burn::tensor::Slice;

/// A 2-D convolution with square kernel, symmetric zero padding and no dilation or groups,
/// computed as unfold + matrix multiply. Parameters as Burn's `Conv2d` (`weight` `[c_out, c_in,
/// k, k]`, optional `bias` `[c_out]`), so records and initialisation carry over.
#[derive(Module, Debug)]
pub struct GemmConv2d {
    /// `[c_out, c_in, k, k]`.
    pub weight: Param<Tensor<4>>,
    /// `[c_out]`.
    pub bias: Option<Param<Tensor<1>>>,
    /// Stride (both dimensions).
    pub stride: usize,
    /// Zero padding on every side.
    pub padding: usize,
}

impl GemmConv2d {
    /// `[batch, c_out, out_h, out_w]` of `x` `[batch, c_in, h, w]`.
    pub fn forward(&self, x: Tensor<4>) -> Tensor<4> {
        let [c_out, c_in, k, _] = self.weight.dims();
        let [batch, _, h, w] = x.dims();
        let (s, p) = (self.stride, self.padding);
        let (out_h, out_w) = ((h + 2 * p - k) / s + 1, (w + 2 * p - k) / s + 1);
        let weight = self.weight.val().reshape([1, c_out, c_in * k * k]);
        let out = if k == 1 && p == 0 {
            // A 1×1 convolution needs no columns: the (strided) input is one already.
            let x = if s == 1 { x } else { x.slice(strided(0, 0, s, out_h, out_w)) };
            weight.matmul(x.reshape([batch, c_in, out_h * out_w]))
        } else {
            let x = if p == 0 {
                x
            } else {
                x.pad([(0, 0), (0, 0), (p, p), (p, p)], 0.0)
            };
            let shifted: Vec<Tensor<4>> = (0..k * k)
                .map(|ij| x.clone().slice(strided(ij / k, ij % k, s, out_h, out_w)))
                .collect();
            // [batch, c_in, k·k, out_h, out_w]: channel-major, then kernel row and column, as the
            // weight's [c_in, k, k] flattens.
            let columns: Tensor<5> = Tensor::stack(shifted, 2);
            weight.matmul(columns.reshape([batch, c_in * k * k, out_h * out_w]))
        };
        let out = match &self.bias {
            Some(b) => out + b.val().reshape([1, c_out, 1]),
            None => out,
        };
        out.reshape([batch, c_out, out_h, out_w])
    }
}

/// The view of rows `i, i + s, …` and columns `j, j + s, …` (`out_h` × `out_w` of them).
fn strided(i: usize, j: usize, s: usize, out_h: usize, out_w: usize) -> [Slice; 4] {
    let all = Slice::new(0, None, 1);
    let span = |start: usize, n: usize| {
        Slice::new(start as isize, Some((start + s * (n - 1) + 1) as isize), s as isize)
    };
    [all, all, span(i, out_h), span(j, out_w)]
}

/// 2×2 max pooling with stride 2 (even height and width) as the maximum of the four strided
/// views; gradients flow to the larger of each compared pair.
pub fn max_pool_2x2(x: Tensor<4>) -> Tensor<4> {
    let [_, _, h, w] = x.dims();
    let view = |i: usize, j: usize| x.clone().slice(strided(i, j, 2, h / 2, w / 2));
    view(0, 0)
        .max_pair(view(0, 1))
        .max_pair(view(1, 0).max_pair(view(1, 1)))
}

#[cfg(test)]
mod tests {
    use super::*;
    use burn::nn::PaddingConfig2d;
    use burn::nn::conv::Conv2dConfig;
    use burn::nn::pool::MaxPool2dConfig;
    use burn::tensor::{Distribution, Tolerance};

    fn device() -> Device {
        Device::flex().autodiff()
    }

    fn assert_close<const D: usize>(a: Tensor<D>, b: Tensor<D>, what: &str) {
        assert_eq!(a.dims(), b.dims(), "{what}: shapes");
        let (a, b) = (a.into_data(), b.into_data());
        a.assert_approx_eq::<f32>(&b, Tolerance::absolute(1e-5).set_relative(1e-4));
        let _ = what;
    }

    /// Forward and every gradient of `GemmConv2d` against Burn's `Conv2d` with the same weights.
    fn check_conv(c_in: usize, c_out: usize, k: usize, stride: usize, bias: bool, side: usize) {
        let device = device();
        device.seed(7);
        let p = k / 2;
        let conv = Conv2dConfig::new([c_in, c_out], [k, k])
            .with_stride([stride, stride])
            .with_padding(PaddingConfig2d::Explicit(p, p, p, p))
            .with_bias(bias)
            .init(&device);
        let ours = GemmConv2d {
            weight: Param::from_tensor(conv.weight.val().detach().require_grad()),
            bias: conv
                .bias
                .as_ref()
                .map(|b| Param::from_tensor(b.val().detach().require_grad())),
            stride,
            padding: p,
        };
        let x = Tensor::<4>::random([3, c_in, side, side], Distribution::Normal(0.0, 1.0), &device);
        let (x1, x2) = (x.clone().require_grad(), x.require_grad());
        let (y1, y2) = (conv.forward(x1.clone()), ours.forward(x2.clone()));
        // A random linear functional of the output, so every output element's gradient counts.
        let r = Tensor::<4>::random(y1.dims(), Distribution::Normal(0.0, 1.0), &device);
        let g1 = (y1.clone() * r.clone()).sum().backward();
        let g2 = (y2.clone() * r).sum().backward();
        assert_close(y1.inner(), y2.inner(), "output");
        assert_close(
            x1.grad(&g1).unwrap(),
            x2.grad(&g2).unwrap(),
            "input gradient",
        );
        assert_close(
            conv.weight.val().grad(&g1).unwrap(),
            ours.weight.val().grad(&g2).unwrap(),
            "weight gradient",
        );
        if bias {
            assert_close(
                conv.bias.unwrap().val().grad(&g1).unwrap(),
                ours.bias.unwrap().val().grad(&g2).unwrap(),
                "bias gradient",
            );
        }
    }

    #[test]
    fn gemm_conv_matches_conv2d_3x3() {
        check_conv(1, 4, 3, 1, false, 8);
        check_conv(3, 5, 3, 1, true, 7);
    }

    #[test]
    fn gemm_conv_matches_conv2d_strided_and_1x1() {
        check_conv(4, 6, 3, 2, false, 8);
        check_conv(4, 6, 1, 2, false, 8);
        check_conv(3, 2, 1, 1, true, 5);
    }

    #[test]
    fn max_pool_2x2_matches_max_pool2d() {
        let device = device();
        device.seed(11);
        let pool = MaxPool2dConfig::new([2, 2]).init();
        let x = Tensor::<4>::random([2, 3, 6, 8], Distribution::Normal(0.0, 1.0), &device);
        let (x1, x2) = (x.clone().require_grad(), x.require_grad());
        let (y1, y2) = (pool.forward(x1.clone()), max_pool_2x2(x2.clone()));
        let r = Tensor::<4>::random(y1.dims(), Distribution::Normal(0.0, 1.0), &device);
        let g1 = (y1.clone() * r.clone()).sum().backward();
        let g2 = (y2.clone() * r).sum().backward();
        assert_close(y1.inner(), y2.inner(), "output");
        assert_close(
            x1.grad(&g1).unwrap(),
            x2.grad(&g2).unwrap(),
            "input gradient",
        );
    }
}
