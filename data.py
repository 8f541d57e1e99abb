"""
Data for Coconut: the GPT-2 tokenizer with three latent tokens; what the method makes of a record (its
tokens, each method's training sequence at each stage of the curriculum, batches with aligned thoughts); and
the datasets: the paper's three (GSM8k-Aug, ProntoQA, ProsQA) and those synthetic.py generates.

A record is {"question": str, "steps": [str, ...], "answer": str}; ProsQA records also carry their graph
(idx_to_symbol, edges, root, target, neg_target).

Check a split (downloads into ~/.cache/coconut, or $COCONUT_DATA_DIR, on first use):
    python data.py --dataset gsm8k --split test
    python data.py --dataset prosqa --split valid --data_dir DIR
Write a split as JSON, the format --data_dir reads (a test set of one's own is a file like it):
    python data.py --dataset reachability --split test --out DIR/reachability_test.json
Generate ProsQA-style questions (the paper's Algorithm 1) and compare their graphs with the paper's:
    python data.py --generate paper --n 500 --seed 0 --out prosqa_paper.json
    python data.py --generate small --n 8000 --seed 0 --out prosqa_small.json   # or: large
"""
import argparse
import functools
import hashlib
import http.client
import json
import os
import statistics
import sys
import tempfile
import urllib.request
from dataclasses import dataclass
from pathlib import Path
from typing import NamedTuple

import tiktoken
import torch

from synthetic import GENERATED, LARGE, PAPER, PAPER_STATS, SMALL, generate_prosqa, generated, graph_stats

# -----------------------------------------------------------------------------
# Tokenizer: GPT-2 BPE plus the three new tokens of the paper (§3)

EOS = 50256  # <|endoftext|>, also the pad id
BOT = 50257  # <|start-latent|>, "<bot>": the continuous thoughts start after it
EOT = 50258  # <|end-latent|>, "<eot>": language resumes after it
LATENT = 50259  # <|latent|>, the placeholder a continuous thought replaces
NEWLINE = 198  # "\n"
ANSWER_MARK = 21017  # "###": the answer follows it
VOCAB_SIZE = 50260
TOKENIZER_FILES = "https://openaipublic.blob.core.windows.net/gpt-2/encodings/main/"  # vocab.bpe and encoder.json


@functools.lru_cache(maxsize=None)
def tokenizer():
    """tiktoken's gpt2 encoding with the three latent tokens appended."""
    try:
        gpt2 = tiktoken.get_encoding("gpt2")
    except Exception as e:  # requests' errors when offline, and whatever else stops tiktoken from having its files
        raise DataError(f"no GPT-2 tokenizer: tiktoken found vocab.bpe and encoder.json neither in its cache nor at "
                        f"{TOKENIZER_FILES} ({type(e).__name__}); connect once, or put both files, named as tiktoken "
                        f"names them (the SHA-1 of their URL), in a folder and set TIKTOKEN_CACHE_DIR to it") from None
    special = {"<|start-latent|>": BOT, "<|end-latent|>": EOT, "<|latent|>": LATENT}
    return tiktoken.Encoding(
        name="gpt2-coconut",
        pat_str=gpt2._pat_str,
        mergeable_ranks=gpt2._mergeable_ranks,
        special_tokens={**gpt2._special_tokens, **special},
    )


def encode(text):
    """Plain text to ids. A literal "<|latent|>" in the text is text, never the special id."""
    return tokenizer().encode_ordinary(text)


def decode(ids, skip_special=False):
    """Ids to text; special tokens show by name unless skip_special drops them."""
    drop = (EOS, BOT, EOT, LATENT) if skip_special else ()
    return tokenizer().decode([int(i) for i in ids if int(i) not in drop])


# -----------------------------------------------------------------------------
# From records to training sequences: tokenization, the curriculum of each method, collation (paper §3, §4)

class Format(NamedTuple):
    """How a method writes a record: Coconut's pieces, or the "The answer is: X" of CODI and PCCoT, whose teacher
    reads the steps but the last (their released code: zhenyi4/codi train.py, whyNLP/PCCoT models/data_processor.py)."""
    question: str    # appended to the question
    step: str        # appended to each step, each tokenized alone; None: the steps joined by spaces, one piece (CODI)
    answer: str      # the answer's text, {} the answer
    prompt: str      # tokenized alone before the answer, and given at inference (PCCoT's answer prompt)
    distill: str     # the answer piece's prefix whose last token predicts the answer: where CODI and PCCoT distil


