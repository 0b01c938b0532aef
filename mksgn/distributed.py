"""Data-parallel training over processes: ``torchrun`` + ``torch.distributed`` DDP.

``torchrun --nproc_per_node N [--nnodes K ...] $(which mksgn-train) ...`` starts N processes per
node with ``RANK``, ``LOCAL_RANK``, ``WORLD_SIZE``, ``MASTER_ADDR`` and ``MASTER_PORT`` set;
:func:`setup` joins them into one process group (``nccl`` on CUDA, one GPU per local rank;
``gloo`` on the CPU). Without ``WORLD_SIZE > 1`` every function here is a no-op and training
is the single-process loop, unchanged.

A DDP run is the single-process run with the same *global* batch ``train.batch_size``,
split into ``world_size`` equal shares:

* :class:`GlobalBatchSampler` replays the exact order the single-process ``DataLoader``
  (``shuffle=True``, the per-epoch generator) would draw, and hands rank ``r`` the
  ``r``-th contiguous share of every global batch;
* DDP averages the gradients of the ranks' mean losses: the single-process gradient;
* BatchNorm statistics are taken over the global batch: ``torch.nn.SyncBatchNorm`` on CUDA,
  :class:`CpuSyncBatchNorm` on the CPU (torch 2.3's ``SyncBatchNorm`` refuses CPU tensors:
  ``batchnorm.py`` raises "SyncBatchNorm expected input tensor to be on GPU");
* the epoch's loss / top-1 are summed over ranks (:func:`all_sum`).

What stays per rank: dropout masks and weight-noise draws (each rank seeds its own stream,
``seed·1000 + epoch + RANK_SEED_STRIDE·rank``; rank 0's is the single-process stream).
Only rank 0 writes ``last.pt`` / ``model.pt`` / ``history.json``, logs and shows progress
bars; every rank reads ``last.pt`` to resume.
"""
from __future__ import annotations

import os
from dataclasses import dataclass

import torch
import torch.distributed as dist
from torch import nn
from torch.distributed.nn.functional import all_reduce as differentiable_all_reduce
from torch.nn.parallel import DistributedDataParallel
from torch.utils.data import DataLoader, Sampler

from .errors import ConfigError

__all__ = ["Dist", "setup", "teardown", "GlobalBatchSampler", "CpuSyncBatchNorm", "sync_batchnorm", "wrap",
           "all_sum", "barrier", "check_plain", "RANK_SEED_STRIDE"]

#: Rank ``r`` seeds its dropout / weight-noise stream at ``base + RANK_SEED_STRIDE · r``.
RANK_SEED_STRIDE = 1_000_003


@dataclass(frozen=True)
class Dist:
    """This process's place in the run: ``rank`` of ``world`` processes, ``local_rank`` on its node."""

    rank: int = 0
    world: int = 1
    local_rank: int = 0

    @property
    def main(self) -> bool:
        """Rank 0: writes files, logs, shows progress bars."""
        return self.rank == 0

    @property
    def active(self) -> bool:
        return self.world > 1


def _env_int(name: str, default: int) -> int:
    raw = os.environ.get(name, str(default))
    try:
        return int(raw)
    except ValueError:
        raise ConfigError(f"environment variable {name}={raw!r} is not an integer (set by torchrun)") from None


def setup(device: torch.device) -> tuple[Dist, torch.device]:
    """Join the torchrun process group when ``WORLD_SIZE > 1``; returns ``(Dist, device)``
    where a CUDA device becomes ``cuda:LOCAL_RANK``.

    Raises
    ------
    ConfigError
        A bad torchrun environment, or fewer visible GPUs than local ranks.
    """
    world = _env_int("WORLD_SIZE", 1)
    if world <= 1:
        return Dist(), device
    rank, local = _env_int("RANK", 0), _env_int("LOCAL_RANK", 0)
    if not dist.is_available():
        raise ConfigError(f"WORLD_SIZE={world} but this torch ({torch.__version__}) has no torch.distributed")
    if device.type == "cuda":
        if local >= torch.cuda.device_count():
            raise ConfigError(f"LOCAL_RANK {local} but only {torch.cuda.device_count()} CUDA GPU(s) are visible; "
                              "start at most one process per GPU (torchrun --nproc_per_node)")
        device = torch.device("cuda", local)
        torch.cuda.set_device(device)
    if not dist.is_initialized():
        dist.init_process_group("nccl" if device.type == "cuda" else "gloo")
    return Dist(rank, world, local), device


def teardown(d: Dist) -> None:
    """Leave the process group (after a barrier, so rank 0's last write is done)."""
    if d.active and dist.is_initialized():
        dist.barrier()
        dist.destroy_process_group()


def barrier(d: Dist) -> None:
    if d.active:
        dist.barrier()


