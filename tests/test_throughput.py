"""The CPU throughput hooks change how much work a DPO step does, not what it computes."""

from __future__ import annotations

import pytest
import torch
from omegaconf import OmegaConf

from dpo_exp.models import build_model
from dpo_exp.throughput import LengthGroupedPairSampler, compact_lm_head


def _fused_model():
    from trl.trainer.utils import add_fused_lm_head

    model = build_model(
        OmegaConf.create({"tiny": {"n_layer": 1, "n_embd": 32, "n_head": 2, "n_positions": 64}}), seed=0
    ).eval()  # no dropout: two forwards must agree
    add_fused_lm_head(model, outputs=("log_probs", "entropy", "mean_logits", "is_top1"))
    return model


def test_compact_lm_head_same_outputs_and_gradients():
    model = _fused_model()
    torch.manual_seed(0)
    ids = torch.randint(0, 50257, (4, 12))
    attention = torch.ones_like(ids)
    attention[2:, 9:] = 0  # right padding
    labels = ids.masked_fill(attention == 0, -100)
    labels[:, :5] = -100  # prompt positions carry no label

    def run():
        model.zero_grad()
        out = model(input_ids=ids, attention_mask=attention, labels=labels, fused_lm_head=True)
        out.log_probs.sum().backward()
        grads = [p.grad.clone() for p in model.parameters() if p.grad is not None]
        return out, grads

    full, full_grads = run()
    with compact_lm_head():
        compact, compact_grads = run()
    for name in ("log_probs", "entropy", "mean_logits"):
        torch.testing.assert_close(getattr(compact, name), getattr(full, name), rtol=1e-4, atol=1e-4)
    assert torch.equal(compact.is_top1, full.is_top1)
    assert (compact.log_probs[labels[:, 1:] == -100] == 0).all()
    for a, b in zip(compact_grads, full_grads):
        torch.testing.assert_close(a, b, rtol=1e-4, atol=1e-6)


def test_compact_lm_head_scores_fewer_positions(monkeypatch):
    """Inside the block the LM head projects only the labelled positions; outside, TRL's kernel scores all."""
    import trl.trainer.utils as trl_utils

    from dpo_exp.throughput import lm_head

    model = _fused_model()
    ids = torch.randint(0, 50257, (2, 10))
    labels = ids.clone()
    labels[:, :7] = -100
    rows = []
    original = lm_head.full_logits_log_probs

    def spy(hidden, *args):
        rows.append(hidden.shape[0])
        return original(hidden, *args)

    monkeypatch.setattr(lm_head, "full_logits_log_probs", spy)
    kernel = trl_utils._ChunkedLogProbFunction
    model(input_ids=ids, labels=labels, fused_lm_head=True)
    assert rows == []  # outside the block: TRL's own kernel
    with compact_lm_head():
        model(input_ids=ids, labels=labels, fused_lm_head=True)
    assert rows == [2 * 3]
    assert trl_utils._use_triton(torch.device("cpu")) is False  # restored after the block
    assert trl_utils._ChunkedLogProbFunction is kernel


def test_large_batches_fall_back_to_trl_kernel(monkeypatch):
    from dpo_exp.throughput import lm_head

    model = _fused_model()
    ids = torch.randint(0, 50257, (2, 10))
    monkeypatch.setattr(lm_head, "MAX_FULL_LOGITS", 10)
    calls = []
    monkeypatch.setattr(lm_head, "full_logits_log_probs", lambda *a: calls.append(1))
    with compact_lm_head():
        out = model(input_ids=ids, labels=ids, fused_lm_head=True)
    assert calls == [] and out.log_probs.shape == (2, 9)


def _reference_log_probs(hidden, weight, bias, targets, temperature=1.0):
    """The textbook definitions, with autograd: what the LM head's per-token outputs mean."""
    z = (hidden @ weight.t() + bias) / temperature
    log_p = torch.log_softmax(z, -1)
    return {
        "log_probs": log_p.gather(-1, targets[:, None]).squeeze(1),
        "entropy": -(log_p.exp() * log_p).sum(-1),
        "log_sum_sq_probs": torch.log((log_p.exp() ** 2).sum(-1)),
        "mean_logits": z.mean(-1),
        "is_top1": z.argmax(-1) == targets,
    }


