"""A checkpoint directory's safetensors shards as one read-only mapping, name -> tensor, whose
tensors are read from disk only when asked for (so ``moekit.load`` holds one MoE block at a time).

Shards are found as transformers saves them: ``model.safetensors.index.json``'s ``weight_map`` if
present, else ``model.safetensors``, else every ``*.safetensors`` file in the directory.
"""

from __future__ import annotations

import json
from collections.abc import Iterator, Mapping
from pathlib import Path

import torch

INDEX_NAME = "model.safetensors.index.json"
SINGLE_NAME = "model.safetensors"


class CheckpointFiles(Mapping):
    """``files[name]`` reads one tensor from its shard; ``name in files`` and iteration read nothing."""

    def __init__(self, path: str | Path):
        self.path = Path(path)
        if not self.path.is_dir():
            raise ValueError(f"checkpoint path {str(self.path)!r} is not a directory")
        self._shard_of = _shard_map(self.path)
        self._open: dict[str, object] = {}

    def __getitem__(self, name: str) -> torch.Tensor:
        shard = self._shard_of[name]  # KeyError for an unknown name, as a Mapping should
        return self._handle(shard).get_tensor(name)

    def read_rows(self, name: str, rows) -> torch.Tensor:
        """Rows ``rows`` of dim 0 of tensor ``name``, in that order, reading only those (runs of
        consecutive rows in one read each): an expert-parallel rank's experts of a fused tensor."""
        part = self._handle(self._shard_of[name]).get_slice(name)
        runs, rows = [], list(rows)
        for r in rows:
            if runs and runs[-1][1] == r:
                runs[-1][1] = r + 1
            else:
                runs.append([r, r + 1])
        return torch.cat([part[a:b] for a, b in runs]) if runs else self[name][:0]

    def shape_of(self, name: str) -> tuple[int, ...]:
        """The tensor's shape, from the shard's header (nothing is read)."""
        return tuple(self._handle(self._shard_of[name]).get_slice(name).get_shape())

    def __iter__(self) -> Iterator[str]:
        return iter(self._shard_of)

    def __len__(self) -> int:
        return len(self._shard_of)

    def __contains__(self, name) -> bool:
        return name in self._shard_of

    def _handle(self, shard: str):
        if shard not in self._open:
            from safetensors import safe_open

            self._open[shard] = safe_open(str(self.path / shard), framework="pt", device="cpu")
        return self._open[shard]


def _shard_map(path: Path) -> dict[str, str]:
    """tensor name -> shard file name."""
    index = path / INDEX_NAME
    if index.is_file():
        weight_map = json.loads(index.read_text()).get("weight_map")
        if not isinstance(weight_map, dict):
            raise ValueError(f"{str(index)!r} has no 'weight_map' object")
        missing = sorted({s for s in weight_map.values() if not (path / s).is_file()})
        if missing:
            raise ValueError(f"{str(index)!r} names shard(s) not in the directory: {missing}")
        return dict(weight_map)
    shards = [path / SINGLE_NAME] if (path / SINGLE_NAME).is_file() else sorted(path.glob("*.safetensors"))
    if not shards:
        raise ValueError(f"no safetensors files in {str(path)!r} "
                         f"(expected {INDEX_NAME}, {SINGLE_NAME} or *.safetensors)")
    from safetensors import safe_open

    out: dict[str, str] = {}
    for shard in shards:
        with safe_open(str(shard), framework="pt", device="cpu") as f:
            out.update(dict.fromkeys(f.keys(), shard.name))
    return out


__all__ = ["CheckpointFiles"]
