"""The kernel backend layer: one dispatcher, one environment switch, and the Triton kernels
checked against the numba kernels under Triton's interpreter (CPU tensors), forward and
gradients, for every option the kernels take.

The interpreter is slow (numpy per program and per op), so the signals are tiny and the
time block is 16 samples: every case still crosses several block boundaries, which is
where the carried state (smoother value, hold counter, adjoint) must be right.
"""

from __future__ import annotations

import itertools

import pytest
import torch

from diffmix.functional import _dynamics_fused, _dynamics_kernels, _peak_kernels, loudness, peaks
from diffmix.functional import dynamics as F
from diffmix.functional import limiter as L
from diffmix.functional._dynamics_kernels import smooth
from diffmix.kernels import backend as B
from diffmix.kernels import ops

pytest.importorskip("triton")
from diffmix.kernels import triton_ops  # noqa: E402

SR = 44100
TOL = {torch.float32: 1e-5, torch.float64: 1e-10}
pytestmark = pytest.mark.filterwarnings("ignore::RuntimeWarning")  # masked lanes' inf/nan


@pytest.fixture(autouse=True)
def _small_blocks(monkeypatch):
    monkeypatch.setitem(triton_ops.BLOCK, "interpreter", 16)
    monkeypatch.delenv(B.ENV, raising=False)
    monkeypatch.delenv(B.LEGACY_ENV, raising=False)


def _close(got: torch.Tensor, want: torch.Tensor, dtype: torch.dtype, what: str) -> None:
    # Relative to the quantity's scale: 1e-5 (float32) or 1e-10 (float64) of its largest value.
    got, want = got.detach(), want.detach()
    tol = TOL[dtype] * max(1.0, float(want.abs().max()))
    err = float((got - want).abs().max())
    assert err <= tol, f"{what}: max error {err:.3g} > {tol:.3g}"


# --------------------------------------------------------------------------- dispatcher
def test_resolve_auto_env_and_explicit(monkeypatch):
    x = torch.zeros(1)
    assert B.resolve("auto", x, "op") == "numba"
    assert B.resolve("torch", x, "op") == "torch"
    assert B.resolve("triton", x, "op") == "triton"  # CPU tensors: the interpreter
    monkeypatch.setenv(B.ENV, "torch")
    assert B.resolve("auto", x, "op") == "torch"
    assert B.resolve("numba", x, "op") == "numba"  # an explicit argument wins
    monkeypatch.setenv(B.ENV, "triton")
    assert B.resolve("auto", x, "op") == "triton"
    monkeypatch.setenv(B.ENV, "auto")
    monkeypatch.setenv(B.LEGACY_ENV, "1")
    assert B.resolve("auto", x, "op") == "torch"  # the old switch is an alias for torch
    monkeypatch.setenv(B.LEGACY_ENV, "0")
    assert B.resolve("auto", x, "op") == "numba"


def test_resolve_rejects_bad_names_and_devices(monkeypatch):
    names = "auto, numba, triton, torch"
    with pytest.raises(ValueError, match=rf"^compressor: backend must be one of {names}, got 'cuda'$"):
        F.compressor(torch.zeros(1, 1, 8), SR, backend="cuda")
    with pytest.raises(ValueError, match=r"^smooth: backend 'numba' needs numba and a CPU tensor, got meta"):
        B.resolve("numba", torch.zeros(1, device="meta"), "smooth")
    assert B.resolve("auto", torch.zeros(1, device="meta"), "smooth") == "torch"
    monkeypatch.setenv(B.ENV, "gpu")
    with pytest.raises(ValueError, match=rf"^DIFFMIX_BACKEND must be one of {names}, got 'gpu'$"):
        B.resolve("auto", torch.zeros(1), "op")


def _every_kernel_op() -> None:
    x = (0.5 * torch.randn(1, 2, 4410, generator=torch.Generator().manual_seed(3))).requires_grad_()
    F.compressor(x, SR, threshold_db=-30.0).sum().backward()
    F.expander(x, SR, detector="rms").sum().backward()
    L.limiter(4 * x, SR, lookahead_ms=1.0).sum().backward()
    peaks.true_peak(x.detach(), SR)
    loudness.integrated_loudness(x.detach(), SR)
    loudness.integrated_loudness(x, SR).backward()


