"""
Evaluate a checkpoint, or any GPT-2, on a dataset split: accuracy, the paper's token counts, time per
example (§4.4, Table 1), and the paper's looks inside the thoughts (§4.4 and §5). train.py uses the same
`evaluate` for its validation accuracy.

    python eval.py --ckpt out/prosqa-coconut/best            # its dataset, method and stage, on the test split
    python eval.py --ckpt out/prosqa-coconut/best --loss --out test.json
    python eval.py --init_from gpt2 --dataset gsm8k --max_examples 100 --num_latents 0
    python eval.py --ckpt out/gsm8k-coconut/coconut/best --probe     # what each thought decodes to
    python eval.py --ckpt out/prosqa-coconut/best --prosqa_analysis --out analysis.json --plot_dir plots
    python eval.py --ckpt out/reachability-coconut/best --prosqa_analysis --plot_dir plots   # and the search
    torchrun --nproc_per_node=8 eval.py --ckpt out/gsm8k-coconut/coconut/best   # examples sharded over the GPUs

A checkpoint carries its dataset, method, stage and thoughts per step (run.json, state.json); flags override
them. With --init_from the dataset's recipe (recipes.py) stands in for the run's config.
"""
import argparse
import contextlib
import dataclasses
import functools
import json
import math
import re
import time
from pathlib import Path

import torch
import torch.distributed as dist

from codi import CODI
from coconut import Coconut, load_gpt, naive_thoughts
from pccot import PCCoT
from simcot import SimCoT, step_decoder as simcot_step_decoder
from softthinking import Settings as SoftSettings, SoftThinking
from common import gather, load_state, one_line_errors, parse_bool, print0, progress_bar, setup
from gpt import GPT
from data import BOT, EOS, EOT, FORMATS, LATENT, METHODS, SPLITS, Example, collate, decode, encode, load_dataset, tokenize
from lora import add_lora
from recipes import DEFAULT_DATASET, DEFAULTS, PRESETS, curriculum as curriculum_of, recipe
from synthetic import bfs


def extract_answer(text, fmt="coconut"):
    """What follows the last '#', without commas: "<<3*4=12>>\\n### 1,200" -> "1200" (the authors' rule); in the
    format of CODI and PCCoT, what follows the last "The answer is:" (all of it if absent: PCCoT's prompt gives it)."""
    marker = FORMATS[fmt].distill or "#"
    return text.split(marker)[-1].replace(",", "").strip()


def is_correct(output, answer, fmt="coconut"):
    return extract_answer(output, fmt) == answer.replace(",", "").strip()


def build_model(cfg, gpt, path=None, training=False):
    """The model of a run's method around its GPT (on its device); path: a checkpoint holding what the method adds
    to the GPT (CODI's projection, SIM-CoT's step decoder). SIM-CoT's decoder serves in training only: evaluated,
    SIM-CoT is Coconut."""
    method = cfg["method"]
    if method == "codi":
        model = CODI(gpt)
    elif method == "pccot":
        model = PCCoT(gpt, cfg["pccot_iterations"])
    elif method == "simcot" and training:
        model = SimCoT(gpt, step_decoder(cfg, gpt))
    else:
        model = Coconut(gpt, feedback=METHODS[method].feedback)
    if cfg.get("lora_r"):  # CODI's and PCCoT's recipes: the GPT frozen, low-rank adapters trained (lora.py)
        rows = (BOT, EOT, LATENT, EOS) if cfg["lora_token_rows"] else ()
        model.lora = add_lora(gpt, cfg["lora_r"], cfg["lora_alpha"], cfg["lora_dropout"], rows)
    model.to(gpt.transformer.wte.weight.device)
    if path is not None:
        model.load_extras(path)
    return model


def step_decoder(cfg, gpt):
    """SIM-CoT's step decoder as a run starts: a GPT-2 (step_decoder_init), or else a copy of the model as it starts."""
    return simcot_step_decoder(GPT.from_pretrained(cfg["step_decoder_init"]) if cfg.get("step_decoder_init") else gpt)


# -----------------------------------------------------------------------------------------------------------
# Evaluation

