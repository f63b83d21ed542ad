"""Command line: subcommands over the Python API. Flags map 1:1 onto RunConfig fields."""
from __future__ import annotations

import argparse
import sys
from typing import Callable, Sequence

from . import __version__, api
from .config import RunConfig
from .errors import ConfigError, LLMQuantizerError

_BOOL = "bool"
# (flags, config path, type, help). Every flag's default is "not given", so a --config file
# supplies the rest and explicit flags override it.
CONFIG_FLAGS: list[tuple[tuple[str, ...], str, object, str]] = [
    (("-o", "--output-dir"), "output_dir", str, "output directory"),
    (("--backend", "--method"), "backend", str, "gguf | gptq | awq (llamacpp = gguf)"),
    (("--budget",), "budget", str, "size budget: 3.2GB, 800MiB, 0.3 (fraction), 4.5bpw "
                                   "(none: the uniform --llamacpp-type / --gptq-bits / --awq-bits)"),
    (("--metric",), "metric", str, "layer importance metric (lim, bi, zd)"),
    (("--device",), "device", str, "auto | cpu | cuda[:N]"),
    (("--data",), "calibration.data", "list", "calibration text files or folders"),
    (("--generate-calibration",), "calibration.generate", _BOOL, "generate calibration text with the model"),
    (("--cal-samples",), "calibration.samples", int, "number of calibration sequences"),
    (("--seq-len",), "calibration.seq_len", int, "tokens per calibration sequence"),
    (("--seed",), "calibration.seed", int, "calibration sampling seed"),
    (("--skip-architecture",), "skip_architecture", _BOOL, "skip the architecture analysis"),
    (("--skip-importance",), "skip_importance", _BOOL, "skip the importance analysis"),
    (("--formats",), "plan.formats", "list", "candidate formats for the planner (default: the measured ones)"),
    (("--keep",), "plan.keep", "list", "pin tensors: REGEX=FORMAT (e.g. 'lm_head=Q8_0')"),
    (("--min-embed-bits",), "plan.min_embed_bits", float, "minimum bits per weight for embeddings / lm_head"),
    (("--int-embeddings",), "plan.int_embeddings", str,
     "int plans: auto (quantize embeddings / lm_head only when the budget needs it) | keep (16-bit) | quantize"),
    (("--error-model",), "plan.error_model", str,
     "planner objective weights: local (layer importance) | residual (measured residual transfer) | auto"),
    (("--refine",), "plan.refine", int, "score the N best distinct candidate plans by their real KL divergence "
                                        "on held-out calibration text (fake-quant, one streamed pass each); keep the best"),
    (("--refine-samples",), "plan.refine_samples", int, "held-out sequences for --refine (default 16)"),
    (("--super-weight-min-bits",), "plan.super_weight_min_bits", float,
     "minimum bits per weight of a tensor holding a super weight"),
    (("--llamacpp-type",), "gguf.llamacpp_type", str, "one llama.cpp type for the whole model, e.g. q4_k_m"),
    (("--rounding",), "gguf.rounding", str, "gguf: nearest (llama.cpp) | gptq (our encoders with Hessian "
                                            "error feedback, same per-tensor types)"),
    (("--feedback-act-order",), "gguf.feedback_act_order", "optbool",
     "rounding gptq: act-order over static llama.cpp block params (default on; false: column order)"),
    (("--feedback-refit",), "gguf.feedback_refit", int, "rounding gptq: rounds of fp16 scale/min least-squares refit"),
    (("--feedback-first-token-weight",), "gguf.feedback_first_token_weight", float,
     "rounding gptq: weight of each calibration sequence's first token (attention sink) in the Hessian"),
    (("--feedback-percdamp",), "gguf.feedback_percdamp", float, "rounding gptq: GPTQ damping (share of mean diag H)"),
    (("--gptq-bits",), "gptq.bits", int, "GPTQ bits when no plan is used"),
    (("--gptq-group-size",), "gptq.group_size", int, "GPTQ group size (-1: per channel)"),
    (("--gptq-act-order",), "gptq.act_order", "optbool", "GPTQ activation order with static groups (default on)"),
    (("--no-gptq-act-order",), "gptq.act_order", "false", "GPTQ in column order (same as --gptq-act-order false)"),
    (("--gptq-compute-dtype",), "gptq.compute_dtype", str,
     "GPTQ layer forwards in float32 (default) or bfloat16 (Hessians and solve stay float32)"),
    (("--gptq-checkpoint-format",), "gptq.checkpoint_format", str,
     "compressed-tensors (default, per-layer bits) | gptq (classic quant_method gptq, uniform bits)"),
    (("--awq-bits",), "awq.bits", int, "AWQ bits when no plan is used"),
    (("--awq-group-size",), "awq.group_size", int, "AWQ group size"),
    (("--awq-zero-point",), "awq.zero_point", "optbool", "AWQ zero point (true/false)"),
    (("--awq-checkpoint-format",), "awq.checkpoint_format", str,
     "compressed-tensors (default, per-layer bits) | awq (classic GEMM checkpoint, uniform 4-bit)"),
    (("--skip-validation",), "skip_validation", _BOOL, "run: stop after quantize and report"),
    (("--eval-data",), "validation.eval_data", "list",
     "held-out text for perplexity / KLD (default: builtin:wiki-en:eval, never the calibration text)"),
    (("--eval-tokens",), "validation.eval_tokens", int, "tokens of held-out text to score"),
    (("--eval-ctx",), "validation.ctx", int, "perplexity / KLD window (tokens)"),
    (("--max-new-tokens",), "validation.max_new_tokens", int, "tokens per sample generation"),
    (("--generations",), "validation.generations", "optbool", "sample generations and repetition (true/false)"),
    (("--repetition-search",), "validation.repetition_search", "optbool",
     "search sampler settings that prevent repetition (true/false)"),
]


