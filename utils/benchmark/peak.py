"""The measured GEMM peak of this machine at a thread count: fp32, bf16 and int8.

A large square matrix product is the best a CPU's math libraries get out of its vector units,
so it is the ceiling a convolutional detector can approach (GFLOP/s of a route = its GFLOPs /
latency; :func:`fraction` compares the two). Each data type runs through the library a
detector of that type would use, and every result is checked on a corner of the product:

* ``fp32`` — ``torch.mm`` (oneDNN / MKL sgemm);
* ``bf16`` — ``torch.mm`` on bfloat16 tensors (oneDNN, AVX512_BF16 ``vdpbf16ps``); measured only
  where the CPU has native bf16 (elsewhere PyTorch converts to fp32 and the number would not be
  a bf16 peak);
* ``int8`` — every backend that is available, each labelled with what it computes:
  ``torch._int_mm`` (s8 x s8 -> s32, oneDNN), ``onnxruntime MatMulInteger`` (u8 x s8 -> s32, MLAS,
  the kernels of ONNX Runtime's QDQ convolutions) and ``openvino`` (u8 activations x s8 weights
  in an INT8 FullyConnected, the kernels of an NNCF-quantized IR; its time includes quantizing
  the fp32 input). The peak is the fastest.

On a CPU without VNNI, u8 x s8 products go through ``vpmaddubsw``, whose int16 pair sums
saturate with full-range operands (:func:`utils.cpu.int8_saturates`): ONNX Runtime and OpenVINO
then return a wrong product. There both are measured with 7-bit weights (|w| <= 64), the
operands this project's INT8 exports use, which every kernel computes exactly at the same
speed; ``computes`` says so. A product that is still wrong is reported, never timed.

Ops count 2 per multiply-add (GOP/s for int8). Times are wall clock; ``best`` is the fastest
repetition (the peak), ``median`` the typical one.
"""
from __future__ import annotations

import contextlib
import statistics
import time
from collections.abc import Callable, Iterator
from dataclasses import asdict, dataclass, field

import numpy as np
import torch

from utils.cpu import cpu_info, int8_saturates, theoretical_peak

INT8_BACKENDS = ("torch._int_mm", "onnxruntime", "openvino")


@dataclass
class GemmResult:
    """One GEMM measurement (``gflops_*``: GFLOP/s for float types, GOP/s for int8)."""

    dtype: str
    backend: str
    computes: str
    n: int
    threads: int
    gflops_best: float | None = None
    gflops_median: float | None = None
    times_ms: list[float] = field(default_factory=list)
    status: str = "ok"

    def as_dict(self) -> dict:
        return asdict(self)


@contextlib.contextmanager
def torch_threads(n: int | None) -> Iterator[None]:
    """Run with ``n`` torch intra-op threads, then restore the previous count."""
    old = torch.get_num_threads()
    if n:
        torch.set_num_threads(int(n))
    try:
        yield
    finally:
        torch.set_num_threads(old)


def _timed(fn: Callable[[], object], reps: int, warmup: int) -> list[float]:
    for _ in range(warmup):
        fn()
    times = []
    for _ in range(reps):
        t0 = time.perf_counter()
        fn()
        times.append(time.perf_counter() - t0)
    return times


def _result(dtype: str, backend: str, computes: str, n: int, threads: int, times: list[float]) -> GemmResult:
    ops = 2.0 * n ** 3
    return GemmResult(dtype, backend, computes, n, threads, ops / min(times) / 1e9,
                      ops / statistics.median(times) / 1e9, [round(t * 1e3, 3) for t in times])


class WrongProduct(RuntimeError):
    """A backend computed a GEMM that differs from the exact product: its speed is not a peak."""


def _check(got: np.ndarray, want: np.ndarray, what: str, rtol: float) -> None:
    """``got`` (a corner of the product) must equal the float64 / exact integer reference."""
    if not np.allclose(got.astype(np.float64), want, rtol=rtol, atol=rtol * float(np.abs(want).max() or 1)):
        raise WrongProduct(f"{what} gave a wrong product (max error {np.abs(got - want).max():.3g})")


