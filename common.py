"""
What train.py, eval.py and bench.py share: the device and the processes of a run (one code path for a CPU,
a GPU, and N GPUs or CPU processes under torchrun, on one machine or many), errors that end a run with one
line, and the checkpoint format.

A checkpoint is a directory: model.safetensors and model.json (the GPT), run.json (the run's whole config),
state.json (where the curriculum stands) and optimizer.pt. It is written under a temporary name, then
published by atomically re-pointing a link, so that a crash at any moment leaves the previous one intact.
"""
import argparse
import contextlib
import gc
import json
import os
import shutil
import sys
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import NamedTuple

import torch
import torch.distributed as dist

# -----------------------------------------------------------------------------------------------------------
# Devices, precision and processes


class Run(NamedTuple):
    """Where a process runs, and how."""
    device: torch.device
    autocast: object  # a context manager: bf16 autocast, or nothing for float32
    rank: int
    world: int


def setup(device="auto", dtype="auto"):
    """This process's Run; joins the process group when started by torchrun."""
    rank, world = int(os.environ.get("RANK", 0)), int(os.environ.get("WORLD_SIZE", 1))
    if device == "auto":
        device = "cuda" if torch.cuda.is_available() else "cpu"
    device = torch.device(device)
    if device.type == "cuda" and device.index is None:  # "cuda": this process's GPU under torchrun
        device = torch.device("cuda", int(os.environ.get("LOCAL_RANK", 0)))
    if device.type == "cuda":
        torch.cuda.set_device(device)
        torch.backends.cuda.matmul.allow_tf32 = torch.backends.cudnn.allow_tf32 = True
    if world > 1 and not dist.is_initialized():
        dist.init_process_group("nccl" if device.type == "cuda" else "gloo", device_id=device if device.type == "cuda" else None)
    if dtype == "auto":  # bf16 where the GPU supports it, float32 everywhere else
        dtype = "bfloat16" if device.type == "cuda" and torch.cuda.is_bf16_supported() else "float32"
    autocast = (torch.autocast(device.type, dtype=getattr(torch, dtype)) if dtype != "float32"
                else contextlib.nullcontext())
    return Run(device, autocast, rank, world)


def rank():
    return int(os.environ.get("RANK", 0))


def print0(*args, **kwargs):
    if rank() == 0:
        print(*args, **kwargs, flush=True)


def gather(items):
    """All ranks' lists, concatenated in rank order on every rank (a no-op in one process)."""
    if not dist.is_initialized():
        return items
    parts = [None] * dist.get_world_size()
    dist.all_gather_object(parts, items)
    return [x for part in parts for x in part]


def progress_bar(iterable, desc):
    """A progress bar on rank 0's terminal."""
    from tqdm import tqdm
    return tqdm(iterable, desc=desc, leave=False, disable=rank() != 0)


def prefetch(items):
    """Iterate over items, each computed in a background thread while the caller works on the one before (the
    host builds the next batch while the device runs this one)."""
    end = object()
    with ThreadPoolExecutor(max_workers=1) as pool:
        items = iter(items)
        future = pool.submit(next, items, end)
        while (item := future.result()) is not end:
            future = pool.submit(next, items, end)
            yield item


# -----------------------------------------------------------------------------------------------------------
# Errors: bad flags, data or checkpoints end the run with one line and exit status 1, on every rank, never
# with a traceback and never with a hang. An error that every rank knows of is said once, by rank 0.

class RunError(Exception):
    """An error every rank of the run has been told of."""


@contextlib.contextmanager
def on_every_rank():
    """Run a block on every rank; a ValueError or OSError on any rank becomes a RunError on all of them (the
    first failing rank's message), so that no rank waits forever for one that has stopped."""
    message = None
    try:
        yield
    except (ValueError, OSError) as e:
        message = str(e)
    if dist.is_initialized():
        failed = [m for m in gather([message]) if m is not None]
        message = failed[0] if failed else None
    if message is not None:
        raise RunError(message)


@contextlib.contextmanager
def one_line_errors():
    """End the program with one line and exit status 1 on a ValueError, OSError or RunError; the process
    group, if any, is left cleanly either way. Before the process group exists every rank has read the same
    flags, so that rank 0 speaks for all, as it does for a RunError."""
    try:
        yield
    except RunError as e:
        sys.exit(f"error: {e}" if rank() == 0 else 1)
    except (ValueError, OSError) as e:
        sys.exit(f"error: {e}" if rank() == 0 or dist.is_initialized() else 1)
    finally:
        if dist.is_initialized():
            # A DistributedDataParallel that is garbage but in a reference cycle still holds the process group:
            # collected now, it goes before the group does, not while the interpreter shuts down (which can abort).
            gc.collect()
            dist.destroy_process_group()


def parse_bool(s):
    if s.lower() not in ("true", "false", "1", "0"):
        raise argparse.ArgumentTypeError(f"expected true or false, got {s!r}")
    return s.lower() in ("true", "1")


# -----------------------------------------------------------------------------------------------------------
# Checkpoints

def save_checkpoint(out_dir, name, gpt, optimizer, cfg, state):
    """Write a checkpoint and point out_dir/<name> at it; a crash at any moment leaves the old one valid."""
    out_dir = Path(out_dir)
    target = f"ckpt-{state['epoch']:03d}-{state['step']:06d}"
    if not (out_dir / target).is_dir():
        tmp = out_dir / f".{target}.tmp"
        shutil.rmtree(tmp, ignore_errors=True)
        tmp.mkdir(parents=True)
        gpt.save(tmp)
        torch.save(optimizer.state_dict(), tmp / "optimizer.pt")
        (tmp / "run.json").write_text(json.dumps(cfg, indent=2) + "\n")
        (tmp / "state.json").write_text(json.dumps(state, indent=2) + "\n")
        os.replace(tmp, out_dir / target)
    link = out_dir / f".{name}.tmp"
    link.unlink(missing_ok=True)
    link.symlink_to(target)
    os.replace(link, out_dir / name)  # atomic: `name` is the old checkpoint or the new one, never half of one
    referenced = {os.readlink(out_dir / n) for n in ("latest", "best") if (out_dir / n).is_symlink()}
    for old in out_dir.glob("ckpt-*"):
        if old.name not in referenced:
            shutil.rmtree(old)


def load_state(path):
    """run.json and state.json of a checkpoint, with one clear error if they are missing or broken."""
    try:
        return json.loads((path / "run.json").read_text()), json.loads((path / "state.json").read_text())
    except (OSError, ValueError) as e:
        raise ValueError(f"{path}: not a readable checkpoint ({e})") from e


def load_optimizer(path, optimizer, device):
    optimizer.load_state_dict(torch.load(Path(path) / "optimizer.pt", map_location=device, weights_only=True))
