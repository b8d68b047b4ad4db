"""``hf-finetune``: the command line, a thin layer over the Python API.

    hf-finetune train [RECIPE.yaml] [--key value ...]
    hf-finetune predict MODEL IMAGE_OR_FOLDER... [--top-k 5] [--output preds.csv] [--batch-size 32]
    hf-finetune eval MODEL (--train_dir DIR | --dataset_name ID | --train_file F) [--split validation]
    hf-finetune map-labels --model_name_or_path M (--train_dir DIR | --dataset_name ID) [--label_mapping ...]
    hf-finetune push OUTPUT_DIR --repo-id ORG/NAME [--private] [--revision BRANCH] [--commit-message MSG]
    hf-finetune export MODEL_DIR --format onnx [--output DIR] [--quantize int8]
    hf-finetune app MODEL_DIR [--port 7860]
    hf-finetune search RECIPE.yaml --search_space SPACE.yaml [--n_trials N] [--timeout SECONDS]
    hf-finetune lr-find RECIPE.yaml [--key value ...]

Errors a user can fix print one line (``hf-finetune: error: ...``) and exit with status 2, no traceback.
Heavy libraries are imported inside the commands; ``--help`` comes from light tables (:mod:`hf_finetune.cli.help`),
so it answers at once.
"""

from __future__ import annotations

import argparse
import logging
import sys

from hf_finetune.cli.arguments import (
    COMMANDS,
    MODULE_COMMANDS,
    PUSH_DESCRIPTION,
    LightParser,
    add_eval_arguments,
    add_map_labels_arguments,
    add_predict_arguments,
    add_push_arguments,
)
from hf_finetune.cli.help import command_help, wants_help
from hf_finetune.escaping import (  # light: no heavy import before a command runs
    TerminalFormatter,
    terminal_text,
)
from hf_finetune.runtime.log_filters import quiet_known_noise  # light: logging filters only

__all__ = ["main", "build_parser"]


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="hf-finetune",
        description="Fine-tune timm and transformers image classifiers on the Hugging Face stack.",
    )
    sub = parser.add_subparsers(dest="command", metavar="COMMAND")
    for name, help_text in COMMANDS.items():
        sub.add_parser(name, help=help_text, add_help=False)
    return parser


def setup_logging(verbose: bool = True) -> None:
    root = logging.getLogger("hf_finetune")
    ours = [h for h in root.handlers if getattr(h, "_hf_finetune_cli", False)]
    if ours:  # called again in the same process (tests, notebooks): follow the current sys.stdout, without
        ours[0].stream = sys.stdout  # flushing the old one, which may be closed (setStream would flush it)
    elif not root.handlers:
        handler = logging.StreamHandler(sys.stdout)
        handler.setFormatter(TerminalFormatter("%(message)s"))  # labels' control characters shown escaped
        handler._hf_finetune_cli = True
        root.addHandler(handler)
    root.setLevel(logging.INFO if verbose else logging.WARNING)
    root.propagate = False
    # Library progress bars (datasets' split generation, transformers' weight loading) would interleave
    # with our one-line errors on stderr; the Trainer's own progress bar stays.
    import os

    os.environ.setdefault("HF_DATASETS_DISABLE_PROGRESS_BARS", "1")
    os.environ.setdefault("HF_HUB_DISABLE_PROGRESS_BARS", "1")