def test_environment_switch_reaches_every_op(monkeypatch):
    def boom(*args, **kwargs):  # noqa: ANN002, ANN003, ANN202
        raise AssertionError("a numba kernel ran")

    for module, name in [(_dynamics_kernels, "_smooth_fwd_nb"), (_dynamics_fused, "_fwd_multi"),
                         (_dynamics_fused, "_fwd_multi_hold"), (_peak_kernels, "_envelope_nb"),
                         (_peak_kernels, "_ramp_nb"), (peaks, "_peak_kernel"),
                         (loudness, "_kernel")]:
        monkeypatch.setattr(module, name, boom)
    with pytest.raises(AssertionError, match="a numba kernel ran"):  # the patches bite
        _every_kernel_op()
    for env, value in [(B.ENV, "torch"), (B.LEGACY_ENV, "1")]:
        monkeypatch.setenv(env, value)
        _every_kernel_op()
        monkeypatch.delenv(env)


# --------------------------------------------------------------------------- Triton vs numba
def _grads(out: torch.Tensor, inputs: list[torch.Tensor], seed: int) -> list[torch.Tensor]:
    w = torch.randn(out.shape, generator=torch.Generator().manual_seed(seed), dtype=out.dtype)
    return list(torch.autograd.grad((out * w).sum(), inputs))


@pytest.mark.parametrize("dtype", [torch.float32, torch.float64], ids=["float32", "float64"])
@pytest.mark.parametrize("case", ["plain", "hold", "limiter"])
def test_triton_smoother_equals_numba(case, dtype):
    seed = 11
    print("seed", seed)
    gen = torch.Generator().manual_seed(seed)
    rows, t = 3, 45
    g = 6.0 * torch.randn(rows, t, generator=gen, dtype=torch.float64).cumsum(-1) / 3
    a_down = torch.tensor([0.3, 0.8, 0.95], dtype=torch.float64)
    a_up = torch.tensor([0.9, 0.5, 0.7], dtype=torch.float64)
    hold, init = None, 0.0
    if case == "hold":
        hold = torch.tensor([0, 2, 5])
    if case == "limiter":
        g = torch.rand(rows, t, generator=gen, dtype=torch.float64).clamp_min(0.3)
        g[:, ::7] = 1.0
        a_down, init = torch.zeros(rows, dtype=torch.float64), 1.0
    leaves = [v.to(dtype).requires_grad_() for v in (g, a_down, a_up)]
    want = smooth(*leaves, hold=hold, init=init, backend="numba")
    got = smooth(*leaves, hold=hold, init=init, backend="triton")
    _close(got, want, dtype, "y")
    for name, a, b in zip(["g", "a_down", "a_up"], _grads(got, leaves, seed), _grads(want, leaves, seed),
                          strict=True):
        _close(a, b, dtype, f"d{name}")


def _signal(dtype: torch.dtype, seed: int) -> torch.Tensor:
    """Two items x two channels of noise under a swelling envelope: levels cross every
    threshold below, so both branches, the knee, the range floor and the hold all occur."""
    gen = torch.Generator().manual_seed(seed)
    t = torch.arange(40, dtype=torch.float64)
    env = 10 ** (-2.0 + 1.9 * (0.5 + 0.5 * torch.sin(t / 4.0 + torch.tensor([[0.0], [1.5]]))))
    x = env[:, None, :] * torch.randn(2, 2, 40, generator=gen, dtype=torch.float64)
    return x.to(dtype)


OPTIONS = list(itertools.product(["compressor", "expander"], ["peak", "rms"], ["max", "mean", "none"],
                                 [0.0, 0.2], [False, True]))


@pytest.mark.parametrize("dtype", [torch.float32, torch.float64], ids=["float32", "float64"])
@pytest.mark.parametrize("fn,detector,link,lookahead_ms,side", OPTIONS,
                         ids=["-".join(map(str, o)) for o in OPTIONS])
