"""
Datasets generated offline from a seed: the shell game of the offline default, ProsQA-style graphs (the
paper's Algorithm 1, appendix A.2), and three-hop questions from one fixed ontology. Each generator
returns records in the format of every dataset here: {"question": str, "steps": [str, ...], "answer": str}.

    python data.py --dataset shellgame --split test     # a generated dataset, summarized
    python data.py --generate paper --n 500 --out prosqa_paper.json
"""
import dataclasses
import functools
import math
import random
import statistics
from dataclasses import dataclass

# -----------------------------------------------------------------------------
# The shell game, the offline default (docs/shell-game.md)
#
# A ball lies under one of five cups, A to E; then two cups at a time change places, four times. Where is the
# ball? One swap is easy: the ball moves iff its cup is one of the two. Four swaps compose four order-dependent
# steps (permutations: Merrill et al. 2024, "The Illusion of State in State-Space Models"; Li et al. 2024,
# "Chain of Thought Empowers Transformers to Solve Inherently Serial Problems"), which a shallow transformer
# does not do in one forward pass but does one step at a time: in written steps, or in continuous thoughts.
#
#     question: The ball is under cup C. Swaps: AD CE BC AB. Where is the ball?
#     steps:    AD: C C / CE: C E / BC: E B / AB: B A      (the swap, where the ball was, where it is)
#     answer:   A
#
# Every swap is one token (" AD"), so swap j sits in a fixed column of every question, and thought j finds it at
# a fixed distance behind itself. A written step names its swap, then the ball's cup before and after it: the
# cup before is a copy from three tokens back (the last step's, or the last thought's), and the cup after is
# computed from the two tokens just written, where the cup before is the position's own input, as a thought's
# state is its own input. Both are quick for a small model to learn, and they carry over to the thoughts.

CUPS = "ABCDE"


def shell_game(n, seed, exclude=frozenset(), cups=5, swaps=4):
    """n shell-game questions, none of whose questions is in exclude; the same seed gives the same records."""
    names = CUPS[:cups]
    rng = random.Random(seed)
    records = []
    while len(records) < n:
        ball = start = rng.randrange(cups)
        pairs, steps = [], []
        for _ in range(swaps):
            a, b = sorted(rng.sample(range(cups), 2))
            before, ball = ball, b if ball == a else a if ball == b else ball
            pairs.append(names[a] + names[b])
            steps.append(f"{pairs[-1]}: {names[before]} {names[ball]}")
        question = f"The ball is under cup {names[start]}. Swaps: {' '.join(pairs)}. Where is the ball?"
        if question not in exclude:
            records.append({"question": question, "steps": steps, "answer": names[ball]})
    return records


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
    max_hops: int = 1000  # ... and at most
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


def _prosqa_graph(rng, settings):
    """One question's graph (Algorithm 1): (children of each node, whether each has a parent, edges, root, target,
    wrong option, the shortest path root -> target), or None when this graph cannot make a question."""
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
    options = [o for o in options if settings.min_hops <= o[0] <= settings.max_hops]
    if not options:
        return None
    rng.shuffle(options)  # so that a tie goes to either root
    hops, root, targets, negatives, (dist, _, prev) = max(options, key=lambda o: o[0])
    target, neg_target = rng.choice(targets), rng.choice(negatives)
    path = [target]
    while path[-1] != root:
        path.append(prev[path[-1]])
    return children, has_parent, edges, root, target, neg_target, path[::-1]


def _prosqa_record(rng, settings):
    """One question in the ProsQA schema, or None when this graph cannot make one."""
    graph = _prosqa_graph(rng, settings)
    if graph is None:
        return None
    children, has_parent, edges, root, target, neg_target, path = graph
    people = [v for v in range(len(children)) if not has_parent[v]]
    if len(people) > len(PEOPLE):
        return None
    names = dict(zip(people, rng.sample(PEOPLE, len(people))))
    concepts = [v for v in range(len(children)) if has_parent[v]]
    names.update(zip(concepts, rng.sample(nonce_words() if settings.names == "nonce" else WORDS, len(concepts))))
    symbols = [names[v] for v in range(len(children))]

    def sentence(a, b):
        return f"{symbols[a]} is a {symbols[b]}." if not has_parent[a] else f"Every {symbols[a]} is a {symbols[b]}."

    facts = [sentence(a, b) for a, b in edges]
    rng.shuffle(facts)
    choices = [symbols[target], symbols[neg_target]]
    rng.shuffle(choices)  # the answer is first or second at random
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


