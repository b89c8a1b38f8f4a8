"""Which torch device a job runs on."""
from __future__ import annotations


def resolve_device(name: str | None) -> str:
    """'auto' (or None/'') -> 'cuda' when torch sees a GPU, else 'cpu'; 'cuda' without a GPU is an
    error that says so, rather than a failure deep inside the first kernel."""
    import torch

    if name in (None, "", "auto"):
        return "cuda" if torch.cuda.is_available() else "cpu"
    if str(name).startswith("cuda") and not torch.cuda.is_available():
        raise ValueError(f"device {name!r} requested but torch sees no GPU; use 'auto' or 'cpu'")
    return str(name)
