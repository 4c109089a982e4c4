"""Command line: python -m adapt {train,eval,predict,export,params,selfcheck,synth,pretrain} ...

python -m adapt train --task dichotomous --backbone tiny-sam --method parser --data DIR --steps 200 --out runs/x
python -m adapt train --task openvocab --backbone tiny-clip --method hclip --data DIR --out runs/y
python -m adapt eval --adapter runs/x/adapter --data DIR --json
python -m adapt predict --adapter runs/x/adapter --image photo.jpg --out mask.png --all
python -m adapt predict --backbone tiny-clip --image street.png --classes "sky,road,car" --out labels.png
python -m adapt export --adapter runs/x/adapter --zip x.zip [--merged m.safetensors] [--official sam.pth]
python -m adapt export --adapter runs/x/adapter --onnx x-onnx [--push-to-hub USER/REPO]
python -m adapt predict --onnx x-onnx --image photo.jpg --out mask.png
python -m adapt params --backbone sam-vit-b --method parser --option scope=conv --json
python -m adapt selfcheck --json
python -m adapt synth --domain camouflage --n 10 --out data/camouflage
python -m adapt pretrain --backbone tiny-sam --out weights/
"""

from __future__ import annotations

import argparse
import inspect
import json
import sys

# The CLI's --task choices; adapt.tasks.TASKS is the registry (a test keeps the two equal). Not
# imported from there so that `--help` starts without torch.
TASK_NAMES = ["dichotomous", "openvocab", "concept"]


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


def _progress(total: int):
    """An event printer: a tqdm bar for steps, one line for evaluations and the end."""
    from tqdm import tqdm

    from adapt.events import ENDINGS, Eval, Resumed, Step, kind

    bar = tqdm(total=total, unit="step", dynamic_ncols=True, file=sys.stderr)

    def echo(event: dict) -> None:
        name = kind(event)
        if name == Step.type:
            bar.n = event["step"]
            bar.set_postfix(loss=f"{event['loss']:.4f}", lr=f"{event['lr']:.2e}")
            bar.refresh()
        elif name == Resumed.type:
            bar.n = event["step"]
            bar.refresh()
        elif name == Eval.type:
            m = event["metrics"]
            bar.write(
                f"step {event['step']}: {event['model']} on held-out: "
                + ", ".join(f"{k} {v:.4f}" for k, v in m.items() if isinstance(v, float)),
                file=sys.stderr,
            )
        elif name in ENDINGS:
            bar.close()

    return echo


