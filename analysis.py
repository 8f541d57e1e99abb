"""
Looking inside the thoughts: the paper's analysis of ProsQA (§5: the class of each output and the value of each
frontier node after k forced thoughts) and, in graphs of symbols (synthetic.reachability), the search in the
thoughts ("Reasoning by Superposition", Zhu et al. 2025): what each thought holds of every node, and where the last
layer reads while computing it. Also what the steps of any method hold of the frontier, hop by hop (the grid's
comparison of Coconut's thoughts with Soft Thinking's concept tokens).

    python analysis.py --ckpt out/prosqa-coconut/best --plot_dir plots          # prosqa.png, and the table
    python analysis.py --ckpt out/reachability-coconut/coconut/best --plot_dir plots   # and thoughts.png, attention.png
    python analysis.py --ckpt out/prosqa-cot/best --out analysis.json           # k = 0 only: CoT has no thoughts

Every flag of eval.py that chooses the model and the records works here too (--data_dir, --split, --max_examples).
"""
import contextlib
import functools
import json
import math
import re
import statistics
from pathlib import Path

import torch
import torch.distributed as dist

from coconut import naive_thoughts
from common import gather, one_line_errors, print0, progress_bar
from data import Example, collate, decode, encode, tokenize
from eval import arguments, evaluate, is_correct, start, write_out
from plots import plot_prosqa, plot_search
from synthetic import bfs

# -----------------------------------------------------------------------------------------------------------
# The paper's §5 on ProsQA: outputs after k forced thoughts, and the value of each frontier node

# The paper's classes of an output (§5.1): a written path that is a shortest one to the answer, a longer one, one that
# leaves the graph (an edge that does not exist, or steps that do not chain), one that ends elsewhere; and for an
# output with no written step, whether its label is right.
PROSQA_CLASSES = ("correct_path", "longer_path", "hallucination", "wrong_target", "correct_label", "incorrect_label")
SENTENCE = re.compile(r"(?:Every )?(\S+) is an? (\S+)\.")  # "Tom is a terpus." or "Every terpus is a brimpus."


def is_symbolic(record):
    """Whether a record is written in symbols (synthetic.reachability): its answer is the target's name alone."""
    return record["answer"] == record["idx_to_symbol"][record["target"]]


def written_path(text, record):
    """The edges (from, to) a text's steps name, as node ids (None where a step names no pair of nodes). In
    symbols (synthetic.reachability) the steps are the path's nodes, " 2 7": each one's edge comes from the node
    before it, the first one's from None (the root or the thoughts before it)."""
    names = {name: i for i, name in enumerate(record["idx_to_symbol"])}
    body = text.split("#")[0]
    if is_symbolic(record):
        nodes = [names.get(name) for name in body.split()]
        return list(zip([None] + nodes[:-1], nodes))
    path = []
    for line in body.splitlines():
        if line.strip():
            m = SENTENCE.fullmatch(line.strip())
            path.append((names.get(m[1]), names.get(m[2])) if m else None)
    return path


def prosqa_graph(record):
    """A ProsQA record's graph: hops from the root to each node it reaches, hops from each node that reaches
    the target down to it, and every node's height (its longest path down to a leaf)."""
    n = len(record["idx_to_symbol"])
    children, parents = [[] for _ in range(n)], [[] for _ in range(n)]
    for a, b in record["edges"]:
        children[a].append(b)
        parents[b].append(a)

    @functools.cache
    def height(v):
        return max((height(c) + 1 for c in children[v]), default=0)

    return bfs(children, record["root"])[0], bfs(parents, record["target"])[0], [height(v) for v in range(n)]


def classify_prosqa(output, record):
    """One of PROSQA_CLASSES for a generated output such as "Every terpus is a brimpus.\\n### Tom is a brimpus."

    A written path may start at any node the root reaches (where forced thoughts left off); it is a shortest
    path if the hops before it and its own add up to the target's distance from the root.
    """
    path, correct = written_path(output, record), is_correct(output, record["answer"])
    if not path:
        return "correct_label" if correct else "incorrect_label"
    hops = prosqa_graph(record)[0]
    edges = {tuple(e) for e in record["edges"]}
    start = path[0][0] if path[0] else None
    if start is None and path[0] and path[0][1] is not None:  # symbols: the path starts at its first node
        start, path = path[0][1], path[1:]
    if not (all(step in edges for step in path) and all(a[1] == b[0] for a, b in zip(path, path[1:]))
            and start in hops):
        return "hallucination"
    if correct and (path[-1][1] if path else start) == record["target"]:
        return "correct_path" if hops[start] + len(path) == hops[record["target"]] else "longer_path"
    return "wrong_target"


