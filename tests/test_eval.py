"""eval.py: the answer rule, batching that changes nothing, the command line end to end for every method,
decoded thoughts, a question of one's own, files of one's own for every dataset."""
import json
import math
import subprocess
import sys
from pathlib import Path

import pytest
import torch

import train
from coconut import Coconut, load_gpt
from conftest import prosqa_args
from data import EOS, METHODS, Curriculum, collate, load_dataset, tokenize, vocabulary
from eval import evaluate, extract_answer, is_correct, main

ROOT = Path(__file__).resolve().parents[1]
# -----------------------------------------------------------------------------------------------------------
# The answer rule of the authors' code: what follows the last '#', commas removed, stripped

@pytest.mark.parametrize("output, answer, prediction, correct", [
    ("<<3*400=1200>>\n### 1,200", "1200", "1200", True),
    ("### 1200", "1,200", "1200", True),           # commas go on both sides
    ("#### 18  \n", "18", "18", True),              # trailing whitespace
    ("## 5\n### 18", "18", "18", True),             # several '#': the last one counts
    ("### 18\n# 5", "18", "5", False),
    ("18", "18", "18", True),                       # no '#': the whole text
    ("the answer is 18", "18", "the answer is 18", False),
    ("### 18 apples", "18", "18 apples", False),    # trailing text is part of the answer
    ("### Tom is a lempus.\n", "Tom is a lempus.", "Tom is a lempus.", True),
    ("", "18", "", False),
])
def test_answer_extraction(output, answer, prediction, correct):
    assert extract_answer(output) == prediction
    assert is_correct(output, answer) == correct


# -----------------------------------------------------------------------------------------------------------
# evaluate

@pytest.mark.parametrize("method", ["coconut", "pause_as_thought", "cot"])
def test_batched_equals_one_by_one(gpt, prosqa, fixtures, method):
    records = prosqa[:3] + load_dataset("gsm8k", "test", data_dir=fixtures / "gsm8k")[:3]
    curriculum = Curriculum(method=method, c_thought=2, max_latent_stage=3)
    model, stage = Coconut(gpt, feedback=curriculum.feedback), 0 if method == "cot" else 1
    batched, single = (evaluate(model, records, curriculum, stage, 12, batch_size=bs, with_loss=True) for bs in (4, 1))
    keys = lambda result: [(e["idx"], e["generated_ids"], e["prediction"], e["n_tokens"]) for e in result["examples"]]
    assert keys(batched) == keys(single) and batched["n"] == 6
    assert len({tuple(e["generated_ids"]) for e in batched["examples"]}) > 1  # not one constant output
    # The loss is the mean over all supervised tokens, whatever the batches: here, of one batch of everything.
    examples = [curriculum.example(t, stage) for t in tokenize(records)[0]]
    with torch.no_grad():
        whole = model(collate(examples)).mean().item()
    assert batched["loss"] == pytest.approx(whole, rel=1e-5) and single["loss"] == pytest.approx(whole, rel=1e-5)


def test_records_too_long_for_their_thoughts_are_skipped(gpt, prosqa):
    long = dict(question="a" + " b" * 1015, steps=["c"], answer="d")  # fits with no thought, not with 6
    result = evaluate(Coconut(gpt), [prosqa[0], long], Curriculum(max_latent_stage=6), 7, 4)
    assert (result["n"], result["skipped"], result["examples"][0]["idx"]) == (1, 1, 0)


@pytest.mark.parametrize("method", METHODS)
def test_cli_every_method(tmp_path, tiny_gpt2_dir, fixtures, method, capsys):
    out = tmp_path / "out.json"
    main([*prosqa_args(tiny_gpt2_dir, fixtures), "--method", method, "--loss", "--probe", "--probe_topk", "4",
          "--out", str(out)])
    result = json.loads(out.read_text())
    assert result["n"] == 3 and 0 <= result["accuracy"] <= 1 and result["skipped"] == 0
    assert result["settings"]["method"] == method and result["settings"]["stage"] == (0 if method == "cot" else 7)
    assert math.isfinite(result["loss"]) and result["loss"] > 0
    n_thoughts = 6 if METHODS[method].feedback else 0  # the prosqa preset's 6 at the final stage; pause tokens are none
    for e in result["examples"]:
        assert {"idx", "answer", "prediction", "correct", "n_tokens", "generated_ids", "output"} <= set(e)
        assert e["n_tokens"] == n_thoughts + len([t for t in e["generated_ids"] if t != EOS])
        assert len(e["thoughts"]) == n_thoughts
        for top in e["thoughts"]:
            p = [t["p"] for t in top]
            assert len(top) == 4 and all(0 < q <= 1 for q in p) and p == sorted(p, reverse=True)
            assert all(isinstance(t["token"], str) for t in top)
    stdout = capsys.readouterr().out
    assert "accuracy" in stdout and ("thought 1:" in stdout) == bool(n_thoughts)