@torch.no_grad()
def evaluate(model, records, curriculum, stage, max_new_tokens, batch_size=32, num_latents=None,
             with_loss=False, step=None, device="cpu", autocast=contextlib.nullcontext(), progress=False,
             probe_topk=0):
    """Greedy-decode every record's prompt at a stage; accuracy, mean tokens, time per example.

    Records are sharded over the ranks of a process group and the results gathered. num_latents forces
    that many thoughts; with_loss adds the loss of the stage's training sequences, the mean over all their
    supervised tokens (so it does not depend on the batching); probe_topk > 0 adds each example's decoded
    thoughts (decode_thoughts). `step` is a compiled decode step (Coconut.compiled_step).
    """
    model.eval()
    max_latents = curriculum.max_latent_stage * curriculum.c_thought if num_latents is None else num_latents
    tokenized, kept = tokenize(records, max_latents=max_latents, method=curriculum.method, fmt=curriculum.fmt)
    check_vocabulary(model.gpt, [t.question + [x for step in t.steps for x in step] + t.answer for t in tokenized],
                     [f"record {i}" for i in kept])
    rank, world = (dist.get_rank(), dist.get_world_size()) if dist.is_initialized() else (0, 1)
    # Similar lengths batch well: prompts sorted by length, longest first, so the first batch shows the peak memory.
    mine = sorted(range(rank, len(kept), world), key=lambda i: -len(tokenized[i].question))
    results, loss_sum, n_loss_tokens, seconds = [], 0.0, 0, 0.0
    batches = range(0, len(mine), batch_size)
    for start in progress_bar(batches, "eval") if progress else batches:
        chunk = mine[start:start + batch_size]
        prompts = [curriculum.prompt(tokenized[i], stage, num_latents) for i in chunk]
        t0 = time.perf_counter()
        answers = answer(model, prompts, max_new_tokens, step, device, autocast, probe_topk)
        seconds += time.perf_counter() - t0
        for i, a in zip(chunk, answers):
            record = records[kept[i]]
            fmt = curriculum.fmt
            results.append(dict(idx=kept[i], answer=record["answer"], prediction=extract_answer(a["output"], fmt),
                                correct=is_correct(a["output"], record["answer"], fmt), **a))
        if with_loss:
            train_batch = collate([curriculum.example(tokenized[i], stage) for i in chunk]).to(device)
            with autocast:
                losses = model(train_batch)[:len(train_batch.targets)]  # (N,) one per supervised token (no other term)
            loss_sum, n_loss_tokens = loss_sum + losses.sum().item(), n_loss_tokens + losses.numel()
    results = sorted(gather(results), key=lambda r: r["idx"])
    loss_sum, n_loss_tokens, seconds = (sum(x) for x in zip(*gather([(loss_sum, n_loss_tokens, seconds)])))
    n = max(len(results), 1)
    return dict(accuracy=sum(r["correct"] for r in results) / n, n=len(results),
                mean_tokens=sum(r["n_tokens"] for r in results) / n, seconds_per_example=seconds / n,
                loss=loss_sum / n_loss_tokens if with_loss and n_loss_tokens else None,
                skipped=len(records) - len(kept), examples=results)


@torch.no_grad()
def answer(model, prompts, max_new_tokens, step=None, device="cpu", autocast=contextlib.nullcontext(), probe_topk=0):
    """Greedy answers to prompts (data.Example), in one batch: for each, the output text, the generated ids,
    the paper's token count (thoughts + generated tokens before EOS), and with probe_topk the decoded thoughts."""
    batch = collate(prompts, align_ends=True).to(device)
    with autocast:
        out = model.generate(batch, max_new_tokens, step=step)
    answers = [dict(output=decode(ids, skip_special=True), n_tokens=n, generated_ids=ids)
               for ids, n in zip(out.tokens, out.n_tokens)]
    if getattr(out, "concepts", None) is not None:  # Soft Thinking: its thoughts are the concept tokens read back
        for a, concepts in zip(answers, out.concepts):
            a["thoughts"] = [[dict(token=decode([t]), p=w) for t, w in zip(ids, weights)] for ids, weights in concepts]
    elif probe_topk:  # out.thoughts holds none without feedback: pause tokens are no thoughts
        with autocast:
            decoded = decode_thoughts(model.gpt, out.thoughts, [p.n_latents for p in prompts], probe_topk)
        for a, thoughts in zip(answers, decoded):
            a["thoughts"] = thoughts
    return answers


