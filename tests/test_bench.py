"""bench.py end to end on a tiny model: it runs every measurement, and its batched generations equal naive ones."""
import re
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]


def test_bench_prints_every_ratio_and_matches_naive_generation(fixtures):
    proc = subprocess.run(
        [sys.executable, "bench.py", "--data_dir", str(fixtures / "gsm8k"), "--n_layer", "2", "--n_head", "2",
         "--n_embd", "32", "--batch_size", "4", "--gen_batch_size", "4", "--naive_examples", "4", "--repeat", "1",
         "--max_new_tokens", "8"],
        cwd=ROOT, capture_output=True, text=True, timeout=300)
    assert proc.returncode == 0, proc.stderr
    assert "batch 4 x " in proc.stdout and "6 thoughts" in proc.stdout
    for ratio in ("latent overhead", "cache speed-up", "generation speed-up"):
        assert re.search(rf"\| {ratio}[^|]*\| \d+\.\d+ \|", proc.stdout), ratio
    assert "| batched outputs identical to batch-1 naive ones | 4 of 4 |" in proc.stdout


def test_recipe_projection_scales_each_stage_to_the_recipe():
    from bench import project
    from recipes import DEFAULTS, PRESETS
    steady = {s: dict(seconds=10.0 + s, val_seconds=2.0) for s in range(8)}
    cfg = {**DEFAULTS, **PRESETS["prosqa"], "eval_batch_size": 64}
    per_epoch, schedule = project(cfg, steady, n_train=1000, n_val=64, n_train_recipe=17_886, n_val_recipe=300)
    assert schedule == [s for s in range(7) for _ in range(5)] + [7] * 15  # 50 epochs: CoT, stages 1-6, final
    assert per_epoch[3] == ((10.0 + 3) * 17.886, 2.0 * 5)  # 300 validation records are 5 batches of 64, not 1
    cfg = {**DEFAULTS, **PRESETS["gsm8k"]}
    _, schedule = project(cfg, steady, 1000, 500, 385_620, 500)
    # 25 epochs of CoT, then Coconut from epoch 3: stages 1, 2, 3 for 3 epochs each, the final stage to epoch 25
    assert schedule == [0] * 25 + [1] * 3 + [2] * 3 + [3] * 3 + [4] * 13


def test_recipe_runs_two_epochs_of_every_stage_and_projects(fixtures):
    proc = subprocess.run(
        [sys.executable, "bench.py", "--recipe", "gsm8k", "--data_dir", str(fixtures / "gsm8k"), "--device", "cpu",
         "--n_layer", "1", "--n_head", "2", "--n_embd", "32", "--recipe_examples", "8", "--recipe_val_examples", "4",
         "--", "--batch_size", "4", "--micro_batch_size", "4", "--eval_batch_size", "4", "--max_new_tokens", "4"],
        cwd=ROOT, capture_output=True, text=True, timeout=300)
    assert proc.returncode == 0, proc.stderr
    rows = re.findall(r"^\| (\d) \| (\d) \| (\d+) \|", proc.stdout, re.M)
    assert rows == [("0", "0", "25"), ("1", "2", "3"), ("2", "4", "3"), ("3", "6", "3"), ("4", "6", "13")]
    assert re.search(r"^projected: \d+\.\d\d h", proc.stdout, re.M)


def test_pccot_against_coconut_prints_both_ratios(fixtures):
    proc = subprocess.run(
        [sys.executable, "bench.py", "--pccot", "6", "--data_dir", str(fixtures / "gsm8k"), "--n_layer", "2", "--n_head",
         "2", "--n_embd", "32", "--batch_size", "4", "--gen_batch_size", "4", "--repeat", "1", "--max_new_tokens", "4"],
        cwd=ROOT, capture_output=True, text=True, timeout=300)
    assert proc.returncode == 0, proc.stderr
    assert "6 thoughts, 3 Jacobi iterations" in proc.stdout
    for row in ("training step", "generation, batch 4"):
        assert re.search(rf"\| {row}[^|]*\| [\d,]+ ms \| [\d,]+ ms \| \d+\.\d\d \|", proc.stdout), row
