"""Data-parallel training over ``torch.distributed`` (gloo on CPU, nccl on CUDA), for every family unchanged.

A run of W processes computes what one process computes with ``grad_accum = W * k``: the global batch B of a step
(``Dataset.batch_at``) is cut into W * k equal micro-batches; process r trains on micro-batches r*k .. r*k + k - 1,
and micro-batch j draws its randomness (noise, timesteps, dropout) from the global RNG seeded with
``micro_seed(seed, step, j)``, whichever process runs it. The gradient of the global batch is then the mean over
micro-batches,

    g = (1 / (W k)) sum_j g_j,

which :class:`DataParallelOptimizers` forms by all-reducing each process's accumulated sum (each micro-loss is
already scaled by 1/k) divided by W, before clipping -- the seam every optimizer of every model passes through. No
``DistributedDataParallel`` wrapper: genzoo models call their sub-networks directly from ``training_step`` (a GAN
steps two optimizers over different parameter sets), which DDP's forward hooks and unused-parameter detection do
not follow; averaging at ``Optimizers`` needs nothing from the model.

State outside the optimizers (BatchNorm running statistics, a replay buffer, an EMA codebook) follows process 0:
its persistent buffers are broadcast after every step, as DDP's ``broadcast_buffers`` does.
"""

from __future__ import annotations

import functools
import hashlib
import os
import socket
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from typing import Any

import torch
import torch.distributed as dist
from torch import Tensor, nn

from genzoo.contract import Batch, Optimizers
from genzoo.errors import ConfigError, GenzooError

__all__ = ["DataParallelOptimizers", "World", "current_world", "is_main_process", "launch", "micro_seed",
           "process_group", "shared_value"]


@dataclass(frozen=True)
class World:
    """This process's place among the data-parallel processes (one process: rank 0 of 1)."""

    rank: int = 0
    size: int = 1
    local_rank: int = 0

    @property
    def is_main(self) -> bool:
        """Process 0 writes the run directory (config, checkpoints, metrics, samples); the others only compute."""
        return self.rank == 0

    @property
    def parallel(self) -> bool:
        return self.size > 1


def current_world() -> World:
    if not (dist.is_available() and dist.is_initialized()):
        return World()
    return World(dist.get_rank(), dist.get_world_size(), int(os.environ.get("LOCAL_RANK", dist.get_rank())))


def environment_world_size() -> int:
    """WORLD_SIZE as torchrun (or :func:`launch`) sets it; 1 outside a launcher."""
    try:
        return int(os.environ.get("WORLD_SIZE", "1"))
    except ValueError:
        raise ConfigError(f"WORLD_SIZE={os.environ['WORLD_SIZE']!r} is not a number of processes") from None


@contextmanager
def process_group(device: torch.device) -> Iterator[World]:
    """Join the process group the environment describes (torchrun's RANK, WORLD_SIZE, MASTER_ADDR, MASTER_PORT)
    for the block; a group that already exists is used as it is and left open, and without a launcher this is a
    world of one."""
    if dist.is_available() and dist.is_initialized():
        yield current_world()
        return
    if environment_world_size() <= 1:
        yield World()
        return
    dist.init_process_group("nccl" if device.type == "cuda" else "gloo")
    try:
        yield current_world()
    finally:
        dist.destroy_process_group()


def rank_device(device: torch.device, world: World) -> torch.device:
    """One GPU per process on a node (``cuda`` -> ``cuda:LOCAL_RANK``); other devices as given."""
    if world.parallel and device.type == "cuda" and device.index is None:
        torch.cuda.set_device(world.local_rank)
        return torch.device("cuda", world.local_rank)
    return device


def micro_seed(seed: int, step: int, micro_batch: int) -> int:
    """Seed of the RNG stream of micro-batch ``micro_batch`` of step ``step``: the same in every process layout."""
    digest = hashlib.blake2b(f"{seed}/{step}/{micro_batch}".encode(), digest_size=8).digest()
    return int.from_bytes(digest, "little") >> 1  # torch.manual_seed takes a non-negative 63-bit int


def micro_batches(batch: Batch, world: World, accumulate: int) -> list[tuple[int, Batch]]:
    """This process's micro-batches of the global ``batch``, each with its global index 0 .. W * k - 1."""
    size = len(batch) // (world.size * accumulate)
    first = world.rank * accumulate
    return [(j, batch[j * size : (j + 1) * size]) for j in range(first, first + accumulate)]


