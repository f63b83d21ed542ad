import math

import numpy as np
import pytest
import torch

from llm_quantizer.validate.sampler import (SamplerSettings, dry_penalties, penalize, penalized_scores,
                                            sample_next, truncate)


def test_penalties_follow_llama_cpp():
    logits = torch.tensor([2.0, -1.0, 0.5, 3.0])
    s = SamplerSettings(repeat_penalty=2.0, frequency_penalty=0.1, presence_penalty=0.3)
    out = penalize(logits, [0, 1, 1, 1], s)          # history: 0, 1, 1, 1 -> counts {0: 1, 1: 3}
    assert out[0] == pytest.approx(2.0 / 2 - 0.1 - 0.3)
    assert out[1] == pytest.approx(-1.0 * 2 - 3 * 0.1 - 0.3)
    assert out[2:].tolist() == [0.5, 3.0]


def test_penalty_window_is_last_n():
    s = SamplerSettings(repeat_penalty=2.0, repeat_last_n=2)
    out = penalize(torch.tensor([4.0, 4.0, 4.0]), [0, 1, 2], s)
    assert out.tolist() == [4.0, 2.0, 2.0]


def _dry_naive(h, s):
    """For every earlier position j, the longest suffix of h that also ends at j-1; token h[j]."""
    h = h[-s.dry_last_n:] if s.dry_last_n > 0 else h
    out = {}
    if len(h) <= s.dry_allowed_length:
        return out
    for j in range(1, len(h)):
        n = 0
        while n < j and h[j - 1 - n] == h[len(h) - 1 - n]:
            n += 1
        if n >= s.dry_allowed_length:
            out[h[j]] = max(out.get(h[j], 0), n)
    return {t: s.dry_multiplier * s.dry_base ** (n - s.dry_allowed_length) for t, n in out.items()}


@pytest.mark.parametrize("seed", range(6))
def test_dry_matches_brute_force(seed):
    rng = np.random.default_rng(seed)
    h = rng.integers(0, 4, size=50).tolist()
    s = SamplerSettings(dry_multiplier=0.8, dry_last_n=40 if seed % 2 else -1)
    got, want = dry_penalties(h, s), _dry_naive(h, s)
    assert got.keys() == want.keys()
    for t in want:
        assert got[t] == pytest.approx(want[t])


def test_dry_example_from_llama_cpp():
    a, b, c, y = 1, 2, 3, 4                                      # "a b c c b c y a b c"
    pen = dry_penalties([a, b, c, c, b, c, y, a, b, c], SamplerSettings(dry_multiplier=1.0, dry_base=2.0))
    assert pen == {c: 2.0 ** 1, y: 2.0 ** 0}                     # c extends "a b c" (3), y extends "b c" (2)


def test_truncation_and_greedy():
    x = torch.log(torch.tensor([0.5, 0.3, 0.15, 0.05]))
    assert torch.isinf(truncate(x, SamplerSettings(temperature=1, top_p=0.7))).tolist() == [False, False, True, True]
    assert torch.isinf(truncate(x, SamplerSettings(temperature=1, min_p=0.4))).tolist() == [False, False, True, True]
    assert torch.isinf(truncate(x, SamplerSettings(temperature=1, top_k=1))).tolist() == [False, True, True, True]
    rng = np.random.default_rng(0)
    assert sample_next(x, [], SamplerSettings(), rng) == 0
    assert sample_next(x, [0], SamplerSettings(repeat_penalty=10.0), rng) == 1


def test_penalized_scores_plain_and_penalized():
    torch.manual_seed(0)
    logits, ids = torch.randn(12, 20), torch.randint(0, 20, (12,)).tolist()
    nll, nll_t, kept = penalized_scores(logits, ids, 5, SamplerSettings())
    want = -torch.log_softmax(logits[5:11].double(), -1).gather(1, torch.tensor(ids[6:])[:, None])[:, 0]
    assert torch.allclose(nll, want) and torch.equal(nll, nll_t) and kept.all()
    s = SamplerSettings(temperature=0.5, repeat_penalty=1.5, min_p=0.5)
    nll2, nll2_t, kept2 = penalized_scores(logits, ids, 5, s)
    row = penalize(logits[7], ids[:8], s)
    assert nll2[2] == pytest.approx(-torch.log_softmax(row.double(), -1)[ids[8]].item())
    assert nll2_t[2] == pytest.approx(-torch.log_softmax(row.double() / 0.5, -1)[ids[8]].item())
    assert kept2[2].item() == bool(row[ids[8]] >= row.max() + math.log(0.5))


def test_targets():
    assert SamplerSettings(repeat_penalty=1.1).targets() == ("llama.cpp", "ollama", "transformers")
    assert SamplerSettings(presence_penalty=0.5).targets() == ("llama.cpp", "ollama")
    assert SamplerSettings(dry_multiplier=0.8).targets() == ("llama.cpp",)