def cmd_train(args) -> int:
    from dataclasses import replace

    from adapt.data import load_dataset
    from adapt.events import EVENTS_NAME
    from adapt.pipeline import train_adapter, warm_start
    from adapt.preflight import default_task_options, eval_every, fit_to_plan, memory_plan
    from adapt.train import TrainConfig

    if args.plan:
        return _print_plan(args)
    if not args.data or not args.out:
        raise ValueError(
            "train needs --data (a dataset folder or zip) and --out (the run folder); --plan needs neither"
        )
    given = {k: v for k, v in {"task": args.task, "backbone": args.backbone, "method": args.method}.items() if v}
    if args.init_adapter:  # the adapter decides what was not given (and refuses what disagrees)
        if args.option:
            raise ValueError("--option cannot be combined with --init-adapter: the adapter's method options are kept")
        cfg = warm_start(TrainConfig(**given), args.init_adapter, explicit=set(given))
    else:
        cfg = TrainConfig(
            task=args.task or "dichotomous", backbone=args.backbone or "tiny-sam", method=args.method or "parser"
        )
    dataset = load_dataset(args.data, task=cfg.task)
    cfg = replace(
        cfg,
        checkpoint=args.checkpoint or cfg.checkpoint,
        method_options=_parse_options(args.option) if args.option else cfg.method_options,
        task_options=default_task_options(
            cfg.task, prompt=args.prompt, phrase=args.phrase, hard_negatives=False if args.no_hard_negatives else None
        ),
        steps=args.steps,
        batch_size=args.batch_size,
        lr=args.lr,
        head_lr=args.head_lr,
        seed=args.seed,
        eval_every=args.eval_every if args.eval_every is not None else eval_every(args.steps, args.validation),
        device=args.device,
        accumulate=args.accumulate,
        checkpointing=args.checkpointing,
        attention=args.attention,
        embedding_cache=args.embedding_cache,
        cache_views=args.cache_views,
        compile=args.compile,
        precision=args.precision,
        validation=args.validation,
        patience=args.patience,
    )
    plan = memory_plan(cfg, args.memory_budget, gpus=args.gpus)
    if plan is not None:
        cfg = fit_to_plan(cfg, plan)
        print(f"memory plan: {plan.describe()}", file=sys.stderr)
    if args.gpus > 1:  # data parallel, one process per GPU (adapt.distributed); rank 0 reports
        print(f"training on {args.gpus} processes (data parallel); events in {args.out}/{EVENTS_NAME}", file=sys.stderr)
    summary = train_adapter(
        cfg,
        dataset,
        args.out,
        holdout=args.holdout,
        source=str(args.data),
        resume=args.resume,
        echo=_progress(args.steps) if args.gpus == 1 else None,
        gpus=args.gpus,
    )
    if summary["status"] != "done":
        print(f"training {summary['status']} at step {summary['step']}; resume with --resume", file=sys.stderr)
        return 1
    adapter = summary["adapter"]
    report = {
        "adapter": str(adapter),
        "frozen": summary["frozen"],
        "adapted": summary["adapted"],
        "counts": summary["counts"],
        "seconds": summary["seconds"],
    }
    if summary.get("best_step") is not None:
        report["best_step"] = summary["best_step"]
    report.update({k: summary[k] for k in ("did_it_forget", "forgetting_warning") if k in summary})
    if summary.get("warning"):
        report["warning"] = summary["warning"]
        print(f"warning: {summary['warning']}", file=sys.stderr)
    print(json.dumps(report, indent=1) if args.json else _side_by_side(summary["frozen"], summary["adapted"], adapter))
    if not args.json:
        if "did_it_forget" in summary:  # concept segmentation (SAM 3)
            print(f"\ndid it forget? {summary['did_it_forget']}\nforgetting: {summary['forgetting_warning']}")
        if summary.get("warning"):
            print(f"\nwarning: {summary['warning']}")
    return 0


def _print_plan(args) -> int:
    """train --plan: what the planner would choose, without a dataset or a run folder. Without a
    GPU here, the plan is for one (bf16, unless --precision says otherwise)."""
    import torch

    from adapt.preflight import memory_plan
    from adapt.train import TrainConfig

    precision, gpu = args.precision, torch.cuda.is_available()
    if precision == "auto" and not gpu:
        precision = "bf16"
        print("no GPU here: planning for a GPU with bf16 autocast (--precision fp16 for a T4 or V100)", file=sys.stderr)
    cfg = TrainConfig(
        task=args.task or "dichotomous",
        backbone=args.backbone or "tiny-sam",
        method=args.method or "parser",
        method_options=_parse_options(args.option),
        batch_size=args.batch_size,
        device=args.device,
        precision=precision,
        attention=args.attention,
    )
    plan = memory_plan(cfg, args.memory_budget, gpus=args.gpus, for_gpu=not gpu and args.device != "cpu")
    if plan is None:
        print("no GPU here and no --memory-budget: give one, e.g. --memory-budget 24GB")
        return 2
    print(plan.describe())
    return 0 if plan.fits else 1


def _side_by_side(frozen: dict | None, adapted: dict | None, adapter=None) -> str:
    lines = [f"adapter written to {adapter}"] if adapter else []
    if frozen and adapted:
        lines.append(f"{'held-out metric':<16}{'frozen':>10}{'adapted':>10}")
        for k in frozen:  # a class absent from both predictions has no IoU on one side
            if isinstance(frozen[k], float) and isinstance(adapted.get(k), float):
                lines.append(f"{k:<16}{frozen[k]:>10.4f}{adapted[k]:>10.4f}")
    return "\n".join(lines)