@torch.no_grad()
def frontier_values(model, record, curriculum, k, device="cpu", autocast=contextlib.nullcontext()):
    """The value of each frontier node after k thoughts (§5.3): the nodes the next step would name, each with
    the probability of its name there (k hops from the root in ProsQA's sentences, "<eot>Every terpus is a ...";
    k + 1 in symbols, whose steps are the path's nodes): the product of the name's token probabilities after the
    prompt with k thoughts.
    """
    hops, to_target, heights = prosqa_graph(record)
    h = k + is_symbolic(record)  # the frontier's hops from the root
    frontier = [v for v, d in hops.items() if d == h]
    if not frontier:
        return []
    context = curriculum.prompt(tokenize([record], fmt=curriculum.fmt)[0][0], curriculum.final_stage, k)
    prefix = [] if is_symbolic(record) else encode("Every")
    # Only the name's tokens are supervised: the model's loss on them is -log p of each.
    names = [encode(" " + record["idx_to_symbol"][v]) for v in frontier]
    batch = collate([Example(context.ids + prefix + name, len(context.ids) + len(prefix), context.first_latent, k)
                     for name in names]).to(device)
    with autocast:
        losses = model(batch)  # (N,) over the names' tokens
    rows = batch.target_idx // batch.ids.shape[1]  # (N,) the row of each token
    values = torch.zeros(len(frontier), device=device).index_add_(0, rows, losses.float()).neg().exp()
    shortest = hops[record["target"]]
    return [dict(node=v, name=record["idx_to_symbol"][v], value=p, height=heights[v],
                 on_path=to_target.get(v) == shortest - h)  # on a shortest path: h hops in, the rest to go
            for v, p in zip(frontier, values.tolist())]


def check_graphs(records):
    if not all("edges" in r for r in records):
        raise ValueError("the ProsQA analysis needs records with their graphs (idx_to_symbol, edges, root, "
                         "target, neg_target): --dataset prosqa, ontology or reachability")


def prosqa_analysis(model, records, curriculum, max_new_tokens, batch_size=32, step=None, device="cpu",
                    autocast=contextlib.nullcontext()):
    """For k = 0..max_latent_stage*c forced thoughts (k = 0 only for a method without latents): the class of
    every output, and the frontier values.

    One dict per k: accuracy, n, counts {class: examples}, value_on_path and value_off_path (the mean value
    of frontier nodes on and off a shortest path to the target; None where there are none), nodes (every
    frontier node of every record: idx, node, name, value, height, on_path), examples (idx, output, class).
    """
    check_graphs(records)
    rank, world = (dist.get_rank(), dist.get_world_size()) if dist.is_initialized() else (0, 1)
    rows = []
    max_k = curriculum.max_latent_stage * curriculum.c_thought if curriculum.spec.latents else 0
    for k in range(max_k + 1):
        results = evaluate(model, records, curriculum, curriculum.final_stage, max_new_tokens, batch_size,
                           num_latents=k, step=step, device=device, autocast=autocast, progress=True)
        examples = [{"idx": e["idx"], "output": e["output"], "class": classify_prosqa(e["output"], records[e["idx"]])}
                    for e in results["examples"]]
        nodes = [] if k == 0 else gather(
            [dict(idx=i, **node) for i in progress_bar(range(rank, len(records), world), f"values k={k}")
             for node in frontier_values(model, records[i], curriculum, k, device, autocast)])
        nodes.sort(key=lambda n: (n["idx"], n["node"]))
        on, off = ([n["value"] for n in nodes if n["on_path"] == flag] for flag in (True, False))
        rows.append(dict(k=k, accuracy=results["accuracy"], n=results["n"],
                         counts={c: sum(e["class"] == c for e in examples) for c in PROSQA_CLASSES},
                         value_on_path=sum(on) / len(on) if on else None,
                         value_off_path=sum(off) / len(off) if off else None, nodes=nodes, examples=examples))
    return rows



# -----------------------------------------------------------------------------------------------------------
# The search in the thoughts ("Reasoning by Superposition", Zhu et al. 2025): in questions whose nodes are tokens
# (synthetic.reachability), what each thought holds of every node, and where the last layer looks while it
# computes the thought. Thought i stands for the i-th step of the path: it should hold the frontier, the nodes i
# hops from the root, and to compute it the last layer should read the edges that leave the frontier before, i - 1
# hops from the root.

