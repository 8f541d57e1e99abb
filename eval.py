"""
Evaluate a checkpoint, or any GPT-2, on a dataset split: accuracy, the paper's token counts and time per example
(§4.4, Table 1); what each continuous thought decodes to; a question of one's own. train.py uses the same
`evaluate` for its validation accuracy; analysis.py looks further inside (the paper's §5, the search in the thoughts).

    python eval.py --ckpt out/prosqa-coconut/best            # its dataset, method and stage, on the test split
    python eval.py --ckpt out/prosqa-coconut/best --loss --out test.json
    python eval.py --init_from gpt2 --dataset gsm8k --max_examples 100 --num_latents 0
    python eval.py --ckpt out/gsm8k-coconut/coconut/best --probe     # what each thought decodes to
    python eval.py --ckpt out/reachability-cot/best --soft_thinking  # a CoT model with Soft Thinking (softthinking.py)
    python eval.py --ckpt out/reachability-coconut/coconut/best --data_dir DIR   # DIR/reachability_test.json, one's own
    python eval.py --ckpt out/shellgame-coconut/best --split test+1 --max_latent_stage 5   # 5 swaps, one thought more
    torchrun --nproc_per_node=8 eval.py --ckpt out/gsm8k-coconut/coconut/best   # examples sharded over the GPUs

A checkpoint carries its dataset, method, stage and thoughts per step (run.json, state.json); flags override
them (a checkpoint at its final stage is evaluated at the final stage of the thoughts asked for). With
--init_from the dataset's recipe (recipes.py) stands in for the run's config. --data_dir reads the split from a
file of the dataset's own format (python data.py --dataset NAME --split test --out FILE writes one), for every
dataset, generated ones included.
"""
import argparse
import contextlib
import dataclasses
import json
import time
from pathlib import Path
from typing import NamedTuple

import torch
import torch.distributed as dist

from coconut import load_gpt
from common import gather, load_state, one_line_errors, parse_bool, print0, progress_bar, setup
from data import FORMATS, GENERATED, METHODS, SPLITS, collate, decode, encode, file_name, load_dataset, tokenize
from methods import build_model
from recipes import DEFAULT_DATASET, DEFAULTS, PRESETS, curriculum as curriculum_of, recipe
from softthinking import Settings as SoftSettings, SoftThinking


def extract_answer(text, fmt="coconut"):
    """What follows the last '#', without commas: "<<3*4=12>>\\n### 1,200" -> "1200" (the authors' rule); in the
    format of CODI and PCCoT, what follows the last "The answer is:" (all of it if absent: PCCoT's prompt gives it)."""
    marker = FORMATS[fmt].distill or "#"
    return text.split(marker)[-1].replace(",", "").strip()


def is_correct(output, answer, fmt="coconut"):
    return extract_answer(output, fmt) == answer.replace(",", "").strip()


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



def decode_thoughts(gpt, thoughts, counts, k):
    """The LM head's top-k tokens for each thought: per row, its first counts[row] thoughts of (B, n, C),
    each a list [{"token": str, "p": float}, ...] from the most probable down."""
    p, rows = gpt.logits(thoughts).float().softmax(-1).topk(k, dim=-1)  # (B, n, k) each
    ids = gpt.ids(rows)
    return [[[dict(token=decode([t]), p=q) for t, q in zip(row_ids, row_p)]
             for row_ids, row_p in zip(ids[b, :count].tolist(), p[b, :count].tolist())]
            for b, count in enumerate(counts)]


# -----------------------------------------------------------------------------------------------------------
# Command line

