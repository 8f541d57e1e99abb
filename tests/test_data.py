"""data.py and synthetic.py: real records load and parse as the authors' code parses them, downloads are atomic,
bad files fail with one clear line, the ProsQA generator makes graphs like the paper's, and the shell game is
what it says (answers checked by an independent solver)."""
import functools
import hashlib
import http.server
import itertools
import json
import os
import random
import re
import statistics
import subprocess
import sys
import threading
from pathlib import Path

import pytest

import data
import synthetic

ROOT = Path(__file__).resolve().parents[1]


# -----------------------------------------------------------------------------
# Real records (tests/data: subsets of the real splits)


@pytest.mark.parametrize("name, split, filename", [
    ("gsm8k", "test", "test.txt"), ("prosqa", "valid", "prosqa_valid.json"), ("prontoqa", "valid", "prontoqa_valid.json"),
])
def test_every_record_loads(fixtures, name, split, filename):
    text = (fixtures / name / filename).read_text(encoding="utf-8")
    n = len(text.strip().split("\n")) if name == "gsm8k" else len(json.loads(text))
    records = data.load_dataset(name, split, data_dir=fixtures / name)
    assert len(records) == n >= 30
    assert all(isinstance(r["question"], str) and isinstance(r["answer"], str) for r in records)


def test_gsm8k_parsing(fixtures):
    records = data.load_dataset("gsm8k", "test", data_dir=fixtures / "gsm8k")
    assert records[0]["steps"] == ["<<16-3-4=9>>", "<<9*2=18>>"]
    assert records[0]["answer"] == "18"
    assert records[0]["question"].endswith("How much in dollars does she make every day at the farmers' market?")
    # A problem without steps ("...|| #### 26"): split(" ") gives it one empty step, as the authors' code does.
    assert records[24]["steps"] == [""] and records[24]["answer"] == "26"
    assert sum(r["steps"] == [""] for r in records) == 3
    # Every "<<...>>" of a line is one step (as a word count of the text between "||" and "##" finds them).
    lines = (fixtures / "gsm8k" / "test.txt").read_text(encoding="utf-8").strip().split("\n")
    assert [len(r["steps"]) for r in records] == [max(1, line.split("||")[1].split("##")[0].count(">>")) for line in lines]


def test_prosqa_keeps_graph_fields(fixtures):
    record = data.load_dataset("prosqa", "valid", data_dir=fixtures / "prosqa")[0]
    assert record["idx_to_symbol"][record["root"]] == "Tom"
    assert record["idx_to_symbol"][record["target"]] == "lempus"
    assert [1, 3] in record["edges"] and record["neg_target"] == 13


def test_graph_stats_of_real_prosqa_match_the_paper(fixtures):
    # The published statistics (23.0 nodes, 36.0 edges, 3.8 hops, 1.6 shortest paths) describe this data, of
    # which the fixture is a sample: a check of graph_stats before we trust it on ours.
    stats = synthetic.graph_stats(data.load_dataset("prosqa", "valid", data_dir=fixtures / "prosqa"))
    assert abs(stats["nodes"] - 23.0) < 1 and abs(stats["edges"] - 36.0) < 2
    assert abs(stats["hops"] - 3.8) < 0.15 and abs(stats["paths"] - 1.6) < 0.15


# -----------------------------------------------------------------------------
# Tokenizer


def test_special_tokens_round_trip():
    assert (data.BOT, data.EOT, data.LATENT, data.VOCAB_SIZE) == (50257, 50258, 50259, 50260)
    assert data.tokenizer().n_vocab == data.VOCAB_SIZE
    ids = data.encode("Q") + [data.BOT, data.LATENT, data.LATENT, data.EOT] + data.encode(" A") + [data.EOS]
    assert data.decode(ids) == "Q<|start-latent|><|latent|><|latent|><|end-latent|> A<|endoftext|>"
    assert data.decode(ids, skip_special=True) == "Q A"