SEARCH_CLASSES = ("frontier", "reached", "later", "unreachable")  # a node's hops from the root: = i, < i, > i, none


def search_class(hops, node, i):
    """The class of a node at thought i, from its hops from the root (hops: {node: hops} of those it reaches)."""
    if node not in hops:
        return "unreachable"
    return "frontier" if hops[node] == i else "reached" if hops[node] < i else "later"


def node_tokens(record):
    """Each node's token id (" 13"), or None if some node's name is not one token."""
    ids = [encode(" " + name) for name in record["idx_to_symbol"]]
    return [i[0] for i in ids] if all(len(i) == 1 for i in ids) else None


def edge_positions(record, question_ids):
    """{(source, child): position} of each edge in a question of synthetic.reachability's slots: the child's
    token in its source's slot ("Children: 0: 9 - - | 1: ..." puts edge (node "0", node "9") at the " 9")."""
    node = {name: i for i, name in enumerate(record["idx_to_symbol"])}
    tokens = [decode([t]).strip() for t in question_ids]
    positions, source = {}, None
    for col in range(2, len(tokens)):  # after "Children:"
        if tokens[col] == ":" and source is None:
            source = node[tokens[col - 1]]
        elif tokens[col] in ("|", "."):
            source = None
        elif source is not None and tokens[col] != "-":
            positions[(source, node[tokens[col]])] = col
        if tokens[col] == ".":
            return positions
    return positions


def is_searchable(record):
    """Whether the search analysis applies: a graph in slots whose nodes are single tokens."""
    return "edges" in record and record["question"].startswith("Children:") and node_tokens(record) is not None


@torch.no_grad()
def attention_probs(gpt, embeds, layer=-1):
    """Attention probabilities (n_head, T, T) of one layer, for one sequence of input embeddings (1, T, C)."""
    block, captured = gpt.transformer.h[layer], {}
    hook = block.attn.register_forward_pre_hook(lambda module, args: captured.update(x=args[0]))  # returns None: args unchanged
    try:
        gpt(embeds=embeds)
    finally:
        hook.remove()
    x = captured["x"][0]  # (T, C) the layer's input after ln_1
    T, C = x.shape
    q, k, _ = block.attn.c_attn(x).split(C, dim=-1)
    q, k = (t.view(T, block.attn.n_head, -1).transpose(0, 1) for t in (q, k))  # (nh, T, hd)
    scores = q @ k.transpose(1, 2) / math.sqrt(q.shape[-1])  # (nh, T, T)
    causal = torch.ones(T, T, dtype=torch.bool, device=x.device).tril()
    return scores.masked_fill(~causal, float("-inf")).softmax(-1)


@torch.no_grad()
def search_values(gpt, record, curriculum, device="cpu"):
    """What the final stage's thoughts of one record hold and read. For each thought i = 1..n: the mean, over the
    nodes of each of SEARCH_CLASSES, of the thought's inner product with the node's input embedding, and of the
    LM head's probability of the node's token; the same for the node of the answer's path i hops in ("path");
    and the last layer's attention, from the position that computes thought i, summed over the edge tokens
    whose source is in each class at hop i - 1, and over every other token ("other"): attention sums to one."""
    [tokenized], _ = tokenize([record], fmt=curriculum.fmt)
    prompt = curriculum.prompt(tokenized, curriculum.final_stage)
    embeds = naive_thoughts(gpt, prompt)  # (1, T, C)
    first = prompt.first_latent
    thoughts = embeds[0, first:first + prompt.n_latents]  # (n, C)
    ids = torch.tensor(node_tokens(record), device=device)
    inner = thoughts @ gpt.embed(ids).T  # (n, nodes)
    probs = gpt.logits(thoughts).float().softmax(-1)[:, gpt.rows(ids)]  # (n, nodes)
    attention = attention_probs(gpt, embeds).mean(0)  # (T, T), over the heads
    hops = prosqa_graph(record)[0]
    path = [record["root"]] + [b for _, b in written_path("\n".join(record["steps"]), record)]
    edges = edge_positions(record, tokenized.question)
    rows = []
    for i in range(1, prompt.n_latents + 1):
        classes = [search_class(hops, v, i) for v in range(len(ids))]
        mean = lambda values, c: values[[v for v in range(len(ids)) if classes[v] == c]].mean().item() \
            if c in classes else None
        on_path = path[i] if i < len(path) else None
        reads = attention[first + i - 2]  # (T,) the query of thought i: the column before latent i
        mass = {c: 0.0 for c in SEARCH_CLASSES}
        for (source, _), col in edges.items():
            mass[search_class(hops, source, i - 1)] += reads[col].item()
        mass["other"] = reads.sum().item() - sum(mass.values())
        rows.append(dict(
            i=i, inner={**{c: mean(inner[i - 1], c) for c in SEARCH_CLASSES},
                        "path": None if on_path is None else inner[i - 1, on_path].item()},
            prob={**{c: mean(probs[i - 1], c) for c in SEARCH_CLASSES},
                  "path": None if on_path is None else probs[i - 1, on_path].item()},
            attention=mass))
    return rows


