"""Runs that survive a cluster: one command starts a run and continues it; a signal stops it after the step in
flight with `latest` written; torchrun's --max-restarts recovers from a killed process; a broken checkpoint or one
that cannot be written stops the run with one line, the last good checkpoint intact. Each run that goes on ends
as the uninterrupted run does: bit for bit in one process, within the usual tolerance under torchrun."""
import errno
import json
import os
import queue
import resource
import shutil
import signal
import subprocess
import sys
import threading
import time
from pathlib import Path

import pytest
import torch

import common
import train
from coconut import load_gpt
from test_train import ROOT, TINY, free_port, max_difference, weights

# 12 records, 6 steps per epoch, 2 epochs; --resume from the first launch on. At the lr that makes N processes equal
# one (see test_train.SHARDED), and each process's share of a step (1 sequence) one micro-batch of one process.
RESUMABLE = [*TINY, "--batch_size", "2", "--micro_batch_size", "1", "--epochs", "2", "--uniform_prob", "0.5",
             "--val_examples", "2", "--lr", "1e-4", "--resume"]
STEPS_PER_EPOCH = 6


class Launch:
    """train.py in the background, in one process or under torchrun, its output collected as it comes."""

    def __init__(self, *args, nproc=1, max_restarts=0, preexec_fn=None):
        args = [str(a) for a in args]
        torchrun = [sys.executable, "-m", "torch.distributed.run", f"--nproc_per_node={nproc}",
                    f"--max-restarts={max_restarts}", "--rdzv-backend=c10d", f"--rdzv-endpoint=127.0.0.1:{free_port()}"]
        command = [*(torchrun if nproc > 1 else [sys.executable]), "train.py", *args]
        self.marker = args[args.index("--out_dir") + 1]  # in the command line of every process of this launch
        self.proc = subprocess.Popen(command, cwd=ROOT, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
                                     env=dict(os.environ, OMP_NUM_THREADS="1"), start_new_session=True,
                                     preexec_fn=preexec_fn)
        self.lines, self.stdout, self.stderr = queue.Queue(), [], []
        self.readers = [threading.Thread(target=self.read, args=(stream, kept), daemon=True)
                        for stream, kept in ((self.proc.stdout, self.stdout), (self.proc.stderr, self.stderr))]
        for reader in self.readers:
            reader.start()

    def read(self, stream, kept):
        for line in stream:
            kept.append(line)
            self.lines.put(line)

    def wait_for(self, text, timeout=120):
        """The first line of output that holds text."""
        deadline = time.time() + timeout
        while text not in (line := self.lines.get(timeout=max(deadline - time.time(), 0.01))):
            pass
        return line

    def finish(self, timeout=300):
        """Exit status, stdout and stderr, once every process of the launch is gone: past the timeout, killed, and
        those still there 30 s after the launch ended (torchrun's end with it: common.end_with_parent) are noted in
        left_behind, then killed too, so that nothing outlives a test."""
        try:
            self.proc.wait(timeout=timeout)
        finally:
            if self.proc.poll() is None:
                os.killpg(self.proc.pid, signal.SIGKILL)
            self.proc.wait()
            for reader in self.readers:
                reader.join(timeout=30)
            deadline = time.time() + 30
            while (left := processes_with(self.marker)) and time.time() < deadline:
                time.sleep(0.2)
            self.left_behind = left
            for pid in left:
                os.kill(pid, signal.SIGKILL)
        return self.proc.returncode, "".join(self.stdout), "".join(self.stderr)


def processes_with(text):
    """The processes whose command line holds text (Linux)."""
    found = []
    for proc in Path("/proc").iterdir():
        try:
            if proc.name.isdigit() and text.encode() in (proc / "cmdline").read_bytes():
                found.append(int(proc.name))
        except OSError:  # gone meanwhile
            pass
    return found


