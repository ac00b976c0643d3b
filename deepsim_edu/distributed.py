"""Data-parallel training under ``torchrun``: who this process is, and how a step is shared.

``torchrun --nproc_per_node N -m deepsim_edu train ...`` starts N processes with the environment
variables ``RANK``, ``WORLD_SIZE`` and ``LOCAL_RANK``; ``current()`` reads them (without torchrun:
one process, rank 0, and nothing below changes anything). The process group is NCCL on CUDA and
gloo on the CPU; each process drives ``cuda:<LOCAL_RANK>``.

A training step of the single-process loop sums the gradients of ``accumulation`` micro-batches
of ``batch_size`` items, micro-batch k drawn by a generator seeded by (seed, step·accumulation +
k). With N processes the same global step is shared out so that the averaged gradient is the
single-process one (DistributedDataParallel averages gradients over the processes):

* ``accumulation % N == 0``: process r draws micro-batches r·A/N … (r+1)·A/N − 1 whole and
  scales its loss by N/A (A/N accumulation steps of the whole batch per process);
* else ``batch_size % N == 0``: every process draws every micro-batch and keeps its share of
  the items, rows r·B/N … (r+1)·B/N − 1 (the loss is a mean over items, so the mean over
  processes of the shares' means is the batch mean);
* else the step cannot be shared exactly: a ValueError names the numbers.

The effective batch ``batch_size × accumulation`` is the preset's whatever N is; config.json
records ``{"world_size", "batch_per_process", "accumulation_per_process", "effective_batch"}``.
BatchNorm statistics are per process, not synchronised — as in the paper's code (DDP in
pytorch-lightning 0.7.6 without ``sync_batchnorm``) — so in ``train()`` mode N processes match
one process only up to the batch statistics; everything else is exact up to float rounding.
Only rank 0 writes logs, checkpoints and results; the others wait at ``barrier()``.
"""

from __future__ import annotations

import os
from contextlib import nullcontext
from dataclasses import dataclass

import torch
import torch.distributed as dist
from torch import Tensor, nn


@dataclass(frozen=True)
class Processes:
    """This process's place among the training processes (one process: rank 0 of 1)."""

    rank: int = 0
    world_size: int = 1
    local_rank: int = 0

    @property
    def distributed(self) -> bool:
        return self.world_size > 1

    @property
    def main(self) -> bool:
        """Rank 0: the process that writes files and shows progress."""
        return self.rank == 0

    def device(self, device: str) -> str:
        """``device`` for this process: under torchrun, ``"cuda"`` becomes ``cuda:<LOCAL_RANK>``."""
        if self.distributed and device == "cuda":
            return f"cuda:{self.local_rank}"
        return device

    def start(self, device: str) -> None:
        """Join the process group (NCCL on CUDA, gloo on the CPU); a no-op for one process."""
        if not self.distributed or dist.is_initialized():
            return
        backend = "nccl" if device.startswith("cuda") else "gloo"
        if backend == "nccl":
            torch.cuda.set_device(self.local_rank)
        dist.init_process_group(backend, rank=self.rank, world_size=self.world_size)

    def barrier(self) -> None:
        if self.distributed and dist.is_initialized():
            dist.barrier()

    def wrap(self, model: nn.Module) -> nn.Module:
        """The model to run forward/backward through: DistributedDataParallel when distributed."""
        if not self.distributed:
            return model
        return nn.parallel.DistributedDataParallel(model)

    def mean(self, values: dict[str, float]) -> dict[str, float]:
        """The mean of each value over the processes (every process gets the same numbers)."""
        if not self.distributed:
            return values
        t = torch.tensor(list(values.values()), dtype=torch.float64)
        dist.all_reduce(t)
        return dict(zip(values, (t / self.world_size).tolist()))


def current() -> Processes:
    """This process as torchrun started it (``RANK``/``WORLD_SIZE``/``LOCAL_RANK``), else 0 of 1."""
    world = int(os.environ.get("WORLD_SIZE", "1"))
    if world <= 1:
        return Processes()
    return Processes(int(os.environ["RANK"]), world, int(os.environ.get("LOCAL_RANK", "0")))


@dataclass(frozen=True)
class StepShare:
    """How one optimiser step of ``accumulation`` micro-batches of ``batch_size`` is shared."""

    micro_batches: tuple[int, ...]  # the step's micro-batch indices this process draws
    rows: slice  # the rows of each drawn micro-batch this process keeps
    divisor: int  # each micro-batch loss is divided by this before backward
    record: dict  # what config.json states

    def keep(self, tensors: list[Tensor]) -> list[Tensor]:
        return [t[self.rows] for t in tensors]


def share_step(batch_size: int, accumulation: int, processes: Processes) -> StepShare:
    """This process's share of an optimiser step (see the module docstring for the rule)."""
    n, r = processes.world_size, processes.rank
    if accumulation % n == 0:
        per = accumulation // n
        share = StepShare(tuple(range(r * per, (r + 1) * per)), slice(None), per,
                          {"batch_per_process": batch_size, "accumulation_per_process": per})
    elif batch_size % n == 0:
        per = batch_size // n
        share = StepShare(tuple(range(accumulation)), slice(r * per, (r + 1) * per),
                          accumulation,
                          {"batch_per_process": per, "accumulation_per_process": accumulation})
    else:
        raise ValueError(
            f"cannot share a step of {accumulation} micro-batch(es) of {batch_size} among {n} "
            f"processes: the accumulation or the batch size must be divisible by {n}"
        )
    share.record.update(world_size=n, effective_batch=batch_size * accumulation)
    return share


def no_sync(model: nn.Module, last: bool):
    """DDP's ``no_sync`` for every micro-batch but the step's last (gradients averaged once)."""
    if last or not isinstance(model, nn.parallel.DistributedDataParallel):
        return nullcontext()
    return model.no_sync()
