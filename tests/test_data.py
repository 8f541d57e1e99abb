"""data.py: the real splits load with their published sizes, downloads are atomic, bad files fail with one
clear line, and the ProsQA generator makes graphs like the paper's."""
import functools
import hashlib
import http.server
import json
import re
import statistics
import subprocess
import sys
import threading
from pathlib import Path

import pytest

import data

ROOT = Path(__file__).resolve().parents[1]


# -----------------------------------------------------------------------------
# Real data


@pytest.mark.parametrize("name, split, n", [
    ("gsm8k", "valid", 500), ("gsm8k", "test", 1319),
    ("prosqa", "valid", 300), ("prosqa", "test", 500),
    ("prontoqa", "train", 9000), ("prontoqa", "valid", 200), ("prontoqa", "test", 800),
])
def test_record_counts(shared_data, name, split, n):
    records = data.load_dataset(name, split, data_dir=shared_data / name)
    assert len(records) == n
    assert all(isinstance(r["question"], str) and isinstance(r["answer"], str) for r in records)


def test_gsm8k_parsing(shared_data):
    records = data.load_dataset("gsm8k", "test", data_dir=shared_data / "gsm8k")
    assert records[0]["steps"] == ["<<16-3-4=9>>", "<<9*2=18>>"]
    assert records[0]["answer"] == "18"
    assert records[0]["question"].endswith("How much in dollars does she make every day at the farmers' market?")
    steps = [len(r["steps"]) for r in records]
    assert max(steps) == 8
    # 18 problems have no steps; split(" ") gives each one empty step, as the authors' preprocessing does.
    assert sum(r["steps"] == [""] for r in records) == 18
    assert round(statistics.mean(steps), 2) == 3.26


def test_prosqa_keeps_graph_fields(shared_data):
    record = data.load_dataset("prosqa", "valid", data_dir=shared_data / "prosqa")[0]
    assert record["idx_to_symbol"][record["root"]] == "Tom"
    assert record["idx_to_symbol"][record["target"]] == "lempus"
    assert [1, 3] in record["edges"] and record["neg_target"] == 13


def test_graph_stats_of_real_prosqa_match_the_paper(shared_data):
    # The published statistics describe this data: a check of graph_stats before we trust it on ours.
    stats = data.graph_stats(data.load_dataset("prosqa", "test", data_dir=shared_data / "prosqa"))
    assert stats["nodes"] == pytest.approx(22.80, abs=0.01)
    assert stats["edges"] == pytest.approx(35.84, abs=0.01)
    assert stats["hops"] == pytest.approx(3.78, abs=0.01)
    assert stats["paths"] == pytest.approx(1.57, abs=0.01)


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


def test_load_dataset_downloads_once_into_the_cache(server, shared_data, tmp_path, monkeypatch):
    url, files, hits = server
    body = (shared_data / "gsm8k" / "valid.txt").read_bytes()
    files["/valid.txt"] = (body, len(body))
    monkeypatch.setitem(data.SOURCES, ("gsm8k", "valid"), (f"{url}/valid.txt", sha256(body)))
    assert len(data.load_dataset("gsm8k", "valid", cache_dir=tmp_path)) == 500
    assert (tmp_path / "gsm8k" / "valid.txt").read_bytes() == body
    assert len(data.load_dataset("gsm8k", "valid", cache_dir=tmp_path)) == 500
    monkeypatch.setenv("COCONUT_DATA_DIR", str(tmp_path))  # the same cache, found through the environment
    assert len(data.load_dataset("gsm8k", "valid")) == 500
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


def test_cli_summary(shared_data):
    result = run_cli("--dataset", "gsm8k", "--split", "test", "--data_dir", str(shared_data / "gsm8k"))
    assert result.returncode == 0, result.stderr
    assert "records: 1319" in result.stdout
    assert "steps per record: mean 3.26, max 8" in result.stdout


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
    dist = data.bfs(children, root)[0]

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


def test_real_prosqa_passes_the_format_check(shared_data):
    hops = [check_prosqa(r) for r in data.load_dataset("prosqa", "valid", data_dir=shared_data / "prosqa")]
    assert min(hops) == 3


def test_generator_is_deterministic():
    a = data.generate_prosqa(50, seed=7, settings=data.SMALL)
    assert a == data.generate_prosqa(50, seed=7, settings=data.SMALL)
    assert a != data.generate_prosqa(50, seed=8, settings=data.SMALL)
    assert data.generate_prosqa(5, seed=7) == data.generate_prosqa(5, seed=7)


@functools.lru_cache(maxsize=None)
def paper_records():
    return data.generate_prosqa(500, seed=0, settings=data.PAPER)


def test_paper_graphs_match_published_statistics():
    stats = data.graph_stats(paper_records())
    assert abs(stats["nodes"] - 23.0) < 2
    assert abs(stats["edges"] - 36.0) < 4
    assert abs(stats["hops"] - 3.8) < 0.4
    assert abs(stats["paths"] - 1.6) < 0.3
    assert min(check_prosqa(r) for r in paper_records()) == 3


@functools.lru_cache(maxsize=None)
def synthetic():
    return {split: data.load_dataset("synthetic", split) for split in data.SPLITS}


def test_synthetic_splits():
    splits = synthetic()
    assert {s: len(r) for s, r in splits.items()} == {s: n for s, (n, _) in data.SYNTHETIC_SPLITS.items()}
    train = {r["question"] for r in splits["train"]}
    assert not any(r["question"] in train for r in splits["valid"] + splits["test"])  # held out: never trained on


def test_small_graphs_are_short_chains():
    records = data.generate_prosqa(300, seed=1, settings=data.SMALL)
    assert all(check_prosqa(r) >= data.SMALL.min_hops >= 3 for r in records)
    lengths = [len(ids) for ids in data.tokenizer().encode_ordinary_batch([r["question"] for r in records])]
    assert max(lengths) < 128
    for r in records:
        assert len(r["edges"]) <= data.SMALL.max_edges
        parents = {b: set() for _, b in r["edges"]}
        for a, b in r["edges"]:
            parents[b].add(a)
        assert 1 - r["root"] not in parents[r["neg_target"]]  # the wrong option is no other person's direct child
        sources = [a for a, _ in r["edges"]]
        assert len(sources) == len(set(sources))  # one child each: every step has one answer


def test_synthetic_questions_come_from_one_ontology():
    records = [r for split in synthetic().values() for r in split]
    assert all(check_prosqa(r) == data.ONTOLOGY_HOPS == 3 for r in records)
    assert all(sum(s[0].isupper() for s in r["idx_to_symbol"]) == 1 for r in records)  # one person per question
    parent = {}
    for r in records:  # a concept has the same parent in every question
        for a, b in r["edges"]:
            if a > 0:
                assert parent.setdefault(r["idx_to_symbol"][a], r["idx_to_symbol"][b]) == r["idx_to_symbol"][b]
    assert len(parent) < data.ONTOLOGY_SIZE
    lengths = [len(ids) for ids in data.tokenizer().encode_ordinary_batch([r["question"] for r in records])]
    assert max(lengths) < 64


def test_cli_generate(tmp_path):
    out = tmp_path / "small.json"
    result = run_cli("--generate", "small", "--n", "20", "--seed", "3", "--out", str(out))
    assert result.returncode == 0, result.stderr
    assert json.loads(out.read_text()) == data.generate_prosqa(20, 3, data.SMALL)
    assert re.search(r"hops +\d\.\d\d +3\.8", result.stdout)
