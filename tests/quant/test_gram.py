"""Block upper-triangle Gram updates: the same H as the full product, bit for bit."""
import math

import pytest
import torch

from llm_quantizer.quant.gptq import HessianAccumulator
from llm_quantizer.quant.gram import add_upper_gram, mirror_upper_blocks


@pytest.mark.parametrize("n", [64, 300, 576])
def test_upper_gram_mirrored_equals_full_product(n):
    x = torch.randn(257, n, generator=torch.Generator().manual_seed(n))
    h = torch.zeros(n, n)
    add_upper_gram(h, x)
    mirror_upper_blocks(h)
    assert torch.equal(h, x.T @ x)


@pytest.mark.parametrize("n", [64, 300])
def test_accumulator_equals_running_full_products(n):
    """The reference's running mean (scale H, add the scaled full product) over 3 batches."""
    g = torch.Generator().manual_seed(1)
    batches = [torch.randn(2, 40, n, generator=g) * torch.linspace(0.1, 3, n) for _ in range(3)]
    acc, ref, seen = HessianAccumulator(n), torch.zeros(n, n), 0
    for b in batches:
        acc.add_batch(b)
        ref *= seen / (seen + 2)
        seen += 2
        x = math.sqrt(2 / seen) * b.reshape(-1, n).t()
        ref += x @ x.t()
        assert torch.equal(acc.H, ref)       # read between batches too: mirrored, then updated again