FORMATS = {
    "coconut": Format("\n", "\n", "### {}", "", None),
    "codi": Format("", None, "The answer is: {}", "", "The answer is:"),
    "pccot": Format("", "", "{}", "The answer is:", "The answer is:"),
    # synthetic.reachability's nodes, one token each, written one after the other right after the question's root.
    "symbols": Format("", "", "### {}", "", None),
}


@dataclass
class Tokenized:
    """A record's pieces as token ids, each tokenized on its own, as the authors' code does."""
    question: list   # question + "\n"
    steps: list      # [step + "\n", ...]
    answer: list     # "### " + answer, then EOS (with a Format's prompt first, if it has one)
    teacher_steps: list = None  # CODI, PCCoT: the teacher's chain of thought, every step but the last
    prompt_len: int = 0         # tokens of the answer piece given at inference (the Format's prompt)
    distill_at: int = None      # index in the answer piece of the position that predicts the answer
    step_ids: list = None       # SIM-CoT: each step alone, without its "\n": what the step decoder writes


def tokenize(records, block_size=1024, max_latents=0, method="coconut", fmt=None):
    """Tokenize records once; a stage's sequences are then cheap to rebuild every epoch.

    Nothing is truncated: a record whose longest sequence (every step written out, plus the markers and
    max_latents thoughts) would not fit in block_size positions is skipped. Returns the tokenized records,
    and for each one the index of its record, so skipped ones can be counted and reported. The method's format
    (FORMATS), unless fmt names another (the CoT phase of a CODI run writes as CODI does).
    """
    enc, known = tokenizer(), {}
    spec = METHODS[method]
    fmt = FORMATS[fmt or spec.format]

    def encode(text):  # a piece seen before (GSM8k-Aug repeats many steps and answers) is encoded once, and shared
        if text not in known:
            known[text] = enc.encode_ordinary(text)  # one by one: faster than encode_ordinary_batch's thread pool
        return known[text]

    prompt = encode(fmt.prompt) if fmt.prompt else []
    distill_at = len(encode(fmt.distill)) - 1 if fmt.distill else None  # ':' of "The answer is:", the piece's start
    out, kept = [], []
    for idx, r in enumerate(records):
        q, a = encode(r["question"] + fmt.question), prompt + encode(fmt.answer.format(r["answer"]))
        if fmt.step is None:
            steps, teacher = [encode(" ".join(r["steps"]))], encode(" ".join(r["steps"][:-1]))
        else:
            steps = [encode(s + fmt.step) for s in r["steps"]]
            teacher = [t for s in steps[:-1] for t in s]
        if len(q) + sum(map(len, steps)) + len(a) + 1 + 2 + max_latents <= block_size:
            out.append(Tokenized(q, steps, a + [EOS], teacher if spec.teacher else None, len(prompt), distill_at,
                                 [encode(s) for s in r["steps"]] if spec.step_targets else None))
            kept.append(idx)
    return out, kept


def vocabulary(splits, method="coconut", fmt=None):
    """The token ids of every record of every split as the method (or the format fmt) writes them, and the four
    special ones: the rows that a model from scratch needs (GPTConfig.tokens)."""
    ids = {EOS, BOT, EOT, LATENT} | ({NEWLINE} if METHODS[method].step_targets else set())
    for records in splits:
        for t in tokenize(records, method=method, fmt=fmt)[0]:
            ids.update(t.question, *t.steps, t.answer, t.teacher_steps or [], *(t.step_ids or []))
    return sorted(ids)


class Method(NamedTuple):
    """How a method of the paper's Table 1 (§4.3) builds its sequences. With feedback, a latent's input is the
    last hidden state before it (a continuous thought); without, the learned embedding of <|latent|> (a pause)."""
    stages: str      # "curriculum" follows the schedule, "cot" is stage 0 forever, "final" the last stage from the start
    latents: bool    # latent positions replace the removed steps (c_thought per step)
    markers: bool    # <bot> and <eot> around the latents
    feedback: bool   # thoughts are fed back
    format: str = "coconut"    # how a record is written: FORMATS
    teacher: bool = False      # CODI, PCCoT: each sequence comes with its teacher's (the CoT) for self-distillation
    step_targets: bool = False  # SIM-CoT: each group of c_thought latents is decoded into the step it replaces