def arguments(doc):
    """The flags of every command that evaluates a model (eval.py, analysis.py): which model, on which records, with
    which settings; doc: the command's docstring, for --help."""
    p = argparse.ArgumentParser(description=doc.split("\n\n")[0].strip(),
                                formatter_class=argparse.RawDescriptionHelpFormatter, epilog=doc.split("\n\n", 1)[1])
    a = p.add_argument
    model = p.add_mutually_exclusive_group(required=True)
    model.add_argument("--ckpt", help="a checkpoint directory of train.py (out/<run>/best): its model, dataset, method and stage")
    model.add_argument("--init_from", help="a GPT-2 name (gpt2, gpt2-medium, ...) or Hugging Face GPT-2 folder, untrained for Coconut")
    a("--new_token_init", default="copy", choices=("copy", "mean"), help="with --init_from: new token embeddings copy '<<' or are the mean row")
    a("--dataset", help=f"{', '.join(PRESETS)} (default: the checkpoint's, else {DEFAULT_DATASET})")
    a("--data_dir", help="read the split from this folder, a file in the dataset's own format and name (data.file_name): "
                         "the download cache's, or a generated dataset's (python data.py --dataset NAME --split S --out FILE)")
    a("--cache_dir", help="where downloaded datasets are kept (default $COCONUT_DATA_DIR or ~/.cache/coconut)")
    a("--split", default="test", choices=SPLITS, help="split to evaluate (test+1, test+2: the generated test sets one and "
                                                       "two steps longer than training)")
    a("--max_examples", type=int, help="evaluate the first N records only")
    a("--method", choices=METHODS, help="how prompts are built (default: the checkpoint's, else coconut)")
    a("--stage", type=int, help="curriculum stage of the prompts (default: the checkpoint's, else the final stage)")
    a("--c_thought", type=int, help="continuous thoughts per reasoning step (default: the checkpoint's, else the preset's)")
    a("--max_latent_stage", type=int, help="stages that replace steps by thoughts (default: the checkpoint's, else the "
                                           "preset's); one more gives each question a step's thoughts more")
    a("--pad_latent_to_max", type=parse_bool, help="beyond max_latent_stage, always max_latent_stage*c thoughts (default: the checkpoint's, else true)")
    a("--batch_size", type=int, dest="eval_batch_size", help="prompts per generation batch (default: the checkpoint's eval_batch_size, else 64)")
    a("--max_new_tokens", type=int, help="greedy decoding budget (default: the checkpoint's, else the preset's)")
    a("--device", default="auto", help="auto, cpu, cuda, cuda:1, ...")
    a("--dtype", default="auto", choices=("auto", "float32", "bfloat16"), help="auto: bf16 autocast where the GPU supports it, else float32")
    a("--compile", action="store_true", help="torch.compile the decode step (Coconut.compiled_step)")
    a("--out", help="write the results, every example and the settings to this JSON file")
    return p


def parse_args(argv=None):
    p = arguments(__doc__)
    a = p.add_argument
    a("--num_latents", type=int, help="force exactly K thoughts in every prompt, whatever the stage")
    a("--loss", action="store_true", help="also report the loss of the stage's training sequences (mean over supervised tokens)")
    a("--probe", action="store_true", help="decode every continuous thought with the LM head: top tokens and probabilities")
    a("--probe_topk", type=int, default=5, help="with --probe: tokens listed per thought")
    a("--question", help="instead: answer this question of one's own, and decode each of its thoughts")
    a("--soft_thinking", action="store_true", help="generate with Soft Thinking (softthinking.py): a CoT model reads back "
      "mixtures of token embeddings while it reasons")
    for f in dataclasses.fields(SoftSettings):
        a(f"--soft_{f.name}", type=type(f.default), help=f"with --soft_thinking: its {f.name} (default {f.default})")
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
    soft = [f"--soft_{f.name}" for f in dataclasses.fields(SoftSettings) if f"soft_{f.name}" in given]
    if soft and not getattr(args, "soft_thinking", False):
        raise ValueError(f"{', '.join(soft)} without --soft_thinking: only Soft Thinking reads them")
    thoughts = [f"--{k}" for k in ("c_thought", "max_latent_stage", "pad_latent_to_max") if k in given]
    if thoughts and not METHODS[cfg["method"]].latents:
        raise ValueError(f"{', '.join(thoughts)}: method {cfg['method']} has no thoughts for them to shape")
    if getattr(args, "soft_thinking", False) and args.compile:
        raise ValueError("--compile with --soft_thinking: Soft Thinking's generation keeps each row's state between "
                         "steps, in Python, and is not compiled")
    if getattr(args, "soft_thinking", False) and METHODS[cfg["method"]].latents:
        raise ValueError(f"--soft_thinking reads back concept tokens where a chain of thought writes its steps: it runs on "
                         f"a model without latents (--method cot), not on method {cfg['method']}")
    if getattr(args, "num_latents", None) is not None and not METHODS[cfg["method"]].latents:
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


