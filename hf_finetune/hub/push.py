"""Pushing a finished output folder to the Hugging Face Hub, with its model card.

    push_to_hub("outputs/beans", "my-org/vit-beans")   # hf-finetune push outputs/beans --repo-id my-org/vit-beans

One commit uploads :func:`upload_plan`: the model (``config.json``, the safetensors weights, the image
processor), the run's record (``recipe.yaml``, ``labels.json``, ``label_mapping.json``, ``*_results.json``,
``eval_per_class.json``, ``trainer_state.json``), the images the card shows (``training_curves.png``,
``confusion_matrix.png``) and ``README.md``, the model card that
:func:`hf_finetune.hub.model_card.render_model_card` renders for the target repo from those files
(huggingface_hub's ``ModelCard`` from ``templates/model_card.md``). Never uploaded: ``checkpoint-*`` folders, ``training_args.bin``, pickle weights,
any other file.

A timm-origin model's ``config.json`` goes up without the ``model_args.num_classes`` duplicate (and without
a ``null`` ``model_args``), so both ``AutoModelForImageClassification.from_pretrained("ORG/NAME")`` and
``timm.create_model("hf-hub:ORG/NAME", pretrained=True)`` load the same repo, with the label names.

The token comes from the environment (``HF_TOKEN``) or the user's ``huggingface_hub`` login. It is handed to
huggingface_hub's calls and nothing else: never written to a file, a log line, the card or an error message.

Transient failures (connection errors, timeouts, HTTP 408/429/5xx) are retried with exponential backoff; then,
or at once for a refused token or a forbidden namespace, a :class:`~hf_finetune.errors.HubError` says in one
line what failed and how to rerun the push alone. The output folder is only ever read.
"""

from __future__ import annotations

import json
import logging
import shutil
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from huggingface_hub import CommitOperationAdd, HfApi, constants, get_token
from huggingface_hub.errors import HfHubHTTPError, OfflineModeIsEnabled
from huggingface_hub.utils import HFValidationError, validate_repo_id

from hf_finetune.errors import ConfigError, HubError
from hf_finetune.hub.model_card import CARD_NAME, FIGURES, PER_CLASS_NAME, render_model_card
from hf_finetune.hub.space import space_files
from hf_finetune.models.weights_check import check_safetensors_files

__all__ = [
    "UPLOAD_FILES",
    "PushResult",
    "check_repo_id",
    "check_hub_arguments",
    "check_finished_folder",
    "resolve_token",
    "normalize_timm_config",
    "upload_plan",
    "write_upload_folder",
    "hub_client",
    "push_to_hub",
]

logger = logging.getLogger(__name__)

WEIGHTS = ("model.safetensors", "model.safetensors.index.json")
#: Besides the weights and the card, the files of an output folder that are uploaded (when present).
UPLOAD_FILES = (
    "config.json",
    "preprocessor_config.json",
    "recipe.yaml",
    "labels.json",
    "label_mapping.json",
    "all_results.json",
    "train_results.json",
    "eval_results.json",
    PER_CLASS_NAME,
    "trainer_state.json",
    *FIGURES,
)
PICKLE_WEIGHTS = ("pytorch_model.bin", "pytorch_model.bin.index.json", "model.pt", "model.pth")
REPO_ID_HELP = "expected ORG/NAME (letters, digits, '-', '_' and '.'), e.g. my-org/vit-base-beans"
ATTEMPTS = 4  # one try and three retries
BACKOFF_S = 2.0  # waits 2, 4, 8 s


# ------------------------------------------------------------------------------------------------- checks
def _first_line(err: BaseException | str) -> str:
    text = str(err).strip()
    return text.splitlines()[0].strip() if text else type(err).__name__