def cmd_eval(args) -> int:
    from adapt.data import load_dataset
    from adapt.export import read_adapter
    from adapt.pipeline import evaluate_adapter

    cfg, _ = read_adapter(args.adapter)
    dataset = load_dataset(args.data, task=cfg.get("task") or args.task or "dichotomous")
    result = evaluate_adapter(
        args.adapter,
        dataset,
        task=args.task,
        checkpoint=args.checkpoint,
        **({"prompt": args.prompt} if args.prompt else {}),
    )
    print(json.dumps(result) if args.json else _side_by_side(result["frozen"], result["adapted"]))
    return 0


def cmd_predict(args) -> int:
    from adapt.data import load_image
    from adapt.pipeline import inference_task
    from adapt.render import write_outputs
    from adapt.tasks.dichotomous import parse_points

    if sum(map(bool, (args.adapter, args.backbone, args.onnx))) != 1:
        raise ValueError(
            "give one of --adapter DIR, --onnx DIR (an ONNX export), or --backbone NAME (the frozen model)"
        )
    if bool(args.image) == bool(args.images):
        raise ValueError("give --image FILE (one image) or --images DIR_OR_ZIP (a batch)")
    if args.onnx:
        from adapt.onnx_graphs import load_onnx

        task = load_onnx(args.onnx)
    else:
        task, _ = inference_task(args.adapter, args.backbone, args.task, args.checkpoint)
    if args.adapter and args.task and args.task != task.name:
        raise ValueError(f"the adapter was trained for the {task.name} task, not {args.task}")
    classes = [c.strip() for c in args.classes.split(",") if c.strip()] if args.classes else None
    if args.images:
        return _predict_images(args, task, classes)
    image = load_image(args.image)
    request = {
        "box": [float(v) for v in args.box.split(",")] if args.box else None,
        "points": parse_points(args.points),
        "classes": classes,
        "refine": args.refine,
        "text": args.text,
    }
    if args.text is not None and "text" not in inspect.signature(task.predict_outputs).parameters:
        raise ValueError(f"--text is a prompt of SAM 3's dichotomous and concept tasks, not of the {task.name} task")
    outputs = task.predict_outputs(image, **{k: v for k, v in request.items() if v is not None})
    written = write_outputs(outputs if args.all else {"main": outputs["main"]}, args.out)
    h, w = outputs["main"].shape[:2]
    for path in written:
        print(f"wrote {path} ({w}x{h})")
    return 0


def _predict_images(args, task, classes) -> int:
    """predict --images: the batch path (adapt.batch), with a progress bar."""
    from tqdm import tqdm

    from adapt.batch import FAILED, SCORES, label_images

    bar = tqdm(unit="image", dynamic_ncols=True, file=sys.stderr)

    def progress(done, total, name):
        bar.total = total
        bar.n = done
        bar.set_postfix_str(name[-40:], refresh=False)
        bar.refresh()

    try:
        report = label_images(
            task,
            args.images,
            args.out,
            classes=classes,
            batch_size=args.batch_size,
            resume=args.resume,
            soft=args.soft,
            cutout=args.cutout,
            model=args.adapter or args.backbone or args.onnx,
            progress=progress,
        )
    finally:
        bar.close()
    r = report.as_dict()
    print(
        f"{r['written']} image(s) labelled, {r['skipped']} already done, {r['failed']} failed, in {r['seconds']:.1f} s "
        f"-> {args.out} (masks/, {SCORES} most uncertain first, annotations.json)"
    )
    for f in report.failed:
        print(f"failed: {f['file']}: {f['error']} (listed in {FAILED})")
    if args.labelstudio is not None:
        from adapt.batch import write_labelstudio

        path = write_labelstudio(args.out, args.labelstudio)
        print(f"Label Studio import file (predictions, most uncertain first): {path}")
    return 0


