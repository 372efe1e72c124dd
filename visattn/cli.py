"""``visattn`` command line: ``train``, ``study``, ``overlay``, ``evaluate-cams``, ``blocks``, ``bench``, ``config``."""

from __future__ import annotations

import argparse
import inspect
import os
import re
import sys
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from .pipelines.trained import TrainedModel

__all__ = ["main"]


def _first_doc_line(obj: object) -> str:
    doc = inspect.getdoc(obj) or ""
    return doc.splitlines()[0] if doc else ""


def _one_line(err: BaseException) -> str:
    """The message of ``err``; for an error re-raised from a DataLoader worker, the worker's own message (its last
    line) instead of the traceback text that PyTorch wraps around it."""
    text = str(err)
    if "Original Traceback" in text:
        last = text.strip().splitlines()[-1]
        return last.split(": ", 1)[1] if ": " in last else last
    return text


def _user_errors(command: str) -> Callable[[Callable[[argparse.Namespace], int]], Callable[[argparse.Namespace], int]]:
    """Decorate a subcommand so that a bad argument or file ends in ``visattn <command>: <message>`` and exit
    status 2, not a traceback (an exit status 1 stays free for a command's own failure, e.g. maps that differ)."""
    def wrap(handler: Callable[[argparse.Namespace], int]) -> Callable[[argparse.Namespace], int]:
        def run(args: argparse.Namespace) -> int:
            from safetensors import SafetensorError

            from .config.loader import ConfigError
            from .training.loop import TrainingDiverged

            try:
                return handler(args)
            except (ConfigError, ValueError, OSError, TrainingDiverged, SafetensorError) as err:
                if os.environ.get("VISATTN_DEBUG"):  # the traceback, for telling a bug from a bad argument
                    raise
                kind = "config error: " if isinstance(err, ConfigError) else ""
                print(f"visattn {command}: {kind}{_one_line(err)} (VISATTN_DEBUG=1 shows the traceback)",
                      file=sys.stderr)
            return 2
        return run
    return wrap


@_user_errors("blocks")
def _cmd_blocks(args: argparse.Namespace) -> int:
    import torch

    from .blocks.registry import aliases_of, block_inputs, get_block, list_blocks
    from .utils import count_params

    rows = [("name", "class", "aliases", f"params@{args.channels}ch", "timm models", "what it does")]
    for name in list_blocks(inputs=None):
        cls = get_block(name)
        two = block_inputs(name) == 2
        # A block of two inputs is sized here with both of them args.channels wide.
        block = cls(args.channels, *([args.channels] if name == "gated_fusion" else []), device=torch.device("meta"))
        rows.append((name, cls.__name__, ", ".join(aliases_of(name)) or "-", f"{count_params(block):,}",
                     "- (two inputs)" if two else f"resnet{{18,34,50}}_{name}", _first_doc_line(cls)))
    widths = [max(len(r[i]) for r in rows) for i in range(len(rows[0]) - 1)]
    for i, row in enumerate(rows):
        print("  ".join(cell.ljust(w) for cell, w in zip(row, widths, strict=False)) + "  " + row[-1])
        if i == 0:
            print("  ".join("-" * w for w in widths) + "  " + "-" * len(row[-1]))
    print("\nOptions (keyword arguments: timm.create_model(..., attn_kwargs=dict(...)), visattn.inject(..., **kw)):")
    for name in list_blocks(inputs=None):
        print(f"  {name}: {_block_options(get_block(name))}")
    print("\nUse one:  timm.create_model('resnet50_cbam', num_classes=10)   or   visattn.inject(model, 'cbam')")
    return 0


def _block_options(cls: type) -> str:
    """``kw=default`` for a block's keyword options, with the choices of those that take a name from a list."""
    choices = getattr(cls, "CHOICES", {})
    parts = []
    for param in inspect.signature(cls.__init__).parameters.values():
        if param.kind is not param.KEYWORD_ONLY or param.name in ("device", "dtype", "identity_init"):
            continue
        default = param.default if param.default is not param.empty else "required"
        default = getattr(default, "__name__", default)
        text = f"{param.name}={default!r}" if not isinstance(default, str) or param.name in choices else \
            f"{param.name}={default}"
        if param.name in choices:
            text += f" (one of {', '.join(repr(c) for c in choices[param.name])})"
        parts.append(text)
    return ", ".join(parts)


