"""
Data for Coconut: the GPT-2 tokenizer with three latent tokens, the three datasets of the paper
(GSM8k-Aug, ProntoQA, ProsQA), a generator of ProsQA-style questions (the paper's Algorithm 1), and the
"synthetic" questions of the offline default, small enough to train on a CPU.

Every dataset is a list of records {"question": str, "steps": [str, ...], "answer": str} (SPEC.md §1, §7);
ProsQA records also carry their graph (idx_to_symbol, edges, root, target, neg_target).

Check a split (downloads into ~/.cache/coconut, or $COCONUT_DATA_DIR, on first use):
    python data.py --dataset gsm8k --split test
    python data.py --dataset prosqa --split valid --data_dir DIR
Generate ProsQA-style questions and compare their graphs with the paper's:
    python data.py --generate paper --n 500 --seed 0 --out prosqa_paper.json
    python data.py --generate small --n 8000 --seed 0 --out prosqa_small.json   # or: large
"""
import argparse
import functools
import hashlib
import http.client
import json
import math
import os
import random
import statistics
import sys
import tempfile
import urllib.request
from dataclasses import dataclass
from pathlib import Path

import tiktoken
import torch

# -----------------------------------------------------------------------------
# Tokenizer: GPT-2 BPE plus three new tokens (SPEC.md §1)

EOS = 50256  # <|endoftext|>, also the pad id
BOT = 50257  # <|start-latent|>, "<bot>": the continuous thoughts start after it
EOT = 50258  # <|end-latent|>, "<eot>": language resumes after it
LATENT = 50259  # <|latent|>, the placeholder a continuous thought replaces
VOCAB_SIZE = 50260


@functools.lru_cache(maxsize=None)
def tokenizer():
    """tiktoken's gpt2 encoding with the three latent tokens appended."""
    gpt2 = tiktoken.get_encoding("gpt2")
    special = {"<|start-latent|>": BOT, "<|end-latent|>": EOT, "<|latent|>": LATENT}
    return tiktoken.Encoding(
        name="gpt2-coconut",
        pat_str=gpt2._pat_str,
        mergeable_ranks=gpt2._mergeable_ranks,
        special_tokens={**gpt2._special_tokens, **special},
    )


def encode(text):
    """Plain text to ids. A literal "<|latent|>" in the text is text, never the special id."""
    return tokenizer().encode_ordinary(text)


def decode(ids, skip_special=False):
    """Ids to text; special tokens show by name unless skip_special drops them."""
    drop = (EOS, BOT, EOT, LATENT) if skip_special else ()
    return tokenizer().decode([int(i) for i in ids if int(i) not in drop])


# -----------------------------------------------------------------------------
# Where the data comes from (SPEC.md §7): (dataset, split) -> (url, sha256 of the file we expect).
# ProntoQA has no hosted copy. ProsQA's train split lives on a branch, so its hash is not pinned.

_ICOT = "da03/Internalize_CoT_Step_by_Step/e06a32ee5e4cd117171daeb4755d2a97ece62761/data/gsm8k"
_PROSQA = "https://raw.githubusercontent.com/facebookresearch/coconut/main/data"
SOURCES = {
    ("gsm8k", "train"): (f"https://media.githubusercontent.com/media/{_ICOT}/train.txt",  # Git LFS
                         "0a3909a9e7d8d2f7ad6b8c7b5608aa744988d835f9bf874d4cf06ca77df6bf8c"),
    ("gsm8k", "valid"): (f"https://raw.githubusercontent.com/{_ICOT}/valid.txt",
                         "04f9bddfe8ac4846571b1e2b612b289c95770b5012fdb34cc36a597b041afb87"),
    ("gsm8k", "test"): (f"https://raw.githubusercontent.com/{_ICOT}/test.txt",
                        "e464efa2713fbcf423bdbfb482c543a6a086188c3d97c294b1d19a70c2a515e8"),
    ("prosqa", "train"): (f"{_PROSQA}/prosqa_train.json", None),
    ("prosqa", "valid"): (f"{_PROSQA}/prosqa_valid.json",
                          "c74e0de24f1e90ec48b1a993e6458a7be4caeef3928f5104e3c2e45d689a5249"),
    ("prosqa", "test"): (f"{_PROSQA}/prosqa_test.json",
                         "82ddc0afe6ee30eb31bb16fa208e293e55278a20fa987098d48519cae7e12680"),
}
DATASETS = ("gsm8k", "prosqa", "prontoqa", "synthetic")
SPLITS = ("train", "valid", "test")
SYNTHETIC_SPLITS = {"train": (3000, 1), "valid": (200, 2), "test": (500, 3)}  # split -> (records, seed)
PRONTOQA_HELP = ("ProntoQA has no hosted copy: generate it with the ProntoQA authors' generator "
                 "(github.com/asaparov/prontoqa; 5 hops, fictional ontology, random ordering) "
                 "and pass the folder holding {filename} as --data_dir")