def cmd_export(args) -> int:
    from adapt.export import save_merged, zip_adapter
    from adapt.official import save_official

    wanted = [args.zip, args.merged, args.official, args.onnx, args.push_to_hub]
    if not any(wanted):
        raise ValueError("export needs one or more of --zip, --merged, --official, --onnx, --push-to-hub")
    if args.zip:
        print(f"wrote {zip_adapter(args.adapter, args.zip)}")
    if args.merged:
        print(f"wrote {save_merged(args.adapter, args.merged, checkpoint=args.checkpoint)}")
    if args.official:
        files, how = save_official(args.adapter, args.official, checkpoint=args.checkpoint)
        print("wrote " + ", ".join(map(str, files)) + "\nload it with:\n" + how)
    if args.onnx:
        from adapt.pipeline import export_onnx

        classes = [c.strip() for c in args.classes.split(",") if c.strip()] if args.classes else None
        out = export_onnx(args.adapter, args.onnx, fp16=args.fp16, classes=classes, checkpoint=args.checkpoint)
        graphs = json.loads((out / "onnx_config.json").read_text())["graphs"]
        print(f"wrote {out}: {', '.join(graphs)} (predict with: python -m adapt predict --onnx {out} --image ...)")
    if args.push_to_hub:
        from adapt.export import push_to_hub

        print(f"pushed to {push_to_hub(args.adapter, args.push_to_hub, private=args.private)}")
    return 0


def cmd_synth(args) -> int:
    from adapt.data.synthetic import make_dataset, write_folder

    out = write_folder(make_dataset(args.domain, n=args.n, size=args.size, seed=args.seed), args.out, task=args.task)
    print(f"wrote {args.n} {args.domain} image/mask pairs to {out}")
    return 0


def cmd_pretrain(args) -> int:
    from adapt.pretrain import main as pretrain_main

    return pretrain_main(args)


def cmd_params(args) -> int:
    from adapt.pipeline import count_params

    info = count_params(args.backbone, args.method, args.task, **_parse_options(args.option))
    if args.json:
        print(json.dumps(info))
    else:
        print(
            f"{args.method} on {args.backbone}: {info['adapter']:,} adapter parameters "
            f"({info['adapter_percent_of_base']}% of the base), {info['trainable']:,} with the trained head"
        )
    return 0


def cmd_selfcheck(args) -> int:
    from adapt.selfcheck import passes, run_all

    results = run_all(steps=args.steps)
    ok = all(passes(r) for r in results)
    if args.json:
        print(json.dumps({"ok": ok, "results": results}, indent=1))
    else:
        for r in results:
            extra = "".join(f"  {k} {r[k]:.2e}" for k in r["method_checks"])
            opts = ",".join(f"{k}={v}" for k, v in r["options"].items())
            print(
                f"{'ok  ' if passes(r) else 'FAIL'} {r['method']:<18} {opts:<24} {r['backbone']:<10} "
                f"step0 {r['step0_max_abs_diff']:.1e}  merge {r['merge_max_abs_diff']:.1e}{extra}"
            )
    return 0 if ok else 1


