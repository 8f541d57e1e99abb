"""CODI, PCCoT and SIM-CoT (codi.py, pccot.py, simcot.py) against their definitions, on real GSM8k-Aug records.

Each reference is naive and runs one row at a time, with no padding and no cache: every thought (and every
latent of every Jacobi iteration) recomputes the whole prefix; the losses are written from the papers' and the
authors' formulas (SmoothL1Loss over a batch divided by the teacher's standard deviation, per layer; a step's
summed cross-entropy), and compared with the fast code's in value and in every parameter's gradient.
"""
import copy

import pytest
import torch
import torch.nn.functional as F

import data
from codi import CODI
from coconut import Coconut
from data import Curriculum, collate, tokenize
from conftest import gpt_with_latent_tokens
from pccot import PCCoT, naive_latents
from simcot import SimCoT, naive_step_loss, without_latent_tokens


@pytest.fixture(scope="module")
def gpt(tiny_gpt2_dir):
    return gpt_with_latent_tokens(tiny_gpt2_dir)


@pytest.fixture(scope="module")
def records(fixtures):
    return data.load_dataset("gsm8k", "test", data_dir=fixtures / "gsm8k")[:6]


def check_gradients(model, fast, naive):
    """fast and naive: scalar losses of the same model. Their values, and every parameter's gradient, agree."""
    params = [p for p in model.parameters() if p.requires_grad]
    fast_grads = torch.autograd.grad(fast, params, allow_unused=True)
    naive_grads = torch.autograd.grad(naive, params, allow_unused=True)
    assert (fast - naive).abs() <= 1e-5 * naive.abs()
    for (name, _), f, n in zip(model.named_parameters(), fast_grads, naive_grads):
        assert (f is None) == (n is None), name
        if f is not None:
            assert (f - n).norm() <= 1e-4 * n.norm() + 1e-9, name


def naive_self_distillation(model, examples, thoughts_of, first_layer):
    """CODI's loss (and PCCoT's), from its definition: per row alone, its thoughts (thoughts_of), then one full pass
    of the student and one of the teacher, each giving every layer's state; then the batch's loss as the authors
    write it: student token mean + teacher token mean + mean over layers of SmoothL1Loss()/teacher.std()."""
    gpt = model.gpt
    student_ce, teacher_ce, s_states, t_states = [], [], [], []
    for e in examples:
        ids = torch.tensor([e.ids])
        embeds = gpt.embed(ids)
        thoughts = thoughts_of(ids, e)  # (1, n, C)
        embeds = torch.cat([embeds[:, :e.first_latent], thoughts, embeds[:, e.first_latent + e.n_latents:]], dim=1)
        h, states = gpt(embeds=embeds, layers=True)
        student_ce.append(F.cross_entropy(gpt.logits(h[0, e.label_start - 1:-1]), ids[0, e.label_start:], reduction="none"))
        s_states.append(torch.stack([s[0, e.distill[0]] for s in states]))
        t_ids = torch.tensor([e.teacher])
        th, states = gpt(t_ids, layers=True)
        teacher_ce.append(F.cross_entropy(gpt.logits(th[0, e.teacher_label_start - 1:-1]), t_ids[0, e.teacher_label_start:],
                                          reduction="none"))
        t_states.append(torch.stack([s[0, e.distill[1]] for s in states]).detach())
    s_states, t_states = torch.stack(s_states, 1), torch.stack(t_states, 1)  # (layers, B, C)
    distill = sum(torch.nn.SmoothL1Loss()(s[:, None], t[:, None]) / t.std()
                  for s, t in zip(s_states[first_layer:], t_states[first_layer:])) / (len(s_states) - first_layer)
    return torch.cat(student_ce).mean() + torch.cat(teacher_ce).mean() + distill


def sequential_thoughts(model):
    """Coconut's definition of the thoughts, with the method's projection: each recomputes the whole prefix."""
    def thoughts_of(ids, e):
        embeds = model.gpt.embed(ids)[:, :e.first_latent]
        for _ in range(e.n_latents):
            embeds = torch.cat([embeds, model.thought(model.gpt(embeds=embeds)[:, -1:])], dim=1)
        return embeds[:, e.first_latent:]
    return thoughts_of


def fast_total(losses, examples):
    """The fast per-item losses summed with the weights of one loss group: each term's mean over its items."""
    terms = [sum(e.terms[k] for e in examples) for k in range(len(examples[0].terms))]
    return sum(part.mean() for part in losses.split(terms))