class DataError(ValueError):
    """A dataset that cannot be had or read; the message is one line naming the file and the record."""


def download(url, dest, sha256=None):
    """Fetch url to dest atomically: the file appears only once it is complete and matches sha256."""
    dest = Path(dest)
    dest.parent.mkdir(parents=True, exist_ok=True)
    # A temp file in the same folder makes os.replace atomic, so a crash never leaves a partial dest.
    fd, tmp = tempfile.mkstemp(dir=dest.parent, prefix=f".{dest.name}.", suffix=".part")
    try:
        with os.fdopen(fd, "wb") as f, urllib.request.urlopen(url, timeout=60) as response:
            expected = response.headers.get("Content-Length")
            digest, size = hashlib.sha256(), 0
            # A dropped connection can end this loop early without an error: the size check below sees it.
            while chunk := response.read(1 << 20):
                f.write(chunk)
                digest.update(chunk)
                size += len(chunk)
        if expected is not None and size != int(expected):
            raise DataError(f"download of {url} stopped after {size} of {expected} bytes")
        if sha256 is not None and digest.hexdigest() != sha256:
            raise DataError(f"download of {url} has sha256 {digest.hexdigest()}, expected {sha256}")
        os.replace(tmp, dest)
    except (OSError, http.client.HTTPException) as e:  # URLError and timeouts are OSErrors
        raise DataError(f"download of {url} failed: {e}") from e
    finally:
        if os.path.exists(tmp):
            os.remove(tmp)


# -----------------------------------------------------------------------------
# Loading and checking the files


def load_dataset(name, split, data_dir=None, cache_dir=None):
    """The records of one split. data_dir: read its files only. Otherwise the cache folder
    (cache_dir, else $COCONUT_DATA_DIR, else ~/.cache/coconut), downloading what is missing."""
    if name not in DATASETS:
        raise DataError(f"unknown dataset {name!r}: choose from {', '.join(DATASETS)}")
    if split not in SPLITS:
        raise DataError(f"unknown split {split!r}: choose from {', '.join(SPLITS)}")
    if name == "synthetic":
        n, seed = SYNTHETIC_SPLITS[split]
        exclude = set() if split == "train" else {r["question"] for r in load_dataset(name, "train")}
        return generate_ontology(n, seed, exclude)
    filename = f"{split}.txt" if name == "gsm8k" else f"{name}_{split}.json"
    if data_dir is not None:
        path = Path(data_dir) / filename
        if not path.is_file():
            hint = f" ({PRONTOQA_HELP.format(filename=filename)})" if name == "prontoqa" else ""
            raise DataError(f"{path}: no such file{hint}")
    else:
        cache = cache_dir or os.environ.get("COCONUT_DATA_DIR") or "~/.cache/coconut"
        path = Path(cache).expanduser() / name / filename  # one folder per dataset: gsm8k's names are generic
        if not path.is_file():
            if (name, split) not in SOURCES:
                raise DataError(f"{path}: no such file ({PRONTOQA_HELP.format(filename=filename)})")
            url, sha256 = SOURCES[(name, split)]
            print(f"downloading {url} to {path}")
            download(url, path, sha256)
    records = read_gsm8k(path) if name == "gsm8k" else read_json(path)
    if not records:
        raise DataError(f"{path}: no records")
    return records


def read_gsm8k(path):
    """GSM8k-Aug text, one problem a line: `question||<<a*b=c>> <<...>> #### answer`."""
    records = []
    # split("\n"), not splitlines(): questions may hold other Unicode line breaks.
    for lineno, line in enumerate(_read_text(path).split("\n"), 1):
        if not line.strip():
            continue  # the newline that ends the file leaves an empty last line
        where = f"{path}, line {lineno}"
        if "||" not in line:
            raise DataError(f"{where}: no '||' between question and reasoning")
        question, rest = line.split("||", 1)
        if "####" not in rest:
            raise DataError(f"{where}: no '####' before the answer")
        # As the authors split: a line without steps gets one empty step, which becomes a lone "\n" (3.26 steps
        # per test record, not 3.25), and the curriculum counts it like any other.
        steps = rest.split("##")[0].strip().split(" ")
        record = {"question": question, "steps": steps, "answer": rest.split("##")[-1].strip()}
        records.append(_check(record, where))
    return records