def _parse_bool(s: str) -> bool:
    v = s.strip().lower()
    if v in ("1", "true", "yes", "on"):
        return True
    if v in ("0", "false", "no", "off"):
        return False
    raise argparse.ArgumentTypeError(f"expected true or false, got {s!r}")


def add_config_flags(p: argparse.ArgumentParser, model_positional: bool = True) -> None:
    if model_positional:
        p.add_argument("model_pos", nargs="?", metavar="MODEL", help="HF directory, .gguf file, example name or hub id")
    p.add_argument("--model", dest="model", default=argparse.SUPPRESS, help="same as MODEL")
    for flags, path, typ, help_ in CONFIG_FLAGS:
        kw: dict = {"dest": path, "default": argparse.SUPPRESS, "help": help_}
        if typ is _BOOL:
            kw["action"] = "store_true"
        elif typ == "false":
            kw["action"] = "store_false"
        elif typ == "optbool":
            kw.update(nargs="?", const=True, type=_parse_bool)
        elif typ == "list":
            kw.update(nargs="+")
        else:
            kw["type"] = typ
        p.add_argument(*flags, **kw)
    p.add_argument("--config", default=None, help="read the run config from this JSON file (flags override it)")
    p.add_argument("--export-config", default=None, metavar="FILE", help="write the resolved config as JSON and exit")
    p.add_argument("-v", "--verbose", action="store_true", help="tracebacks and debug output")
    p.add_argument("--force", action="store_true", help="redo every stage even if its outputs are complete")


def config_from_args(ns: argparse.Namespace) -> RunConfig:
    base = RunConfig.load(ns.config) if getattr(ns, "config", None) else RunConfig()
    overrides = {path: getattr(ns, path) for _, path, _, _ in CONFIG_FLAGS if hasattr(ns, path)}
    if "backend" in overrides and overrides["backend"] == "llamacpp":
        overrides["backend"] = "gguf"
    model = getattr(ns, "model_pos", None) or getattr(ns, "model", None)
    if model:
        overrides["model"] = model
    return base.with_overrides(overrides) if overrides else base


def _cmd_analyze(ns, cfg: RunConfig) -> int:
    if not cfg.model:
        raise ConfigError("no model given (MODEL or --model)")
    res = api.analyze(cfg.model, cfg.output_dir)
    t = res.report["totals"]
    m = res.report["model"]
    print(f"{m['name']}: {m['model_type']}, {m['num_layers']} layers, {t['params']:,} parameters, "
          f"{t['bytes'] / 2**20:.1f} MiB as stored ({t['bits_per_weight']:.2f} bpw), "
          f"embeddings {100 * t['embedding_share']:.1f}%")
    print(f"wrote {res.json_path} and {res.plot_path}")
    return 0


def _cmd_methods(ns, cfg: RunConfig) -> int:
    from .backends import describe_backends

    for b in describe_backends():
        alias = f" (alias: {', '.join(b['aliases'])})" if b["aliases"] else ""
        print(f"{b['name']:<6} {b['description']}{alias}")
    return 0


def _cmd_run(ns, cfg: RunConfig) -> int:
    res = api.run(cfg, force=getattr(ns, "force", False))
    art = res.get("quantize")
    if art is not None:
        print(f"{art.backend}: {art.path} ({art.nbytes / 2**20:.2f} MiB)")
    print(f"outputs in {cfg.output_dir}/ (run.sh reproduces this run)")
    return 0


def _need_model(cfg: RunConfig) -> str:
    if not cfg.model:
        raise ConfigError("no model given (MODEL or --model)")
    return cfg.model


def _cmd_calibrate(ns, cfg: RunConfig) -> int:
    c = cfg.calibration
    calib = api.calibrate(_need_model(cfg), cfg.output_dir, data=c.data, generate=c.generate, samples=c.samples,
                          seq_len=c.seq_len, seed=c.seed, device=cfg.device)
    n, L = calib.input_ids.shape
    print(f"calibration: {n} x {L} tokens -> {cfg.output_dir}/calibration_data/")
    return 0


