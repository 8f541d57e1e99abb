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
    assert "\n## The shell game\n" in table  # docs/results.md takes the file as it is
    assert "| coconut |" in table and "| soft_thinking |" in table and "Coconut minus no_cot" not in table
    assert "2 of 2 runs finished" in first.stdout
    again = subprocess.run([sys.executable, "grid.py", "--quick", "--out_dir", str(out)], cwd=ROOT, capture_output=True,
                           text=True, timeout=600)
    assert again.returncode == 0 and " done in " not in again.stdout and "generated in" not in again.stdout
    assert json.loads((out / "results.json").read_text())["runs"] == results["runs"]
    summary = subprocess.run([sys.executable, "grid.py", "--quick", "--summarize", "--out_dir", str(out)], cwd=ROOT,
                             capture_output=True, text=True, timeout=600)
    assert summary.returncode == 0 and "summarizing" in summary.stdout
    assert json.loads((out / "results.json").read_text())["runs"] == results["runs"]
    invocations = (out / "invocations.jsonl").read_text().splitlines()
    assert len(invocations) == 2  # the two that ran; a summary is none


def test_a_lent_cot_phase_trains_the_same_run(tmp_path):
    """A method written as Coconut writes, after the recipe's CoT phase, and CoT itself: started from the Coconut run's
    CoT phase of the same task and seed (Run.borrow_cot_phase), they end bit-identical to training their own."""
    import torch
    from safetensors.torch import load_file

    import grid
    import train
    tiny = ["--dataset", "reachability", "--train_examples", "32", "--val_examples", "4", "--test_examples", "4",
            "--n_embd", "32", "--cot_epochs", "2", "--start_epoch", "1", "--epochs", "3", "--epochs_per_stage", "1",
            "--max_latent_stage", "2", "--device", "cpu", "--dtype", "float32"]
    run = lambda method: grid.Run(tmp_path, "reachability", method, 0, False)
    assert not run("pause_as_thought").borrow_cot_phase()  # no Coconut run yet
    train.main([*tiny, "--out_dir", str(run("coconut").dir)])
    for method, phase_dir, flags in (("pause_as_thought", "pause_as_thought", []),
                                     ("cot", "", ["--epochs", "4", "--start_epoch", "0"])):
        own = tmp_path / f"{method}-own"
        train.main([*tiny, "--method", method, *flags, "--out_dir", str(own)])
        assert run(method).borrow_cot_phase() and not run(method).borrow_cot_phase()  # once, before it trains
        train.main([*tiny, "--method", method, *flags, "--out_dir", str(run(method).dir), "--resume"])
        a, b = (load_file(d / phase_dir / "latest" / "model.safetensors") for d in (own, run(method).dir))
        assert all(torch.equal(a[k], b[k]) for k in a), method
        losses = [[((m := json.loads(line))["train_loss"], m["val_loss"])
                   for line in (d / phase_dir / "metrics.jsonl").read_text().splitlines()] for d in (own, run(method).dir)]
        assert losses[0] == losses[1] and len(losses[0]) == (2 if phase_dir else 4)  # every epoch's line, the phase's too
    assert not grid.Run(tmp_path, "shellgame", "pause_as_thought", 0, False).shares_cot_phase()  # no CoT phase there
    assert not run("simcot").shares_cot_phase() and not run("codi").shares_cot_phase()  # written otherwise