def test_triton_dynamics_equals_numba(fn, detector, link, lookahead_ms, side, dtype):
    seed = 5 + OPTIONS.index((fn, detector, link, lookahead_ms, side))
    print("seed", seed)
    x = _signal(dtype, seed).requires_grad_()
    sc = _signal(dtype, seed + 100).requires_grad_() if side else None
    values = {"threshold_db": [-20.0, -14.0], "ratio": [4.0, 2.5], "knee_db": [6.0, 0.0],
              "attack_ms": [0.05, 0.2], "release_ms": [0.4, 0.15]}
    if fn == "compressor":
        values |= {"makeup_db": [2.0, -1.0], "mix": [0.7, 1.0]}
    else:
        values |= {"threshold_db": [-25.0, -18.0], "range_db": [12.0, 30.0]}
    params = {k: torch.tensor(v, dtype=dtype, requires_grad=True) for k, v in values.items()}
    extra = {"hold_ms": 0.05} if fn == "expander" else {}
    leaves = [x, *([sc] if side else []), *params.values()]
    outs = {}
    for backend in ("numba", "triton"):
        y = getattr(F, fn)(x, SR, **params, **extra, detector=detector, rms_ms=0.1, link=link,
                           lookahead_ms=lookahead_ms, sidechain=sc, backend=backend)
        outs[backend] = (y, _grads(y, leaves, seed))
    _close(outs["triton"][0], outs["numba"][0], dtype, "output")
    names = ["x", *(["sidechain"] if side else []), *params]
    for name, a, b in zip(names, outs["triton"][1], outs["numba"][1], strict=True):
        _close(a, b, dtype, f"d{name}")


def test_triton_composite_path_per_channel_settings_on_a_linked_detector():
    # (B, C) settings with a linked detector have no single gain row: the composite path
    # runs, with the Triton smoother inside.
    dtype = torch.float64
    x = _signal(dtype, 2).requires_grad_()
    thr = torch.tensor([[-20.0, -15.0], [-18.0, -25.0]], dtype=dtype, requires_grad=True)
    outs = {}
    for backend in ("numba", "triton"):
        y = F.compressor(x, SR, threshold_db=thr, attack_ms=0.1, release_ms=0.3, backend=backend)
        outs[backend] = (y, _grads(y, [x, thr], 2))
    _close(outs["triton"][0], outs["numba"][0], dtype, "output")
    for a, b in zip(outs["triton"][1], outs["numba"][1], strict=True):
        _close(a, b, dtype, "gradient")


def test_triton_kernels_run_from_the_environment_switch(monkeypatch):
    x = _signal(torch.float64, 4)
    want = F.compressor(x, SR, attack_ms=0.1, release_ms=0.3, backend="numba")
    monkeypatch.setenv(B.ENV, "triton")
    assert triton_ops.interpreted(x)
    got = F.compressor(x, SR, attack_ms=0.1, release_ms=0.3)
    _close(got, want, torch.float64, "output")


# --------------------------------------------------------------------------- true peak
def _taps(dtype: torch.dtype, seed: int) -> torch.Tensor:
    # The kernels take the interpolator as an input; a short random one (3 phases x 8 taps)
    # keeps the interpreter fast, and the numba kernels take the same taps.
    return torch.randn(3, 8, generator=torch.Generator().manual_seed(seed), dtype=torch.float64).to(dtype)


