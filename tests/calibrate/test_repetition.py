import pytest
import torch

from llm_quantizer.calibrate import (
    distinct_n, longest_repeated_span, repeated_ngram_share, repetition_stats)


def test_text_hand_computed():
    # words: the cat sat on the cat sat; 3-grams: 5, unique 4; bigrams: 6, unique 4
    s = repetition_stats("the cat sat on the cat sat")
    assert s.tokens == 7 and s.n == 3
    assert s.repeated_ngram_share == pytest.approx(1 / 5)
    assert s.distinct_1 == pytest.approx(4 / 7) and s.distinct_2 == pytest.approx(4 / 6)
    assert s.longest_repeated_span == 3


def test_token_ids_hand_computed():
    ids = [1, 2, 1, 2, 1, 2]  # 3-grams 121 212 121 212: 2 of 4 repeat; 1212 occurs at 0 and 2
    s = repetition_stats(ids)
    assert s.repeated_ngram_share == pytest.approx(0.5)
    assert s.distinct_1 == pytest.approx(2 / 6) and s.distinct_2 == pytest.approx(2 / 5)
    assert s.longest_repeated_span == 4
    assert repetition_stats(torch.tensor(ids)) == s


def test_no_repetition_and_short_sequences():
    assert repetition_stats([1, 2, 3, 4, 5]).to_dict() == {
        "tokens": 5, "n": 3, "repeated_ngram_share": 0.0, "distinct_1": 1.0, "distinct_2": 1.0,
        "longest_repeated_span": 0}
    assert repeated_ngram_share([1, 1], 3) == 0.0 and distinct_n([], 1) == 0.0
    assert longest_repeated_span([]) == 0 and longest_repeated_span([7]) == 0


def test_overlapping_runs_and_n():
    assert longest_repeated_span("a a a a") == 3
    assert longest_repeated_span([5, 1, 2, 3, 9, 1, 2, 3, 7]) == 3
    assert repeated_ngram_share("a b a b a", n=2) == pytest.approx(2 / 4)
    assert repeated_ngram_share([0] * 101, n=1) == pytest.approx(1 - 1 / 101)
