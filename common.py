"""
What train.py, eval.py and bench.py share: the device and the processes of a run (one code path for a CPU,
a GPU, and N GPUs or CPU processes under torchrun, on one machine or many), errors that end a run with one
line, and the checkpoint format.

A checkpoint is a directory: model.safetensors and model.json (the GPT), run.json (the run's whole config),
state.json (where the curriculum stands) and optimizer.pt. It is written under a temporary name, then
published by atomically re-pointing a link, so that a crash at any moment leaves the previous one intact; a
write that fails (a full disk, no permission) removes its half and says so in a line.
"""
import argparse
import contextlib
import gc
import io
import json
import os
import pickle
import shutil
import signal
import sys
import threading
import time
import uuid
from concurrent.futures import ThreadPoolExecutor
from datetime import timedelta
from pathlib import Path
from typing import NamedTuple

import torch
import torch.distributed as dist
from safetensors import SafetensorError

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
        end_with_parent()
        dist.init_process_group("nccl" if device.type == "cuda" else "gloo", store=fresh_store(rank, world),
                                rank=rank, world_size=world, device_id=device if device.type == "cuda" else None)
    if dtype == "auto":  # bf16 where the GPU supports it, float32 everywhere else
        dtype = "bfloat16" if device.type == "cuda" and torch.cuda.is_bf16_supported() else "float32"
    autocast = (torch.autocast(device.type, dtype=getattr(torch, dtype)) if dtype != "float32"
                else contextlib.nullcontext())
    return Run(device, autocast, rank, world)


JOIN_TIMEOUT = timedelta(minutes=10)  # torchrun starts every process at once: one not there by then is not coming


def fresh_store(rank, world):
    """The key-value store of the processes' rendezvous, under a prefix that no earlier launch has written to.

    torchrun's agent keeps one store for all the launches it makes (--max-restarts), and what a launch wrote stays
    there: a restarted process that read its peers' addresses from it would connect to processes that are gone,
    and fail or wait. Rank 0 names a fresh prefix and gives it to each rank at a key that only this launch of
    that rank knows (a random nonce), until every rank has taken it.
    """
    store, _, _ = next(dist.rendezvous("env://", rank, world, timeout=JOIN_TIMEOUT))
    if rank > 0:
        nonce = uuid.uuid4().hex
        store.set(f"coconut/hello/{rank}", nonce)
        prefix = store.get(f"coconut/reply/{nonce}").decode()
        store.add(f"{prefix}/joined", 1)
        return dist.PrefixStore(prefix, store)
    prefix, deadline = f"coconut/{uuid.uuid4().hex}", time.monotonic() + JOIN_TIMEOUT.total_seconds()
    while (joined := store.add(f"{prefix}/joined", 0)) < world - 1:
        if time.monotonic() > deadline:
            raise OSError(f"only {joined} of the {world - 1} other processes joined within {JOIN_TIMEOUT}")
        for r in range(1, world):  # the hello of an earlier launch gets an answer too, which no one reads
            if store.check([f"coconut/hello/{r}"]):
                store.set(f"coconut/reply/{store.get(f'coconut/hello/{r}').decode()}", prefix)
        time.sleep(0.05)
    return dist.PrefixStore(prefix, store)


def end_with_parent():
    """SIGTERM this process when its parent (torchrun's agent) is gone: killed, it could not pass on a signal,
    and its processes, each in a session of its own, would otherwise run on."""
    parent = os.getppid()

    def watch():
        while os.getppid() == parent:
            time.sleep(1)
        os.kill(os.getpid(), signal.SIGTERM)

    threading.Thread(target=watch, daemon=True).start()


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
    """A progress bar on rank 0's terminal; none when the output goes to a file (a log wants lines, not redraws)."""
    from tqdm import tqdm
    return tqdm(iterable, desc=desc, leave=False, disable=rank() != 0 or not sys.stderr.isatty())


