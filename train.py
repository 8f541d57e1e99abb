"""
Curriculum training of Coconut and the paper's baselines (Table 1) on a CPU, one GPU, or many.

    python train.py                                  # the offline default: a tiny GPT from scratch learns the
                                                     # shell game through every stage, minutes on a CPU
    python train.py --dataset prosqa                 # the paper's ProsQA recipe on GPT-2
    python train.py --dataset gsm8k                  # CoT phase, then Coconut from its best epoch
    python train.py --dataset prosqa --method cot    # any method of the paper's Table 1
    torchrun --nproc_per_node=8 train.py --dataset gsm8k
    torchrun --nnodes=2 --nproc_per_node=8 --rdzv-backend=c10d --rdzv-endpoint=HOST:29500 train.py --dataset gsm8k
    python train.py --dataset prosqa --resume        # continue the run in --out_dir exactly, or start it

A run writes into --out_dir: metrics.jsonl (a line per epoch) and metrics.png (its picture, with matplotlib),
the checkpoints `latest` and `best` (by validation accuracy at the final stage; see common.py), and test.json
(the best checkpoint on the test split). Everything random in a run (data order, stage mixing, dropout) is a
function of (seed, epoch, step, sequence), so that a checkpoint's position resumes it exactly. With --resume, one
command starts a run and continues it after any stop: torchrun's --max-restarts and a SLURM requeue run it again.
On SIGTERM or SIGUSR1 (preemption) a run finishes the step in flight, writes `latest` and exits.

The loss of a step is this project's definition, chosen to be the paper's whatever the hardware: the step's
sequences, in order, form groups of --loss_group (32); the loss is the mean over groups of each group's mean
token cross-entropy. The authors' 4 GPUs x 32 sequences compute exactly that (each GPU's token mean,
averaged), and so do one GPU at 128, 8 GPUs x 16 or 2 CPU processes: --micro_batch_size only trades memory
for speed. A step's sequences are split evenly over the processes, each one's share into micro-batches.
"""
import argparse
import inspect
import json
import math
import random
import signal
import sys
import time
from contextlib import nullcontext
from pathlib import Path

import torch
from torch.nn.parallel import DistributedDataParallel

from coconut import load_gpt
from common import (Preemption, gather, load_optimizer, load_state, on_every_rank, one_line_errors, parse_bool, prefetch,
                    print0, progress_bar, save_checkpoint, setup, to_terminal)
from data import METHODS, collate, load_dataset, tokenize, vocabulary
from eval import evaluate
from methods import build_model
from plots import plot_metrics
from recipes import DEFAULT_DATASET, DEFAULTS, PRESETS, curriculum as curriculum_of, recipe