@pytest.mark.parametrize("dtype", [torch.float32, torch.float64], ids=["float32", "float64"])
@pytest.mark.parametrize("channels", [1, 2])
def test_triton_true_peak_envelope_equals_numba(channels, dtype):
    seed = 40 + channels
    print("seed", seed)
    x = (0.5 * torch.randn(2, channels, 70, generator=torch.Generator().manual_seed(seed),
                           dtype=torch.float64)).to(dtype).requires_grad_()
    taps = _taps(dtype, seed)
    got = ops.limiter_envelope(x, taps, True, "triton")[0]
    xn, tn = x.detach().numpy(), taps.numpy()
    level, code = _peak_kernels.envelope_numpy(xn, tn)
    _close(got[:, 0], torch.from_numpy(level), dtype, "level")
    g = torch.randn(got.shape, generator=torch.Generator().manual_seed(seed), dtype=dtype)
    (gx,) = torch.autograd.grad((got * g).sum(), x)
    want = torch.zeros_like(x.detach())
    _peak_kernels._envelope_bwd_nb(xn, tn, code, g[:, 0].contiguous().numpy(), want.numpy())
    _close(gx, want, dtype, "dx")


@pytest.mark.parametrize("dtype", [torch.float32, torch.float64], ids=["float32", "float64"])
def test_triton_true_peak_meter_equals_numba(dtype):
    x = (0.5 * torch.randn(3, 50, generator=torch.Generator().manual_seed(8), dtype=torch.float64)).to(dtype)
    taps = _taps(dtype, 8)
    got = triton_ops.between(x, taps)[0].abs().amax(-1)
    want = torch.zeros(3, 1, dtype=torch.float64)
    peaks._peak_kernel(x.numpy(), taps.numpy(), want.numpy())
    _close(got, want[:, 0].to(dtype), dtype, "between-sample peak")


@pytest.mark.parametrize("dtype", [torch.float32, torch.float64], ids=["float32", "float64"])
@pytest.mark.parametrize("lookahead", [1, 4, 9])
def test_triton_lookahead_ramp_equals_numba(lookahead, dtype):
    # Ties (equal minima: the latest holds the gradient) and stretches at 1.0 next to the
    # padding (the padding wins), as the numba deque decides them.
    gen = torch.Generator().manual_seed(lookahead)
    req = torch.rand(2, 37, generator=gen, dtype=torch.float64).clamp_max(0.9).to(dtype)
    req[:, 5:9] = 1.0
    req[:, 20] = req[:, 22]
    req[0, :3] = 1.0
    leaves = [req.clone().requires_grad_() for _ in range(2)]
    got = ops.limiter_ramp(leaves[0], lookahead, "triton")[0]
    want = _peak_kernels.ramp(leaves[1], lookahead)
    _close(got, want, dtype, "ramp")
    _close(_grads(got, leaves[:1], 3)[0], _grads(want, leaves[1:], 3)[0], dtype, "drequired")


def test_triton_limiter_with_the_meters_filter_equals_numba():
    # The real 48-tap interpolator end to end: envelope, ramp and release smoother on
    # Triton against the numba kernels; and the meter through true_peak().
    dtype = torch.float64
    x = (1.5 * torch.randn(1, 2, 40, generator=torch.Generator().manual_seed(12), dtype=dtype))
    x.requires_grad_()
    kw = dict(ceiling_db=-1.0, release_ms=0.5, lookahead_ms=0.1, exact=False)
    outs = {}
    for backend in ("numba", "triton"):
        y = L.limiter(x, SR, **kw, backend=backend)
        outs[backend] = (y, *_grads(y, [x], 12))
    for a, b in zip(outs["triton"], outs["numba"], strict=True):
        _close(a, b, dtype, "limiter")
    _close(peaks.true_peak(x.detach(), SR, backend="triton"), peaks.true_peak(x.detach(), SR), dtype,
           "true_peak")


def test_triton_exact_correction_equals_numba():
    # The limiter's exact step with residual overs to close (an unlimited signal over two
    # ceilings): the Triton passes (envelope, ramp, smoother; no host sync) against the
    # numba kernel's local re-metering. Both hold the meter at the ceiling.
    dtype = torch.float64
    y = 1.3 * torch.randn(2, 2, 48, generator=torch.Generator().manual_seed(21), dtype=dtype)
    ceiling = torch.tensor([0.9, 0.8], dtype=dtype).view(2, 1, 1)
    release = F.ms_to_pole(torch.tensor([0.5, 1.0], dtype=dtype).view(2, 1, 1), SR)
    got, want = (L.limiter_correction(y, SR, ceiling * (1 - 1e-4), ceiling, 4, release,
                                      strict=False, backend=b) for b in ("triton", "numba"))
    assert float(want.min()) < 0.9  # the correction acted
    _close(got, want, dtype, "correction")
    assert (peaks.true_peak(y * got, SR).amax(1).view(2, 1, 1) <= ceiling).all()


