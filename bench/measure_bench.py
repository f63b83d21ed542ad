"""Wall time and peak RSS of the measure stage's engine on SmolLM2-135M, against one plain
transformers forward pass over the same tokens (the ratio's denominator).

Parts, each in its own subprocess (so each has its own peak RSS); by default the forward pass runs
first and last and the ratios use the mean of the two (the machine is shared: load drifts):
  engine    the streaming engine with every observer (activations + H, importance, outliers,
            per-format probes for the gguf format set)
  noprobes  the same without the probes
  noruntime the engine without the activation-rounding term of the GGUF probes (not by default)
  forward   the full model (``load_full_model``), ``model(ids)`` batch by batch, same batching

Time counts the engine's construction + run (resp. the forward loop); model loading for the
forward pass, imports and tokenization are left out of every part. Per-observer times come from
a timing wrapper around each observer (its hooks included); "layer compute" is the rest.

Run: python bench/measure_bench.py [--samples 64 --seq-len 512 --batch-size 4] [--parts engine,forward]
"""
from __future__ import annotations

import argparse
import json
import os
import resource
import subprocess
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

TEXT = Path(__file__).resolve().parents[2] / "shared" / "data" / "text"
PARTS = ("forward", "engine", "noprobes", "forward")


def _rss_mib() -> float:
    """Peak RSS of this process so far: VmHWM (ru_maxrss would carry the parent's RSS over fork + exec)."""
    with open("/proc/self/status") as f:
        for line in f:
            if line.startswith("VmHWM:"):
                return int(line.split()[1]) / 1024
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024


def _cpu_s() -> float:
    r = resource.getrusage(resource.RUSAGE_SELF)
    return r.ru_utime + r.ru_stime


def _current_rss_mib() -> float:
    with open("/proc/self/statm") as f:
        return int(f.read().split()[1]) * os.sysconf("SC_PAGE_SIZE") / 2**20


def _calibration(src, samples: int, seq_len: int):
    from llm_quantizer.calibrate import build_calibration, load_documents

    tok = src.tokenizer()
    docs = load_documents(TEXT / "wiki_en_calib.txt", tokenizer=tok)
    return build_calibration(docs, tok, samples, seq_len, seed=0).input_ids


class Timed:
    """Wraps an observer and sums the wall time spent in each of its callbacks."""

    def __init__(self, inner):
        self.inner, self.seconds = inner, 0.0
        self.name = inner.name
        self.wants_linear_io = inner.wants_linear_io

    def __getattr__(self, attr):
        fn = getattr(self.inner, attr)
        if attr not in ("layer_start", "linear_io", "batch", "layer_end", "finish"):
            return fn

        def timed(*a, **kw):
            t0 = time.perf_counter()
            try:
                return fn(*a, **kw)
            finally:
                self.seconds += time.perf_counter() - t0
        return timed


def child(part: str, args) -> dict:
    import torch

    from llm_quantizer.model import open_source

    src = open_source(args.model)
    src.config  # noqa: B018  (reads the GGUF metadata once, outside the timing)
    ids = _calibration(src, args.samples, args.seq_len)
    base_rss = _current_rss_mib()
    info = {"part": part, "threads": torch.get_num_threads(), "tokens": int(ids.numel())}
    if part == "forward":
        from llm_quantizer.engine.skeleton import load_full_model

        t0 = time.perf_counter()
        model = load_full_model(src, "cpu")
        info["load_s"] = time.perf_counter() - t0
        t0, c0 = time.perf_counter(), _cpu_s()
        with torch.no_grad():
            for b in torch.split(ids, args.batch_size):
                model(input_ids=b, use_cache=False)
        info["seconds"], info["cpu_s"] = time.perf_counter() - t0, _cpu_s() - c0
    else:
        from llm_quantizer.engine import EngineOptions, LayerwiseEngine
        from llm_quantizer.engine.observers.activations import ActivationStats
        from llm_quantizer.engine.observers.importance import ImportanceObserver
        from llm_quantizer.engine.observers.outliers import OutlierObserver
        from llm_quantizer.engine.observers.probes import ErrorProbe
        from llm_quantizer.measure.run import DEFAULT_FORMATS

        # as run_measurements: GGUF probes also price llama.cpp's activation rounding
        runtime = part == "engine" and args.family == "gguf"
        obs = [ActivationStats(runtime=runtime), ImportanceObserver(), OutlierObserver()]
        if part in ("engine", "noruntime"):
            obs.append(ErrorProbe(DEFAULT_FORMATS[args.family], runtime=runtime))
        timed = [Timed(o) for o in obs]
        t0, c0 = time.perf_counter(), _cpu_s()
        eng = LayerwiseEngine(src, EngineOptions(device="cpu", batch_size=args.batch_size, progress=False,
                                                 low_memory=not args.no_low_memory))
        eng.run(ids, timed)
        info["seconds"], info["cpu_s"] = time.perf_counter() - t0, _cpu_s() - c0
        info["observer_s"] = {t.name: t.seconds for t in timed}
        info["formats"] = DEFAULT_FORMATS[args.family] if part in ("engine", "noruntime") else []
        info["runtime_term"] = runtime
    info["peak_rss_mib"] = _rss_mib()
    info["base_rss_mib"] = base_rss
    return info