def test_special_names_in_text_are_plain_text():
    text = "a <|latent|> b <|endoftext|> c <|start-latent|>"
    ids = data.encode(text)
    assert max(ids) < data.EOS
    assert data.decode(ids) == text
    assert data.decode(ids, skip_special=True) == text


# -----------------------------------------------------------------------------
# Downloads, against a server on 127.0.0.1


@pytest.fixture
def server():
    """A local HTTP server: `files` maps a path to (body, Content-Length it claims); `hits` logs requests."""
    files, hits = {}, []

    class Handler(http.server.BaseHTTPRequestHandler):
        def do_GET(self):
            hits.append(self.path)
            if self.path not in files:
                self.send_error(404)
                return
            body, length = files[self.path]
            self.send_response(200)
            self.send_header("Content-Length", str(length))
            self.end_headers()
            self.wfile.write(body)  # then HTTP/1.0 closes the connection, short or not

        def log_message(self, *args):
            pass

    httpd = http.server.ThreadingHTTPServer(("127.0.0.1", 0), Handler)
    thread = threading.Thread(target=httpd.serve_forever, kwargs={"poll_interval": 0.05}, daemon=True)
    thread.start()
    yield f"http://127.0.0.1:{httpd.server_port}", files, hits
    httpd.shutdown()
    httpd.server_close()


def sha256(body):
    return hashlib.sha256(body).hexdigest()


def test_download_good_file(server, tmp_path):
    url, files, _ = server
    body = b"x" * 3_000_000  # several read() chunks
    files["/f.txt"] = (body, len(body))
    dest = tmp_path / "sub" / "f.txt"
    data.download(f"{url}/f.txt", dest, sha256(body))
    assert dest.read_bytes() == body
    assert [p.name for p in dest.parent.iterdir()] == ["f.txt"]  # no temp file left behind


@pytest.mark.parametrize("case", ["corrupt", "dropped", "missing"])
def test_failed_download_leaves_nothing(server, tmp_path, case):
    url, files, _ = server
    body = b"1+1=2\n" * 1000
    if case == "corrupt":
        files["/f.txt"] = (body.replace(b"2", b"3"), len(body))
    elif case == "dropped":
        files["/f.txt"] = (body, len(body) + 100)  # promises more bytes than it sends, then closes
    dest = tmp_path / "f.txt"
    with pytest.raises(data.DataError, match=re.escape(f"{url}/f.txt")) as e:
        data.download(f"{url}/f.txt", dest, sha256(body))
    assert "\n" not in str(e.value)
    assert list(tmp_path.iterdir()) == []


def test_load_dataset_downloads_once_into_the_cache(server, fixtures, tmp_path, monkeypatch):
    url, files, hits = server
    body = (fixtures / "gsm8k" / "test.txt").read_bytes()
    n = len(body.decode().strip().split("\n"))
    files["/valid.txt"] = (body, len(body))
    monkeypatch.setitem(data.SOURCES, ("gsm8k", "valid"), (f"{url}/valid.txt", sha256(body)))
    assert len(data.load_dataset("gsm8k", "valid", cache_dir=tmp_path)) == n
    assert (tmp_path / "gsm8k" / "valid.txt").read_bytes() == body
    assert len(data.load_dataset("gsm8k", "valid", cache_dir=tmp_path)) == n
    monkeypatch.setenv("COCONUT_DATA_DIR", str(tmp_path))  # the same cache, found through the environment
    assert len(data.load_dataset("gsm8k", "valid")) == n
    assert hits == ["/valid.txt"]


def test_load_dataset_does_not_cache_a_corrupt_download(server, tmp_path, monkeypatch):
    url, files, _ = server
    files["/test.txt"] = (b"q||<<1+1=2>> #### 2\n", 20)
    monkeypatch.setitem(data.SOURCES, ("gsm8k", "test"), (f"{url}/test.txt", "0" * 64))
    for _ in range(2):  # the second call must not find a file that passes as data
        with pytest.raises(data.DataError, match="sha256"):
            data.load_dataset("gsm8k", "test", cache_dir=tmp_path)
    assert not (tmp_path / "gsm8k" / "test.txt").exists()