def test_codi_loss_equals_its_definition(gpt, records):
    torch.manual_seed(1)
    model = CODI(copy.deepcopy(gpt))
    cur = Curriculum(method="codi", c_thought=1, max_latent_stage=6)
    examples = [cur.example(t, cur.final_stage) for t in tokenize(records, method="codi")[0]]
    batch = collate(examples)
    assert batch.max_latents == 6 and len(set(batch.starts.tolist())) > 1  # padded rows among them
    losses = model(batch)
    assert losses.shape == (batch.target_idx.numel() + batch.teacher.target_idx.numel() + len(examples),)
    check_gradients(model, fast_total(losses, examples), naive_self_distillation(model, examples, sequential_thoughts(model), 0))


@pytest.mark.parametrize("iterations", [1, 3])
def test_pccot_loss_equals_its_definition_and_its_latents_the_chain(gpt, records, iterations):
    model = PCCoT(copy.deepcopy(gpt), iterations=iterations)
    n = 6
    cur = Curriculum(method="pccot", c_thought=1, max_latent_stage=n)
    examples = [cur.example(t, cur.final_stage) for t in tokenize(records, method="pccot")[0]]
    batch = collate(examples)
    losses, fed = model(batch, return_thoughts=True)
    naive = lambda ids, e: naive_latents(model.gpt, ids, e.first_latent, e.n_latents, iterations)
    check_gradients(model, fast_total(losses, examples), naive_self_distillation(model, examples, naive, 1))
    # The latents fed to the T-th iteration: the first T are the sequential chain's, the others are not.
    with torch.no_grad():
        _, chain, _ = Coconut(model.gpt).hidden(batch)
        fed = fed.detach()
    assert torch.allclose(fed[:, :iterations], chain[:, :iterations], atol=1e-5)
    assert not torch.allclose(fed[:, iterations], chain[:, iterations], atol=1e-3)


def test_pccot_generates_as_it_trains(gpt, records):
    """Generation's Jacobi prefill gives the latents of the training loop, and the answer it reads."""
    model = PCCoT(copy.deepcopy(gpt), iterations=2).eval()
    cur = Curriculum(method="pccot", c_thought=1, max_latent_stage=5)
    tokenized = tokenize(records, method="pccot")[0]
    prompts = [cur.prompt(t, cur.final_stage) for t in tokenized]
    out = model.generate(collate(prompts, align_ends=True), max_new_tokens=4)
    with torch.no_grad():
        for i, p in enumerate(prompts):
            ids = torch.tensor([p.ids])
            fed = naive_latents(model.gpt, ids, p.first_latent, p.n_latents, 2)
            assert torch.allclose(out.thoughts[i], fed[0], atol=1e-5)
            embeds = model.gpt.embed(ids)
            embeds = torch.cat([embeds[:, :p.first_latent], fed, embeds[:, p.first_latent + p.n_latents:]], dim=1)
            first = model.gpt.logits(model.gpt(embeds=embeds)[0, -1]).argmax().item()
            assert out.tokens[i][0] == first
            assert out.n_tokens[i] == 5 + len(out.tokens[i]) - (out.tokens[i][-1] == data.EOS)


def test_simcot_loss_equals_its_definition(gpt, records):
    torch.manual_seed(2)
    model = SimCoT(copy.deepcopy(gpt), without_latent_tokens(gpt))
    cur = Curriculum(method="simcot", c_thought=2, max_latent_stage=3)
    tokenized = tokenize(records, method="simcot")[0]
    # Stages 1, 2, 3 and the final one, a CoT row: steps merged into the last group, and "### X" for missing ones
    examples = [cur.example(t, s) for t, s in zip(tokenized, [1, 4, 3, 0, 2, 4])]
    assert any(data.NEWLINE in t for e in examples for t in e.step_targets)
    batch = collate(examples)
    losses = model(batch)
    naive_tokens, naive_steps = [], []
    for e in examples:
        thoughts = sequential_thoughts(model)(torch.tensor([e.ids]), e)
        embeds = model.gpt.embed(torch.tensor([e.ids]))
        embeds = torch.cat([embeds[:, :e.first_latent], thoughts, embeds[:, e.first_latent + e.n_latents:]], dim=1)
        h = model.gpt(embeds=embeds)
        naive_tokens.append(F.cross_entropy(model.gpt.logits(h[0, e.label_start - 1:-1]), torch.tensor(e.ids[e.label_start:]),
                                            reduction="none"))
        naive_steps += [naive_step_loss(model.decoder, model.gpt, thoughts[:, 2 * g:2 * g + 2], target)
                        for g, target in enumerate(e.step_targets)]
    naive = torch.cat(naive_tokens).mean() + torch.stack(naive_steps).mean()
    check_gradients(model, fast_total(losses, examples), naive)