def read_json(path):
    """ProsQA and ProntoQA: a JSON list of records."""
    try:
        records = json.loads(_read_text(path))
    except json.JSONDecodeError as e:
        raise DataError(f"{path}: not valid JSON ({e.msg} at line {e.lineno}, column {e.colno})") from None
    if not isinstance(records, list):
        raise DataError(f"{path}: expected a JSON list of records, got {type(records).__name__}")
    return [_check(record, f"{path}, record {i}") for i, record in enumerate(records)]


def _read_text(path):
    try:
        return Path(path).read_text(encoding="utf-8")
    except UnicodeDecodeError as e:
        raise DataError(f"{path}: not UTF-8 text ({e.reason} at byte {e.start})") from None


def _check(record, where):
    """The record if it has what training needs (extra fields are kept), else a DataError naming it."""
    if not isinstance(record, dict):
        raise DataError(f"{where}: expected an object, got {type(record).__name__}")
    for key in ("question", "answer"):
        if key not in record:
            raise DataError(f"{where}: no {key!r}")
        if not isinstance(record[key], str):
            raise DataError(f"{where}: {key!r} is {type(record[key]).__name__}, not a string")
        if not record[key].strip():
            raise DataError(f"{where}: empty {key!r}")
    steps = record.get("steps")
    if not isinstance(steps, list) or not all(isinstance(s, str) for s in steps):
        raise DataError(f"{where}: 'steps' must be a list of strings")
    return record


# -----------------------------------------------------------------------------
# ProsQA-style questions (paper appendix A.2, Algorithm 1)
#
# A DAG grows node by node. Nodes 0 and 1 start two families: label 1 = descendant of node 0,
# 2 = of node 1, 3 = of both, 0 = of neither. Each new node draws its number of parents from
# Poisson(1.5); the parents are drawn with weight depth*1.5 + 1 (deeper nodes make longer chains),
# with probability 0.35 only among nodes that do not descend from node 1, 0.35 only among those that
# do not descend from node 0, and 0.3 among all. Nodes without parents are people, the others made-up
# concepts. The question asks whether a root is a leaf of its own family (reachable) or a leaf of the
# other family (unreachable); the steps are a shortest path to the right one.
#
# What the paper leaves open we read off the released data (prosqa_valid/test.json): the target is
# always the deepest leaf of the entity's family, and the entity's family is the larger one, so we ask
# about whichever of nodes 0 and 1 has the deeper leaf (without this the paths average 3.5 hops, not
# 3.8). A node's depth is its longest chain of parents. Nodes that no edge touches never appear in
# the text and are dropped (the released graphs have none).

PAPER_STATS = {"nodes": 23.0, "edges": 36.0, "hops": 3.8, "paths": 1.6}  # the paper's Table 2


@dataclass(frozen=True)
class GraphSettings:
    """The size of the random graphs; the rest of Algorithm 1 is fixed in _grow_dag."""

    nodes: int  # nodes grown (Algorithm 1's N), before unused ones are dropped
    mean_parents: float  # Poisson mean of a new node's number of parents
    depth_weight: float = 1.5  # a candidate parent of depth d is drawn with weight d*depth_weight + 1
    max_children: int = 0  # a node with this many children is no longer a candidate parent (0: no limit)
    min_hops: int = 3  # shortest path from the entity to the answer, at least
    max_edges: int = 1000  # larger graphs are drawn again (keeps questions short)
    min_neg_hops: int = 1  # shortest path from the other person to the wrong option, at least
    names: str = "nonce"  # concept names: "nonce" (made-up, several tokens each) or "words" (WORDS, one token each)


# PAPER: 26 grown nodes leave about 23 once the unused ones are dropped; 2000 graphs measure 23.3 nodes,
# 34.8 edges, 3.79 hops, 1.46 shortest paths (python data.py --generate paper --n 2000).
PAPER = GraphSettings(nodes=26, mean_parents=1.5)
# SMALL: short questions whose every step has one answer: each concept has one child, so the path from the
# entity is a chain (3.6 hops on average) among other people's chains. The wrong option is at least as far
# from its person as the answer usually is: otherwise "the option another person directly is" gives it away.
SMALL = GraphSettings(nodes=10, mean_parents=1.0, depth_weight=6, max_children=1, max_edges=10, min_neg_hops=3,
                      names="words")