def check_repo_id(repo_id: Any, key: str = "repo_id") -> str:
    """``ORG/NAME`` as the Hub spells repo ids; anything else is a :class:`ConfigError` naming ``key``."""
    text = str(repo_id if repo_id is not None else "").strip()
    if text.count("/") != 1:
        raise ConfigError(f"{key}: {text!r} is not a Hub repo id; {REPO_ID_HELP}")

    try:
        validate_repo_id(text)
    except HFValidationError as err:
        raise ConfigError(
            f"{key}: {text!r} is not a Hub repo id ({_first_line(err)}); {REPO_ID_HELP}"
        ) from None
    return text


def resolve_token() -> str:
    """The token of the environment (``HF_TOKEN``) or of the user's login; :class:`HubError` when none."""

    token = get_token()
    if not token:
        raise HubError(
            "no Hugging Face token: set HF_TOKEN to a token with write access, or run `hf auth login` once"
        )
    return token


def check_hub_arguments(training_args) -> str | None:
    """Check the Hub keys of a training run before anything is trained; the repo id to push to, or None.

    * ``hub_token`` is refused: a token given as a recipe key or flag would be recorded in ``recipe.yaml``
      and pickled into the checkpoints' ``training_args.bin``.
    * ``push_to_hub: true`` needs a valid ``hub_model_id``, the Hub online and a token.
    """
    if getattr(training_args, "hub_token", None):
        raise ConfigError(
            "hub_token: a token given in a recipe or as a flag would be written into recipe.yaml and the "
            "checkpoints; remove it and set HF_TOKEN (or run `hf auth login`) instead"
        )
    repo_id = getattr(training_args, "hub_model_id", None)
    push = bool(getattr(training_args, "push_to_hub", False))
    if push and not repo_id:
        raise ConfigError(
            "push_to_hub: true needs hub_model_id, the repository to push to; add `hub_model_id: ORG/NAME` "
            "to the recipe or pass --hub_model_id ORG/NAME (or set push_to_hub false)"
        )
    if repo_id:
        repo_id = check_repo_id(repo_id, "hub_model_id")
    if not push:
        return None

    if constants.HF_HUB_OFFLINE:
        raise ConfigError(
            "push_to_hub: HF_HUB_OFFLINE=1 is set, so the model could not be pushed at the end of training; "
            "unset HF_HUB_OFFLINE, or set push_to_hub false and push later with `hf-finetune push`"
        )
    resolve_token()
    return repo_id


def check_finished_folder(output_dir: str | Path, key: str = "OUTPUT_DIR") -> Path:
    """The folder of a finished run (config.json and safetensors weights); :class:`ConfigError` otherwise."""
    out = Path(output_dir)
    expected = "expected the output folder of a finished `hf-finetune train` run"
    if not out.exists():
        raise ConfigError(f"{key}: {out} does not exist; {expected}")
    if not out.is_dir():
        raise ConfigError(f"{key}: {out} is a file; {expected}")
    has_weights = any((out / name).is_file() for name in WEIGHTS)
    if (out / "config.json").is_file() and has_weights:
        check_safetensors_files(out, key)  # never upload a truncated or empty weights file
        try:
            json.loads((out / "config.json").read_text(encoding="utf-8"))
        except (UnicodeDecodeError, json.JSONDecodeError) as err:
            raise ConfigError(f"{key}: {out / 'config.json'} is not valid JSON ({err}); {expected}") from None
        return out
    pickles = [name for name in PICKLE_WEIGHTS if (out / name).is_file()]
    if (out / "config.json").is_file() and pickles:
        raise ConfigError(
            f"{key}: {out} holds pickle weights ({pickles[0]}) and no model.safetensors; only safetensors are "
            "pushed: save the model again with save_pretrained() (safetensors is its default)"
        )
    checkpoints = sorted(p.name for p in out.glob("checkpoint-*") if p.is_dir())
    if checkpoints or (out / ".final-partial").exists():
        raise ConfigError(
            f"{key}: {out} holds no finished model, only {', '.join(checkpoints) or 'a partial save'}: the run "
            "did not finish; finish it with `hf-finetune train RECIPE --output_dir "
            f"{out} --resume_from_checkpoint last`, then push"
        )
    missing = [n for n in ("config.json", "model.safetensors") if not (out / n).is_file()]
    raise ConfigError(f"{key}: {out} has no {' and no '.join(missing)}; {expected}")