def to_terminal():
    """Whether this process's progress goes to a terminal (bars), rather than to a file (lines)."""
    return sys.stderr.isatty()


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
    """End the program with one line and exit status 1 on a ValueError, OSError or RunError, or when a process
    of the run is lost; the process group, if any, is left cleanly either way. Before the process group exists
    every rank has read the same flags, so that rank 0 speaks for all, as it does for a RunError and for a lost
    process (which, if it could, said why itself)."""
    try:
        yield
    except RunError as e:
        sys.exit(f"error: {e}" if rank() == 0 else 1)
    except (ValueError, OSError) as e:
        sys.exit(f"error: {e}" if rank() == 0 or dist.is_initialized() else 1)
    except RuntimeError as e:
        # Gloo tells of a peer gone in a plain RuntimeError from its transport; NCCL and the store, in a DistError.
        if not (isinstance(e, dist.DistError) or "gloo/transport/" in str(e)):
            raise
        sys.exit(f"error: lost contact with a process of the run: {reason(e)}" if rank() == 0 else 1)
    finally:
        if dist.is_initialized():
            # A DistributedDataParallel that is garbage but in a reference cycle still holds the process group:
            # collected now, it goes before the group does, not while the interpreter shuts down (which can abort).
            gc.collect()
            dist.destroy_process_group()


def reason(e):
    """What went wrong, in one line: an OSError's words without its path, else the error's first line."""
    return getattr(e, "strerror", None) or (str(e).strip().splitlines() or [type(e).__name__])[0]


def parse_bool(s):
    if s.lower() not in ("true", "false", "1", "0"):
        raise argparse.ArgumentTypeError(f"expected true or false, got {s!r}")
    return s.lower() in ("true", "1")


# -----------------------------------------------------------------------------------------------------------
# Preemption: SIGTERM (what SLURM and Kubernetes send before they kill, and what torchrun passes on to its
# processes) and SIGUSR1 (what SLURM's --signal sends ahead of the time limit) ask a run to stop after the step
# in flight, with `latest` written.

class Preemption:
    """While open, catches SIGTERM and SIGUSR1, and says when every rank stops: after one and the same step."""

    def __enter__(self):
        self.signal = 0  # the signal caught, 0 while none
        self.pending = None  # the last step's vote, still on its way: (work, vote)
        # Caught from before the group of the votes exists, which every rank joins: once a rank speaks, all catch.
        self.previous = {s: signal.signal(s, self.catch) for s in (signal.SIGTERM, signal.SIGUSR1)}
        self.group = dist.new_group(backend="gloo") if dist.is_initialized() else None
        return self

    def __exit__(self, *exc):
        for s, handler in self.previous.items():
            signal.signal(s, handler)

    def catch(self, signum, frame):
        self.signal = signum

    def agreed(self, wait=False):
        """The signal that every rank stops for now (0: none); every rank calls it after every step.

        The ranks' votes are max-reduced on the CPU (gloo) in the background, and a step's vote is read after the
        next step, when it is long in: the check never waits for a GPU (reading a result on it would, at every
        step) nor for another rank. N processes stop one step later than one does, and lose nothing for it.
        wait=True (at the end of an epoch, with no step in flight) counts this call's vote now instead.
        """
        if self.group is None:
            return self.signal
        vote = torch.tensor(self.signal)
        work = dist.all_reduce(vote, dist.ReduceOp.MAX, group=self.group, async_op=True)
        if wait:  # this vote supersedes the one pending
            work.wait()
            self.pending = None
            return int(vote)
        previous, self.pending = self.pending, (work, vote)
        if previous is None:
            return 0
        previous[0].wait()
        return int(previous[1])


# -----------------------------------------------------------------------------------------------------------
# Checkpoints

