"""Triton kernel for the BS.1770 K-weighting: the two-biquad cascade over parallel segments.

Loaded only through :func:`diffmix.kernels.triton_ops.kernels`. Each lane filters one
segment of one row: it starts from zero state ``warm`` samples before the segment (by
when the cascade's impulse response has decayed below 1e-12 of its peak, as the numba and
torch paths assume) and writes only the segment's own samples, so the stitched output
equals one serial pass to ~1e-12. The state is float64 whatever the audio's dtype, as in
the numba kernel. Coefficients ``c`` are ``b0 b1 b2 a1 a2`` of each stage (10 values).
The backward is the same kernel on the time-reversed gradient (the filter's adjoint).
"""

import triton
import triton.language as tl


@triton.jit
def kfilter(x_ptr, y_ptr, c_ptr, T, SEG, WARM, NSEG, LANES, BLOCK: tl.constexpr):
    lane = tl.program_id(0) * BLOCK + tl.arange(0, BLOCK)
    live = lane < LANES
    row = (lane // NSEG).to(tl.int64)
    start = (lane % NSEG) * SEG - WARM
    b0 = tl.load(c_ptr + 0)
    b1 = tl.load(c_ptr + 1)
    b2 = tl.load(c_ptr + 2)
    a1 = tl.load(c_ptr + 3)
    a2 = tl.load(c_ptr + 4)
    g0 = tl.load(c_ptr + 5)
    g1 = tl.load(c_ptr + 6)
    g2 = tl.load(c_ptr + 7)
    h1 = tl.load(c_ptr + 8)
    h2 = tl.load(c_ptr + 9)
    s0 = (lane * 0).to(tl.float64)  # tl.zeros is not callable in the interpreted module
    s1 = s0
    s2 = s0
    s3 = s0
    i = 0
    while i < WARM + SEG:  # a while loop: the interpreter cannot range() over a tensor
        t = start + i
        inside = live & (t >= 0) & (t < T)
        xv = tl.load(x_ptr + row * T + t, mask=inside, other=0.0).to(tl.float64)
        v = b0 * xv + s0
        s0 = b1 * xv - a1 * v + s1
        s1 = b2 * xv - a2 * v
        z = g0 * v + s2
        s2 = g1 * v - h1 * z + s3
        s3 = g2 * v - h2 * z
        tl.store(y_ptr + row * T + t, z.to(y_ptr.dtype.element_ty), mask=inside & (i >= WARM))
        i += 1