def _train_parser(sub) -> None:
    """`train`: what is adapted to what (task, backbone, method, data, warm start, memory plan)."""
    p = sub.add_parser("train", help="adapt a backbone to a dataset; writes OUT/adapter")
    p.add_argument("--task", choices=TASK_NAMES, help="default: dichotomous (or the --init-adapter's)")
    p.add_argument("--backbone", help="default: tiny-sam (or the --init-adapter's)")
    p.add_argument("--checkpoint", help="base weights file (default: bundled or official weights)")
    p.add_argument("--method", help="default: parser (or the --init-adapter's)")
    p.add_argument("--option", action="append", metavar="KEY=VALUE", help="method option, repeatable")
    p.add_argument("--data", help="dataset folder or zip")
    p.add_argument(
        "--plan",
        action="store_true",
        help="print the memory plan (micro-batch, accumulation, checkpointing) for --memory-budget or the free "
        "GPU memory, and stop: needs no --data or --out",
    )
    p.add_argument(
        "--memory-budget",
        help="plan the run to fit this much memory, e.g. 16GB (default on a GPU: its free memory)",
    )
    p.add_argument(
        "--init-adapter",
        help="warm start: continue from this adapter (folder or zip) on --data, with its backbone, method and options",
    )
    p.add_argument(
        "--holdout",
        type=float,
        default=None,
        help="held-out fraction, or count if >= 1 (default: the dataset's val/ folder, else 0.3)",
    )
    p.add_argument(
        "--prompt",
        default="box",
        choices=["box", "points", "none", "mixed", "clicks"],
        help="dichotomous: the prompt trained with ('none' = prompt-free; 'clicks' = prompt-free "
        "plus random clicks, so clicks can refine the prompt-free mask)",
    )
    p.add_argument("--phrase", help="concept (SAM 3), binary masks: the phrase that names the object, e.g. 'cell'")
    p.add_argument(
        "--no-hard-negatives",
        action="store_true",
        help="concept: train without absent-class phrases (their only target: 'not here'); on by default "
        "because without them the adapted model stops saying no",
    )
    _schedule_arguments(p)
    p.set_defaults(func=cmd_train)


def _schedule_arguments(p) -> None:
    """`train`: how the run goes (steps, rates, evaluation, memory, devices, output)."""
    from adapt.embedding_cache import DEFAULT_VIEWS

    p.add_argument("--steps", type=int, default=200)
    p.add_argument("--batch-size", type=int, default=2)
    p.add_argument("--lr", type=float, default=1e-3)
    p.add_argument("--head-lr", type=float, default=1e-4)
    p.add_argument(
        "--eval-every",
        type=int,
        default=None,
        help="evaluate every N steps (default: a tenth of the run when there is a validation split, else only "
        "before and after); the best evaluated state is the one saved",
    )
    p.add_argument(
        "--accumulate",
        type=int,
        default=1,
        help="gradient accumulation: each step's --batch-size images in this many micro-batches (less memory)",
    )
    p.add_argument(
        "--precision",
        default="auto",
        choices=["auto", "bf16", "fp16", "fp32"],
        help="autocast precision (auto: bf16 where the GPU has it, fp16 with loss scaling where not, fp32 on CPU)",
    )
    p.add_argument(
        "--checkpointing",
        action="store_true",
        help="activation checkpointing of the encoder blocks: recompute activations in backward (less memory)",
    )
    p.add_argument(
        "--attention",
        default="fused",
        choices=["fused", "eager"],
        help="SAM ViT's attention: fused (exact, no N x N matrix kept; the default) or eager (segment-anything's own)",
    )
    p.add_argument(
        "--no-embedding-cache",
        dest="embedding_cache",
        action="store_false",
        help="with a frozen image encoder (the decoder method), run the encoder every step instead of computing "
        "each image's embedding once",
    )
    p.add_argument(
        "--cache-views",
        type=int,
        default=DEFAULT_VIEWS,
        help=f"with the embedding cache and augmentation: fixed augmented views per training image (default {DEFAULT_VIEWS})",
    )
    p.add_argument(
        "--compile",
        action="store_true",
        help="torch.compile the image encoder (GPU; off by default: the first steps compile, and ZeroGPU forbids it)",
    )
    p.add_argument(
        "--validation",
        type=float,
        default=0.2,
        help="share of the training images kept aside to choose the best checkpoint (default 0.2; 0: keep the last; "
        "none below 5 training images)",
    )
    p.add_argument(
        "--patience", type=int, default=0, help="stop after this many evaluations without a better validation score"
    )
    p.add_argument("--seed", type=int, default=0)
    p.add_argument(
        "--gpus",
        type=int,
        default=1,
        help="data-parallel training on this many GPUs, one process each (gloo on CPU processes when there are none)",
    )
    p.add_argument("--device", default="auto")
    p.add_argument("--out", help="the run folder (events, checkpoint, OUT/adapter)")
    p.add_argument("--resume", action="store_true", help="continue from the checkpoint in OUT")
    p.add_argument("--json", action="store_true")


