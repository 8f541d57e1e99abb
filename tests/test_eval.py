"""eval.py: the answer rule, batching that changes nothing, the command line end to end for every method,
decoded thoughts, a question of one's own, and the ProsQA analysis of the paper's §5 on a hand-made graph and
on real records."""
import importlib.util
import json
import math
import subprocess
import sys
from pathlib import Path

import pytest
import torch

import train
from coconut import Coconut, load_gpt, naive_thoughts
from data import EOS, METHODS, Curriculum, collate, decode, encode, load_dataset, tokenize, vocabulary
from eval import (attention_probs, classify_prosqa, edge_positions, evaluate, extract_answer, frontier_values, is_correct,
                  is_searchable, main, plot_prosqa, search_class, search_values)

ROOT = Path(__file__).resolve().parents[1]
FAST = ["--split", "valid", "--max_examples", "3", "--max_new_tokens", "16", "--device", "cpu", "--dtype", "float32"]


@pytest.fixture(scope="module")
def gpt(tiny_gpt2_dir):
    return load_gpt(str(tiny_gpt2_dir), dropout=0.0).eval()


@pytest.fixture(scope="module")
def prosqa(fixtures):
    return load_dataset("prosqa", "valid", data_dir=fixtures / "prosqa")


def prosqa_args(tiny_gpt2_dir, fixtures):
    return ["--init_from", str(tiny_gpt2_dir), "--dataset", "prosqa", "--data_dir", str(fixtures / "prosqa"), *FAST]


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
# ProsQA analysis (the paper's §5) on a hand-made graph:
#     Tom -> wumpus -> zumpus (the target)      Ann -> rompus (the wrong option)
#     Tom -> yumpus -> dumpus -> zumpus         Ann -> wumpus

GRAPH = dict(
    question="Tom is a wumpus. Tom is a yumpus. Every wumpus is a zumpus. Every yumpus is a dumpus. "
             "Every dumpus is a zumpus. Ann is a rompus. Ann is a wumpus. Is Tom a zumpus or rompus?",
    steps=["Tom is a wumpus.", "Every wumpus is a zumpus."], answer="Tom is a zumpus.",
    idx_to_symbol=["Tom", "Ann", "wumpus", "yumpus", "zumpus", "dumpus", "rompus"],
    edges=[[0, 2], [0, 3], [2, 4], [3, 5], [5, 4], [1, 6], [1, 2]], root=0, target=4, neg_target=6)


@pytest.mark.parametrize("output, expected", [
    ("Tom is a wumpus.\nEvery wumpus is a zumpus.\n### Tom is a zumpus.", "correct_path"),
    ("Every wumpus is a zumpus.\n### Tom is a zumpus.", "correct_path"),  # where one thought left the search
    ("Tom is a yumpus.\nEvery yumpus is a dumpus.\nEvery dumpus is a zumpus.\n### Tom is a zumpus.", "longer_path"),
    ("Every yumpus is a dumpus.\nEvery dumpus is a zumpus.\n### Tom is a zumpus.", "longer_path"),  # 1 + 2 hops > 2
    ("### Tom is a zumpus.", "correct_label"),  # no path
    ("### Tom is a rompus.", "incorrect_label"),
    ("Tom is a yumpus.\nEvery wumpus is a zumpus.\n### Tom is a zumpus.", "hallucination"),  # not connected
    ("Tom is a yumpus.\nEvery yumpus is a zumpus.\n### Tom is a zumpus.", "hallucination"),  # not an edge
    ("Ann is a wumpus.\nEvery wumpus is a zumpus.\n### Tom is a zumpus.", "hallucination"),  # Ann's path, not Tom's
    ("Tom is a yumpus.\nEvery yumpus is a rompus.\n### Tom is a rompus.", "hallucination"),  # not an edge
    ("Every wumpus is a blicket.\n### Tom is a rompus.", "hallucination"),  # no such concept
    ("garbled text", "hallucination"),
    ("Tom is a yumpus.\nEvery yumpus is a dumpus.\n### Tom is a rompus.", "wrong_target"),  # ends short of the target
    ("Tom is a wumpus.\n### Tom is a dumpus.", "wrong_target"),
])
def test_classify_prosqa(output, expected):
    assert classify_prosqa(output, GRAPH) == expected