# ---------------------------------------------------------------------------------------------- config
def normalize_timm_config(config: dict[str, Any]) -> dict[str, Any]:
    """A timm ``config.json`` that transformers' TimmWrapper and ``timm.create_model`` both load.

    Drops ``model_args.num_classes`` (``timm.models.save_for_hf`` repeats it there, and TimmWrapper then
    passes ``num_classes`` twice) and a ``null``/empty ``model_args`` (timm reads it as a mapping); fills
    ``label_names`` from ``id2label`` when only the latter is there. Other configs come back unchanged.
    """
    if config.get("model_type") != "timm_wrapper" and "architecture" not in config:
        return config
    fixed = dict(config)
    model_args = dict(fixed.get("model_args") or {})
    model_args.pop("num_classes", None)
    if model_args:
        fixed["model_args"] = model_args
    else:
        fixed.pop("model_args", None)
    id2label = fixed.get("id2label") or {}
    if not fixed.get("label_names") and id2label:
        fixed["label_names"] = [str(id2label.get(str(i), id2label.get(i))) for i in range(len(id2label))]
    return fixed


# ---------------------------------------------------------------------------------------------- upload
def upload_plan(output_dir: str | Path, repo_id: str | None = None) -> dict[str, Path | bytes]:
    """What a push of ``output_dir`` uploads: ``{path in the repo: local file or bytes}``, sorted by path.

    The files of :data:`UPLOAD_FILES` that exist, the safetensors weights (shards included), ``config.json``
    normalised for timm-origin models (:func:`normalize_timm_config`), and ``README.md`` rendered for
    ``repo_id``. Raises :class:`ConfigError` for a folder that holds no finished model.
    """
    out = check_finished_folder(output_dir)
    plan: dict[str, Path | bytes] = {}
    for name in UPLOAD_FILES:
        if (out / name).is_file():
            plan[name] = out / name
    config = json.loads((out / "config.json").read_text(encoding="utf-8"))
    fixed = normalize_timm_config(config)
    if fixed != config:
        plan["config.json"] = (json.dumps(fixed, indent=2, sort_keys=True) + "\n").encode("utf-8")
    if (out / "model.safetensors").is_file():
        plan["model.safetensors"] = out / "model.safetensors"
    else:
        index = json.loads((out / "model.safetensors.index.json").read_text(encoding="utf-8"))
        plan["model.safetensors.index.json"] = out / "model.safetensors.index.json"
        for shard in sorted(set(index.get("weight_map", {}).values())):
            if not (out / shard).is_file():
                raise ConfigError(f"OUTPUT_DIR: {out} lacks {shard}, a weights shard its index names")
            plan[shard] = out / shard
    plan[CARD_NAME] = render_model_card(out, repo_id).encode("utf-8")
    return dict(sorted(plan.items()))


def write_upload_folder(plan: dict[str, Path | bytes], folder: str | Path) -> Path:
    """Write the files of ``plan`` into ``folder``: exactly what the push uploads, to look at or serve."""

    folder = Path(folder)
    for name, content in plan.items():
        target = folder / name
        target.parent.mkdir(parents=True, exist_ok=True)
        if isinstance(content, bytes):
            target.write_bytes(content)
        else:
            shutil.copyfile(content, target)
    return folder


@dataclass
class PushResult:
    """What a push did: the repo, the branch, the commit, the files uploaded."""

    repo_id: str
    revision: str
    commit_url: str
    files: list[str] = field(default_factory=list)
    attempts: int = 1
    space_id: str | None = None
    space_commit_url: str | None = None


