"""
Curriculum training of Coconut and the paper's baselines (SPEC §4, §5) on a CPU, one GPU, or many.

    python train.py                                  # offline demo: a tiny GPT from scratch on synthetic
                                                     # ProsQA-style questions, every stage, minutes on a CPU
    python train.py --dataset prosqa                 # the paper's ProsQA recipe on GPT-2
    python train.py --dataset gsm8k                  # CoT phase, then Coconut from its best epoch
    python train.py --dataset prosqa --method cot    # any method of SPEC §4
    torchrun --nproc_per_node=8 train.py --dataset gsm8k
    python train.py --dataset prosqa --resume        # continue the run in --out_dir exactly

A run writes into --out_dir: metrics.jsonl (a line per epoch), the checkpoints `latest` and `best` (by
validation accuracy at the final stage), and test.json (the best checkpoint on the test split). A
checkpoint is a directory: model.safetensors and model.json (the GPT), run.json (this run's whole
config), state.json (where the curriculum stands) and optimizer.pt. Everything random in a run (data
order, stage mixing, dropout) is a function of (seed, epoch, step), so that position resumes it exactly.
"""
import argparse
import dataclasses
import json
import math
import os
import random
import shutil
import time
from pathlib import Path

import torch
import torch.distributed as dist

from coconut import Coconut, load_gpt
from data import Curriculum, METHODS, collate, load_dataset, tokenize
from eval import evaluate, gather, one_line_errors, print0, progress_bar, setup

# The paper's recipes (SPEC §5), and the offline demo. Any value can be overridden by the flag of that name.
DEFAULTS = dict(
    method="coconut", init_from="gpt2", new_token_init="copy", dropout=0.1,
    lr=1e-4, weight_decay=0.01, beta1=0.9, beta2=0.999,
    batch_size=128,          # sequences per optimizer step: 32 per GPU x 4 GPUs in the paper
    micro_batch_size=32,     # sequences per forward; its loss is the mean over its tokens, as the authors'
    reset_optimizer="epoch",  # the authors' code re-creates AdamW every epoch (the paper says every stage)
    pad_latent_to_max=True, uniform_prob=0.0, icot_tokens_per_stage=8, start_epoch=0, cot_epochs=0,
    eval_batch_size=64, train_examples=None, val_examples=None,
)
PRESETS = {
    "gsm8k": dict(c_thought=2, max_latent_stage=3, epochs_per_stage=3, epochs=25, max_new_tokens=64,
                  cot_epochs=25,   # first plain CoT; the method starts from its best epoch (the authors: epoch 6)
                  start_epoch=3),  # ... at epoch 3, so that 3 epochs per stage give stage 1 right away
    "prontoqa": dict(c_thought=1, max_latent_stage=6, epochs_per_stage=5, epochs=50, max_new_tokens=128),
    "prosqa": dict(c_thought=1, max_latent_stage=6, epochs_per_stage=5, epochs=50, max_new_tokens=128),
    # A tiny GPT from scratch on 3-hop questions from data.ontology(): through every stage on a 2-core CPU.
    "synthetic": dict(init_from="scratch", n_layer=2, n_head=4, n_embd=128, dropout=0.0, lr=2e-3,
                      c_thought=1, max_latent_stage=3, epochs_per_stage=2, epochs=10, max_new_tokens=32,
                      batch_size=16, micro_batch_size=16),
}
CURRICULUM_FIELDS = [f.name for f in dataclasses.fields(Curriculum)]


def parse_args(argv=None):
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0].strip(),
                                formatter_class=argparse.RawDescriptionHelpFormatter, epilog=__doc__.split("\n\n", 1)[1])
    a = p.add_argument
    a("--dataset", default="synthetic", choices=PRESETS, help="dataset, and with it the paper's recipe (default: the offline demo)")
    a("--data_dir", help="read the dataset's files from this folder instead of downloading them")
    a("--cache_dir", help="where downloaded datasets are kept (default $COCONUT_DATA_DIR or ~/.cache/coconut)")
    a("--method", choices=METHODS, help="coconut, or a baseline or ablation of the paper's Table 1")
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
    a("--uniform_prob", type=float, help="probability that a record trains at a random stage (stage mixing)")
    a("--icot_tokens_per_stage", type=int, help="icot: leading CoT tokens removed per stage")
    a("--lr", type=float, help="AdamW learning rate, constant")
    a("--weight_decay", type=float, help="AdamW weight decay, on every parameter")
    a("--beta1", type=float, help="AdamW beta1")
    a("--beta2", type=float, help="AdamW beta2")
    a("--batch_size", type=int, help="sequences per optimizer step, over all processes")
    a("--micro_batch_size", type=int, help="sequences per forward pass; gradients accumulate up to batch_size")
    a("--reset_optimizer", choices=("epoch", "stage", "never"), help="re-create AdamW every epoch (the authors' code), every stage (the paper), or never")
    a("--max_new_tokens", type=int, help="greedy decoding budget in evaluation")
    a("--eval_batch_size", type=int, help="prompts per generation batch")
    a("--train_examples", type=int, help="train on the first N records only")
    a("--val_examples", type=int, help="validate on the first N records only")
    a("--seed", type=int, default=0, help="seed of data order, stage mixing, dropout and initialisation")
    a("--out_dir", help="where checkpoints and metrics go (default out/<dataset>-<method>)")
    a("--resume", action="store_true", help="continue the run in --out_dir from its latest checkpoint")
    a("--ckpt_every", type=int, default=0, help="also checkpoint every N optimizer steps (0: at epoch ends only)")
    a("--max_steps", type=int, default=0, help="stop after N optimizer steps of this invocation (0: no limit)")
    a("--device", default="auto", help="auto, cpu, cuda, cuda:1, ...")
    a("--dtype", default="auto", choices=("auto", "float32", "bfloat16"), help="auto: bf16 autocast where the GPU supports it, else float32")
    a("--compile", action="store_true", help="torch.compile the model for training and the decode step for evaluation")
    return p.parse_args(argv)