# ---- float ----------------------------------------------------------------------------------------
def gemm_float(dtype: str = "fp32", n: int = 2048, threads: int | None = None, reps: int = 5,
               warmup: int = 2, seed: int = 0) -> GemmResult:
    """``torch.mm`` of two (n, n) fp32 or bf16 matrices."""
    torch_dtype = {"fp32": torch.float32, "bf16": torch.bfloat16}[dtype]
    threads = threads or torch.get_num_threads()
    computes = "fp32 x fp32 -> fp32" if dtype == "fp32" else "bf16 x bf16 -> bf16 (fp32 accumulation)"
    if dtype == "bf16" and not cpu_info().bf16:
        return GemmResult(dtype, "torch.mm", computes, n, threads,
                          status="skipped: the CPU has no native bf16 (no avx512_bf16 / amx_bf16 flag)")
    g = torch.Generator().manual_seed(seed)
    a = torch.rand(n, n, generator=g).to(torch_dtype)
    b = torch.rand(n, n, generator=g).to(torch_dtype)
    with torch_threads(threads), torch.inference_mode():
        k = min(n, 64)
        want = a[:k].double() @ b[:, :k].double()
        _check(torch.mm(a, b)[:k, :k].double().numpy(), want.numpy(), f"torch.mm {dtype}",
               1e-4 if dtype == "fp32" else 2e-2)
        times = _timed(lambda: torch.mm(a, b), reps, warmup)
    return _result(dtype, "torch.mm", computes, n, threads, times)


# ---- int8 -----------------------------------------------------------------------------------------
SAFE_WEIGHT_BITS = 7  # |w| <= 64: u8 x s8 pair sums fit in int16 (no saturation without VNNI)


def int8_weight_bits() -> int:
    """Bits of the s8 weights a u8 x s8 kernel computes exactly on this CPU: 8 with VNNI, else 7."""
    return SAFE_WEIGHT_BITS if int8_saturates(cpu_info().flags) else 8


def _int8_operands(n: int, seed: int, unsigned_a: bool, weight_bits: int = 8) -> tuple[np.ndarray, np.ndarray]:
    """(a, b): a full-range u8 (or s8) matrix and s8 weights of ``weight_bits`` bits."""
    rng = np.random.default_rng(seed)
    a = rng.integers(0, 256, (n, n), dtype=np.uint8) if unsigned_a else rng.integers(-128, 128, (n, n), dtype=np.int8)
    w = 2 ** (weight_bits - 1)
    return a, rng.integers(-w, w, (n, n), dtype=np.int8)


def _u8s8_label(what: str, weight_bits: int) -> str:
    if weight_bits == 8:
        return f"u8 x s8 -> {what}"
    return (f"u8 x s{weight_bits} -> {what}; {weight_bits}-bit weights: no VNNI, full-range u8 x s8 "
            "saturates in vpmaddubsw")


def _exact(a: np.ndarray, b: np.ndarray, k: int) -> np.ndarray:
    return a[:k].astype(np.int64) @ b[:, :k].astype(np.int64)


def gemm_int8_torch(n: int, threads: int, reps: int, warmup: int, seed: int = 0) -> GemmResult:
    a, b = _int8_operands(n, seed, unsigned_a=False)
    ta, tb = torch.from_numpy(a), torch.from_numpy(b)
    with torch_threads(threads), torch.inference_mode():
        k = min(n, 64)
        _check(torch._int_mm(ta, tb)[:k, :k].numpy(), _exact(a, b, k), "torch._int_mm", 0)
        times = _timed(lambda: torch._int_mm(ta, tb), reps, warmup)
    return _result("int8", "torch._int_mm", "s8 x s8 -> s32 (oneDNN)", n, threads, times)


def gemm_int8_onnxruntime(n: int, threads: int, reps: int, warmup: int, seed: int = 0,
                          weight_bits: int | None = None) -> GemmResult:
    """ONNX ``MatMulInteger`` with constant s8 weights (pre-packed by MLAS, as QDQ convs are).

    ``weight_bits`` defaults to what this CPU computes exactly (:func:`int8_weight_bits`)."""
    import onnx
    import onnxruntime as ort
    from onnx import TensorProto, helper

    bits = weight_bits or int8_weight_bits()
    a, b = _int8_operands(n, seed, unsigned_a=True, weight_bits=bits)
    graph = helper.make_graph([helper.make_node("MatMulInteger", ["A", "B"], ["Y"])], "gemm",
                              [helper.make_tensor_value_info("A", TensorProto.UINT8, [n, n])],
                              [helper.make_tensor_value_info("Y", TensorProto.INT32, [n, n])],
                              initializer=[onnx.numpy_helper.from_array(b, "B")])
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])
    options = ort.SessionOptions()
    options.intra_op_num_threads = threads
    session = ort.InferenceSession(model.SerializeToString(), options, providers=["CPUExecutionProvider"])
    feed = {"A": a}
    k = min(n, 64)
    _check(session.run(None, feed)[0][:k, :k], _exact(a, b, k), "onnxruntime MatMulInteger", 0)
    times = _timed(lambda: session.run(None, feed), reps, warmup)
    return _result("int8", "onnxruntime", _u8s8_label("s32 (MatMulInteger, MLAS)", bits), n, threads, times)


