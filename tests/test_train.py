"""train.py: it learns, it follows the schedule, its loss does not depend on how a step is split, it resumes
exactly, and N processes (on one machine or two) equal one."""
import contextlib
import json
import os
import signal
import socket
import subprocess
import sys
import threading
import time
from pathlib import Path

import pytest
import torch
from safetensors.torch import load_file

import train
from coconut import Coconut, load_gpt
from common import Run, prefetch
from data import collate, load_dataset, tokenize, vocabulary
from recipes import PRESETS, curriculum

ROOT = Path(__file__).resolve().parents[1]
# A tiny GPT from scratch on a few real ProsQA records; dropout and stage mixing on, so that resuming and
# sharding must restore every random draw, not only the weights.
TINY = ["--dataset", "prosqa", "--init_from", "scratch", "--n_layer", "2", "--n_head", "2", "--n_embd", "32",
        "--max_latent_stage", "2", "--epochs_per_stage", "1", "--lr", "3e-3", "--max_new_tokens", "8",
        "--device", "cpu", "--dtype", "float32"]


def run(*args, timeout=300):
    return subprocess.run([sys.executable, "train.py", *args], cwd=ROOT, capture_output=True, text=True, timeout=timeout)


def free_port():
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def torchrun(*args, nproc=2, nnodes=1, timeout=300):
    """train.py under torchrun: nproc processes on each of nnodes "machines" (launches) on 127.0.0.1, the first
    of which hosts the rendezvous."""
    env = dict(os.environ, OMP_NUM_THREADS="1")
    port = free_port()
    launches = []
    for node in range(nnodes):
        rdzv = [f"--nnodes={nnodes}", "--rdzv-backend=c10d", f"--rdzv-endpoint=127.0.0.1:{port}",
                f"--rdzv-conf=is_host={int(node == 0)}", "--local-addr=127.0.0.1"]
        launches.append(subprocess.Popen([sys.executable, "-m", "torch.distributed.run", f"--nproc_per_node={nproc}",
                                          *rdzv, "train.py", *args], cwd=ROOT, stdout=subprocess.PIPE,
                                         stderr=subprocess.PIPE, text=True, env=env, start_new_session=True))
    try:
        outs = [p.communicate(timeout=timeout) for p in launches]
    finally:
        for p in launches:  # nothing outlives the test, even when it fails
            if p.poll() is None:
                os.killpg(p.pid, signal.SIGKILL)
    return [subprocess.CompletedProcess(p.args, p.returncode, out, err) for p, (out, err) in zip(launches, outs)]


def weights(out_dir, name="latest"):
    return load_file(Path(out_dir) / name / "model.safetensors")


def max_difference(a, b):
    return max((a[k] - b[k]).abs().max().item() for k in a)