class GlobalBatchSampler(Sampler):
    """Rank ``rank``'s share of the single-process epoch.

    Own code, not ``torch.utils.data.DistributedSampler``: that sampler draws its own
    permutation (``randperm`` seeded with ``seed + epoch``), whereas the single-process
    ``DataLoader(shuffle=True, generator=g)`` first draws its worker base seed from ``g``;
    the two orders differ, and a DDP run would not see the single-process global batches.
    This sampler asks a ``DataLoader`` over ``range(n)`` built exactly like the training
    loader for its order, cuts it into ``⌊n / batch_size⌋`` global batches (the last partial
    one dropped, as ``drop_last=True``) and yields the ``rank``-th of ``world`` contiguous
    shares of each.

    Parameters
    ----------
    n : int
        Dataset length.
    batch_size : int
        The global batch (``train.batch_size``); must be a multiple of ``world``.
    generator : torch.Generator
        Seeded for the epoch, as the single-process loader's.
    rank, world : int
    """

    def __init__(self, n: int, batch_size: int, generator: torch.Generator, rank: int, world: int):
        if batch_size % world:
            raise ConfigError(f"train.batch_size {batch_size} is the global batch and must be a multiple of the "
                              f"{world} processes (each takes batch_size / world clips per step)")
        order = next(iter(DataLoader(range(n), batch_size=n, shuffle=True, generator=generator))).tolist()
        share = batch_size // world
        self.indices = [i for k in range(n // batch_size)
                        for i in order[k * batch_size + rank * share:k * batch_size + (rank + 1) * share]]

    def __iter__(self):
        return iter(self.indices)

    def __len__(self) -> int:
        return len(self.indices)


class CpuSyncBatchNorm(nn.modules.batchnorm._BatchNorm):
    """BatchNorm whose training statistics are those of the global batch across ``gloo``
    ranks (``torch.nn.SyncBatchNorm`` is CUDA-only in torch 2.3, see the module docstring).

    Own code because the library's is CUDA-only. Training: per-channel mean ``μ = Σx / N`` and biased variance ``σ² = Σ(x − μ)² / N`` over
    every axis but 1 and every rank (two differentiable all-reduces of sums, so gradients
    flow through the statistics as in ``SyncBatchNorm``), ``y = (x − μ)/√(σ² + ε)·w + b``;
    running statistics updated as ``F.batch_norm`` does (unbiased ``σ²·N/(N−1)``). Eval, or
    one process: ``F.batch_norm``. Input ``(N, C, …)``, any rank ≥ 2; same parameters and
    buffers (state-dict keys) as ``BatchNorm1d/2d``.
    """

    def _check_input_dim(self, input):
        if input.dim() < 2:
            raise ValueError(f"expected at least 2-D input (got {input.dim()}-D)")

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if not (self.training and dist.is_available() and dist.is_initialized() and dist.get_world_size() > 1):
            return super().forward(x)
        dims = [0] + list(range(2, x.dim()))
        count = torch.tensor([x.numel() // x.shape[1]], dtype=x.dtype, device=x.device)
        count = differentiable_all_reduce(count)
        mean = differentiable_all_reduce(x.sum(dims)) / count
        shape = [1, -1] + [1] * (x.dim() - 2)
        centred = x - mean.view(shape)
        var = differentiable_all_reduce(centred.pow(2).sum(dims)) / count
        if self.track_running_stats:
            with torch.no_grad():
                self.num_batches_tracked.add_(1)
                m = self.momentum if self.momentum is not None else 1.0 / float(self.num_batches_tracked)
                n = float(count)
                self.running_mean.mul_(1 - m).add_(mean.detach(), alpha=m)
                self.running_var.mul_(1 - m).add_(var.detach() * (n / max(n - 1, 1)), alpha=m)
        y = centred * torch.rsqrt(var + self.eps).view(shape)
        if self.affine:
            y = y * self.weight.view(shape) + self.bias.view(shape)
        return y


def sync_batchnorm(model: nn.Module, device: torch.device) -> nn.Module:
    """Every BatchNorm of ``model`` with global-batch statistics: ``SyncBatchNorm`` on CUDA,
    :class:`CpuSyncBatchNorm` on the CPU (parameters and buffers moved over, same names)."""
    if device.type == "cuda":
        return nn.SyncBatchNorm.convert_sync_batchnorm(model)
    for name, child in list(model.named_children()):
        if isinstance(child, nn.modules.batchnorm._BatchNorm) and not isinstance(child, CpuSyncBatchNorm):
            new = CpuSyncBatchNorm(child.num_features, child.eps, child.momentum, child.affine,
                                   child.track_running_stats, device=device)
            # the same Parameter and buffer objects (the optimiser holds the parameters), as
            # torch's convert_sync_batchnorm does
            for key, value in list(child._parameters.items()) + list(child._buffers.items()):
                setattr(new, key, value)
            new.train(child.training)
            setattr(model, name, new)
        else:
            sync_batchnorm(child, device)
    return model


def wrap(model: nn.Module, d: Dist, device: torch.device) -> nn.Module:
    """The module to call in training steps: ``model`` itself, or (DDP) ``model`` with
    global-batch BatchNorm wrapped in ``DistributedDataParallel`` (``device_ids`` on CUDA)."""
    if not d.active:
        return model
    sync_batchnorm(model, device)
    return DistributedDataParallel(model, device_ids=[device.index] if device.type == "cuda" else None)


def all_sum(d: Dist, *values: float) -> list:
    """``values`` summed over ranks (float64 on the CPU; identity for one process)."""
    if not d.active:
        return list(values)
    t = torch.tensor(values, dtype=torch.float64)
    if dist.get_backend() == "nccl":
        t = t.cuda()
    dist.all_reduce(t)
    return t.cpu().tolist()


def check_plain(d: Dist, kd, mine, forward, config_path) -> None:
    """DDP covers cross-entropy training of one model; distillation, the SMF's MINE estimators
    and quantisation-aware training keep their own optimisers / forwards and are refused."""
    if d.active and (kd is not None or mine is not None or forward is not None):
        raise ConfigError(f"{config_path}: multi-process training (torchrun) supports plain cross-entropy on a "
                          "single-modality MK-SGN / Base-SGN* / CTR-GCN; run distillation (--teacher), the "
                          "four-modality SMF model or --qat in one process")