def _loadavg() -> str:
    return " ".join(f"{x:.2f}" for x in os.getloadavg())


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--model", default="smollm2-135m")
    ap.add_argument("--samples", type=int, default=64)
    ap.add_argument("--seq-len", type=int, default=512)
    ap.add_argument("--batch-size", type=int, default=4)
    ap.add_argument("--family", default="gguf", choices=("gguf", "int"))
    ap.add_argument("--parts", default=",".join(PARTS))
    ap.add_argument("--omp-wait-policy", default="PASSIVE",
                    help="OMP_WAIT_POLICY of the parts (PASSIVE: libgomp threads sleep instead of spinning at "
                         "barriers; on a shared, oversubscribed machine spinning makes small torch ops ~20x "
                         "slower). 'inherit' keeps this shell's environment")
    ap.add_argument("--no-low-memory", action="store_true", help="EngineOptions(low_memory=False)")
    ap.add_argument("--child", default=None, help=argparse.SUPPRESS)
    ap.add_argument("--out", default=str(Path(__file__).parent / "results" / "measure_bench.json"))
    args = ap.parse_args(argv)
    if args.child:
        print("RESULT " + json.dumps(child(args.child, args)), flush=True)
        return 0
    from llm_quantizer.io import write_json

    rows = []
    for part in args.parts.split(","):
        load_before = _loadavg()
        cmd = [sys.executable, __file__, "--child", part, "--model", args.model, "--samples", str(args.samples),
               "--seq-len", str(args.seq_len), "--batch-size", str(args.batch_size), "--family", args.family]
        cmd += ["--no-low-memory"] if args.no_low_memory else []
        env = dict(os.environ)
        if args.omp_wait_policy != "inherit":
            env["OMP_WAIT_POLICY"] = args.omp_wait_policy
        proc = subprocess.run(cmd, capture_output=True, text=True, env=env)
        line = [ln for ln in proc.stdout.splitlines() if ln.startswith("RESULT ")]
        if proc.returncode or not line:
            sys.stderr.write(proc.stderr[-4000:])
            raise SystemExit(f"part {part} failed (rc {proc.returncode})")
        row = json.loads(line[0][7:])
        row["loadavg_before"], row["loadavg_after"] = load_before, _loadavg()
        rows.append(row)
        print(f"  {part}: {row['seconds']:.1f} s, peak RSS {row['peak_rss_mib']:.0f} MiB "
              f"(load {row['loadavg_after']})", flush=True)
    fwds = [r for r in rows if r["part"] == "forward"]
    fwd = {k: sum(r[k] for r in fwds) / len(fwds) for k in ("seconds", "cpu_s")} if fwds else None
    print(f"\n{args.model}, {args.samples} x {args.seq_len} tokens, batch {args.batch_size}, "
          f"{rows[0]['threads']} torch threads, OMP_WAIT_POLICY={args.omp_wait_policy}")
    print("(x fwd: against the mean of the forward rows; CPU s = user + sys of the part's process)")
    print(f"{'part':9} {'wall s':>8} {'x fwd':>6} {'CPU s':>8} {'x fwd':>6} {'peak RSS MiB':>13} {'above base':>11}  "
          f"load avg (1/5/15 min) before -> after")
    for r in rows:
        ratio = r["seconds"] / fwd["seconds"] if fwd else float("nan")
        cratio = r["cpu_s"] / fwd["cpu_s"] if fwd else float("nan")
        r["ratio_to_forward"], r["cpu_ratio_to_forward"] = ratio, cratio
        print(f"{r['part']:9} {r['seconds']:8.1f} {ratio:6.2f} {r['cpu_s']:8.1f} {cratio:6.2f} "
              f"{r['peak_rss_mib']:13.0f} {r['peak_rss_mib'] - r['base_rss_mib']:11.0f}  "
              f"{r['loadavg_before']} -> {r['loadavg_after']}")
    for r in rows:
        if "observer_s" in r:
            rest = r["seconds"] - sum(r["observer_s"].values())
            parts = ", ".join(f"{k} {v:.1f}" for k, v in r["observer_s"].items())
            print(f"  {r['part']}: layer compute + loading {rest:.1f} s; observers: {parts}")
    path = write_json(args.out, {"model": args.model, "samples": args.samples, "seq_len": args.seq_len,
                                 "batch_size": args.batch_size, "family": args.family, "cpu_count": os.cpu_count(),
                                 "omp_wait_policy": args.omp_wait_policy, "low_memory": not args.no_low_memory,
                                 "rows": rows})
    print(f"wrote {path}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
