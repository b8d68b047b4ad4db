"""The model card (``README.md``) of a fine-tuned model, rendered from the files of its output folder.

``render_model_card(output_dir, "ORG/NAME")`` fills ``templates/model_card.md`` through huggingface_hub's
``ModelCard.from_template``:

* metadata (``ModelCardData``): ``base_model`` (when the run started from a Hub id), ``datasets`` (when it
  trained on a Hub dataset), ``pipeline_tag: image-classification``, ``library_name`` (``timm`` for timm-origin
  models, else ``transformers``), tags, and ``model-index`` with the validation accuracy, macro-F1 and top-5
  accuracy (``EvalResult``), and a separate entry for the test split (``dataset.split: test``, metrics named
  ``Test accuracy``, ...) when the run scored one;
* body: what was fine-tuned from what, the recipe, the label-mapping report (which source rows started each
  class), the metrics before (epoch 0) and after fine-tuning and by epoch, the per-class figures, how to use it
  (``pipeline`` and, for timm-origin models, ``timm.create_model``), the limitations.

Everything comes from the files a run writes: ``config.json``, ``recipe.yaml``, ``labels.json``,
``label_mapping.json``, ``eval_results.json``, ``train_results.json``, ``test_results.json``,
``trainer_state.json`` and ``eval_per_class.json`` (or ``eval_validation/metrics.json`` of ``hf-finetune eval``), and it links the images
``training_curves.png`` and ``confusion_matrix.png`` when they are there. A card can therefore be
rendered again at any time, for any repo id, and the same folder always gives the same card.

Text that comes from the run (label names, folder and file names, values of the checkpoint's config and of
the recipe) is escaped where it lands (:mod:`hf_finetune.escaping`): as literal markdown in the text and the
tables (no link, emphasis, table break or HTML such as ``<script>``; ``<``, ``>`` and ``&`` become HTML
entities), as code spans whose backtick fence it cannot close, the recipe in a fenced block longer than any
backtick run in it, and the usage snippets' model reference as a quoted Python string. The template itself
emits no HTML.
"""

from __future__ import annotations

import json
import logging
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import yaml
from huggingface_hub import EvalResult, ModelCard, ModelCardData
from huggingface_hub.utils import HFValidationError, validate_repo_id

from hf_finetune.escaping import code_fence, markdown_code, markdown_text
from hf_finetune.hub import model_card_multi_label as multi
from hf_finetune.hub.model_card_mapping import mapping_section

__all__ = ["CARD_NAME", "PER_CLASS_NAME", "FIGURES", "build_model_card", "render_model_card"]

logger = logging.getLogger(__name__)

TEMPLATE = Path(__file__).resolve().parent / "templates" / "model_card.md"
CARD_NAME = "README.md"
PER_CLASS_NAME = "eval_per_class.json"
MAX_TABLE_ROWS = 100  # per-class rows in the card; the rest stay in eval_per_class.json
MAX_LABELS_SHOWN = 30
#: Images the card links to (relative links: they are uploaded with the folder, see hf_finetune.hub.push).
FIGURES = ("training_curves.png", "confusion_matrix.png", "precision_recall.png")

_METRICS = (  # (eval key, label in the card, model-index type, model-index name, model-index args)
    ("eval_accuracy", "accuracy", "accuracy", "Accuracy", None),
    ("eval_top5_accuracy", "top-5 accuracy", "top_5_accuracy", "Top-5 accuracy", None),
    ("eval_macro_f1", "macro F1", "f1", "Macro F1", {"average": "macro"}),
    ("eval_loss", "loss", None, None, None),
)
# The Trainer's own evaluation keys that are not metrics (left out of the extra metrics' rows)
_TRAINER_KEYS = ("runtime", "samples_per_second", "steps_per_second", "samples", "model_preparation_time")


# ------------------------------------------------------------------------------------------ the run's files
def _read_json(folders: Sequence[Path], name: str) -> Any:
    """``name`` from the first of ``folders`` that has it, or None."""
    path = next((f / name for f in folders if (f / name).is_file()), None)
    if path is None:
        return None
    try:
        return json.loads(path.read_text(encoding="utf-8"))
    except (OSError, ValueError) as err:
        logger.warning("model card: %s is not readable JSON (%s); left out", path, err)
        return None