def search_analysis(model, records, curriculum, device="cpu"):
    """search_values of every record, averaged over the records (each mean over those that have the class):
    one dict per thought i with inner, prob and attention, {class: mean}."""
    check_graphs(records)
    if not all(is_searchable(r) for r in records):
        raise ValueError("the search analysis needs graphs in slots whose nodes are single tokens: --dataset reachability")
    per_record = [search_values(model.gpt, r, curriculum, device) for r in progress_bar(records, "search")]
    rows = []
    for i, parts in enumerate(zip(*per_record), start=1):
        row = dict(i=i)
        for key in ("inner", "prob", "attention"):
            row[key] = {}
            for c in parts[0][key]:
                values = [p[key][c] for p in parts if p[key][c] is not None]
                row[key][c] = sum(values) / len(values) if values else None
        rows.append(row)
    return rows


def accuracy_by_search(examples, records):
    """Accuracy by how deep and how wide the search is: by the answer's hops from the root, and by the number of nodes
    the root reaches ({value: (accuracy, questions)} each), from evaluate()'s examples of graphs' records."""
    by = {"hops": {}, "reachable": {}}
    for e in examples:
        hops = prosqa_graph(records[e["idx"]])[0]
        for key, value in (("hops", hops[records[e["idx"]]["target"]]), ("reachable", len(hops) - 1)):
            by[key].setdefault(value, []).append(e["correct"])
    return {key: {v: (sum(c) / len(c), len(c)) for v, c in sorted(groups.items())} for key, groups in by.items()}


def answer_forms(examples, records):
    """How outputs in symbols are formed (evaluate()'s examples of synthetic.reachability's records): the share whose
    answer after "###" is one node; and of the outputs that write nodes before "###" (CoT's path), the share whose
    path ends at the right answer, and whose answer repeats the path's last node, as training's answers all do."""
    one, ends, repeats, paths = 0, 0, 0, 0
    for e in examples:
        path, _, answer = e["output"].partition("###")
        path, answer = path.split(), answer.split()
        one += len(answer) == 1
        if path:
            paths += 1
            ends += path[-1] == records[e["idx"]]["answer"]
            repeats += answer[:1] == path[-1:]
    share = lambda k, n: k / n if n else None
    return dict(one_node=share(one, len(examples)), path_ends_at_answer=share(ends, paths),
                answer_repeats_path=share(repeats, paths), with_path=share(paths, len(examples)))


def frontier_weights(path, records):
    """By hop i = 1, 2, ...: what step i of each question holds of the nodes i hops from the root (the frontier), from
    an evaluation's JSON whose examples carry "thoughts", each a list of top tokens and their weights (a thought's
    LM-head top tokens: eval.py --probe; or Soft Thinking's concept tokens, the mixture read back). For questions in
    symbols (synthetic.reachability), steps up to the answer's hops. One dict per hop: the mean number of frontier
    nodes, the step's mean weight on them and on the node of the answer's path, and the share of steps that give two
    frontier nodes 0.1 or more, among the questions whose frontier has two nodes or more."""
    per_hop = []
    for e in json.loads(Path(path).read_text())["examples"]:
        record = records[e["idx"]]
        hops = prosqa_graph(record)[0]
        node = {" " + name: v for v, name in enumerate(record["idx_to_symbol"])}
        on_path = [record["root"]] + [node[step] for step in record["steps"]]
        for i, top in enumerate(e["thoughts"][:len(record["steps"])], start=1):
            weights = {}
            for t in top:
                if t["token"] in node:
                    weights[node[t["token"]]] = weights.get(node[t["token"]], 0.0) + t["p"]
            frontier = [weights.get(v, 0.0) for v, d in hops.items() if d == i]
            if len(per_hop) < i:
                per_hop.append([])
            per_hop[i - 1].append(dict(frontier=len(frontier), weight=sum(frontier), path=weights.get(on_path[i], 0.0),
                                       holds_two=sum(w >= 0.1 for w in frontier) >= 2 if len(frontier) >= 2 else None))
    mean = lambda values: statistics.mean(values) if values else None
    return [dict(n=len(steps), **{key: mean([s[key] for s in steps if s[key] is not None])
                                  for key in ("frontier", "weight", "path", "holds_two")}) for steps in per_hop]