@pytest.mark.parametrize("dtype", [torch.float32, torch.float64], ids=["float32", "float64"])
def test_triton_k_weighting_equals_numba(dtype, monkeypatch):
    # The K-filter cascade at the lowest rate the meter takes (the shortest warm-up, so the
    # interpreter stays fast): through k_weight's dispatch (the environment switch), forward
    # and the adjoint (the same kernel on the reversed gradient); then the kernel alone with
    # short segments, so that lanes start mid-row from their warm-up.
    sr, seed = 3400, 5
    print("seed", seed)
    x = (0.3 * torch.randn(1, 2, 90, generator=torch.Generator().manual_seed(seed),
                           dtype=torch.float64)).to(dtype)
    outs = {}
    for backend in ("numba", "triton"):
        monkeypatch.setenv(B.ENV, backend)
        leaf = x.clone().requires_grad_(dtype == torch.float64)
        y = loudness.k_weight(leaf, sr)
        outs[backend] = (y, *(_grads(y, [leaf], seed) if leaf.requires_grad else ()))
    for a, b in zip(outs["triton"], outs["numba"], strict=True):
        _close(a, b, dtype, "k_weight")
    long = torch.cat([x, x.flip(-1), -x], -1)[0]  # (2, 270): four lanes of 64 per row
    coefficients = torch.from_numpy(loudness._coeff_array(sr))
    got = triton_ops.kfilter(long, coefficients, loudness._warmup(sr), 64)
    monkeypatch.setenv(B.ENV, "numba")
    _close(got, loudness.k_weight(long[None], sr)[0], dtype, "k_weight segments")


# --------------------------------------------------------------------------- CUDA (./scripts/gpu-check)
CUDA_OPTIONS = [("compressor", "peak", "max", 2.0, False), ("compressor", "rms", "mean", 0.0, True),
                ("expander", "peak", "none", 1.0, False), ("expander", "rms", "max", 0.0, True)]


@pytest.mark.cuda
@pytest.mark.parametrize("dtype", [torch.float32, torch.float64], ids=["float32", "float64"])
@pytest.mark.parametrize("fn,detector,link,lookahead_ms,side", CUDA_OPTIONS,
                         ids=["-".join(map(str, o)) for o in CUDA_OPTIONS])
def test_compiled_triton_dynamics_on_cuda_equal_numba(fn, detector, link, lookahead_ms, side, dtype):
    # Long enough for many 1024-sample blocks; the compiled kernels against numba on the CPU.
    gen = torch.Generator().manual_seed(9)
    t = torch.arange(48000, dtype=torch.float64)
    env = 10 ** (-2.0 + 1.9 * (0.5 + 0.5 * torch.sin(t / 900.0)))
    x = (env * torch.randn(2, 2, 48000, generator=gen, dtype=torch.float64)).to(dtype)
    sc = (0.5 * torch.randn(2, 2, 48000, generator=gen, dtype=torch.float64)).to(dtype) if side else None
    kw = dict(threshold_db=-20.0, attack_ms=2.0, release_ms=30.0, detector=detector, link=link,
              lookahead_ms=lookahead_ms)
    if fn == "expander":
        kw |= dict(hold_ms=5.0, range_db=30.0)
    outs = {}
    for device, backend in (("cpu", "numba"), ("cuda", "triton")):
        xd = x.to(device).requires_grad_()
        sd = None if sc is None else sc.to(device).requires_grad_()
        y = getattr(F, fn)(xd, SR, **kw, sidechain=sd, backend=backend)
        w = torch.randn(y.shape, generator=torch.Generator().manual_seed(1), dtype=dtype).to(device)
        leaves = [xd] + ([sd] if side else [])
        outs[device] = [v.cpu() for v in (y, *torch.autograd.grad((y * w).sum(), leaves))]
    for a, b in zip(outs["cuda"], outs["cpu"], strict=True):
        _close(a, b, dtype, fn)