def parse_bool(s):
    if s.lower() not in ("true", "false", "1", "0"):
        raise argparse.ArgumentTypeError(f"expected true or false, got {s!r}")
    return s.lower() in ("true", "1")


def resolve_config(args):
    """DEFAULTS, then the dataset's preset, then the flags given: the run's whole config, as a dict."""
    given = {k: v for k, v in vars(args).items() if v is not None}
    cfg = {**DEFAULTS, **PRESETS[args.dataset], **given}
    cfg.setdefault("out_dir", f"out/{cfg['dataset']}-{cfg['method']}")
    if cfg["method"] in ("cot", "no_cot"):
        cfg["cot_epochs"] = 0  # already CoT, or no use for it
    for key in ("epochs", "batch_size", "micro_batch_size", "epochs_per_stage", "eval_batch_size", "max_new_tokens"):
        if cfg[key] < 1:
            raise ValueError(f"--{key} must be at least 1, got {cfg[key]}")
    if not 0 <= cfg["uniform_prob"] <= 1:
        raise ValueError(f"--uniform_prob must be within [0, 1], got {cfg['uniform_prob']}")
    if cfg["batch_size"] % cfg["micro_batch_size"]:
        raise ValueError(f"--batch_size {cfg['batch_size']} is not a multiple of --micro_batch_size {cfg['micro_batch_size']}")
    return cfg


# -----------------------------------------------------------------------------------------------------------
# Checkpoints: directories written under a temporary name, then published by atomically re-pointing a link

def save_checkpoint(out_dir, name, gpt, optimizer, cfg, state):
    """Write a checkpoint and point out_dir/<name> at it; a crash at any moment leaves the old one valid."""
    out_dir = Path(out_dir)
    target = f"ckpt-{state['epoch']:03d}-{state['step']:06d}"
    if not (out_dir / target).is_dir():
        tmp = out_dir / f".{target}.tmp"
        shutil.rmtree(tmp, ignore_errors=True)
        tmp.mkdir(parents=True)
        gpt.save(tmp)
        torch.save(optimizer.state_dict(), tmp / "optimizer.pt")
        (tmp / "run.json").write_text(json.dumps(cfg, indent=2) + "\n")
        (tmp / "state.json").write_text(json.dumps(state, indent=2) + "\n")
        os.replace(tmp, out_dir / target)
    link = out_dir / f".{name}.tmp"
    link.unlink(missing_ok=True)
    link.symlink_to(target)
    os.replace(link, out_dir / name)  # atomic: `name` is the old checkpoint or the new one, never half of one
    referenced = {os.readlink(out_dir / n) for n in ("latest", "best") if (out_dir / n).is_symlink()}
    for old in out_dir.glob("ckpt-*"):
        if old.name not in referenced:
            shutil.rmtree(old)


def load_state(path):
    """run.json and state.json of a checkpoint, with one clear error if they are missing or broken."""
    try:
        return json.loads((path / "run.json").read_text()), json.loads((path / "state.json").read_text())
    except (OSError, ValueError) as e:
        raise ValueError(f"{path}: not a readable checkpoint ({e})") from e


# -----------------------------------------------------------------------------------------------------------
# Training

def make_optimizer(params, cfg, device):
    return torch.optim.AdamW(params, lr=cfg["lr"], weight_decay=cfg["weight_decay"], betas=(cfg["beta1"], cfg["beta2"]),
                             fused=device.type == "cuda")