# LARGE: longer searches; 2000 graphs measure 35.3 nodes, 55.8 edges, 4.43 hops, 1.57 shortest paths.
LARGE = GraphSettings(nodes=40, mean_parents=1.5)

PEOPLE = ("Tom", "Alex", "Bob", "Max", "Sam", "Ann", "Eve", "Jack", "Kate", "Lily", "Mia", "Leo",
          "Ben", "Zoe", "Nina", "Paul", "Rose", "Sara", "Tim", "Amy", "Dan", "Fay", "Gus", "Ivy")


# Short English nouns that GPT-2 encodes as one token after a space (" cat"), for small graphs' concepts: a tiny
# model from scratch then learns to follow chains rather than to spell made-up words, and sequences are short.
WORDS = tuple("""cat dog cow pig fox owl bee ant bat ram hen yak ape rat frog bird fish bear wolf lion deer duck goat
    seal crab moth hawk crow worm mouse horse sheep tiger camel snake whale shark eagle goose squid trout raven bull
    calf pony slug snail tuna clam rabbit monkey donkey turtle spider pigeon tree rose leaf seed bush palm oak pine
    moss vine corn rice bean nut apple pear plum lemon grape peach cherry mango onion carrot car bus train ship boat
    plane truck bike cart van taxi wagon rocket cup bowl fork knife spoon pot pan jar box bag hat coat shoe""".split())


@functools.lru_cache(maxsize=None)
def nonce_words():
    """Made-up concept names: onset + vowel + coda + "pus", like ProsQA's "brimpus" (600 of them)."""
    onsets = "b bl br d dr f fl g gr j k l m n p pl r s sh sk sl st t tr v w y z sc scr".split()
    return tuple(o + v + c + "pus" for o in onsets for v in "aeiou" for c in ("m", "r", "l", "n"))


def _poisson(rng, mean):
    """Knuth's method: count uniform draws until their product falls below exp(-mean)."""
    k, p, limit = 0, rng.random(), math.exp(-mean)
    while p > limit:
        k, p = k + 1, p * rng.random()
    return k


def _grow_dag(rng, settings):
    """Algorithm 1: edges (parent, child) in the order the children were added, and each node's label."""
    edges, labels, depth, n_children = [], [1, 2], [0, 0], [0, 0]
    groups = {0: [], 1: [0], 2: [1], 3: []}
    for node in range(2, settings.nodes):
        n_parents, r = _poisson(rng, settings.mean_parents), rng.random()
        if r <= 0.35:
            candidates = groups[0] + groups[1]  # cannot descend from node 1
        elif r <= 0.7:
            candidates = groups[0] + groups[2]  # cannot descend from node 0
        else:
            candidates = list(range(node))
        if settings.max_children:
            candidates = [c for c in candidates if n_children[c] < settings.max_children]
        weights = [depth[c] * settings.depth_weight + 1 for c in candidates]
        parents = []
        for _ in range(min(n_parents, len(candidates))):  # weighted draws without replacement
            i = rng.choices(range(len(candidates)), weights)[0]
            parents.append(candidates.pop(i))
            weights.pop(i)
        label = 0
        for p in parents:
            edges.append((p, node))
            label |= labels[p]
            n_children[p] += 1
        labels.append(label)
        n_children.append(0)
        groups[label].append(node)
        depth.append(max((depth[p] + 1 for p in parents), default=0))
    return edges, labels


def bfs(children, root):
    """Hops from root to every node it reaches, the number of shortest paths, and one predecessor each."""
    dist, paths, prev, queue = {root: 0}, {root: 1}, {}, [root]
    for u in queue:
        for v in children[u]:
            if v not in dist:
                dist[v], paths[v], prev[v] = dist[u] + 1, paths[u], u
                queue.append(v)
            elif dist[v] == dist[u] + 1:
                paths[v] += paths[u]
    return dist, paths, prev


