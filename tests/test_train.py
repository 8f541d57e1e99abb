"""train.py: it learns, it follows the schedule, it resumes exactly, and N processes equal one."""
import json
import os
import signal
import socket
import subprocess
import sys
import time
from pathlib import Path

import pytest
import torch
from safetensors.torch import load_file

import train
from data import Curriculum

ROOT = Path(__file__).resolve().parents[1]
# A tiny GPT from scratch on a few real ProsQA records; dropout and stage mixing on, so that resuming and
# sharding must restore every random draw, not only the weights.
TINY = ["--dataset", "prosqa", "--init_from", "scratch", "--n_layer", "2", "--n_head", "2", "--n_embd", "32",
        "--max_latent_stage", "2", "--epochs_per_stage", "1", "--lr", "3e-3", "--max_new_tokens", "8",
        "--device", "cpu", "--dtype", "float32"]


@pytest.fixture(scope="module")
def data_dir(tmp_path_factory, shared_data):
    """ProsQA-format splits: 12 training records, 4 for validation and test."""
    path = tmp_path_factory.mktemp("prosqa")
    records = json.loads((shared_data / "prosqa" / "prosqa_valid.json").read_text())
    for split, part in (("train", records[:12]), ("valid", records[12:16]), ("test", records[16:20])):
        (path / f"prosqa_{split}.json").write_text(json.dumps(part))
    return path


def run(*args, timeout=300):
    return subprocess.run([sys.executable, "train.py", *args], cwd=ROOT, capture_output=True, text=True, timeout=timeout)


def weights(out_dir, name="latest"):
    return load_file(Path(out_dir) / name / "model.safetensors")


def test_overfits_a_handful_through_the_stages(tmp_path, data_dir):
    out = tmp_path / "run"
    train.main([*TINY, "--data_dir", str(data_dir), "--out_dir", str(out), "--train_examples", "2", "--n_embd", "64",
                "--max_latent_stage", "1", "--batch_size", "1", "--micro_batch_size", "1", "--epochs", "75",
                "--epochs_per_stage", "25", "--val_examples", "1", "--dropout", "0", "--reset_optimizer", "never"])
    losses = [json.loads(line)["train_loss"] for line in (out / "metrics.jsonl").read_text().splitlines()]
    stages = [json.loads(line)["stage"] for line in (out / "metrics.jsonl").read_text().splitlines()]
    assert stages == [0] * 25 + [1] * 25 + [2] * 25  # CoT, one step as a thought, then the final stage
    assert losses[0] > 10 and losses[24] < 1.0  # stage 0 (CoT) is learnt
    assert losses[25] > 2 * losses[24]  # a new stage is a new task: the loss jumps...
    assert losses[49] < 0.06 and losses[74] < 0.02  # ...and falls to near zero again, through the thoughts
    state = json.loads((out / "best" / "state.json").read_text())
    assert state["stage"] == 2  # the best is chosen at the final stage only
    assert json.loads((out / "test.json").read_text())["n"] == 4


@pytest.mark.parametrize("dataset", list(train.PRESETS))
def test_stage_schedule_and_optimizer_resets_follow_the_presets(dataset):
    cfg = train.resolve_config(train.parse_args(["--dataset", dataset]))
    cur = Curriculum(**{k: cfg[k] for k in train.CURRICULUM_FIELDS})
    epochs = range(cfg["start_epoch"], cfg["epochs"])
    stages = [cur.stage(e) for e in epochs]
    if dataset == "gsm8k":  # SPEC §5: from the CoT checkpoint at epoch 3, 3 epochs for each of stages 1, 2, 3
        assert stages == [1] * 3 + [2] * 3 + [3] * 3 + [4] * 13 and cfg["cot_epochs"] == 25
    elif dataset in ("prosqa", "prontoqa"):  # 5 epochs per stage: CoT, stages 1..6, then the final stage
        assert stages == [s for s in range(7) for _ in range(5)] + [7] * 15
    assert stages[-1] == cur.final_stage
    # The authors' code re-creates AdamW every epoch; the paper's alternative at stage switches only.
    assert [train.resets_optimizer(cfg, cur, e) for e in epochs] == [e > cfg["start_epoch"] for e in epochs]
    by_stage = dict(cfg, reset_optimizer="stage")
    assert [e for e in epochs if train.resets_optimizer(by_stage, cur, e)] == \
        [e for e in epochs[1:] if cur.stage(e) != cur.stage(e - 1)]


def test_optimizer_reset_takes_effect(tmp_path, data_dir):
    for policy, steps in (("epoch", 3), ("never", 9)):  # 3 epochs of 3 steps
        out = tmp_path / policy
        train.main([*TINY, "--data_dir", str(data_dir), "--out_dir", str(out), "--batch_size", "4",
                    "--micro_batch_size", "4", "--epochs", "3", "--val_examples", "1", "--reset_optimizer", policy])
        state = torch.load(out / "latest" / "optimizer.pt", weights_only=True)["state"]
        assert state[0]["step"].item() == steps


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
    losses = [json.loads(line)["train_loss"] for line in (out / "metrics.jsonl").read_text().splitlines()]
    assert losses[-1] < losses[0]  # it trained
    assert len(list(out.glob("ckpt-*"))) <= 2  # only what latest and best point at is kept


def test_two_processes_equal_one(tmp_path, data_dir):
    # At the paper's learning rate: AdamW turns the last-bit differences of another summation order into
    # differences that grow with the learning rate, and this comparison is about which gradients are summed.
    args = [*TINY, "--data_dir", str(data_dir), "--batch_size", "8", "--micro_batch_size", "2", "--epochs", "2",
            "--uniform_prob", "0.5", "--val_examples", "2", "--lr", "1e-4"]
    one = run(*args, "--out_dir", str(tmp_path / "one"))
    assert one.returncode == 0, one.stderr
    env = dict(os.environ, OMP_NUM_THREADS="1")
    with socket.socket() as s:  # a free port for the rendezvous
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    two = subprocess.run([sys.executable, "-m", "torch.distributed.run", "--nproc_per_node=2", f"--master_port={port}",
                          "train.py", *args, "--out_dir", str(tmp_path / "two")], cwd=ROOT, capture_output=True,
                         text=True, timeout=300, env=env)
    assert two.returncode == 0, two.stderr[-3000:]
    assert "2 process(es)" in two.stdout
    a, b = weights(tmp_path / "one"), weights(tmp_path / "two")
    assert max((a[k] - b[k]).abs().max().item() for k in a) <= 1e-5
    torch.manual_seed(0)  # the run's initialisation: the weights moved far more than the tolerance
    init = train.load_gpt("scratch", n_layer=2, n_head=2, n_embd=32).state_dict()
    assert max((a[k] - init[k]).abs().max().item() for k in a) > 20 * 1e-5


@pytest.mark.parametrize("args,message", [
    (["--batch_size", "0"], "--batch_size must be at least 1"),
    (["--batch_size", "6", "--micro_batch_size", "4"], "is not a multiple of --micro_batch_size"),
    (["--resume"], "--resume: no run in"),
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