def _eval_parser(sub) -> None:
    """`eval`: frozen and adapted scores side by side."""
    p = sub.add_parser("eval", help="frozen and adapted scores side by side on a dataset")
    p.add_argument("--adapter", required=True)
    p.add_argument("--data", required=True)
    p.add_argument("--task", choices=TASK_NAMES, help="default: the adapter's task")
    p.add_argument("--prompt", choices=["box", "points", "none", "clicks"])
    p.add_argument("--checkpoint")
    p.add_argument("--json", action="store_true")
    p.set_defaults(func=cmd_eval)


def _predict_parser(sub) -> None:
    """`predict`: one image, or a folder labelled."""
    p = sub.add_parser(
        "predict",
        help="predict one image (--image) or label a folder/zip of them (--images): masks or label maps",
    )
    p.add_argument("--adapter", help="adapter folder or zip, or hf://USER/REPO (default: the frozen --backbone)")
    p.add_argument("--backbone", help="with no adapter: predict with this frozen backbone (zero-shot)")
    p.add_argument("--onnx", help="predict with an ONNX export (export --onnx) in onnxruntime on the CPU")
    p.add_argument("--task", choices=TASK_NAMES, help="default: the adapter's task")
    p.add_argument("--image", help="one image")
    p.add_argument(
        "--images",
        help="a folder or .zip of images to label: writes OUT/masks/, scores.csv (most uncertain first), "
        "annotations.json (COCO), failed.json",
    )
    p.add_argument("--out", required=True, help="--image: the PNG to write; --images: the output folder")
    p.add_argument("--batch-size", type=int, default=4, help="--images: images per encoder call")
    p.add_argument("--resume", action="store_true", help="--images: skip images already written to OUT")
    p.add_argument("--soft", action="store_true", help="--images, dichotomous: also OUT/alpha/ (soft masks)")
    p.add_argument("--cutout", action="store_true", help="--images, dichotomous: also OUT/cutout/ (RGBA)")
    p.add_argument(
        "--labelstudio",
        metavar="PREFIX",
        help="--images: also OUT/labelstudio.json, the masks as Label Studio predictions (most uncertain "
        "first), each task's image at PREFIX + its path in --images (e.g. /data/local-files/?d=shots/)",
    )
    p.add_argument(
        "--all",
        action="store_true",
        help="also write OUT_<name>.png for every other output (alpha, cutout, overlay, legend, ...)",
    )
    p.add_argument(
        "--box",
        help="dichotomous: x0,y0,x1,y1 in image pixels (default: prompt-free); concept: an exemplar box of the phrase",
    )
    p.add_argument("--points", help="dichotomous: clicks 'x,y[,label];...' (label 1 foreground, 0 background)")
    p.add_argument(
        "--refine",
        action=argparse.BooleanOptionalAction,
        default=None,
        help="dichotomous: refine the boundary with high-resolution crops (default: when larger "
        "than the model's input)",
    )
    p.add_argument(
        "--text",
        help="SAM 3 backbones: a phrase; dichotomous: writes the union of its instances' masks, concept: its label map",
    )
    p.add_argument("--classes", help='openvocab, concept: comma-separated class names, e.g. "sky,road,car"')
    p.add_argument("--checkpoint")
    p.set_defaults(func=cmd_predict)


