"""``hf-finetune search``: Optuna through ``Trainer.hyperparameter_search`` on real hotdog photos from a deliberately
bad learning rate; the trials table, its plot and the best recipe (read back by ``train``'s parser); bad spaces and
trial counts in one line, with nothing written; trials on a streamed recipe, each reading the stream afresh;
several processes refused before anything loads."""

from __future__ import annotations

import contextlib
import csv
import io

import pytest
import yaml
from conftest import SHARED_DATA, SHARED_MODELS, requires_shared, streamed_recipe

from hf_finetune.cli.commands import main
from hf_finetune.config.parser import parse_train_args

BAD_LR = 1e-7
EPOCHS = 2
TRIALS = 3


def _cli(*argv) -> tuple[int, str, str]:
    out, err = io.StringIO(), io.StringIO()
    with contextlib.redirect_stdout(out), contextlib.redirect_stderr(err):
        code = main([str(a) for a in argv])
    return code, out.getvalue(), err.getvalue()


def _write(path, data):
    path.write_text(yaml.safe_dump(data, sort_keys=False), encoding="utf-8")
    return path


@pytest.fixture(scope="module")
def hotdog_recipe(tmp_path_factory):
    """MobileNetV1 0.25 with a fresh 2-way head (no ImageNet row reused, so a learning rate that does not move the
    head stays near chance), the body frozen (its features computed once per trial), 64 px, 64 training photos."""
    root = tmp_path_factory.mktemp("search")
    recipe = {
        "model_name_or_path": str(SHARED_MODELS / "hf-mobilenet_v1_0.25_128"),
        "train_dir": str(SHARED_DATA / "hotdog" / "train"),
        "validation_dir": str(SHARED_DATA / "hotdog" / "val"),
        "output_dir": str(root / "model"),
        "label_mapping": "none",
        "learning_rate": BAD_LR,
        "num_train_epochs": EPOCHS,
        "per_device_train_batch_size": 16,
        "max_train_samples": 64,
        "image_size": 64,
        "freeze_layers": -1,
        "bf16": False,
        "seed": 0,
    }
    return _write(root / "recipe.yaml", recipe)