def worker(launch, rank):
    """The pid of the process of a torchrun launch that has this rank."""
    for pid in processes_with(launch.marker):
        try:
            env = Path(f"/proc/{pid}/environ").read_bytes().split(b"\0")
        except OSError:
            continue
        if b"TORCHELASTIC_RUN_ID" in b"".join(env) and f"RANK={rank}".encode() in env:
            return pid
    raise AssertionError(f"no process of rank {rank}")


def position(out):
    return json.loads((Path(out) / "latest" / "state.json").read_text())


@pytest.fixture(scope="module")
def uninterrupted(tmp_path_factory, data_dir):
    out = tmp_path_factory.mktemp("uninterrupted")
    code, stdout, stderr = Launch(*RESUMABLE, "--data_dir", data_dir, "--out_dir", out).finish()
    assert code == 0, stderr
    assert stdout.startswith(f"starting a run in {out}")  # --resume with nothing to resume: the first line says so
    return weights(out)


# -----------------------------------------------------------------------------------------------------------
# Preemption and restarts

@pytest.mark.parametrize("signum", [signal.SIGTERM, signal.SIGUSR1], ids=lambda s: s.name)
def test_a_signal_stops_after_the_step_in_flight_and_the_same_command_ends_bit_identical(tmp_path, data_dir,
                                                                                          uninterrupted, signum):
    out, args = tmp_path / "run", [*RESUMABLE, "--data_dir", data_dir, "--out_dir", tmp_path / "run"]
    first = Launch(*args)
    first.wait_for("starting a run")  # then it reads its data and builds its model: the signal comes before a step
    first.proc.send_signal(signum)
    code, stdout, stderr = first.finish()
    stopped = position(out)
    assert code == 128 + signum, stderr
    assert stopped["epoch"] == 0 and 0 < stopped["step"] < STEPS_PER_EPOCH  # mid-epoch: the step it reached
    assert f"stopped by {signum.name} at epoch 0, step {stopped['step']}, with `latest` written" in stdout
    assert "Traceback" not in stderr
    code, stdout, stderr = Launch(*args).finish()
    assert code == 0, stderr
    assert stdout.startswith(f"continuing the run in {out}") and f"epochs 0..1 from step {stopped['step']}" in stdout
    resumed = weights(out)
    assert all(torch.equal(uninterrupted[k], resumed[k]) for k in uninterrupted)


def test_sigterm_to_torchrun_stops_both_processes_after_one_step_and_they_resume(tmp_path, data_dir, uninterrupted):
    out, args = tmp_path / "run", [*RESUMABLE, "--data_dir", data_dir, "--out_dir", tmp_path / "run"]
    first = Launch(*args, nproc=2)
    first.wait_for("starting a run")
    first.proc.send_signal(signal.SIGTERM)  # torchrun's agent passes it on to its processes
    code, stdout, stderr = first.finish()
    stopped = position(out)
    assert code != 0 and stopped["epoch"] == 0 and 0 < stopped["step"] < STEPS_PER_EPOCH, stderr[-3000:]
    assert f"stopped by SIGTERM at epoch 0, step {stopped['step']}" in stdout and not first.left_behind
    code, stdout, stderr = Launch(*args, nproc=2).finish()
    assert code == 0, stderr[-3000:]
    assert stdout.startswith(f"continuing the run in {out}: device cpu, 2 process(es)")
    assert "Warning" not in stderr  # a normal torchrun run warns of nothing
    assert max_difference(uninterrupted, weights(out)) <= 1e-5


def test_processes_whose_torchrun_dies_stop_by_themselves_with_latest_written(tmp_path, data_dir):
    """SIGUSR1 kills torchrun's agent unless it is told to pass it on (SLURM's --signal without B: sends it to every
    process): its processes, each in a session of its own, notice that it is gone and stop as for a SIGTERM."""
    out = tmp_path / "run"
    launch = Launch(*RESUMABLE, "--data_dir", data_dir, "--out_dir", out, "--epochs", "6", nproc=2)
    launch.wait_for("steps per epoch")  # past the set-up, which needs the agent (it holds the processes' store)
    launch.proc.send_signal(signal.SIGUSR1)
    code, stdout, stderr = launch.finish()
    assert code == -signal.SIGUSR1  # the agent died of it
    stopped = position(out)
    assert stopped["epoch"] < 6, stderr[-3000:]
    assert f"stopped by SIGTERM at epoch {stopped['epoch']}, step {stopped['step']}" in stdout
    assert not launch.left_behind