def test_prontoqa_without_files_says_how_to_get_it(tmp_path):
    for kwargs in ({"cache_dir": tmp_path}, {"data_dir": tmp_path}):
        with pytest.raises(data.DataError, match="ProntoQA authors' generator"):
            data.load_dataset("prontoqa", "train", **kwargs)


def test_unknown_names():
    with pytest.raises(data.DataError, match="unknown dataset 'gsm9k'"):
        data.load_dataset("gsm9k", "train")
    with pytest.raises(data.DataError, match="unknown split 'dev'"):
        data.load_dataset("prosqa", "dev")


# -----------------------------------------------------------------------------
# Bad files: one line naming the file, the record and the problem, from load_dataset and from the CLI

GOOD = {"question": "Is Tom a wumpus?", "steps": ["Tom is a wumpus."], "answer": "Tom is a wumpus."}
BAD_FILES = [  # (dataset, file content, where, problem)
    ("prosqa", "[{", "", "not valid JSON"),
    ("prosqa", "[]", "", "no records"),
    ("prosqa", json.dumps({"question": "q"}), "", "expected a JSON list"),
    ("prosqa", json.dumps([GOOD, 3]), "record 1", "expected an object"),
    ("prosqa", json.dumps([GOOD, {**GOOD, "question": None}]), "record 1", "'question' is NoneType, not a string"),
    ("prosqa", json.dumps([{k: v for k, v in GOOD.items() if k != "answer"}]), "record 0", "no 'answer'"),
    ("prosqa", json.dumps([{**GOOD, "question": "  "}]), "record 0", "empty 'question'"),
    ("prontoqa", json.dumps([{k: v for k, v in GOOD.items() if k != "steps"}]), "record 0", "'steps' must be a list of strings"),
    ("prontoqa", json.dumps([GOOD, GOOD, {**GOOD, "steps": "Tom is a wumpus."}]), "record 2", "'steps' must be"),
    ("prontoqa", json.dumps([{**GOOD, "steps": [["nested"]]}]), "record 0", "'steps' must be"),
    ("gsm8k", "q<<1+1=2>> #### 2\n", "line 1", "no '||'"),
    ("gsm8k", "q||<<1+1=2>> #### 2\n\nq||<<1+1=2>> 2\n", "line 3", "no '####'"),
    ("gsm8k", "q||<<1+1=2>> #### \n", "line 1", "empty 'answer'"),
    ("gsm8k", "||<<1+1=2>> #### 2\n", "line 1", "empty 'question'"),
]


def write_bad(tmp_path, name, content):
    path = tmp_path / ("valid.txt" if name == "gsm8k" else f"{name}_valid.json")
    path.write_text(content)
    return path


@pytest.mark.parametrize("name, content, where, problem", BAD_FILES)
def test_bad_file_through_load_dataset(tmp_path, name, content, where, problem):
    path = write_bad(tmp_path, name, content)
    with pytest.raises(data.DataError) as e:
        data.load_dataset(name, "valid", data_dir=tmp_path)
    message = str(e.value)
    assert message.startswith(str(path)) and where in message and problem in message
    assert "\n" not in message


def run_cli(*args):
    return subprocess.run([sys.executable, "data.py", *args], cwd=ROOT, capture_output=True, text=True, timeout=120)


@pytest.mark.parametrize("name, content, where, problem", BAD_FILES)
def test_bad_file_through_cli(tmp_path, name, content, where, problem):
    path = write_bad(tmp_path, name, content)
    result = run_cli("--dataset", name, "--split", "valid", "--data_dir", str(tmp_path))
    assert result.returncode == 1
    assert "Traceback" not in result.stderr
    lines = result.stderr.splitlines()
    assert len(lines) == 1 and lines[0].startswith(f"error: {path}")
    assert where in lines[0] and problem in lines[0]