@pytest.mark.parametrize("temperature", [1.0, 0.7])  # 1.0: FullLogitsLogProb; 0.7: the plain-autograd path
def test_full_logits_log_probs_match_the_definitions_and_their_gradients(temperature):
    from dpo_exp.throughput import LM_HEAD_OUTPUTS, full_logits_log_probs

    torch.manual_seed(0)
    rows, width, vocab = 70, 16, 300  # more rows than a ROW_BLOCK
    hidden = torch.randn(rows, width, requires_grad=True)
    weight = torch.randn(vocab, width, requires_grad=True)
    bias = torch.randn(vocab, requires_grad=True)
    targets = torch.randint(0, vocab, (rows,))
    targets[:5] = (hidden[:5] @ weight.t() + bias).argmax(-1)  # some rows where the target is the top token
    upstream = torch.randn(rows)

    def grads(log_probs):
        for p in (hidden, weight, bias):
            p.grad = None
        (log_probs * upstream).sum().backward()
        return [p.grad.clone() for p in (hidden, weight, bias)]

    expected = _reference_log_probs(hidden, weight, bias, targets, temperature)
    expected_grads = grads(expected["log_probs"])
    got = dict(
        zip(
            LM_HEAD_OUTPUTS,
            full_logits_log_probs(hidden, weight, bias, targets, temperature, 64, None, 1.0, LM_HEAD_OUTPUTS),
        )
    )
    for name in ("log_probs", "entropy", "log_sum_sq_probs", "mean_logits"):
        torch.testing.assert_close(got[name], expected[name], rtol=1e-4, atol=1e-4)
    assert torch.equal(got["is_top1"], expected["is_top1"]) and got["is_top1"][:5].all()
    for a, b in zip(grads(got["log_probs"]), expected_grads):
        torch.testing.assert_close(a, b, rtol=1e-4, atol=1e-5)
    only = full_logits_log_probs(hidden, weight, bias, targets, temperature, 64, None, 1.0, ("log_probs",))
    assert only[0] is not None and all(x is None for x in only[1:])


def test_full_logits_top1_counts_a_tie_for_the_first_maximum_only():
    from dpo_exp.throughput import FullLogitsLogProb

    hidden = torch.eye(3)
    weight = torch.tensor([[5.0, 1.0, 0.0], [5.0, 1.0, 0.0], [0.0, 0.0, 1.0]])  # tokens 0 and 1: same logit
    targets = torch.tensor([0, 1, 2])  # row 0: first max (top-1); row 1: tied with token 0 (not top-1)
    *_, is_top1 = FullLogitsLogProb.apply(hidden, weight, None, targets, ("log_probs", "is_top1"))
    assert is_top1.tolist() == [True, False, True]


def test_full_logits_backward_runs_once():
    """The backward builds the logits' gradient in place in the saved logits: a second one must fail loudly."""
    from dpo_exp.throughput import FullLogitsLogProb

    hidden = torch.randn(4, 8, requires_grad=True)
    log_probs, *_ = FullLogitsLogProb.apply(
        hidden, torch.randn(20, 8), None, torch.tensor([1, 2, 3, 4]), ("log_probs",)
    )
    log_probs.sum().backward(retain_graph=True)
    with pytest.raises(RuntimeError, match="consumed"):
        log_probs.sum().backward()


def test_length_grouped_sampler_is_a_seeded_permutation_with_less_padding():
    lengths = [((i * 37) % 97) + 3 for i in range(64)]
    sampler = LengthGroupedPairSampler(lengths, batch_size=8, seed=1, mega_batches=8)
    sampler.set_epoch(0)
    first = list(sampler)
    sampler.set_epoch(0)
    assert list(sampler) == first  # same seed and epoch, same order (a resumed run replays its epoch)
    assert list(LengthGroupedPairSampler(lengths, batch_size=8, seed=1, mega_batches=8)) == first
    assert sorted(first) == list(range(64))
    sampler.set_epoch(1)
    assert list(sampler) != first  # the next epoch draws a new order
    assert list(LengthGroupedPairSampler(lengths, batch_size=8, seed=2, mega_batches=8)) != first

    def padding(order):
        batches = [order[i : i + 8] for i in range(0, len(order), 8)]
        return sum(max(lengths[j] for j in b) * len(b) - sum(lengths[j] for j in b) for b in batches)

    torch.manual_seed(1)
    shuffled = torch.randperm(64).tolist()
    assert padding(first) < padding(shuffled) / 4