# icot removes leading CoT tokens instead of whole steps (Deng et al. 2024): its own branch in Curriculum.example.
METHODS = {
    "coconut":          Method("curriculum", latents=True,  markers=True,  feedback=True),
    "no_curriculum":    Method("final",      latents=True,  markers=True,  feedback=True),
    "pause_as_thought": Method("curriculum", latents=True,  markers=True,  feedback=False),
    "pause":            Method("final",      latents=True,  markers=True,  feedback=False),
    "no_thoughts":      Method("curriculum", latents=False, markers=False, feedback=False),
    "cot":              Method("cot",        latents=False, markers=False, feedback=False),
    "no_cot":           Method("final",      latents=False, markers=False, feedback=False),
    "icot":             Method("curriculum", latents=False, markers=False, feedback=False),
    # The methods that followed (docs/methods.md): codi.py, pccot.py, simcot.py.
    "codi":             Method("final",      latents=True,  markers=True,  feedback=True, format="codi", teacher=True),
    "pccot":            Method("final",      latents=True,  markers=True,  feedback=True, format="pccot", teacher=True),
    "simcot":           Method("curriculum", latents=True,  markers=True,  feedback=True, step_targets=True),
}


@dataclass
class Example:
    """One sequence: ids, where its supervised tokens start, and where its latents are."""
    ids: list
    label_start: int      # ids[label_start:] are supervised (steps left, answer, EOS); before is context
    first_latent: int     # position of the first latent (meaningless without latents)
    n_latents: int
    teacher: list = None  # CODI, PCCoT: the teacher's sequence, supervised from teacher_label_start
    teacher_label_start: int = 0
    distill: tuple = None  # CODI, PCCoT: (position in ids, position in teacher) of the answer-predicting token
    step_targets: list = None  # SIM-CoT: per group of c_thought latents, the tokens it is decoded into, EOS last

    @property
    def terms(self):
        """Items of each term of the loss: supervised tokens; the teacher's tokens and one distillation (CODI,
        PCCoT); one per decoded step (SIM-CoT). Each term is averaged over its items in a loss group."""
        terms = (len(self.ids) - self.label_start,)
        if self.teacher is not None:
            terms += (len(self.teacher) - self.teacher_label_start, 1)
        if self.step_targets is not None:
            terms += (len(self.step_targets),)
        return terms


