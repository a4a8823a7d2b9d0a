"""Training across processes, GPUs and nodes: torch.distributed under torchrun, in one place.

    torchrun --standalone --nproc_per_node=K train_rl.py ...

torchrun starts the processes (ranks) and sets WORLD_SIZE, RANK, LOCAL_RANK and the rendezvous in
their environment; `init` joins them into one process group (NCCL on CUDA, gloo on CPU). In a single
process (WORLD_SIZE unset or 1) every function here returns its input and runs no collective.

Every rank must call the collectives in the same order: the trainer and the PPO update call them at
the same points of every update, on every rank.
"""

from __future__ import annotations

import datetime
import hashlib
import os
from collections.abc import Iterable
from typing import TypeVar

import torch
import torch.distributed as dist
from torch import Tensor, nn

# How long a rank waits in a collective for the others (one may be compiling kernels or writing a
# large checkpoint meanwhile) before it fails instead of hanging.
TIMEOUT = datetime.timedelta(minutes=30)

T = TypeVar("T")


def launched() -> bool:
    """Whether torchrun started this process as one of several (WORLD_SIZE > 1)."""
    return int(os.environ.get("WORLD_SIZE", "1")) > 1


def forwards_signals() -> bool:
    """Whether torchrun's agent started this process: it passes each SIGINT or SIGTERM it gets on to
    its workers, which may have had it already (e.g. from SLURM), and kills them 30 s later."""
    return "TORCHELASTIC_RUN_ID" in os.environ


def local_rank() -> int:
    """This process's index on its node (torchrun's LOCAL_RANK; 0 in a single process)."""
    return int(os.environ.get("LOCAL_RANK", "0"))


def init(device: torch.device) -> None:
    """Joins torchrun's process group, through NCCL for a CUDA `device` and gloo otherwise; the
    process's later calls are no-ops (a sweep trains several runs in one process)."""
    if launched() and not dist.is_initialized():
        dist.init_process_group("nccl" if device.type == "cuda" else "gloo", timeout=TIMEOUT)


def shutdown() -> None:
    """Leaves the process group, if `init` joined one (before a clean exit)."""
    if dist.is_initialized():
        dist.destroy_process_group()


def world_size() -> int:
    return dist.get_world_size() if dist.is_initialized() else 1


def rank() -> int:
    return dist.get_rank() if dist.is_initialized() else 0


def is_main() -> bool:
    """Rank 0: the one that writes the run directory."""
    return rank() == 0


def all_reduce_mean(tensor: Tensor) -> Tensor:
    """The mean over ranks of `tensor` (the same shape on every rank) as a new tensor; `tensor` itself
    in a single process."""
    if world_size() == 1:
        return tensor
    total = tensor.clone()
    dist.all_reduce(total)
    return total / world_size()


def mean_std(x: Tensor) -> tuple[Tensor, Tensor]:
    """Mean and unbiased standard deviation of the elements of every rank's `x` together (the same
    number on every rank), in one all-reduce; `x.mean(), x.std()` in a single process."""
    if world_size() == 1:
        return x.mean(), x.std()
    local_mean = x.mean()
    # Each rank's spread about its own mean, so that a large mean does not cancel in E[x^2] - E[x]^2.
    moments = torch.stack([local_mean, (x - local_mean).square().mean(), local_mean.square()])
    mean, spread, mean_square = all_reduce_mean(moments)
    count = x.numel() * world_size()
    variance = (spread + mean_square - mean.square()).clamp(min=0) * count / (count - 1)
    return mean, variance.sqrt()


def average_gradients(parameters: Iterable[nn.Parameter], loss: Tensor) -> Tensor:
    """Averages the `.grad` of `parameters` over ranks in place and returns the mean of the scalar
    `loss` over ranks, together in one all-reduce of one flat buffer (so that a non-finite loss on one
    rank is seen by all); returns `loss` in a single process."""
    if world_size() == 1:
        return loss
    parameters = list(parameters)
    for parameter in parameters:  # a parameter the loss did not reach on one rank may on another
        if parameter.grad is None:
            parameter.grad = torch.zeros_like(parameter)
    flat = torch.cat([*(parameter.grad.flatten() for parameter in parameters), loss.detach().reshape(1)])
    dist.all_reduce(flat)
    flat /= world_size()
    for parameter, grad in zip(parameters, flat[:-1].split([parameter.numel() for parameter in parameters])):
        parameter.grad.copy_(grad.view_as(parameter))
    return flat[-1]


def broadcast_module(module: nn.Module) -> None:
    """Copies rank 0's parameters and buffers into every rank's `module`, in place."""
    if world_size() > 1:
        for tensor in module.state_dict().values():
            dist.broadcast(tensor, src=0)


def broadcast_object(value: T) -> T:
    """Rank 0's `value` (picklable), on every rank."""
    if world_size() == 1:
        return value
    box = [value]
    dist.broadcast_object_list(box, src=0)
    return box[0]


def all_gather_objects(value: T) -> list[T]:
    """Every rank's `value` (picklable), in rank order; `[value]` in a single process."""
    if world_size() == 1:
        return [value]
    values: list[T] = [value] * world_size()
    dist.all_gather_object(values, value)
    return values


def modules_agree(module: nn.Module) -> bool:
    """Whether every rank's `module` holds bit-identical parameters and buffers (a digest of their
    bytes compared across ranks; True in a single process)."""
    digest = hashlib.sha256()
    for tensor in module.state_dict().values():
        digest.update(tensor.detach().cpu().reshape(-1).view(torch.uint8).numpy().tobytes())
    return len(set(all_gather_objects(digest.hexdigest()))) == 1