def ask(model, question, curriculum, stage, max_new_tokens, num_latents=None, probe_topk=5, device="cpu",
        autocast=contextlib.nullcontext()):
    """A question of one's own: the model's answer, and what each of its thoughts decodes to."""
    [tokenized], _ = tokenize([dict(question=question, steps=[], answer="")], method=curriculum.method, fmt=curriculum.fmt)
    check_vocabulary(model.gpt, [tokenized.question], ["the question"])
    [a] = answer(model.eval(), [curriculum.prompt(tokenized, stage, num_latents)], max_new_tokens, None, device,
                 autocast, probe_topk)
    return dict(question=question, prediction=extract_answer(a["output"], curriculum.fmt), **a)


def check_vocabulary(gpt, sequences, names):
    """A clear error if a sequence of ids holds one that a model with a vocabulary of its own has no row for."""
    if gpt.config.tokens is None:
        return
    for ids, name in zip(sequences, names):
        unknown = gpt.unknown(ids)
        if unknown:
            raise ValueError(f"{name}: {', '.join(repr(decode([i])) for i in unknown[:5])} not in this model's "
                             f"vocabulary (a model from scratch knows only the tokens of its dataset)")


# -----------------------------------------------------------------------------------------------------------
# Looking inside (§4.4, §5): what a thought decodes to, and what the thoughts of a ProsQA question explore

def decode_thoughts(gpt, thoughts, counts, k):
    """The LM head's top-k tokens for each thought: per row, its first counts[row] thoughts of (B, n, C),
    each a list [{"token": str, "p": float}, ...] from the most probable down."""
    p, rows = gpt.logits(thoughts).float().softmax(-1).topk(k, dim=-1)  # (B, n, k) each
    ids = gpt.ids(rows)
    return [[[dict(token=decode([t]), p=q) for t, q in zip(row_ids, row_p)]
             for row_ids, row_p in zip(ids[b, :count].tolist(), p[b, :count].tolist())]
            for b, count in enumerate(counts)]


# The paper's classes of an output (§5.1): a written path that is a shortest one to the answer, a longer one, one that
# leaves the graph (an edge that does not exist, or steps that do not chain), one that ends elsewhere; and for an
# output with no written step, whether its label is right.
PROSQA_CLASSES = ("correct_path", "longer_path", "hallucination", "wrong_target", "correct_label", "incorrect_label")
SENTENCE = re.compile(r"(?:Every )?(\S+) is an? (\S+)\.")  # "Tom is a terpus." or "Every terpus is a brimpus."


def is_symbolic(record):
    """Whether a record is written in symbols (synthetic.reachability): its answer is the target's name alone."""
    return record["answer"] == record["idx_to_symbol"][record["target"]]


def answer_naming(record, node):
    """The answer that names a node, in the record's own format."""
    symbols = record["idx_to_symbol"]
    return symbols[node] if is_symbolic(record) else f"{symbols[record['root']]} is a {symbols[node]}."


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
        raise ValueError("--prosqa_analysis needs ProsQA records with their graphs (idx_to_symbol, edges, root, "
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


# -----------------------------------------------------------------------------------------------------------
# Pictures of the analyses (matplotlib, optional)

def _figure(width, panels):
    try:
        from matplotlib.figure import Figure  # no pyplot: no GUI backend, no global state
    except ImportError:
        print0("no plots: matplotlib is not installed (pip install matplotlib)")
        return None, None
    fig = Figure(figsize=(width, 3.6))
    return fig, fig.subplots(1, panels)


def _save(fig, plot_dir, name):
    path = Path(plot_dir) / name
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path, dpi=120, bbox_inches="tight")
    return path


def plot_prosqa(rows, plot_dir):
    """prosqa.png: the share of each output class and the accuracy against k forced thoughts, and the mean value
    of frontier nodes on and off a shortest path."""
    with_values = any(r["value_on_path"] is not None or r["value_off_path"] is not None for r in rows)
    fig, panels = _figure(11 if with_values else 6, 2 if with_values else 1)
    if fig is None:
        return []
    classes, values = panels if with_values else (panels, None)
    ks = [r["k"] for r in rows]
    bottom = [0.0] * len(rows)
    for c in PROSQA_CLASSES:
        share = [r["counts"][c] / max(r["n"], 1) for r in rows]
        classes.bar(ks, share, bottom=bottom, label=c.replace("_", " "))
        bottom = [b + s for b, s in zip(bottom, share)]
    classes.plot(ks, [r["accuracy"] for r in rows], "k-o", label="accuracy")
    classes.set(xlabel="k (thoughts forced)", ylabel="share of outputs", title="Outputs after k thoughts", xticks=ks)
    classes.legend(fontsize="small", loc="upper left", bbox_to_anchor=(1, 1))
    if with_values:  # none at k = 0, and so none for a method without thoughts
        for key, label in (("value_on_path", "on a shortest path"), ("value_off_path", "off every shortest path")):
            points = [(r["k"], r[key]) for r in rows if r[key] is not None]
            if points:
                values.plot(*zip(*points), marker="o", label=label)
        values.set(xlabel="k (thoughts forced)", ylabel="mean value", title="Frontier nodes' values after k thoughts",
                   xticks=ks)
        values.legend(fontsize="small")
        fig.subplots_adjust(wspace=0.6)
    return [_save(fig, plot_dir, "prosqa.png")]


