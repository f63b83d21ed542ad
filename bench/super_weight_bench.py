"""Super weights of SmolLM2-135M: what the measure stage's outlier observer detects, and what
zeroing each detected weight does to perplexity, against zeroing random weights of the same
magnitude rank elsewhere in the same matrix.

Also scores every layer's down_proj spike candidate (the top contributor to its largest output
element) by zeroing it, which validates the detection criterion: a criterion should flag exactly
the candidates whose zeroing hurts. Perplexity: ``--eval-tokens`` tokens of wiki_en_eval.txt in
windows of ``--ctx``, every position scored, float32 on CPU.

Run: python bench/super_weight_bench.py [--samples 8 --seq-len 512 --eval-tokens 1024 --controls 3]
"""
from __future__ import annotations

import argparse
import math
import os
import random
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

import torch  # noqa: E402

TEXT = Path(__file__).resolve().parents[2] / "shared" / "data" / "text"
HURTS = 2.0   # a candidate "matters" when zeroing it multiplies the perplexity by this much


def detect(src, samples: int, seq_len: int, batch_size: int):
    from llm_quantizer.calibrate import build_calibration, load_documents
    from llm_quantizer.engine import EngineOptions, LayerwiseEngine
    from llm_quantizer.engine.observers.outliers import OutlierObserver

    tok = src.tokenizer()
    ids = build_calibration(load_documents(TEXT / "wiki_en_calib.txt", tokenizer=tok), tok, samples, seq_len,
                            seed=0).input_ids
    obs = OutlierObserver()
    t0 = time.perf_counter()
    LayerwiseEngine(src, EngineOptions(device="cpu", batch_size=batch_size, progress=False, run_head=False)).run(
        ids, [obs])
    return obs, time.perf_counter() - t0


def perplexity(model, windows) -> float:
    nll, n = 0.0, 0
    with torch.no_grad():
        for w in windows.ids.split(2):
            logp = torch.log_softmax(model(input_ids=w, use_cache=False).logits[:, windows.first:-1].float(), -1)
            tgt = w[:, windows.first + 1:]
            nll -= float(logp.gather(-1, tgt[..., None]).sum())
            n += tgt.numel()
    return math.exp(nll / n)


def ppl_zeroed(model, weight: torch.Tensor, coords, windows) -> float:
    """Perplexity with ``weight[r, c] = 0`` for each (r, c) in ``coords``; restored after."""
    saved = [float(weight[r, c]) for r, c in coords]
    with torch.no_grad():
        for r, c in coords:
            weight[r, c] = 0.0
        try:
            return perplexity(model, windows)
        finally:
            for (r, c), v in zip(coords, saved):
                weight[r, c] = v


def magnitude_rank(w: torch.Tensor, row: int, col: int) -> int:
    """1 = the largest |w| of the matrix."""
    return int((w.abs() > abs(float(w[row, col]))).sum()) + 1