class DataParallelOptimizers(Optimizers):
    """:class:`Optimizers` whose gradients are averaged over the processes before clipping and stepping."""

    def __init__(self, optimizers: dict[str, torch.optim.Optimizer], grad_clip: float | None, scaler: Any,
                 world: World) -> None:
        super().__init__(optimizers, grad_clip, scaler)
        self.world = world

    def reduce_gradients(self, params: list[Tensor]) -> None:
        """grad <- (1 / W) sum over processes, in one all-reduce. A parameter without a gradient in this process
        counts as zero there and keeps ``grad=None`` only when no process has one (as accumulation would do)."""
        if not self.world.parallel or not params:
            return
        dtype = functools.reduce(torch.promote_types, (p.dtype for p in params))
        flat = torch.cat([(p.grad if p.grad is not None else torch.zeros_like(p)).reshape(-1).to(dtype)
                          for p in params] + [torch.tensor([p.grad is not None for p in params],
                                                           dtype=dtype, device=params[0].device)])
        flat[: -len(params)] /= self.world.size
        dist.all_reduce(flat)
        present = flat[-len(params):] > 0
        offset = 0
        for param, has_grad in zip(params, present.tolist(), strict=True):
            values = flat[offset : offset + param.numel()].view_as(param).to(param.dtype)
            offset += param.numel()
            if has_grad:
                param.grad = values


def broadcast_tensors(tensors: list[Tensor]) -> None:
    """Overwrite ``tensors`` with process 0's values, one broadcast per dtype."""
    by_dtype: dict[torch.dtype, list[Tensor]] = {}
    for tensor in tensors:
        by_dtype.setdefault(tensor.dtype, []).append(tensor)
    for group in by_dtype.values():
        as_bytes = group[0].dtype == torch.bool  # gloo has no bool reduction/broadcast
        flat = torch.cat([(t.to(torch.uint8) if as_bytes else t).reshape(-1) for t in group])
        dist.broadcast(flat, src=0)
        offset = 0
        with torch.no_grad():
            for tensor in group:
                tensor.copy_(flat[offset : offset + tensor.numel()].view_as(tensor))
                offset += tensor.numel()


def persistent_buffers(model: nn.Module) -> list[Tensor]:
    """Buffers saved with the weights: state a model may change while training. Non-persistent ones (masks,
    positional tables) are rebuilt from the architecture and equal everywhere."""
    names = set(model.state_dict())
    return [b for name, b in model.named_buffers() if name in names and b.numel()]


def broadcast_model(model: nn.Module) -> None:
    """Give every process process 0's parameters and buffers (identical initialisation, however it was drawn)."""
    broadcast_tensors([p.data for p in model.parameters()] + persistent_buffers(model))


def mean_over_processes(values: dict[str, float], world: World) -> dict[str, float]:
    """Each value averaged over the processes (every process passes the same keys in the same order)."""
    if not world.parallel or not values:
        return values
    flat = torch.tensor(list(values.values()), dtype=torch.float64)
    dist.all_reduce(flat)
    return dict(zip(values, (flat / world.size).tolist(), strict=True))


def from_main(values: list[float], world: World) -> list[float]:
    """Process 0's ``values`` on every process (decisions that must agree: stop now, elapsed time)."""
    if not world.parallel:
        return values
    flat = torch.tensor(values, dtype=torch.float64)
    dist.broadcast(flat, src=0)
    return flat.tolist()


def shared_value(value: Any, world: World) -> Any:
    """Process 0's ``value`` (any picklable object) on every process."""
    if not world.parallel:
        return value
    box = [value]
    dist.broadcast_object_list(box, src=0)
    return box[0]


def is_main_process() -> bool:
    """Whether this is process 0, inside or after a (torchrun) launch."""
    if dist.is_available() and dist.is_initialized():
        return current_world().is_main
    return os.environ.get("RANK", "0") == "0"


def barrier(world: World) -> None:
    if world.parallel:
        dist.barrier()


def _free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def _worker(rank: int, size: int, port: int, threads: int, fn: Callable[..., Any], args: tuple[Any, ...],
            kwargs: dict[str, Any]) -> None:
    os.environ.update(MASTER_ADDR="127.0.0.1", MASTER_PORT=str(port), WORLD_SIZE=str(size), RANK=str(rank),
                      LOCAL_RANK=str(rank), LOCAL_WORLD_SIZE=str(size))
    torch.set_num_threads(threads)
    fn(*args, **kwargs)


def launch(nproc: int, fn: Callable[..., Any], *args: Any, **kwargs: Any) -> None:
    """Run ``fn(*args, **kwargs)`` in ``nproc`` fresh processes on this machine, set up as torchrun would (one
    process group on a free local port), and wait for all of them. This process's threads are shared out among
    them. An error in any process stops all and is raised here."""
    import torch.multiprocessing as mp

    if environment_world_size() > 1 or (dist.is_available() and dist.is_initialized()):
        raise ConfigError("nproc > 1 inside a distributed launch (torchrun): the launcher already made the "
                          "processes; drop --nproc")
    threads = max(1, torch.get_num_threads() // nproc)
    try:
        mp.start_processes(_worker, args=(nproc, _free_port(), threads, fn, args, kwargs), nprocs=nproc,
                           start_method="spawn")
    except mp.ProcessRaisedException as err:  # the failing process's own error, as one line
        lines = [line for line in str(err).strip().splitlines() if line.strip()]
        raise GenzooError(f"a training process failed: {lines[-1] if lines else err}") from None