def _read_recipe(folders: Sequence[Path]) -> dict[str, Any]:
    path = next((f / "recipe.yaml" for f in folders if (f / "recipe.yaml").is_file()), None)
    if path is None:
        return {}
    try:
        recipe = yaml.safe_load(path.read_text(encoding="utf-8"))
    except yaml.YAMLError:
        return {}
    return recipe if isinstance(recipe, dict) else {}


def config_labels(config: dict[str, Any]) -> list[str]:
    """The label names of a ``config.json`` (timm's ``label_names`` or transformers' ``id2label``)."""
    if config.get("label_names"):
        return [str(n) for n in config["label_names"]]
    id2label = config.get("id2label") or {}
    return [str(id2label.get(str(i), id2label.get(i, f"LABEL_{i}"))) for i in range(len(id2label))]


@dataclass
class _Run:
    """What the card is made of, read from an output folder."""

    out: Path
    config: dict[str, Any]
    recipe: dict[str, Any]  # the keys the run was given
    facts: dict[str, Any]  # recipe keys, completed by labels.json (base model, data) for runs from Python
    labels: list[str]
    labels_info: dict[str, Any]
    mapping: dict[str, Any] | None
    results: dict[str, Any]
    train_results: dict[str, Any]
    test_results: dict[str, Any]  # test_results.json: the test split, scored once at the end (or empty)
    state: dict[str, Any]
    per_class: dict[str, Any] | None
    processor: dict[str, Any] = field(default_factory=dict)
    figures: set[str] = field(default_factory=set)  # the report images present beside the card

    @classmethod
    def read(cls, output_dir: Path, extra_dirs: Sequence[Path]) -> _Run:
        folders = [*extra_dirs, output_dir]
        config = _read_json(folders, "config.json") or {}
        recipe = _read_recipe(folders)
        labels_info = _read_json(folders, "labels.json") or {}
        known = {**(labels_info.get("data") or {}), "model_name_or_path": labels_info.get("base_model")}
        facts = {k: v for k, v in known.items() if v} | {k: v for k, v in recipe.items() if v is not None}
        return cls(
            out=output_dir,
            config=config,
            recipe=recipe,
            facts=facts,
            labels=[str(n) for n in (labels_info.get("labels") or config_labels(config))],
            labels_info=labels_info,
            mapping=_read_json(folders, "label_mapping.json"),
            results=_read_json(folders, "eval_results.json") or _read_json(folders, "all_results.json") or {},
            train_results=_read_json(folders, "train_results.json") or {},
            test_results=_read_json(folders, "test_results.json") or {},
            state=_read_json(folders, "trainer_state.json") or {},
            per_class=_read_json(folders, PER_CLASS_NAME)
            or _read_json(folders, "eval_validation/metrics.json"),
            processor=_read_json(folders, "preprocessor_config.json") or {},
            figures={name for name in FIGURES if any((f / name).is_file() for f in folders)},
        )

    @property
    def is_timm(self) -> bool:
        return self.config.get("model_type") == "timm_wrapper"

    @property
    def multi_label(self) -> bool:
        return multi.is_multi_label(self.config, self.per_class)

    @property
    def metrics(self) -> tuple:
        """The card's metrics: :data:`_METRICS`, or a multi-label model's (:data:`multi.METRICS`)."""
        return multi.METRICS if self.multi_label else _METRICS

    @property
    def headline_key(self) -> str:
        return "eval_map" if self.multi_label else "eval_accuracy"

    def history(self) -> list[dict[str, Any]]:
        """The evaluations during training (epoch 0, then each epoch), without the re-evaluation of the best
        checkpoint after training."""
        history, run_key = [], self.headline_key
        for entry in self.state.get("log_history") or []:
            if "train_runtime" in entry:
                break
            if run_key in entry:
                history.append(entry)
        return history

    def before(self) -> dict[str, Any]:
        """The evaluation before the first step (epoch 0), when the run made one."""
        history = self.history()
        return history[0] if history and float(history[0].get("epoch") or 0) == 0 else {}


# ------------------------------------------------------------------------------------------------- helpers
def looks_like_hub_id(value: Any) -> bool:
    """A Hub id (``org/name``) rather than a local path: valid for huggingface_hub and not an existing path."""
    if not isinstance(value, str) or value.count("/") != 1 or value.startswith((".", "/", "~")):
        return False
    if Path(value).expanduser().exists():
        return False

    try:
        validate_repo_id(value)
    except HFValidationError:
        return False
    return True


