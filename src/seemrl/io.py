"""Atomic file output, checksums and Markdown tables.

Every finished-looking file the pipeline writes goes through `atomic_path`: the writer fills a
temporary sibling and it is renamed into place only when the writer returned without error, so
a crash or kill never leaves a half-written file under the final name.
"""
from __future__ import annotations

import contextlib
import hashlib
import json
import math
import numbers
import os
import shutil
import tempfile
from pathlib import Path
from typing import Any, Iterator


@contextlib.contextmanager
def atomic_path(path: str | os.PathLike, *, is_dir: bool = False) -> Iterator[Path]:
    """Yield a temporary path next to `path`; rename it to `path` if the block succeeds.

    The temporary lives in the same directory so the final `os.replace` is atomic on POSIX.
    On error the temporary is removed and `path` is left as it was.
    """
    final = Path(path)
    final.parent.mkdir(parents=True, exist_ok=True)
    prefix = f".{final.name}.tmp-"
    if is_dir:
        tmp = Path(tempfile.mkdtemp(prefix=prefix, dir=final.parent))
    else:
        fd, name = tempfile.mkstemp(prefix=prefix, dir=final.parent)
        os.close(fd)
        tmp = Path(name)
    try:
        yield tmp
        # mkstemp/mkdtemp create private (0600/0700) entries; give the result normal permissions
        umask = os.umask(0)
        os.umask(umask)
        os.chmod(tmp, (0o777 if is_dir else 0o666) & ~umask)
        if is_dir and final.exists():
            shutil.rmtree(final)
        os.replace(tmp, final)
    except BaseException:
        if tmp.is_dir():
            shutil.rmtree(tmp, ignore_errors=True)
        else:
            tmp.unlink(missing_ok=True)
        raise


def write_text_atomic(path: str | os.PathLike, text: str) -> None:
    with atomic_path(path) as tmp:
        tmp.write_text(text)


def write_json_atomic(path: str | os.PathLike, obj: Any) -> None:
    write_text_atomic(path, json.dumps(obj, indent=2, sort_keys=True, default=_json_default) + "\n")


def _json_default(obj: Any) -> Any:
    # numpy scalars and arrays, Paths: the only non-JSON types our metadata carries
    if hasattr(obj, "tolist"):
        return obj.tolist()
    if isinstance(obj, Path):
        return str(obj)
    raise TypeError(f"not JSON serialisable: {type(obj).__name__}")


def sha256_file(path: str | os.PathLike, chunk: int = 1 << 20) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as f:
        while block := f.read(chunk):
            h.update(block)
    return h.hexdigest()


# ------------------------------------------------------------------ Markdown tables
def format_value(value, fmt: str = "{:.4g}") -> str:
    """A table cell: floats (numpy too) by `fmt`, NaN as "nan", anything else as str."""
    if isinstance(value, numbers.Real) and not isinstance(value, numbers.Integral):  # numpy floats too
        return "nan" if math.isnan(value) else fmt.format(value)
    return str(value)


def to_markdown(df, fmt: str = "{:.4g}") -> str:
    """A GitHub-flavoured Markdown table of a pandas DataFrame (numbers right-aligned, "|" escaped)."""
    import pandas as pd

    cells = [[format_value(v, fmt).replace("|", "\\|") for v in row] for row in df.itertuples(index=False)]
    header = [str(c) for c in df.columns]
    numeric = [pd.api.types.is_numeric_dtype(t) and not pd.api.types.is_bool_dtype(t) for t in df.dtypes]
    widths = [max([len(h), 3, *(len(r[j]) for r in cells)]) for j, h in enumerate(header)]
    pad = lambda s, j: s.rjust(widths[j]) if numeric[j] else s.ljust(widths[j])
    lines = ["| " + " | ".join(pad(h, j) for j, h in enumerate(header)) + " |",
             "|" + "|".join(("-" * (w + 1) + ":") if numeric[j] else "-" * (w + 2)
                            for j, w in enumerate(widths)) + "|"]
    lines += ["| " + " | ".join(pad(c, j) for j, c in enumerate(r)) + " |" for r in cells]
    return "\n".join(lines) + "\n"