@dataclass(frozen=True)
class Curriculum:
    """The multi-stage curriculum of one method (paper §3, "Training Procedure"; §4.3 for the other methods)."""
    method: str = "coconut"
    c_thought: int = 1             # continuous thoughts per removed reasoning step
    max_latent_stage: int = 6      # stages 1..max replace steps by thoughts; later stages remove every step
    epochs_per_stage: int = 5
    pad_latent_to_max: bool = True  # beyond max_latent_stage: always max*c thoughts, even for shorter records
    uniform_prob: float = 0.0      # chance that a record trains at a stage drawn from 0..len(steps) instead
    icot_tokens_per_stage: int = 8  # icot: leading CoT tokens removed per stage
    format: str = None             # how records are written (FORMATS), if not as the method writes them
    markers: bool = None           # <bot> and <eot> around the latents, if not as the method has them

    def __post_init__(self):
        if self.method not in METHODS:
            raise ValueError(f"unknown method '{self.method}': expected one of {', '.join(METHODS)}")

    @property
    def final_stage(self):
        return self.max_latent_stage + 1

    @property
    def spec(self):
        """The method's row of Table 1: how it builds sequences."""
        return METHODS[self.method]

    @property
    def feedback(self):
        return self.spec.feedback

    # A recipe's format and markers (the reachability preset's) apply to the methods that write as Coconut does;
    # CODI and PCCoT keep their own, which their distillation needs.
    @property
    def has_markers(self):
        """Whether <bot> and <eot> stand around the latents."""
        own = self.markers is None or self.spec.format != "coconut" or not self.spec.latents
        return self.spec.markers if own else self.markers

    @property
    def fmt(self):
        """The name of the format the records are written in."""
        return self.format if self.format and self.spec.format == "coconut" else self.spec.format

    def stage(self, epoch):
        """The scheduled stage at an epoch (0-based)."""
        stage = epoch // self.epochs_per_stage
        # Every stage past max_latent_stage is the final one; icot's stages keep removing tokens.
        return self._fixed(stage if self.method == "icot" else min(stage, self.final_stage))

    def is_final(self, stage, records):
        """Whether a stage trains the method's final format: the checkpoints that compete for "best". icot's final
        stages leave no CoT token in any of the (training) records: its authors' code lets each epoch that still
        removes tokens replace the best whatever its accuracy, so that the best removes them all where it can."""
        if self.method == "icot":
            return all(sum(map(len, rec.steps)) <= stage * self.icot_tokens_per_stage for rec in records)
        return self.spec.stages != "curriculum" or stage >= self.final_stage

    def _fixed(self, stage):
        """The stage a method really uses: cot stays at 0, the "final" methods at the final stage."""
        return {"cot": 0, "final": self.final_stage}.get(self.spec.stages, stage)

    def _steps_and_latents(self, rec, stage):
        """The steps still written out at a stage, and how many latents stand for the removed ones."""
        if stage > self.max_latent_stage:
            n = self.max_latent_stage if self.pad_latent_to_max else min(len(rec.steps), self.max_latent_stage)
            steps = []
        else:
            n, steps = stage, rec.steps[stage:]
        return steps, (n * self.c_thought if self.spec.latents else 0)

    def _context(self, rec, n_latents):
        """question | <bot> <latent> x n <eot>, the markers only where the method (or the recipe) has them."""
        if self.has_markers:
            return rec.question + [BOT] + [LATENT] * n_latents + [EOT]
        return rec.question + [LATENT] * n_latents

    def example(self, rec, stage, rng=None):
        """The training sequence of a record at a stage; rng draws the stage mixing (uniform_prob)."""
        if self.method == "icot":
            cot = [t for step in rec.steps for t in step]
            return Example(rec.question + cot[stage * self.icot_tokens_per_stage:] + rec.answer,
                           len(rec.question), 0, 0)
        stage = self._fixed(stage)
        if (self.uniform_prob > 0 and self.spec.stages == "curriculum"
                and rng is not None and rng.random() < self.uniform_prob):
            stage = rng.randrange(len(rec.steps) + 1)
        steps, n = self._steps_and_latents(rec, stage)
        context = self._context(rec, n)
        ids = context + [t for step in steps for t in step] + rec.answer
        example = Example(ids, len(context), len(rec.question) + self.has_markers, n)
        if self.spec.teacher:
            example.teacher = rec.question + rec.teacher_steps + rec.answer
            example.teacher_label_start = len(rec.question)
            example.distill = (len(ids) - len(rec.answer) + rec.distill_at,
                               len(rec.question) + len(rec.teacher_steps) + rec.distill_at)
        if self.spec.step_targets:
            example.step_targets = self.step_targets(rec, stage, n // self.c_thought)
        return example

    def step_targets(self, rec, stage, groups):
        """SIM-CoT (InternLM/SIM-CoT, Coconut/dataset.py and coconut.py): what each of `groups` groups of latents is
        decoded into at a stage. The targets are the steps the stage removed (the first `stage`; every step only at
        the final stage), steps without tokens left out; group i writes step i, and the last group of the schedule
        (max_latent_stage) writes every removed step from its own on, joined by "\n", which is more than one only at
        the final stage. A group with no removed step left writes the answer ("### X"). Each ends with EOS."""
        removed = [s for s in (rec.step_ids if stage > self.max_latent_stage else rec.step_ids[:stage]) if s]
        last = self.max_latent_stage - 1
        targets = []
        for i in range(groups):
            if i < min(last, len(removed)):
                target = removed[i]
            elif i == last and len(removed) > last:
                target = [t for j, s in enumerate(removed[last:]) for t in ([NEWLINE] if j else []) + s]
            else:
                target = rec.answer[:-1]
            targets.append(target + [EOS])
        return targets

    def prompt(self, rec, stage, n_latents=None):
        """The evaluation prompt at a stage: the question, and that stage's thoughts between the markers.
        n_latents forces that many thoughts instead (the paper's sweep over k, §5)."""
        stage = self._fixed(stage)
        cap = self.max_latent_stage if self.pad_latent_to_max else min(self.max_latent_stage, len(rec.steps))
        if not self.spec.latents:
            n_latents = 0
        elif n_latents is None:
            n_latents = min(stage, cap) * self.c_thought
        given = rec.answer[:rec.prompt_len] if FORMATS[self.spec.format].prompt else []  # PCCoT's answer prompt
        context = self._context(rec, n_latents) + given
        return Example(context, len(context), len(rec.question) + self.has_markers, n_latents)


@dataclass
class Batch:
    """Collated examples: every row's first latent sits in column `first_latent`, so that one pass per latent
    column computes the thoughts of every row (paper §3, "Training Details")."""
    ids: torch.Tensor         # (B, T) token ids; padding is EOS
    pos: torch.Tensor         # (B, T) position ids, 0 at each row's first real token
    mask: torch.Tensor        # (B, T) True for real tokens
    starts: torch.Tensor      # (B,) column of each row's first real token (its left padding)
    ends: torch.Tensor        # (B,) column after each row's last real token
    n_latents: torch.Tensor   # (B,) latents per row
    target_idx: torch.Tensor  # (N,) flat positions row * T + col whose next token is supervised
    targets: torch.Tensor     # (N,) that next token
    first_latent: int         # plain ints, so the model's loop never waits on the device
    max_latents: int
    teacher: "Batch" = None   # CODI, PCCoT: the teacher's sequences, collated as plain ones
    distill_idx: torch.Tensor = None          # (B,) flat position (row * T + col) of each row's distillation
    teacher_distill_idx: torch.Tensor = None  # (B,) the same in the teacher's batch
    steps: "Steps" = None     # SIM-CoT: the step decoder's sequences

    def to(self, device):
        moved = {k: v.to(device) if isinstance(v, (Batch, Steps)) else
                 v.to(device, non_blocking=True) if torch.is_tensor(v) else v for k, v in vars(self).items()}
        return Batch(**moved)


@dataclass
class Steps:
    """SIM-CoT's step decoder inputs: one row per (row of the batch, group of latents), in that order. A row reads
    the group's c latents, then its step's tokens; positions start at 1, as in the authors' code."""
    rows: torch.Tensor        # (M,) the batch row of each
    groups: torch.Tensor      # (M,) the group of latents of each
    ids: torch.Tensor         # (M, S) the step's tokens, EOS-padded; they follow c latents: columns c..c+S-1
    mask: torch.Tensor        # (M, c + S) True for latents and real tokens
    target_idx: torch.Tensor  # (K,) flat positions m * (c + S) + col whose next token is supervised
    targets: torch.Tensor     # (K,)
    items: torch.Tensor       # (K,) the row m of each target: its loss adds to that step's

    def to(self, device):
        return Steps(**{k: v.to(device, non_blocking=True) for k, v in vars(self).items()})


def collate(examples, align_ends=False):
    """Pad examples into a Batch.

    A row with latents is left-padded so its first latent lands in the latest first-latent column of the
    batch. A row without latents is not shifted; with align_ends (generation prompts) it is left-padded to
    end in that column instead, so that all rows start generating together. Then every row is right-padded.
    """
    anchors = [e.first_latent if e.n_latents else len(e.ids) for e in examples]
    aligned = [bool(e.n_latents) or align_ends for e in examples]
    column = max((a for a, al in zip(anchors, aligned) if al), default=0)
    starts = [column - a if al else 0 for a, al in zip(anchors, aligned)]
    T = max(s + len(e.ids) for s, e in zip(starts, examples))
    B = len(examples)
    ids = torch.full((B, T), EOS, dtype=torch.long)
    pos = torch.zeros(B, T, dtype=torch.long)
    mask = torch.zeros(B, T, dtype=torch.bool)
    target_idx, targets = [], []
    for row, (s, e) in enumerate(zip(starts, examples)):
        n = len(e.ids)
        ids[row, s:s + n] = torch.tensor(e.ids)
        pos[row, s:s + n] = torch.arange(n)
        mask[row, s:s + n] = True
        target_idx.extend(range(row * T + s + e.label_start - 1, row * T + s + n - 1))
        targets.extend(e.ids[e.label_start:])
    n_latents = [e.n_latents for e in examples]
    batch = Batch(ids, pos, mask, torch.tensor(starts), torch.tensor([s + len(e.ids) for s, e in zip(starts, examples)]),
                  torch.tensor(n_latents), torch.tensor(target_idx, dtype=torch.long),
                  torch.tensor(targets, dtype=torch.long), column, max(n_latents))
    if examples[0].teacher is not None:
        batch.teacher = collate([Example(e.teacher, e.teacher_label_start, 0, 0) for e in examples])
        Tt = batch.teacher.ids.shape[1]
        batch.distill_idx = torch.tensor([row * T + s + e.distill[0] for row, (s, e) in enumerate(zip(starts, examples))])
        batch.teacher_distill_idx = torch.tensor([row * Tt + e.distill[1] for row, e in enumerate(examples)])
    if examples[0].step_targets is not None:
        batch.steps = collate_steps(examples, max(n_latents) // max(len(e.step_targets) for e in examples)
                                    if any(e.step_targets for e in examples) else 1)
    return batch


def collate_steps(examples, c):
    """SIM-CoT's step decoder batch: every (row, group) of the examples, each c latents then its target tokens."""
    items = [(row, g, t) for row, e in enumerate(examples) for g, t in enumerate(e.step_targets)]
    S = max((len(t) for _, _, t in items), default=1)
    M = len(items)
    ids = torch.full((M, S), EOS, dtype=torch.long)
    mask = torch.zeros(M, c + S, dtype=torch.bool)
    target_idx, targets, owners = [], [], []
    for m, (_, _, t) in enumerate(items):
        ids[m, :len(t)] = torch.tensor(t)
        mask[m, :c + len(t)] = True
        target_idx.extend(range(m * (c + S) + c - 1, m * (c + S) + c - 1 + len(t)))  # the last latent writes t[0]
        targets.extend(t)
        owners.extend([m] * len(t))
    return Steps(torch.tensor([r for r, _, _ in items], dtype=torch.long), torch.tensor([g for _, g, _ in items], dtype=torch.long),
                 ids, mask, torch.tensor(target_idx, dtype=torch.long), torch.tensor(targets, dtype=torch.long),
                 torch.tensor(owners, dtype=torch.long))


# -----------------------------------------------------------------------------
# Where the data comes from (paper §4.1): (dataset, split) -> (url, sha256 of the file we expect).
# ProntoQA has no hosted copy. ProsQA's train split lives on a branch, so its hash is not pinned.

_ICOT = "da03/Internalize_CoT_Step_by_Step/e06a32ee5e4cd117171daeb4755d2a97ece62761/data/gsm8k"
_PROSQA = "https://raw.githubusercontent.com/facebookresearch/coconut/main/data"
SOURCES = {
    ("gsm8k", "train"): (f"https://media.githubusercontent.com/media/{_ICOT}/train.txt",  # Git LFS
                         "0a3909a9e7d8d2f7ad6b8c7b5608aa744988d835f9bf874d4cf06ca77df6bf8c"),
    ("gsm8k", "valid"): (f"https://raw.githubusercontent.com/{_ICOT}/valid.txt",
                         "04f9bddfe8ac4846571b1e2b612b289c95770b5012fdb34cc36a597b041afb87"),
    ("gsm8k", "test"): (f"https://raw.githubusercontent.com/{_ICOT}/test.txt",
                        "e464efa2713fbcf423bdbfb482c543a6a086188c3d97c294b1d19a70c2a515e8"),
    ("prosqa", "train"): (f"{_PROSQA}/prosqa_train.json", None),
    ("prosqa", "valid"): (f"{_PROSQA}/prosqa_valid.json",
                          "c74e0de24f1e90ec48b1a993e6458a7be4caeef3928f5104e3c2e45d689a5249"),
    ("prosqa", "test"): (f"{_PROSQA}/prosqa_test.json",
                         "82ddc0afe6ee30eb31bb16fa208e293e55278a20fa987098d48519cae7e12680"),
}
DATASETS = ("gsm8k", "prosqa", "prontoqa", *GENERATED)
SPLITS = ("train", "valid", "test", "test+1", "test+2")  # test+k: k steps longer than training (synthetic.py)


def splits(name):
    """The splits a dataset has: every one for a generated dataset that has them, train, valid and test otherwise."""
    return tuple(GENERATED[name][1]) if name in GENERATED else SPLITS[:3]
PRONTOQA_HELP = ("ProntoQA has no hosted copy: generate it with the ProntoQA authors' generator "
                 "(github.com/asaparov/prontoqa; 5 hops, fictional ontology, random ordering) "
                 "and pass the folder holding {filename} as --data_dir")


class DataError(ValueError):
    """A dataset that cannot be had or read; the message is one line naming the file and the record."""


def download(url, dest, sha256=None):
    """Fetch url to dest atomically: the file appears only once it is complete and matches sha256."""
    dest = Path(dest)
    dest.parent.mkdir(parents=True, exist_ok=True)
    # A temp file in the same folder makes os.replace atomic, so a crash never leaves a partial dest.
    fd, tmp = tempfile.mkstemp(dir=dest.parent, prefix=f".{dest.name}.", suffix=".part")
    try:
        with os.fdopen(fd, "wb") as f, urllib.request.urlopen(url, timeout=60) as response:
            expected = response.headers.get("Content-Length")
            digest, size = hashlib.sha256(), 0
            # A dropped connection can end this loop early without an error: the size check below sees it.
            while chunk := response.read(1 << 20):
                f.write(chunk)
                digest.update(chunk)
                size += len(chunk)
        if expected is not None and size != int(expected):
            raise DataError(f"download of {url} stopped after {size} of {expected} bytes")
        if sha256 is not None and digest.hexdigest() != sha256:
            raise DataError(f"download of {url} has sha256 {digest.hexdigest()}, expected {sha256}")
        os.replace(tmp, dest)
    except (OSError, http.client.HTTPException) as e:  # URLError and timeouts are OSErrors
        raise DataError(f"download of {url} failed: {e}") from e
    finally:
        if os.path.exists(tmp):
            os.remove(tmp)


# -----------------------------------------------------------------------------
# Loading and checking the files


def file_name(name, split):
    """The name of a split's file: GSM8k-Aug's as its authors name them, the others as ProsQA's."""
    return f"{split}.txt" if name == "gsm8k" else f"{name}_{split}.json"


def load_dataset(name, split, data_dir=None, cache_dir=None):
    """The records of one split. data_dir: read its file (file_name) only, for every dataset, generated ones included.
    Otherwise a generated dataset is generated, and the others are read from the cache folder (cache_dir, else
    $COCONUT_DATA_DIR, else ~/.cache/coconut), downloading what is missing."""
    if name not in DATASETS:
        raise DataError(f"unknown dataset {name!r}: choose from {', '.join(DATASETS)}")
    if split not in SPLITS:
        raise DataError(f"unknown split {split!r}: choose from {', '.join(SPLITS)}")
    if split not in splits(name):
        longer = [n for n in GENERATED if split in splits(n)]
        raise DataError(f"{name} has no split {split!r}: the test sets past the training length are generated, for "
                        f"{' and '.join(longer)}")
    if name in GENERATED and cache_dir is not None:
        raise DataError(f"{name} is generated, not downloaded: it has no cache (--cache_dir); to read its splits from "
                        f"files, pass their folder as --data_dir ({file_name(name, split)})")
    if name in GENERATED and data_dir is None:
        return generated(name, split)
    filename = file_name(name, split)
    if data_dir is not None:
        path = Path(data_dir) / filename
        if not path.is_file():
            hint = f" ({PRONTOQA_HELP.format(filename=filename)})" if name == "prontoqa" else ""
            raise DataError(f"{path}: no such file{hint}")
    else:
        cache = cache_dir or os.environ.get("COCONUT_DATA_DIR") or "~/.cache/coconut"
        path = Path(cache).expanduser() / name / filename  # one folder per dataset: gsm8k's names are generic
        if not path.is_file():
            if (name, split) not in SOURCES:
                raise DataError(f"{path}: no such file ({PRONTOQA_HELP.format(filename=filename)})")
            url, sha256 = SOURCES[(name, split)]
            print(f"downloading {url} to {path}")
            download(url, path, sha256)
    records = read_gsm8k(path) if name == "gsm8k" else read_json(path)
    if not records:
        raise DataError(f"{path}: no records")
    return records


def read_gsm8k(path):
    """GSM8k-Aug text, one problem a line: `question||<<a*b=c>> <<...>> #### answer`."""
    records = []
    # split("\n"), not splitlines(): questions may hold other Unicode line breaks.
    for lineno, line in enumerate(_read_text(path).split("\n"), 1):
        if not line.strip():
            continue  # the newline that ends the file leaves an empty last line
        where = f"{path}, line {lineno}"
        if "||" not in line:
            raise DataError(f"{where}: no '||' between question and reasoning")
        question, rest = line.split("||", 1)
        if "####" not in rest:
            raise DataError(f"{where}: no '####' before the answer")
        # As the authors split: a line without steps gets one empty step, which becomes a lone "\n" (3.26 steps
        # per test record, not 3.25), and the curriculum counts it like any other.
        steps = rest.split("##")[0].strip().split(" ")
        record = {"question": question, "steps": steps, "answer": rest.split("##")[-1].strip()}
        records.append(_check(record, where))
    return records


def read_json(path):
    """ProsQA and ProntoQA: a JSON list of records."""
    try:
        records = json.loads(_read_text(path))
    except json.JSONDecodeError as e:
        raise DataError(f"{path}: not valid JSON ({e.msg} at line {e.lineno}, column {e.colno})") from None
    if not isinstance(records, list):
        raise DataError(f"{path}: expected a JSON list of records, got {type(records).__name__}")
    return [_check(record, f"{path}, record {i}") for i, record in enumerate(records)]


def _read_text(path):
    try:
        return Path(path).read_text(encoding="utf-8")
    except UnicodeDecodeError as e:
        raise DataError(f"{path}: not UTF-8 text ({e.reason} at byte {e.start})") from None


def _check(record, where):
    """The record if it has what training needs (extra fields are kept), else a DataError naming it."""
    if not isinstance(record, dict):
        raise DataError(f"{where}: expected an object, got {type(record).__name__}")
    for key in ("question", "answer"):
        if key not in record:
            raise DataError(f"{where}: no {key!r}")
        if not isinstance(record[key], str):
            raise DataError(f"{where}: {key!r} is {type(record[key]).__name__}, not a string")
        if not record[key].strip():
            raise DataError(f"{where}: empty {key!r}")
    steps = record.get("steps")
    if not isinstance(steps, list) or not all(isinstance(s, str) for s in steps):
        raise DataError(f"{where}: 'steps' must be a list of strings")
    return record


# -----------------------------------------------------------------------------
# Command line


def summarize(records):
    """Lines describing a dataset: size, steps per record, question and answer lengths in tokens."""
    steps = [len(r["steps"]) for r in records]
    lines = [f"records: {len(records)}", f"steps per record: mean {statistics.mean(steps):.2f}, max {max(steps)}"]
    for key in ("question", "answer"):
        lengths = [len(ids) for ids in tokenizer().encode_ordinary_batch([r[key] for r in records])]
        lines.append(f"{key} tokens: mean {statistics.mean(lengths):.1f}, max {max(lengths)}")
    if "edges" in records[0]:
        ours = graph_stats(records)
        lines.append("graph      ours  paper")
        lines += [f"  {key:<7} {ours[key]:5.2f}  {PAPER_STATS[key]:5.1f}" for key in PAPER_STATS]
    return lines


def main(argv=None):
    parser = argparse.ArgumentParser(description="Check a Coconut dataset, or generate ProsQA-style data.")
    task = parser.add_mutually_exclusive_group(required=True)
    task.add_argument("--dataset", choices=DATASETS, help="dataset to load, check and summarize")
    task.add_argument("--generate", choices=("paper", "small", "large"),
                      help="generate ProsQA-style records with these graph settings")
    parser.add_argument("--split", default="valid", choices=SPLITS, help="split of --dataset")
    parser.add_argument("--data_dir", help="read the split's file from this folder (original file names), no download")
    parser.add_argument("--cache_dir", help="download cache (default $COCONUT_DATA_DIR or ~/.cache/coconut)")
    parser.add_argument("--n", type=int, default=500, help="number of records to generate")
    parser.add_argument("--seed", type=int, default=0, help="seed of the generator")
    parser.add_argument("--out", help="JSON file the records are written to: generated ones, or --dataset's split in the "
                                      "format that --data_dir reads (to edit, or to make a test set of one's own)")
    args = parser.parse_args(argv)
    if args.n < 1:
        parser.error("--n must be at least 1")
    try:
        if args.dataset == "gsm8k" and args.out:
            raise DataError("--out writes JSON, and GSM8k-Aug's files are text: copy them instead")
        if args.dataset:
            records = load_dataset(args.dataset, args.split, args.data_dir, args.cache_dir)
        else:
            records = generate_prosqa(args.n, args.seed, {"paper": PAPER, "small": SMALL, "large": LARGE}[args.generate])
        if args.out:
            Path(args.out).parent.mkdir(parents=True, exist_ok=True)
            Path(args.out).write_text(json.dumps(records))
            print(f"wrote {len(records)} records to {args.out}")
        print("\n".join(summarize(records)))
    except (DataError, OSError) as e:
        sys.exit(f"error: {e}")


if __name__ == "__main__":
    main()