def test_length_grouped_sampler_remainder_batch_last():
    lengths = [5, 1, 9, 3, 7, 2, 8, 4, 6, 10, 11]
    order = list(LengthGroupedPairSampler(lengths, batch_size=4, mega_batches=2))
    assert sorted(order) == list(range(11))
    full = [order[0:4], order[4:8]]
    assert all(len(b) == 4 for b in full)
    assert len(order[8:]) == 3  # the 3 pairs of the last mega-batch that do not fill a batch


def test_dpo_trainer_same_loss_as_trl_and_logs_trl_metric_names(tmp_path):
    """The project's trainer (CPU LM head, length-grouped batches) gives TRL's loss on a batch and logs TRL's
    metric names at every logging step."""
    from datasets import Dataset
    from trl import DPOTrainer

    from dpo_exp import CONF_DIR
    from dpo_exp.infra.tracking import Tracker
    from dpo_exp.models import offline_gpt2_tokenizer
    from dpo_exp.training.trainer import build_trainer

    trainer_cfg = OmegaConf.load(CONF_DIR / "trainer" / "dpo.yaml")
    trainer_cfg.merge_with(
        {
            "beta": 0.1,
            "learning_rate": 1e-3,
            "num_train_epochs": 1,
            "max_steps": 2,
            "max_length": 48,
            "per_device_train_batch_size": 2,
            "eval_strategy": "no",
            "save_strategy": "no",
            "precompute_ref_log_probs": False,
            "logging_steps": 1,
        }
    )
    cfg = OmegaConf.create(
        {
            "trainer": trainer_cfg,
            "train": OmegaConf.load(CONF_DIR / "config.yaml").train,  # dpo_exp's own settings: group_by_length
            "lora": {"enabled": False},
            "on_nonfinite": "stop",
            "seed": 0,
            "cache_dir": str(tmp_path / "cache"),
        }
    )
    words = ["the", "film", "was", "good", "bad", "long", "short", "dull", "bright"]
    pairs = [
        {
            "prompt": " ".join(words[: 2 + i % 5]),
            "chosen": " " + " ".join(words[i % 3 :][: 3 + i]),
            "rejected": " " + " ".join(words[::-1][: 2 + i % 4]),
        }
        for i in range(8)
    ]
    model = build_model(
        OmegaConf.create({"tiny": {"n_layer": 1, "n_embd": 32, "n_head": 2, "n_positions": 64}}), seed=0
    )
    trainer = build_trainer(
        cfg, model, offline_gpt2_tokenizer(), Dataset.from_list(pairs), None, tmp_path, Tracker(), "fp32", "cpu"
    )
    batch = trainer._prepare_inputs(next(iter(trainer.get_train_dataloader())))
    ours = trainer.compute_loss(trainer.model, batch)
    theirs = DPOTrainer.compute_loss(trainer, trainer.model, batch)  # TRL's own path: its chunked kernel
    torch.testing.assert_close(ours, theirs, rtol=1e-4, atol=1e-5)
    trainer._metrics["train"].clear()

    trainer.train()
    rows = [r for r in trainer.state.log_history if "loss" in r and "train_runtime" not in r]
    assert len(rows) == 2
    names = {
        "loss",
        "rewards/chosen",
        "rewards/rejected",
        "rewards/accuracies",
        "rewards/margins",
        "logps/chosen",
        "logps/rejected",
        "logits/chosen",
        "logits/rejected",
        "entropy",
        "mean_token_accuracy",
        "num_tokens",
    }
    for row in rows:
        assert names <= set(row), names - set(row)
