"""The curriculum of every method (the paper's §3 and Table 1) and collation, against hand-written sequences."""
import random

import pytest
import torch

import data
from data import BOT, EOS, EOT, LATENT as L, Curriculum, Tokenized, collate, tokenize

# A readable toy record: question 1 2 3, steps (10 11) (20) (30 31 32), answer 90.
Q = [1, 2, 3]
REC = Tokenized(Q, [[10, 11], [20], [30, 31, 32]], [90, EOS])
ONE_STEP = Tokenized(Q, [[10]], [90, EOS])


def seq(cur, rec, stage):
    e = cur.example(rec, stage)
    return e.ids, e.ids[e.label_start:], e.n_latents


@pytest.mark.parametrize("stage,ids,n", [
    (0, Q + [BOT, EOT, 10, 11, 20, 30, 31, 32, 90, EOS], 0),  # stage 0: CoT between empty markers
    (1, Q + [BOT, L, EOT, 20, 30, 31, 32, 90, EOS], 1),
    (2, Q + [BOT, L, L, EOT, 30, 31, 32, 90, EOS], 2),
    (3, Q + [BOT, L, L, EOT, 90, EOS], 2),  # beyond max_latent_stage: every step goes, max*c thoughts
    (9, Q + [BOT, L, L, EOT, 90, EOS], 2),
])
def test_coconut_stages(stage, ids, n):
    cur = Curriculum(max_latent_stage=2)
    got, supervised, n_latents = seq(cur, REC, stage)
    assert got == ids and n_latents == n
    assert supervised == ids[ids.index(EOT) + 1:]  # everything after <eot>, nothing before


def test_coconut_edge_cases():
    # More stages than steps: the latents are not capped by the record (a 1-step record at stage 2 gets 2c).
    assert seq(Curriculum(max_latent_stage=2), ONE_STEP, 2)[0] == Q + [BOT, L, L, EOT, 90, EOS]
    # Beyond the last stage without pad_latent_to_max: min(len(steps), max_latent_stage) * c thoughts.
    assert seq(Curriculum(max_latent_stage=2, pad_latent_to_max=False), ONE_STEP, 3)[0] == Q + [BOT, L, EOT, 90, EOS]
    assert seq(Curriculum(max_latent_stage=2, pad_latent_to_max=True), ONE_STEP, 3)[0] == Q + [BOT, L, L, EOT, 90, EOS]
    # c thoughts per step.
    assert seq(Curriculum(c_thought=2, max_latent_stage=2), REC, 1)[0] == Q + [BOT, L, L, EOT, 20, 30, 31, 32, 90, EOS]


@pytest.mark.parametrize("method,stage,ids,label_start", [
    ("cot", 0, Q + [10, 11, 20, 30, 31, 32, 90, EOS], 3),
    ("no_cot", 0, Q + [90, EOS], 3),
    ("no_thoughts", 1, Q + [20, 30, 31, 32, 90, EOS], 3),   # steps removed, no latents, no markers
    ("no_thoughts", 3, Q + [90, EOS], 3),
    ("pause_as_thought", 1, Q + [BOT, L, EOT, 20, 30, 31, 32, 90, EOS], 6),  # same tokens as coconut
    ("icot", 1, Q + [20, 30, 31, 32, 90, EOS], 3),          # 2 leading CoT tokens per stage
    ("icot", 2, Q + [31, 32, 90, EOS], 3),
    ("icot", 9, Q + [90, EOS], 3),
])
def test_other_methods(method, stage, ids, label_start):
    cur = Curriculum(method=method, max_latent_stage=2, icot_tokens_per_stage=2)
    e = cur.example(REC, cur.stage(stage * cur.epochs_per_stage))
    assert e.ids == ids and e.label_start == label_start


def test_icot_competes_for_best_only_where_every_cot_token_is_gone():
    cur = Curriculum(method="icot", icot_tokens_per_stage=2)
    for stage in range(6):  # REC's 6 CoT tokens are gone from stage 3; ONE_STEP's 1 token from stage 1
        assert cur.is_final(stage, [REC]) == (cur.example(REC, stage).ids == Q + [90, EOS]) == (stage >= 3)
        assert cur.is_final(stage, [REC, ONE_STEP]) == (stage >= 3) and cur.is_final(stage, [ONE_STEP]) == (stage >= 1)
    assert Curriculum(max_latent_stage=2).is_final(3, [REC]) and not Curriculum(max_latent_stage=2).is_final(2, [REC])


def test_schedules():
    assert [Curriculum(epochs_per_stage=5).stage(e) for e in (0, 4, 5, 34, 35, 49)] == [0, 0, 1, 6, 7, 7]
    assert Curriculum(method="icot", epochs_per_stage=5).stage(49) == 9
    assert [Curriculum(method="cot").stage(e) for e in (0, 30)] == [0, 0]
    for method in ("pause", "no_curriculum", "no_cot"):
        assert Curriculum(method=method, max_latent_stage=6).stage(0) == 7  # the final stage from the start
    pause = Curriculum(method="pause", max_latent_stage=2)
    assert pause.example(REC, pause.stage(0)).ids == Q + [BOT, L, L, EOT, 90, EOS]
    assert Curriculum(method="no_curriculum").feedback and not pause.feedback