def _cmd_measure(ns, cfg: RunConfig) -> int:
    res = api.measure(_need_model(cfg), cfg.output_dir, backend=cfg.backend, metric=cfg.metric, device=cfg.device)
    m = res.measurements
    sw = ", ".join(f"layer {s['layer']} [{s['row']}, {s['col']}]" for s in m["super_weights"]) or "none"
    print(f"measured {len(m['tensors'])} tensors x {len(m['formats'])} formats; super weights: {sw}")
    for name, p in res.paths.items():
        print(f"wrote {p}")
    return 0


def _cmd_plan(ns, cfg: RunConfig) -> int:
    if not cfg.budget:
        raise ConfigError("no budget given (--budget 4.5bpw, 0.3, 800MiB, 3.2GB)")
    p = api.plan(cfg.output_dir, cfg.budget, options=cfg.plan, model=cfg.model if cfg.plan.refine > 1 else None,
                 device=cfg.device, log=print)
    t = p.totals
    print(f"plan: {t.bytes / 2**20:.2f} MiB of {t.budget_bytes / 2**20:.2f} MiB budget, {t.bpw:.3f} bpw, "
          f"predicted error {t.predicted_error:.4g} ({'optimal' if t.optimal else f'gap {t.gap:.2%}'})")
    if p.refinement:
        print(f"refined: {p.refinement['chosen']} of {len(p.refinement['candidates'])} candidates (least KLD)")
    print(f"wrote {cfg.output_dir}/quantization_plan/")
    return 0


def _cmd_quantize(ns, cfg: RunConfig) -> int:
    art = api.quantize(_need_model(cfg), cfg.output_dir, backend=cfg.backend, config=cfg)
    print(f"{art.backend}: wrote {art.path} ({art.nbytes / 2**20:.2f} MiB)")
    return 0


def _cmd_validate(ns, cfg: RunConfig) -> int:
    from .validate import format_table

    rep = api.validate(_need_model(cfg), cfg.output_dir, artifacts=getattr(ns, "artifacts", None), config=cfg)
    o = rep["original"]
    print(f"original {o['name']}: ppl {o['ppl']:.4g} on {rep['eval']['scored_tokens']:,} tokens")
    print(format_table(rep["comparison"]))
    print(f"wrote {cfg.output_dir}/validation/")
    return 0


def _cmd_report(ns, cfg: RunConfig) -> int:
    print(f"wrote {api.report(cfg.output_dir)}")
    return 0


COMMANDS: dict[str, tuple[Callable, str]] = {
    "analyze": (_cmd_analyze, "architecture report from headers only"),
    "calibrate": (_cmd_calibrate, "make calibration data from files or the model itself"),
    "measure": (_cmd_measure, "stream calibration data layer by layer and measure"),
    "plan": (_cmd_plan, "choose per-tensor formats for a budget"),
    "quantize": (_cmd_quantize, "write the quantized model with a backend"),
    "validate": (_cmd_validate, "perplexity, KL divergence, generations, repetition"),
    "report": (_cmd_report, "one HTML page of the run"),
    "run": (_cmd_run, "the whole pipeline"),
    "methods": (_cmd_methods, "list the backend registry"),
}


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="llm-quantizer", description="The best quantized model that fits a budget.")
    p.add_argument("--version", action="version", version=f"%(prog)s {__version__}")
    sub = p.add_subparsers(dest="command", metavar="COMMAND")
    sub.required = True
    for name, (_, help_) in COMMANDS.items():
        sp = sub.add_parser(name, help=help_, description=help_)
        add_config_flags(sp, model_positional=name != "methods")
        if name == "validate":
            sp.add_argument("--artifacts", nargs="+", metavar="PATH", default=None,
                            help="quantized models to compare (.gguf files or HF directories; "
                                 "default: OUT/quantized_model)")
    return p


def execute(handler: Callable, ns: argparse.Namespace) -> int:
    """Run a command; user errors become one line on stderr and a non-zero exit."""
    verbose = getattr(ns, "verbose", False)
    try:
        cfg = config_from_args(ns)
        if getattr(ns, "export_config", None):
            cfg.save(ns.export_config)
            print(f"wrote config to {ns.export_config}")
            return 0
        return handler(ns, cfg)
    except LLMQuantizerError as e:
        if verbose:
            raise
        print(f"llm-quantizer: error: {e}", file=sys.stderr)
        return e.exit_code
    except KeyboardInterrupt:
        print("llm-quantizer: interrupted", file=sys.stderr)
        return 130


def main(argv: Sequence[str] | None = None) -> int:
    ns = build_parser().parse_args(argv)
    return execute(COMMANDS[ns.command][0], ns)


if __name__ == "__main__":
    sys.exit(main())