def _prosqa_record(rng, settings):
    """One question in the ProsQA schema, or None when this graph cannot make one."""
    edges, labels = _grow_dag(rng, settings)
    if len(edges) > settings.max_edges:
        return None
    used = sorted({v for edge in edges for v in edge})
    if used[:2] != [0, 1]:
        return None  # a root without children has no family to ask about
    index = {old: new for new, old in enumerate(used)}
    edges = [[index[a], index[b]] for a, b in edges]
    labels = [labels[old] for old in used]
    children, has_parent = [[] for _ in used], [False] * len(used)
    for a, b in edges:
        children[a].append(b)
        has_parent[b] = True
    leaves = [v for v in range(len(used)) if not children[v]]

    options = []  # (hops, root, target candidates, negative candidates, search from the root)
    for root in (0, 1):
        own = [v for v in leaves if labels[v] == 1 << root]  # reachable from this root only
        other_dist = bfs(children, 1 - root)[0]
        other = [v for v in leaves if labels[v] == 2 >> root  # reachable from the other root only
                 and other_dist.get(v, 0) >= settings.min_neg_hops]
        if own and other:
            search = bfs(children, root)
            hops = max(search[0][v] for v in own)
            options.append((hops, root, [v for v in own if search[0][v] == hops], other, search))
    options = [o for o in options if o[0] >= settings.min_hops]
    if not options:
        return None
    rng.shuffle(options)  # so that a tie goes to either root
    hops, root, targets, negatives, (dist, _, prev) = max(options, key=lambda o: o[0])
    target, neg_target = rng.choice(targets), rng.choice(negatives)

    people = [v for v in range(len(used)) if not has_parent[v]]
    if len(people) > len(PEOPLE):
        return None
    names = dict(zip(people, rng.sample(PEOPLE, len(people))))
    concepts = [v for v in range(len(used)) if has_parent[v]]
    names.update(zip(concepts, rng.sample(nonce_words() if settings.names == "nonce" else WORDS, len(concepts))))
    symbols = [names[v] for v in range(len(used))]

    def sentence(a, b):
        return f"{symbols[a]} is a {symbols[b]}." if not has_parent[a] else f"Every {symbols[a]} is a {symbols[b]}."

    facts = [sentence(a, b) for a, b in edges]
    rng.shuffle(facts)
    choices = [symbols[target], symbols[neg_target]]
    rng.shuffle(choices)  # the answer is first or second at random
    path = [target]
    while path[-1] != root:
        path.append(prev[path[-1]])
    path.reverse()
    return {
        "question": " ".join(facts) + f" Is {symbols[root]} a {choices[0]} or {choices[1]}?",
        "answer": f"{symbols[root]} is a {symbols[target]}.",
        "steps": [sentence(a, b) for a, b in zip(path, path[1:])],
        "idx_to_symbol": symbols,
        "edges": edges,
        "root": root,
        "target": target,
        "neg_target": neg_target,
    }


def generate_prosqa(n, seed, settings=PAPER):
    """n ProsQA-style records; the same seed gives the same records."""
    rng = random.Random(seed)
    records = []
    while len(records) < n:
        record = _prosqa_record(rng, settings)
        if record is not None:
            records.append(record)
    return records


# The offline default's questions. A tiny GPT from scratch does not learn to look facts up in its context within
# minutes on a CPU (measured: the loss of the looked-up concept stays at chance for 4000 steps), but it does learn
# facts it is taught. So every question here is cut from one fixed is-a forest of ONTOLOGY_SIZE concepts, in
# ProsQA's format (its facts are in the question too): "Tom is a X", "Every X is a P", "Every P is a Q" make Tom
# a Q, three hops, next to a chain "Every Y is a Y1", "Every Y1 is a Y2" that leads to the wrong option. There is
# one person, so that finding Tom's fact is not yet another lookup by content. Held-out questions are new
# combinations of person, chains and order, not new facts: a model can answer them from what it learned of X.
ONTOLOGY_SIZE, ONTOLOGY_TOPS, ONTOLOGY_HOPS = 48, 4, 3


def _chain(parent, x):
    """x and its ancestors up to ONTOLOGY_HOPS - 1 levels up: the concepts of a question's steps."""
    path = [x]
    while len(path) < ONTOLOGY_HOPS:
        path.append(parent[path[-1]])
    return path


@functools.lru_cache(maxsize=None)
def ontology():
    """The fixed forest: each concept's parent (None for the tops), its name, and the concepts a question can
    start from (those with ONTOLOGY_HOPS - 1 ancestors)."""
    rng = random.Random(0)
    parent, depth = [None] * ONTOLOGY_TOPS, [0] * ONTOLOGY_TOPS
    for c in range(ONTOLOGY_TOPS, ONTOLOGY_SIZE):
        p = rng.choices(range(c), [d + 1 for d in depth])[0]  # deeper parents are likelier: long chains
        parent.append(p)
        depth.append(depth[p] + 1)
    names = rng.sample(WORDS, ONTOLOGY_SIZE)
    return parent, names, [c for c in range(ONTOLOGY_SIZE) if depth[c] >= ONTOLOGY_HOPS - 1]