def test_cli_forced_thoughts(tmp_path, tiny_gpt2_dir, fixtures, capsys):
    out = tmp_path / "out.json"
    main([*prosqa_args(tiny_gpt2_dir, fixtures), "--num_latents", "2", "--out", str(out)])
    for e in json.loads(out.read_text())["examples"]:
        assert e["n_tokens"] == 2 + len([t for t in e["generated_ids"] if t != EOS])
    with pytest.raises(SystemExit) as exit:
        main([*prosqa_args(tiny_gpt2_dir, fixtures), "--method", "cot", "--num_latents", "2"])
    assert exit.value.code.startswith("error: method cot has no latents to force")


@pytest.fixture(scope="module")
def ckpt(tmp_path_factory, gpt):
    """A checkpoint as train.py writes it: the model, its run's whole config, and where its curriculum stood."""
    path = tmp_path_factory.mktemp("ckpt")
    gpt.save(path)
    cfg = train.resolve_config(train.parse_args(["--dataset", "prosqa", "--max_latent_stage", "2", "--max_new_tokens", "8"]))
    (path / "run.json").write_text(json.dumps(cfg))
    (path / "state.json").write_text(json.dumps(dict(epoch=5, step=0, stage=1, best_accuracy=0.5)))
    return path


def test_cli_checkpoint_carries_its_settings(tmp_path, ckpt, fixtures):
    out = tmp_path / "out.json"
    main(["--ckpt", str(ckpt), "--data_dir", str(fixtures / "prosqa"), "--split", "valid", "--max_examples", "2",
          "--device", "cpu", "--out", str(out)])
    result = json.loads(out.read_text())
    settings = result["settings"]
    assert (settings["dataset"], settings["method"], settings["stage"], settings["max_latent_stage"]) == ("prosqa", "coconut", 1, 2)
    assert settings["max_new_tokens"] == 8 and result["n"] == 2
    for e in result["examples"]:  # stage 1, c = 1: one thought, then at most 8 tokens
        assert e["n_tokens"] == 1 + len([t for t in e["generated_ids"] if t != EOS]) and len(e["generated_ids"]) <= 8


def test_cli_question_of_ones_own(tmp_path, ckpt, fixtures, capsys):
    """--question answers as evaluation answers the same question, and shows each thought."""
    record = load_dataset("prosqa", "valid", data_dir=fixtures / "prosqa")[0]
    asked, evaluated = tmp_path / "asked.json", tmp_path / "evaluated.json"
    main(["--ckpt", str(ckpt), "--question", record["question"], "--device", "cpu", "--out", str(asked)])
    stdout = capsys.readouterr().out
    main(["--ckpt", str(ckpt), "--data_dir", str(fixtures / "prosqa"), "--split", "valid", "--max_examples", "1",
          "--device", "cpu", "--probe", "--out", str(evaluated)])
    asked, [evaluated] = json.loads(asked.read_text()), json.loads(evaluated.read_text())["examples"]
    assert asked["generated_ids"] == evaluated["generated_ids"] and asked["output"] == evaluated["output"]
    assert asked["thoughts"] == evaluated["thoughts"] and len(asked["thoughts"]) == 1  # the checkpoint's stage 1
    assert "thought 1: " in stdout and f"answer: {asked['prediction']!r}" in stdout


def test_a_question_with_a_token_the_model_does_not_know(tmp_path):
    path = tmp_path / "scratch"
    path.mkdir()
    load_gpt("scratch", tokens=vocabulary([[dict(question="Is a cat a dog?", steps=[], answer="no")]]),
             n_layer=1, n_head=1, n_embd=8).save(path)
    (path / "run.json").write_text(json.dumps(train.resolve_config(train.parse_args([]))))
    (path / "state.json").write_text(json.dumps(dict(epoch=1, step=0, stage=9, best_accuracy=None)))
    result = run_cli("--ckpt", str(path), "--question", "Is a cat a zebra?", "--device", "cpu")
    assert result.returncode == 1 and len(result.stderr.strip().splitlines()) == 1
    assert result.stderr.startswith("error: the question: ' z', 'ebra' not in this model's vocabulary")


def run_cli(*args):
    return subprocess.run([sys.executable, "eval.py", *args], cwd=ROOT, capture_output=True, text=True, timeout=120)