def parse_args(argv=None):
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0].strip(),
                                formatter_class=argparse.RawDescriptionHelpFormatter, epilog=__doc__.split("\n\n", 1)[1])
    a = p.add_argument
    a("--dataset", default=DEFAULT_DATASET, choices=PRESETS, help=f"dataset, and with it its recipe (default: {DEFAULT_DATASET}, offline)")
    a("--data_dir", help="read the dataset's files from this folder instead of downloading them")
    a("--cache_dir", help="where downloaded datasets are kept (default $COCONUT_DATA_DIR or ~/.cache/coconut)")
    a("--method", choices=METHODS, help="coconut, a baseline or ablation of the paper's Table 1, or a method that followed: "
                                         "codi, pccot, simcot (docs/methods.md)")
    a("--init_from", help="GPT-2 name (gpt2, gpt2-medium, ...), Hugging Face GPT-2 folder, checkpoint of ours, or 'scratch'")
    a("--n_layer", type=int, help="layers of a model from scratch")
    a("--n_head", type=int, help="attention heads of a model from scratch")
    a("--n_embd", type=int, help="width of a model from scratch")
    a("--new_token_init", choices=("copy", "mean"), help="new token embeddings: copy of '<<' (default) or mean of all rows")
    a("--dropout", type=float, help="GPT-2's dropout (0.1), on embeddings, attention and residuals")
    a("--c_thought", type=int, help="continuous thoughts per reasoning step")
    a("--max_latent_stage", type=int, help="stages that replace steps by thoughts; later stages remove all steps")
    a("--epochs_per_stage", type=int, help="epochs of each curriculum stage")
    a("--epochs", type=int, help="last epoch (exclusive) of the run")
    a("--start_epoch", type=int, help="first epoch: the schedule's stage is epoch // epochs_per_stage")
    a("--cot_epochs", type=int, help="epochs of a plain-CoT phase first; the method then starts from its best epoch")
    a("--pad_latent_to_max", type=parse_bool, help="beyond max_latent_stage, always max_latent_stage*c thoughts")
    a("--markers", type=parse_bool, help="<bot> and <eot> around the thoughts (default: as the method has them; "
                                        "--dataset reachability: false)")
    a("--uniform_prob", type=float, help="probability that a record trains at a random stage (stage mixing)")
    a("--icot_tokens_per_stage", type=int, help="icot: leading CoT tokens removed per stage")
    a("--lr", type=float, help="AdamW learning rate (the peak, with --lr_schedule cosine)")
    a("--lr_schedule", choices=("constant", "cosine"), help="constant (Coconut), or cosine to 0 after a linear warm-up (CODI, PCCoT)")
    a("--warmup", type=float, help="with cosine: the warm-up's share of the run's steps, from lr 0")
    a("--grad_clip", type=float, help="clip the gradient's norm to this before each step (0: never)")
    a("--weight_decay", type=float, help="AdamW weight decay")
    a("--decay_norms_and_biases", type=parse_bool, help="weight decay on biases and norm gains too (Coconut's code: true; "
                                                       "the Hugging Face Trainer of CODI and PCCoT: false)")
    a("--pccot_iterations", type=int, help="PCCoT: Jacobi iterations over the latents (at least 1)")
    a("--step_decoder_init", help="SIM-CoT: the step decoder's GPT-2 (default: a copy of the model as the run starts)")
    a("--lora_r", type=int, help="train LoRA adapters of this rank on a frozen GPT (lora.py; CODI's and PCCoT's recipes: "
                                 "128); 0: train every weight")
    a("--lora_alpha", type=float, help="LoRA's alpha: the update is scaled by alpha / r")
    a("--lora_dropout", type=float, help="dropout on LoRA's input")
    a("--lora_token_rows", type=parse_bool, help="with LoRA, the embedding rows of <bot>, <eot>, <latent> and EOS train too")
    a("--beta1", type=float, help="AdamW beta1")
    a("--beta2", type=float, help="AdamW beta2")
    a("--batch_size", type=int, help="sequences per optimizer step, over all processes")
    a("--micro_batch_size", type=int, help="most sequences per forward pass (memory); the loss does not depend on it")
    a("--loss_group", type=int, help="the loss is the mean over groups of this many sequences of their token means")
    a("--reset_optimizer", choices=("epoch", "stage", "never"), help="re-create AdamW every epoch (the authors' code), every stage (the paper), or never")
    a("--max_new_tokens", type=int, help="greedy decoding budget in evaluation")
    a("--eval_batch_size", type=int, help="prompts per generation batch")
    a("--train_examples", type=int, help="train on the first N records only")
    a("--val_examples", type=int, help="validate on the first N records only")
    a("--test_examples", type=int, help="test on the first N records only")
    a("--seed", type=int, default=0, help="seed of data order, stage mixing, dropout and initialisation")
    a("--out_dir", help="where checkpoints and metrics go (default out/<dataset>-<method>)")
    a("--resume", action="store_true", help="continue the run in --out_dir from its latest checkpoint, or start it if it "
                                            "has none: one command for the first launch and every restart")
    a("--ckpt_every", type=int, default=0, help="also checkpoint every N optimizer steps (0: at epoch ends only)")
    a("--max_steps", type=int, default=0, help="stop after N optimizer steps of this invocation (0: no limit)")
    a("--log_every", type=int, default=100, help="when the output is a file, not a terminal: a line every N steps "
                                                   "(step, loss, tokens/s; 0: the epochs' lines only)")
    a("--device", default="auto", help="auto, cpu, cuda, cuda:1, ...")
    a("--dtype", default="auto", choices=("auto", "float32", "bfloat16"), help="auto: bf16 autocast where the GPU supports it, else float32")
    a("--compile", action="store_true", help="torch.compile the model for training and the decode step for evaluation")
    a("--wandb", metavar="PROJECT", help="also log metrics.jsonl's lines to this W&B project (pip install wandb)")
    a("--tensorboard", action="store_true", help="also log them to out_dir/tensorboard (pip install tensorboard)")
    return p.parse_args(argv)


