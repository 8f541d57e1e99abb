"""
Evaluate a checkpoint, or any GPT-2, on a dataset split: accuracy, the paper's token counts, time per
example (§4.4, Table 1), and the paper's looks inside the thoughts (§4.4 and §5). train.py uses the same
`evaluate` for its validation accuracy.

    python eval.py --ckpt out/prosqa-coconut/best            # its dataset, method and stage, on the test split
    python eval.py --ckpt out/prosqa-coconut/best --loss --out test.json
    python eval.py --init_from gpt2 --dataset gsm8k --max_examples 100 --num_latents 0
    python eval.py --ckpt out/gsm8k-coconut/coconut/best --probe     # what each thought decodes to
    python eval.py --ckpt out/prosqa-coconut/best --prosqa_analysis --out analysis.json --plot_dir plots
    torchrun --nproc_per_node=8 eval.py --ckpt out/gsm8k-coconut/coconut/best   # examples sharded over the GPUs

A checkpoint carries its dataset, method, stage and thoughts per step (run.json, state.json); flags override
them. With --init_from the dataset's recipe (recipes.py) stands in for the run's config.
"""
import argparse
import contextlib
import functools
import json
import re
import time
from pathlib import Path

import torch
import torch.distributed as dist

from coconut import Coconut, load_gpt
from common import gather, load_state, one_line_errors, parse_bool, print0, progress_bar, setup
from data import METHODS, SPLITS, Example, collate, decode, encode, load_dataset, tokenize
from recipes import DEFAULT_DATASET, DEFAULTS, PRESETS, curriculum as curriculum_of
from synthetic import bfs


def extract_answer(text):
    """What follows the last '#', without commas: "<<3*4=12>>\\n### 1,200" -> "1200" (the authors' rule)."""
    return text.split("#")[-1].replace(",", "").strip()


def is_correct(output, answer):
    return extract_answer(output) == answer.replace(",", "").strip()


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
    tokenized, kept = tokenize(records, max_latents=max_latents)
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
            results.append(dict(idx=kept[i], answer=record["answer"], prediction=extract_answer(a["output"]),
                                correct=is_correct(a["output"], record["answer"]), **a))
        if with_loss:
            train_batch = collate([curriculum.example(tokenized[i], stage) for i in chunk]).to(device)
            with autocast:
                losses = model(train_batch)  # (N,) one per supervised token
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
    if probe_topk:  # out.thoughts holds none without feedback: pause tokens are no thoughts
        with autocast:
            decoded = decode_thoughts(model.gpt, out.thoughts, [p.n_latents for p in prompts], probe_topk)
        for a, thoughts in zip(answers, decoded):
            a["thoughts"] = thoughts
    return answers


def ask(model, question, curriculum, stage, max_new_tokens, num_latents=None, probe_topk=5, device="cpu",
        autocast=contextlib.nullcontext()):
    """A question of one's own: the model's answer, and what each of its thoughts decodes to."""
    [tokenized], _ = tokenize([dict(question=question, steps=[], answer="")])
    check_vocabulary(model.gpt, [tokenized.question], ["the question"])
    [a] = answer(model.eval(), [curriculum.prompt(tokenized, stage, num_latents)], max_new_tokens, None, device,
                 autocast, probe_topk)
    return dict(question=question, prediction=extract_answer(a["output"]), **a)


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


