"""
Speed and memory of Coconut's exact loop, each measured against a reference run in the same process.

    python bench.py                                   # CPU, float32: GPT-2 small shapes
    python bench.py --device cuda --compile           # GPU: bf16 autocast, torch.compile

The model has GPT-2 small's shapes (124M parameters, random weights: speed does not depend on them) and the
batches are real GSM8k-Aug test records at the final stage of the paper's GSM8k recipe (6 thoughts).

  latent overhead   a Coconut training step (forward + backward, thoughts fed back through the KV cache)
                    against a plain LM step on the very same tokens (the latents as ordinary tokens)
  cache speed-up    that step against naive recomputation (every thought recomputes its whole prefix)
  generation        batched greedy decoding with the KV cache against batch-1 decoding without it, which
                    recomputes the whole sequence for every new token (the authors' generation); in
                    float32 the two produce the same tokens (in bf16, rounding can flip a near tie)

    python bench.py --recipe prosqa --device cuda --compile    # or gsm8k; flags after -- go to train.py
    python bench.py --pccot 24                        # PCCoT's Jacobi latents against Coconut's chain, 24 thoughts

--pccot N times PCCoT (pccot.py, 3 Jacobi iterations: 1 + 3 + 1 passes) against Coconut (N + 2 passes) at N
thoughts on the same batch: the training step of the student's loss (forward and backward) and batched generation.

projects the wall time of a paper's recipe (docs/paper.md) from a shortened run of train.py
on records of the dataset's shape (ProsQA: graphs with the paper's settings, Algorithm 1; GSM8k-Aug: its test
records drawn with replacement) and a GPT of GPT-2's shapes with random weights: two epochs of every stage,
the second of which (compiled already) is scaled to the recipe's number of records and epochs.
"""
import argparse
import json
import math
import random
import resource
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import torch

from coconut import Coconut, load_gpt, naive_forward, naive_generate, token_losses
from common import setup
from data import VOCAB_SIZE, Curriculum, collate, load_dataset, tokenize
from gpt import GPT, GPTConfig
from pccot import PCCoT
from recipes import DEFAULTS, PRESETS, curriculum
from synthetic import PAPER, generate_prosqa

RECIPE_SPLITS = {"prosqa": (17_886, 300), "gsm8k": (385_620, 500)}  # the real splits: training and validation records