@pytest.mark.cuda
def test_console_forward_backward_on_cuda_has_no_host_sync():
    from diffmix.checks import input_checks
    from diffmix.console import Console
    from diffmix.effects.dynamics import Compressor, Limiter
    from diffmix.effects.eq import ParametricEQ
    from diffmix.effects.gain import Gain, Pan

    strip = {"input": Gain(SR), "eq": ParametricEQ(SR), "comp": Compressor(SR), "pan": Pan(SR)}
    master = {"eq": ParametricEQ(SR), "comp": Compressor(SR), "limiter": Limiter(SR)}
    console = Console(SR, 4, strip, master).cuda()
    console.select(["*"])
    x = 0.3 * torch.randn(1, 4, 2, SR, device="cuda")
    with input_checks(False):
        console(x).square().mean().backward()  # warm-up: compiles the kernels
        torch.cuda.synchronize()
        torch.cuda.set_sync_debug_mode("error")
        try:
            console(x).square().mean().backward()
        finally:
            torch.cuda.set_sync_debug_mode("default")


# --------------------------------------------------------------------------- torch contract
# The effect contract (tests/contract.py) of every effect with a hand-written kernel (the
# compressor, expander, multiband compressor and limiter), rerun with DIFFMIX_BACKEND=torch
# so the composite path is covered as well (the fixture below switches the backend for
# this class). Every other effect runs the same code on every backend.
from contract import CASES, Contract  # noqa: E402

from diffmix.effects import Compressor, Expander, Limiter, MultibandCompressor  # noqa: E402

KERNEL_CASES = sorted(n for n, c in CASES.items()
                      if c.effect_class() in (Compressor, Expander, Limiter, MultibandCompressor))


@pytest.mark.usefixtures("_single_thread")
@pytest.mark.parametrize("case", KERNEL_CASES)
class TestKernelEffectsContractTorch(Contract):
    pass


@pytest.fixture(autouse=True)
def _torch_backend_for_contracts(request, monkeypatch):
    if request.cls is not None and request.cls.__name__.endswith("ContractTorch"):
        monkeypatch.setenv(B.ENV, "torch")


def test_ops_do_not_import_dynamo():
    """Calling the ops (forward and backward) in a fresh process leaves ``torch._dynamo``
    unimported: ``torch.library.custom_op`` would import it (about 0.7 s) on the first call."""
    import subprocess
    import sys

    code = (
        "import sys, torch\n"
        "from diffmix.effects import Compressor, Limiter\n"
        "x = torch.randn(1, 2, 4410, requires_grad=True)\n"
        "(Limiter(44100)(Compressor(44100)(x))).sum().backward()\n"
        "assert x.grad is not None and torch.isfinite(x.grad).all()\n"
        "print('torch._dynamo' in sys.modules)\n"
    )
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120,
                         check=True).stdout
    assert out.strip() == "False"


@pytest.mark.parametrize("user", [None, "ACTIVE"])
def test_openmp_pools_wait_passively_unless_the_user_chose(user):
    # torch and numba each bring an OpenMP runtime; spinning idle threads of one stole the
    # cores of the other (a 16-step reference master: 29.7 s of user CPU against 6.1 s).
    # The policy is read when each runtime loads, so it must be set before torch is imported.
    import os
    import subprocess
    import sys

    env = {k: v for k, v in os.environ.items() if k != "OMP_WAIT_POLICY"}
    if user is not None:
        env["OMP_WAIT_POLICY"] = user
    code = ("import sys, diffmix, os; assert 'torch' in sys.modules; "
            "print(os.environ['OMP_WAIT_POLICY'])")
    out = subprocess.run([sys.executable, "-c", code], env=env, capture_output=True, text=True, check=True)
    assert out.stdout.strip() == (user or "PASSIVE")