def test_torchrun_restarts_a_killed_process_and_ends_as_the_uninterrupted_run(tmp_path, data_dir, uninterrupted):
    out = tmp_path / "run"
    launch = Launch(*RESUMABLE, "--data_dir", data_dir, "--out_dir", out, "--ckpt_every", "1", nproc=2, max_restarts=1)
    deadline = time.time() + 120
    while not (out / "latest").exists():
        assert launch.proc.poll() is None and time.time() < deadline, "the run ended before a checkpoint"
        time.sleep(0.02)
    os.kill(worker(launch, rank=1), signal.SIGKILL)
    start = time.time()
    code, stdout, stderr = launch.finish()
    assert code == 0, stderr[-3000:]  # the restarted processes took over from `latest`, and finished
    assert stdout.count("starting a run") == 1 and stdout.count("continuing the run") == 1
    assert stderr.count("error: ") <= 1  # the survivor's line, if it saw the loss before torchrun stopped it
    assert time.time() - start < 120 and not launch.left_behind
    assert max_difference(uninterrupted, weights(out)) <= 1e-5


# -----------------------------------------------------------------------------------------------------------
# Checkpoints: every fault of a file is one line that names it; a write that fails keeps the last good one

@pytest.fixture(scope="module")
def stopped_run(tmp_path_factory, data_dir):
    """A run stopped after one step: its `latest` is ckpt-000-000001."""
    out = tmp_path_factory.mktemp("stopped") / "run"
    train.main([*RESUMABLE, "--data_dir", str(data_dir), "--out_dir", str(out), "--max_steps", "1"])
    return out


def copy_of(run, tmp_path):
    shutil.copytree(run, tmp_path / "run", symlinks=True)
    return tmp_path / "run"


def optimizer_of_another_model(path):
    """AdamW's state after a step of a GPT twice as narrow: as many tensors, other shapes."""
    gpt = load_gpt("scratch", tokens=range(100), n_layer=2, n_head=2, n_embd=16)
    optimizer = torch.optim.AdamW(gpt.parameters())
    for p in gpt.parameters():
        p.grad = torch.ones_like(p)
    optimizer.step()
    torch.save(optimizer.state_dict(), path)