def _train(argv: list[str]) -> int:
    from hf_finetune.runtime.launch import (
        launch,
        main_machine,
        pop_accelerate_config,
        pop_launch_flags,
        resolve_accelerate_config,
        use_cpu_when_no_gpu,
    )

    accelerate_config, argv = pop_accelerate_config(argv)
    if accelerate_config is not None:
        from hf_finetune.config.parser import parse_train_args
        from hf_finetune.run.output_dir import run_folder

        launch_flags, argv = pop_launch_flags(argv)  # --machine_rank, --main_process_ip, ... --rdzv_timeout
        config = resolve_accelerate_config(accelerate_config)
        parsed = parse_train_args(argv)  # a bad recipe fails here, in one line, before any process starts
        if not main_machine(config, launch_flags):  # machine 0's launcher checks and locks the folder
            return launch(config, argv, accelerate_config, launch_flags)
        with run_folder(*parsed, explicit=parsed.explicit, delegate=True):  # checked and locked for the ranks
            return launch(config, argv, accelerate_config, launch_flags)
    use_cpu_when_no_gpu()
    from hf_finetune.config.parser import parse_train_args
    from hf_finetune.run.train import main as train_main

    parsed = parse_train_args(argv)
    model_args, data_args, training_args = parsed
    try:
        train_main(model_args, data_args, training_args, explicit=parsed.explicit)
    except BaseException:
        _end_process_group(wait=False)  # a failed rank must not wait for ranks that may never arrive
        raise
    _end_process_group(wait=True)
    return 0


def _end_process_group(wait: bool) -> None:
    """Under several processes, shut the process group down before the interpreter exits (after all ranks
    finished, when ``wait``): a rank that exits with its gloo/NCCL threads still running aborts ("terminate
    called without an active exception") while the main rank is still saving."""
    import torch.distributed as dist

    if dist.is_available() and dist.is_initialized():
        try:
            if wait:
                dist.barrier()
        finally:
            dist.destroy_process_group()


def _predict(argv: list[str]) -> int:
    if "--onnx" in argv:  # an ONNX export: parsed and run without importing torch or transformers' models
        return _predict_onnx(argv)
    from hf_finetune.config.parser import CommandParser

    parser = CommandParser(prog="hf-finetune predict", description=COMMANDS["predict"])
    add_predict_arguments(parser)
    args = parser.parse_args(argv)
    from hf_finetune.inference.predict import predict_images, write_predictions

    _check_predictions_output(args.output)  # before any prediction is computed
    records = predict_images(
        args.model,
        args.paths,
        top_k=args.top_k,
        batch_size=args.batch_size,
        device=args.device,
        progress=args.progress,
        strict=args.strict,
        tta=args.tta,
    )
    _show_predictions(records, args.output, write_predictions)
    return 0


def _predict_onnx(argv: list[str]) -> int:
    """``predict --onnx``: the export run by onnxruntime (:mod:`hf_finetune.export.onnx_predict`)."""
    from hf_finetune.errors import ConfigError

    parser = LightParser(prog="hf-finetune predict", description=COMMANDS["predict"])
    add_predict_arguments(parser)
    args = parser.parse_args(argv)
    if args.device is not None or args.tta != "none":
        raise ConfigError(
            "--onnx runs the export on the CPU with onnxruntime, one view per image; leave out --device and --tta"
        )
    _check_predictions_output(args.output)
    from hf_finetune.export.onnx_predict import predict_onnx
    from hf_finetune.inference.predictions import write_predictions

    records = predict_onnx(
        args.model,
        args.paths,
        top_k=args.top_k,
        batch_size=args.batch_size,
        progress=args.progress,
        strict=args.strict,
    )
    _show_predictions(records, args.output, write_predictions)
    return 0


def _check_predictions_output(output: str | None) -> None:
    """``--output``: a writable .csv or .jsonl file name (ConfigError otherwise)."""
    if not output:
        return
    from pathlib import Path

    from hf_finetune.config.path_checks import check_writable_file
    from hf_finetune.errors import ConfigError
    from hf_finetune.inference.predictions import PREDICTION_FORMATS

    check_writable_file(output, "output")
    if Path(output).suffix.lower() not in PREDICTION_FORMATS:
        raise ConfigError(
            f"output: {output} has extension {Path(output).suffix or 'none'!r}; expected one of "
            f"{', '.join(PREDICTION_FORMATS)}"
        )


def _show_predictions(records: list[dict], output: str | None, write) -> None:
    """Write the records to ``output`` with ``write``, or print one line per image."""
    if output:
        write(records, output)
        return
    for record in records:
        preds = "  ".join(f"{p['label']} {p['score']:.4f}" for p in record["predictions"])
        if "labels" in record:  # a multi-label model: the labels at or above their thresholds first
            preds = f"[{', '.join(record['labels'])}]  {preds}"
        print(terminal_text(f"{record['path']}: {preds}"))  # a label's ESC or CR is shown, not run


