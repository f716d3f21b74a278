"""Several training processes, one run: data parallel over torch.distributed (gloo on CPU, nccl on CUDA).

One config gives the same run on any number of processes. `training.batch_size` x `training.grad_accum` stays
the global batch: every rank draws the same micro-batches and takes its share of each (items r, r+W, ...);
the loss is divided by the group's global target-token count and the gradients are summed over the ranks, so
every rank takes the same optimizer step a single process would. Rank 0 alone writes the run directory.

Processes are started by torchrun's launcher (`hone train --nproc N`, `torchrun`, `accelerate launch`), which
sets RANK, WORLD_SIZE, LOCAL_RANK, LOCAL_WORLD_SIZE, MASTER_ADDR and MASTER_PORT. Without them (or with a world
of one) nothing here runs a collective, so the single-process path costs what it did before.
"""

from __future__ import annotations

import dataclasses
import os
import sys
import uuid
from collections import defaultdict
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import TypeVar

import torch
import torch.distributed as dist

from hone.errors import HoneError
from hone.models.loading import resolve_device

Value = TypeVar("Value")
_joined_by_hone = False  # the process group is torn down only by whoever set it up


def available_cores() -> int:
    return len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else os.cpu_count() or 1


def threads_per_process(local_world_size: int) -> int:
    """CPU threads for each of the processes on one machine, so together they use each core once."""
    return max(1, available_cores() // max(1, local_world_size))


def training_device(setting: str, local_rank: int, world_size: int) -> torch.device:
    """This process's device for `training.device`: with several processes each takes its own GPU (nccl, one GPU
    per process), so a fixed cuda:N is refused there."""
    if world_size > 1 and setting.startswith("cuda:"):
        raise HoneError(f"training.device is {setting!r} but {world_size} processes train: each takes its own GPU "
                        "(cuda:LOCAL_RANK)", hint="set training.device to auto or cuda")
    return torch.device(resolve_device(setting, "training.device", local_rank))


@dataclass(frozen=True)
class Distributed:
    """This process's place among the training processes; a world of one (the default) does nothing."""

    rank: int = 0
    world_size: int = 1
    local_rank: int = 0
    local_world_size: int = 1
    device: torch.device = field(default_factory=lambda: torch.device("cpu"))
    lockstep: bool = False  # FSDP: every rank runs every micro-batch

    @classmethod
    def from_env(cls, fsdp: bool = False, device: str = "auto") -> Distributed:
        """From torchrun's environment variables, on the `training.device` setting's device; joins the process
        group (gloo on CPUs, nccl on GPUs) on first call."""
        world = int(os.environ.get("WORLD_SIZE", "1"))
        local_rank = int(os.environ.get("LOCAL_RANK", "0"))
        place = cls(rank=int(os.environ.get("RANK", "0")), world_size=world, local_rank=local_rank,
                    local_world_size=int(os.environ.get("LOCAL_WORLD_SIZE", "1")),
                    device=training_device(device, local_rank, world), lockstep=fsdp)
        if place.enabled and not dist.is_initialized():
            place._join()
        return place

    def _join(self) -> None:
        global _joined_by_hone
        missing = [name for name in ("RANK", "MASTER_ADDR", "MASTER_PORT") if name not in os.environ]
        if missing:
            raise HoneError(f"WORLD_SIZE is {self.world_size} but {', '.join(missing)} is not set",
                            hint="start several processes with `hone train CONFIG --nproc N`, torchrun or "
                            "accelerate launch, which set all of them")
        if self.device.type == "cuda":
            torch.cuda.set_device(self.device)
            dist.init_process_group("nccl", device_id=self.device)
        else:
            torch.set_num_threads(threads_per_process(self.local_world_size))  # torchrun's default is 1
            dist.init_process_group("gloo")
        _joined_by_hone = True

    @property
    def enabled(self) -> bool:
        return self.world_size > 1

    @property
    def is_main(self) -> bool:
        """Rank 0: the one process that writes metrics, checkpoints, weights, summary and tracking."""
        return self.rank == 0

    def check_batch_size(self, batch_size: int) -> None:
        """Every micro-batch is split across the ranks, so it must hold at least one item per rank."""
        if batch_size < self.world_size:
            raise HoneError(f"training.batch_size is {batch_size}, fewer than the {self.world_size} processes: "
                            "each micro-batch is split across the processes",
                            hint=f"set training.batch_size to at least {self.world_size} (it is the global "
                            "micro-batch; lower training.grad_accum to keep the same global batch)")

    def shard(self, items: list[Value]) -> tuple[list[Value], int]:
        """This rank's share of a micro-batch (items rank, rank + W, ...) and its weight in the loss: 1, or 0 for
        a stand-in. A rank left without items (a short last batch) sits it out, except under FSDP, where it
        runs the first item weighted 0: there every rank gathers each layer's weights together."""
        if not self.enabled:
            return items, 1
        mine = items[self.rank::self.world_size]
        return (items[:1], 0) if not mine and self.lockstep else (mine, 1)

    def all_sum(self, *values: float) -> list:
        """Each value summed over all ranks in one collective (float64: exact for counts); types are kept."""
        if not self.enabled:
            return list(values)
        reduced = torch.tensor(values, dtype=torch.float64, device=self.device)
        dist.all_reduce(reduced)
        return [type(value)(total) for value, total in zip(values, reduced.tolist(), strict=True)]

    def any(self, flag: bool) -> bool:
        """True on every rank when it is True on any rank (so all stop at the same step)."""
        return bool(self.all_sum(int(flag))[0]) if self.enabled else flag

    def sum_gradients(self, model: torch.nn.Module) -> None:
        """Sum the trainable parameters' gradients over all ranks, flattened into one bucket per dtype.

        Hand-rolled rather than DistributedDataParallel: the loop calls the decoder and lm_head directly
        (never the wrapped module's forward, where DDP hooks in), it reduces once per optimizer step anyway
        (DDP's no_sync during accumulation), and LoRA gradients are a few MB, so one collective per dtype costs
        less than overlapping buckets with backward would save.
        """
        if not self.enabled:
            return
        buckets: dict[torch.dtype, list[torch.Tensor]] = defaultdict(list)
        for param in model.parameters():
            if param.requires_grad:
                if param.grad is None:  # this rank's share of the group gave it no gradient; others may have
                    param.grad = torch.zeros_like(param)
                buckets[param.grad.dtype].append(param.grad)
        for grads in buckets.values():
            flat = torch.cat([grad.reshape(-1) for grad in grads])
            dist.all_reduce(flat)
            for grad, summed in zip(grads, flat.split([grad.numel() for grad in grads]), strict=True):
                grad.copy_(summed.view_as(grad))

    def on_main(self, make: Callable[[], Value]) -> Value:
        """`make()` run on rank 0 only, its result handed to every rank (e.g. the new run directory)."""
        if not self.enabled:
            return make()
        box = [make() if self.is_main else None]
        dist.broadcast_object_list(box, src=0)
        return box[0]

    def to_device(self, batch: Value) -> Value:
        """A batch (a dataclass of tensors, possibly nested) on this rank's device; as it is on the CPU."""
        if self.device.type == "cpu":
            return batch
        return dataclasses.replace(batch, **{
            f.name: self.to_device(value) if dataclasses.is_dataclass(value) else value.to(self.device)
            for f in dataclasses.fields(batch)
            if isinstance(value := getattr(batch, f.name), torch.Tensor) or dataclasses.is_dataclass(value)})

    def prepare_model(self, model: torch.nn.Module, config) -> torch.nn.Module:
        """The model on this rank's device, with rank 0's trainable weights on every rank; with
        training.distributed: fsdp the frozen base weights of each decoder layer are sharded across ranks."""
        # a model loaded onto the device stays as it is (a 4-bit one refuses to be moved at all)
        if any(param.device != self.device for param in model.parameters()):
            model = model.to(self.device)
        if not self.enabled:
            return model
        trainable = [param for param in model.parameters() if param.requires_grad]
        if config.training.distributed == "fsdp":
            shard_frozen_weights(model, set(trainable), config.method)
        for param in trainable:
            dist.broadcast(param.data, src=0)
        return model

    def close(self) -> None:
        """Leave the process group, if hone joined it (a caller's own group is left alone)."""
        global _joined_by_hone
        if _joined_by_hone and dist.is_initialized():
            dist.destroy_process_group()
            _joined_by_hone = False


FSDP_METHODS = ("lora", "dora")


def shard_frozen_weights(model: torch.nn.Module, trainable: set[torch.nn.Parameter], method: str) -> None:
    """FSDP2 (`fully_shard`) on each decoder layer and the decoder: every rank keeps 1/W of the frozen base
    weights and gathers a layer's weights just for its forward and backward. The adapter's weights stay
    whole on every rank (FSDP ignores them), so their gradients, checkpoints and saves are the DDP path's."""
    from torch.distributed.fsdp import fully_shard

    if method not in FSDP_METHODS:
        raise HoneError(f"training.distributed: fsdp does not support method {method}",
                        hint=f"fsdp shards the frozen base under a {' or '.join(FSDP_METHODS)} adapter; use "
                        "training.distributed: ddp for this method")
    decoder = (model.get_base_model() if hasattr(model, "get_base_model") else model).get_decoder()
    for layer in decoder.layers:
        fully_shard(layer, ignored_params=trainable)
    # Resharding the root after forward too keeps every rank's state alike when rank 0 alone saves.
    fully_shard(decoder, ignored_params=trainable, reshard_after_forward=True)


def launch_local(nproc: int, hone_args: list[str]) -> int:
    """Run `hone HONE_ARGS` as `nproc` processes on this machine under torchrun's launcher (a standalone
    rendezvous on 127.0.0.1), from this process; returns the exit code of the first process that failed, or 0."""
    from torch.distributed.elastic.multiprocessing.errors import ChildFailedError
    from torch.distributed.run import parse_args, run

    os.environ.setdefault("OMP_NUM_THREADS", str(threads_per_process(nproc)))  # else torchrun warns and sets 1
    args = parse_args(["--nnodes=1", f"--nproc-per-node={nproc}", "--rdzv-backend=c10d",
                       "--rdzv-endpoint=127.0.0.1:0", f"--rdzv-id={uuid.uuid4()}", "--local-addr=127.0.0.1",
                       "-m", "hone", *hone_args])
    try:
        run(args)
    except ChildFailedError as failed:
        first = min(failed.failures.values(), key=lambda failure: failure.timestamp)
        print(f"error: training process {first.local_rank} of {nproc} failed with exit code {first.exitcode}; "
              "its own message is above", file=sys.stderr)
        return first.exitcode if first.exitcode > 0 else 1
    return 0


def is_main() -> bool:
    """Whether this process is rank 0 (or the only process), read from torchrun's RANK."""
    return int(os.environ.get("RANK", "0")) == 0

