"""Where and with what a run was made: device, software versions, moekit's commit and the date, so
that a recorded result says what it was measured on."""

from __future__ import annotations

import datetime
import hashlib
import importlib.metadata
import platform
import subprocess
from pathlib import Path

import torch

import moekit


def describe_environment(device: torch.device | None) -> dict:
    info = {
        "date": datetime.datetime.now(datetime.timezone.utc).isoformat(timespec="seconds"),
        "python": platform.python_version(),
        "moekit": moekit.__version__,
        "moekit_commit": git_commit(),
        "moekit_source": source_digest(),
        "torch": torch.__version__,
        "triton": _version("triton"),
        "cuda": torch.version.cuda,
    }
    if device is not None and device.type == "cuda":
        props = torch.cuda.get_device_properties(device)
        info.update(device=props.name, compute_capability=f"{props.major}.{props.minor}",
                    sm_count=props.multi_processor_count, memory_gib=round(props.total_memory / 2**30, 1))
    else:
        info.update(device="cpu")
    return info


def git_commit() -> str | None:
    """moekit's commit, with "+dirty" when the tree has changes; None outside a git checkout."""
    root = Path(moekit.__file__).resolve().parent.parent
    try:
        if Path(_git(root, "rev-parse", "--show-toplevel")).resolve() != root:
            return None  # an installed copy inside some other repository
        head = _git(root, "rev-parse", "HEAD")
        dirty = _git(root, "status", "--porcelain", "--untracked-files=no")
    except (OSError, subprocess.SubprocessError):
        return None
    return head + ("+dirty" if dirty else "")


def source_digest(package: Path | None = None) -> str:
    """The first 12 hex digits of a SHA-256 over the package's sources and tile tables (relative
    paths and contents, in path order). Unlike the commit it names what actually ran when the git
    metadata does not match the files: a copy of a working tree (the GPU machines get one, whose
    git reports the session's base commit "+dirty") or an installed wheel."""
    package = package or Path(moekit.__file__).resolve().parent
    digest = hashlib.sha256()
    for path in sorted(p for p in package.rglob("*") if p.suffix in (".py", ".json") and p.is_file()):
        digest.update(path.relative_to(package).as_posix().encode() + b"\0" + path.read_bytes() + b"\0")
    return digest.hexdigest()[:12]


def _git(root: Path, *args: str) -> str:
    result = subprocess.run(["git", "-C", str(root), *args], capture_output=True, text=True, timeout=10, check=True)
    return result.stdout.strip()


def _version(package: str) -> str | None:
    try:
        return importlib.metadata.version(package)  # without importing it
    except importlib.metadata.PackageNotFoundError:
        return None