def plot_search(rows, plot_dir):
    """thoughts.png: thought i's inner product with the nodes' embeddings and its LM-head probability of them, by
    class; attention.png: where the last layer looks while it computes thought i."""
    paths = []
    fig, panels = _figure(11, 2)
    if fig is None:
        return []
    ks = [r["i"] for r in rows]
    for ax, key, label in zip(panels, ("inner", "prob"), ("inner product with the node's embedding",
                                                          "LM head's probability of the node")):
        for c in (*SEARCH_CLASSES, "path"):
            points = [(r["i"], r[key][c]) for r in rows if r[key][c] is not None]
            if points:
                ax.plot(*zip(*points), marker="o", label="on the answer's path" if c == "path" else c)
        ax.set(xlabel="thought i", ylabel=label, xticks=ks)
    panels[0].legend(fontsize="small")
    fig.suptitle("What thought i holds of each node: frontier = i hops from the root, reached = fewer, later = more")
    paths.append(_save(fig, plot_dir, "thoughts.png"))
    fig, ax = _figure(6, 1)
    bottom = [0.0] * len(rows)
    for c in (*SEARCH_CLASSES, "other"):
        mass = [r["attention"][c] or 0.0 for r in rows]
        ax.bar(ks, mass, bottom=bottom, label="other tokens" if c == "other" else f"edges from {c} nodes")
        bottom = [b + m for b, m in zip(bottom, mass)]
    ax.set(xlabel="thought i", ylabel="attention of the last layer", xticks=ks,
           title="Where the last layer reads while computing thought i\n(edge classes by their source at hop i - 1)")
    ax.legend(fontsize="small", loc="upper left", bbox_to_anchor=(1, 1))
    paths.append(_save(fig, plot_dir, "attention.png"))
    return paths


# -----------------------------------------------------------------------------------------------------------
# Command line

def parse_args(argv=None):
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0].strip(),
                                formatter_class=argparse.RawDescriptionHelpFormatter, epilog=__doc__.split("\n\n", 1)[1])
    a = p.add_argument
    model = p.add_mutually_exclusive_group(required=True)
    model.add_argument("--ckpt", help="a checkpoint directory of train.py (out/<run>/best): its model, dataset, method and stage")
    model.add_argument("--init_from", help="a GPT-2 name (gpt2, gpt2-medium, ...) or Hugging Face GPT-2 folder, untrained for Coconut")
    a("--new_token_init", default="copy", choices=("copy", "mean"), help="with --init_from: new token embeddings copy '<<' or are the mean row")
    a("--dataset", help=f"{', '.join(PRESETS)} (default: the checkpoint's, else {DEFAULT_DATASET})")
    a("--data_dir", help="read the dataset's files from this folder instead of the download cache")
    a("--cache_dir", help="where downloaded datasets are kept (default $COCONUT_DATA_DIR or ~/.cache/coconut)")
    a("--split", default="test", choices=SPLITS, help="split to evaluate")
    a("--max_examples", type=int, help="evaluate the first N records only")
    a("--method", choices=METHODS, help="how prompts are built (default: the checkpoint's, else coconut)")
    a("--stage", type=int, help="curriculum stage of the prompts (default: the checkpoint's, else the final stage)")
    a("--c_thought", type=int, help="continuous thoughts per reasoning step (default: the checkpoint's, else the preset's)")
    a("--max_latent_stage", type=int, help="stages that replace steps by thoughts (default: the checkpoint's, else the preset's)")
    a("--pad_latent_to_max", type=parse_bool, help="beyond max_latent_stage, always max_latent_stage*c thoughts (default: the checkpoint's, else true)")
    a("--num_latents", type=int, help="force exactly K thoughts in every prompt, whatever the stage")
    a("--batch_size", type=int, dest="eval_batch_size", help="prompts per generation batch (default: the checkpoint's eval_batch_size, else 64)")
    a("--max_new_tokens", type=int, help="greedy decoding budget (default: the checkpoint's, else the preset's)")
    a("--device", default="auto", help="auto, cpu, cuda, cuda:1, ...")
    a("--dtype", default="auto", choices=("auto", "float32", "bfloat16"), help="auto: bf16 autocast where the GPU supports it, else float32")
    a("--compile", action="store_true", help="torch.compile the decode step (Coconut.compiled_step)")
    a("--loss", action="store_true", help="also report the loss of the stage's training sequences (mean over supervised tokens)")
    a("--out", help="write the results, every example and the settings to this JSON file")
    a("--probe", action="store_true", help="decode every continuous thought with the LM head: top tokens and probabilities")
    a("--probe_topk", type=int, default=5, help="with --probe: tokens listed per thought")
    a("--question", help="instead: answer this question of one's own, and decode each of its thoughts")
    a("--soft_thinking", action="store_true", help="generate with Soft Thinking (softthinking.py): a CoT model reads back "
      "mixtures of token embeddings while it reasons")
    for f in dataclasses.fields(SoftSettings):
        a(f"--soft_{f.name}", type=type(f.default), default=f.default, help=f"with --soft_thinking (default {f.default})")
    a("--prosqa_analysis", action="store_true", help="instead: the paper's §5 on ProsQA, output classes and frontier values "
      "for k = 0..max thoughts; on --dataset reachability also the search in the thoughts")
    a("--plot_dir", help="with --prosqa_analysis: draw prosqa.png (and thoughts.png, attention.png) here (needs matplotlib)")
    return p.parse_args(argv)


