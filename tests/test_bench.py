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