def test_cli_missing_file(tmp_path):
    result = run_cli("--dataset", "gsm8k", "--split", "test", "--data_dir", str(tmp_path))
    assert result.returncode == 1
    assert result.stderr == f"error: {tmp_path / 'test.txt'}: no such file\n"


def test_cli_summary(fixtures):
    result = run_cli("--dataset", "gsm8k", "--split", "test", "--data_dir", str(fixtures / "gsm8k"))
    assert result.returncode == 0, result.stderr
    records = data.load_dataset("gsm8k", "test", data_dir=fixtures / "gsm8k")
    steps = [len(r["steps"]) for r in records]
    assert f"records: {len(records)}" in result.stdout
    assert f"steps per record: mean {statistics.mean(steps):.2f}, max {max(steps)}" in result.stdout


# -----------------------------------------------------------------------------
# The ProsQA generator


def check_prosqa(record):
    """The ProsQA schema and text, as in the released files; returns the record's shortest path length."""
    symbols, edges = record["idx_to_symbol"], record["edges"]
    root, target, neg = record["root"], record["target"], record["neg_target"]
    has_parent = {b for _, b in edges}
    children = [[] for _ in symbols]
    for a, b in edges:
        children[a].append(b)
    dist = synthetic.bfs(children, root)[0]

    def sentence(a, b):
        return f"{symbols[a]} is a {symbols[b]}." if symbols[a][0].isupper() else f"Every {symbols[a]} is a {symbols[b]}."

    facts, question = record["question"].rsplit(". ", 1)
    # The question states every edge once, in any order, and asks about the root with both candidates.
    assert sorted(s + "." for s in facts.split(". ")) == sorted(sentence(a, b) for a, b in edges)
    assert question in (f"Is {symbols[root]} a {symbols[target]} or {symbols[neg]}?",
                        f"Is {symbols[root]} a {symbols[neg]} or {symbols[target]}?")
    assert record["answer"] == f"{symbols[root]} is a {symbols[target]}."
    assert neg not in dist  # the wrong answer is unreachable
    # The steps walk a shortest path of the graph from the root to the target.
    path = [root]
    for step in record["steps"]:
        nxt = [b for b in children[path[-1]] if sentence(path[-1], b) == step]
        assert len(nxt) == 1, step
        path.append(nxt[0])
    assert path[-1] == target and len(record["steps"]) == dist[target]
    assert root not in has_parent and all(s.islower() for i, s in enumerate(symbols) if i in has_parent)
    assert len(set(symbols)) == len(symbols)
    return dist[target]


def test_real_prosqa_passes_the_format_check(fixtures):
    hops = [check_prosqa(r) for r in data.load_dataset("prosqa", "valid", data_dir=fixtures / "prosqa")]
    assert min(hops) == 3


def test_generator_is_deterministic():
    a = synthetic.generate_prosqa(50, seed=7, settings=synthetic.SMALL)
    assert a == synthetic.generate_prosqa(50, seed=7, settings=synthetic.SMALL)
    assert a != synthetic.generate_prosqa(50, seed=8, settings=synthetic.SMALL)
    assert synthetic.generate_prosqa(5, seed=7) == synthetic.generate_prosqa(5, seed=7)


@functools.lru_cache(maxsize=None)
def paper_records():
    return synthetic.generate_prosqa(500, seed=0, settings=synthetic.PAPER)


def test_paper_graphs_match_published_statistics():
    stats = synthetic.graph_stats(paper_records())
    assert abs(stats["nodes"] - 23.0) < 2
    assert abs(stats["edges"] - 36.0) < 4
    assert abs(stats["hops"] - 3.8) < 0.4
    assert abs(stats["paths"] - 1.6) < 0.3
    assert min(check_prosqa(r) for r in paper_records()) == 3