# The same graph in symbols (synthetic.reachability): Tom 3, Ann 5, wumpus 0, yumpus 6, zumpus 2, dumpus 4, rompus 1.
SYMBOLS = dict(
    question="Children: 0: 2 - | 1: - - | 2: - - | 3: 0 6 | 4: 2 - | 5: 0 1 | 6: 4 -. Is 2 or 1 reachable from 3",
    steps=[" 0", " 2"], answer="2", idx_to_symbol=["3", "5", "0", "6", "2", "4", "1"],
    edges=GRAPH["edges"], root=0, target=4, neg_target=6)
# Laid out as the reachability preset lays it out: symbols, no markers, one thought per hop.
SYMBOLS_CURRICULUM = Curriculum(max_latent_stage=2, format="symbols", markers=False, pad_latent_to_max=False)


@pytest.mark.parametrize("output, expected", [
    (" 0 2### 2", "correct_path"), (" 2### 2", "correct_path"),  # the second after one thought
    (" 6 4 2### 2", "longer_path"), (" 4 2### 2", "longer_path"),  # dumpus is 2 hops in, then 1 more: 3 > 2
    ("### 2", "correct_label"), ("### 1", "incorrect_label"),
    (" 6 1### 1", "hallucination"),  # not an edge
    (" 5 0 2### 2", "hallucination"),  # Ann's path, not Tom's
    (" 0 9### 2", "hallucination"),  # no such node
    (" 6 4### 1", "wrong_target"), (" 0### 2", "wrong_target"),  # ends short of the target
])
def test_classify_symbols(output, expected):
    assert classify_prosqa(output, SYMBOLS) == expected


def test_edge_positions_and_search_classes():
    ids = encode(SYMBOLS["question"] + "\n")
    positions = edge_positions(SYMBOLS, ids)
    assert sorted(positions) == sorted(map(tuple, SYMBOLS["edges"]))
    for (source, child), col in positions.items():  # the child's number, after its source's "N:"
        assert decode(ids[col:col + 1]) == " " + SYMBOLS["idx_to_symbol"][child]
        slot_start = max(c for c in range(col) if decode(ids[c:c + 1]) == ":")
        assert decode(ids[slot_start - 1:slot_start]).strip() == SYMBOLS["idx_to_symbol"][source]
    hops = {0: 0, 2: 1, 3: 1, 4: 2, 5: 2}  # Tom's: wumpus and yumpus in one hop, zumpus and dumpus in two
    assert [search_class(hops, v, 1) for v in range(7)] == ["reached", "unreachable", "frontier", "frontier", "later",
                                                             "later", "unreachable"]
    assert is_searchable(SYMBOLS) and not is_searchable(GRAPH)


def test_attention_probs_are_the_layers_own(gpt, tiny_gpt2_dir):
    """attention_probs against transformers' GPT-2 (the definition) on the same input embeddings, thoughts included."""
    from transformers import GPT2Model
    hf = GPT2Model.from_pretrained(tiny_gpt2_dir, attn_implementation="eager").eval()
    curriculum = Curriculum(max_latent_stage=2)
    embeds = naive_thoughts(gpt, curriculum.prompt(tokenize([SYMBOLS])[0][0], curriculum.final_stage))  # (1, T, C)
    with torch.no_grad():
        expected = hf(inputs_embeds=embeds, output_attentions=True).attentions[-1][0]  # (nh, T, T)
    assert torch.allclose(attention_probs(gpt, embeds), expected, atol=1e-5)


