"""
The training recipes, as plain data: the paper's three (§4.2 and the authors' released configs) and the
offline default. A run's config is DEFAULTS, then its dataset's preset, then the flags given; train.py saves
it with every checkpoint (run.json), and eval.py reads it back from there.
"""
import dataclasses

from data import Curriculum

DEFAULTS = dict(
    method="coconut", init_from="gpt2", new_token_init="copy", dropout=0.1,
    lr=1e-4, weight_decay=0.01, beta1=0.9, beta2=0.999,
    batch_size=128,          # sequences per optimizer step, over all processes: 32 per GPU x 4 GPUs in the paper
    micro_batch_size=32,     # sequences per forward pass: a memory knob, it does not change the loss
    loss_group=32,           # the loss is the mean over groups of this many sequences of each group's token mean
    reset_optimizer="epoch",  # the authors' code re-creates AdamW every epoch (the paper says every stage)
    pad_latent_to_max=True, uniform_prob=0.0, icot_tokens_per_stage=8, start_epoch=0, cot_epochs=0,
    eval_batch_size=64, train_examples=None, val_examples=None, test_examples=None,
    lr_schedule="constant",  # or "cosine": from lr to 0 over the run, after a linear warm-up from 0
    warmup=0.0,              # the warm-up's share of the run's steps
    grad_clip=0.0,           # clip the gradient's norm to this (0: never)
    decay_norms_and_biases=True,  # weight decay on every parameter (Coconut's code); False: not on biases and norms
    pccot_iterations=3,      # PCCoT: Jacobi iterations over the latents
    step_decoder_init=None,  # SIM-CoT: the step decoder's GPT-2 (None: a copy of the model as the run starts)
    lora_r=0,                # LoRA's rank (lora.py); 0: every weight is trained
    lora_alpha=32, lora_dropout=0.1,
    lora_token_rows=False,   # with LoRA: the embedding rows of <bot>, <eot>, <latent> and EOS train too (PCCoT)
    format=None,             # how records are written (data.FORMATS), if not as the method writes them
    markers=None,            # <bot> and <eot> around the thoughts, if not as the method has them
)
PRESETS = {
    "gsm8k": dict(c_thought=2, max_latent_stage=3, epochs_per_stage=3, epochs=25, max_new_tokens=64,
                  cot_epochs=25,   # first plain CoT; the method starts from its best epoch (the authors: epoch 6)
                  start_epoch=3),  # ... at epoch 3, so that 3 epochs per stage give stage 1 right away
    "prontoqa": dict(c_thought=1, max_latent_stage=6, epochs_per_stage=5, epochs=50, max_new_tokens=128),
    "prosqa": dict(c_thought=1, max_latent_stage=6, epochs_per_stage=5, epochs=50, max_new_tokens=128),
    # The offline default: a tiny GPT from scratch learns the shell game (synthetic.py) through every stage on a
    # 2-core CPU. Stage mixing keeps earlier stages in training, AdamW is never reset, and 32 sequences a step
    # at a moderate learning rate keep the thoughts' gradients (through the whole chain) steady. Each new stage
    # shakes the chain; with half the sequences at a stage drawn at random, more runs recover than with 0.3, not
    # yet all (docs/shell-game.md, "Why stage mixing 0.5").
    "shellgame": dict(init_from="scratch", n_layer=2, n_head=4, n_embd=128, dropout=0.0, lr=5e-4,
                      batch_size=32, micro_batch_size=32, reset_optimizer="never", uniform_prob=0.5,
                      c_thought=1, max_latent_stage=4, epochs_per_stage=2, epochs=15, max_new_tokens=32,
                      icot_tokens_per_stage=5),  # iCoT removes a step's worth of tokens a stage, as Coconut a step
    # Three-hop questions from one fixed ontology (synthetic.py) in ProsQA's format.
    "ontology": dict(init_from="scratch", n_layer=2, n_head=4, n_embd=128, dropout=0.0, lr=2e-3,
                     c_thought=1, max_latent_stage=3, epochs_per_stage=2, epochs=10, max_new_tokens=32,
                     batch_size=16, micro_batch_size=16),
    # ProsQA's graphs in symbols (synthetic.py), where a written step must commit to one branch. As in the
    # superposition paper's code (Zhu et al. 2025), a thought has no markers around it: the root's position computes
    # the first, each thought the next, every one where CoT would write the next node, and there are as many as the
    # path has hops. The thoughts' stages start from 8 epochs of CoT, then 2 epochs a stage (docs/latent-search.md).
    "reachability": dict(init_from="scratch", n_layer=2, n_head=4, n_embd=128, dropout=0.0, lr=1e-3,
                         batch_size=32, micro_batch_size=32, reset_optimizer="never", uniform_prob=0.3,
                         format="symbols", markers=False, pad_latent_to_max=False,
                         c_thought=1, max_latent_stage=5, epochs_per_stage=2, epochs=16, max_new_tokens=24,
                         cot_epochs=8, start_epoch=2, icot_tokens_per_stage=1),
}
# The methods that followed, on GSM8k-Aug with GPT-2, as their papers and released scripts train them. CODI
# (zhenyi4/codi scripts/train_gpt2_gsm8k-aug.sh) and PCCoT (whyNLP/PCCoT run_ccot.sh.template) train with the
# Hugging Face Trainer: AdamW without decay on biases and norms, a cosine schedule after a 3% warm-up, gradient
# clipping (PCCoT: the Trainer's default 1.0), 40 epochs, the final stage (all their latents) from the start, and
# LoRA (r 128, alpha 32, dropout 0.1; lora.py). SIM-CoT (InternLM/SIM-CoT Coconut/args/gsm_simcot.yaml) continues
# Coconut's recipe with 5 stages of 2 thoughts, from epoch 3 to 35, its step decoder a GPT-2.
METHOD_PRESETS = {
    ("gsm8k", "codi"): dict(c_thought=1, max_latent_stage=6, epochs=40, cot_epochs=0, start_epoch=0, lr=3e-3,
                            lr_schedule="cosine", warmup=0.03, weight_decay=0.1, grad_clip=2.0, decay_norms_and_biases=False,
                            micro_batch_size=64, loss_group=64,  # 64 per GPU x 2 accumulation steps; the std's rows
                            reset_optimizer="never", max_new_tokens=64, lora_r=128),
    ("gsm8k", "pccot"): dict(c_thought=1, max_latent_stage=24, pccot_iterations=3, epochs=40, cot_epochs=0, start_epoch=0,
                             lr=3e-3, lr_schedule="cosine", warmup=0.03, weight_decay=0.01, grad_clip=1.0,
                             decay_norms_and_biases=False, micro_batch_size=128, loss_group=128, reset_optimizer="never",
                             max_new_tokens=64, lora_r=128, lora_token_rows=True),
    ("gsm8k", "simcot"): dict(c_thought=2, max_latent_stage=5, epochs_per_stage=3, epochs=35, start_epoch=3,
                              step_decoder_init="gpt2"),
    # GSM8k's written baselines are its CoT phase as a run of its own: 25 epochs from epoch 0 (the authors' gsm_cot.yaml).
    ("gsm8k", "cot"): dict(start_epoch=0),
    ("gsm8k", "no_cot"): dict(start_epoch=0),
    # The written baselines of the latent search take as many epochs as Coconut's CoT phase and stages: 8 + 14.
    ("reachability", "cot"): dict(epochs=22, start_epoch=0),
    ("reachability", "no_cot"): dict(epochs=22, start_epoch=0),
    # PCCoT computes every row's latents at once, so every row needs as many: as many as the longest path's hops.
    ("reachability", "pccot"): dict(pad_latent_to_max=True),
}
DEFAULT_DATASET = "shellgame"
CURRICULUM_FIELDS = [f.name for f in dataclasses.fields(Curriculum)]


def recipe(dataset, method):
    """A run's config before its flags: DEFAULTS, the dataset's preset, then the method's on that dataset, if any."""
    return {**DEFAULTS, **PRESETS[dataset], **METHOD_PRESETS.get((dataset, method), {}), "method": method}


def curriculum(cfg):
    """The Curriculum a run's config describes; a field it lacks (a run saved before the field existed) keeps its
    default."""
    return Curriculum(**{k: cfg[k] for k in CURRICULUM_FIELDS if k in cfg})