def resolve_config(args, run, state):
    """Defaults, then the dataset's preset, then the checkpoint's run, then the flags given: the settings used."""
    dataset = args.dataset or run.get("dataset", DEFAULT_DATASET)
    if dataset not in PRESETS:
        raise ValueError(f"unknown dataset {dataset!r}: choose from {', '.join(PRESETS)}")
    given = {k: v for k, v in vars(args).items() if v is not None}
    # A run's own data folders are not inherited: they belong to its dataset, which --dataset may change.
    method = args.method or run.get("method", DEFAULTS["method"])
    cfg = {**recipe(dataset, method), **run, "data_dir": None, "cache_dir": None, **given, "dataset": dataset}
    cfg["model"] = args.ckpt or args.init_from
    if args.stage is None:  # the checkpoint's stage (its final stage: the final stage now); else the final one, or cot's
        final = cfg["max_latent_stage"] + 1
        saved = state.get("stage")
        at_final = saved is not None and saved > run.get("max_latent_stage", cfg["max_latent_stage"])
        cfg["stage"] = ((0 if cfg["method"] == "cot" else final) if saved is None else
                        final if at_final and METHODS[cfg["method"]].latents else saved)
    for key in ("eval_batch_size", "max_new_tokens", "max_examples", "probe_topk"):
        if cfg.get(key) is not None and cfg[key] < 1:
            raise ValueError(f"--{key.removeprefix('eval_')} must be at least 1, got {cfg[key]}")
    for key in ("stage", "num_latents"):
        if cfg.get(key) is not None and cfg[key] < 0:
            raise ValueError(f"--{key} must be at least 0, got {cfg[key]}")
    if args.soft_thinking and METHODS[cfg["method"]].latents:
        raise ValueError(f"--soft_thinking reads back concept tokens where a chain of thought writes its steps: it runs on "
                         f"a model without latents (--method cot), not on method {cfg['method']}")
    if args.num_latents is not None and not METHODS[cfg["method"]].latents:
        with_latents = ", ".join(m for m, spec in METHODS.items() if spec.latents)
        raise ValueError(f"method {cfg['method']} has no latents to force (--num_latents): use one of {with_latents}")
    return cfg


SETTINGS = ("model", "dataset", "split", "max_examples", "method", "soft_thinking", "stage", "c_thought", "max_latent_stage",
            "pad_latent_to_max", "num_latents", "max_new_tokens", "eval_batch_size", "device", "dtype")


def summary_table(results):
    loss = "-" if results["loss"] is None else f"{results['loss']:.4f}"
    return [f"{'accuracy':<12}{results['accuracy']:.4f}  ({results['n']} examples, {results['skipped']} skipped as too long)",
            f"{'tokens':<12}{results['mean_tokens']:.1f} per example (thoughts + generated tokens before EOS)",
            f"{'time':<12}{results['seconds_per_example']:.4f} s per example",
            f"{'loss':<12}{loss}"]