def resets_optimizer(cfg, curriculum, epoch):
    """Whether AdamW starts afresh at this epoch: every epoch, at each change of stage, or never."""
    if epoch == cfg["start_epoch"] or cfg["reset_optimizer"] == "never":
        return False
    return cfg["reset_optimizer"] == "epoch" or curriculum.stage(epoch) != curriculum.stage(epoch - 1)


def train_phase(cfg, data, device, autocast, rank, world):
    """Train one method through its curriculum; returns the directory of its best checkpoint."""
    out_dir = Path(cfg["out_dir"])
    curriculum = Curriculum(**{k: cfg[k] for k in CURRICULUM_FIELDS if k in cfg})
    latest = out_dir / "latest"
    if latest.exists():
        _, state = load_state(latest)
        if not cfg["resume"]:
            raise ValueError(f"{out_dir} holds a run already: pass --resume to continue it, or another --out_dir")
        if state["epoch"] >= cfg["epochs"]:
            print0(f"{out_dir}: finished already")
            return out_dir / "best"
        gpt = load_gpt(latest, dropout=cfg["dropout"])
    else:
        state = dict(epoch=cfg["start_epoch"], step=0, stage=curriculum.stage(cfg["start_epoch"]), best_accuracy=None)
        torch.manual_seed(cfg["seed"])  # the initialisation of a model from scratch
        gpt = load_gpt(cfg["init_from"], cfg["new_token_init"], cfg["dropout"],
                       **{k: cfg[k] for k in ("n_layer", "n_head", "n_embd") if cfg["init_from"] == "scratch"})
    gpt.to(device)
    if cfg["compile"]:
        gpt.compile_blocks()
    model = Coconut(gpt, feedback=curriculum.feedback)
    decode_step = model.compiled_step() if cfg["compile"] else None
    optimizer = make_optimizer(gpt.parameters(), cfg, device)
    if latest.exists():
        optimizer.load_state_dict(torch.load(latest / "optimizer.pt", map_location=device, weights_only=True))
    if rank == 0:
        out_dir.mkdir(parents=True, exist_ok=True)
    train, valid = data["train"], data["valid"]
    n_micro = cfg["batch_size"] // cfg["micro_batch_size"]
    if world > n_micro:
        print0(f"warning: {world} processes but {n_micro} micro-batches per step: lower --micro_batch_size")
    steps_per_epoch = math.ceil(len(train) / cfg["batch_size"])
    steps_run = 0
    print0(f"{cfg['method']} on {cfg['dataset']}: {len(train)} training sequences, {steps_per_epoch} steps per epoch, "
           f"epochs {state['epoch']}..{cfg['epochs'] - 1}, {sum(p.numel() for p in gpt.parameters()) / 1e6:.1f}M parameters")

    for epoch in range(state["epoch"], cfg["epochs"]):
        stage = curriculum.stage(epoch)
        if state["step"] == 0 and resets_optimizer(cfg, curriculum, epoch):
            optimizer = make_optimizer(gpt.parameters(), cfg, device)
        order = random.Random(f"{cfg['seed']}-{epoch}").sample(range(len(train)), len(train))
        t0, loss_sum, n_micro_done, n_tokens, n_sequences = time.time(), torch.zeros((), device=device), 0, 0, 0
        model.train()
        for step in progress_bar(range(state["step"], steps_per_epoch), f"epoch {epoch} stage {stage}"):
            ids = order[step * cfg["batch_size"]:(step + 1) * cfg["batch_size"]]
            micro_batches = [ids[i:i + cfg["micro_batch_size"]] for i in range(0, len(ids), cfg["micro_batch_size"])]
            for m, micro in enumerate(micro_batches):
                if m % world != rank:
                    continue  # each process takes every world-th micro-batch of the step
                rng = random.Random(f"{cfg['seed']}-{epoch}-{step}-{m}")
                batch = collate([curriculum.example(train[i], stage, rng) for i in micro])
                n_tokens, n_sequences = n_tokens + int(batch.mask.sum()), n_sequences + len(micro)
                torch.manual_seed(rng.getrandbits(63))  # dropout masks, whatever the number of processes
                with autocast:
                    loss = model(batch.to(device)).mean()
                (loss / len(micro_batches)).backward()  # the mean over micro-batches of their token means
                loss_sum, n_micro_done = loss_sum + loss.detach(), n_micro_done + 1
            for p in gpt.parameters():  # sum over processes: each holds the gradients of its micro-batches
                if p.grad is None:
                    p.grad = torch.zeros_like(p)
                if world > 1:
                    dist.all_reduce(p.grad)
            optimizer.step()
            optimizer.zero_grad(set_to_none=True)
            steps_run += 1
            state.update(step=step + 1, stage=stage)
            if cfg["ckpt_every"] and steps_run % cfg["ckpt_every"] == 0 or steps_run == cfg["max_steps"]:
                if rank == 0:
                    save_checkpoint(out_dir, "latest", gpt, optimizer, cfg, state)
                if steps_run == cfg["max_steps"]:
                    print0(f"stopped after {steps_run} steps (--max_steps); --resume continues")
                    return None
        seconds = time.time() - t0
        loss_sum, n_micro_done, n_tokens, n_sequences = (sum(x) for x in zip(*gather([(loss_sum.item(), n_micro_done, n_tokens, n_sequences)])))
        results = evaluate(model, valid, curriculum, stage, cfg["max_new_tokens"], cfg["eval_batch_size"],
                           with_loss=True, step=decode_step, device=device, autocast=autocast, progress=True)
        metrics = dict(epoch=epoch, stage=stage, train_loss=loss_sum / max(n_micro_done, 1),
                       val_loss=results["loss"], val_accuracy=results["accuracy"], val_mean_tokens=results["mean_tokens"],
                       seconds=round(seconds, 1), tokens_per_second=round(n_tokens / seconds))
        if device.type == "cuda":  # model FLOPs utilisation of the training steps, against the GPU's bf16 peak
            metrics["mfu"] = gpt.mfu(n_tokens / seconds / world, n_tokens / max(n_sequences, 1), device)
        state.update(epoch=epoch + 1, step=0, stage=stage)
        best_accuracy = state["best_accuracy"]
        improved = curriculum.is_final(stage) and (best_accuracy is None or results["accuracy"] > best_accuracy)
        if improved:
            state["best_accuracy"] = results["accuracy"]
        if rank == 0:
            with open(out_dir / "metrics.jsonl", "a") as f:
                f.write(json.dumps(metrics) + "\n")
            save_checkpoint(out_dir, "latest", gpt, optimizer, cfg, state)
            if improved:
                save_checkpoint(out_dir, "best", gpt, optimizer, cfg, state)
        print0(" | ".join(f"{k} {v:.4f}" if isinstance(v, float) else f"{k} {v}" for k, v in metrics.items()))
        if world > 1:
            dist.barrier()  # the checkpoint is written before any process may read it
    return out_dir / "best"


