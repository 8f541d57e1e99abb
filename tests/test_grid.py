"""grid.py --quick: the whole pipeline of the laptop table on a handful of records (train, the longer test sets,
Soft Thinking on the CoT run, results, tables, picture), and a second invocation that runs nothing again."""
import json
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]


def test_quick_grid_end_to_end_and_resumed(tmp_path):
    out = tmp_path / "grid"
    first = subprocess.run([sys.executable, "grid.py", "--quick", "--out_dir", str(out)], cwd=ROOT, capture_output=True,
                           text=True, timeout=600)
    assert first.returncode == 0, first.stdout + first.stderr
    results = json.loads((out / "results.json").read_text())
    rows = {r["method"]: r for r in results["runs"]}
    assert set(rows) == {"coconut", "cot", "soft_thinking"}
    for method in ("coconut", "cot"):
        test = json.loads(next((out / "runs" / "shellgame" / method / "seed0").glob("**/test.json")).read_text())
        assert (rows[method]["accuracy"], rows[method]["tokens"]) == (test["accuracy"], test["mean_tokens"])
        assert rows[method]["minutes"] > 0
    for split, swaps in (("test+1", 5), ("test+2", 6)):  # one thought more per swap; the longer questions' files
        longer = json.loads((out / "runs" / "shellgame" / "coconut" / "seed0" / f"{split}.json").read_text())
        assert longer["settings"]["max_latent_stage"] == swaps and longer["n"] == 8
        assert all(e["n_tokens"] >= swaps for e in longer["examples"])
        assert len(json.loads((out / "data" / "shellgame" / f"shellgame_{split}.json").read_text())) == 500
    soft = json.loads((out / "runs" / "shellgame" / "cot" / "seed0" / "soft-test.json").read_text())
    assert soft["settings"]["soft_thinking"] and all("thoughts" in e for e in soft["examples"])
    table = (out / "table.md").read_text()
    assert "| coconut |" in table and "| soft_thinking |" in table and "Coconut minus no_cot" not in table
    assert "2 of 2 runs finished" in first.stdout
    again = subprocess.run([sys.executable, "grid.py", "--quick", "--out_dir", str(out)], cwd=ROOT, capture_output=True,
                           text=True, timeout=600)
    assert again.returncode == 0 and " done in " not in again.stdout and "generated in" not in again.stdout
    assert json.loads((out / "results.json").read_text())["runs"] == results["runs"]