BREAK = {
    "missing": lambda path: path.unlink(),
    "truncated": lambda path: path.write_bytes(path.read_bytes()[:len(path.read_bytes()) // 2]),
    "without a step": lambda path: path.write_text(json.dumps({**json.loads(path.read_text()), "step": None})),
    "of another model": optimizer_of_another_model,
}


@pytest.mark.parametrize("file, fault, message", [
    ("model.safetensors", "truncated", "not a readable checkpoint file (Error while deserializing header"),
    ("model.json", "truncated", "not a readable checkpoint file ("),  # a JSON error
    ("optimizer.pt", "missing", "not a readable optimizer state for this model (No such file or directory)"),
    ("optimizer.pt", "truncated", "not a readable optimizer state for this model (PytorchStreamReader failed"),
    ("optimizer.pt", "of another model", "exp_avg has shape (100, 16), for a parameter of shape"),
    ("run.json", "truncated", "not a readable checkpoint file ("),
    ("state.json", "missing", "not a readable checkpoint file (No such file or directory)"),
    ("state.json", "without a step", "not a curriculum position: step missing or mistyped"),
])
def test_a_broken_checkpoint_file_is_one_line_that_names_it(tmp_path, data_dir, stopped_run, file, fault, message):
    out = copy_of(stopped_run, tmp_path)
    BREAK[fault](out / "latest" / file)
    with pytest.raises(SystemExit) as stop:
        train.main([*RESUMABLE, "--data_dir", str(data_dir), "--out_dir", str(out)])
    assert stop.value.code.startswith(f"error: {out / 'latest' / file}: ") and message in stop.value.code


def test_a_truncated_optimizer_state_ends_the_process_with_one_line(tmp_path, data_dir, stopped_run):
    out = copy_of(stopped_run, tmp_path)
    BREAK["truncated"](out / "latest" / "optimizer.pt")
    code, _, stderr = Launch(*RESUMABLE, "--data_dir", data_dir, "--out_dir", out).finish()
    assert code == 1 and stderr.startswith("error: ") and len(stderr.strip().splitlines()) == 1, stderr
    assert "optimizer.pt: not a readable optimizer state" in stderr


def assert_latest_is_the_last_good_one(out):
    """`latest` is still the checkpoint of step 1, it loads, and nothing of the failed write is left."""
    latest = out / "latest"
    assert os.readlink(latest) == "ckpt-000-000001" and position(out)["step"] == 1
    gpt = load_gpt(latest)
    common.load_optimizer(latest, torch.optim.AdamW(gpt.parameters()), torch.device("cpu"))
    assert sorted(p.name for p in out.iterdir() if p.name.startswith((".", "ckpt-"))) == ["ckpt-000-000001"]


@pytest.mark.parametrize("failing", ["model.safetensors", "optimizer.pt"])
def test_a_full_disk_stops_the_run_with_one_line_and_keeps_the_last_checkpoint(tmp_path, data_dir, stopped_run,
                                                                               failing):
    out = copy_of(stopped_run, tmp_path)
    # A limit on the size of any file this process writes (which binds root too): the next checkpoint cannot be
    # written past the weights (the limit below them), or past the optimizer state (between the two).
    sizes = {f: (out / "latest" / f).stat().st_size for f in ("model.safetensors", "optimizer.pt")}
    limit = sizes["model.safetensors"] // 2 if failing == "model.safetensors" else sum(sizes.values()) // 2
    assert limit > 100_000 and (failing == "model.safetensors") == (limit < sizes["model.safetensors"])

    def full_disk():
        resource.setrlimit(resource.RLIMIT_FSIZE, (limit, limit))  # Python ignores SIGXFSZ: a write gets EFBIG

    launch = Launch(*RESUMABLE, "--data_dir", data_dir, "--out_dir", out, "--ckpt_every", "1", preexec_fn=full_disk)
    code, _, stderr = launch.finish()
    [error] = [line for line in stderr.splitlines() if line.startswith("error: ")]  # after its progress bar
    assert code == 1 and "Traceback" not in stderr, stderr
    assert error.startswith(f"error: {out}: could not write checkpoint ckpt-000-000002 (") and "File too large" in error
    assert_latest_is_the_last_good_one(out)


@pytest.mark.parametrize("failing", ["mkdir", "symlink_to"])
def test_a_directory_without_write_permission_keeps_the_last_checkpoint(tmp_path, stopped_run, monkeypatch, failing):
    """A read-only directory, simulated where a write is refused (root writes through chmod): creating the new
    checkpoint's directory, or publishing it once written."""
    out = copy_of(stopped_run, tmp_path)
    cfg, state = common.load_state(out / "latest")
    gpt = load_gpt(out / "latest")
    optimizer = torch.optim.AdamW(gpt.parameters())
    common.load_optimizer(out / "latest", optimizer, torch.device("cpu"))

    def refuse(path, *args, **kwargs):
        raise PermissionError(errno.EACCES, "Permission denied", str(path))

    monkeypatch.setattr(Path, failing, refuse)
    with pytest.raises(OSError, match=rf"^{out}: could not write checkpoint ckpt-000-000002 \(Permission denied\); "
                                      r"`latest` is left as it was$"):
        common.save_checkpoint(out, "latest", gpt, optimizer, cfg, dict(state, step=2))
    monkeypatch.undo()
    assert_latest_is_the_last_good_one(out)
