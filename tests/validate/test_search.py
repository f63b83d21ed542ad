import torch

from llm_quantizer.validate import CostMeter, SamplerSettings, choose, search
from llm_quantizer.validate.generations import PromptSet, generate_all, repetition_summary

from .helpers import ScriptedRuntime, looping_fn, wandering_fn

V = 40
PS = PromptSet(["a", "b", "c"], [[1, 2, 3], [4, 5], [6, 7, 8, 9]], frozenset())
GRID = [SamplerSettings(), SamplerSettings(repeat_penalty=1.1), SamplerSettings(repeat_penalty=3.0),
        SamplerSettings(dry_multiplier=1.5), SamplerSettings(temperature=0.3, top_k=1)]


def _costs(rt, grid, n=64):
    ids = torch.randint(0, V, (n,), generator=torch.Generator().manual_seed(0))
    meter = CostMeter(grid, first=n // 2)
    meter(0, ids, rt.logits(ids.tolist()))
    return meter


def test_search_lowers_repetition_of_a_looping_model():
    loop, wander = ScriptedRuntime(looping_fn(V), V), ScriptedRuntime(wandering_fn(V), V)
    original_rate = repetition_summary(generate_all(wander, PS, GRID[0], 40))["rate"]
    before = repetition_summary(generate_all(loop, PS, GRID[0], 40))["rate"]
    assert before > 0.8 and original_rate < 0.3
    meter = _costs(loop, GRID)
    found = search(loop, PS, GRID, meter.results(), meter.plain_ppl, original_rate, 40, tolerance=0.05)
    assert found["before"]["rate"] == before
    rows = found["grid"]
    assert rows[0]["ppl_cost_pct"] == 0.0 and rows[4]["ppl_cost_pct"] == 0.0
    for target in ("llama.cpp", "ollama", "transformers"):
        ch = found["chosen"][target]
        assert ch["index"] not in (0, 1, 4)                   # base, too weak, and the no-op greedy sampler
        assert ch["rate"] < before and target in rows[ch["index"]]["targets"]
    assert found["chosen"]["transformers"]["settings"]["dry_multiplier"] == 0.0


def _row(rate, cost, kept=100.0, temp=0.0, targets=("llama.cpp", "ollama", "transformers")):
    return {"label": f"{rate}/{cost}", "settings": {}, "targets": list(targets), "repetition": {"rate": rate},
            "ppl_cost_pct": cost, "temp_cost_pct": temp, "kept_pct": kept}


def test_choose_rules():
    rows = [_row(0.5, 0.0), _row(0.1, 5.0), _row(0.12, 1.0, targets=("llama.cpp",)), _row(0.1, 0.0, kept=80.0, temp=9.0),
            _row(0.1, 0.0, kept=90.0, temp=20.0)]
    assert choose(rows, 0.1, 0.03, "llama.cpp")["index"] == 4           # zero cost, most kept
    assert choose(rows[:3], 0.1, 0.03, "llama.cpp")["index"] == 2       # least cost among feasible
    assert choose(rows[:3], 0.1, 0.03, "transformers")["index"] == 1    # DRY-like row not expressible
    assert choose(rows, 0.6, 0.0, "ollama")["index"] == 0               # the base already reaches it
    miss = choose(rows[:3], 0.0, 0.0, "ollama")
    assert miss["index"] == 1 and not miss["reached_target"]            # none reaches: lowest rate


def test_search_stops_when_the_base_already_reaches_the_target():
    wander = ScriptedRuntime(wandering_fn(V), V)
    meter = _costs(wander, GRID)
    found = search(wander, PS, GRID, meter.results(), meter.plain_ppl, 1.0, 20)
    assert found["measured"] == 1 and all(c["index"] == 0 for c in found["chosen"].values())
    assert [r["repetition"] is None for r in found["grid"]] == [False, True, True, True, True]
    full = search(wander, PS, GRID, meter.results(), meter.plain_ppl, 1.0, 20, exhaustive=True)
    assert full["measured"] == len(GRID) and full["before"] == found["before"]
