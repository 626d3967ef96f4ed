"""The process group that ``torchrun`` describes, shared by training, evaluation and batch segmentation.

    with torchrun_group(device) as group:   # creates the group under torchrun, destroys it on exit
        mine = items[group.rank :: group.world_size]
        everyone = group.all_gather_object(mine_results)

Outside torchrun (no ``WORLD_SIZE`` > 1 in the environment) and without an initialised group this is
one process: rank 0 of 1, and nothing is created.
"""

from __future__ import annotations

import contextlib
import os
from collections.abc import Iterator
from dataclasses import dataclass
from typing import Any

import torch

__all__ = ["ProcessGroup", "torchrun_group", "env_int"]


@dataclass
class ProcessGroup:
    """This process's place in the group: ``rank`` of ``world_size``, ``local_rank`` on its machine."""

    rank: int = 0
    world_size: int = 1
    local_rank: int = 0
    object_group: Any = None  # a gloo group for object collectives when the default backend is not gloo

    @property
    def main(self) -> bool:
        """True on rank 0, the rank that writes files and logs."""
        return self.rank == 0

    def all_gather_object(self, obj: Any) -> list[Any]:
        """``obj`` of every rank, in rank order (picklable objects, gathered on the CPU)."""
        if self.world_size == 1:
            return [obj]
        import torch.distributed as dist

        out: list[Any] = [None] * self.world_size
        dist.all_gather_object(out, obj, group=self.object_group)
        return out


def env_int(name: str, default: int) -> int:
    """An integer from the environment (torchrun's RANK, WORLD_SIZE, ...); ``default`` when unset or
    empty, ``ValueError`` naming the variable when it is not an integer."""
    value = os.environ.get(name)
    if value is None or value == "":
        return default
    try:
        return int(value)
    except ValueError:
        raise ValueError(f"environment variable {name}={value!r} is not an integer") from None


@contextlib.contextmanager
def torchrun_group(device: str | torch.device | None = None, *, objects: bool = False
                   ) -> Iterator[ProcessGroup]:
    """Join the process group: an initialised default group is used as it is; under torchrun without
    one, a group is created (NCCL when this process computes on CUDA — ``device`` None with CUDA
    available, or a CUDA device — else gloo) and destroyed on exit. ``objects=True`` also provides a
    gloo group for :meth:`ProcessGroup.all_gather_object` when the default backend is not gloo."""
    import torch.distributed as dist

    local_rank = env_int("LOCAL_RANK", 0)
    if not dist.is_available():
        yield ProcessGroup()
        return
    created = False
    if not dist.is_initialized() and env_int("WORLD_SIZE", 1) > 1:
        on_cuda = torch.cuda.is_available() and (device is None or str(device).startswith("cuda"))
        dist.init_process_group(backend="nccl" if on_cuda else "gloo")
        created = True
    object_group = None
    try:
        if not dist.is_initialized() or dist.get_world_size() == 1:
            yield ProcessGroup(local_rank=local_rank)
            return
        if objects and dist.get_backend() != "gloo":
            object_group = dist.new_group(backend="gloo")
        yield ProcessGroup(dist.get_rank(), dist.get_world_size(), local_rank, object_group)
    finally:
        if created:
            dist.destroy_process_group()
        elif object_group is not None:
            dist.destroy_process_group(object_group)