@_user_errors("train")
def _cmd_train(args: argparse.Namespace) -> int:
    from .config import load_train_config
    from .config.loader import format_override
    from .pipelines.train import train
    from .training.loop import TrainingInterrupted
    from .training.run import recorded_run_name

    overrides = [*args.overrides, *(args.set or [])]
    resume = args.resume if args.resume is not None else False
    if isinstance(resume, str) and re.match(r"[A-Za-z_][\w.]*=", resume) and not Path(resume).exists():
        # `--resume loop.epochs=20`: argparse handed the override to --resume's optional PATH.
        overrides, resume = [resume, *overrides], True
    config, config_path = args.config, args.config
    if config is None and isinstance(resume, str):
        # `--resume runs/x`: the run folder's own config.yaml, not the defaults, rebuilds the model it checkpointed,
        # and the run keeps the name it recorded there.
        folder = Path(resume) if Path(resume).is_dir() else Path(resume).parent
        if not (folder / "config.yaml").is_file():
            raise FileNotFoundError(f"{folder} has no config.yaml to rebuild the run from; pass --config")
        config = str(folder / "config.yaml")
        # Folders from before run names were recorded are named after their run.
        name = recorded_run_name(folder) or folder.name
        overrides = [format_override("checkpoint.run_name", name), *overrides]
        print(f"resume: using {config}")
    cfg = load_train_config(config, overrides)
    try:
        train(cfg, config_path=config_path, resume=resume)
    except TrainingInterrupted as err:
        print(f"visattn train: {err}", file=sys.stderr)
        return 130  # the shell's status for Ctrl-C
    return 0


@_user_errors("study")
def _cmd_study(args: argparse.Namespace) -> int:
    from .study import load_study_config, run_study

    study = load_study_config(args.config, args.set or [])
    seeds = [int(s) for s in _split(args.seeds)] if args.seeds else None
    variants = _split(args.variants) if args.variants else None
    try:
        result = run_study(study, [*args.overrides], variants=variants, seeds=seeds, train_runs=not args.report)
    except KeyboardInterrupt as err:
        detail = f" ({err})" if str(err) else ""
        print(f"visattn study: interrupted{detail}; run the same command again to continue where it stopped",
              file=sys.stderr)
        return 130
    if result.busy:
        print(f"{len(result.busy)} run(s) are being trained by another process: {', '.join(result.busy)}; run the "
              f"same command again when they finish to include them")
    if result.records:
        print(f"{len(result.records)} of {result.planned} runs finished; summary: "
              f"{result.results_dir / 'summary.md'}")
        print((result.results_dir / "summary.md").read_text().split("## Runs")[0].rstrip())
    else:
        print(f"none of the {result.planned} runs has finished yet")
    return 0


@_user_errors("config schema")
def _cmd_config_schema(args: argparse.Namespace) -> int:
    import json

    from .config import TrainConfig
    from .config.json_schema import json_schema
    from .files import atomic_write_text
    from .study import StudyConfig

    extends = {"anyOf": [{"type": "string"}, {"type": "array", "items": {"type": "string"}}],
               "description": "config file(s) this one deep-merges over, relative to it"}
    if args.kind == "study":
        schema = json_schema(StudyConfig, title="visattn study config", extra_keys={"extends": extends})
    else:
        schema = json_schema(TrainConfig, title="visattn training config", extra_keys={
            "extends": extends, "_meta": {"type": "object", "description": "written by visattn into run folders"}})
    text = json.dumps(schema, indent=2) + "\n"
    if args.out:
        atomic_write_text(args.out, text)
        print(f"written: {args.out}")
    else:
        print(text, end="")
    return 0


def _split(text: str) -> list[str]:
    return [part.strip() for part in text.split(",") if part.strip()]


def _load_trained(args: argparse.Namespace) -> TrainedModel:
    from .pipelines.trained import load_trained

    if args.pretrained or args.pretrained_path:  # timm's own weights: no source
        from .pipelines.timm_weights import load_timm_pretrained

        if args.model is None:
            raise ValueError("--pretrained loads timm's own weights of the model named by --model NAME")
        if args.source is not None:
            raise ValueError(f"with --pretrained the model comes from timm, so {args.source!r} has no place here")
        return load_timm_pretrained(args.model, file=args.pretrained_path, overrides=args.set or [],
                                    device=args.device)
    if args.source is None:
        raise ValueError("give a run folder or weights file to explain, or --model NAME --pretrained for timm's own")
    return load_trained(args.source, config=args.config, model_name=args.model, overrides=args.set or [],
                        device=args.device)