def resolve_config(args, world=1):
    """DEFAULTS, then the dataset's preset, then the flags given: the run's whole config, as a dict."""
    given = {k: v for k, v in vars(args).items() if v is not None}
    cfg = {**recipe(args.dataset, given.get("method", DEFAULTS["method"])), **given}
    cfg.setdefault("out_dir", f"out/{cfg['dataset']}-{cfg['method']}")
    if cfg["method"] in ("cot", "no_cot"):
        cfg["cot_epochs"] = 0  # already CoT, or no use for it
    refuse_ignored(given, cfg)
    for key in ("epochs", "batch_size", "micro_batch_size", "loss_group", "epochs_per_stage", "eval_batch_size",
                "max_new_tokens"):
        if cfg[key] < 1:
            raise ValueError(f"--{key} must be at least 1, got {cfg[key]}")
    if cfg["cot_epochs"] and cfg["lora_r"]:
        raise ValueError("--cot_epochs with --lora_r: the method would start from the CoT phase's GPT without its LoRA "
                         "adapters; train the CoT phase in a run of its own and pass its checkpoint as --init_from")
    if cfg["pccot_iterations"] < 1:
        raise ValueError(f"--pccot_iterations must be at least 1, got {cfg['pccot_iterations']}")
    if cfg["method"] == "pccot" and not cfg["pad_latent_to_max"]:
        raise ValueError("--method pccot computes every row's latents at once, so every row needs as many: it needs "
                         "--pad_latent_to_max true (the recipe's is false: as many thoughts as steps)")
    if not 0 <= cfg["warmup"] < 1 or cfg["grad_clip"] < 0:
        raise ValueError(f"--warmup must be within [0, 1) and --grad_clip at least 0, got {cfg['warmup']} and {cfg['grad_clip']}")
    if not 0 <= cfg["uniform_prob"] <= 1:
        raise ValueError(f"--uniform_prob must be within [0, 1], got {cfg['uniform_prob']}")
    if cfg["batch_size"] % world:
        B, W = cfg["batch_size"], world
        nearby = sorted({max(W, B // W * W), B // W * W + W})
        raise ValueError(f"--batch_size {B} does not split evenly over {W} processes: use a multiple of {W} "
                         f"(such as {' or '.join(map(str, nearby))})")
    return cfg


# Flags that only some runs read: given to another, they would be ignored, so they are refused.
METHOD_FLAGS = {"pccot_iterations": ("pccot",), "step_decoder_init": ("simcot",), "icot_tokens_per_stage": ("icot",)}
SCRATCH_FLAGS = ("n_layer", "n_head", "n_embd")


def refuse_ignored(given, cfg):
    """A ValueError for a flag given that this run would not read."""
    for key, methods in METHOD_FLAGS.items():
        if key in given and cfg["method"] not in methods:
            raise ValueError(f"--{key} is read by --method {' or '.join(methods)} only, not by {cfg['method']}")
    shape = [f"--{key}" for key in SCRATCH_FLAGS if key in given]
    if shape and cfg["init_from"] != "scratch":
        raise ValueError(f"{', '.join(shape)}: the shape of a model from scratch (--init_from scratch), not of "
                         f"{cfg['init_from']}, whose shape is its own")
    spec = METHODS[cfg["method"]]
    if "markers" in given and (not spec.latents or spec.format != "coconut"):
        raise ValueError(f"--markers: method {cfg['method']} {'has no thoughts' if not spec.latents else 'keeps its own'}")


# -----------------------------------------------------------------------------------------------------------
# The sequences of a step, and each one's weight in the loss

def step_sequences(train, order, curriculum, stage, cfg, epoch, step):
    """The step's examples and, for each, the weight of each of its supervised tokens in the step's loss (a tuple:
    one weight for the items of each term of the loss, data.Example.terms).

    Group g holds sequences [g * loss_group, (g + 1) * loss_group) of the step; with G groups and n_g supervised
    tokens in group g, a token of group g weighs 1 / (G * n_g), so that the weighted sum of token losses is the
    mean over groups of each group's token mean, however the step is later split into micro-batches. A method with
    more terms (CODI's teacher tokens and distillation, SIM-CoT's steps) weighs each term's items so too: its loss
    is the sum over terms of the mean over groups of each group's mean item.
    """
    ids = order[step * cfg["batch_size"]:(step + 1) * cfg["batch_size"]]
    # Each sequence's own seed: its stage draw does not depend on which process builds it.
    examples = [curriculum.example(train[i], stage, random.Random(f"{cfg['seed']}-{epoch}-{step}-{j}"))
                for j, i in enumerate(ids)]
    size = cfg["loss_group"]
    groups = [[sum(counts) for counts in zip(*(e.terms for e in examples[g:g + size]))]
              for g in range(0, len(examples), size)]  # items of each term in each group
    weights = [tuple(1 / (len(groups) * n) if n else 0.0 for n in groups[j // size]) for j in range(len(examples))]
    return examples, weights


def micro_batches(n, rank, world, micro_batch_size):
    """This process's share of a step's n sequences, as (start, end) ranges of at most micro_batch_size.

    Shares are contiguous and as even as possible (sizes differ by at most one, in a step of fewer sequences
    than a full batch), so that every process works; cut from the start of each share, the micro-batches of
    N processes are those of one process whenever the shares are whole numbers of micro-batches.
    """
    start = rank * (n // world) + min(rank, n % world)
    end = start + n // world + (rank < n % world)
    return [(s, min(s + micro_batch_size, end)) for s in range(start, end, micro_batch_size)]


# -----------------------------------------------------------------------------------------------------------
# Training

def make_optimizer(model, cfg, device):
    """AdamW over the model's trainable parameters: weight decay on all of them, or (decay_norms_and_biases false,
    as the Hugging Face Trainer of CODI and PCCoT does) not on biases and norm gains, the one-dimensional ones."""
    params = [p for p in model.parameters() if p.requires_grad]
    # An embedding with LoRA's trainable rows (lora.py) is not decayed: decay would reach its frozen rows too.
    no_decay = [getattr(p, "rows_only", False) or (p.dim() <= 1 and not cfg["decay_norms_and_biases"]) for p in params]
    groups = [group for group in (dict(params=[p for p, n in zip(params, no_decay) if not n]),
                                  dict(params=[p for p, n in zip(params, no_decay) if n], weight_decay=0.0))
              if group["params"]]
    return torch.optim.AdamW(groups, lr=cfg["lr"], weight_decay=cfg["weight_decay"], betas=(cfg["beta1"], cfg["beta2"]),
                             fused=device.type == "cuda")


def learning_rate(cfg, step, total):
    """The learning rate of a run's step (0-based, of `total`): constant, or the Hugging Face Trainer's cosine with
    warm-up (get_cosine_schedule_with_warmup): from 0 up to lr over ceil(warmup * total) steps, then down to 0."""
    if cfg["lr_schedule"] == "constant":
        return cfg["lr"]
    warm = math.ceil(cfg["warmup"] * total)
    if step < warm:
        return cfg["lr"] * step / warm
    return cfg["lr"] * max(0.0, 0.5 * (1 + math.cos(math.pi * (step - warm) / max(1, total - warm))))


def resets_optimizer(cfg, curriculum, epoch):
    """Whether AdamW starts afresh at this epoch: every epoch (the authors' code re-creates it with each epoch's
    data loader), at each change of stage (the paper's words), or never."""
    if epoch == cfg["start_epoch"] or cfg["reset_optimizer"] == "never":
        return False
    return cfg["reset_optimizer"] == "epoch" or curriculum.stage(epoch) != curriculum.stage(epoch - 1)


def start_or_resume(cfg, data, device):
    """The model, optimizer and position (epoch, step, stage, best accuracy) of a phase: from the latest
    checkpoint in out_dir if it has one, else new."""
    latest = Path(cfg["out_dir"]) / "latest"
    if latest.exists():
        saved, state = load_state(latest)
        # Continuing with other settings (more epochs, say) is allowed, but never silent: it is no longer the run
        # that was started.
        changed = [f"{k} {saved[k]} -> {cfg[k]}" for k in sorted(saved.keys() & cfg.keys() - {"resume", "max_steps", "log_every"})
                   if saved[k] != cfg[k]]
        if changed:
            print0(f"{latest}: continuing with settings other than the checkpoint's: {', '.join(changed)}")
        gpt = load_gpt(latest, dropout=cfg["dropout"])
    else:
        state = dict(epoch=cfg["start_epoch"], step=0, stage=curriculum_of(cfg).stage(cfg["start_epoch"]),
                     best_accuracy=None)
        torch.manual_seed(cfg["seed"])  # the initialisation of a model from scratch
        scratch = {k: cfg[k] for k in ("n_layer", "n_head", "n_embd")} if cfg["init_from"] == "scratch" else {}
        gpt = load_gpt(cfg["init_from"], cfg["new_token_init"], cfg["dropout"],
                       tokens=data["vocabulary"] if scratch else None, **scratch)
    model = build_model(cfg, gpt.to(device), latest if latest.exists() else None, training=True)
    optimizer = make_optimizer(model, cfg, device)
    if latest.exists():
        load_optimizer(latest, optimizer, device)
    return model, optimizer, state


def prepare(examples, weights, ranges, seeds):
    """This process's micro-batches, ready to run: (Batch, weight of each supervised token (N,), dropout seed)."""
    if not ranges:  # fewer sequences than processes, at an epoch's end: a weightless one keeps this one in step
        examples, weights, ranges, seeds = examples[:1], [0.0], [(0, 1)], [0]
        weights = [(w,) * len(examples[0].terms) for w in weights]
    # The model's losses come term by term, each in row order (data.Example.terms); so do their weights.
    return [(collate(examples[start:end]),
             torch.tensor([w[k] for k in range(len(examples[0].terms))
                           for e, w in zip(examples[start:end], weights[start:end]) for _ in range(e.terms[k])]),
             seed) for (start, end), seed in zip(ranges, seeds)]


def train_step(forward, no_sync, optimizer, micro_batches, run, lr=None, grad_clip=0.0):
    """One optimizer step over this process's micro-batches; the weighted loss of its share, and its tokens.
    forward: the model, as DistributedDataParallel runs it and perhaps compiled; no_sync: its context that
    keeps gradients local.

    DistributedDataParallel averages the gradients of the processes, each of which holds the gradient of its
    share of the weighted sum: scaling by the world size makes the average that sum. It reduces them once, in
    buckets overlapped with the last micro-batch's backward pass; the others accumulate locally (no_sync).
    """
    loss_sum, n_tokens = torch.zeros((), device=run.device), 0
    for m, (batch, token_weights, seed) in enumerate(micro_batches):
        n_tokens += int(batch.mask.sum())  # counted on the host, before the batch moves: no wait for the device
        batch, token_weights = batch.to(run.device), token_weights.to(run.device, non_blocking=True)
        torch.manual_seed(seed)  # dropout masks: a function of the micro-batch's place in the step
        last = m == len(micro_batches) - 1
        with no_sync() if not last else nullcontext(), run.autocast:
            loss = (forward(batch) * token_weights).sum()
            (loss * run.world).backward()
        loss_sum = loss_sum + loss.detach()
    if grad_clip:  # on the gradients that DistributedDataParallel has reduced: the same on every process
        torch.nn.utils.clip_grad_norm_([p for g in optimizer.param_groups for p in g["params"]], grad_clip)
    if lr is not None:
        for group in optimizer.param_groups:
            group["lr"] = lr
    optimizer.step()
    optimizer.zero_grad(set_to_none=True)
    return loss_sum, n_tokens


def data_parallel(forward):
    """forward in DistributedDataParallel. One forward call runs a whole micro-batch, thoughts and all: weights
    reused by the latent passes are reduced once. Buffers (a vocabulary of its own) never change, so they are not
    broadcast at every step (a flag that recent torch calls forward_sync_buffers, and warns of by its old name).
    Every trainable parameter takes part in every step (SIM-CoT's step decoder too: simcot.py)."""
    renamed = "forward_sync_buffers" in inspect.signature(DistributedDataParallel).parameters
    return DistributedDataParallel(forward, **{"forward_sync_buffers" if renamed else "broadcast_buffers": False})


def end_of_epoch(cfg, model, optimizer, train, valid, decode_step, state, stats, run, trackers):
    """Validate, log a line of metrics.jsonl (and redraw metrics.png, and to the trackers), write `latest` and
    perhaps `best`."""
    epoch, stage, out_dir, curriculum, gpt = state["epoch"], state["stage"], Path(cfg["out_dir"]), curriculum_of(cfg), model.gpt
    loss_sum, n_steps, n_tokens, n_sequences, seconds = (sum(x) for x in zip(*gather([stats])))
    t0 = time.time()
    results = evaluate(model, valid, curriculum, stage, cfg["max_new_tokens"], cfg["eval_batch_size"], with_loss=True,
                       step=decode_step, device=run.device, autocast=run.autocast, progress=True)
    seconds /= run.world
    metrics = dict(epoch=epoch, stage=stage, train_loss=loss_sum / max(n_steps, 1), val_loss=results["loss"],
                   val_accuracy=results["accuracy"], val_mean_tokens=results["mean_tokens"],
                   seconds=round(seconds, 2), tokens_per_second=round(n_tokens / seconds),
                   val_seconds=round(time.time() - t0, 2))
    if run.device.type == "cuda":  # model FLOPs utilisation of the training steps, per GPU, against its bf16 peak
        metrics["mfu"] = gpt.mfu(n_tokens / seconds / run.world, n_tokens / max(n_sequences, 1), run.device)
    state.update(epoch=epoch + 1, step=0)
    state.pop("epoch_so_far", None)
    improved = (curriculum.is_final(stage, train)
                and (state["best_accuracy"] is None or results["accuracy"] > state["best_accuracy"]))
    if improved:
        state["best_accuracy"] = results["accuracy"]
    with on_every_rank():  # only rank 0 writes; if it cannot, every rank stops with its message
        if run.rank == 0:
            with open(out_dir / "metrics.jsonl", "a") as f:
                f.write(json.dumps(metrics) + "\n")
            plot_metrics(out_dir)
            trackers.log(metrics, cfg["method"])
            save_checkpoint(out_dir, "latest", model, optimizer, cfg, state)
            if improved:
                save_checkpoint(out_dir, "best", model, optimizer, cfg, state)
    print0(" | ".join(f"{k} {v:.4f}" if isinstance(v, float) else f"{k} {v}" for k, v in metrics.items()))


def train_phase(cfg, data, run, preemption, trackers):
    """Train one method through its curriculum; returns the directory of its best checkpoint (None: stopped)."""
    out_dir, curriculum = Path(cfg["out_dir"]), curriculum_of(cfg)
    model, optimizer, state = start_or_resume(cfg, data, run.device)
    if state["epoch"] >= cfg["epochs"]:
        print0(f"{out_dir}: finished already")
        return out_dir / "best"
    forward = model.compiled() if cfg["compile"] else model
    if run.world > 1:
        forward = data_parallel(forward)
    no_sync = forward.no_sync if run.world > 1 else nullcontext
    decode_step = model.compiled_step() if cfg["compile"] else None
    if run.rank == 0:
        out_dir.mkdir(parents=True, exist_ok=True)
    train, B = data["train"], cfg["batch_size"]
    steps_per_epoch, steps_run = math.ceil(len(train) / B), 0
    total_steps = steps_per_epoch * (cfg["epochs"] - cfg["start_epoch"])  # of the phase: the cosine schedule's length
    print0(f"{cfg['method']} on {cfg['dataset']}: {len(train)} training sequences, {steps_per_epoch} steps per epoch "
           f"of {B} sequences ({B // run.world} per process, in micro-batches of at most {cfg['micro_batch_size']}), "
           f"epochs {state['epoch']}..{cfg['epochs'] - 1}{f' from step {s}' if (s := state['step']) else ''}, "
           f"{sum(p.numel() for p in model.parameters() if p.requires_grad) / 1e6:.1f}M parameters trained")
    for epoch in range(state["epoch"], cfg["epochs"]):
        state["stage"] = stage = curriculum.stage(epoch)
        if state["step"] == 0 and resets_optimizer(cfg, curriculum, epoch):
            optimizer = make_optimizer(model, cfg, run.device)
        order = random.Random(f"{cfg['seed']}-{epoch}").sample(range(len(train)), len(train))
        # The epoch's totals: a run resumed within an epoch starts from those its checkpoint holds (all processes'
        # together, on rank 0), so that the epoch's line in metrics.jsonl is the uninterrupted run's.
        so_far = state.pop("epoch_so_far", None) or dict(loss=0.0, steps=0, tokens=0, sequences=0, seconds=0.0)
        if run.rank != 0:
            so_far = dict(so_far, loss=0.0, steps=0, tokens=0, sequences=0)
        t0, loss_sum = time.time() - so_far["seconds"], torch.tensor(so_far["loss"], device=run.device)
        n_steps, n_tokens, n_sequences = so_far["steps"], so_far["tokens"], so_far["sequences"]

        def share_of_totals():  # this process's share of the epoch's totals; n_steps counts each step once, on rank 0
            return loss_sum.item(), n_steps if run.rank == 0 else 0, n_tokens, n_sequences, time.time() - t0

        def share(step):  # this process's part of a step, built on the host while the device runs the step before
            examples, weights = step_sequences(train, order, curriculum, stage, cfg, epoch, step)
            mine = micro_batches(len(examples), run.rank, run.world, cfg["micro_batch_size"])
            seeds = [random.Random(f"{cfg['seed']}-{epoch}-{step}-{start}-dropout").getrandbits(63) for start, _ in mine]
            return prepare(examples, weights, mine, seeds)

        model.train()
        log_lines = cfg["log_every"] and not to_terminal()
        steps = range(state["step"], steps_per_epoch)
        for step, mine in zip(progress_bar(steps, f"epoch {epoch} stage {stage}"), prefetch(map(share, steps))):
            lr = learning_rate(cfg, (epoch - cfg["start_epoch"]) * steps_per_epoch + step, total_steps)
            loss, tokens = train_step(forward, no_sync, optimizer, mine, run, lr, cfg["grad_clip"])
            loss_sum, n_steps, n_tokens = loss_sum + loss, n_steps + 1, n_tokens + tokens
            if log_lines and (step + 1) % cfg["log_every"] == 0 and step + 1 < steps_per_epoch:  # a file, not a terminal: a line now and then
                # (the step's loss on one process; with N, this process's share times N, an estimate)
                print0(f"epoch {epoch} step {step + 1}/{steps_per_epoch}: loss {loss.item() * run.world:.4f}, "
                       f"{n_tokens * run.world / (time.time() - t0):,.0f} tokens/s")
            n_sequences += sum(len(batch.ids) for batch, _, _ in mine)
            steps_run += 1
            state["step"] = step + 1
            # After the epoch's last step comes its end (validation, `latest`), and a signal is looked at there.
            caught = preemption.agreed() if step + 1 < steps_per_epoch else 0
            if cfg["ckpt_every"] and steps_run % cfg["ckpt_every"] == 0 or steps_run == cfg["max_steps"] or caught:
                totals = [sum(x) for x in zip(*gather([share_of_totals()]))]
                state["epoch_so_far"] = dict(loss=totals[0], steps=totals[1], tokens=totals[2], sequences=totals[3],
                                             seconds=totals[4] / run.world)
                with on_every_rank():
                    if run.rank == 0:
                        save_checkpoint(out_dir, "latest", model, optimizer, cfg, state)
                if caught:
                    stop(caught, state)
                if steps_run == cfg["max_steps"]:
                    print0(f"stopped after {steps_run} steps (--max_steps); --resume continues")
                    return None
        end_of_epoch(cfg, model, optimizer, train, data["valid"], decode_step, state, share_of_totals(), run, trackers)
        if caught := preemption.agreed(wait=True):
            stop(caught, state)
    return out_dir / "best"


def stop(signum, state):
    """End the run after a signal, `latest` written: the exit status says which signal, as if it had killed."""
    print0(f"stopped by {signal.Signals(signum).name} at epoch {state['epoch']}, step {state['step']}, with `latest` "
           f"written: the same command (with --resume) continues the run")
    sys.exit(128 + signum)


class Trackers:
    """Where each line of metrics.jsonl goes too, from rank 0: a Weights & Biases run (--wandb PROJECT) and
    TensorBoard event files in out_dir/tensorboard (--tensorboard). Both packages are optional: asked for and absent,
    an error."""

    def __init__(self, cfg):
        self.wandb = self.tensorboard = None
        if cfg.get("wandb") or cfg.get("tensorboard"):
            Path(cfg["out_dir"]).mkdir(parents=True, exist_ok=True)
        if cfg.get("wandb"):
            try:
                import wandb
            except ImportError as e:
                raise ValueError("--wandb needs the wandb package: pip install wandb") from e
            # A run that stopped before its end left wandb-resume.json in out_dir/wandb: its restart continues it.
            self.wandb = wandb.init(project=cfg["wandb"], name=Path(cfg["out_dir"]).name, dir=cfg["out_dir"],
                                    config=cfg, resume="auto")
        if cfg.get("tensorboard"):
            try:
                from torch.utils.tensorboard import SummaryWriter
            except ImportError as e:
                raise ValueError("--tensorboard needs the tensorboard package: pip install tensorboard") from e
            self.tensorboard = SummaryWriter(Path(cfg["out_dir"]) / "tensorboard")

    def log(self, metrics, phase):
        """A line of metrics.jsonl, its keys under the phase's method (cot, then coconut, in a GSM8k run)."""
        values = {f"{phase}/{k}": v for k, v in metrics.items() if v is not None}
        if self.wandb:
            self.wandb.log(values)
        if self.tensorboard:
            for k, v in values.items():
                self.tensorboard.add_scalar(k, v, metrics["epoch"])
            self.tensorboard.flush()

    def finish(self):
        """At the run's end only: a W&B run left open (a stop, an error) is continued by the run's restart."""
        if self.wandb:
            self.wandb.finish()
        if self.tensorboard:
            self.tensorboard.close()


def main(argv=None):
    args = parse_args(argv)
    with one_line_errors():
        run = setup(args.device, args.dtype)
        with Preemption() as preemption:
            with on_every_rank():  # a rank that cannot read its data stops the others too
                cfg = resolve_config(args, run.world)
                started = any(Path(cfg["out_dir"]).glob("**/latest"))  # each phase of a run has a latest
                if started and not cfg["resume"]:
                    raise ValueError(f"{cfg['out_dir']} holds a run already: pass --resume to continue it, or another --out_dir")
                print0(f"{'continuing the run' if started else 'starting a run'} in {cfg['out_dir']}: device {run.device}, "
                       f"{run.world} process(es), {'bf16 autocast' if isinstance(run.autocast, torch.autocast) else 'float32'}")
                trackers = Trackers(cfg if run.rank == 0 else {})
                split_sizes = {"train": cfg["train_examples"], "valid": cfg["val_examples"], "test": cfg["test_examples"]}
                records = {split: load_dataset(cfg["dataset"], split, cfg.get("data_dir"), cfg.get("cache_dir"))[:n]
                           for split, n in split_sizes.items()}
                fmt = curriculum_of(cfg).fmt  # the method's, or the recipe's (reachability: symbols)
                tokenized, kept = tokenize(records["train"], max_latents=cfg["max_latent_stage"] * cfg["c_thought"],
                                           method=cfg["method"], fmt=fmt)
                data = dict(train=tokenized, valid=records["valid"],
                            vocabulary=vocabulary(records.values(), cfg["method"], fmt)
                            if cfg["init_from"] == "scratch" else None)
            if len(kept) < len(records["train"]):
                print0(f"skipped {len(records['train']) - len(kept)} training records longer than the context")
            if cfg["cot_epochs"]:
                cot = dict(cfg, method="cot", epochs=cfg["cot_epochs"], start_epoch=0, out_dir=str(Path(cfg["out_dir"]) / "cot"),
                           format=fmt)  # written as the method writes (CODI: "The answer is")
                best_cot = train_phase(cot, data, run, preemption, trackers)
                if best_cot is None:
                    return
                cfg = dict(cfg, init_from=str(best_cot), out_dir=str(Path(cfg["out_dir"]) / cfg["method"]))
            best = train_phase(cfg, data, run, preemption, trackers)
        if best is None:
            return
        test(cfg, best, records["test"], run)
        trackers.finish()


def test(cfg, best, records, run):
    """The best checkpoint (else the latest) on the test split: test.json, and a line."""
    if not best.exists():
        print0("no epoch reached the final stage: testing the latest checkpoint instead of the best")
        best = best.parent / "latest"
    saved, state = load_state(best)
    curriculum = curriculum_of(saved)
    model = build_model(saved, load_gpt(best).to(run.device), best)
    results = evaluate(model, records, curriculum, state["stage"], cfg["max_new_tokens"], cfg["eval_batch_size"],
                       device=run.device, autocast=run.autocast, progress=True)
    with on_every_rank():
        if run.rank == 0:
            (Path(cfg["out_dir"]) / "test.json").write_text(json.dumps(results, indent=1) + "\n")
    print0(f"test accuracy {results['accuracy']:.4f} ({results['n']} examples, best checkpoint of epoch "
           f"{state['epoch'] - 1}, stage {state['stage']}), mean tokens {results['mean_tokens']:.1f}")


if __name__ == "__main__":
    main()