def released_step_targets(steps_tokenized, after_eot, stage, max_latent_stage, groups_of_row):
    """SIM-CoT's step targets as the authors' code builds them (InternLM/SIM-CoT, Coconut/dataset.py
    get_cot_with_explainable_latent_dataset, and Coconut/coconut.py CoconutGPT_Same_Word_Embedding.forward), written
    out for one row: the removed steps' tokens ("\\n" included), scanned for "<<" ... ">>" spans; fewer than
    max_latent_stage spans padded to the row's groups with what follows <eot> (up to EOS); the spans from the
    max_latent_stage-th on merged, "\\n" between them; EOS after each."""
    start, end = data.encode("<<")[0], data.encode(">>")[0]
    n_skip_steps = 10000 if stage > max_latent_stage else stage
    flat = [t for step in steps_tokenized[:n_skip_steps] for t in step]
    groups, i = [], 0
    while i < len(flat):
        if flat[i] == start:
            group = [start]
            i += 1
            while i < len(flat):
                group.append(flat[i])
                if flat[i] == end:
                    break
                i += 1
            groups.append(group)
        else:
            i += 1
    if len(groups) < max_latent_stage and after_eot:
        while len(groups) < groups_of_row:
            groups.append(after_eot)
    united, combined = [], []
    for count, group in enumerate(groups, 1):
        if count <= max_latent_stage - 1:
            united.append(group + [data.EOS])
        else:
            if combined and combined[-1] == end and group[0] == start:
                combined.append(data.NEWLINE)
            combined.extend(group)
    if combined:
        united.append(combined + [data.EOS])
    return united