def generate_ontology(n, seed, exclude=frozenset()):
    """n three-hop questions from the fixed ontology, none of whose questions is in exclude (held-out splits
    exclude the training questions); the same seed gives the same records."""
    parent, names, starts = ontology()
    rng = random.Random(seed)
    records = []
    while len(records) < n:
        mine = _chain(parent, rng.choice(starts))
        ancestors, top = set(mine), mine[-1]
        while parent[top] is not None:
            top = parent[top]
            ancestors.add(top)
        theirs = _chain(parent, rng.choice(starts))
        if ancestors & set(theirs):
            continue  # the other chain's end must not be one of ours
        person = rng.choice(PEOPLE)
        symbols = [person] + [names[c] for c in mine + theirs]
        edges = [[0, 1], [1, 2], [2, 3], [4, 5], [5, 6]]
        facts = [f"{person} is a {symbols[b]}." if a == 0 else f"Every {symbols[a]} is a {symbols[b]}." for a, b in edges]
        choices = [symbols[3], symbols[6]]
        rng.shuffle(choices)
        question = " ".join(rng.sample(facts, len(facts))) + f" Is {person} a {choices[0]} or {choices[1]}?"
        if question in exclude:
            continue
        records.append({
            "question": question,
            "answer": f"{person} is a {symbols[3]}.",
            "steps": facts[:3],
            "idx_to_symbol": symbols, "edges": edges, "root": 0, "target": 3, "neg_target": 6,
        })
    return records


def graph_stats(records):
    """Mean nodes, edges, shortest-path hops (root to target) and number of shortest paths, as in Table 2."""
    rows = []
    for r in records:
        children = [[] for _ in r["idx_to_symbol"]]
        for a, b in r["edges"]:
            children[a].append(b)
        dist, paths, _ = bfs(children, r["root"])
        rows.append((len(children), len(r["edges"]), dist[r["target"]], paths[r["target"]]))
    return {key: statistics.mean(col) for key, col in zip(PAPER_STATS, zip(*rows))}


# -----------------------------------------------------------------------------------------------------------
# From records to training sequences: tokenization, the curriculum of each method, collation (SPEC §1, §3, §4)

@dataclass
class Tokenized:
    """A record's pieces as token ids, tokenized separately as the paper does (SPEC §1)."""
    question: list   # question + "\n"
    steps: list      # [step + "\n", ...]
    answer: list     # "### " + answer, then EOS


def tokenize(records, block_size=1024, max_latents=0):
    """Tokenize records once; a stage's sequences are then cheap to rebuild every epoch.

    Nothing is truncated: a record whose longest sequence (every step written out, plus the markers and
    max_latents thoughts) would not fit in block_size positions is skipped. Returns the tokenized records,
    and for each one the index of its record, so skipped ones can be counted and reported.
    """
    enc = tokenizer()
    questions = enc.encode_ordinary_batch([r["question"] + "\n" for r in records])
    answers = enc.encode_ordinary_batch(["### " + r["answer"] for r in records])
    flat_steps = enc.encode_ordinary_batch([s + "\n" for r in records for s in r["steps"]])
    out, kept, i = [], [], 0
    for idx, (r, q, a) in enumerate(zip(records, questions, answers)):
        steps, i = flat_steps[i:i + len(r["steps"])], i + len(r["steps"])
        if len(q) + sum(map(len, steps)) + len(a) + 1 + 2 + max_latents <= block_size:
            out.append(Tokenized(q, steps, a + [EOS]))
            kept.append(idx)
    return out, kept


# How each method of the paper's Table 1 (SPEC §4) builds its sequences:
#   stages:  "curriculum" follows the schedule, "cot" is stage 0 forever, "final" is the last stage from the start
#   latents: latent positions replace the removed steps (c_thought per step)
#   markers: <bot> and <eot> around the latents
#   feedback: a latent's input is the previous position's last hidden state (a continuous thought); without
#             feedback it is the learned embedding of <|latent|> (a pause token)
# icot removes leading CoT tokens instead of whole steps (Deng et al. 2024).
METHODS = {
    #                   stages        latents markers feedback
    "coconut":          ("curriculum", True,  True,  True),
    "no_curriculum":    ("final",      True,  True,  True),
    "pause_as_thought": ("curriculum", True,  True,  False),
    "pause":            ("final",      True,  True,  False),
    "no_thoughts":      ("curriculum", False, False, False),
    "cot":              ("cot",        False, False, False),
    "no_cot":           ("final",      False, False, False),
    "icot":             ("curriculum", False, False, False),
}


@dataclass
class Example:
    """One sequence: ids, where its supervised tokens start, and where its latents are."""
    ids: list
    label_start: int      # ids[label_start:] are supervised (steps left, answer, EOS); before is context
    first_latent: int     # position of the first latent (meaningless without latents)
    n_latents: int


