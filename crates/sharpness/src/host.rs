//! Fused loops over the host memory of CPU (Flex) tensors.
//!
//! Flex runs every tensor operation as its own pass over memory, and the vector arithmetic of a
//! sharpness-aware step chains several of them over all parameters (ε = s·f(g, w, a), then w + ε;
//! a moving average a·m + b·g). Here each such chain is **one** pass, cut into fixed-size blocks
//! that run on the rayon pool. The functions return `None` when a tensor is not a contiguous
//! `f32`/`f64` Flex tensor; callers then fall back to tensor operations. Elementwise results are
//! the same IEEE operations in the same order as the tensor-operation path, so they agree bit for
//! bit; only sums (norms, dot products) are rounded differently.

use std::mem::MaybeUninit;
use std::ops::Range;

use burn::backend::Flex;
use burn::backend::flex::FlexTensor;
use burn::tensor::{DType, Tensor, TensorData};
use rayon::prelude::*;

/// Coordinates per block. Blocks have a fixed size, and results are combined in block order, so
/// nothing depends on the number of threads.
pub(crate) const BLOCK: usize = 8192;
/// Tensors smaller than this run on the calling thread (biases, toy problems).
const PARALLEL_MIN: usize = 4 * BLOCK;

/// Element types of the fused loops.
pub(crate) trait HostFloat:
    crate::perturb::Coordinate + Copy + bytemuck::Pod + Into<f64> + burn::tensor::Element + Send + Sync
{
    /// The nearest value of this type.
    fn from_f64(x: f64) -> Self;
}

impl HostFloat for f32 {
    fn from_f64(x: f64) -> Self {
        x as f32
    }
}

impl HostFloat for f64 {
    fn from_f64(x: f64) -> Self {
        x
    }
}

/// The storage of a contiguous, aligned `f32`/`f64` Flex tensor, shared (no copy), or `None`.
pub(crate) fn host(t: &Tensor<1>) -> Option<FlexTensor> {
    let align = match t.dtype() {
        DType::F32 => align_of::<f32>(),
        DType::F64 => align_of::<f64>(),
        _ => return None,
    };
    // Parameter sets hold values without autodiff; a state restored on an autodiff device is
    // stripped of it here, so it takes the same path (and rounding) as before the restore.
    let flex = t
        .clone()
        .without_autodiff()
        .try_into_primitive::<Flex>()
        .ok()?;
    let layout = flex.layout();
    let aligned = (flex.bytes().as_ptr() as usize).is_multiple_of(align);
    (layout.is_contiguous() && layout.start_offset() == 0 && aligned).then_some(flex)
}

/// The storages of several tensors of one dtype, or `None` if one of them is not on the host or
/// has another dtype.
pub(crate) fn hosts<const N: usize>(tensors: [&Tensor<1>; N]) -> Option<[FlexTensor; N]> {
    let dtype = tensors[0].dtype();
    if tensors.iter().any(|t| t.dtype() != dtype) {
        return None;
    }
    let flex: Vec<FlexTensor> = tensors.iter().map(|t| host(t)).collect::<Option<_>>()?;
    flex.try_into().ok()
}

/// The first `n` values of a host tensor.
pub(crate) fn values<E: HostFloat>(t: &FlexTensor, n: usize) -> &[E] {
    bytemuck::cast_slice(&t.bytes()[..n * size_of::<E>()]) // `host` checked the alignment
}

/// Runs `body` on the rayon pool: the parallel loops inside it then start from a pool thread, so
/// a whole fused evaluation costs one hand-over to the pool instead of one per loop.
pub(crate) fn in_pool<T: Send>(body: impl FnOnce() -> T + Send) -> T {
    rayon::scope(|_| body())
}

