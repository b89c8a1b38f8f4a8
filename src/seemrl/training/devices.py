"""Which torch device a job runs on."""
from __future__ import annotations

import contextlib
import os
import threading

# "1": Inductor's max-autotune (GEMM templates with fused epilogues, picked by timing): a speed
# trial for benchmarks only, not a setting of runs (the timed picks can change the bits)
INDUCTOR_MAX_AUTOTUNE_ENV = "SEEMRL_INDUCTOR_MAX_AUTOTUNE"


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


_PRECISION_LOCK = threading.Lock()
_active: dict[str, object] = {"precision": None, "users": 0, "before": None}


@contextlib.contextmanager
def matmul_precision(precision: str):
    """Run the block with CUDA float32 matmuls in `precision`, then restore the previous setting.

    The switch is process-wide, so it is scoped rather than left set, and counted: blocks that
    overlap (runs in threads of one process) share it and the last one out restores it. Blocks
    asking for different precisions at the same time are an error, not a silent mix."""
    import torch

    if precision not in MATMUL_PRECISIONS:
        raise ValueError(f"matmul precision must be one of {list(MATMUL_PRECISIONS)}, got {precision!r}")
    backend = torch.backends.cuda.matmul
    # torch >= 2.9 has the per-backend switch. Once it is written, torch's legacy getters raise
    # ("mix of the legacy and new APIs"), and Inductor's max-autotune in torch 2.11 reads one (its
    # autotune cache key): under that trial the legacy switch is written instead, which keeps
    # both readings consistent.
    modern = hasattr(backend, "fp32_precision") and os.environ.get(INDUCTOR_MAX_AUTOTUNE_ENV) != "1"

    def read():
        return backend.fp32_precision if modern else backend.allow_tf32

    def write(value):
        if modern:
            backend.fp32_precision = value
        else:
            backend.allow_tf32 = value

    with _PRECISION_LOCK:
        if _active["users"] and _active["precision"] != precision:
            raise RuntimeError(f"matmul precision {precision!r} requested while another run in this process "
                               f"computes in {_active['precision']!r}: runs sharing a process must share it")
        if not _active["users"]:
            _active["before"], _active["precision"] = read(), precision
            write(precision if modern else precision == "tf32")
        _active["users"] += 1
    try:
        yield
    finally:
        with _PRECISION_LOCK:
            _active["users"] -= 1
            if not _active["users"]:
                write(_active["before"])
                _active["precision"] = None
