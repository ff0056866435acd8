"""The side-information probes of issue 23 (``benchmarks/side_information_*.py``): their planning and reading logic
on random logits and a tiny random Llama, so the figures they report mean what their docs say."""

from __future__ import annotations

import itertools
import math
import sys
from pathlib import Path
from types import SimpleNamespace

import pytest

sys.path.insert(0, str(Path(__file__).resolve().parents[2] / "benchmarks"))

torch = pytest.importorskip("torch")

import side_information_adaptive as adaptive  # noqa: E402
import side_information_probe as probe  # noqa: E402


def restricted_argmax(logits, h, bits: int, token: int) -> int:  # noqa: ANN001
    allowed = (h % (1 << bits)) == (h[token] % (1 << bits))
    return int(logits.masked_fill(~allowed, -math.inf).argmax())


def test_bits_needed_is_the_fewest_bits_that_make_the_token_the_restricted_choice() -> None:
    g = torch.Generator().manual_seed(0)
    vocab = 300
    logits = torch.randn(64, vocab, generator=g) * 3
    true = torch.randint(0, vocab, (64,), generator=g)
    h = torch.randperm(vocab, generator=g)
    need = adaptive.bits_needed(logits, true, h)
    assert need == adaptive.bits_needed_sparse(logits, true, h)
    assert len(set(need)) > 2  # several widths, not only the greedy choice
    for row, t, b in zip(logits, true.tolist(), need, strict=True):
        assert restricted_argmax(row, h, b, t) == t
        if b > 0:
            assert restricted_argmax(row, h, b - 1, t) != t


def brute_force_errors(errors: dict[int, list[int]], budget: int) -> int:
    length = len(errors[1])
    best = math.inf
    for count in range(1, budget + 1):
        for choice in itertools.product([0, *adaptive.SPANS], repeat=count):
            i, z, errs = 0, 0, 0
            for n in choice:
                if i >= length:
                    break
                z += 2 if n == 0 else 1
                errs += 0 if n == 0 else errors[n][i]
                i = i + 1 if n == 0 else min(i + n, length)
            if i >= length and z <= budget:
                best = min(best, errs)
    return best


def test_fit_budget_finds_the_fewest_errors_within_the_budget() -> None:
    g = torch.Generator().manual_seed(1)
    for length, budget in [(3, 1), (5, 2), (6, 3), (7, 2), (4, 4)]:
        need = torch.randint(0, 15, (length,), generator=g).tolist()
        errors = adaptive.span_errors(need)
        spans, errs = adaptive.fit_budget(errors, budget)
        assert adaptive.z_count(spans) <= budget
        assert sum(min(n, length - s) if not esc else 1 for s, n, esc in spans) == length
        assert errs == brute_force_errors(errors, budget)
    lossless, errs = adaptive.plan(adaptive.span_errors([14, 0, 3, 13]), 1e6)
    assert errs == 0 and any(esc for _, _, esc in lossless)  # 14 bits: only an escape carries it


def test_closed_loop_writer_predicts_the_readers_errors(tiny_model_dir: Path) -> None:
    """The closed-loop writer's error count is what the free-running reader then gets wrong, token for token."""
    import transformers

    model = transformers.AutoModelForCausalLM.from_pretrained(tiny_model_dir).eval()
    tok = transformers.AutoTokenizer.from_pretrained(tiny_model_dir)
    vocab = len(tok)
    h = torch.randperm(vocab, generator=torch.Generator().manual_seed(0))
    tables = [(b, h % (1 << b)) for b in range(adaptive.PAYLOAD + 1)] + [(adaptive.ESCAPE_BITS, h)]
    run = SimpleNamespace(model=model, start=tok.eos_token_id, h=h, table_of=dict(tables))
    texts = [
        "the cat sat on the mat and the dog ran after the ball in the park",
        "compression of text by models",
    ]
    rows = [tok(t, add_special_tokens=False).input_ids for t in texts]
    for ratio in (2, 4):
        plans, bucket_rows = [], []
        for row in rows:
            with torch.no_grad():
                logits = model(torch.tensor([[run.start, *row]])).logits[0, :-1].float()
            need = adaptive.bits_needed(logits, torch.tensor(row), h)
            budget = math.ceil(len(row) / ratio)
            spans, errs = adaptive.closed_loop_plan(run, row, need, budget, window=16)
            assert adaptive.z_count(spans) <= budget
            bits = [0] * len(row)
            for s, n, esc in spans:
                for j, b in enumerate(
                    ([adaptive.ESCAPE_BITS] if esc else adaptive.allocation(n))[: len(row) - s]
                ):
                    bits[s + j] = b
            plans.append(errs)
            bucket_rows.append((bits, [int(run.table_of[b][t]) for b, t in zip(bits, row, strict=True)]))
        decoded, _ = probe.reconstruct(model, rows, bucket_rows, tables, run.start, batch=2)
        wrong = [sum(a != b for a, b in zip(d, r, strict=True)) for d, r in zip(decoded, rows, strict=True)]
        assert wrong == plans
        if ratio == 4:
            assert sum(wrong) > 0  # a random model at 4x must err: the check above compares real errors