def gemm_int8_openvino(n: int, threads: int, reps: int, warmup: int, seed: int = 0,
                       weight_bits: int | None = None) -> GemmResult:
    """fp32 input -> FakeQuantize (u8) x s8 weights: OpenVINO runs an INT8 FullyConnected.

    ``weight_bits`` defaults to what this CPU computes exactly (:func:`int8_weight_bits`)."""
    import openvino as ov
    import openvino.opset13 as ops

    from utils.runtime.openvino_model import compile_cpu

    bits = weight_bits or int8_weight_bits()
    a, b = _int8_operands(n, seed, unsigned_a=True, weight_bits=bits)
    x = ops.parameter([n, n], np.float32, name="x")
    xq = ops.fake_quantize(x, 0.0, 255.0, 0.0, 255.0, 256)  # integers 0..255 pass through exactly
    w = ops.multiply(ops.convert(ops.constant(b), "f32"), ops.constant(np.float32(0.5)))  # s8 weights x scale
    model = ov.Model([ops.matmul(xq, w, False, False)], [x], "gemm")
    compiled = compile_cpu(model, {"INFERENCE_NUM_THREADS": threads, "INFERENCE_PRECISION_HINT": "f32",
                                   "PERFORMANCE_HINT": "LATENCY"})
    types = {op.get_rt_info()["layerType"].astype(str): op.get_rt_info()["runtimePrecision"].astype(str)
             for op in compiled.get_runtime_model().get_ops() if "layerType" in op.get_rt_info()}
    if types.get("FullyConnected") not in ("u8", "i8"):
        raise RuntimeError(f"OpenVINO did not run the product in int8 (FullyConnected {types.get('FullyConnected')})")
    request = compiled.create_infer_request()
    xf = a.astype(np.float32)
    k = min(n, 64)
    out = request.infer({0: xf})[compiled.output(0)]
    _check(out[:k, :k], 0.5 * _exact(a, b, k).astype(np.float64), "OpenVINO int8 MatMul", 1e-6)
    times = _timed(lambda: request.infer({0: xf}), reps, warmup)
    return _result("int8", "openvino", _u8s8_label("fp32 (INT8 FullyConnected, input quantized per call)", bits),
                   n, threads, times)


_INT8 = {"torch._int_mm": gemm_int8_torch, "onnxruntime": gemm_int8_onnxruntime, "openvino": gemm_int8_openvino}


def gemm_int8(backend: str, n: int = 2048, threads: int | None = None, reps: int = 5, warmup: int = 2) -> GemmResult:
    if backend not in _INT8:
        raise ValueError(f"int8 backend must be one of {INT8_BACKENDS}, not {backend!r}")
    threads = threads or torch.get_num_threads()
    try:
        return _INT8[backend](n, threads, reps, warmup)
    except WrongProduct as e:  # runs, but not correctly on this CPU: reported, not timed
        return GemmResult("int8", backend, "", n, threads, status=f"wrong product: {e}")
    except (ImportError, RuntimeError, NotImplementedError) as e:  # not available here: say why
        return GemmResult("int8", backend, "", n, threads, status=f"unavailable: {type(e).__name__}: {e}")


# ---- all ------------------------------------------------------------------------------------------
def measured_peaks(threads: int | None = None, n: int = 2048, reps: int = 5, warmup: int = 2,
                   int8_backends: tuple[str, ...] = INT8_BACKENDS) -> dict:
    """Measured and theoretical peaks per data type at ``threads`` (default: torch's count).

    Returns ``{dtype: {"measured": GFLOP/s or None, "backend": fastest, "results": [...],
    "theoretical": {...}, "fraction_of_theoretical": ...}}`` plus ``cpu`` and ``threads``.
    """
    threads = threads or torch.get_num_threads()
    results = {"fp32": [gemm_float("fp32", n, threads, reps, warmup)],
               "bf16": [gemm_float("bf16", n, threads, reps, warmup)],
               "int8": [gemm_int8(b, n, threads, reps, warmup) for b in int8_backends]}
    info = cpu_info()
    out: dict = {"cpu": {k: v for k, v in info.as_dict().items() if k != "flags"}, "threads": threads, "n": n}
    for dtype, rs in results.items():
        ok = [r for r in rs if r.status == "ok"]
        best = max(ok, key=lambda r: r.gflops_best) if ok else None
        theory = theoretical_peak(dtype, info, cores=min(threads, info.cores))
        measured = best.gflops_best if best else None
        out[dtype] = {"measured": measured, "backend": best.backend if best else None,
                      "results": [r.as_dict() for r in rs], "theoretical": theory,
                      "fraction_of_theoretical": fraction(measured, theory["gflops"])}
    return out


def fraction(achieved: float | None, peak: float | None) -> float | None:
    """achieved / peak, or None when either is unknown."""
    if achieved is None or not peak:
        return None
    return achieved / peak