@dataclass(frozen=True)
class Curriculum:
    """The multi-stage curriculum of one method (SPEC §1, §4, §5)."""
    method: str = "coconut"
    c_thought: int = 1             # continuous thoughts per removed reasoning step
    max_latent_stage: int = 6      # stages 1..max replace steps by thoughts; later stages remove every step
    epochs_per_stage: int = 5
    pad_latent_to_max: bool = True  # beyond max_latent_stage: always max*c thoughts, even for shorter records
    uniform_prob: float = 0.0      # chance that a record trains at a stage drawn from 0..len(steps) instead
    icot_tokens_per_stage: int = 8  # icot: leading CoT tokens removed per stage

    def __post_init__(self):
        if self.method not in METHODS:
            raise ValueError(f"unknown method '{self.method}': expected one of {', '.join(METHODS)}")

    @property
    def final_stage(self):
        return self.max_latent_stage + 1

    @property
    def feedback(self):
        return METHODS[self.method][3]

    def stage(self, epoch):
        """The scheduled stage at an epoch (0-based)."""
        stage = epoch // self.epochs_per_stage
        # Every stage past max_latent_stage is the final one; icot's stages keep removing tokens.
        return self._fixed(stage if self.method == "icot" else min(stage, self.final_stage))

    def is_final(self, stage):
        """Whether a stage trains the method's final format: the checkpoints that compete for "best"."""
        return self.method == "icot" or METHODS[self.method][0] != "curriculum" or stage >= self.final_stage

    def _fixed(self, stage):
        """The stage a method really uses: cot stays at 0, the "final" methods at the final stage."""
        return {"cot": 0, "final": self.final_stage}.get(METHODS[self.method][0], stage)

    def _steps_and_latents(self, rec, stage):
        """The steps still written out at a stage, and how many latents stand for the removed ones."""
        if stage > self.max_latent_stage:
            n = self.max_latent_stage if self.pad_latent_to_max else min(len(rec.steps), self.max_latent_stage)
            steps = []
        else:
            n, steps = stage, rec.steps[stage:]
        return steps, (n * self.c_thought if METHODS[self.method][1] else 0)

    def _context(self, rec, n_latents):
        """question | <bot> <latent> x n <eot>, the markers only for methods that have them."""
        if METHODS[self.method][2]:
            return rec.question + [BOT] + [LATENT] * n_latents + [EOT]
        return list(rec.question)

    def example(self, rec, stage, rng=None):
        """The training sequence of a record at a stage; rng draws the stage mixing (uniform_prob)."""
        if self.method == "icot":
            cot = [t for step in rec.steps for t in step]
            return Example(rec.question + cot[stage * self.icot_tokens_per_stage:] + rec.answer,
                           len(rec.question), 0, 0)
        stage = self._fixed(stage)
        if (self.uniform_prob > 0 and METHODS[self.method][0] == "curriculum"
                and rng is not None and rng.random() < self.uniform_prob):
            stage = rng.randrange(len(rec.steps) + 1)
        steps, n = self._steps_and_latents(rec, stage)
        context = self._context(rec, n)
        ids = context + [t for step in steps for t in step] + rec.answer
        return Example(ids, len(context), len(rec.question) + 1, n)

    def prompt(self, rec, stage, n_latents=None):
        """The evaluation prompt at a stage: the question, and that stage's thoughts between the markers.
        n_latents forces that many thoughts instead (the paper's sweep over k, SPEC §9)."""
        stage = self._fixed(stage)
        cap = self.max_latent_stage if self.pad_latent_to_max else min(self.max_latent_stage, len(rec.steps))
        if not METHODS[self.method][1]:
            n_latents = 0
        elif n_latents is None:
            n_latents = min(stage, cap) * self.c_thought
        context = self._context(rec, n_latents)
        return Example(context, len(context), len(rec.question) + 1, n_latents)


@dataclass
class Batch:
    """Collated examples (SPEC §3): every row's first latent sits in column `first_latent`."""
    ids: torch.Tensor         # (B, T) token ids; padding is EOS
    pos: torch.Tensor         # (B, T) position ids, 0 at each row's first real token
    mask: torch.Tensor        # (B, T) True for real tokens
    starts: torch.Tensor      # (B,) column of each row's first real token (its left padding)
    ends: torch.Tensor        # (B,) column after each row's last real token
    n_latents: torch.Tensor   # (B,) latents per row
    target_idx: torch.Tensor  # (N,) flat positions row * T + col whose next token is supervised
    targets: torch.Tensor     # (N,) that next token
    first_latent: int         # plain ints, so the model's loop never waits on the device
    max_latents: int

    def to(self, device):
        moved = {k: v.to(device, non_blocking=True) if torch.is_tensor(v) else v for k, v in vars(self).items()}
        return Batch(**moved)


