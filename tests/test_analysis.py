"""analysis.py: the ProsQA analysis of the paper's §5 on a hand-made graph and on real records, the search in the
thoughts on graphs of symbols, what the steps hold of the frontier, and the pictures."""
import importlib.util
import json
import sys

import pytest
import torch

import train
from analysis import (attention_probs, classify_prosqa, edge_positions, frontier_values, is_searchable, main,
                      search_class, search_values)
from coconut import Coconut, naive_thoughts
from conftest import prosqa_args
from data import Curriculum, decode, encode, tokenize
from plots import plot_prosqa

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
    main([*prosqa_args(tiny_gpt2_dir, fixtures), "--out", str(out), "--plot_dir", str(plots)])
    result = json.loads(out.read_text())
    rows = result["prosqa_analysis"]
    assert sum(n for _, n in result["by_search"]["hops"].values()) == 3  # every question, by its answer's hops
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
        main(["--ckpt", str(ckpt), "--max_examples", "6", "--out", str(tmp_path / f"{name}.json"),
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


def test_frontier_weights_by_hop(tmp_path):
    """What step i holds of the nodes i hops from the root, on a hand-made graph in symbols: 0 -> 1, 0 -> 2, 2 -> 3;
    the answer 3, two hops away, its path 0 2 3."""
    from analysis import frontier_weights
    record = dict(question="(a graph)", steps=[" 2", " 3"], answer="3", idx_to_symbol=["0", "1", "2", "3"],
                  edges=[[0, 1], [0, 2], [2, 3]], root=0, target=3, neg_target=1)
    thoughts = [[dict(token=" 2", p=0.6), dict(token=" 1", p=0.3), dict(token="###", p=0.1)],  # hop 1: holds {1, 2}
                [dict(token=" 3", p=0.95), dict(token=" 2", p=0.05)],                         # hop 2: {3}
                [dict(token=" 1", p=1.0)]]                                                    # past the answer: left out
    path = tmp_path / "eval.json"
    path.write_text(json.dumps(dict(examples=[dict(idx=0, thoughts=thoughts)])))
    hop1, hop2 = frontier_weights(path, [record])
    assert hop1 == dict(n=1, frontier=2, weight=pytest.approx(0.9), path=0.6, holds_two=True)
    assert hop2 == dict(n=1, frontier=1, weight=0.95, path=0.95, holds_two=None)  # one frontier node: no share


def test_accuracy_by_search():
    """The hand-made graph: Tom reaches wumpus, yumpus, zumpus and dumpus; the answer, zumpus, is 2 hops away."""
    from analysis import accuracy_by_search
    by = accuracy_by_search([dict(idx=0, correct=True), dict(idx=0, correct=False)], [GRAPH])
    assert by == {"hops": {2: (0.5, 2)}, "reachable": {4: (0.5, 2)}}


def test_answer_forms():
    """In symbols: CoT writes a path, then the answer, which repeats the path's last node; past its training, it may not."""
    from analysis import answer_forms
    record = dict(answer="7")
    examples = [dict(idx=0, output=" 2 7### 7"),       # a path to the answer, the answer repeated
                dict(idx=0, output=" 2 5### 2 5"),     # a path elsewhere, an answer of two nodes
                dict(idx=0, output="### 7")]           # no path (Coconut's thoughts)
    assert answer_forms(examples, [record]) == dict(one_node=2 / 3, path_ends_at_answer=0.5, answer_repeats_path=0.5,
                                                    with_path=2 / 3)