def thoughts_in_steps(examples, records, c_thought):
    """For each thought j, the share of the examples (with a j-th thought and a step for it) whose thought's likeliest
    token is one of the tokens of the step it stands for: how often thoughts read as the step they replaced."""
    hits = {}
    for e in examples:
        steps = records[e["idx"]]["steps"]
        for j, top in enumerate(e.get("thoughts", [])):
            if j // c_thought < len(steps):
                step_tokens = {decode([t]) for t in encode(steps[j // c_thought])}
                hits.setdefault(j, []).append(top[0]["token"] in step_tokens)
    return [sum(h) / len(h) for _, h in sorted(hits.items())]


def probe_table(examples, records, c_thought):
    """The decoded thoughts of a few examples, each next to the step of the record that it replaced."""
    lines = []
    for e in examples:
        lines.append(f"example {e['idx']}: answer {e['answer']!r}, predicted {e['prediction']!r}")
        lines += thought_lines(e["thoughts"], records[e["idx"]]["steps"], c_thought)
    return lines


class Session(NamedTuple):
    """What a command that evaluates has set up: the settings used, the curriculum, the model on its device."""
    cfg: dict
    curriculum: object
    model: object
    device: torch.device
    autocast: object
    rank: int
    world: int
    step: object  # the compiled decode step, or None

    def records(self):
        """The records of the split asked for."""
        cfg = self.cfg
        records = load_dataset(cfg["dataset"], cfg["split"], cfg["data_dir"], cfg["cache_dir"])[:cfg.get("max_examples")]
        source = Path(cfg["data_dir"]) / file_name(cfg["dataset"], cfg["split"]) if cfg["data_dir"] else \
            "generated" if cfg["dataset"] in GENERATED else "the download cache"
        print0(f"{cfg['model']} on {cfg['dataset']} {cfg['split']} ({len(records)} records from {source}): {cfg['method']}, "
               f"stage {cfg['stage']}, c_thought {cfg['c_thought']}, max_latent_stage {cfg['max_latent_stage']}, "
               f"device {self.device}, {self.world} process(es)")
        return records

    def settings(self):
        return {**{k: self.cfg.get(k) for k in SETTINGS}, "device": str(self.device)}


def start(args):
    """The Session of a command's flags: the checkpoint's config under the flags given, the model built and loaded."""
    run, state = load_state(Path(args.ckpt)) if args.ckpt else ({}, {})
    cfg = resolve_config(args, run, state)
    device, autocast, rank, world = setup(cfg["device"], cfg["dtype"])
    gpt = load_gpt(args.ckpt or args.init_from, args.new_token_init, dropout=0.0)  # a broken one fails before a download
    model = build_model(cfg, gpt.to(device), args.ckpt)
    if cfg.get("soft_thinking"):
        model = SoftThinking(gpt, SoftSettings(**{f.name: cfg[f"soft_{f.name}"] for f in dataclasses.fields(SoftSettings)
                                                  if f"soft_{f.name}" in cfg}))
    step = model.compiled_step() if args.compile else None
    return Session(cfg, curriculum_of(cfg), model, device, autocast, rank, world, step)


def main(argv=None):
    args = parse_args(argv)
    with one_line_errors():
        s = start(args)
        cfg = s.cfg
        if args.question:
            out = dict(ask(s.model, args.question, s.curriculum, cfg["stage"], cfg["max_new_tokens"], args.num_latents,
                           cfg["probe_topk"], s.device, s.autocast), settings=s.settings())
            print0(f"question: {out['question']}")
            print0("\n".join(thought_lines(out["thoughts"])))
            print0(f"answer: {out['prediction']!r} ({out['n_tokens']} tokens: {out['output']!r})")
            return write_out(args.out, out, s.rank)
        records = s.records()
        out = evaluate(s.model, records, s.curriculum, cfg["stage"], cfg["max_new_tokens"], cfg["eval_batch_size"],
                       num_latents=args.num_latents, with_loss=args.loss, step=s.step, device=s.device,
                       autocast=s.autocast, progress=True, probe_topk=cfg["probe_topk"] if args.probe else 0)
        out["settings"] = s.settings()
        print0("\n".join(summary_table(out)))
        if args.probe or args.soft_thinking:
            print0("\n".join(probe_table(out["examples"][:3], records, cfg["c_thought"])))
            out["thoughts_in_steps"] = thoughts_in_steps(out["examples"], records, cfg["c_thought"])
            print0("the likeliest token of thought j is a token of the step it stands for, in this share of the "
                   "questions: " + ", ".join(f"{j + 1}: {share:.1%}" for j, share in enumerate(out["thoughts_in_steps"])))
        write_out(args.out, out, s.rank)


def write_out(path, out, rank):
    """The results as JSON, from rank 0."""
    if path and rank == 0:
        Path(path).parent.mkdir(parents=True, exist_ok=True)
        Path(path).write_text(json.dumps(out, indent=1) + "\n")
        print0(f"wrote {path}")


if __name__ == "__main__":
    main()
