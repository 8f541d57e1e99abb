"""
Evaluate a checkpoint, or any GPT-2, on a dataset split: accuracy, the paper's token counts, time per
example (SPEC §6). train.py uses the same `evaluate` for its validation accuracy.

    python eval.py --ckpt out/prosqa/best --split test
    python eval.py --init_from gpt2 --dataset gsm8k --max_examples 100 --out results.json
    torchrun --nproc_per_node=8 eval.py --ckpt out/gsm8k/best      # examples sharded over the GPUs
"""
import argparse
import contextlib
import json
import os
import sys
import time
from pathlib import Path

import torch
import torch.distributed as dist

from coconut import Coconut, load_gpt
from data import Curriculum, collate, decode, load_dataset, tokenize


def extract_answer(text):
    """What follows the last '#', without commas: "<<3*4=12>>\\n### 1,200" -> "1200" (SPEC §6)."""
    return text.split("#")[-1].replace(",", "").strip()


def is_correct(output, answer):
    return extract_answer(output) == answer.replace(",", "").strip()


# -----------------------------------------------------------------------------------------------------------
# Devices, precision and processes: one code path for a CPU, a GPU, and N GPUs (or CPU processes) under torchrun

def setup(device="auto", dtype="auto"):
    """(device, autocast context, rank, world size); joins the process group when started by torchrun."""
    rank, world = int(os.environ.get("RANK", 0)), int(os.environ.get("WORLD_SIZE", 1))
    if device == "auto":
        device = f"cuda:{int(os.environ.get('LOCAL_RANK', 0))}" if torch.cuda.is_available() else "cpu"
    device = torch.device(device)
    if device.type == "cuda":
        torch.cuda.set_device(device)
        torch.backends.cuda.matmul.allow_tf32 = torch.backends.cudnn.allow_tf32 = True
    if world > 1 and not dist.is_initialized():
        dist.init_process_group("nccl" if device.type == "cuda" else "gloo", device_id=device if device.type == "cuda" else None)
    if dtype == "auto":  # bf16 where the GPU supports it, float32 everywhere else
        dtype = "bfloat16" if device.type == "cuda" and torch.cuda.is_bf16_supported() else "float32"
    autocast = (torch.autocast(device.type, dtype=getattr(torch, dtype)) if dtype != "float32"
                else contextlib.nullcontext())
    return device, autocast, rank, world


def print0(*args, **kwargs):
    if int(os.environ.get("RANK", 0)) == 0:
        print(*args, **kwargs, flush=True)


def gather(items):
    """All ranks' lists, concatenated on every rank (a no-op in one process)."""
    if not dist.is_initialized():
        return items
    parts = [None] * dist.get_world_size()
    dist.all_gather_object(parts, items)
    return [x for part in parts for x in part]


# -----------------------------------------------------------------------------------------------------------
# Evaluation

@torch.no_grad()
def evaluate(model, records, curriculum, stage, max_new_tokens, batch_size=32, num_latents=None,
             with_loss=False, step=None, device="cpu", autocast=contextlib.nullcontext(), progress=False):
    """Greedy-decode every record's prompt at a stage; accuracy, mean tokens, time per example (SPEC §6).

    Records are sharded over the ranks of a process group and the results gathered. num_latents forces
    that many thoughts; with_loss adds the token-mean loss of the stage's training sequences. `step` is a
    compiled decode step (Coconut.compiled_step).
    """
    model.eval()
    tokenized, kept = tokenize(records)
    rank, world = (dist.get_rank(), dist.get_world_size()) if dist.is_initialized() else (0, 1)
    # Similar lengths batch well: prompts sorted by length, longest first, so the first batch shows the peak memory.
    mine = sorted(range(rank, len(kept), world), key=lambda i: -len(tokenized[i].question))
    results, loss_sum, n_loss_tokens, seconds = [], 0.0, 0, 0.0
    batches = range(0, len(mine), batch_size)
    for start in progress_bar(batches, "eval") if progress else batches:
        chunk = mine[start:start + batch_size]
        prompts = [curriculum.prompt(tokenized[i], stage, num_latents) for i in chunk]
        batch = collate(prompts, align_ends=True).to(device)
        t0 = time.perf_counter()
        with autocast:
            out = model.generate(batch, max_new_tokens, step=step)
        seconds += time.perf_counter() - t0
        for i, ids, n_tokens in zip(chunk, out.tokens, out.n_tokens):
            record = records[kept[i]]
            output = decode(ids, skip_special=True)
            results.append(dict(idx=kept[i], answer=record["answer"], prediction=extract_answer(output),
                                correct=is_correct(output, record["answer"]), n_tokens=n_tokens,
                                generated_ids=ids, output=output))
        if with_loss:
            train_batch = collate([curriculum.example(tokenized[i], stage) for i in chunk]).to(device)
            with autocast:
                losses = model(train_batch)
            loss_sum, n_loss_tokens = loss_sum + losses.sum().item(), n_loss_tokens + losses.numel()
    results = sorted(gather(results), key=lambda r: r["idx"])
    loss_sum, n_loss_tokens, seconds = (sum(x) for x in zip(*gather([(loss_sum, n_loss_tokens, seconds)])))
    n = max(len(results), 1)
    return dict(accuracy=sum(r["correct"] for r in results) / n, n=len(results),
                mean_tokens=sum(r["n_tokens"] for r in results) / n, seconds_per_example=seconds / n,
                loss=loss_sum / n_loss_tokens if with_loss and n_loss_tokens else None,
                skipped=len(records) - len(kept), examples=results)


def progress_bar(iterable, desc):
    """A progress bar on rank 0's terminal."""
    from tqdm import tqdm
    return tqdm(iterable, desc=desc, leave=False, disable=int(os.environ.get("RANK", 0)) != 0)