def _eval(argv: list[str]) -> int:
    from hf_finetune.config.arguments import DataArguments
    from hf_finetune.config.parser import RecipeParser
    from hf_finetune.inference.evaluation import evaluate_model, format_report

    parser = RecipeParser(DataArguments, prog="hf-finetune eval", description=COMMANDS["eval"])
    add_eval_arguments(parser)
    data_args, extra = parser.parse_command(argv)
    from pathlib import Path

    from hf_finetune.config.ranges import check_value

    check_value("batch_size", extra.batch_size, "per_device_eval_batch_size")
    check_value("seed", extra.seed)

    report_dir = extra.report_dir
    if report_dir is None and Path(extra.model).is_dir():
        report_dir = str(Path(extra.model) / f"eval_{extra.split}")
    if report_dir is not None:
        from hf_finetune.config.path_checks import check_writable_dir

        check_writable_dir(report_dir, "report_dir")  # before the model runs
    report = evaluate_model(
        extra.model,
        data_args,
        split=extra.split,
        batch_size=extra.batch_size,
        seed=extra.seed,
        output_dir=report_dir,
        tta=extra.tta,
    )
    print(format_report(report))
    if report_dir:
        from hf_finetune.inference.reports import (
            CONFUSION_MATRIX_NAME,
            MOST_CONFUSED_NAME,
            PRECISION_RECALL_NAME,
            TOP_LOSSES_NAME,
        )

        names = (
            "metrics.json",
            CONFUSION_MATRIX_NAME,
            MOST_CONFUSED_NAME,
            PRECISION_RECALL_NAME,
            TOP_LOSSES_NAME,
        )
        written = [n for n in names if (Path(report_dir) / n).is_file()]
        print(f"report written to {report_dir}: {', '.join(written)}")
    return 0


def _map_labels(argv: list[str]) -> int:
    import json

    from hf_finetune.config.arguments import DataArguments, ModelArguments
    from hf_finetune.config.parser import RecipeParser

    parser = RecipeParser(
        (ModelArguments, DataArguments), prog="hf-finetune map-labels", description=COMMANDS["map-labels"]
    )
    add_map_labels_arguments(parser)
    model_args, data_args, extra = parser.parse_command(argv)
    if extra.output is not None:
        from hf_finetune.config.path_checks import check_writable_file

        check_writable_file(extra.output, "output")  # before any work
    from hf_finetune.data.loading import load_image_dataset
    from hf_finetune.labels.mapping_file import parse_label_mapping
    from hf_finetune.labels.matching import match_labels
    from hf_finetune.models.loading import load_source_config, source_label_names
    from hf_finetune.models.zero_shot import zero_shot_mapping

    data = load_image_dataset(data_args)
    report = zero_shot_mapping(model_args, list(data.labels))  # CLIP/SigLIP: rows from text
    if report is not None:
        summary = (
            f"{len(report.reused)} of {len(data.labels)} target labels start from the text embeddings of their "
            f"names in {len(model_args.zero_shot_templates)} prompt templates (zero-shot head of "
            f"{model_args.model_name_or_path})"
        )
    else:
        config = load_source_config(
            model_args.model_name_or_path,
            model_args.model_revision,
            model_args.cache_dir,
            model_args.trust_remote_code,
        )
        source_labels = source_label_names(config)
        auto, explicit = parse_label_mapping(model_args.label_mapping)
        report = match_labels(list(data.labels), source_labels, explicit, auto)
        summary = (
            f"{len(report.reused)} of {len(data.labels)} target labels start from source rows "
            f"({len(source_labels)} source labels in {model_args.model_name_or_path})"
        )
    print(terminal_text(report.table(), keep_newlines=True))
    print(summary)
    if extra.output:
        from pathlib import Path

        Path(extra.output).parent.mkdir(parents=True, exist_ok=True)
        with open(extra.output, "w", encoding="utf-8") as handle:
            json.dump(report.to_dict(), handle, indent=2)
        print(f"report written to {extra.output}")
    return 0