def controls(w: torch.Tensor, row: int, col: int, n: int, window: int, seed: int) -> list[tuple[int, int, int]]:
    """``n`` random (row, col, rank) of weights whose magnitude rank is within ``window`` of the
    super weight's, in neither its row nor its column."""
    order = w.abs().flatten().argsort(descending=True)
    r0 = magnitude_rank(w, row, col) - 1
    pool = []
    for k in range(max(0, r0 - window), min(order.numel(), r0 + window + 1)):
        rr, cc = divmod(int(order[k]), w.shape[1])
        if rr != row and cc != col:
            pool.append((rr, cc, k + 1))
    return random.Random(seed).sample(pool, min(n, len(pool)))


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--model", default="smollm2-135m")
    ap.add_argument("--samples", type=int, default=8)
    ap.add_argument("--seq-len", type=int, default=512)
    ap.add_argument("--batch-size", type=int, default=4)
    ap.add_argument("--eval-tokens", type=int, default=1024)
    ap.add_argument("--ctx", type=int, default=512)
    ap.add_argument("--controls", type=int, default=3)
    ap.add_argument("--rank-window", type=int, default=16)
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--no-candidates", action="store_true", help="skip zeroing every layer's spike candidate")
    ap.add_argument("--out", default=str(Path(__file__).parent / "results" / "super_weight_bench.json"))
    args = ap.parse_args(argv)
    from llm_quantizer.engine.skeleton import load_full_model
    from llm_quantizer.io import write_json
    from llm_quantizer.model import open_source
    from llm_quantizer.validate.metrics import eval_windows

    load = " ".join(f"{x:.2f}" for x in os.getloadavg())
    src = open_source(args.model)
    obs, detect_s = detect(src, args.samples, args.seq_len, args.batch_size)
    found = obs.super_weights()
    model = load_full_model(src, "cpu")
    text = (TEXT / "wiki_en_eval.txt").read_text(encoding="utf-8")
    windows = eval_windows(src.tokenizer(), text, ctx=args.ctx, max_tokens=args.eval_tokens, score="all")
    base = perplexity(model, windows)
    down = {d["layer"]: d for d in obs.down}

    def weight_of(layer: int) -> torch.Tensor:
        # detach() shares the parameter's storage: zeroing an entry changes the model
        return model.get_submodule(src.layer_map.layer_prefix(layer) + src.layer_map.linears["down"]).weight.detach()

    print(f"{args.model}: outlier observer on {args.samples} x {args.seq_len} calibration tokens ({detect_s:.1f} s); "
          f"perplexity on {windows.describe()['scored_tokens']} tokens of wiki_en_eval.txt (ctx {args.ctx}); "
          f"load avg {load}")
    print(f"criterion: down_proj spike >= {obs.spike_ratio:g} x median channel and residual growth >= "
          f"{obs.min_growth:g}x at the spike")
    print(f"baseline perplexity {base:.3f}\n")
    rows = []
    print(f"{'layer':>5} {'row':>5} {'col':>5} {'value':>8} {'|w| rank':>8} {'ppl zeroed':>11} {'x base':>7}   "
          f"controls (row, col, rank: ppl)")
    for s in found:
        w = weight_of(s["layer"])
        rank = magnitude_rank(w, s["row"], s["col"])
        ppl = ppl_zeroed(model, w, [(s["row"], s["col"])], windows)
        ctrl = [{"row": r, "col": c, "rank": k, "value": float(w[r, c]),
                 "ppl": ppl_zeroed(model, w, [(r, c)], windows)}
                for r, c, k in controls(w, s["row"], s["col"], args.controls, args.rank_window,
                                        args.seed + s["layer"])]
        others = [{"col": c, "share": sh, "value": float(w[s["row"], c]),
                   "ppl": ppl_zeroed(model, w, [(s["row"], c)], windows)} for c, sh in s["top_cols"][1:]]
        row = {"layer": s["layer"], "row": s["row"], "col": s["col"], "value": float(w[s["row"], s["col"]]),
               "rank": rank, "ppl": ppl, "ratio": ppl / base, "controls": ctrl, "next_contributors": others,
               "spike_ratio": s["spike_ratio"], "residual_growth": s["residual_growth"],
               "spike_share": s["spike_share"]}
        rows.append(row)
        cs = "; ".join(f"({c['row']}, {c['col']}, {c['rank']}: {c['ppl']:.2f})" for c in ctrl)
        print(f"{s['layer']:5d} {s['row']:5d} {s['col']:5d} {row['value']:8.3f} {rank:8d} {ppl:11.3f} "
              f"{ppl / base:7.2f}   {cs}")
        for o in others:
            print(f"{'':5} {'':5} {o['col']:5d} {o['value']:8.3f} {'':8} {o['ppl']:11.3f} {o['ppl'] / base:7.2f}   "
                  f"(next contributor to the spike, share {o['share']:.2f})")
    if not found:
        print("  (none detected)")

    cands = []
    if not args.no_candidates:
        print(f"\nevery layer's down_proj spike candidate (flag: old = spike ratio only, new = + growth; "
              f"'hurts' = zeroing it multiplies ppl by >= {HURTS:g})")
        print(f"{'layer':>5} {'row':>5} {'col':>5} {'value':>8} {'spike':>7} {'share':>6} {'growth':>8} "
              f"{'ppl zeroed':>11} {'x base':>7} old new hurts")
        for layer, d in sorted(down.items()):
            ratio = d["out_max"] / max(d["out_median"], 1e-12)
            ppl = ppl_zeroed(model, weight_of(layer), [(d["row"], d["col"])], windows)
            c = {"layer": layer, "row": d["row"], "col": d["col"], "value": d["weight"], "spike_ratio": ratio,
                 "spike_share": d["spike_share"], "residual_growth": d["residual_growth"], "ppl": ppl,
                 "old": ratio >= obs.spike_ratio, "new": any(s["layer"] == layer for s in found),
                 "hurts": ppl >= HURTS * base}
            cands.append(c)
            yn = {True: "yes", False: "-"}
            print(f"{layer:5d} {d['row']:5d} {d['col']:5d} {d['weight']:8.3f} {ratio:7.1f} {d['spike_share']:6.2f} "
                  f"{d['residual_growth']:8.2f} {ppl:11.3f} {ppl / base:7.2f} {yn[c['old']]:>3} {yn[c['new']]:>3} "
                  f"{yn[c['hurts']]:>5}")
        for crit in ("old", "new"):
            tp = sum(c[crit] and c["hurts"] for c in cands)
            fp = sum(c[crit] and not c["hurts"] for c in cands)
            fn = sum(c["hurts"] and not c[crit] for c in cands)
            print(f"criterion {crit}: {tp} true positives, {fp} false positives, {fn} missed")
    path = write_json(args.out, {"model": args.model, "calibration": [args.samples, args.seq_len],
                                 "eval": windows.describe(), "baseline_ppl": base, "loadavg": load,
                                 "criterion": {"spike_ratio": obs.spike_ratio, "min_growth": obs.min_growth},
                                 "super_weights": rows, "candidates": cands,
                                 "massive_activations": obs.massive})
    print(f"wrote {path}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