PROSQA_CLASSES = ("correct_path", "correct_label", "wrong_target", "hallucination")
SENTENCE = re.compile(r"(?:Every )?(\S+) is an? (\S+)\.")  # "Tom is a terpus." or "Every terpus is a brimpus."


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

    correct_path: correct answer, and the steps are edges of the graph chained into a path that ends at the
    target, starting from the root or from any node it reaches (where forced thoughts left the search);
    correct_label: correct answer without such a path; wrong_target: the other option, every step an edge;
    hallucination: anything else (a step that is not an edge, a concept that does not exist, an answer
    naming neither option).
    """
    names = {name: i for i, name in enumerate(record["idx_to_symbol"])}
    edges = {tuple(e) for e in record["edges"]}
    path = []  # each step's (from, to) node ids; None for a line that is no such sentence
    for line in output.split("#")[0].splitlines():
        if line.strip():
            m = SENTENCE.fullmatch(line.strip())
            path.append((names.get(m[1]), names.get(m[2])) if m else None)
    all_edges = all(step in edges for step in path)
    if is_correct(output, record["answer"]):
        reached = prosqa_graph(record)[0]
        found = (path and all_edges and all(a[1] == b[0] for a, b in zip(path, path[1:]))
                 and path[0][0] in reached and path[-1][1] == record["target"])
        return "correct_path" if found else "correct_label"
    symbols = record["idx_to_symbol"]
    if extract_answer(output) == f"{symbols[record['root']]} is a {symbols[record['neg_target']]}." and all_edges:
        return "wrong_target"
    return "hallucination"


@torch.no_grad()
def frontier_values(model, record, curriculum, k, device="cpu", autocast=contextlib.nullcontext()):
    """The value of each frontier node after k thoughts (§5.3): the nodes k hops from the root, each with
    the probability of its name where the next step would name it, "<eot>Every terpus is a ...": the
    product of the name's token probabilities after `question <bot> [thought] x k <eot>Every`.
    """
    hops, to_target, heights = prosqa_graph(record)
    frontier = [v for v, d in hops.items() if d == k]
    if not frontier:
        return []
    context = curriculum.prompt(tokenize([record])[0][0], curriculum.final_stage, k)
    every = encode("Every")
    # Only the name's tokens are supervised: the model's loss on them is -log p of each.
    names = [encode(" " + record["idx_to_symbol"][v]) for v in frontier]
    batch = collate([Example(context.ids + every + name, len(context.ids) + len(every), context.first_latent, k)
                     for name in names]).to(device)
    with autocast:
        losses = model(batch)  # (N,) over the names' tokens
    rows = batch.target_idx // batch.ids.shape[1]  # (N,) the row of each token
    values = torch.zeros(len(frontier), device=device).index_add_(0, rows, losses.float()).neg().exp()
    shortest = hops[record["target"]]
    return [dict(node=v, name=record["idx_to_symbol"][v], value=p, height=heights[v],
                 on_path=to_target.get(v) == shortest - k)  # on a shortest path: k hops in, the rest to go
            for v, p in zip(frontier, values.tolist())]


def prosqa_analysis(model, records, curriculum, max_new_tokens, batch_size=32, step=None, device="cpu",
                    autocast=contextlib.nullcontext()):
    """For k = 0..max_latent_stage*c forced thoughts: the class of every output, and the frontier values.

    One dict per k: accuracy, n, counts {class: examples}, value_on_path and value_off_path (the mean value
    of frontier nodes on and off a shortest path to the target; None where there are none), nodes (every
    frontier node of every record: idx, node, name, value, height, on_path), examples (idx, output, class).
    """
    if not all("edges" in r for r in records):
        raise ValueError("--prosqa_analysis needs ProsQA records with their graphs (idx_to_symbol, edges, root, "
                         "target, neg_target): --dataset prosqa or ontology")
    rank, world = (dist.get_rank(), dist.get_world_size()) if dist.is_initialized() else (0, 1)
    rows = []
    for k in range(curriculum.max_latent_stage * curriculum.c_thought + 1):
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


def plot_prosqa(rows, plot_dir):
    """Two PNGs: the share of each class vs k (stacked bars), the mean frontier value on/off path vs k."""
    try:
        from matplotlib.figure import Figure  # no pyplot: no GUI backend, no global state
    except ImportError:
        print0("no plots: matplotlib is not installed (pip install matplotlib)")
        return []
    plot_dir = Path(plot_dir)
    plot_dir.mkdir(parents=True, exist_ok=True)
    ks = [r["k"] for r in rows]
    fig = Figure(figsize=(6, 4))
    ax = fig.subplots()
    bottom = [0.0] * len(rows)
    for c in PROSQA_CLASSES:
        share = [r["counts"][c] / max(r["n"], 1) for r in rows]
        ax.bar(ks, share, bottom=bottom, label=c.replace("_", " "))
        bottom = [b + s for b, s in zip(bottom, share)]
    ax.set(xlabel="k (continuous thoughts)", ylabel="share of outputs", title="ProsQA outputs after k thoughts", xticks=ks)
    ax.legend(fontsize="small", loc="upper left", bbox_to_anchor=(1, 1))
    fig.savefig(plot_dir / "prosqa_classes.png", dpi=120, bbox_inches="tight")
    fig = Figure(figsize=(6, 4))
    ax = fig.subplots()
    for key, label in (("value_on_path", "on a shortest path"), ("value_off_path", "off every shortest path")):
        points = [(r["k"], r[key]) for r in rows if r[key] is not None]  # no frontier values at k = 0
        if points:
            ax.plot(*zip(*points), marker="o", label=label)
    ax.set(xlabel="k (continuous thoughts)", ylabel="mean value of frontier nodes", title="Frontier values after k thoughts", xticks=ks)
    ax.legend(fontsize="small")
    fig.savefig(plot_dir / "prosqa_values.png", dpi=120, bbox_inches="tight")
    return [plot_dir / "prosqa_classes.png", plot_dir / "prosqa_values.png"]


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
    a("--prosqa_analysis", action="store_true", help="instead: the paper's §5 on ProsQA, output classes and frontier values for k = 0..max thoughts")
    a("--plot_dir", help="with --prosqa_analysis: draw prosqa_classes.png and prosqa_values.png here (needs matplotlib)")
    return p.parse_args(argv)


def resolve_config(args, run, state):
    """Defaults, then the dataset's preset, then the checkpoint's run, then the flags given: the settings used."""
    dataset = args.dataset or run.get("dataset", DEFAULT_DATASET)
    if dataset not in PRESETS:
        raise ValueError(f"unknown dataset {dataset!r}: choose from {', '.join(PRESETS)}")
    given = {k: v for k, v in vars(args).items() if v is not None}
    # A run's own data folders are not inherited: they belong to its dataset, which --dataset may change.
    cfg = {**DEFAULTS, **PRESETS[dataset], **run, "data_dir": None, "cache_dir": None, **given, "dataset": dataset}
    cfg["model"] = args.ckpt or args.init_from
    if args.stage is None:  # the checkpoint's stage; else the final stage, or cot's only one
        cfg["stage"] = state.get("stage", 0 if cfg["method"] == "cot" else cfg["max_latent_stage"] + 1)
    for key in ("eval_batch_size", "max_new_tokens", "max_examples", "probe_topk"):
        if cfg.get(key) is not None and cfg[key] < 1:
            raise ValueError(f"--{key.removeprefix('eval_')} must be at least 1, got {cfg[key]}")
    for key in ("stage", "num_latents"):
        if cfg.get(key) is not None and cfg[key] < 0:
            raise ValueError(f"--{key} must be at least 0, got {cfg[key]}")
    if (args.num_latents is not None or args.prosqa_analysis) and not METHODS[cfg["method"]].latents:
        with_latents = ", ".join(m for m, spec in METHODS.items() if spec.latents)
        raise ValueError(f"method {cfg['method']} has no latents to force (--num_latents, --prosqa_analysis): "
                         f"use one of {with_latents}")
    return cfg


SETTINGS = ("model", "dataset", "split", "max_examples", "method", "stage", "c_thought", "max_latent_stage",
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


def main(argv=None):
    args = parse_args(argv)
    with one_line_errors():
        run, state = load_state(Path(args.ckpt)) if args.ckpt else ({}, {})
        cfg = resolve_config(args, run, state)
        curriculum = curriculum_of(cfg)
        device, autocast, rank, world = setup(cfg["device"], cfg["dtype"])
        gpt = load_gpt(args.ckpt or args.init_from, args.new_token_init, dropout=0.0)  # a broken one fails before a download
        model = Coconut(gpt.to(device), feedback=curriculum.feedback)
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
