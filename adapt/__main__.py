"""Command line: python -m adapt {params,selfcheck} ...

    python -m adapt params --backbone sam-vit-b --method parser --option scope=conv --json
    python -m adapt selfcheck --json
"""

from __future__ import annotations

import argparse
import json
import sys


def _parse_options(pairs: list[str]) -> dict:
    """--option key=value pairs; values are read as JSON where they parse (numbers, booleans)."""
    options = {}
    for pair in pairs or []:
        if "=" not in pair:
            raise SystemExit(f"--option expects key=value, got {pair!r}")
        key, value = pair.split("=", 1)
        try:
            options[key] = json.loads(value)
        except json.JSONDecodeError:
            options[key] = value
    return options


def cmd_params(args) -> int:
    import torch

    from adapt.backbones import build_backbone
    from adapt.methods import attach
    from adapt.tasks import attach_task_head

    # Shapes are all a count needs: build on the meta device (no memory, no SVD, instant).
    with torch.device("meta"):
        backbone = build_backbone(args.backbone)
        attach_task_head(backbone)
        handle = attach(backbone, args.method, **_parse_options(args.option))
    info = handle.describe()
    info["adapter_percent_of_base"] = round(100.0 * info["adapter"] / info["base"], 4)
    if args.json:
        print(json.dumps(info))
    else:
        print(f"{args.method} on {args.backbone}: {info['adapter']:,} adapter parameters "
              f"({info['adapter_percent_of_base']}% of the base), {info['trainable']:,} with the trained head")
    return 0


def cmd_selfcheck(args) -> int:
    from adapt.selfcheck import passes, run_all

    results = run_all(steps=args.steps)
    ok = all(passes(r) for r in results)
    if args.json:
        print(json.dumps({"ok": ok, "results": results}, indent=1))
    else:
        for r in results:
            extra = ""
            if "text_he_max_rel_change" in r:
                extra = f"  text HE rel change {r['text_he_max_rel_change']:.2e}, image moved {r['image_weight_rel_change']:.2e}"
            opts = ",".join(f"{k}={v}" for k, v in r["options"].items())
            print(f"{'ok  ' if passes(r) else 'FAIL'} {r['method']:<18} {opts:<16} {r['backbone']:<10} "
                  f"step0 {r['step0_max_abs_diff']:.1e}  merge {r['merge_max_abs_diff']:.1e}{extra}")
    return 0 if ok else 1


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(prog="python -m adapt", description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    sub = parser.add_subparsers(dest="command", required=True)

    p = sub.add_parser("params", help="count trainable parameters of a method on a backbone")
    p.add_argument("--backbone", required=True)
    p.add_argument("--method", required=True)
    p.add_argument("--option", action="append", metavar="KEY=VALUE", help="method option, repeatable")
    p.add_argument("--json", action="store_true")
    p.set_defaults(func=cmd_params)

    p = sub.add_parser("selfcheck", help="identity, merge and invariance checks of every method")
    p.add_argument("--steps", type=int, default=3)
    p.add_argument("--json", action="store_true")
    p.set_defaults(func=cmd_selfcheck)

    args = parser.parse_args(argv)
    try:
        return args.func(args)
    except (ValueError, FileNotFoundError) as e:
        print(f"error: {e}", file=sys.stderr)
        return 2


if __name__ == "__main__":
    sys.exit(main())