def collate(examples, align_ends=False):
    """Pad examples into a Batch.

    A row with latents is left-padded so its first latent lands in the latest first-latent column of the
    batch. A row without latents is not shifted; with align_ends (generation prompts) it is left-padded to
    end in that column instead, so that all rows start generating together. Then every row is right-padded.
    """
    anchors = [e.first_latent if e.n_latents else len(e.ids) for e in examples]
    aligned = [bool(e.n_latents) or align_ends for e in examples]
    column = max((a for a, al in zip(anchors, aligned) if al), default=0)
    starts = [column - a if al else 0 for a, al in zip(anchors, aligned)]
    T = max(s + len(e.ids) for s, e in zip(starts, examples))
    B = len(examples)
    ids = torch.full((B, T), EOS, dtype=torch.long)
    pos = torch.zeros(B, T, dtype=torch.long)
    mask = torch.zeros(B, T, dtype=torch.bool)
    target_idx, targets = [], []
    for row, (s, e) in enumerate(zip(starts, examples)):
        n = len(e.ids)
        ids[row, s:s + n] = torch.tensor(e.ids)
        pos[row, s:s + n] = torch.arange(n)
        mask[row, s:s + n] = True
        target_idx.extend(range(row * T + s + e.label_start - 1, row * T + s + n - 1))
        targets.extend(e.ids[e.label_start:])
    n_latents = [e.n_latents for e in examples]
    return Batch(ids, pos, mask, torch.tensor(starts), torch.tensor([s + len(e.ids) for s, e in zip(starts, examples)]),
                 torch.tensor(n_latents), torch.tensor(target_idx, dtype=torch.long),
                 torch.tensor(targets, dtype=torch.long), column, max(n_latents))


# -----------------------------------------------------------------------------
# Command line


def summarize(records):
    """Lines describing a dataset: size, steps per record, question and answer lengths in tokens."""
    steps = [len(r["steps"]) for r in records]
    lines = [f"records: {len(records)}", f"steps per record: mean {statistics.mean(steps):.2f}, max {max(steps)}"]
    for key in ("question", "answer"):
        lengths = [len(ids) for ids in tokenizer().encode_ordinary_batch([r[key] for r in records])]
        lines.append(f"{key} tokens: mean {statistics.mean(lengths):.1f}, max {max(lengths)}")
    if "edges" in records[0]:
        ours = graph_stats(records)
        lines.append("graph      ours  paper")
        lines += [f"  {key:<7} {ours[key]:5.2f}  {PAPER_STATS[key]:5.1f}" for key in PAPER_STATS]
    return lines


def main(argv=None):
    parser = argparse.ArgumentParser(description="Check a Coconut dataset, or generate ProsQA-style data.")
    task = parser.add_mutually_exclusive_group(required=True)
    task.add_argument("--dataset", choices=DATASETS, help="dataset to load, check and summarize")
    task.add_argument("--generate", choices=("paper", "small", "large"), help="generate ProsQA-style records with these graph settings")
    parser.add_argument("--split", default="valid", choices=SPLITS, help="split of --dataset")
    parser.add_argument("--data_dir", help="read the split's file from this folder (original file names), no download")
    parser.add_argument("--cache_dir", help="download cache (default $COCONUT_DATA_DIR or ~/.cache/coconut)")
    parser.add_argument("--n", type=int, default=500, help="number of records to generate")
    parser.add_argument("--seed", type=int, default=0, help="seed of the generator")
    parser.add_argument("--out", help="JSON file the generated records are written to")
    args = parser.parse_args(argv)
    if args.n < 1:
        parser.error("--n must be at least 1")
    try:
        if args.dataset:
            records = load_dataset(args.dataset, args.split, args.data_dir, args.cache_dir)
        else:
            records = generate_prosqa(args.n, args.seed, {"paper": PAPER, "small": SMALL, "large": LARGE}[args.generate])
            if args.out:
                Path(args.out).write_text(json.dumps(records))
                print(f"wrote {len(records)} records to {args.out}")
        print("\n".join(summarize(records)))
    except (DataError, OSError) as e:
        sys.exit(f"error: {e}")


if __name__ == "__main__":
    main()