def timed(fns, device, repeat, warmup):
    """Median seconds of each of fns over `repeat` rounds in which they take turns (a drift in the machine's speed
    then touches all alike), after `warmup` rounds (compilation); and the peak CUDA memory of each."""
    cuda = device.type == "cuda"
    for _ in range(warmup):
        for fn in fns:
            fn()
    times, peaks = [[] for _ in fns], [None for _ in fns]
    for _ in range(repeat):
        for i, fn in enumerate(fns):
            if cuda:
                torch.cuda.synchronize()
                torch.cuda.reset_peak_memory_stats()
            t0 = time.perf_counter()
            fn()
            if cuda:
                torch.cuda.synchronize()
                peaks[i] = torch.cuda.max_memory_allocated() / 2**30
            times[i].append(time.perf_counter() - t0)
    return [(sorted(t)[len(t) // 2], peak) for t, peak in zip(times, peaks)]


def main():
    p = argparse.ArgumentParser(description="Speed and memory of Coconut against reference runs (see the docstring).")
    p.add_argument("--recipe", choices=RECIPE_SPLITS, help="project this recipe's wall time from a shortened run instead")
    p.add_argument("--recipe_examples", type=int, default=1280, help="--recipe: training records of the shortened run")
    p.add_argument("--recipe_val_examples", type=int, help="--recipe: validation records (default: as many as the real split)")
    p.add_argument("--device", default="auto", help="auto, cpu, cuda")
    p.add_argument("--dtype", default="auto", choices=("auto", "float32", "bfloat16"), help="auto: bf16 on GPUs that have it")
    p.add_argument("--compile", action="store_true", help="torch.compile the training model and the decode step")
    p.add_argument("--batch_size", type=int,
                   help="training batch (default 32 on a GPU; 16 on a CPU, where the naive step at 32 needs over 24 GiB)")
    p.add_argument("--gen_batch_size", type=int, default=32, help="generation batch")
    p.add_argument("--n_layer", type=int, default=12, help="model depth (GPT-2 small: 12)")
    p.add_argument("--n_head", type=int, default=12, help="attention heads (GPT-2 small: 12)")
    p.add_argument("--n_embd", type=int, default=768, help="model width (GPT-2 small: 768)")
    p.add_argument("--max_new_tokens", type=int, default=64, help="generation budget (the GSM8k preset's)")
    p.add_argument("--naive_examples", type=int, help="examples decoded one by one without cache (default 8 GPU, 2 CPU)")
    p.add_argument("--repeat", type=int, default=3, help="timed rounds, the measurements taking turns (each reports its median)")
    p.add_argument("--data_dir", help="folder with GSM8k-Aug's test.txt (default: downloaded once into the cache)")
    p.add_argument("--pccot", type=int, metavar="N", help="instead: PCCoT against Coconut at N thoughts (PCCoT's recipe: 24)")
    p.add_argument("--pccot_iterations", type=int, default=3, help="--pccot: Jacobi iterations (PCCoT's recipe: 3)")
    args, train_flags = p.parse_known_args()
    if args.recipe:
        return recipe(args, [f for f in train_flags if f != "--"])
    if train_flags:
        p.error(f"unrecognized arguments: {' '.join(train_flags)}")
    if args.pccot:
        return pccot_against_coconut(args)
    steps_and_generation(args)


def pccot_against_coconut(args):
    """PCCoT's training step (the student's loss: its Jacobi latents, then the answer) and generation against
    Coconut's sequential chain, at the same number of thoughts, on the same batch, taking turns."""
    device, autocast, _, _ = setup(args.device, args.dtype)
    B, G, n = args.batch_size or (32 if device.type == "cuda" else 16), args.gen_batch_size, args.pccot
    warmup = 2 if args.compile else 1
    torch.manual_seed(0)
    gpt = load_gpt("scratch", n_layer=args.n_layer, n_head=args.n_head, n_embd=args.n_embd).to(device)
    coconut, pccot = Coconut(gpt), PCCoT(gpt, args.pccot_iterations)
    records = load_dataset("gsm8k", "test", data_dir=args.data_dir)
    records = [records[i % len(records)] for i in range(max(B, G))]
    cur = Curriculum(method="pccot", c_thought=1, max_latent_stage=n)  # all n latents, "The answer is:" then the answer
    tokenized, _ = tokenize(records, max_latents=n, method="pccot")
    batch = collate([cur.example(t, cur.final_stage) for t in tokenized[:B]]).to(device)
    prompts = collate([cur.prompt(t, cur.final_stage) for t in tokenized[:G]], align_ends=True).to(device)

    def step(model):
        forward = (lambda b: token_losses(gpt, model.hidden(b)[0], b)) if not args.compile else \
            torch.compile(lambda b: token_losses(gpt, model.hidden(b)[0], b), dynamic=True)

        def run():
            with autocast:
                loss = forward(batch).mean()
            loss.backward()
            gpt.zero_grad(set_to_none=True)
        return run

    def generate(model):
        decode_step = model.compiled_step() if args.compile else None

        def run():
            with autocast:
                model.generate(prompts, args.max_new_tokens, step=decode_step)
        return run

    gpt.train()
    (t_coconut, m_coconut), (t_pccot, m_pccot) = timed([step(coconut), step(pccot)], device, args.repeat, warmup)
    gpt.eval()
    (g_coconut, _), (g_pccot, _) = timed([generate(coconut), generate(pccot)], device, args.repeat, warmup)
    name = torch.cuda.get_device_name(device) if device.type == "cuda" else "CPU"
    print(f"\n{name}, {'bf16 autocast' if isinstance(autocast, torch.autocast) else 'float32'}"
          f"{', torch.compile' if args.compile else ''}; model {args.n_layer}x{args.n_embd}; {n} thoughts, "
          f"{args.pccot_iterations} Jacobi iterations; training batch {B} x {batch.ids.shape[1]} columns; generation batch "
          f"{G}, {args.max_new_tokens} new tokens at most; torch {torch.__version__}\n")
    mib = lambda m: "-" if m is None else f"{m:.2f} GiB"
    print("| measurement | Coconut | PCCoT | PCCoT / Coconut |\n|---|---|---|---|")
    print(f"| training step (student's loss) | {t_coconut * 1e3:,.0f} ms | {t_pccot * 1e3:,.0f} ms | {t_pccot / t_coconut:.2f} |")
    print(f"| generation, batch {G} | {g_coconut * 1e3:,.0f} ms | {g_pccot * 1e3:,.0f} ms | {g_pccot / g_coconut:.2f} |")
    print(f"| peak memory of the training step | {mib(m_coconut)} | {mib(m_pccot)} | |")


def steps_and_generation(args):
    device, autocast, _, _ = setup(args.device, args.dtype)
    cuda = device.type == "cuda"
    B, G = args.batch_size or (32 if cuda else 16), args.gen_batch_size
    warmup = 2 if args.compile else 1  # compilation, then the recording of CUDA graphs
    n_naive = args.naive_examples or (8 if cuda else 2)

    torch.manual_seed(0)
    gpt = load_gpt("scratch", n_layer=args.n_layer, n_head=args.n_head, n_embd=args.n_embd).to(device)
    train_model = Coconut(gpt)
    plain = Coconut(gpt, feedback=False)
    records = load_dataset("gsm8k", "test", data_dir=args.data_dir)
    records = [records[i % len(records)] for i in range(max(B, G))]  # a file of fewer records fills the batches
    cur = Curriculum(c_thought=2, max_latent_stage=3)  # the GSM8k preset: 6 thoughts at the final stage
    tokenized, _ = tokenize(records, max_latents=6)
    batch = collate([cur.example(t, cur.final_stage) for t in tokenized[:B]]).to(device)
    tokens = int(batch.mask.sum())

    def step(model):
        def run():
            with autocast:
                loss = model(batch).mean()
            loss.backward()
            gpt.zero_grad(set_to_none=True)
        return run

    def naive_step():
        with autocast:
            loss = naive_forward(train_model.gpt, batch).mean()
        loss.backward()
        gpt.zero_grad(set_to_none=True)

    gpt.train()
    coconut_step, plain_step = (step(m.compiled() if args.compile else m) for m in (train_model, plain))
    (t_coconut, mem_coconut), (t_plain, mem_plain), (t_naive, mem_naive) = timed(
        [coconut_step, plain_step, naive_step], device, args.repeat, warmup)

    gpt.eval()
    gen_model = Coconut(gpt)
    decode_step = gen_model.compiled_step() if args.compile else None
    prompts = [cur.prompt(t, cur.final_stage) for t in tokenized[:G]]
    prompt_batch = collate(prompts, align_ends=True).to(device)
    outputs = {}

    def generate():
        with autocast:
            outputs["batched"] = gen_model.generate(prompt_batch, args.max_new_tokens, step=decode_step)

    def generate_naive():
        with torch.no_grad(), autocast:
            outputs["naive"] = [naive_generate(gpt, e, args.max_new_tokens) for e in prompts[:n_naive]]

    [(t_gen, mem_gen)] = timed([generate], device, args.repeat, warmup)
    [(t_gen_naive, _)] = timed([generate_naive], device, 1, 0)
    agree = sum(a == b for a, b in zip(outputs["batched"].tokens, outputs["naive"]))

    def mib(m):
        return "-" if m is None else f"{m:.2f} GiB"

    def per_s(t):  # and model FLOPs utilisation, on a GPU whose peak is known
        mfu = gpt.mfu(tokens / t, batch.ids.shape[1], device) if cuda else None
        return f"{tokens / t:,.0f} tok/s" + (f", MFU {mfu:.1%}" if mfu else "")

    name = torch.cuda.get_device_name(device) if cuda else "CPU"
    print(f"\n{name}, {'bf16 autocast' if isinstance(autocast, torch.autocast) else 'float32'}"
          f"{', torch.compile' if args.compile else ''}; model {args.n_layer}x{args.n_embd} "
          f"({sum(p.numel() for p in gpt.parameters()) / 1e6:.0f}M); batch {B} x {batch.ids.shape[1]} columns "
          f"({tokens} tokens, 6 thoughts); generation batch {G} x {prompt_batch.ids.shape[1]} columns; "
          f"torch {torch.__version__}\n")
    rows = [
        ("training step: Coconut, 6 thoughts", f"{t_coconut * 1e3:,.0f} ms", per_s(t_coconut), mib(mem_coconut)),
        ("training step: plain LM, same tokens", f"{t_plain * 1e3:,.0f} ms", per_s(t_plain), mib(mem_plain)),
        ("training step: naive recomputation", f"{t_naive * 1e3:,.0f} ms", per_s(t_naive), mib(mem_naive)),
        (f"generation: batch {G}, KV cache", f"{t_gen * 1e3:,.0f} ms", f"{G / t_gen:.2f} examples/s", mib(mem_gen)),
        (f"generation: batch 1, no cache ({n_naive} ex.)", f"{t_gen_naive * 1e3:,.0f} ms", f"{n_naive / t_gen_naive:.2f} examples/s", "-"),
    ]
    print("| measurement | time | throughput | peak memory |\n|---|---|---|---|")
    print("\n".join(f"| {a} | {b} | {c} | {d} |" for a, b, c, d in rows))
    print(f"\n| ratio | value |\n|---|---|\n"
          f"| latent overhead: Coconut step / plain step | {t_coconut / t_plain:.2f} |\n"
          f"| cache speed-up: naive step / Coconut step | {t_naive / t_coconut:.2f} |\n"
          f"| generation speed-up: batched cached / batch-1 naive, examples per second | "
          f"{(G / t_gen) / (n_naive / t_gen_naive):.1f} |\n"
          f"| batched outputs identical to batch-1 naive ones | {agree} of {n_naive} |")
    if not cuda:
        print(f"\npeak resident memory of the process: {resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 2**20:.2f} GiB")


def recipe_data(name, n_train, n_val, data_dir, folder):
    """Records of the dataset's shape, written into folder as train.py reads them."""
    sizes = {"train": n_train, "valid": n_val, "test": n_val}
    if name == "prosqa":
        for seed, (split, n) in enumerate(sizes.items()):
            (folder / f"prosqa_{split}.json").write_text(json.dumps(generate_prosqa(n, seed, PAPER)))
        return
    records, rng = load_dataset("gsm8k", "test", data_dir=data_dir), random.Random(0)
    for split, n in sizes.items():  # the iCoT format: question||steps #### answer
        lines = [f"{r['question']}||{' '.join(r['steps'])} #### {r['answer']}" for r in rng.choices(records, k=n)]
        (folder / f"{split}.txt").write_text("\n".join(lines) + "\n")


def project(cfg, steady, n_train, n_val, n_train_recipe, n_val_recipe):
    """Seconds of training and of validation per epoch of each stage in the recipe, from a line of metrics.jsonl
    for each stage (steady: {stage: metrics}) scaled to the recipe's records; and the recipe's schedule: the stage
    of each of its epochs, those of its CoT phase (if any) first."""
    cur = curriculum(cfg)
    schedule = [0] * cfg["cot_epochs"] + [cur.stage(e) for e in range(cfg["start_epoch"], cfg["epochs"])]
    val_batches = math.ceil(n_val_recipe / cfg["eval_batch_size"]) / math.ceil(n_val / cfg["eval_batch_size"])
    per_epoch = {s: (m["seconds"] * n_train_recipe / n_train, m["val_seconds"] * val_batches) for s, m in steady.items()}
    return per_epoch, schedule


def recipe(args, train_flags):
    """--recipe: run train.py for two epochs of every stage, then project the recipe from the second of each."""
    name, n_train = args.recipe, args.recipe_examples
    n_train_recipe, n_val_recipe = RECIPE_SPLITS[name]
    n_val = args.recipe_val_examples or n_val_recipe
    preset = {**DEFAULTS, **PRESETS[name]}
    with tempfile.TemporaryDirectory() as tmp:
        tmp = Path(tmp)
        (tmp / "data").mkdir()
        recipe_data(name, n_train, n_val, args.data_dir, tmp / "data")
        torch.manual_seed(0)
        GPT(GPTConfig(n_layer=args.n_layer, n_head=args.n_head, n_embd=args.n_embd, vocab_size=VOCAB_SIZE)).save(tmp)
        flags = [*train_flags, "--dataset", name, "--data_dir", str(tmp / "data"), "--init_from", str(tmp),
                 "--out_dir", str(tmp / "out"), "--cot_epochs", "0", "--start_epoch", "0", "--epochs_per_stage", "2",
                 "--epochs", str(2 * curriculum(preset).final_stage + 2), "--device", args.device, "--dtype", args.dtype,
                 *(["--compile"] if args.compile else [])]  # the schedule's flags last: they win over train_flags
        if subprocess.run([sys.executable, str(Path(__file__).with_name("train.py")), *flags]).returncode:
            sys.exit("bench.py --recipe: the shortened run of train.py failed (its error is above)")
        metrics = [json.loads(line) for line in (tmp / "out" / "metrics.jsonl").read_text().splitlines()]
        run = json.loads((tmp / "out" / "latest" / "run.json").read_text())
    # The recipe as the shortened run ran it (batch sizes may be overridden), with the recipe's own schedule.
    cfg = {**run, **{k: preset[k] for k in ("cot_epochs", "start_epoch", "epochs_per_stage", "epochs")}}
    steady = {m["stage"]: m for m in metrics[1::2]}  # the second epoch of each stage: compiled already
    per_epoch, schedule = project(cfg, steady, n_train, n_val, n_train_recipe, n_val_recipe)
    cur = curriculum(cfg)
    print(f"\n{name} recipe, projected from {n_train:,} training and {n_val:,} validation records (the recipe's: "
          f"{n_train_recipe:,} and {n_val_recipe:,}); model {args.n_layer}x{args.n_embd}; torch {torch.__version__}\n")
    print("| stage | thoughts | epochs | training s/epoch | validation s/epoch | tok/s | MFU |\n|---|---|---|---|---|---|---|")
    for stage, m in steady.items():
        mfu = f"{m['mfu']:.1%}" if "mfu" in m else "-"
        print(f"| {stage} | {min(stage, cur.max_latent_stage) * cur.c_thought} | {schedule.count(stage)} | "
              f"{per_epoch[stage][0]:,.0f} | {per_epoch[stage][1]:,.0f} | {m['tokens_per_second']:,} | {mfu} |")
    train, val = (sum(per_epoch[s][i] for s in schedule) for i in (0, 1))
    print(f"\nprojected: {(train + val) / 3600:.2f} h ({train / 3600:.2f} h of training, {val / 3600:.2f} h of "
          f"validation; without start-up and the test)")


if __name__ == "__main__":
    main()