def _tolerances(text: str) -> list[float]:
    try:
        return [float(v) for v in _split(text)] or [0.0]
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected pixels such as 2 or 0,2, got {text!r}") from None


def _queries(text: str) -> list[tuple[float, float]]:
    try:
        pairs = [tuple(float(v) for v in item.split(",")) for item in text.split(";") if item.strip()]
    except ValueError as err:
        raise ValueError(f"--query must look like 'y,x' or 'y,x;y,x' with fractions in [0, 1], got {text!r}") from err
    if not pairs or any(len(p) != 2 for p in pairs):
        raise ValueError(f"--query must look like 'y,x' or 'y,x;y,x' with fractions in [0, 1], got {text!r}")
    return pairs  # type: ignore[return-value]


def _explain_errors() -> tuple[type[BaseException], ...]:
    # Called in the except clauses, which Python evaluates only once an exception is raised: no import at start-up.
    import pickle

    from safetensors import SafetensorError

    return OSError, ValueError, RuntimeError, SafetensorError, pickle.UnpicklingError


def _cmd_overlay(args: argparse.Namespace) -> int:
    import json

    from .cam import canonical_cam_name
    from .pipelines.overlays import overlay_files
    from .pipelines.samples import validation_samples

    if (args.pretrained or args.pretrained_path) and args.source is not None:  # timm's model: every path an image
        args.images, args.source = [args.source, *args.images], None
    if not args.images and not args.samples:
        print("visattn overlay: give image files / folders / globs, or --samples N for validation images",
              file=sys.stderr)
        return 2
    if args.samples < 0:
        print(f"visattn overlay: --samples must be >= 0, got {args.samples}", file=sys.stderr)
        return 2
    try:
        methods = [canonical_cam_name(m) for m in _split(args.methods)]
        trained = _load_trained(args)
        samples = validation_samples(trained.config.data, args.samples)
        blocks = None if args.blocks.lower() == "none" else _split(args.blocks)
        # Default target layers: the ones the training config chose for its overlays, else the last spatial stage.
        layers = _split(args.layers) if args.layers else trained.config.eval.overlay_layers
        manifest = overlay_files(trained, args.out, sources=args.images, images=samples, methods=methods,
                                 target_layers=layers, block_patterns=blocks, queries=_queries(args.query),
                                 heads=args.heads, alpha=args.alpha, cmap=args.cmap, batch_size=args.batch_size,
                                 image_format=args.format, page_size=args.page_size,
                                 progress=sys.stderr.isatty())
    except _explain_errors() as err:  # missing files, bad weights or arguments: say what, no trace
        print(f"visattn overlay: {err}", file=sys.stderr)
        return 2
    data = json.loads(manifest.read_text())
    print(f"{len(data['images'])} images explained with {', '.join(methods)}; {len(data['errors'])} unreadable")
    for e in data["errors"]:
        print(f"  unreadable: {e['source']}: {e['error']}")
    print(f"gallery: {manifest.parent / 'index.html'}")
    return 0


def _cmd_evaluate_cams(args: argparse.Namespace) -> int:
    from .cam import canonical_cam_name
    from .pipelines.faithfulness import evaluate_cams

    try:
        methods = [canonical_cam_name(m) for m in _split(args.methods)]
        trained = _load_trained(args)
        layers = _split(args.layers) if args.layers else trained.config.eval.overlay_layers
        report = evaluate_cams(trained, methods, num_images=args.num_images, target_layers=layers,
                               out_dir=args.out, sanity=not args.no_sanity, batch_size=args.batch_size,
                               tolerance=args.tolerance,
                               progress=sys.stderr.isatty())
    except _explain_errors() as err:
        print(f"visattn evaluate-cams: {err}", file=sys.stderr)
        return 2
    print(report.table(markdown=args.markdown))
    print(f"written: {Path(args.out) / 'faithfulness.json'}, {Path(args.out) / 'faithfulness.png'}")
    return 0


