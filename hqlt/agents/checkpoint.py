"""Checkpoints: written atomically, read with `torch.load(weights_only=True)`.

A checkpoint holds the model, the optimiser, the config (plain dict), the step counters and every
RNG state the run draws from (python, numpy, torch CPU/CUDA, the minibatch generator), all as
tensors and primitives so that no pickled code is ever loaded. A path that is not such a checkpoint
fails with a one-line `CheckpointError` (a ConfigError, so the command line reports it as one).
"""

from __future__ import annotations

import os
import random
from pathlib import Path
from typing import Any

import numpy as np
import torch

from hqlt.configs.schema import ConfigError

# 2: PopArt value statistics in the model, the learning-rate schedule and the collector's carry.
# 3: the policy's reward-input scale, PopArt's statistics under value_layer.moments.
# 4: hqlt's mixing gate offset by memory.options.gate_bias (a model of format 3 was trained without it).
FORMAT_VERSION = 4
# What the trainer writes into every checkpoint.
CHECKPOINT_KEYS = ("model", "optimizer", "config", "counters", "rng", "lr_schedule", "collector")
EXPECTED = "a checkpoint file that training wrote, runs/<env>/<core>/<run>/checkpoints/step<N>.pt"


class CheckpointError(ConfigError):
    """A path that holds no readable checkpoint; the message says what it is and what to give instead."""


def capture_rng(generator: torch.Generator) -> dict[str, Any]:
    """The state of every RNG a training run uses, as tensors and primitives."""
    kind, keys, position, has_gauss, cached_gaussian = np.random.get_state()
    return {
        "python": random.getstate(),
        "numpy": {
            "kind": kind,
            "keys": torch.from_numpy(keys.astype(np.int64)),
            "position": int(position),
            "has_gauss": int(has_gauss),
            "cached_gaussian": float(cached_gaussian),
        },
        "torch": torch.get_rng_state(),
        "cuda": torch.cuda.get_rng_state_all() if torch.cuda.is_available() else [],
        "generator": generator.get_state(),
    }


def restore_rng(state: dict[str, Any], generator: torch.Generator) -> None:
    """Restores what `capture_rng` returned."""
    version, internal, gauss = state["python"]
    random.setstate((version, tuple(internal), gauss))
    numpy_state = state["numpy"]
    np.random.set_state(
        (
            numpy_state["kind"],
            numpy_state["keys"].numpy().astype(np.uint32),
            numpy_state["position"],
            numpy_state["has_gauss"],
            numpy_state["cached_gaussian"],
        )
    )
    torch.set_rng_state(state["torch"])
    if state["cuda"] and torch.cuda.is_available():
        torch.cuda.set_rng_state_all(state["cuda"])
    generator.set_state(state["generator"])


def save_checkpoint(path: Path, checkpoint: dict[str, Any]) -> None:
    """Writes `checkpoint` to `path` atomically: a temp file beside it, then os.replace."""
    path.parent.mkdir(parents=True, exist_ok=True)
    temporary = path.with_name(path.name + ".tmp")
    torch.save({"format_version": FORMAT_VERSION, **checkpoint}, temporary)
    os.replace(temporary, path)


def load_checkpoint(path: str | Path) -> dict[str, Any]:
    """Reads a checkpoint on the CPU, refusing anything but tensors and primitives.

    Raises CheckpointError for a missing path, a directory (naming the checkpoints inside it) and a
    file that is not a checkpoint of this format.
    """
    path = Path(path)
    if path.is_dir():
        raise CheckpointError(_directory_message(path))
    if not path.exists():
        raise CheckpointError(f"no checkpoint at {path}: no such file; give {EXPECTED}")
    try:
        checkpoint = torch.load(path, map_location="cpu", weights_only=True)
    except OSError:  # unreadable (permissions, I/O): the OS's own message says why
        raise
    except Exception as error:  # foreign bytes fail as UnpicklingError, EOFError, RuntimeError (zip), KeyError, ...
        raise CheckpointError(
            f"{path} is not a checkpoint: torch.load cannot read it ({type(error).__name__}); give {EXPECTED}"
        ) from error
    if not isinstance(checkpoint, dict) or "format_version" not in checkpoint:
        raise CheckpointError(f"{path} is a torch file but not an hqlt checkpoint; give {EXPECTED}")
    if checkpoint["format_version"] != FORMAT_VERSION:
        raise CheckpointError(
            f"{path} has checkpoint format {checkpoint['format_version']}; this hqlt reads format {FORMAT_VERSION}"
        )
    missing = [key for key in CHECKPOINT_KEYS if key not in checkpoint]
    if missing:
        raise CheckpointError(
            f"{path} is not a training checkpoint: it lacks {', '.join(missing)} "
            f"(a training checkpoint holds {', '.join(CHECKPOINT_KEYS)})"
        )
    return checkpoint


def _directory_message(path: Path) -> str:
    """What to say for a directory given as a checkpoint: where the checkpoints under it are, and the
    newest. Looks as deep as runs/<env>/<core>/<run>/checkpoints/ (no deeper, so that a large tree is
    not walked)."""
    found = [file for depth in range(4) for file in path.glob("*/" * depth + "checkpoints/step*.pt")]
    found += list(path.glob("step*.pt"))
    if not found:
        return (
            f"{path} is a directory with no checkpoints (step*.pt in it or in checkpoints/ folders up to 3 levels "
            f"below); give {EXPECTED}"
        )
    newest = max(found, key=lambda file: file.stat().st_mtime)
    folders = sorted({file.parent for file in found})
    where = f"as {folders[0]}/step*.pt" if len(folders) == 1 else f"in {len(folders)} checkpoints/ folders"
    return (
        f"{path} is a directory, not a checkpoint file; it holds {len(found)} checkpoint(s) {where}; "
        f"the newest is {newest}"
    )