# -----------------------------------------------------------------------------
# Reachability: ProsQA's graphs in symbols (docs/latent-search.md)
#
# Algorithm 1's graphs, written for a small model: every node is a number (one token), and the question lists each
# node's children in a slot of its own, slots in the order of the numbers, "-" where a node has fewer than
# max_children. The steps are the nodes of a shortest path from the root to the answer, one token each.
#
#     question: Children: 0: 9 - - | 1: - - - | 2: 7 11 - | ... | 13: 2 - - . Is 7 or 4 reachable from 13
#     steps:    2 / 7
#     answer:   7
#
# The question ends with the root, so that the root's own position writes the first step, and every written node
# the next: one lookup of the node's own slot. A continuous thought then stands where a node would be written and
# does that same lookup for all the nodes it holds (data.FORMATS["symbols"], recipes.PRESETS["reachability"]).
#
# Why slots: node v's children then sit in the same columns in every question, so that looking them up is a lookup
# by position, which a two-layer model from scratch learns within minutes. Written as a list of edges ("13 2, 2 7,
# ...") the same graphs take a lookup by content: at lr 1e-3, after 1,878 steps, 17% of the first steps written by
# CoT were edges of the graph, against 100% with slots. Nodes are numbered at random, so a number tells nothing of
# where its node sits in the graph.

# About 13 nodes, 14 edges, up to 3 children each, the answer 3 to 5 hops away (python data.py --dataset
# reachability --split test prints the measured sizes): the sizes at which Coconut, two layers of width 128, reaches
# 90% within 20 minutes of a 2-core CPU; with 16 nodes and 21 edges it reached 82-83% (docs/latent-search.md).
REACHABILITY = GraphSettings(nodes=14, mean_parents=1.3, max_children=3, max_edges=18, min_hops=3, max_hops=5)


def reachability(n, seed, exclude=frozenset(), settings=REACHABILITY):
    """n reachability questions, none of whose questions is in exclude; the same seed gives the same records."""
    rng = random.Random(seed)
    records = []
    while len(records) < n:
        graph = _prosqa_graph(rng, settings)
        if graph is None:
            continue
        children, _, edges, root, target, neg_target, path = graph
        number = rng.sample(range(len(children)), len(children))  # node -> its name
        node = {number[v]: v for v in range(len(children))}
        slots = [" ".join([str(c) for c in sorted(number[c] for c in children[node[i]])]
                          + ["-"] * (settings.max_children - len(children[node[i]])))
                 for i in range(len(children))]
        choices = [number[target], number[neg_target]]
        rng.shuffle(choices)  # the answer is first or second at random
        question = (f"Children: {' | '.join(f'{i}: {slot}' for i, slot in enumerate(slots))}. "
                    f"Is {choices[0]} or {choices[1]} reachable from {number[root]}")
        if question in exclude:
            continue
        records.append({
            "question": question,
            "steps": [f" {number[v]}" for v in path[1:]],
            "answer": str(number[target]),
            "idx_to_symbol": [str(i) for i in number],
            "edges": edges,
            "root": root,
            "target": target,
            "neg_target": neg_target,
        })
    return records


# The offline default's questions. A tiny GPT from scratch does not learn to look facts up in its context within
# minutes on a CPU (measured: the loss of the looked-up concept stays at chance for 4000 steps), but it does learn
# facts it is taught. So every question here is cut from one fixed is-a forest of ONTOLOGY_SIZE concepts, in
# ProsQA's format (its facts are in the question too): "Tom is a X", "Every X is a P", "Every P is a Q" make Tom
# a Q, three hops, next to a chain "Every Y is a Y1", "Every Y1 is a Y2" that leads to the wrong option. There is
# one person, so that finding Tom's fact is not yet another lookup by content. Held-out questions are new
# combinations of person, chains and order, not new facts: a model can answer them from what it learned of X.
ONTOLOGY_SIZE, ONTOLOGY_TOPS, ONTOLOGY_HOPS = 48, 4, 3


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


# -----------------------------------------------------------------------------
# The generated datasets: each split is a function of its seed; held-out splits exclude every training question.
# "test+1" and "test+2" are test sets one and two steps longer than training, their questions otherwise alike (the
# shell game with 5 and 6 swaps; reachability with answers 6 and 7 hops away, fewer of the latter, which Algorithm 1
# makes rarely: a few seconds a question): does a loop of thoughts trained on 4 steps run a fifth?

GENERATED = {  # name -> (generator of (n, seed, exclude, **settings), {split: (records, seed, settings)})
    "shellgame": (shell_game, {"train": (8000, 1, {}), "valid": (200, 2, {}), "test": (500, 3, {}),
                               "test+1": (500, 4, dict(swaps=5)), "test+2": (500, 5, dict(swaps=6))}),
    "ontology": (generate_ontology, {"train": (3000, 1, {}), "valid": (200, 2, {}), "test": (500, 3, {})}),
    "reachability": (reachability, {
        "train": (8000, 1, {}), "valid": (300, 2, {}), "test": (500, 3, {}),
        "test+1": (500, 4, dict(settings=dataclasses.replace(REACHABILITY, min_hops=6, max_hops=6))),
        "test+2": (200, 5, dict(settings=dataclasses.replace(REACHABILITY, min_hops=7, max_hops=7)))}),
}


@functools.lru_cache(maxsize=None)
def _generated(name, split):
    generate, splits = GENERATED[name]
    n, seed, settings = splits[split]
    exclude = frozenset() if split == "train" else frozenset(r["question"] for r in _generated(name, "train"))
    return tuple(generate(n, seed, exclude, **settings))


def generated(name, split):
    """The records of a generated dataset's split (computed once per process)."""
    return list(_generated(name, split))