def test_search_values(gpt):
    curriculum = SYMBOLS_CURRICULUM
    rows = search_values(gpt, SYMBOLS, curriculum)
    assert [r["i"] for r in rows] == [1, 2]
    for r in rows:
        assert sum(r["attention"].values()) == pytest.approx(1, abs=1e-5)  # the classes and the rest: all of it
        assert all(0 < p < 1 for p in r["prob"].values() if p is not None)
    # Thought 1, the root's last hidden state, against the nodes one hop from Tom (wumpus " 0" and yumpus " 6"),
    # computed here from its definition.
    prompt = curriculum.prompt(tokenize([SYMBOLS], fmt="symbols")[0][0], curriculum.final_stage)
    assert decode(prompt.ids[prompt.first_latent - 1:]) == " 3<|latent|><|latent|>"  # no markers, one per hop
    with torch.no_grad():
        thought = gpt(embeds=gpt.embed(torch.tensor([prompt.ids[:prompt.first_latent]])))[0, -1]
        inner = [thought @ gpt.embed(torch.tensor(encode(name)))[0] for name in (" 0", " 6")]
    assert rows[0]["inner"]["frontier"] == pytest.approx(sum(inner).item() / 2, rel=1e-4)
    assert rows[0]["inner"]["path"] == pytest.approx(inner[0].item(), rel=1e-4)  # wumpus: the answer's path
    assert rows[0]["inner"]["later"] is not None and rows[1]["inner"]["later"] is None  # nothing beyond 2 hops


def naive_value(gpt, prompt, name, prefix="Every"):
    """p(name | prompt prefix), by the definition: each thought recomputes the whole prefix, no cache, no batch."""
    ids = prompt.ids + encode(prefix) + name
    embeds = gpt.transformer.wte(torch.tensor(ids))[None]
    for p in range(prompt.n_latents):
        col = prompt.first_latent + p
        thought = gpt(embeds=embeds[:, :col])[:, -1]
        embeds = torch.cat([embeds[:, :col], thought[:, None], embeds[:, col + 1:]], 1)
    logp = gpt.logits(gpt(embeds=embeds)[0]).log_softmax(-1)  # (T, vocab)
    T = len(ids)
    return sum(logp[t - 1, ids[t]] for t in range(T - len(name), T)).exp().item()


@pytest.mark.parametrize("k, frontier", [(1, {"wumpus": (True, 1), "yumpus": (False, 2)}),
                                         (2, {"zumpus": (True, 0), "dumpus": (False, 1)}), (3, {})])
def test_frontier_values(gpt, k, frontier):
    curriculum = Curriculum(c_thought=1, max_latent_stage=3)
    nodes = frontier_values(Coconut(gpt), GRAPH, curriculum, k)
    assert {n["name"]: (n["on_path"], n["height"]) for n in nodes} == frontier
    prompt = curriculum.prompt(tokenize([GRAPH])[0][0], curriculum.final_stage, k)
    with torch.no_grad():
        for n in nodes:
            assert 0 < n["value"] <= 1
            assert n["value"] == pytest.approx(naive_value(gpt, prompt, encode(" " + n["name"])), rel=1e-4)


@pytest.mark.parametrize("k, frontier", [(0, {"0": (True, 1), "6": (False, 2)}), (1, {"2": (True, 0), "4": (False, 1)}),
                                         (2, {})])
def test_frontier_values_in_symbols(gpt, k, frontier):
    """In symbols the step after k thoughts names a node k + 1 hops in (wumpus " 0" and yumpus " 6" after none)."""
    nodes = frontier_values(Coconut(gpt), SYMBOLS, SYMBOLS_CURRICULUM, k)
    assert {n["name"]: (n["on_path"], n["height"]) for n in nodes} == frontier
    prompt = SYMBOLS_CURRICULUM.prompt(tokenize([SYMBOLS], fmt="symbols")[0][0], SYMBOLS_CURRICULUM.final_stage, k)
    with torch.no_grad():
        for n in nodes:
            assert n["value"] == pytest.approx(naive_value(gpt, prompt, encode(" " + n["name"]), prefix=""), rel=1e-4)