def save_checkpoint(out_dir, name, gpt, optimizer, cfg, state):
    """Write a checkpoint and point out_dir/<name> at it; a crash at any moment leaves the old one valid, and a
    write that fails leaves it valid too, removes what it wrote, and raises an OSError that says why."""
    out_dir = Path(out_dir)
    # Named for where training stands, as the run's lines count: after step s of epoch e, or at the end of epoch e.
    done = state["step"] == 0  # a checkpoint at step 0 of an epoch is the end of the one before
    target = f"ckpt-{state['epoch'] - done:03d}-" + ("end" if done else f"{state['step']:06d}")
    tmp, link = out_dir / f".{target}.tmp", out_dir / f".{name}.tmp"
    try:
        if not (out_dir / target).is_dir():
            shutil.rmtree(tmp, ignore_errors=True)
            tmp.mkdir(parents=True)
            gpt.save(tmp)
            # Serialized in memory first: a write that fails then says why (torch.save's writer says "enforce fail").
            buffer = io.BytesIO()
            torch.save(optimizer.state_dict(), buffer)
            (tmp / "optimizer.pt").write_bytes(buffer.getbuffer())
            (tmp / "run.json").write_text(json.dumps(cfg, indent=2) + "\n")
            (tmp / "state.json").write_text(json.dumps(state, indent=2) + "\n")
            os.replace(tmp, out_dir / target)
        link.unlink(missing_ok=True)
        link.symlink_to(target)
        os.replace(link, out_dir / name)  # atomic: `name` is the old checkpoint or the new one, never half of one
    except (OSError, SafetensorError) as e:
        shutil.rmtree(tmp, ignore_errors=True)
        link.unlink(missing_ok=True)
        raise OSError(f"{out_dir}: could not write checkpoint {target} ({reason(e)}); `{name}` is left as it was") from e
    finally:  # what neither link points at, a checkpoint just written but not published included
        referenced = {os.readlink(out_dir / n) for n in ("latest", "best") if (out_dir / n).is_symlink()}
        for old in out_dir.glob("ckpt-*"):
            if old.name not in referenced:
                shutil.rmtree(old, ignore_errors=True)


STATE_FIELDS = {"epoch": int, "step": int, "stage": int, "best_accuracy": (float, type(None))}


def load_state(path):
    """run.json and state.json of a checkpoint, with one clear error naming the file if either is missing, broken
    or not what a checkpoint holds."""
    path = Path(path)

    def read(name):
        try:
            return json.loads((path / name).read_text())
        except (OSError, ValueError) as e:
            raise ValueError(f"{path / name}: not a readable checkpoint file ({reason(e)})") from e

    run, state = read("run.json"), read("state.json")
    if not isinstance(run, dict):
        raise ValueError(f"{path / 'run.json'}: not a run's config (a JSON object)")
    wrong = [k for k, kind in STATE_FIELDS.items() if not isinstance(state, dict) or not isinstance(state.get(k), kind)]
    if wrong:
        raise ValueError(f"{path / 'state.json'}: not a curriculum position: {', '.join(wrong)} missing or mistyped")
    return run, state


def load_optimizer(path, optimizer, device):
    """The optimizer state of a checkpoint, with one clear error if it is missing, broken or for other parameters."""
    file = Path(path) / "optimizer.pt"
    try:
        optimizer.load_state_dict(torch.load(file, map_location=device, weights_only=True))  # runs no code from it
    except (OSError, RuntimeError, ValueError, KeyError, TypeError, EOFError, pickle.UnpicklingError) as e:
        raise ValueError(f"{file}: not a readable optimizer state for this model ({reason(e)})") from e
    for group in optimizer.param_groups:
        for p in group["params"]:
            for key, value in optimizer.state[p].items():
                if torch.is_tensor(value) and value.dim() and value.shape != p.shape:
                    raise ValueError(f"{file}: {key} has shape {tuple(value.shape)}, for a parameter of shape "
                                     f"{tuple(p.shape)}: the optimizer state of another model")