def _fmt(value: Any) -> str:
    return f"{value:.4f}" if isinstance(value, (int, float)) and not isinstance(value, bool) else "-"


def _base(run: _Run, in_table: bool = False) -> tuple[str | None, str]:
    """(the base model's Hub id or None, how the card names it; ``in_table``: for a table cell)."""
    base = run.facts.get("model_name_or_path")
    if looks_like_hub_id(base):
        return base, f"[{base}](https://huggingface.co/{base})"
    if base:
        return None, f"a local checkpoint ({markdown_code(Path(str(base)).name, in_table)})"
    return None, "a pretrained checkpoint"


def _is_hub_dataset_id(name: str) -> bool:

    try:
        validate_repo_id(name)
    except HFValidationError:
        return False
    return True


def _data(run: _Run, in_table: bool = False) -> tuple[str, str, str, list[str] | None]:
    """(how the card names the data, model-index dataset type, dataset name, card ``datasets``);
    ``in_table``: the first for a table cell."""
    facts = run.facts
    name = facts.get("dataset_name")
    if name:
        name = str(name)
        if not Path(name).expanduser().exists():  # a Hub dataset
            config = facts.get("dataset_config_name")
            extra = f" (configuration {markdown_code(config, in_table)})" if config else ""
            shown = (
                f"[{name}](https://huggingface.co/datasets/{name})"
                if _is_hub_dataset_id(name)
                else markdown_code(name, in_table)
            )
            return f"{shown}{extra}", name, name, [name]
        shown = markdown_code(Path(name).name, in_table)
        return f"a local dataset folder ({shown})", "dataset-folder", Path(name).name, None
    if facts.get("train_dir"):
        folder = Path(str(facts["train_dir"])).name
        return f"an image folder ({markdown_code(folder, in_table)})", "imagefolder", folder, None
    if facts.get("train_file"):
        file = Path(str(facts["train_file"]))
        kind = file.suffix.lstrip(".") or "file"
        return f"a list of images ({markdown_code(file.name, in_table)})", kind, file.name, None
    return "the data of its recipe", "unknown", "unknown", None


def _input_text(run: _Run) -> str:
    input_size = (run.config.get("pretrained_cfg") or {}).get("input_size")
    if input_size:
        width, height = markdown_text(input_size[-1]), markdown_text(input_size[-2])
        return f"RGB images at {width} x {height} px (preprocessing in config.json's pretrained_cfg)"
    size = run.processor.get("crop_size") or run.processor.get("size") or {}
    px = (size.get("height") or size.get("shortest_edge")) if isinstance(size, dict) else size
    if not px:
        return "RGB images"
    return f"RGB images at {markdown_text(px)} px (preprocessing in preprocessor_config.json)"


# ------------------------------------------------------------------------------------------------ sections
def _metadata(run: _Run, title: str):

    base_id, _ = _base(run)
    _, dataset_type, dataset_name, datasets = _data(run)
    validation_split = run.facts.get("validation_split") or "validation"
    splits = [(validation_split, run.results, "eval_"), ("test", run.test_results, "test_")]
    eval_results = [
        EvalResult(
            task_type="image-classification",
            task_name="Image Classification",
            dataset_type=dataset_type,
            dataset_name=dataset_name,
            dataset_config=run.facts.get("dataset_config_name"),
            dataset_split=split,
            metric_type=metric_type,
            metric_name=f"Test {metric_name[0].lower()}{metric_name[1:]}"
            if prefix == "test_"
            else metric_name,
            metric_value=round(float(results[prefix + key.removeprefix("eval_")]), 4),
            metric_args=args,
        )
        for split, results, prefix in splits
        for key, _, metric_type, metric_name, args in run.metrics
        if metric_type and isinstance(results.get(prefix + key.removeprefix("eval_")), (int, float))
    ]
    libraries = ["timm", "transformers"] if run.is_timm else ["transformers"]
    return ModelCardData(
        model_name=title,
        base_model=base_id,
        datasets=datasets,
        library_name=libraries[0],
        pipeline_tag="image-classification",
        tags=["image-classification", "vision", "hf-finetune", *libraries],
        metrics=(["mean_average_precision", "f1"] if run.multi_label else ["accuracy", "f1"])
        if eval_results
        else None,
        eval_results=eval_results or None,
    )


