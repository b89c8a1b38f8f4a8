"""Keep caches inside the project when pytest is run directly (make sets these too)."""
import os
from pathlib import Path

_CACHE = Path(__file__).resolve().parents[1] / ".cache"
_CACHE.mkdir(exist_ok=True)  # pytest's --basetemp (.cache/pytest) needs its parent
os.environ.setdefault("XDG_CACHE_HOME", str(_CACHE))
os.environ.setdefault("MPLCONFIGDIR", str(_CACHE / "matplotlib"))
