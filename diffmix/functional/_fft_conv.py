"""Overlap-save FFT convolution with a hand-written backward.

``y[t] = sum_m fir[m] x[t - m]`` for a long ``x`` and a short ``fir`` (length ``L``), cut
into blocks of ``block`` samples that advance by ``hop = block - L + 1``: block ``j`` holds
``x[j hop - (L - 1) : (j + 1) hop]`` and its circular convolution is exact past its first
``L - 1`` points, which are dropped.

Autograd through that graph keeps every intermediate spectrum, zero-fills a gradient
buffer for each slice and pad, and forms the full ``(B, C, blocks, bins)`` product of
the output gradient with the input spectrum before summing it. The adjoints are two
correlations, computed per block with the same transforms::

    dL/dfir[m] = sum_t g[t] x[t - m]   = irfft(sum_j G_j conj(X_j))[m],  m < L
    dL/dx[s]   = sum_m fir[m] g[s + m] = overlap-add_j irfft(G_j conj(F))

with ``G_j`` the rfft of block ``j``'s output gradient placed at its last ``hop`` points
(zeros before). No circular wrap reaches a kept value: ``fir`` is zero past ``L`` and
the gradient is zero on each block's first ``L - 1`` points. The input's gradient is
skipped entirely when the input needs none (stems entering a console), and the block
sum of the parameter gradient is taken in place, so only one block-sized spectrum is
ever allocated in the backward.
"""

from __future__ import annotations

import numpy as np
import torch
from torch import Tensor

from diffmix.functional.gain import left_right, mid_side


def frames(x: Tensor, length: int, block: int) -> tuple[Tensor, int]:
    """``(B, C, T)`` -> ``(B, C, n_blocks, block)`` overlap-save frames (one copy), and
    the number of blocks."""
    n_time = x.shape[-1]
    hop = block - length + 1
    full = n_time // hop
    # Only the first and the last block need zeros; the rest are a strided view,
    # gathered with them into one contiguous tensor.
    pieces = [torch.nn.functional.pad(x[..., :hop], (length - 1, 0)).unsqueeze(-2)]
    pieces.append(x[..., hop - (length - 1):].unfold(-1, block, hop)[..., : full - 1, :])
    if n_time % hop:
        rest = x[..., full * hop - (length - 1):]
        pieces.append(torch.nn.functional.pad(rest, (0, block - rest.shape[-1])).unsqueeze(-2))
    out = torch.cat(pieces, dim=-2)
    return out, out.shape[-2]


class _RealFFT(torch.autograd.Function):
    # rfft(x, n)'s adjoint: dL/dx[t] = Re sum_k G[k] e^{2 pi i k t / n} over the kept bins,
    # which is n * irfft(Z) with Z = G but halved off DC and Nyquist (irfft counts those
    # once and every other bin twice). Autograd's own backward zero-fills the spectrum to n
    # bins and takes a complex transform: twice the arithmetic and a full-size copy.
    @staticmethod
    def forward(ctx, x: Tensor, n: int) -> Tensor:  # noqa: ANN001
        ctx.meta = (x.shape[-1], n)
        return torch.fft.rfft(x, n=n)

    @staticmethod
    def backward(ctx, grad: Tensor):  # noqa: ANN001, ANN205
        length, n = ctx.meta
        z = grad.mul(0.5)
        z[..., 0] = grad[..., 0]
        if n % 2 == 0:
            z[..., -1] = grad[..., -1]
        g = torch.fft.irfft(z, n=n, norm="forward")  # the unscaled sum
        g = g[..., :length] if length <= n else torch.nn.functional.pad(g, (0, length - n))
        return g, None


def real_fft(x: Tensor, n: int) -> Tensor:
    """``torch.fft.rfft(x, n=n)`` over the last dimension, with a backward of one inverse
    real transform (autograd's takes a complex one of twice the size). Differentiable in
    ``x``; CPU and CUDA."""
    if torch.is_grad_enabled() and x.requires_grad:
        return _RealFFT.apply(x, n)
    return torch.fft.rfft(x, n=n)