# -----------------------------------------------------------------------------------------------------------
# Command line

def analysis_table(rows):
    """Share of each class, accuracy and mean frontier values, one line per k."""
    fmt = lambda v: "        -" if v is None else f"{v:9.3g}"
    lines = [f"{'k':>2}  " + "  ".join(f"{c:>13}" for c in PROSQA_CLASSES) + "  accuracy  value on/off path"]
    for r in rows:
        shares = "  ".join(f"{r['counts'][c] / max(r['n'], 1):13.3f}" for c in PROSQA_CLASSES)
        lines.append(f"{r['k']:>2}  {shares}  {r['accuracy']:8.3f}  {fmt(r['value_on_path'])} / {fmt(r['value_off_path'])}")
    return lines


def search_table(rows):
    """What each thought holds and reads, one line per thought: its mean inner product with the nodes of each class
    and with the node on the answer's path, then the last layer's attention on the edges leaving each class."""
    fmt = lambda v: "-" if v is None else f"{v:.3f}"
    inner, reads = (*SEARCH_CLASSES, "path"), (*SEARCH_CLASSES, "other")
    lines = ["thought i: inner product with the nodes " + "/".join(inner) + " | attention on edges from " + "/".join(reads)]
    for r in rows:
        lines.append(f"{r['i']:>9}: " + " ".join(f"{fmt(r['inner'][c]):>8}" for c in inner) + "  | "
                     + " ".join(f"{fmt(r['attention'][c]):>6}" for c in reads))
    return lines


def main(argv=None):
    p = arguments(__doc__)
    p.add_argument("--plot_dir", help="draw prosqa.png (and thoughts.png, attention.png for graphs in symbols) here "
                                      "(needs matplotlib)")
    args = p.parse_args(argv)
    with one_line_errors():
        s = start(args)
        records = s.records()
        check_graphs(records)
        results = evaluate(s.model, records, s.curriculum, s.cfg["stage"], s.cfg["max_new_tokens"], s.cfg["eval_batch_size"],
                           step=s.step, device=s.device, autocast=s.autocast, progress=True)
        by_search = accuracy_by_search(results["examples"], records)
        rows = prosqa_analysis(s.model, records, s.curriculum, s.cfg["max_new_tokens"], s.cfg["eval_batch_size"],
                               step=s.step, device=s.device, autocast=s.autocast)
        out = dict(settings=s.settings(), accuracy=results["accuracy"], by_search=by_search, prosqa_analysis=rows)
        print0(f"accuracy {results['accuracy']:.4f} at stage {s.cfg['stage']}; by the answer's hops from the root and "
               f"by the nodes the root reaches (accuracy, questions):")
        for key, groups in by_search.items():
            print0(f"  {key}: " + ", ".join(f"{v}: {a:.3f} ({n})" for v, (a, n) in groups.items()))
        if all(is_symbolic(r) for r in records):
            out["answer_forms"] = forms = answer_forms(results["examples"], records)
            print0("answers of one node: " + (f"{forms['one_node']:.1%}" if forms["one_node"] is not None else "-")
                   + (f"; of the {forms['with_path']:.1%} of outputs that write a path, it ends at the answer in "
                      f"{forms['path_ends_at_answer']:.1%} and the answer repeats its last node in "
                      f"{forms['answer_repeats_path']:.1%}" if forms["with_path"] else ""))
        print0("\n".join(analysis_table(rows)))
        plots = plot_prosqa(rows, args.plot_dir) if args.plot_dir and s.rank == 0 else []
        if s.curriculum.feedback and all(is_searchable(r) for r in records) and s.rank == 0:
            out["search"] = search_analysis(s.model, records, s.curriculum, s.device)
            print0("\n".join(search_table(out["search"])))
            plots += plot_search(out["search"], args.plot_dir) if args.plot_dir else []
        for path in plots:
            print0(f"wrote {path}")
        write_out(args.out, out, s.rank)


if __name__ == "__main__":
    main()