@_user_errors("bench blocks")
def _cmd_bench_blocks(args: argparse.Namespace) -> int:
    from .bench.blocks import run_block_benchmark

    only = [name.strip() for name in args.only.split(",")] if args.only else None
    run_block_benchmark(device=args.device, quick=args.quick, markdown=args.markdown, only=only)
    return 0


@_user_errors("bench train")
def _cmd_bench_train(args: argparse.Namespace) -> int:
    from .bench.train import run_train_benchmark

    run_train_benchmark(device=args.device, batch_size=args.batch_size, steps=args.steps, amp=args.amp,
                        channels_last=args.channels_last, compile=args.compile,
                        reuse_allocations=args.reuse_allocations)
    return 0


@_user_errors("bench inject")
def _cmd_bench_inject(args: argparse.Namespace) -> int:
    from .bench.inject import run_overhead, summarise_sweep, sweep

    if args.sweep:
        rows = sweep(args.out, block=args.block, pattern=args.filter, size=args.size)
        summarise_sweep(rows)
        return 0
    blocks = tuple(b.strip() for b in args.blocks.split(",") if b.strip())
    run_overhead(blocks, device=args.device, batch_size=args.batch_size, size=args.size, steps=args.steps)
    return 0


def _add_model_args(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("source", nargs="?", default=None,
                        help="run folder (config.yaml + best.safetensors) or a weights file from 'visattn train' "
                             "(e.g. weights/quickstart_resnet18_cbam_shapes.safetensors); none with --pretrained")
    parser.add_argument("--pretrained", action="store_true",
                        help="timm's own pretrained weights of --model NAME, from the local Hugging Face / torch hub "
                             "caches (never downloaded) or --pretrained-path")
    parser.add_argument("--pretrained-path", default=None, metavar="FILE",
                        help="a copy of timm's pretrained weights for --model NAME (implies --pretrained)")
    parser.add_argument("--config", "-c", default=None, help="YAML config, for weights that do not carry theirs")
    parser.add_argument("--model", "-m", default=None,
                        help="timm model name, for plain state_dict weights without a config (timm preprocessing)")
    parser.add_argument("--set", action="append", metavar="key=value", help="config override (repeatable)")
    parser.add_argument("--layers", default=None, metavar="NAME[,NAME]",
                        help="comma-separated target layers or patterns (default: the config's eval.overlay_layers, "
                             "else the last spatial stage)")
    parser.add_argument("--device", default="cpu", help="'cpu' or 'cuda' (default cpu)")


def build_parser() -> argparse.ArgumentParser:
    """The argparse tree of the ``visattn`` command."""
    from .bench.cams import add_arguments as add_cam_bench_arguments
    from .bench.cams import run_from_args as run_cam_bench
    from .cam import DEFAULT_OVERLAY_METHODS, list_cams

    parser = argparse.ArgumentParser(prog="visattn", description=__doc__)
    sub = parser.add_subparsers(dest="command", required=True)

    train = sub.add_parser("train", help="train a classifier from a YAML config",
                           description="Train from a YAML config; later key=value pairs override the file.")
    train.add_argument("--config", "-c", default=None, help="YAML config file (see configs/)")
    train.add_argument("overrides", nargs="*", metavar="key=value", help="overrides, e.g. optim.lr=0.05 loop.epochs=3")
    train.add_argument("--set", action="append", metavar="key=value", help="one override (repeatable)")
    train.add_argument("--resume", nargs="?", const=True, default=None, metavar="PATH",
                       help="continue the run folder this config names, or the given run folder / checkpoint")
    train.set_defaults(func=_cmd_train)

    config = sub.add_parser("config", help="the config files' JSON Schema, for editors")
    config_sub = config.add_subparsers(dest="config_command", required=True)
    schema = config_sub.add_parser("schema", help="print the JSON Schema of training (or study) config files",
                                   description="JSON Schema (draft 2020-12) of the YAML config files: every key, its "
                                               "type, default and description. Point your editor's YAML support at "
                                               "it for completion and checking.")
    schema.add_argument("kind", nargs="?", default="train", choices=["train", "study"])
    schema.add_argument("--out", "-o", default=None, help="write it to this file instead of printing it")
    schema.set_defaults(func=_cmd_config_schema)

    study = sub.add_parser(
        "study", help="train a grid of variants x seeds (resumable) and compare each variant with the baseline",
        description="Train every run of a study file (configs/study/), one run folder each, skipping finished runs "
                    "and resuming interrupted ones; then write summary.json, summary.md, accuracy_vs_cost.png and "
                    "curves.png. Several processes may work on one study at once. key=value pairs override every "
                    "run's training config, e.g. data.root=/data/cifar10/train.")
    study.add_argument("--config", "-c", required=True, help="study YAML file (see configs/study/)")
    study.add_argument("overrides", nargs="*", metavar="key=value", help="training-config overrides for every run")
    study.add_argument("--set", action="append", metavar="key=value",
                       help="study-file override, e.g. --set seeds=[0,1] (repeatable)")
    study.add_argument("--variants", default="", metavar="NAME[,NAME]", help="only these variants")
    study.add_argument("--seeds", default="", metavar="S[,S]", help="only these seeds")
    study.add_argument("--report", action="store_true", help="train nothing: summarise the runs finished so far")
    study.set_defaults(func=_cmd_study)

    overlay = sub.add_parser(
        "overlay", help="CAM and attention-block overlays of images, with a gallery",
        description="Explain images with a trained model: overlays per method, a grid per image, manifest.json and an "
                    "offline index.html. Preprocessing is the training config's eval transform.")
    _add_model_args(overlay)
    overlay.add_argument("images", nargs="*", help="image files, folders or glob patterns (any size, JPEG/PNG/WebP/…)")
    overlay.add_argument("--samples", type=int, default=0, metavar="N",
                         help="also explain the first N validation images of the config's data (e.g. built-in shapes)")
    overlay.add_argument("--out", "-o", default="overlays", help="output folder (default ./overlays)")
    overlay.add_argument("--methods", default=",".join(DEFAULT_OVERLAY_METHODS),
                         help=f"comma-separated CAM methods, from: {', '.join(list_cams())}")
    overlay.add_argument("--blocks", default="*",
                         help="module-name patterns of attention blocks whose own maps to show, or 'none'")
    overlay.add_argument("--query", default="0.5,0.5", metavar="Y,X[;Y,X]",
                         help="query pixels (fractions of height, width) for pixel self-attention maps")
    overlay.add_argument("--heads", action="store_true",
                         help="also show each head's map of multi-head self-attention blocks, not only their mean")
    overlay.add_argument("--alpha", type=float, default=0.5, help="heat-map opacity (default 0.5)")
    overlay.add_argument("--cmap", default="jet", help="matplotlib colormap (default jet)")
    overlay.add_argument("--batch-size", type=int, default=16)
    overlay.add_argument("--format", default="png", choices=["png", "jpeg", "webp"],
                         help="full-size image files: png (lossless, default), jpeg or webp (a fraction of the size)")
    overlay.add_argument("--page-size", type=int, default=100, metavar="N", help="images per gallery page")
    overlay.set_defaults(func=_cmd_overlay)

    faith = sub.add_parser(
        "evaluate-cams", help="faithfulness of CAM methods: deletion/insertion, ROAD, pointing game, sanity check",
        description="Score CAM methods on the validation images of a trained model's data (object masks for the "
                    "pointing games come with the built-in shapes data). Writes faithfulness.json and .png.")
    _add_model_args(faith)
    faith.add_argument("--methods", default=",".join(list_cams()),
                       help="comma-separated CAM methods (default: all)")
    faith.add_argument("--num-images", type=int, default=200, help="validation images to score (default 200)")
    faith.add_argument("--out", "-o", default="faithfulness", help="output folder (default ./faithfulness)")
    faith.add_argument("--tolerance", type=_tolerances, default=[0.0], metavar="PX[,PX]",
                       help="comma-separated pointing-game tolerances in pixels, one pointing column each (Zhang et "
                            "al. use 15 px at 224 px, ~2 px at 32 px; e.g. --tolerance 0,2)")
    faith.add_argument("--no-sanity", action="store_true", help="skip the model-randomisation sanity check")
    faith.add_argument("--batch-size", type=int, default=64)
    faith.add_argument("--markdown", action="store_true", help="print the table as Markdown")
    faith.set_defaults(func=_cmd_evaluate_cams)

    blocks = sub.add_parser("blocks", help="list the registered attention blocks")
    blocks.add_argument("--channels", type=int, default=256, help="width used for the parameter count (default 256)")
    blocks.set_defaults(func=_cmd_blocks)

    bench = sub.add_parser("bench", help="benchmarks")
    bench_sub = bench.add_subparsers(dest="bench", required=True)
    bench_blocks = bench_sub.add_parser("blocks", help="time and memory of each block against its timm twin")
    bench_blocks.add_argument("--device", default="cpu", help="'cpu' or 'cuda' (default cpu)")
    bench_blocks.add_argument("--quick", action="store_true", help="fewer repeats and smaller shapes (smoke test)")
    bench_blocks.add_argument("--markdown", action="store_true", help="print the table as Markdown (for the README)")
    bench_blocks.add_argument("--only", default="", help="comma-separated rows, e.g. 'cam,resnet18+cbam'")
    bench_blocks.set_defaults(func=_cmd_bench_blocks)
    bench_cams = bench_sub.add_parser("cams", help="our CAMs vs pytorch-grad-cam: map agreement (1e-4) and img/s")
    add_cam_bench_arguments(bench_cams)
    bench_cams.set_defaults(func=_user_errors("bench cams")(run_cam_bench))
    bench_train = bench_sub.add_parser("train", help="training throughput of ResNet-18 without and with each block")
    bench_train.add_argument("--device", default="cpu", help="'cpu' or 'cuda' (default cpu)")
    bench_train.add_argument("--batch-size", type=int, default=128)
    bench_train.add_argument("--steps", type=int, default=5, help="timed steps per model (after 2 warm-up steps)")
    bench_train.add_argument("--amp", default="none", choices=["none", "bf16", "fp16"])
    bench_train.add_argument("--channels-last", action="store_true")
    bench_train.add_argument("--compile", action="store_true", help="torch.compile each model first")
    bench_train.add_argument("--reuse-allocations", action="store_true",
                             help="CPU: let glibc malloc keep large blocks for reuse, as jemalloc or tcmalloc would")
    bench_train.set_defaults(func=_cmd_bench_train)
    bench_inject = bench_sub.add_parser(
        "inject", help="what a block costs in each CNN family; --sweep: which timm models take one, and why not",
        description="Without --sweep: one model per CNN family (timm and torchvision) gets each block; prints sites, "
                    "+params, +FLOPs and the train-step time against the same model without a block. With --sweep: "
                    "tries inject on every timm model (random weights, no download), one JSON line each in --out "
                    "(a rerun resumes), then counts the models that take a block and the reasons for the rest.")
    bench_inject.add_argument("--sweep", action="store_true", help="try every timm model instead")
    bench_inject.add_argument("--filter", default="*", help="--sweep: model-name pattern (default '*')")
    bench_inject.add_argument("--block", default="cbam", help="--sweep: the block to inject (default cbam)")
    bench_inject.add_argument("--out", default="inject_sweep.jsonl", help="--sweep: the JSON-lines record to write")
    bench_inject.add_argument("--blocks", default="se,cbam,nonlocal", help="comma-separated blocks (default all three)")
    bench_inject.add_argument("--size", type=int, default=64, help="input size in pixels (default 64)")
    bench_inject.add_argument("--batch-size", type=int, default=16)
    bench_inject.add_argument("--steps", type=int, default=3, help="timed train steps per model")
    bench_inject.add_argument("--device", default="cpu", help="'cpu' or 'cuda' (default cpu)")
    bench_inject.set_defaults(func=_cmd_bench_inject)
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    """Entry point of the ``visattn`` console script."""
    parser = build_parser()
    args, extra = parser.parse_known_args(argv)
    # argparse fills `images` from the paths before the first option only; later paths come back as extras.
    if getattr(args, "images", None) is not None and extra and not any(e.startswith("-") for e in extra):
        args.images = [*args.images, *extra]
    elif getattr(args, "overrides", None) is not None and extra and all("=" in e and e[0] != "-" for e in extra):
        args.overrides = [*args.overrides, *extra]  # the same for train's key=value overrides on both sides of options
    elif extra:
        parser.error(f"unrecognized arguments: {' '.join(extra)}")
    return args.func(args)


if __name__ == "__main__":
    sys.exit(main())