def _training_text(run: _Run) -> str:
    state, train_results = run.state, run.train_results
    epochs = state.get("epoch") or train_results.get("epoch")
    if epochs is None:
        return ""
    unit = "epoch" if float(epochs) == 1 else "epochs"
    text = f"Trained for {float(epochs):g} {unit} ({state.get('global_step', '?')} optimizer steps)"
    if train_results.get("train_samples"):
        text += f" on {train_results['train_samples']} training images"
    if train_results.get("train_runtime"):
        text += f" in {float(train_results['train_runtime']):.1f} s"
    if state.get("best_metric") is not None:
        default = "map" if run.multi_label else "accuracy"  # a multi-label run's default (eval_map)
        metric = markdown_text(run.facts.get("metric_for_best_model", default))
        text += f"; the checkpoint with the best validation {metric} ({state['best_metric']:.4f}) was kept"
    return text + "."


def _evaluation_section(run: _Run) -> dict[str, Any]:
    before = run.before()
    metric_rows = [
        {"name": label, "before": _fmt(before.get(key)), "after": _fmt(run.results.get(key))}
        for key, label, *_ in run.metrics
        if key in run.results
    ]
    if run.recipe.get("metrics"):  # the recipe's extra evaluate metrics (hf_finetune.inference.extra_metrics)
        known = {key for key, *_ in run.metrics} | {f"eval_{key}" for key in _TRAINER_KEYS}
        metric_rows += [
            {"name": markdown_text(key[5:]), "before": _fmt(before.get(key)), "after": _fmt(value)}
            for key, value in sorted(run.results.items())
            if key.startswith("eval_") and key not in known and isinstance(value, (int, float))
        ]
    history = run.history()
    per_class_rows, per_class_more = [], 0
    if run.multi_label and run.per_class and isinstance(run.per_class.get("per_class"), dict):
        per_class_rows, per_class_more = multi.per_class_rows(run.per_class, MAX_TABLE_ROWS)
    elif run.per_class and isinstance(run.per_class.get("per_class"), dict):
        items = list(run.per_class["per_class"].items())
        per_class_more = max(0, len(items) - MAX_TABLE_ROWS)
        per_class_rows = [
            {
                "name": markdown_text(name),
                "precision": _fmt(row.get("precision")),
                "recall": _fmt(row.get("recall")),
                "f1": _fmt(row.get("f1")),
                "support": int(row.get("support", 0)),
            }
            for name, row in items[:MAX_TABLE_ROWS]
        ]
    test_rows = [
        {"name": label, "value": _fmt(run.test_results.get(key.replace("eval_", "test_", 1)))}
        for key, label, *_ in run.metrics
        if key.replace("eval_", "test_", 1) in run.test_results
    ]
    return {
        "metric_rows": metric_rows,
        "test_rows": test_rows,
        "test_samples": run.test_results.get("test_samples"),
        "eval_samples": run.results.get("eval_samples"),
        "curve_header": " | ".join(f"{float(e.get('epoch') or 0):g}" for e in history),
        "curve_values": " | ".join(_fmt(e[run.headline_key]) for e in history),
        "curve_name": "mAP" if run.multi_label else "accuracy",
        "per_class_rows": per_class_rows,
        "per_class_more": per_class_more,
        "has_confusion_matrix": "confusion_matrix.png" in run.figures,
        "has_precision_recall": "precision_recall.png" in run.figures,
        "has_training_curves": "training_curves.png" in run.figures,
    }


def _headline(run: _Run) -> str:
    if run.multi_label:
        return multi.headline(run.results, run.before())
    accuracy, samples = run.results.get("eval_accuracy"), run.results.get("eval_samples")
    if not isinstance(accuracy, (int, float)):
        return "-"
    text = f"accuracy {accuracy:.4f}" + (f" on {samples} validation images" if samples else "")
    before = run.before().get("eval_accuracy")
    return text + (f" ({before:.4f} before fine-tuning)" if before is not None else "")