def thought_lines(thoughts, steps=(), c_thought=1):
    """One line per decoded thought: its top tokens and their probabilities, and the written step it stands for."""
    lines = []
    for j, top in enumerate(thoughts):
        step = f"   (step {j // c_thought + 1}: {steps[j // c_thought]!r})" if j // c_thought < len(steps) else ""
        lines.append(f"  thought {j + 1}: " + "  ".join(f"{t['token']!r} {t['p']:.3f}" for t in top) + step)
    return lines or ["  (no continuous thoughts)"]


def probe_table(examples, records, c_thought):
    """The decoded thoughts of a few examples, each next to the step of the record that it replaced."""
    lines = []
    for e in examples:
        lines.append(f"example {e['idx']}: answer {e['answer']!r}, predicted {e['prediction']!r}")
        lines += thought_lines(e["thoughts"], records[e["idx"]]["steps"], c_thought)
    return lines


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
    args = parse_args(argv)
    with one_line_errors():
        run, state = load_state(Path(args.ckpt)) if args.ckpt else ({}, {})
        cfg = resolve_config(args, run, state)
        curriculum = curriculum_of(cfg)
        device, autocast, rank, world = setup(cfg["device"], cfg["dtype"])
        gpt = load_gpt(args.ckpt or args.init_from, args.new_token_init, dropout=0.0)  # a broken one fails before a download
        model = build_model(cfg, gpt.to(device), args.ckpt)
        if args.soft_thinking:
            model = SoftThinking(gpt, SoftSettings(**{f.name: cfg[f"soft_{f.name}"] for f in dataclasses.fields(SoftSettings)}))
        step = model.compiled_step() if args.compile else None
        settings = {**{k: cfg.get(k) for k in SETTINGS}, "device": str(device)}
        run_args = dict(step=step, device=device, autocast=autocast)
        if args.question:
            out = dict(ask(model, args.question, curriculum, cfg["stage"], cfg["max_new_tokens"], args.num_latents,
                           cfg["probe_topk"], device, autocast), settings=settings)
            print0(f"question: {out['question']}")
            print0("\n".join(thought_lines(out["thoughts"])))
            print0(f"answer: {out['prediction']!r} ({out['n_tokens']} tokens: {out['output']!r})")
            return write_out(args.out, out, rank)
        records = load_dataset(cfg["dataset"], cfg["split"], cfg["data_dir"], cfg["cache_dir"])[:cfg.get("max_examples")]
        print0(f"{cfg['model']} on {cfg['dataset']} {cfg['split']} ({len(records)} records): {cfg['method']}, "
               f"stage {cfg['stage']}, c_thought {cfg['c_thought']}, max_latent_stage {cfg['max_latent_stage']}, "
               f"device {device}, {world} process(es)")
        if args.prosqa_analysis:
            rows = prosqa_analysis(model, records, curriculum, cfg["max_new_tokens"], cfg["eval_batch_size"], **run_args)
            out = dict(settings=settings, prosqa_analysis=rows)
            print0("\n".join(analysis_table(rows)))
            plots = plot_prosqa(rows, args.plot_dir) if args.plot_dir and rank == 0 else []
            if curriculum.feedback and all(is_searchable(r) for r in records) and rank == 0:
                out["search"] = search_analysis(model, records, curriculum, device)
                print0("\n".join(search_table(out["search"])))
                plots += plot_search(out["search"], args.plot_dir) if args.plot_dir else []
            for path in plots:
                print0(f"wrote {path}")
        else:
            out = evaluate(model, records, curriculum, cfg["stage"], cfg["max_new_tokens"], cfg["eval_batch_size"],
                           num_latents=args.num_latents, with_loss=args.loss, progress=True,
                           probe_topk=cfg["probe_topk"] if args.probe else 0, **run_args)
            out["settings"] = settings
            print0("\n".join(summary_table(out)))
            if args.probe:
                print0("\n".join(probe_table(out["examples"][:3], records, cfg["c_thought"])))
        write_out(args.out, out, rank)


def write_out(path, out, rank):
    """The results as JSON, from rank 0."""
    if path and rank == 0:
        Path(path).parent.mkdir(parents=True, exist_ok=True)
        Path(path).write_text(json.dumps(out, indent=1) + "\n")
        print0(f"wrote {path}")


if __name__ == "__main__":
    main()