@pytest.mark.parametrize("max_latent_stage, pad", [(2, True), (3, True), (3, False)])
def test_simcot_step_targets_are_the_released_codes(fixtures, max_latent_stage, pad):
    """At every stage, records with more steps than max_latent_stage among them (whose last group writes one step
    at stage max_latent_stage, and the rest merged only at the final stage), and records without steps."""
    records = data.load_dataset("gsm8k", "test", data_dir=fixtures / "gsm8k")
    cur = Curriculum(method="simcot", c_thought=2, max_latent_stage=max_latent_stage, pad_latent_to_max=pad)
    tokenized = tokenize(records, method="simcot")[0]
    assert any(len(t.steps) > max_latent_stage + 1 for t in tokenized) and any(t.step_ids == [[]] for t in tokenized)
    for t in tokenized:
        for stage in range(cur.final_stage + 2):
            e = cur.example(t, stage)
            after_eot = e.ids[e.label_start:-1]  # what follows <eot>, up to EOS
            assert e.step_targets == released_step_targets(t.steps, after_eot, stage, max_latent_stage,
                                                           e.n_latents // cur.c_thought), (t.steps, stage)


def test_simcot_step_decoder_is_gpt2s_vocabulary_without_dropout(gpt, records):
    """The decoder has GPT-2's rows only (none for the latent tokens), for GPT-2 and for a vocabulary of its own,
    and stays in eval mode while the model trains: with dropout in the GPT, its step losses do not vary."""
    decoder = without_latent_tokens(gpt)
    assert decoder.config.vocab_size == data.EOS + 1
    assert torch.equal(decoder.transformer.wte.weight, gpt.transformer.wte.weight[:data.EOS + 1])
    from coconut import load_gpt
    scratch = load_gpt("scratch", tokens=[5, 9, data.EOS, data.BOT, data.EOT, data.LATENT], n_layer=1, n_head=2, n_embd=8)
    small = without_latent_tokens(scratch)
    assert small.config.tokens == [5, 9, data.EOS] and torch.equal(small.transformer.wte.weight,
                                                                    scratch.transformer.wte.weight[:3])
    noisy = copy.deepcopy(gpt)
    for m in noisy.modules():
        if isinstance(m, torch.nn.Dropout):
            m.p = 0.5
    model = SimCoT(noisy, without_latent_tokens(gpt)).train()
    decoder_noisy = copy.deepcopy(model.decoder)
    for m in decoder_noisy.modules():
        if isinstance(m, torch.nn.Dropout):
            m.p = 0.5
    model.decoder = decoder_noisy
    model.train()
    assert model.gpt.training and not any(m.training for m in model.decoder.modules())
    cur = Curriculum(method="simcot", c_thought=2, max_latent_stage=3)
    batch = collate([cur.example(t, 4) for t in tokenize(records, method="simcot")[0]])
    with torch.no_grad():
        thoughts = model(batch, return_thoughts=True)[1]
        assert torch.equal(model.step_losses(thoughts, batch.steps), model.step_losses(thoughts, batch.steps))


def test_simcot_checkpoint_of_another_decoder_is_one_line(tmp_path, gpt):
    """A checkpoint whose step decoder has other shapes (one with the latent tokens' rows) is refused in one line."""
    SimCoT(copy.deepcopy(gpt), copy.deepcopy(gpt)).save(tmp_path)
    with pytest.raises(ValueError, match=r"extras.safetensors: decoder.transformer.wte.weight has shape \(50260, 32\)"):
        SimCoT(copy.deepcopy(gpt), without_latent_tokens(gpt)).load_extras(tmp_path)


def test_codi_leaves_eot_out_of_the_greedy_choice(gpt):
    """CODI's generation, as the authors' test.py: the argmax over every row but <eot>'s (Coconut's: over all)."""
    torch.manual_seed(0)
    h = torch.randn(3, gpt.config.n_embd)
    boosted = copy.deepcopy(gpt)
    with torch.no_grad():
        boosted.transformer.wte.weight[data.EOT] = 10 * h[0] / h[0].norm()
    logits = boosted.logits(h)
    assert Coconut(boosted).greedy(h)[0] == data.EOT
    without = torch.cat([logits[:, :data.EOT], logits[:, data.EOT + 1:]], dim=1).argmax(-1)
    expected = without + (without >= data.EOT).long()
    assert torch.equal(CODI(boosted).greedy(h), expected) and data.EOT not in CODI(boosted).greedy(h).tolist()


# -----------------------------------------------------------------------------------------------------------
# Through train.py and eval.py: training, generation, evaluation, checkpoints, resume, presets

TINY = ["--dataset", "prosqa", "--init_from", "scratch", "--n_layer", "2", "--n_head", "2", "--n_embd", "32",
        "--max_latent_stage", "2", "--epochs_per_stage", "1", "--lr", "3e-3", "--max_new_tokens", "8",
        "--device", "cpu", "--dtype", "float32", "--batch_size", "4", "--micro_batch_size", "2", "--val_examples", "2"]


def run(script, *args):
    import subprocess
    import sys
    from pathlib import Path
    return subprocess.run([sys.executable, script, *args], cwd=Path(__file__).resolve().parents[1], capture_output=True,
                          text=True, timeout=300)


# SIM-CoT (its step decoder in the checkpoint), with a cosine schedule, warm-up, clipping and stage mixing; 4 epochs
# reach its final stage (3). Run once: the end-to-end test and the resume test both read it.
SIMCOT = [*TINY, "--epochs", "4", "--method", "simcot", "--lr_schedule", "cosine", "--warmup", "0.2", "--grad_clip", "0.5",
          "--uniform_prob", "0.5"]


@pytest.fixture(scope="module")
def simcot_run(tmp_path_factory, data_dir):
    out = tmp_path_factory.mktemp("simcot") / "full"
    trained = run("train.py", *SIMCOT, "--data_dir", str(data_dir), "--out_dir", str(out))
    assert trained.returncode == 0, trained.stderr
    return out


@pytest.mark.parametrize("method", ["codi", "pccot", "simcot"])
def test_each_method_trains_generates_and_evaluates(tmp_path, data_dir, method, request):
    import json
    if method == "simcot":
        out = request.getfixturevalue("simcot_run")
    else:
        # CODI with LoRA (its adapters in the checkpoint too); PCCoT after a CoT phase written as PCCoT writes
        extra = ["--lora_r", "4", "--lr", "3e-2"] if method == "codi" else ["--cot_epochs", "1"]
        trained = run("train.py", *TINY, "--data_dir", str(data_dir), "--epochs", "2", "--method", method, *extra,
                      "--out_dir", str(tmp_path / method))
        assert trained.returncode == 0, trained.stderr
        out = tmp_path / method / (method if method == "pccot" else "")
    metrics = [json.loads(line) for line in (out / "metrics.jsonl").read_text().splitlines()]
    if method != "simcot":  # (whose stages each add a loss: a decoded step's summed cross-entropy)
        assert metrics[-1]["train_loss"] < metrics[0]["train_loss"]
    test = json.loads((out / "test.json").read_text())
    for e in test["examples"]:  # 2 thoughts (max_latent_stage 2) at the final stage, then the answer
        assert e["n_tokens"] == 2 + len([t for t in e["generated_ids"] if t != data.EOS])
    # eval.py reads the checkpoint back, what the method adds included (CODI's projection): the same outputs
    evaluated = run("eval.py", "--ckpt", str(out / "best"), "--data_dir", str(data_dir), "--device", "cpu",
                    "--out", str(tmp_path / "eval.json"))
    assert evaluated.returncode == 0, evaluated.stderr
    again = json.loads((tmp_path / "eval.json").read_text())
    assert [e["generated_ids"] for e in again["examples"]] == [e["generated_ids"] for e in test["examples"]]


def test_stopped_and_resumed_equals_uninterrupted(tmp_path, data_dir, simcot_run):
    """SIM-CoT (its step decoder in the checkpoint) with a cosine schedule, warm-up and clipping: stopped after a
    step mid-epoch and resumed, it ends with bit-identical weights."""
    from safetensors.torch import load_file
    args = [*SIMCOT, "--data_dir", str(data_dir), "--out_dir", str(tmp_path / "resumed")]
    stopped = run("train.py", *args, "--max_steps", "4")
    assert stopped.returncode == 0, stopped.stderr
    resumed = run("train.py", *args, "--resume")
    assert resumed.returncode == 0, resumed.stderr
    for file in ("model.safetensors", "extras.safetensors"):  # the GPT, and the step decoder
        a, b = (load_file(d / "latest" / file) for d in (simcot_run, tmp_path / "resumed"))
        assert all(torch.equal(a[k], b[k]) for k in a), file


def test_learning_rate_schedule():
    """Hugging Face's get_cosine_schedule_with_warmup, written out: 0 at the first step, the peak after the warm-up."""
    import train
    cfg = dict(lr=1.0, lr_schedule="cosine", warmup=0.03)
    lrs = [train.learning_rate(cfg, s, 100) for s in range(100)]
    assert lrs[0] == 0 and lrs[1] == pytest.approx(1 / 3) and lrs[3] == 1.0
    assert lrs[3 + 97 // 2] == pytest.approx(0.5 * (1 + torch.cos(torch.tensor(torch.pi * 48 / 97)).item()))
    assert all(a >= b for a, b in zip(lrs[3:], lrs[4:]))
    assert train.learning_rate(dict(cfg, lr_schedule="constant"), 5, 100) == 1.0


@pytest.mark.parametrize("method, latents", [("codi", 6), ("pccot", 24), ("simcot", 10)])
def test_gsm8k_presets_load_and_train(tmp_path, tiny_gpt2_dir, fixtures, method, latents):
    """The GSM8k recipes of the papers: their config, and a step of each on a tiny GPT-2 and real records."""
    import train
    from recipes import curriculum
    cfg = train.resolve_config(train.parse_args(["--dataset", "gsm8k", "--method", method]))
    assert cfg["max_latent_stage"] * cfg["c_thought"] == latents
    if method != "simcot":
        assert (cfg["lr"], cfg["lr_schedule"], cfg["warmup"], cfg["epochs"], cfg["cot_epochs"]) == (3e-3, "cosine", 0.03, 40, 0)
        assert curriculum(cfg).stage(0) == curriculum(cfg).final_stage
    data_dir = tmp_path / "gsm8k"
    data_dir.mkdir()
    lines = (fixtures / "gsm8k" / "test.txt").read_text().splitlines()
    for split, part in (("train", lines[:4]), ("valid", lines[4:6]), ("test", lines[6:8])):
        (data_dir / f"{split}.txt").write_text("\n".join(part) + "\n")
    result = run("train.py", "--dataset", "gsm8k", "--method", method, "--init_from", str(tiny_gpt2_dir),
                 *(["--step_decoder_init", str(tiny_gpt2_dir)] if method == "simcot" else []), "--cot_epochs", "0",
                 "--data_dir", str(data_dir),
                 "--batch_size", "4", "--micro_batch_size", "2", "--loss_group", "2", "--max_steps", "1",
                 "--device", "cpu", "--out_dir", str(tmp_path / "out"))
    assert result.returncode == 0, result.stderr
    assert "stopped after 1 steps" in result.stdout


def test_lora_trains_only_its_adapters_and_the_token_rows(gpt, records):
    """LoRA as peft computes it: W x + b + (alpha / r) B A x, starting as the model itself; the frozen weights get no
    gradient, the adapters and the rows of the latent tokens do, and no other row of the embedding."""
    import lora
    from methods import build_model
    model = build_model(dict(method="pccot", pccot_iterations=2, lora_r=4, lora_alpha=8, lora_dropout=0.0,
                             lora_token_rows=True), copy.deepcopy(gpt))
    cur = Curriculum(method="pccot", c_thought=1, max_latent_stage=3)
    batch = collate([cur.example(t, cur.final_stage) for t in tokenize(records[:3], method="pccot")[0]])
    with torch.no_grad():
        assert torch.equal(model(batch), PCCoT(gpt, 2)(batch))  # B = 0: the model itself
        for adapter in model.lora.values():
            adapter.B.normal_()
    linear = model.gpt.transformer.h[0].mlp.c_fc
    x = torch.randn(3, linear.in_features)
    adapter = model.lora["h0_mlp_c_fc"]
    assert torch.allclose(linear(x), x @ linear.weight.t() + linear.bias + 2.0 * x @ adapter.A.t() @ adapter.B.t(), atol=1e-5)
    model(batch).sum().backward()
    trained = {name for name, p in model.named_parameters() if p.grad is not None}
    assert trained == {f"lora.{k}.{ab}" for k in model.lora for ab in "AB"} | {"gpt.transformer.wte.weight"}
    rows = model.gpt.transformer.wte.weight.grad.abs().sum(-1).nonzero().flatten().tolist()
    assert set(rows) <= {data.BOT, data.EOT, data.LATENT, data.EOS} and data.LATENT in rows
    assert len(lora.TARGETS) * model.gpt.config.n_layer == len(model.lora)


def test_torchrun_two_processes_equal_one(tmp_path, data_dir):
    """SIM-CoT under torchrun (DistributedDataParallel; at stage 0 its step decoder has no step to decode) and with
    its checkpoint's extras: two processes end where one does."""
    import os
    import socket
    import subprocess
    import sys
    from pathlib import Path
    from safetensors.torch import load_file
    args = [*TINY, "--data_dir", str(data_dir), "--epochs", "2", "--method", "simcot", "--lr", "1e-4"]
    one = run("train.py", *args, "--out_dir", str(tmp_path / "one"))
    assert one.returncode == 0, one.stderr
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    two = subprocess.run([sys.executable, "-m", "torch.distributed.run", "--nproc_per_node=2", f"--master_port={port}",
                          "train.py", *args, "--out_dir", str(tmp_path / "two")], cwd=Path(__file__).resolve().parents[1],
                         capture_output=True, text=True, timeout=300, env=dict(os.environ, OMP_NUM_THREADS="1"))
    assert two.returncode == 0 and "Warning" not in two.stderr, two.stderr
    for file in ("model.safetensors", "extras.safetensors"):
        a, b = (load_file(tmp_path / d / "latest" / file) for d in ("one", "two"))
        assert all((a[k] - b[k]).abs().max() <= 1e-6 for k in a), file


@pytest.mark.parametrize("flags, message", [
    (["--method", "pccot", "--pccot_iterations", "0"], "--pccot_iterations must be at least 1"),
    (["--dataset", "reachability", "--method", "pccot", "--pad_latent_to_max", "false"], "it needs --pad_latent_to_max true"),
    (["--lr_schedule", "cosine", "--warmup", "1.5"], "--warmup must be within [0, 1)"),
    (["--dataset", "gsm8k", "--method", "codi", "--cot_epochs", "3"], "--cot_epochs with --lora_r"),
    (["--method", "coconut", "--pccot_iterations", "2"], "--pccot_iterations is read by --method pccot only, not by coconut"),
    (["--method", "codi", "--step_decoder_init", "gpt2"], "--step_decoder_init is read by --method simcot only"),
    (["--icot_tokens_per_stage", "2"], "--icot_tokens_per_stage is read by --method icot only"),
    (["--dataset", "prosqa", "--n_layer", "4"], "--n_layer: the shape of a model from scratch (--init_from scratch), not of gpt2"),
    (["--method", "cot", "--markers", "true"], "--markers: method cot has no thoughts"),
    (["--method", "codi", "--markers", "false"], "--markers: method codi keeps its own"),
])
def test_bad_flags_say_what_is_wrong(flags, message):
    import train
    with pytest.raises(ValueError, match=message.replace("[", r"\[").replace("(", r"\(").replace(")", r"\)")):
        train.resolve_config(train.parse_args(flags))