def test_prompts():
    cur = Curriculum(max_latent_stage=2, c_thought=2)
    assert cur.prompt(REC, 1).ids == Q + [BOT, L, L, EOT]
    assert cur.prompt(REC, 5).ids == Q + [BOT] + [L] * 4 + [EOT]  # min(stage, max_latent_stage) * c
    assert cur.prompt(REC, 5, n_latents=1).ids == Q + [BOT, L, EOT]  # forced
    unpadded = Curriculum(max_latent_stage=2, pad_latent_to_max=False)
    assert unpadded.prompt(ONE_STEP, 5).ids == Q + [BOT, L, EOT]  # capped by the record's steps
    assert Curriculum(method="cot").prompt(REC, 0).ids == Q
    assert Curriculum(method="pause", max_latent_stage=2).prompt(REC, 0).ids == Q + [BOT, L, L, EOT]


def test_stage_mixing_is_seeded():
    cur = Curriculum(uniform_prob=1.0, max_latent_stage=6)
    stages = [cur.example(REC, 5, random.Random(i)).n_latents for i in range(200)]
    assert set(stages) == {0, 1, 2, 3}  # uniform over 0..len(steps)
    assert stages == [cur.example(REC, 5, random.Random(i)).n_latents for i in range(200)]
    assert {Curriculum().example(REC, 2, random.Random(i)).n_latents for i in range(20)} == {2}


def test_unknown_method():
    with pytest.raises(ValueError, match="unknown method 'coconot'"):
        Curriculum(method="coconot")


def test_piecewise_tokenization_equals_whole_string(fixtures):
    """Pieces tokenized apart give the tokens of the whole text: no merge crosses a piece boundary."""
    for name, split in (("gsm8k", "test"), ("prosqa", "valid"), ("prontoqa", "valid")):
        records = data.load_dataset(name, split, data_dir=fixtures / name)
        tokenized, kept = tokenize(records)
        assert len(kept) == len(records)
        for t, r in zip(tokenized, records):
            text = r["question"] + "\n" + "".join(s + "\n" for s in r["steps"]) + "### " + r["answer"]
            assert t.question + [x for s in t.steps for x in s] + t.answer == data.encode(text) + [EOS]


def test_too_long_records_are_skipped_and_counted():
    records = [{"question": "a b c", "steps": ["d"], "answer": "e"}, {"question": "word " * 600, "steps": [], "answer": "x"}]
    tokenized, kept = tokenize(records, block_size=100)
    assert kept == [0] and len(tokenized) == 1


def test_collate():
    cur = Curriculum(max_latent_stage=2)
    examples = [cur.example(REC, 2), cur.example(ONE_STEP, 0), Curriculum(method="cot").example(REC, 0),
                cur.example(Tokenized([5, 6, 7, 8, 9], [[10]], [90, EOS]), 1)]
    b = collate(examples)
    T = b.ids.shape[1]
    # Rows with latents are left-padded so that their first latent is in one column: the latest one.
    assert b.first_latent == 6 and b.max_latents == 2 and b.n_latents.tolist() == [2, 0, 0, 1]
    assert b.starts.tolist() == [2, 0, 0, 0]  # row 0 shifted by 2; latent-free rows not shifted
    assert b.ids[0, 6].item() == L and b.ids[3, 6].item() == L and b.ids[0, :2].tolist() == [EOS, EOS]
    for row, e in enumerate(examples):
        real = b.mask[row].nonzero().flatten()
        assert b.ids[row, real].tolist() == e.ids
        assert b.pos[row, real].tolist() == list(range(len(e.ids)))  # position ids restart after a left pad
        assert b.ends[row].item() == real[-1].item() + 1
    assert b.ids.shape == (4, max(s + len(e.ids) for s, e in zip(b.starts.tolist(), examples)))
    # Each target is the next token of its position, and exactly the supervised tokens are targets.
    flat = b.ids.flatten()
    assert torch.equal(flat[b.target_idx + 1], b.targets)
    assert b.targets.tolist() == [t for e in examples for t in e.ids[e.label_start:]]
    assert (b.target_idx // T).tolist() == [r for r, e in enumerate(examples) for _ in e.ids[e.label_start:]]


def test_collate_prompts_align_ends():
    cot = Curriculum(method="cot")
    prompts = [cot.prompt(REC, 0), cot.prompt(Tokenized([4] * 7, [], [EOS]), 0)]
    b = collate(prompts, align_ends=True)
    assert b.ends.tolist() == [7, 7] and b.starts.tolist() == [4, 0] and b.first_latent == 7
    assert len(b.targets) == 0