def _export_parser(sub) -> None:
    """`export`: zip, merged, upstream-format and ONNX exports; the Hub."""
    p = sub.add_parser(
        "export",
        help="zip an adapter; write the merged model (ours, or the upstream format), ONNX graphs; push to the Hub",
    )
    p.add_argument("--adapter", required=True, help="adapter folder or zip, or hf://USER/REPO")
    p.add_argument("--zip")
    p.add_argument("--merged", help="write base + adapter merged into one .safetensors")
    p.add_argument(
        "--official",
        help="write the merged model as the upstream checkpoint (segment-anything's / open_clip's state dict, "
        ".pth; CLIP: with its head beside it)",
    )
    p.add_argument("--onnx", help="write ONNX graphs of the merged model into this folder")
    p.add_argument("--fp16", action="store_true", help="--onnx: half-precision graphs (for GPU runtimes)")
    p.add_argument("--classes", help="--onnx, openvocab: the class list baked into the graph (default: the adapter's)")
    p.add_argument("--push-to-hub", metavar="USER/REPO", help="upload the adapter folder to the Hugging Face Hub")
    p.add_argument("--private", action="store_true", help="--push-to-hub: create the repository private")
    p.add_argument("--checkpoint")
    p.set_defaults(func=cmd_export)


def _tool_parsers(sub) -> None:
    """`synth`, `pretrain`, `params`, `selfcheck`: the tools around adaptation."""
    p = sub.add_parser("synth", help="write a synthetic dataset folder (images/ + masks/)")
    p.add_argument("--domain", default="camouflage")
    p.add_argument("--n", type=int, default=10)
    p.add_argument("--size", type=int, default=256)
    p.add_argument("--seed", type=int, default=1)
    p.add_argument("--task", default="dichotomous", choices=TASK_NAMES)
    p.add_argument("--out", required=True)
    p.set_defaults(func=cmd_synth)

    p = sub.add_parser("pretrain", help="pretrain a bundled tiny backbone on synthetic scenes")
    p.add_argument("--backbone", required=True, choices=["tiny-sam", "tiny-clip"])
    p.add_argument("--steps", type=int, default=3000)
    p.add_argument("--batch-size", type=int, default=8)
    p.add_argument("--prompts-per-image", type=int, default=2)
    p.add_argument("--lr", type=float, default=1e-3)
    p.add_argument("--warmup", type=int, default=100)
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--threads", type=int, default=2)
    p.add_argument("--log-every", type=int, default=50)
    p.add_argument("--eval-domains", nargs="*", default=["camouflage", "thin", "grayscale-noise"])
    p.add_argument("--init", help="tiny-clip: start from this checkpoint instead of random init")
    p.add_argument("--dense-weight", type=float, default=1.0, help="tiny-clip: weight of the dense patch loss")
    p.add_argument(
        "--colour-weight", type=float, default=0.0, help="tiny-clip: weight of the dense patch loss on colour names"
    )
    p.add_argument(
        "--object-weight",
        type=float,
        default=0.5,
        help="tiny-clip: share of the dense loss on object patches (the rest on background)",
    )
    p.add_argument("--out", default="weights")
    p.set_defaults(func=cmd_pretrain)

    p = sub.add_parser("params", help="count trainable parameters of a method on a backbone")
    p.add_argument("--backbone", required=True)
    p.add_argument("--method", required=True)
    p.add_argument(
        "--task",
        choices=TASK_NAMES,
        help="the task whose head trains (default: the backbone's; concept: SAM 3's detector)",
    )
    p.add_argument("--option", action="append", metavar="KEY=VALUE", help="method option, repeatable")
    p.add_argument("--json", action="store_true")
    p.set_defaults(func=cmd_params)

    p = sub.add_parser("selfcheck", help="identity, merge and invariance checks of every method")
    p.add_argument("--steps", type=int, default=3)
    p.add_argument("--json", action="store_true")
    p.set_defaults(func=cmd_selfcheck)


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="python -m adapt", description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    sub = parser.add_subparsers(dest="command", required=True)
    for add in (_train_parser, _eval_parser, _predict_parser, _export_parser, _tool_parsers):
        add(sub)
    return parser


def main(argv=None) -> int:
    args = build_parser().parse_args(argv)
    try:
        return args.func(args)
    except (ValueError, FileNotFoundError, RuntimeError) as e:
        print(f"error: {e}", file=sys.stderr)
        return 2


if __name__ == "__main__":
    sys.exit(main())