def main(argv=None):
    args = parse_args(argv)
    with one_line_errors():
        cfg = resolve_config(args)
        if cfg["resume"] and not any(Path(cfg["out_dir"]).glob("**/latest")):  # a run's phases each have a latest
            raise ValueError(f"--resume: no run in {cfg['out_dir']}")
        device, autocast, rank, world = setup(cfg["device"], cfg["dtype"])
        print0(f"device {device}, {world} process(es), {'bf16 autocast' if isinstance(autocast, torch.autocast) else 'float32'}")
        split_sizes = {"train": cfg["train_examples"], "valid": cfg["val_examples"], "test": None}
        records = {split: load_dataset(cfg["dataset"], split, cfg.get("data_dir"), cfg.get("cache_dir"))[:n]
                   for split, n in split_sizes.items()}
        tokenized, kept = tokenize(records["train"], max_latents=cfg["max_latent_stage"] * cfg["c_thought"])
        if len(kept) < len(records["train"]):
            print0(f"skipped {len(records['train']) - len(kept)} training records longer than the context")
        data = dict(train=tokenized, valid=records["valid"])
        if cfg["cot_epochs"]:
            cot = dict(cfg, method="cot", epochs=cfg["cot_epochs"], start_epoch=0, out_dir=str(Path(cfg["out_dir"]) / "cot"))
            best_cot = train_phase(cot, data, device, autocast, rank, world)
            if best_cot is None:
                return
            cfg = dict(cfg, init_from=str(best_cot), out_dir=str(Path(cfg["out_dir"]) / cfg["method"]))
        best = train_phase(cfg, data, device, autocast, rank, world)
        if best is None:
            return
        if not best.exists():
            print0("no epoch reached the final stage: testing the latest checkpoint instead of the best")
            best = best.parent / "latest"
        run, state = load_state(best)
        curriculum = Curriculum(**{k: run[k] for k in CURRICULUM_FIELDS})
        model = Coconut(load_gpt(best).to(device), feedback=curriculum.feedback)
        results = evaluate(model, records["test"], curriculum, state["stage"], cfg["max_new_tokens"], cfg["eval_batch_size"],
                           device=device, autocast=autocast, progress=True)
        if rank == 0:
            (Path(cfg["out_dir"]) / "test.json").write_text(json.dumps(results, indent=1) + "\n")
        print0(f"test accuracy {results['accuracy']:.4f} ({results['n']} examples, best checkpoint of epoch "
               f"{state['epoch'] - 1}, stage {state['stage']}), mean tokens {results['mean_tokens']:.1f}")


if __name__ == "__main__":
    main()