def hub_client():
    """The huggingface_hub client a push talks to: ``HfApi()`` (the endpoint comes from ``HF_ENDPOINT``)."""

    return HfApi()


def _status(err: BaseException) -> int | None:
    response = getattr(err, "response", None)
    status = getattr(response, "status_code", None)
    return int(status) if isinstance(status, int) else None


def _is_network_error(err: BaseException) -> bool:
    """An error from the HTTP layer (huggingface_hub's, httpx's, requests') rather than a bug."""

    if isinstance(err, (HfHubHTTPError, ConnectionError, TimeoutError, OSError)):
        return True
    return type(err).__module__.split(".")[0] in {
        "httpx",
        "httpx2",
        "httpcore",
        "httpcore2",
        "requests",
        "urllib3",
    }


def _is_transient(err: BaseException) -> bool:

    if isinstance(err, OfflineModeIsEnabled):
        return False
    status = _status(err)
    if isinstance(err, HfHubHTTPError) or status is not None:
        return status is None or status in (408, 429) or status >= 500
    return True  # connection refused or reset, timeouts, DNS: worth another try


def _failure_reason(err: BaseException, repo_id: str) -> str:

    if isinstance(err, OfflineModeIsEnabled):
        return "HF_HUB_OFFLINE=1 is set; unset it to push"
    status = _status(err)
    if status == 401:
        return (
            "the Hub refused the token (401 Unauthorized); set HF_TOKEN to a valid token with write access, "
            "or run `hf auth login`"
        )
    if status == 403:
        return (
            f"the token may not write to {repo_id.split('/')[0]} (403 Forbidden); use a token with write "
            "access to that user or organisation"
        )
    return _first_line(err)


def _attempt(what, call, *, repo_id, out, token, attempts, backoff_s, sleep) -> tuple[Any, int]:
    """``call()`` with retries of transient failures; (its result, attempts used)."""
    for attempt in range(1, attempts + 1):
        try:
            return call(), attempt
        except Exception as err:
            if not _is_network_error(err):
                raise
            transient = _is_transient(err)
            if transient and attempt < attempts:
                delay = backoff_s * 2 ** (attempt - 1)
                logger.warning(
                    "%s failed (%s); retrying in %.0f s (attempt %d of %d)",
                    what,
                    _first_line(err).replace(token, "***"),
                    delay,
                    attempt + 1,
                    attempts,
                )
                sleep(delay)
                continue
            tries = f" after {attempt} attempts" if attempt > 1 else ""
            message = (
                f"push to {repo_id} failed{tries} ({what}): {_failure_reason(err, repo_id)}. "
                f"{out} is unchanged: rerun the push alone with `hf-finetune push {out} --repo-id {repo_id}`"
            )
            raise HubError(message.replace(token, "***")) from None
    raise AssertionError("unreachable")  # pragma: no cover


def _default_commit_message(out: Path) -> str:
    try:
        results = json.loads((out / "eval_results.json").read_text(encoding="utf-8"))
    except (OSError, ValueError):
        results = {}
    accuracy = results.get("eval_accuracy")
    suffix = f" (validation accuracy {accuracy:.4f})" if isinstance(accuracy, (int, float)) else ""
    return f"Upload fine-tuned image classifier{suffix} with hf-finetune"