@requires_shared
def test_search_beats_a_bad_learning_rate_on_hotdog(hotdog_recipe, tmp_path):
    space = _write(tmp_path / "space.yaml", {"learning_rate": {"low": 1e-3, "high": 1.0, "log": True}})
    out = tmp_path / "search"
    argv = ["search", hotdog_recipe, "--search_space", space, "--n_trials", TRIALS, "--output_dir", out]
    code, stdout, stderr = _cli(*argv)
    assert code == 0, stderr[-3000:]
    rows = list(csv.DictReader((out / "trials.csv").open(encoding="utf-8")))
    assert [int(r["number"]) for r in rows] == list(range(TRIALS))
    start = rows[0]
    assert float(start["learning_rate"]) == BAD_LR  # trial 0: the recipe as given
    assert len(start["per_epoch"].split()) == EPOCHS  # the objective reported after every epoch
    done = [r for r in rows if r["state"] == "COMPLETE"]
    best = max(done, key=lambda r: float(r["eval_accuracy"]))
    start_acc, best_acc = float(start["eval_accuracy"]), float(best["eval_accuracy"])
    print(
        f"hotdog search: start (lr {BAD_LR:g}) {start_acc:.2f}, best {best_acc:.2f} at lr {best['learning_rate']}"
    )
    assert best_acc > start_acc
    assert 1e-3 <= float(best["learning_rate"]) <= 1.0
    assert f"best trial {best['number']}: eval_accuracy {best_acc:.4f}" in stdout
    for row in rows:  # a pruned trial stopped below the median of the trials before it, at an epoch
        assert row["state"] in ("COMPLETE", "PRUNED")
        if row["state"] == "PRUNED":
            assert len(row["per_epoch"].split()) < EPOCHS
    # the best recipe: the original keys with the best value, read by train's own parser
    recipe = yaml.safe_load((out / "best_recipe.yaml").read_text(encoding="utf-8"))
    original = yaml.safe_load(hotdog_recipe.read_text(encoding="utf-8"))
    assert set(recipe) == set(original)
    assert {k: v for k, v in recipe.items() if k != "learning_rate"} == {
        k: v for k, v in original.items() if k != "learning_rate"
    }
    model_args, data_args, training_args = parse_train_args([str(out / "best_recipe.yaml")])
    assert training_args.learning_rate == pytest.approx(float(best["learning_rate"]), rel=1e-5)
    assert (out / "trials.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    assert sorted(p.name for p in out.iterdir()) == ["best_recipe.yaml", "trials.csv", "trials.png"]
    assert not (hotdog_recipe.parent / "model").exists()  # the recipe's own output folder: not touched


@pytest.fixture
def small_recipe(tiny_hf_checkpoint, tiny_image_folder, tmp_path):
    return _write(
        tmp_path / "recipe.yaml",
        {
            "model_name_or_path": str(tiny_hf_checkpoint),
            "train_dir": str(tiny_image_folder / "train"),
            "output_dir": str(tmp_path / "model"),
        },
    )


@pytest.mark.parametrize(
    "space, message",
    [
        (
            {"learnin_rate": {"low": 1e-5, "high": 1e-2}},
            "'learnin_rate' is not a recipe key (did you mean 'learning_rate'?)",
        ),
        ({"learning_rate": {"low": 1e-2, "high": 1e-5}}, "learning_rate: low 0.01 is not below high 1e-05"),
        ({"learning_rate": {"low": 0, "high": 1e-2, "log": True}}, "a log range needs low > 0"),
        ({"learning_rate": {"low": 1e-5}}, "learning_rate: a range needs both low and high"),
        (
            {"learning_rate": {"low": "small", "high": 1}},
            "learning_rate: low is 'small'; expected a finite number",
        ),
        ({"learning_rate": {"lo": 1e-5, "high": 1}}, "unknown field 'lo' (did you mean 'low' or 'log'?)"),
        ({"learning_rate": [1e-5, 1e-2]}, "learning_rate: got [1e-05, 0.01]; expected {low: L, high: H"),
        ({"freeze_layers": {"choices": []}}, "freeze_layers: choices is []; expected a non-empty list"),
        ({"freeze_layers": {"low": 0.5, "high": 2}}, "freeze_layers takes integers"),
        ({"learning_rate": {"low": -1, "high": 1}}, "learning_rate: -1.0 is refused by the recipe"),
        ({"lr_scheduler_type": {"choices": ["cosine", "wavy"]}}, "lr_scheduler_type: 'wavy' is refused"),
        (
            {"shuffle_buffer_size": {"choices": [0, 100]}},
            "shuffle_buffer_size is read when the data is loaded, once for all the trials",
        ),
    ],
)
def test_bad_space_is_one_line(small_recipe, tmp_path, space, message):
    path = _write(tmp_path / "space.yaml", space)
    out = tmp_path / "search"
    code, _, stderr = _cli("search", small_recipe, "--search_space", path, "--output_dir", out)
    assert code == 2
    assert stderr.startswith("hf-finetune: error: search space ") and stderr.count("\n") == 1, stderr
    assert message in stderr
    assert not out.exists() and not (tmp_path / "model").exists()


@pytest.mark.parametrize(
    "flags, message",
    [
        (["--n_trials", "0"], "--n_trials: got 0; expected at least 1 trial"),
        (["--timeout", "-5"], "--timeout: got -5; expected a positive number of seconds"),
        (["--n_trials", "two"], "invalid int value: 'two'"),
        ([], "the following arguments are required: --search_space"),
    ],
)
def test_bad_arguments_are_one_line(small_recipe, tmp_path, flags, message):
    space = _write(tmp_path / "space.yaml", {"learning_rate": {"low": 1e-5, "high": 1e-2, "log": True}})
    space_flags = ["--search_space", space] if flags else []
    code, _, stderr = _cli("search", small_recipe, *space_flags, *flags)
    assert code == 2
    assert stderr.startswith("hf-finetune: error: ") and stderr.count("\n") == 1, stderr
    assert message in stderr


def test_a_non_empty_output_folder_is_refused(small_recipe, tmp_path):
    space = _write(tmp_path / "space.yaml", {"learning_rate": {"low": 1e-5, "high": 1e-2, "log": True}})
    out = tmp_path / "search"
    out.mkdir()
    (out / "trials.csv").write_text("mine", encoding="utf-8")
    code, _, stderr = _cli("search", small_recipe, "--search_space", space, "--output_dir", out)
    assert code == 2 and "is not empty" in stderr
    assert (out / "trials.csv").read_text(encoding="utf-8") == "mine"


def test_each_trial_is_built_as_train_builds_it(small_recipe, tmp_path, monkeypatch):
    """model_init builds the trial from the recipe with its values (freezing, feature cache, label smoothing),
    and the trainer trains what was built with that model."""
    from hf_finetune.search import search as search_module
    from hf_finetune.search.space import load_space

    builds = []
    real_build = search_module.build_trainer

    def recording_build(model_args, data_args, training_args, **kwargs):
        built = real_build(model_args, data_args, training_args, **kwargs)
        builds.append((training_args, built[0]))
        return built

    monkeypatch.setattr(search_module, "build_trainer", recording_build)
    space_file = {"freeze_layers": {"choices": [-1]}, "label_smoothing_factor": {"low": 0.05, "high": 0.3}}
    argv = [
        str(small_recipe),
        "--num_train_epochs",
        "1",
        "--bf16",
        "false",
        "--label_smoothing_factor",
        "0.1",
    ]
    space = load_space(_write(tmp_path / "space.yaml", space_file), argv)
    result = search_module.run_search(argv, space, n_trials=1, output_dir=str(tmp_path / "search"))
    (base_args, outer), (args, built) = builds  # the recipe's own build, then trial 0's
    assert base_args.freeze_layers == 0 and type(outer.model).__name__ != "HeadOnlyModel"
    # trial 0: the recipe's label_smoothing_factor; its freeze_layers (0) is not a choice: drawn, built afresh
    assert args.freeze_layers == -1 and args.label_smoothing_factor == 0.1
    assert result.best_params == {"freeze_layers": -1, "label_smoothing_factor": 0.1}
    assert type(built.model).__name__ == "HeadOnlyModel"  # the whole body frozen: the feature cache path
    assert built.label_smoother.epsilon == pytest.approx(0.1)  # transformers' LabelSmoother, from the trial
    for name in ("label_smoother", "train_dataset", "eval_dataset", "data_collator", "callback_handler"):
        assert getattr(outer, name) is getattr(built, name), name  # the trainer trained the trial's build
    assert outer.args.label_smoothing_factor == 0.1 and outer.args.freeze_layers == -1


def test_without_optuna_one_line(small_recipe, tmp_path, monkeypatch):
    import importlib.util

    real = importlib.util.find_spec
    monkeypatch.setattr(
        importlib.util, "find_spec", lambda name, *a: None if name == "optuna" else real(name, *a)
    )
    space = _write(tmp_path / "space.yaml", {"learning_rate": {"low": 1e-5, "high": 1e-2, "log": True}})
    code, _, stderr = _cli("search", small_recipe, "--search_space", space)
    assert code == 2
    assert stderr == (
        "hf-finetune: error: search needs optuna, which is not installed: pip install 'hf-finetune[search]'\n"
    )


def test_on_a_stream_each_trial_trains_its_own_pass_of_the_stream(
    tiny_hf_checkpoint, tiny_image_folder, tmp_path, monkeypatch
):
    """A streamed recipe: every trial is built on a stream of its own over the data loaded once, starts at epoch 0
    with its own epoch callback, trains a whole pass (2 steps) and is evaluated after it."""
    import gc

    import datasets

    from hf_finetune.search import report
    from hf_finetune.search import search as search_module
    from hf_finetune.search.space import load_space
    from hf_finetune.training.stream_state import StreamStateCallback, is_rank_stream

    monkeypatch.setattr(datasets.config, "SLEEP_TIME_ON_THREADS_SHUTDOWN", 0)  # time only (test_streaming.py)
    # time only: accelerate's release_memory collects garbage 3 times per trial, ~1 s each in a full test process
    monkeypatch.setattr(gc, "collect", lambda generation=2: 0)
    builds, real_build = [], search_module.build_trainer

    def recording_build(model_args, data_args, training_args, **kwargs):
        built = real_build(model_args, data_args, training_args, **kwargs)
        epochs = [c for c in built[0].callback_handler.callbacks if isinstance(c, StreamStateCallback)]
        builds.append((training_args, built[0], built[0].train_dataset, epochs))
        return built

    monkeypatch.setattr(search_module, "build_trainer", recording_build)
    monkeypatch.setattr(report, "plot_trials", lambda *args: None)  # the plot: test_search_beats_a_bad_...
    recipe = streamed_recipe(tmp_path / "data", tiny_hf_checkpoint, tiny_image_folder, num_train_epochs=1)
    space = load_space(
        _write(tmp_path / "space.yaml", {"learning_rate": {"low": 1e-3, "high": 1e-1}}), [str(recipe)]
    )
    out = tmp_path / "search"
    result = search_module.run_search([str(recipe)], space, n_trials=2, output_dir=str(out))
    (_, outer, stream0, epochs0), (args1, built1, stream1, epochs1) = builds  # trial 0 trains the first build
    assert is_rank_stream(stream0) and is_rank_stream(stream1) and stream1 is not stream0
    assert stream1.stream is stream0.stream  # one stream loaded, read afresh by each trial
    assert [c.epoch for c in epochs0 + epochs1] == [1, 1]  # each trial: epoch 0, counted by its own callback
    assert outer.train_dataset is stream1 and outer.state.global_step == 2  # trial 1: one whole pass
    rows = list(csv.DictReader((out / "trials.csv").open(encoding="utf-8")))
    assert [r["state"] for r in rows] == ["COMPLETE", "COMPLETE"]
    assert [len(r["per_epoch"].split()) for r in rows] == [1, 1]
    assert args1.learning_rate == pytest.approx(float(rows[1]["learning_rate"]))
    assert parse_train_args([str(out / "best_recipe.yaml")])[1].streaming is True
    assert result.best_trial in (0, 1) and not (tmp_path / "data" / "model").exists()


@pytest.mark.parametrize(
    "flags, env, message",
    [
        (
            ["--accelerate_config", "cpu_ddp"],
            {},
            "--accelerate_config: search runs in one process (under several",
        ),
        (["--num-processes=2"], {}, "--num_processes: search runs in one process"),
        (["--main_process_port", "29500"], {}, "expected no --main_process_port; train its best_recipe.yaml"),
        ([], {"WORLD_SIZE": "2", "RANK": "1"}, "WORLD_SIZE 2: search started as process 1 of 2"),
    ],
)
def test_several_processes_are_refused_before_anything_loads(
    small_recipe, tmp_path, monkeypatch, flags, env, message
):
    """Under several processes each would run an Optuna study of its own and write best_recipe.yaml: refused, as
    train's launch flags or as one process of a launcher's, before the recipe's data or model is read."""
    from hf_finetune.search import search as search_module

    for name, value in env.items():
        monkeypatch.setenv(name, value)
    monkeypatch.setattr(search_module, "load_data", lambda *a, **k: pytest.fail("the data was loaded"))
    space = _write(tmp_path / "space.yaml", {"learning_rate": {"low": 1e-5, "high": 1e-2, "log": True}})
    out = tmp_path / "search"
    code, stdout, stderr = _cli("search", small_recipe, "--search_space", space, "--output_dir", out, *flags)
    assert code == 2 and stdout == ""
    assert stderr.startswith("hf-finetune: error: ") and stderr.count("\n") == 1, stderr
    assert message in stderr and "Optuna study of its own" in stderr
    assert not out.exists() and not (tmp_path / "model").exists()


def test_the_launch_flags_refused_are_trains():
    """The flags refused are the ones train's launcher takes (one_process.py keeps its own light copy)."""
    from hf_finetune.runtime.launch import ACCELERATE_CONFIG_FLAG, LAUNCH_FLAGS, RDZV_TIMEOUT_FLAG
    from hf_finetune.search.one_process import LAUNCH_ONLY_FLAGS

    assert set(LAUNCH_ONLY_FLAGS) == {ACCELERATE_CONFIG_FLAG, *LAUNCH_FLAGS, RDZV_TIMEOUT_FLAG}