def _limitations(run: _Run) -> list[str]:
    n = len(run.labels)
    items = [
        multi.first_limitation(n, run.facts)
        if run.multi_label
        else f"It only knows its {n} classes: every image gets one of them, including images of none of them "
        "(there is no 'unknown' class unless one was trained)."
    ]
    eval_samples = run.results.get("eval_samples")
    if eval_samples and run.multi_label:
        items.append(
            f"The figures come from the {eval_samples} validation images of this run. Measure on your own "
            "images before relying on it."
        )
    elif eval_samples:
        items.append(
            f"The figures come from the {eval_samples} validation images of this run (the data's validation "
            "split, or a seeded stratified hold-out of the training images), not from an independent test set; "
            f"one image is {1 / float(eval_samples):.4f} of accuracy. Measure on your own images before "
            "relying on it."
        )
    train_samples = run.train_results.get("train_samples")
    if train_samples and n:
        items.append(
            f"It was fine-tuned on {train_samples} images ({float(train_samples) / n:.0f} per class on average): "
            "images unlike them (other cameras, lighting, framing) may be classified worse."
        )
    items.append(
        "It inherits what the base model learned, including its biases, and the base model's licence terms: "
        "read the base model's card."
    )
    items.append(
        f"It expects {_input_text(run).split(' (')[0]}; pipeline() and timm's data config apply the resize, "
        "crop and normalisation."
    )
    return items


# ---------------------------------------------------------------------------------------------------- card
def build_model_card(
    output_dir: str | Path, repo_id: str | None = None, extra_dirs: Sequence[str | Path] = ()
):
    """The model card of a run's output folder, as a ``huggingface_hub.ModelCard``.

    ``repo_id`` names the repo the card is for (its usage snippets load it); without it they load the local
    folder. ``extra_dirs`` are read before ``output_dir`` (training renders the card from its staging folder).
    """

    out = Path(output_dir)
    run = _Run.read(out, [Path(d) for d in extra_dirs])
    title = repo_id.split("/")[-1] if repo_id else out.resolve().name
    _, base_text = _base(run)
    data_text = _data(run)[0]
    recipe_yaml = yaml.safe_dump(run.recipe, sort_keys=False).strip()
    mapping_summary, mapping_rows = mapping_section(run.mapping, run.labels_info)
    architecture = run.config.get("architecture") or (run.config.get("architectures") or ["?"])[0]
    labels = run.labels[:MAX_LABELS_SHOWN]
    more = len(run.labels) - len(labels)
    template_kwargs = {
        "title": markdown_text(title),
        "summary": (
            f"{'A multi-label' if run.multi_label else 'An'} image classifier fine-tuned from {base_text} on "
            f"{data_text} with hf-finetune: "
            f"{len(run.labels)} classes."
        ),
        "base_cell": _base(run, in_table=True)[1],
        "origin": "timm (loads with timm and with transformers' TimmWrapper)"
        if run.is_timm
        else "transformers",
        "architecture": markdown_code(architecture, in_table=True),
        "num_labels": len(run.labels),
        "labels_text": markdown_text(", ".join(labels) + (f", ... (+{more} more)" if more > 0 else "")),
        "data_cell": _data(run, in_table=True)[0],
        "input_text": _input_text(run),
        "headline": _headline(run),
        "training_text": _training_text(run),
        "recipe_yaml": recipe_yaml,
        "recipe_fence": code_fence(recipe_yaml),
        "has_recipe": bool(run.recipe),
        "mapping_summary": mapping_summary,
        "mapping_rows": mapping_rows,
        **_evaluation_section(run),
        "is_timm": run.is_timm,
        "multi_label": run.multi_label,
        "thresholds_text": multi.thresholds_text(run.config, run.facts) if run.multi_label else "",
        "model_ref": json.dumps(repo_id or str(out)),  # a Python string literal, quotes included
        "timm_ref": json.dumps(f"hf-hub:{repo_id}" if repo_id else f"local-dir:{out}"),
        "limitations": _limitations(run),
    }
    return ModelCard.from_template(_metadata(run, title), template_path=str(TEMPLATE), **template_kwargs)


def render_model_card(
    output_dir: str | Path, repo_id: str | None = None, extra_dirs: Sequence[str | Path] = ()
) -> str:
    """The text of ``README.md`` for the run in ``output_dir`` (see :func:`build_model_card`)."""
    text = str(build_model_card(output_dir, repo_id, extra_dirs))
    return text if text.endswith("\n") else text + "\n"