def test_small_graphs_are_short_chains():
    records = synthetic.generate_prosqa(300, seed=1, settings=synthetic.SMALL)
    assert all(check_prosqa(r) >= synthetic.SMALL.min_hops >= 3 for r in records)
    lengths = [len(ids) for ids in data.tokenizer().encode_ordinary_batch([r["question"] for r in records])]
    assert max(lengths) < 128
    for r in records:
        assert len(r["edges"]) <= synthetic.SMALL.max_edges
        parents = {b: set() for _, b in r["edges"]}
        for a, b in r["edges"]:
            parents[b].add(a)
        assert 1 - r["root"] not in parents[r["neg_target"]]  # the wrong option is no other person's direct child
        sources = [a for a, _ in r["edges"]]
        assert len(sources) == len(set(sources))  # one child each: every step has one answer


@functools.lru_cache(maxsize=None)
def generated(name):
    return {split: data.load_dataset(name, split) for split in ("train", "valid", "test")}


@pytest.mark.parametrize("name", list(synthetic.GENERATED))
def test_generated_splits(name):
    splits = generated(name)
    assert {s: len(r) for s, r in splits.items()} == {s: synthetic.GENERATED[name][1][s][0] for s in splits}
    train = {r["question"] for r in splits["train"]}
    assert not any(r["question"] in train for r in splits["valid"] + splits["test"])  # held out: never trained on
    assert len({r["question"] for r in splits["test"]}) > 0.9 * len(splits["test"])


def test_ontology_questions_come_from_one_ontology():
    records = [r for split in generated("ontology").values() for r in split]
    assert all(check_prosqa(r) == synthetic.ONTOLOGY_HOPS == 3 for r in records)
    assert all(sum(s[0].isupper() for s in r["idx_to_symbol"]) == 1 for r in records)  # one person per question
    parent = {}
    for r in records:  # a concept has the same parent in every question
        for a, b in r["edges"]:
            if a > 0:
                assert parent.setdefault(r["idx_to_symbol"][a], r["idx_to_symbol"][b]) == r["idx_to_symbol"][b]
    assert len(parent) < synthetic.ONTOLOGY_SIZE
    lengths = [len(ids) for ids in data.tokenizer().encode_ordinary_batch([r["question"] for r in records])]
    assert max(lengths) < 64


SHELL = re.compile(r"The ball is under cup ([A-E])\. Swaps: ((?:[A-E]{2} ?)+)\. Where is the ball\?")


def solve_shell_game(question):
    """The independent solver: every cup's content as a list, the cups' contents exchanged at each swap; the
    ball's cup after each swap."""
    start, swaps = SHELL.fullmatch(question).groups()
    cups = {c: c == start for c in "ABCDE"}  # which cup holds the ball
    where = []
    for a, b in swaps.split():
        cups[a], cups[b] = cups[b], cups[a]
        where.append(next(c for c, ball in cups.items() if ball))
    return where


def test_shell_game_answers_and_steps_are_right():
    records = [r for split in generated("shellgame").values() for r in split]
    for r in records:
        where = solve_shell_game(r["question"])
        start, swaps = SHELL.fullmatch(r["question"])[1], SHELL.fullmatch(r["question"])[2].split()
        assert len(where) == 4 and all(a < b for a, b in swaps)
        assert r["answer"] == where[-1]
        assert r["steps"] == [f"{s}: {before} {after}" for s, before, after in zip(swaps, [start] + where, where)]
    assert len({r["answer"] for r in records}) == 5
    moved = sum(w != r["question"][22] for r in records for w in solve_shell_game(r["question"])[:1])
    assert 0.3 < moved / len(records) < 0.5  # the first swap moves the ball 2 times in 5


def test_shell_game_is_deterministic_and_each_swap_is_one_token_at_a_fixed_place():
    a = synthetic.shell_game(100, seed=5)
    assert a == synthetic.shell_game(100, seed=5) and a != synthetic.shell_game(100, seed=6)
    tokenized = [data.encode(r["question"]) for r in a]
    assert len({len(t) for t in tokenized}) == 1  # every question has the same length...
    swap_tokens = {data.encode(" " + a + b)[0] for a, b in itertools.combinations("ABCDE", 2)}
    assert len(swap_tokens) == 10 and all(len(data.encode(" " + a + b)) == 1 for a, b in itertools.combinations("ABCDE", 2))
    for t in tokenized:  # ...and its 4 swaps, one token each, in the same 4 columns
        assert [i for i, x in enumerate(t) if x in swap_tokens] == [i for i, x in enumerate(tokenized[0]) if x in swap_tokens]
        assert sum(x in swap_tokens for x in t) == 4