def push_to_hub(
    output_dir: str | Path,
    repo_id: str,
    *,
    private: bool | None = None,
    revision: str | None = None,
    commit_message: str | None = None,
    client: Any = None,
    attempts: int = ATTEMPTS,
    backoff_s: float = BACKOFF_S,
    sleep: Callable[[float], None] = time.sleep,
    space: str | None = None,
) -> PushResult:
    """Push the finished run in ``output_dir`` to the model repo ``repo_id`` in one commit.

    Creates the repo if needed (``private`` applies to a new repo only) and the branch ``revision`` if it is
    not ``main``; uploads :func:`upload_plan`. ``client`` defaults to :func:`hub_client`. Transient failures
    are retried ``attempts`` times in all, waiting ``backoff_s``, then twice as long each time.

    ``space``: then also create or update the Gradio Space ``ORG/NAME`` serving the model, in a commit of its
    own (:func:`hf_finetune.hub.space.space_files`: ``app.py``, ``requirements.txt``, its ``README.md``).
    """
    repo_id = check_repo_id(repo_id, "repo_id")
    space = check_repo_id(space, "space") if space is not None else None
    out = Path(output_dir)
    plan = upload_plan(out, repo_id)
    token = resolve_token()
    client = client if client is not None else hub_client()
    branch = (revision or "main").strip() or "main"
    space_plan = _space_plan(plan, repo_id, space, branch)
    message = commit_message or _default_commit_message(out)
    size = sum(len(c) if isinstance(c, bytes) else c.stat().st_size for c in plan.values())
    logger.info("pushing %d files (%.1f MB) of %s to %s@%s", len(plan), size / 1e6, out, repo_id, branch)
    retry = {"repo_id": repo_id, "out": out, "token": token}  # for _attempt: what a failure names
    retry.update(attempts=attempts, backoff_s=backoff_s, sleep=sleep)

    used = 0
    _, n = _attempt(
        "creating the repo",
        lambda: client.create_repo(repo_id, token=token, private=private, repo_type="model", exist_ok=True),
        **retry,
    )
    used += n
    if branch != "main":
        _, n = _attempt(
            f"creating branch {branch}",
            lambda: client.create_branch(
                repo_id, branch=branch, token=token, repo_type="model", exist_ok=True
            ),
            **retry,
        )
        used += n

    def commit():
        operations = [  # fresh operations for every attempt: create_commit mutates them
            CommitOperationAdd(
                path_in_repo=name, path_or_fileobj=content if isinstance(content, bytes) else str(content)
            )
            for name, content in plan.items()
        ]
        return client.create_commit(
            repo_id,
            operations=operations,
            commit_message=message,
            token=token,
            repo_type="model",
            revision=branch,
        )

    info, n = _attempt("uploading the files", commit, **retry)
    used += n
    commit_url = str(getattr(info, "commit_url", "") or info or "")
    logger.info("pushed %s@%s: %s", repo_id, branch, commit_url)
    result = PushResult(repo_id, branch, commit_url, files=list(plan), attempts=used, space_id=space)
    if space_plan is not None:
        result.space_commit_url, n = _push_space(client, space, space_plan, private, token, retry)
        result.attempts += n
    return result


def _space_plan(plan: dict[str, Path | bytes], repo_id: str, space: str | None, branch: str):
    """The files of the Space ``space`` showing ``repo_id`` at ``branch`` (None without a Space)."""
    if space is None:
        return None
    content = plan["config.json"]
    config = json.loads(content if isinstance(content, bytes) else content.read_text(encoding="utf-8"))
    return space_files(repo_id, space, config, revision=branch)


def _push_space(client, space: str, files: dict[str, bytes], private, token: str, retry) -> tuple[str, int]:
    """Create (if needed) the Gradio Space ``space`` and commit ``files`` to its main branch; (the commit's url,
    attempts used)."""
    _, used = _attempt(
        f"creating the Space {space}",
        lambda: client.create_repo(
            space, token=token, private=private, repo_type="space", space_sdk="gradio", exist_ok=True
        ),
        **retry,
    )

    def commit():
        operations = [
            CommitOperationAdd(path_in_repo=name, path_or_fileobj=data) for name, data in files.items()
        ]
        return client.create_commit(
            space,
            operations=operations,
            commit_message="Gradio app of the model, written by hf-finetune push --space",
            token=token,
            repo_type="space",
        )

    info, n = _attempt(f"uploading the Space {space}", commit, **retry)
    url = str(getattr(info, "commit_url", "") or info or "")
    logger.info("pushed the Space %s: %s", space, url)
    return url, used + n
