"""Regenerate the pinned environments from the working venv: `.venv/bin/python envs/relock.py`.

requirements-cpu.txt is `pip freeze` of the venv (which must hold torch==X+cpu); the GPU lock is
the same with PyPI's CUDA build of torch; seemrl.yaml is the CPU lock for `--sdm conda`.
"""
import subprocess
import sys
from pathlib import Path

ENVS = Path(__file__).resolve().parent

freeze = subprocess.run([sys.executable, "-m", "pip", "freeze", "--exclude-editable"],
                        capture_output=True, text=True, check=True).stdout.splitlines()
pins = sorted((l for l in freeze if "==" in l and not l.startswith("seemrl")), key=str.lower)
torch = [p for p in pins if p.startswith("torch==")]
if len(torch) != 1 or not torch[0].endswith("+cpu"):
    sys.exit(f"relock needs the CPU build of torch in the venv, found {torch}")
gpu_torch = torch[0].removesuffix("+cpu")

(ENVS / "requirements-cpu.txt").write_text(
    "# Pinned CPU environment (envs/relock.py: pip freeze of a working install). Installed by\n"
    "# envs/install.sh, which installs torch+cpu first from a local wheel or PyTorch's CPU index.\n"
    + "\n".join(pins) + "\n")
(ENVS / "requirements-gpu.txt").write_text(
    "# Pinned GPU environment (envs/relock.py): the CPU lock with the CUDA build of torch (PyPI's\n"
    "# Linux wheel, which brings its own pinned nvidia-* runtime packages).\n"
    + "\n".join(gpu_torch if p == torch[0] else p for p in pins) + "\n")
(ENVS / "seemrl.yaml").write_text(
    "# Conda environment for `snakemake --sdm conda`: Python 3.11 and the pinned CPU lock\n"
    "# (envs/relock.py writes it; tests/test_envs.py checks the three locks agree).\n"
    "# GPU users: replace the +cpu torch pin by the plain version and drop the extra index.\n"
    "name: seemrl\nchannels: [conda-forge]\ndependencies:\n  - python=3.11\n  - pip\n  - pip:\n"
    "      - --extra-index-url https://download.pytorch.org/whl/cpu\n"
    + "".join(f"      - {p}\n" for p in pins))
print(f"wrote 3 locks with {len(pins)} pins")