@pytest.mark.parametrize("case, message", [
    ("missing", "not a readable checkpoint"),
    ("shapes", "model.safetensors: transformer."),  # "... has shape (96,), but the config asks for (192,)"
    ("dataset", "unknown dataset 'nope'"),
])
def test_cli_errors_are_one_line(tmp_path, ckpt, tiny_gpt2_dir, fixtures, case, message):
    if case == "shapes":  # a model.json that does not describe the weights next to it
        bad = tmp_path / "bad"
        bad.mkdir()
        for f in ckpt.iterdir():
            (bad / f.name).write_bytes(f.read_bytes())
        config = json.loads((bad / "model.json").read_text())
        (bad / "model.json").write_text(json.dumps({**config, "n_embd": 64}))
    args = {"missing": ["--ckpt", str(tmp_path / "nothing")], "shapes": ["--ckpt", str(tmp_path / "bad")],
            "dataset": ["--init_from", str(tiny_gpt2_dir), "--dataset", "nope"]}[case]
    result = run_cli(*args, "--data_dir", str(fixtures / "prosqa"), "--device", "cpu")
    assert result.returncode == 1
    assert "Traceback" not in result.stderr and len(result.stderr.strip().splitlines()) == 1
    assert result.stderr.startswith("error: ") and message in result.stderr
    if case == "shapes":
        assert "but the config asks for" in result.stderr


# -----------------------------------------------------------------------------------------------------------
# Files of one's own, for every dataset: what --data_dir reads, in the format of the dataset's own files

@pytest.fixture(scope="module")
def shellgame_ckpt(tmp_path_factory):
    """A shell-game checkpoint at its final stage (4 thoughts): the default recipe's model, untrained."""
    path = tmp_path_factory.mktemp("shellgame")
    cfg = train.resolve_config(train.parse_args([]))
    splits = [load_dataset("shellgame", s) for s in ("train", "valid", "test")]
    torch.manual_seed(0)
    load_gpt("scratch", tokens=vocabulary(splits), n_layer=1, n_head=2, n_embd=16).save(path)
    (path / "run.json").write_text(json.dumps(cfg))
    (path / "state.json").write_text(json.dumps(dict(epoch=15, step=0, stage=5, best_accuracy=None)))
    return path


def test_a_test_file_of_ones_own_for_a_generated_dataset(tmp_path, shellgame_ckpt):
    """data.py --out writes a split in the format --data_dir reads; a file of one's own (here: questions of 5 swaps) is
    evaluated, not the built-in split; one thought more per step with --max_latent_stage."""
    import data
    import synthetic
    written = tmp_path / "written" / "shellgame_test.json"
    assert data.main(["--dataset", "shellgame", "--split", "test", "--out", str(written)]) is None
    assert load_dataset("shellgame", "test", data_dir=written.parent) == load_dataset("shellgame", "test")
    own = tmp_path / "own"
    own.mkdir()
    records = synthetic.shell_game(3, seed=9, swaps=5)
    (own / "shellgame_test.json").write_text(json.dumps(records))
    out = tmp_path / "own.json"
    main(["--ckpt", str(shellgame_ckpt), "--data_dir", str(own), "--max_latent_stage", "5", "--device", "cpu",
          "--out", str(out)])
    result = json.loads(out.read_text())
    assert result["n"] == 3 and [e["answer"] for e in result["examples"]] == [r["answer"] for r in records]
    assert result["settings"]["stage"] == 6  # the final stage of 5 thoughts: 5 thoughts, then the answer
    assert all(e["n_tokens"] == 5 + len([t for t in e["generated_ids"] if t != EOS]) for e in result["examples"])


@pytest.mark.parametrize("flags, message", [
    (["--data_dir", "no/such/dir"], "no/such/dir/shellgame_test.json: no such file"),
    (["--cache_dir", "somewhere"], "shellgame is generated, not downloaded: it has no cache (--cache_dir)"),
    (["--split", "test+1", "--dataset", "ontology"], "ontology has no split 'test+1'"),
    (["--soft_thinking"], "--soft_thinking reads back concept tokens where a chain of thought writes its steps"),
    (["--soft_temperature", "1.0"], "--soft_temperature without --soft_thinking: only Soft Thinking reads them"),
    (["--method", "cot", "--soft_thinking", "--compile"], "--compile with --soft_thinking"),
    (["--method", "cot", "--max_latent_stage", "5"], "--max_latent_stage: method cot has no thoughts for them to shape"),
])
def test_flags_that_cannot_be_honoured_are_one_line(shellgame_ckpt, flags, message):
    result = run_cli("--ckpt", str(shellgame_ckpt), "--device", "cpu", *flags)
    assert result.returncode == 1 and len(result.stderr.strip().splitlines()) == 1
    assert result.stderr.startswith("error: ") and message in result.stderr


def test_thoughts_in_steps():
    """Thought j reads as its step when its likeliest token is one of the step's tokens (c = 2: two thoughts a step)."""
    from eval import thoughts_in_steps
    records = [dict(steps=["AD: C C", "BE: C C"]), dict(steps=["CD: A A"])]
    top = lambda token: [dict(token=token, p=0.9)]
    examples = [dict(idx=0, thoughts=[top(":"), top(" E"), top(" C"), top("BE")]),  # step 1: yes, no; step 2: yes, yes
                dict(idx=1, thoughts=[top(" B"), top(" A"), top(" A")])]            # step 1: no, yes; no step 2
    assert thoughts_in_steps(examples, records, 2) == [0.5, 0.5, 1.0, 1.0]
