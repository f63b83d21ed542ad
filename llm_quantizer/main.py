"""The original tool's entry point: ``python -m llm_quantizer.main --model ... --method ...``.

Its flags map onto the same RunConfig as ``llm-quantizer run``.
"""
from __future__ import annotations

import argparse
import sys
from typing import Sequence

from . import cli


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="python -m llm_quantizer.main",
                                description="LLM quantizer (original command line; same as `llm-quantizer run`).")
    cli.add_config_flags(p, model_positional=False)
    p.add_argument("--list-methods", action="store_true", help="list the quantization methods and exit")
    return p


def main(argv: Sequence[str] | None = None) -> int:
    ns = build_parser().parse_args(argv)
    if ns.list_methods:
        return cli.execute(cli._cmd_methods, ns)
    return cli.execute(cli._cmd_run, ns)


if __name__ == "__main__":
    sys.exit(main())