class _OverlapSave(torch.autograd.Function):
    @staticmethod
    def forward(ctx, x: Tensor, fir: Tensor, block: int) -> Tensor:  # noqa: ANN001
        n_time, length = x.shape[-1], fir.shape[-1]
        hop = block - length + 1
        spec_x = torch.fft.rfft(frames(x, length, block)[0], n=block)
        spec_f = torch.fft.rfft(fir, n=block).unsqueeze(-2)
        ctx.meta = (n_time, length, block, hop, tuple(x.shape), tuple(fir.shape))
        ctx.save_for_backward(spec_x if ctx.needs_input_grad[1] else None, spec_f)
        prod = spec_x * spec_f if ctx.needs_input_grad[1] else spec_x.mul_(spec_f)
        out = torch.fft.irfft(prod, n=block)[..., length - 1:]
        return out.reshape(*out.shape[:-2], -1)[..., :n_time]

    @staticmethod
    def backward(ctx, grad: Tensor):  # noqa: ANN001, ANN205
        n_time, length, block, hop, x_shape, fir_shape = ctx.meta
        spec_x, spec_f = ctx.saved_tensors
        n_blocks = -(-n_time // hop)
        g = torch.nn.functional.pad(grad, (0, n_blocks * hop - n_time))
        g = g.reshape(*g.shape[:-1], n_blocks, hop)
        # Each block's output gradient sits on its last hop points.
        spec_g = torch.fft.rfft(torch.nn.functional.pad(g, (length - 1, 0)), n=block)
        grad_x = grad_fir = None
        if ctx.needs_input_grad[0]:
            d = torch.fft.irfft(spec_g * spec_f.conj(), n=block)  # (B, C, n_blocks, block)
            # Overlap-add: the last hop points of block j land on x[j hop : (j + 1) hop],
            # its first L - 1 on the end of block j - 1's span (block 0's on the padding).
            body = d[..., length - 1:].contiguous()
            if length > 1 and n_blocks > 1:
                body[..., :-1, hop - (length - 1):] += d[..., 1:, : length - 1]
            grad_x = body.reshape(*body.shape[:-2], -1)[..., :n_time]
            grad_x = grad_x.sum_to_size(x_shape) if tuple(grad_x.shape) != x_shape else grad_x
        if ctx.needs_input_grad[1]:
            corr = spec_g.mul_(spec_x.conj()).sum(-2)  # (B, C, bins)
            grad_fir = torch.fft.irfft(corr, n=block)[..., :length]
            grad_fir = grad_fir.sum_to_size(fir_shape).to(grad.dtype)
        return grad_x, grad_fir, None


def overlap_save(x: Tensor, fir: Tensor, block: int, *, ms: bool = False, skip: int = 0) -> Tensor:
    """Causal convolution of ``x`` ``(B, C, T)`` with ``fir`` ``(B|1, C|1, L)`` by
    overlap-save with ``block``-point transforms, cut to ``T`` (module docstring).
    ``ms``: ``x`` and the output are left/right, ``fir``'s two channels filter mid and
    side (:func:`~diffmix.functional.gain.mid_side`). ``skip``: the convolution's samples
    ``skip .. skip + T`` of ``x`` followed by zeros instead (see :func:`_render`).
    Differentiable in both; CPU and CUDA."""
    if fir.shape[-1] > block // 2:
        raise ValueError(f"fft_convolve: block {block} too short for a {fir.shape[-1]}-tap filter")
    if torch.is_grad_enabled() and (x.requires_grad or fir.requires_grad):
        if skip:
            return overlap_save(torch.nn.functional.pad(x, (0, skip)), fir, block, ms=ms)[..., skip:]
        if ms:
            return left_right(_OverlapSave.apply(mid_side(x), fir, block))
        return _OverlapSave.apply(x, fir, block)
    return _render(x, fir, block, ms=ms, skip=skip)


# Samples per channel transformed together by the no-gradient render (CPU): its buffers stay
# a few MiB, which the allocator reuses (fresh pages cost more than the transforms here).
_GROUP_SAMPLES = 1 << 19


def _render(x: Tensor, fir: Tensor, block: int, *, ms: bool = False, skip: int = 0) -> Tensor:
    """:func:`overlap_save` with no gradient: a few blocks at a time, written into the
    output, so no full-length frames, spectra or product exist (on CPU; one group on CUDA);
    each group's spectra and blocks go through buffers made once (fresh ones per group took
    fresh pages). The same transforms block for block as the autograd path, so the same
    values; with ``ms`` the mid/side sums are taken on each block's spectrum (the transform
    is linear), so no mid/side copy of the signal exists either.

    ``skip``: the result is the convolution's samples ``skip .. skip + T`` of ``x`` followed
    by zeros (a zero-phase filter's delay taken out), the same values as padding ``x`` with
    ``skip`` zeros and cutting the first ``skip`` samples, without that padded copy."""
    n_time, length = x.shape[-1], fir.shape[-1]
    hop = block - length + 1
    total = n_time + skip  # the convolution's samples, up to the last one kept
    n_blocks = -(-total // hop)
    spec_f = torch.fft.rfft(fir, n=block).unsqueeze(-2)
    if ms:
        if x.shape[1] != 2 or fir.shape[1] not in (1, 2):
            raise ValueError("fft_convolve: ms needs 2 channels of audio and 1 or 2 of filter (mid, side)")
        # M = (L + R) / 2, S = (L - R) / 2 and back L = M + S, R = M - S: the halves go
        # into the responses.
        spec_f = spec_f * 0.5
    out = torch.empty(np.broadcast_shapes(x.shape[:-1], fir.shape[:-1]) + (n_time,),
                      dtype=torch.result_type(x, fir), device=x.device)
    # A filter per item over one signal (the product is the larger), or a filter of another
    # dtype (the product is promoted): fresh products; else the products are made in place.
    buffered = spec_f.shape[0] <= x.shape[0] and fir.dtype == x.dtype
    group = max(1, _GROUP_SAMPLES // block) if x.device.type == "cpu" else n_blocks
    bufs: list[Tensor] = []
    for j0 in range(skip // hop, n_blocks, group):
        j1 = min(n_blocks, j0 + group)
        lo, hi = max(skip, j0 * hop), min(total, j1 * hop)  # the kept outputs of blocks j0 .. j1
        a = j0 * hop - (length - 1)  # block j0's first input sample
        part = x[..., max(a, 0) : min(n_time, j1 * hop)]
        left = max(0, -a)
        right = (j1 - j0) * hop + length - 1 - part.shape[-1] - left  # zeros past the end
        if left or right:
            part = torch.nn.functional.pad(part, (left, right))
        frames = part.unfold(-1, block, hop)
        if not buffered:  # as the buffers below, each product fresh
            spec = torch.fft.rfft(frames, n=block)
            if ms:
                mid = (spec[:, 0] + spec[:, 1]) * spec_f[:, 0]
                side = (spec[:, 0] - spec[:, 1]) * spec_f[:, -1]
                spec = torch.stack([mid + side, mid.sub_(side)], 1)
            else:
                spec = spec * spec_f
            y = torch.fft.irfft(spec, n=block)
        else:
            if not bufs or bufs[0].shape[:-1] != frames.shape[:-1]:  # the first group, a shorter last one
                spec = torch.empty(frames.shape[:-1] + (block // 2 + 1,), dtype=spec_f.dtype, device=x.device)
                bufs = [spec, torch.empty_like(spec[:, 0]), torch.empty_like(spec[:, 0]),
                        torch.empty(frames.shape[:-1] + (block,), dtype=out.dtype, device=x.device)]
            spec, mid, side, y = bufs
            torch.fft.rfft(frames, n=block, out=spec)
            if ms:
                torch.add(spec[:, 0], spec[:, 1], out=mid).mul_(spec_f[:, 0])
                torch.sub(spec[:, 0], spec[:, 1], out=side).mul_(spec_f[:, -1])
                torch.add(mid, side, out=spec[:, 0])
                torch.sub(mid, side, out=spec[:, 1])
            else:
                spec.mul_(spec_f)
            torch.fft.irfft(spec, n=block, out=y)
        kept = y[..., length - 1 :]  # (..., j1 - j0, hop): outputs j0 hop .. j1 hop
        if lo == j0 * hop and hi == j1 * hop:  # whole blocks: copied straight into place
            out[..., lo - skip : hi - skip].unflatten(-1, kept.shape[-2:]).copy_(kept)
        else:
            flat = kept.reshape(*kept.shape[:-2], -1)
            out[..., lo - skip : hi - skip] = flat[..., lo - j0 * hop : hi - j0 * hop]
    return out
