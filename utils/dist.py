"""torch.distributed helpers in the style of torchvision's references: torchrun sets RANK, WORLD_SIZE and
LOCAL_RANK; without them everything runs as a single process and these functions are no-ops."""
import contextlib
import functools
import os

import numpy as np
import torch
import torch.distributed as dist

from data.errors import InputError


def is_dist():
    return dist.is_available() and dist.is_initialized()


def rank():
    return dist.get_rank() if is_dist() else 0


def world_size():
    return dist.get_world_size() if is_dist() else 1


def is_main():
    return rank() == 0


def is_local_main():
    """The first process on this machine (torchrun's LOCAL_RANK 0): the one that fetches what the node shares."""
    return int(os.environ.get("LOCAL_RANK", 0)) == 0


def init_distributed(device="auto"):
    """Join the process group torchrun describes (NCCL on GPUs, gloo on CPU); returns the torch.device to use."""
    use_cuda = torch.cuda.is_available() if device == "auto" else device == "cuda"
    if device == "cuda" and not torch.cuda.is_available():
        raise InputError("--device cuda: no CUDA GPU is visible to torch (use --device cpu, or auto to take a GPU "
                         "when there is one)")
    if "RANK" not in os.environ or "WORLD_SIZE" not in os.environ:
        return torch.device("cuda" if use_cuda else "cpu")
    local_rank = int(os.environ.get("LOCAL_RANK", 0))
    if use_cuda:
        torch.cuda.set_device(local_rank)
    dist.init_process_group(backend="nccl" if use_cuda else "gloo",
                            device_id=torch.device("cuda", local_rank) if use_cuda else None)
    return torch.device("cuda", local_rank) if use_cuda else torch.device("cpu")


def barrier():
    if is_dist():
        dist.barrier()


@contextlib.contextmanager
def local_main_first():
    """Each machine's first process runs the block before the others, which wait: what it fetches into a cache the
    node shares (a download), the others then find there."""
    if not is_local_main():
        barrier()
    yield
    if is_local_main():
        barrier()


def cleanup():
    if is_dist():
        dist.destroy_process_group()


def all_reduce_sum(values, device):
    """The sum over all ranks of a float, or of each float of a list (one collective for all of them)."""
    many = isinstance(values, (list, tuple))
    values = [float(v) for v in values] if many else [float(values)]
    if is_dist():
        values = all_reduce_tensor(torch.tensor(values, dtype=torch.float64, device=device)).tolist()
    return values if many else values[0]


def summed(device):
    """all_reduce_sum on `device` as a function of the values alone (StopSignals.agreed's `total`)."""
    return functools.partial(all_reduce_sum, device=device)


def all_reduce_tensor(t):
    """`t` summed over all ranks, in place, on its device (no host synchronization of its own)."""
    if is_dist():
        dist.all_reduce(t)
    return t


def all_gather(obj):
    """[obj of rank 0, obj of rank 1, ...] on every rank (picklable objects); [obj] in a single process."""
    if not is_dist():
        return [obj]
    parts = [None] * world_size()
    dist.all_gather_object(parts, obj)
    return parts


def gather_rows(indices, rows, main_only=False):
    """Every rank's (indices, rows) concatenated, then deduplicated and ordered by index; rows is a dict of arrays
    with one row per index. main_only: only rank 0 receives them, the other ranks get (None, None).

    DistributedSampler pads the last shard by repeating images so that ranks stay in step; keeping the first row
    of each index gives exactly one prediction per image.
    """
    indices = np.asarray(indices)
    if is_dist():
        parts = [None] * world_size() if is_main() or not main_only else None
        if main_only:
            dist.gather_object((indices, rows), parts, dst=0)
        else:
            dist.all_gather_object(parts, (indices, rows))
        if parts is None:
            return None, None
        indices = np.concatenate([p[0] for p in parts])
        rows = {k: np.concatenate([p[1][k] for p in parts]) for k in rows}
    _, first = np.unique(indices, return_index=True)  # sorted by index
    return indices[first], {k: np.asarray(v)[first] for k, v in rows.items()}


def wrap(model, device):
    """`model` in DistributedDataParallel when several processes train it (the model itself otherwise)."""
    if not is_dist():
        return model
    return torch.nn.parallel.DistributedDataParallel(model, device_ids=[device.index] if device.type == "cuda" else None)


def unwrap(model):
    """The model inside its DistributedDataParallel and torch.compile wrappers (the model itself otherwise)."""
    while True:
        for wrapped in ("_orig_mod", "module"):
            if getattr(model, wrapped, None) is not None:
                model = getattr(model, wrapped)
                break
        else:
            return model
