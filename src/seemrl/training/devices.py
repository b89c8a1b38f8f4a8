"""Which torch device a job runs on."""
from __future__ import annotations

import contextlib


def resolve_device(name: str | None) -> str:
    """'auto' (or None/'') -> 'cuda' when torch sees a GPU, else 'cpu'; 'cuda' without a GPU is an
    error that says so, rather than a failure deep inside the first kernel."""
    import torch

    if name in (None, "", "auto"):
        return "cuda" if torch.cuda.is_available() else "cpu"
    if str(name).startswith("cuda") and not torch.cuda.is_available():
        raise ValueError(f"device {name!r} requested but torch sees no GPU; use 'auto' or 'cpu'")
    return str(name)


# How float32 matmuls run on CUDA. "tf32" uses the tensor cores (10-bit mantissa inputs, float32
# accumulation: what JAX does by default on these GPUs, and several times the fp32 throughput);
# "ieee" is full float32. CPUs always compute in full float32.
MATMUL_PRECISIONS = ("tf32", "ieee")


@contextlib.contextmanager
def matmul_precision(precision: str):
    """Run the block with CUDA float32 matmuls in `precision`, then restore the previous setting
    (a process-wide switch, so it is scoped rather than left set)."""
    import torch

    if precision not in MATMUL_PRECISIONS:
        raise ValueError(f"matmul precision must be one of {list(MATMUL_PRECISIONS)}, got {precision!r}")
    backend = torch.backends.cuda.matmul
    if hasattr(backend, "fp32_precision"):  # torch >= 2.9
        before = backend.fp32_precision
        backend.fp32_precision = precision
        try:
            yield
        finally:
            backend.fp32_precision = before
    else:
        before = backend.allow_tf32
        backend.allow_tf32 = precision == "tf32"
        try:
            yield
        finally:
            backend.allow_tf32 = before
