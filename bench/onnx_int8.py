r"""ONNX export, fp32 against int8 dynamic quantisation (``hf-finetune export --quantize int8``): accuracy on the
hotdog photos and CPU images/s of each graph, in one run.

    python bench/onnx_int8.py [--models ../shared/models/hf-mobilenet_v2_1.0_224 ...] \
        [--data ../shared/data/hotdog/val] [--output bench/results/onnx_int8.json]

Each model is exported twice (fp32, int8) into a temporary folder. Every photo is preprocessed once, from the
export's ``onnx_export.json`` (as ``predict --onnx`` does), and both graphs score the same arrays. The models are
ImageNet classifiers, not fine-tuned: a photo counts as ``hotdog`` when the top-1 class is ImageNet's hotdog
class, so ``accuracy`` is that rule's accuracy on the ``hotdog``/``not_hotdog`` folders. ``top1_agreement`` is the
share of photos whose top-1 class (of all 1000+) is the int8 graph's as the fp32 graph's, ``max_abs_prob_diff`` the
largest probability difference. ``int8`` is the export's option (linear layers quantised); ``int8_with_conv``, for
comparison, quantises every op onnxruntime can, convolutions included. Speed: images/s of the graph alone (batches of ``--batch_size``, onnxruntime's CPU
provider with its default threads), fp32 and int8 passes alternating ``--passes`` times, the median pass kept;
the ratio is int8 / fp32 of the same run. On a shared machine the absolute figures vary; the ratio less so.
"""

from __future__ import annotations

import argparse
import json
import shutil
import statistics
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parent))
from machine import describe  # noqa: E402

from hf_finetune.data.image_check import open_image  # noqa: E402
from hf_finetune.export.onnx_export import export_onnx  # noqa: E402
from hf_finetune.export.onnx_predict import OnnxClassifier, preprocess_image  # noqa: E402
from hf_finetune.inference.predictions import iter_image_files  # noqa: E402

ROOT = Path(__file__).resolve().parents[1]
SHARED = ROOT.parent / "shared"
DEFAULT_MODELS = [
    SHARED / "models" / "hf-mobilenet_v2_1.0_224",
    SHARED / "models" / "timm-tf_efficientnet_lite0",
]


def hotdog_row(labels: list[str]) -> int:
    """The row of ImageNet's hotdog class (``hotdog, hot dog, red hot`` or timm's ``hotdog``)."""
    return next(
        i for i, name in enumerate(labels) if name.split(",")[0].strip().lower() in ("hotdog", "hot dog")
    )


def timed_pass(classifier: OnnxClassifier, pixels: np.ndarray, batch_size: int) -> tuple[np.ndarray, float]:
    """(probabilities of every image, seconds) of one pass over ``pixels`` in batches."""
    start = time.perf_counter()
    scores = [classifier.scores(pixels[i : i + batch_size]) for i in range(0, len(pixels), batch_size)]
    return np.concatenate(scores), time.perf_counter() - start


def bench_model(model: Path, files: list[Path], truth: np.ndarray, batch_size: int, passes: int) -> dict:
    with tempfile.TemporaryDirectory() as tmp:
        fp32 = OnnxClassifier(export_onnx(model, Path(tmp) / "fp32"))
        int8 = OnnxClassifier(export_onnx(model, Path(tmp) / "int8", quantize="int8"))
        int8_conv = quantized_with_convolutions(Path(tmp), fp32)
        variants = {"fp32": fp32, "int8": int8, "int8_with_conv": int8_conv}
        sizes = {name: (c.folder / "model.onnx").stat().st_size for name, c in variants.items()}
        spec = fp32.config["preprocessing"]
        pixels = np.stack([preprocess_image(open_image(f), spec) for f in files])
        for classifier in variants.values():  # warm-up of every session
            timed_pass(classifier, pixels[:batch_size], batch_size)
        seconds: dict[str, list[float]] = {name: [] for name in variants}
        probabilities: dict[str, np.ndarray] = {}
        for _ in range(passes):
            for name, classifier in variants.items():
                probabilities[name], elapsed = timed_pass(classifier, pixels, batch_size)
                seconds[name].append(elapsed)
        row = hotdog_row(fp32.labels)
        result = {"model": model.name, "images": len(files), "graph_bytes": sizes}
        for name, scores in probabilities.items():
            result[name] = {
                "accuracy": float(((scores.argmax(axis=1) == row) == truth).mean()),
                "images_per_s": len(files) / statistics.median(seconds[name]),
                "seconds_per_pass": seconds[name],
            }
            if name != "fp32":
                result[name]["speed_over_fp32"] = (
                    result[name]["images_per_s"] / result["fp32"]["images_per_s"]
                )
                result[name]["top1_agreement"] = float(
                    (scores.argmax(1) == probabilities["fp32"].argmax(1)).mean()
                )
                result[name]["max_abs_prob_diff"] = float(np.abs(scores - probabilities["fp32"]).max())
        return result


def quantized_with_convolutions(tmp: Path, fp32: OnnxClassifier) -> OnnxClassifier:
    """For comparison: the fp32 export with every op onnxruntime can quantise dynamically, convolutions too."""
    from onnxruntime.quantization import QuantType, quantize_dynamic

    folder = tmp / "int8_with_conv"
    shutil.copytree(fp32.folder, folder)
    quantize_dynamic(fp32.folder / "model.onnx", folder / "model.onnx", weight_type=QuantType.QInt8)
    return OnnxClassifier(folder)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--models", nargs="+", type=Path, default=DEFAULT_MODELS)
    parser.add_argument("--data", type=Path, default=SHARED / "data" / "hotdog" / "val")
    parser.add_argument("--batch_size", type=int, default=25)
    parser.add_argument("--passes", type=int, default=3)
    parser.add_argument("--output", type=Path, default=ROOT / "bench" / "results" / "onnx_int8.json")
    args = parser.parse_args()
    files = iter_image_files([args.data])
    truth = np.array([f.parent.name == "hotdog" for f in files])
    results = [bench_model(m, files, truth, args.batch_size, args.passes) for m in args.models]
    print("| model | graph | MB | hotdog accuracy | top-1 agreement with fp32 | images/s | speed / fp32 |")
    print("|---|---|---|---|---|---|---|")
    for r in results:
        for name in ("fp32", "int8", "int8_with_conv"):
            v = r[name]
            print(
                f"| {r['model']} | {name} | {r['graph_bytes'][name] / 1e6:.1f} | {v['accuracy']:.2f} | "
                f"{v.get('top1_agreement', 1.0):.2f} | {v['images_per_s']:.1f} | {v.get('speed_over_fp32', 1.0):.2f} |"
            )
    args.output.parent.mkdir(parents=True, exist_ok=True)
    data = (
        str(args.data.resolve().relative_to(ROOT.parent))
        if args.data.resolve().is_relative_to(ROOT.parent)
        else str(args.data)
    )
    payload = {"data": data, "batch_size": args.batch_size, "passes": args.passes, "results": results}
    payload["machine"] = describe()
    args.output.write_text(json.dumps(payload, indent=2) + "\n", encoding="utf-8")
    print(f"written {args.output}")


if __name__ == "__main__":
    main()