def test_prosqa_analysis_end_to_end(tmp_path, tiny_gpt2_dir, fixtures, prosqa, capsys):
    out, plots = tmp_path / "analysis.json", tmp_path / "plots"
    main([*prosqa_args(tiny_gpt2_dir, fixtures), "--prosqa_analysis", "--out", str(out), "--plot_dir", str(plots)])
    rows = json.loads(out.read_text())["prosqa_analysis"]
    assert [r["k"] for r in rows] == list(range(7))  # the prosqa preset: max_latent_stage 6, c 1
    for r in rows:
        assert sum(r["counts"].values()) == r["n"] == 3 and len(r["examples"]) == 3
    assert rows[0]["nodes"] == [] and rows[0]["value_on_path"] is None
    # After one thought the frontier is the root's children: one value for each, of every record.
    children = [{b for a, b in r["edges"] if a == r["root"]} for r in prosqa[:3]]
    assert [(n["idx"], n["node"]) for n in rows[1]["nodes"]] == [(i, v) for i, c in enumerate(children) for v in sorted(c)]
    assert all(0 < n["value"] <= 1 for r in rows for n in r["nodes"])
    assert rows[1]["value_on_path"] is not None  # every record has a shortest path through some child
    stdout = capsys.readouterr().out
    assert "correct_path" in stdout
    if importlib.util.find_spec("matplotlib") is None:  # optional: requirements.txt does not ask for it
        assert "pip install matplotlib" in stdout
    else:
        assert (plots / "prosqa.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"


def test_reachability_end_to_end(tmp_path, capsys):
    """The preset trained for a few steps on a handful of records, then every analysis of it: the output classes for
    coconut and cot, and for coconut the search in its thoughts, with the three pictures."""
    out = tmp_path / "run"
    tiny = ["--dataset", "reachability", "--train_examples", "32", "--val_examples", "4", "--n_embd", "32",
            "--cot_epochs", "1", "--start_epoch", "1", "--epochs", "4", "--epochs_per_stage", "1", "--max_latent_stage", "2",
            "--device", "cpu"]
    train.main([*tiny, "--out_dir", str(out)])
    train.main([*tiny, "--out_dir", str(tmp_path / "cot"), "--method", "cot", "--epochs", "1", "--start_epoch", "0"])
    plots, results = tmp_path / "plots", {}
    for name, ckpt in (("coconut", out / "coconut" / "best"), ("cot", tmp_path / "cot" / "best")):
        main(["--ckpt", str(ckpt), "--max_examples", "6", "--prosqa_analysis", "--out", str(tmp_path / f"{name}.json"),
              "--plot_dir", str(plots)])
        results[name] = json.loads((tmp_path / f"{name}.json").read_text())
        assert all(sum(r["counts"].values()) == r["n"] == 6 for r in results[name]["prosqa_analysis"])
    assert [r["k"] for r in results["coconut"]["prosqa_analysis"]] == [0, 1, 2]
    assert [r["i"] for r in results["coconut"]["search"]] == [1, 2]
    assert all(sum(r["attention"].values()) == pytest.approx(1, abs=1e-5) for r in results["coconut"]["search"])
    assert [r["k"] for r in results["cot"]["prosqa_analysis"]] == [0] and "search" not in results["cot"]
    stdout = capsys.readouterr().out
    assert "attention on edges from" in stdout
    if importlib.util.find_spec("matplotlib") is not None:
        for name in ("prosqa.png", "thoughts.png", "attention.png"):
            assert (plots / name).read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"


def test_plots_without_matplotlib(tmp_path, monkeypatch, capsys):
    monkeypatch.setitem(sys.modules, "matplotlib.figure", None)  # makes the import fail
    rows = [dict(k=0, n=1, counts={}, value_on_path=None, value_off_path=None)]
    assert plot_prosqa(rows, tmp_path / "plots") == []
    assert "pip install matplotlib" in capsys.readouterr().out and not (tmp_path / "plots").exists()