/// `K` new buffers of `n` values, block by block: `fill(range, outs)` writes the values of
/// `range` into each of `outs` and returns what it accumulated on the way (e.g. the block's part
/// of a norm); those results come back in block order.
///
/// # Safety
/// `fill` must initialise every element of every `outs` slice (the buffers are then read as
/// initialised).
pub(crate) unsafe fn write_blocks<E: HostFloat, T: Send, const K: usize>(
    n: usize,
    fill: impl Fn(Range<usize>, [&mut [MaybeUninit<E>]; K]) -> T + Sync,
) -> ([Vec<E>; K], Vec<T>) {
    let mut buffers: [Vec<E>; K] = std::array::from_fn(|_| Vec::with_capacity(n));
    let mut chunks = buffers
        .each_mut()
        .map(|b| b.spare_capacity_mut()[..n].chunks_mut(BLOCK));
    let blocks: Vec<[&mut [MaybeUninit<E>]; K]> = (0..n.div_ceil(BLOCK))
        .map(|_| {
            chunks
                .each_mut()
                .map(|c| c.next().expect("a chunk per block"))
        })
        .collect();
    let block = |(b, outs): (usize, [&mut [MaybeUninit<E>]; K])| {
        fill(b * BLOCK..((b + 1) * BLOCK).min(n), outs)
    };
    let results = match n >= PARALLEL_MIN {
        true => blocks.into_par_iter().enumerate().map(block).collect(),
        false => blocks.into_iter().enumerate().map(block).collect(),
    };
    for b in &mut buffers {
        // SAFETY: the chunks of each buffer cover its n elements, and `fill` initialised them.
        unsafe { b.set_len(n) };
    }
    (buffers, results)
}

/// `update(range, values)` for each block of `values`, in place, in parallel for large buffers.
pub(crate) fn update_blocks<E: HostFloat>(
    values: &mut [E],
    update: impl Fn(Range<usize>, &mut [E]) + Sync,
) {
    let block = |(b, out): (usize, &mut [E])| update(b * BLOCK..b * BLOCK + out.len(), out);
    match values.len() >= PARALLEL_MIN {
        true => values.par_chunks_mut(BLOCK).enumerate().for_each(block),
        false => values.chunks_mut(BLOCK).enumerate().for_each(block),
    }
}

/// `reduce(range)` for each block of `0..n`, in parallel for large `n`; the results in block order
/// (so they do not depend on the number of threads).
pub(crate) fn reduce_blocks<T: Send>(
    n: usize,
    reduce: impl Fn(Range<usize>) -> T + Sync,
) -> Vec<T> {
    let block = |b: usize| reduce(b * BLOCK..((b + 1) * BLOCK).min(n));
    let blocks = n.div_ceil(BLOCK);
    match n >= PARALLEL_MIN {
        true => (0..blocks).into_par_iter().map(block).collect(),
        false => (0..blocks).map(block).collect(),
    }
}

/// A rank-1 tensor from host values, on the device and with the dtype of `like` (no copy).
pub(crate) fn tensor_like<E: HostFloat>(values: Vec<E>, like: &Tensor<1>) -> Tensor<1> {
    let n = values.len();
    Tensor::from_data(TensorData::new(values, [n]), (&like.device(), like.dtype()))
}

/// a·x + b·y for two host tensors of the same dtype and length (`None` otherwise).
pub(crate) fn axpby(a: f64, x: &Tensor<1>, b: f64, y: &Tensor<1>) -> Option<Tensor<1>> {
    let n = x.dims()[0];
    if y.dims()[0] != n {
        return None;
    }
    let [hx, hy] = hosts([x, y])?;
    fn typed<E: HostFloat>(a: f64, x: &FlexTensor, b: f64, y: &FlexTensor, n: usize) -> Vec<E> {
        let (x, y) = (values::<E>(x, n), values::<E>(y, n));
        let (a, b) = (E::from_f64(a), E::from_f64(b));
        let fill = |range: Range<usize>, [out]: [&mut [MaybeUninit<E>]; 1]| {
            for ((o, &x), &y) in out.iter_mut().zip(&x[range.clone()]).zip(&y[range]) {
                o.write(a * x + b * y);
            }
        };
        // SAFETY: `out` has the length of `range`, so the zip writes every element.
        let ([values], _) = unsafe { write_blocks(n, fill) };
        values
    }
    Some(match x.dtype() {
        DType::F32 => tensor_like(typed::<f32>(a, &hx, b, &hy, n), x),
        _ => tensor_like(typed::<f64>(a, &hx, b, &hy, n), x),
    })
}