@pytest.mark.parametrize("name, split, length", [("shellgame", "test+1", 5), ("shellgame", "test+2", 6),
                                                  ("reachability", "test+1", 6), ("reachability", "test+2", 7)])
def test_longer_test_sets_are_one_and_two_steps_longer(name, split, length):
    """Past the training length: questions of the test split's kind, k steps longer, answered and stepped right by the
    independent solvers (a few of each; reachability's are slow to draw)."""
    generate, splits = synthetic.GENERATED[name]
    n, seed, settings = splits[split]
    records = generate(4, seed, **settings)
    assert n >= 200 and seed not in [splits[s][1] for s in splits if s != split]
    for r in records:
        assert len(r["steps"]) == length
        if name == "shellgame":
            where = solve_shell_game(r["question"])
            assert len(where) == length and r["answer"] == where[-1]
        else:
            candidates, root, hops, children = solve_reachability(r["question"])
            assert [c in hops for c in candidates].count(True) == 1 and hops[r["answer"]] == length
            assert len(r["idx_to_symbol"]) <= synthetic.REACHABILITY.nodes  # no node name training never saw
    with pytest.raises(data.DataError, match="ontology has no split 'test\\+1': .* for shellgame and reachability"):
        data.load_dataset("ontology", "test+1")


def test_cli_generate(tmp_path):
    out = tmp_path / "small.json"
    result = run_cli("--generate", "small", "--n", "20", "--seed", "3", "--out", str(out))
    assert result.returncode == 0, result.stderr
    assert json.loads(out.read_text()) == synthetic.generate_prosqa(20, 3, synthetic.SMALL)
    assert re.search(r"hops +\d\.\d\d +3\.8", result.stdout)


# -----------------------------------------------------------------------------
# Reachability: ProsQA's graphs in symbols, a node's children in a slot of its own

REACH = re.compile(r"Children: (.*)\. Is (\d+) or (\d+) reachable from (\d+)")


def solve_reachability(question):
    """The independent solver: the slots read back into lists of children, a breadth-first search from the root;
    the two candidates, the root, each number's hops from the root, and the children."""
    slots, a, b, root = REACH.fullmatch(question).groups()
    children = {}
    for i, slot in enumerate(slots.split(" | ")):
        name, kids = slot.split(": ")
        assert name == str(i)  # slots in the order of the numbers
        children[name] = [k for k in kids.split() if k != "-"]
        assert len(kids.split()) == synthetic.REACHABILITY.max_children
    hops, frontier, depth = {root: 0}, [root], 0
    while frontier:
        depth += 1
        frontier = list(dict.fromkeys(c for v in frontier for c in children[v] if c not in hops))
        hops.update((c, depth) for c in frontier)
    return (a, b), root, hops, children