def _push(argv: list[str]) -> int:
    parser = LightParser(
        prog="hf-finetune push",
        description=PUSH_DESCRIPTION,
    )
    add_push_arguments(parser)
    args = parser.parse_args(argv)
    from hf_finetune.hub.push import push_to_hub
    from hf_finetune.run.lock import check_unlocked

    check_unlocked(args.output_dir, "OUTPUT_DIR")  # a run writing there: the upload would mix two models
    result = push_to_hub(
        args.output_dir,
        args.repo_id,
        private=True if args.private else None,
        revision=args.revision,
        commit_message=args.commit_message,
        space=args.space,
    )
    print(f"pushed {len(result.files)} files to {result.repo_id}@{result.revision}: {result.commit_url}")
    if result.space_id:
        space_files = "app.py, requirements.txt, README.md"
        print(f"pushed the Space {result.space_id} ({space_files}): {result.space_commit_url}")
    return 0


def main(argv: list[str] | None = None) -> int:
    argv = list(sys.argv[1:] if argv is None else argv)
    parser = build_parser()
    if not argv or argv[0] in ("-h", "--help"):
        parser.print_help()
        return 0 if argv else 2
    command, rest = argv[0], argv[1:]
    if command not in COMMANDS:
        from hf_finetune.errors import suggest

        print(
            f"hf-finetune: error: unknown command {command!r}{suggest(command, COMMANDS)}; "
            f"expected one of {', '.join(COMMANDS)}",
            file=sys.stderr,
        )
        return 2
    own_parser = command == "push" or command in MODULE_COMMANDS  # they answer --help themselves
    if not own_parser and wants_help(rest):  # from light tables: no transformers, no torch
        return command_help(command, rest)
    setup_logging()
    quiet_known_noise()
    if not wants_help(rest):  # push --help answers from its own light parser, without transformers
        from transformers.utils import logging as hf_logging

        hf_logging.set_verbosity_warning()
        hf_logging.disable_progress_bar()
    from hf_finetune.errors import HfFinetuneError, TrainingInterrupted

    try:
        handlers = {
            "train": _train,
            "predict": _predict,
            "eval": _eval,
            "map-labels": _map_labels,
            "push": _push,
        }
        if command in MODULE_COMMANDS:  # hf_finetune/cli/<module>.py: its own light parser answers --help
            import importlib

            return importlib.import_module(f"hf_finetune.cli.{MODULE_COMMANDS[command]}").run(rest)
        return handlers[command](rest)
    except HfFinetuneError as err:
        print(f"hf-finetune: error: {terminal_text(_one_line(err))}", file=sys.stderr)
        return 2
    except TrainingInterrupted as err:
        import os
        import shlex

        from hf_finetune.run.output_dir import resume_hint
        from hf_finetune.runtime.launch import COMMAND_ENV

        if os.environ.get("RANK", "0") == "0":
            command = os.environ.get(COMMAND_ENV) or shlex.join(["hf-finetune", command, *rest])
            resume = resume_hint(err.checkpoint, command)  # --resume, or this run's checkpoint by name
            print(f"hf-finetune: {err}; resume with: {command}{resume}", file=sys.stderr)
        return 128 + err.signum
    except KeyboardInterrupt:
        print("hf-finetune: interrupted", file=sys.stderr)
        return 130


def _one_line(err: Exception) -> str:
    """The message of ``err``; for an error raised in a DataLoader worker, which torch re-raises with the
    worker's traceback in its text, the original message alone."""
    text = str(err).strip()
    if "Original Traceback" in text:
        last = text.splitlines()[-1]
        return last.split(": ", 1)[1] if last.startswith("hf_finetune.errors.") else last
    return text


def console_main() -> None:  # pragma: no cover - the console-script wrapper
    sys.exit(main())


if __name__ == "__main__":  # pragma: no cover
    sys.exit(main())