def test_overfits_a_handful_through_the_stages(tmp_path, data_dir, capsys):
    out = tmp_path / "run"
    train.main([*TINY, "--data_dir", str(data_dir), "--out_dir", str(out), "--train_examples", "2", "--n_embd", "64",
                "--max_latent_stage", "1", "--batch_size", "1", "--micro_batch_size", "1", "--epochs", "75",
                "--epochs_per_stage", "25", "--val_examples", "1", "--dropout", "0", "--reset_optimizer", "never"])
    rows = [json.loads(line) for line in (out / "metrics.jsonl").read_text().splitlines()]
    losses, stages = [r["train_loss"] for r in rows], [r["stage"] for r in rows]
    assert stages == [0] * 25 + [1] * 25 + [2] * 25  # CoT, one step as a thought, then the final stage
    assert losses[0] > 3 and losses[24] < 0.2  # stage 0 (CoT) is learnt
    assert losses[25] > 2 * losses[24]  # a new stage is a new task: the loss jumps...
    assert losses[49] < 0.06 and losses[74] < 0.02  # ...and falls to near zero again, through the thoughts
    state = json.loads((out / "best" / "state.json").read_text())
    assert state["stage"] == 2  # the best is chosen at the final stage only
    # The checkpoints are named as the run's lines count epochs: `best` after epoch e is ckpt-<e>-end.
    best = state["epoch"] - 1
    assert os.readlink(out / "best") == f"ckpt-{best:03d}-end" and os.readlink(out / "latest") == "ckpt-074-end"
    assert f"best checkpoint of epoch {best}, stage 2" in capsys.readouterr().out
    assert json.loads((out / "test.json").read_text())["n"] == 4
    if (out / "metrics.png").exists() or importlib_has("matplotlib"):
        assert (out / "metrics.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"


def test_icot_keeps_an_epoch_that_removed_every_cot_token(tmp_path, data_dir):
    # Epoch 0 writes the whole CoT, epoch 1 none of it. An untrained model answers neither, so that the first epoch
    # would stay the best if every icot epoch competed: the best must be epoch 1, as in the authors' code.
    out = tmp_path / "icot"
    train.main([*TINY, "--method", "icot", "--icot_tokens_per_stage", "1000", "--data_dir", str(data_dir),
                "--out_dir", str(out), "--train_examples", "2", "--val_examples", "1", "--epochs", "2", "--lr", "0"])
    assert [json.loads(line)["val_accuracy"] for line in (out / "metrics.jsonl").read_text().splitlines()] == [0, 0]
    assert json.loads((out / "best" / "state.json").read_text())["stage"] == 1


def importlib_has(name):
    import importlib.util
    return importlib.util.find_spec(name) is not None


@pytest.mark.parametrize("dataset", list(PRESETS))
def test_stage_schedule_and_optimizer_resets_follow_the_presets(dataset):
    cfg = train.resolve_config(train.parse_args(["--dataset", dataset]))
    cur = curriculum(cfg)
    epochs = range(cfg["start_epoch"], cfg["epochs"])
    stages = [cur.stage(e) for e in epochs]
    if dataset == "gsm8k":  # from the CoT checkpoint at epoch 3, 3 epochs for each of stages 1, 2, 3
        assert stages == [1] * 3 + [2] * 3 + [3] * 3 + [4] * 13 and cfg["cot_epochs"] == 25
    elif dataset in ("prosqa", "prontoqa"):  # 5 epochs per stage: CoT, stages 1..6, then the final stage
        assert stages == [s for s in range(7) for _ in range(5)] + [7] * 15
    assert stages[-1] == cur.final_stage
    # The authors' code re-creates AdamW every epoch; the paper's alternative at stage switches only.
    if dataset in ("gsm8k", "prosqa", "prontoqa"):
        assert cfg["reset_optimizer"] == "epoch"
    by_epoch, by_stage = dict(cfg, reset_optimizer="epoch"), dict(cfg, reset_optimizer="stage")
    assert [train.resets_optimizer(by_epoch, cur, e) for e in epochs] == [e > cfg["start_epoch"] for e in epochs]
    assert [e for e in epochs if train.resets_optimizer(by_stage, cur, e)] == \
        [e for e in epochs[1:] if cur.stage(e) != cur.stage(e - 1)]
    assert not any(train.resets_optimizer(dict(cfg, reset_optimizer="never"), cur, e) for e in epochs)


@pytest.mark.parametrize("baseline", ["cot", "no_cot"])
def test_the_latent_search_baselines_train_as_many_epochs_as_coconut(baseline):
    coconut = train.resolve_config(train.parse_args(["--dataset", "reachability"]))
    written = train.resolve_config(train.parse_args(["--dataset", "reachability", "--method", baseline]))
    assert written["cot_epochs"] == 0 and written["start_epoch"] == 0
    assert written["epochs"] == coconut["cot_epochs"] + coconut["epochs"] - coconut["start_epoch"]


@pytest.mark.parametrize("baseline", ["cot", "no_cot"])
def test_the_gsm8k_baselines_train_the_cot_phase_from_epoch_0(baseline):
    coconut = train.resolve_config(train.parse_args(["--dataset", "gsm8k"]))
    written = train.resolve_config(train.parse_args(["--dataset", "gsm8k", "--method", baseline]))
    assert written["cot_epochs"] == 0 and written["start_epoch"] == 0 and written["epochs"] == coconut["cot_epochs"] == 25


def test_resuming_with_other_settings_names_them(tmp_path, data_dir, capsys):
    args = [*TINY, "--data_dir", str(data_dir), "--out_dir", str(tmp_path), "--batch_size", "4", "--micro_batch_size", "4",
            "--val_examples", "1", "--epochs", "1", "--max_steps", "1"]
    train.main(args)
    capsys.readouterr()
    train.main([*args, "--resume"])
    assert "continuing with settings" not in capsys.readouterr().out
    train.main([*args, "--resume", "--epochs", "2", "--lr", "1e-3"])
    assert "continuing with settings other than the checkpoint's: epochs 1 -> 2, lr 0.003 -> 0.001" in capsys.readouterr().out


def test_optimizer_reset_takes_effect(tmp_path, data_dir):
    for policy, steps in (("epoch", 3), ("never", 9)):  # 3 epochs of 3 steps
        out = tmp_path / policy
        train.main([*TINY, "--data_dir", str(data_dir), "--out_dir", str(out), "--batch_size", "4",
                    "--micro_batch_size", "4", "--epochs", "3", "--val_examples", "1", "--reset_optimizer", policy])
        state = torch.load(out / "latest" / "optimizer.pt", weights_only=True)["state"]
        assert state[0]["step"].item() == steps


# -----------------------------------------------------------------------------------------------------------
# The loss of a step, however it is split

@pytest.mark.parametrize("n, world, micro, sizes", [
    (128, 8, 32, [[16]] * 8),             # the gsm8k preset on 8 GPUs: every one busy, with 16 sequences
    (128, 1, 32, [[32, 32, 32, 32]]),
    (8, 4, 2, [[2]] * 4),                 # 4 processes, 2 micro-batches of the old split: all busy now
    (8, 2, 3, [[3, 1], [3, 1]]),
    (5, 4, 32, [[2], [1], [1], [1]]),     # an epoch's last, smaller step: shares differ by one at most
    (3, 4, 32, [[1], [1], [1], []]),      # fewer sequences than processes: train_step makes up a weightless one
])
def test_every_process_gets_an_even_share(n, world, micro, sizes):
    shares = [train.micro_batches(n, rank, world, micro) for rank in range(world)]
    assert [[end - start for start, end in share] for share in shares] == sizes
    flat = [r for share in shares for r in share]
    assert [i for start, end in flat for i in range(start, end)] == list(range(n))  # each sequence once, in order


def test_prefetch_yields_every_item_in_order_and_builds_the_next_one_meanwhile():
    started = [threading.Event() for _ in range(5)]

    def build(i):
        started[i].set()
        return i * i

    seen = []
    for i, item in enumerate(prefetch(map(build, range(5)))):
        seen.append(item)
        if i < 4:  # the next item is built while the caller still works on this one
            assert started[i + 1].wait(timeout=10)
    assert seen == [0, 1, 4, 9, 16]

    def fails(i):
        raise ValueError(f"bad record {i}")

    with pytest.raises(ValueError, match="bad record 0"):  # an error in the background reaches the caller
        list(prefetch(map(fails, range(3))))


class Capture:
    """An optimizer that keeps the gradients of its step instead of applying them."""
    def __init__(self, params):
        self.params, self.grads = list(params), None

    def step(self):
        self.grads = [p.grad.clone() for p in self.params]

    def zero_grad(self, set_to_none=True):
        for p in self.params:
            p.grad = None


def test_loss_groups_make_the_step_independent_of_its_split(fixtures):
    """Micro-batch sizes and process counts change how a step is computed, not its loss or its gradients; and the
    loss is the mean over groups of each group's token mean, computed here from its definition."""
    records = load_dataset("prosqa", "valid", data_dir=fixtures / "prosqa")[:8]
    tokenized, _ = tokenize(records)
    torch.manual_seed(0)
    gpt = load_gpt("scratch", dropout=0.0, tokens=vocabulary([records]), n_layer=2, n_head=2, n_embd=32)
    model, capture = Coconut(gpt), Capture(gpt.parameters())
    cfg = dict(batch_size=8, loss_group=3, seed=0, uniform_prob=0.5)
    cur = curriculum(dict(PRESETS["prosqa"], method="coconut", max_latent_stage=2, pad_latent_to_max=True,
                          uniform_prob=0.5, icot_tokens_per_stage=8))
    examples, weights = train.step_sequences(tokenized, list(range(8)), cur, 1, cfg, epoch=0, step=0)
    assert len({e.n_latents for e in examples}) > 1  # stage mixing: rows at several stages

    with torch.no_grad():  # the definition: groups of 3, 3 and 2 sequences, each one's token mean, averaged
        group_means = [model(collate(examples[g:g + 3])).mean() for g in (0, 3, 6)]
        definition = sum(group_means) / 3

    def step(micro_batch_size, world):
        """The gradients of a step split over `world` processes, summed as DistributedDataParallel sums them."""
        grads, loss = None, 0.0
        for rank in range(world):
            mine = train.micro_batches(8, rank, world, micro_batch_size)
            share = train.prepare(examples, weights, mine, [0] * len(mine))
            share_loss, _ = train.train_step(model, contextlib.nullcontext, capture, share,
                                             Run(torch.device("cpu"), contextlib.nullcontext(), rank, world))
            loss += share_loss.item()
            grads = capture.grads if grads is None else [g + h for g, h in zip(grads, capture.grads)]
        return loss, [g / world for g in grads]  # DistributedDataParallel averages the processes' gradients

    loss, reference = step(8, 1)
    assert loss == pytest.approx(definition.item(), rel=1e-6)
    for micro_batch_size, world in ((3, 1), (1, 1), (4, 2), (2, 2), (1, 8)):
        loss, grads = step(micro_batch_size, world)
        assert loss == pytest.approx(definition.item(), rel=1e-6), (micro_batch_size, world)
        for g, r in zip(grads, reference):
            assert (g - r).norm() <= 1e-5 * r.norm(), (micro_batch_size, world)


# -----------------------------------------------------------------------------------------------------------
# Resuming, and many processes

def test_killed_and_resumed_equals_uninterrupted(tmp_path, data_dir):
    args = [*TINY, "--data_dir", str(data_dir), "--batch_size", "4", "--micro_batch_size", "2", "--epochs", "4",
            "--uniform_prob", "0.5", "--val_examples", "2", "--ckpt_every", "1"]
    full = run(*args, "--out_dir", str(tmp_path / "full"))
    assert full.returncode == 0, full.stderr
    # Kill -9 the same run once a mid-epoch checkpoint exists, then resume it.
    out = tmp_path / "killed"
    proc = subprocess.Popen([sys.executable, "train.py", *args, "--out_dir", str(out)], cwd=ROOT,
                            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    deadline = time.time() + 120
    while not (out / "latest").exists() or json.loads((out / "latest" / "state.json").read_text())["step"] < 2:
        assert proc.poll() is None and time.time() < deadline, "the run ended before it could be killed"
        time.sleep(0.05)
    proc.send_signal(signal.SIGKILL)
    proc.wait()
    killed_at = json.loads((out / "latest" / "state.json").read_text())
    assert killed_at["epoch"] < 4
    resumed = run(*args, "--out_dir", str(out), "--resume")
    assert resumed.returncode == 0, resumed.stderr
    for name in ("latest", "best"):
        a, b = weights(tmp_path / "full", name), weights(out, name)
        assert all(torch.equal(a[k], b[k]) for k in a), name
    def train_losses(out_dir):  # by epoch: a kill between an epoch's line and its checkpoint writes the line twice
        lines = (out_dir / "metrics.jsonl").read_text().splitlines()
        return {(m := json.loads(line))["epoch"]: m["train_loss"] for line in lines}
    losses = train_losses(out)
    assert losses == train_losses(tmp_path / "full")  # the epoch cut short too: its mean over all its steps
    assert losses[3] < losses[0]  # it trained
    assert len(list(out.glob("ckpt-*"))) <= 2  # only what latest and best point at is kept


# At the paper's learning rate: AdamW turns the last-bit differences of another summation order into differences
# that grow with the learning rate, and these comparisons are about which gradients are summed.
SHARDED = [*TINY, "--batch_size", "8", "--micro_batch_size", "2", "--epochs", "2", "--uniform_prob", "0.5",
           "--val_examples", "2", "--lr", "1e-4"]


@pytest.fixture(scope="module")
def one_process(tmp_path_factory, data_dir):
    """The reference: one process, micro-batches of 2, dropout on."""
    out = tmp_path_factory.mktemp("one")
    result = run(*SHARDED, "--data_dir", str(data_dir), "--out_dir", str(out))
    assert result.returncode == 0, result.stderr
    return weights(out)


def test_two_processes_equal_one(tmp_path, data_dir, one_process):
    # Each process's share (4 sequences) is 2 micro-batches of the one-process run: even dropout is the same.
    [two] = torchrun(*SHARDED, "--data_dir", str(data_dir), "--out_dir", str(tmp_path / "two"))
    assert two.returncode == 0, two.stderr[-3000:]
    assert "2 process(es)" in two.stdout and "(4 per process" in two.stdout
    assert max_difference(one_process, weights(tmp_path / "two")) <= 1e-5
    torch.manual_seed(0)  # the run's initialisation: the weights moved far more than the tolerance
    records = [load_dataset("prosqa", s, data_dir=data_dir) for s in ("train", "valid", "test")]
    init = load_gpt("scratch", tokens=vocabulary(records), n_layer=2, n_head=2, n_embd=32).state_dict()
    assert max_difference(one_process, init) > 20 * 1e-5


def test_micro_batch_size_and_process_count_do_not_change_training(tmp_path, data_dir):
    """Without dropout (whose masks are drawn per micro-batch), any split of the steps trains the same model."""
    runs = {(8, 1): None, (1, 1): None, (4, 2): None}
    for micro, nproc in runs:
        args = [*SHARDED, "--data_dir", str(data_dir), "--out_dir", str(tmp_path / f"{micro}x{nproc}"),
                "--micro_batch_size", str(micro), "--dropout", "0"]
        result = run(*args) if nproc == 1 else torchrun(*args, nproc=nproc)[0]
        assert result.returncode == 0, result.stderr[-3000:]
        runs[micro, nproc] = weights(tmp_path / f"{micro}x{nproc}")
    reference = runs[8, 1]
    for key, w in runs.items():
        assert max_difference(reference, w) <= 1e-5, key


def test_two_machines_equal_one_process(tmp_path, data_dir, one_process):
    """Two torchrun launches that meet through a c10d rendezvous on 127.0.0.1, as two machines would."""
    launches = torchrun(*SHARDED, "--data_dir", str(data_dir), "--out_dir", str(tmp_path / "two_nodes"), nproc=1, nnodes=2)
    for launch in launches:
        assert launch.returncode == 0, launch.stderr[-3000:]
    assert "2 process(es)" in "".join(launch.stdout for launch in launches)
    assert max_difference(one_process, weights(tmp_path / "two_nodes")) <= 1e-5


def test_two_processes_stopped_then_resumed_by_one_equal_one(tmp_path, data_dir, one_process):
    out = tmp_path / "resumed"
    [first] = torchrun(*SHARDED, "--data_dir", str(data_dir), "--out_dir", str(out), "--max_steps", "1")
    assert first.returncode == 0, first.stderr[-3000:]
    assert json.loads((out / "latest" / "state.json").read_text())["step"] == 1  # mid-epoch: 2 steps per epoch
    second = run(*SHARDED, "--data_dir", str(data_dir), "--out_dir", str(out), "--resume")
    assert second.returncode == 0, second.stderr
    assert max_difference(one_process, weights(out)) <= 1e-5


def test_a_failure_on_one_process_ends_all_with_one_line(tmp_path, data_dir):
    out = tmp_path / "fails"
    (out / "metrics.jsonl").mkdir(parents=True)  # rank 0 cannot append to it at the end of epoch 0
    start = time.time()
    [result] = torchrun(*SHARDED, "--data_dir", str(data_dir), "--out_dir", str(out), timeout=240)
    assert result.returncode != 0 and time.time() - start < 200  # over, not hanging
    errors = [line for line in result.stderr.splitlines() if line.startswith("error: ")]
    assert len(errors) == 1 and "metrics.jsonl" in errors[0], result.stderr[-3000:]
    assert 'train.py", line' not in result.stderr  # no traceback of ours


@pytest.mark.parametrize("args,message", [
    (["--batch_size", "0"], "--batch_size must be at least 1"),
    (["--loss_group", "0"], "--loss_group must be at least 1"),
    (["--init_from", "no/such/model"], "unknown GPT-2 'no/such/model'"),
    (["--data_dir", "BAD"], "record 1: 'steps' must be a list of strings"),
])
def test_bad_input_gives_one_clear_line(tmp_path, data_dir, args, message):
    if "BAD" in args:
        bad = tmp_path / "bad"
        bad.mkdir()
        good = json.loads((data_dir / "prosqa_train.json").read_text())
        (bad / "prosqa_train.json").write_text(json.dumps([good[0], {**good[1], "steps": "Tom is a wumpus."}]))
        args = ["--data_dir", str(bad)]
    result = run("--dataset", "prosqa", "--data_dir", str(data_dir), "--out_dir", str(tmp_path / "out"), *args)
    assert result.returncode == 1
    assert message in result.stderr and "Traceback" not in result.stderr
    assert len(result.stderr.strip().splitlines()) == 1


def test_a_batch_that_does_not_split_evenly_says_which_sizes_do(tmp_path, data_dir):
    with pytest.raises(ValueError, match=r"--batch_size 6 does not split evenly over 4 processes: use a multiple of 4 "
                                         r"\(such as 4 or 8\)"):
        train.resolve_config(train.parse_args(["--dataset", "prosqa", "--batch_size", "6"]), world=4)
    [result] = torchrun(*TINY, "--data_dir", str(data_dir), "--out_dir", str(tmp_path / "out"), "--batch_size", "6",
                        nproc=4)
    errors = [line for line in result.stderr.splitlines() if line.startswith("error: ")]
    assert result.returncode != 0 and len(errors) == 1 and "use a multiple of 4" in errors[0]