def test_reachability_answers_and_steps_are_right():
    splits = generated("reachability")
    for r in [r for split in splits.values() for r in split]:
        candidates, root, hops, children = solve_reachability(r["question"])
        assert [c in hops for c in candidates].count(True) == 1  # exactly one candidate is reachable...
        assert r["answer"] in candidates and r["answer"] in hops  # ...and it is the answer
        assert 3 <= hops[r["answer"]] <= 5 and len(r["steps"]) == hops[r["answer"]]  # a shortest path, 3 to 5 hops
        path = [root]
        for step in r["steps"]:
            assert step == f" {step.strip()}" and step.strip() in children[path[-1]]  # a child of the node before
            path.append(step.strip())
        assert path[-1] == r["answer"]
        # The record's graph is the question's graph.
        symbols = r["idx_to_symbol"]
        assert sorted(symbols, key=int) == [str(i) for i in range(len(symbols))]
        assert sorted((symbols[a], symbols[b]) for a, b in r["edges"]) == sorted((a, b) for a in children for b in children[a])
        assert (symbols[r["root"]], symbols[r["target"]]) == (root, r["answer"])
    train = {r["question"] for r in splits["train"]}
    assert not any(r["question"] in train for r in splits["valid"] + splits["test"])  # held out: never trained on
    # Search matters: the root has several children on average, the path to the answer passes a node of two or more
    # children in most questions, and a walk that takes a random child at each step until a leaf ends at the answer
    # in at most half of them.
    rng, branches, forks, hits = random.Random(0), [], 0, 0
    for r in splits["test"]:
        _, v, _, children = solve_reachability(r["question"])
        branches.append(len(children[v]))
        forks += any(len(children[u]) > 1 for u in [v, *(step.strip() for step in r["steps"][:-1])])
        while children[v]:
            v = rng.choice(children[v])
        hits += v == r["answer"]
    n = len(splits["test"])
    assert statistics.mean(branches) > 1.5 and forks / n > 0.8 and hits / n <= 0.5


def test_reachability_is_deterministic_and_every_node_is_one_token():
    a = synthetic.reachability(50, seed=5)
    assert a == synthetic.reachability(50, seed=5) and a != synthetic.reachability(50, seed=6)
    for r in a:
        assert all(len(data.encode(" " + name)) == 1 for name in r["idx_to_symbol"])
        assert all(len(data.encode(step)) == 1 for step in r["steps"])


def test_reachability_as_the_preset_writes_it():
    """Symbols and no markers: the root is the question's last token, a thought stands where each node would be
    written, and the steps left follow the thoughts directly."""
    [rec], _ = data.tokenize(synthetic.reachability(1, seed=5), fmt="symbols")
    cur = data.Curriculum(max_latent_stage=5, format="symbols", markers=False, pad_latent_to_max=False)
    n = len(rec.steps)
    for stage in range(n + 1):
        e = cur.example(rec, stage)
        assert e.ids == rec.question + [data.LATENT] * stage + [t for s in rec.steps[stage:] for t in s] + rec.answer
        assert e.first_latent == e.label_start - stage == len(rec.question)
    assert cur.prompt(rec, cur.final_stage).ids == rec.question + [data.LATENT] * n  # one thought per hop
    assert data.decode(rec.answer) == "### " + data.decode(rec.steps[-1]).strip() + "<|endoftext|>"
    # CODI and PCCoT keep their own format and markers, which their distillation needs.
    for method in ("codi", "pccot"):
        other = data.Curriculum(method=method, format="symbols", markers=False)
        assert other.fmt == method and other.has_markers


def test_no_tokenizer_offline_is_one_line_that_says_what_to_do(tmp_path):
    """Without the tokenizer's files and without a network (a proxy that refuses every connection), python train.py
    names the files, where they come from and TIKTOKEN_CACHE_DIR, in one line."""
    env = dict(os.environ, TIKTOKEN_CACHE_DIR=str(tmp_path / "empty"), HTTPS_PROXY="http://127.0.0.1:9",
               HTTP_PROXY="http://127.0.0.1:9", NO_PROXY="")
    result = subprocess.run([sys.executable, "train.py", "--out_dir", str(tmp_path / "out")], cwd=ROOT, env=env,
                            capture_output=True, text=True, timeout=120)
    assert result.returncode == 1 and len(result.stderr.strip().splitlines()) == 1, result.stderr
    line = result.stderr.strip()
    assert line.startswith("error: no GPT-2 tokenizer: ") and "vocab.bpe and encoder.json" in line
    assert "set TIKTOKEN_CACHE_DIR to it" in line and data.TOKENIZER_FILES in line


def test_the_token_constants_are_the_tokenizers():
    assert data.encode("###") == [data.ANSWER_MARK] and data.encode("\n") == [data.NEWLINE]
    assert data.encode("<|endoftext|>") != [data.EOS] and data.tokenizer().encode("<|endoftext|>", allowed_special="all") == [data.EOS]
