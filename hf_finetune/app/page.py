"""The page ``hf-finetune app`` serves: a Gradio ``Blocks`` with a prediction tab and, when the folder has them,
the run's reports.

The prediction is :func:`hf_finetune.inference.predict.predict_images` itself, with the model loaded once
(``loaded=``): the page shows exactly what ``hf-finetune predict`` prints for the same file (the uploaded file
is handed over as it came, never re-encoded). A multi-label model also lists every class at or above its
threshold (``config.json`` ``label_thresholds``). gradio is imported inside the functions (an optional extra)."""

from __future__ import annotations

import html
import logging
import os
import signal
from pathlib import Path
from typing import Any

from hf_finetune.app.checks import check_model_folder
from hf_finetune.app.reports import RunReports, find_reports
from hf_finetune.errors import ConfigError, HfFinetuneError
from hf_finetune.escaping import markdown_text
from hf_finetune.inference.predict import load_for_inference, predict_images

__all__ = ["PREDICTIONS_ID", "predictions_html", "build_app", "serve"]

logger = logging.getLogger(__name__)

#: The id of the predictions table on the page (rows: rank, label, probability to 4 decimals).
PREDICTIONS_ID = "hf-predictions"
SYSTEM_FONTS = ["ui-sans-serif", "system-ui", "sans-serif"]  # no font fetched from the internet
MONO_FONTS = ["ui-monospace", "monospace"]
#: (how often, after how long) uploaded images are deleted from Gradio's cache, in seconds; all when the app stops.
UPLOADS_KEPT_S = (600, 3600)


def predictions_html(record: dict[str, Any]) -> str:
    """One prediction record of :func:`predict_images` as an HTML table (labels escaped), the classes at or
    above their thresholds first for a multi-label model."""
    rows = "".join(
        f'<tr><td>{rank}</td><td class="hf-label">{html.escape(p["label"])}</td>'
        f'<td class="hf-score">{p["score"]:.4f}</td></tr>'
        for rank, p in enumerate(record["predictions"], start=1)
    )
    above = ""
    if "labels" in record:
        names = ", ".join(html.escape(name) for name in record["labels"]) or "none"
        above = f'<p id="hf-above">at or above their thresholds: <b>{names}</b></p>'
    return (
        f'{above}<table id="{PREDICTIONS_ID}"><thead><tr><th>#</th><th>label</th><th>probability</th></tr>'
        f"</thead><tbody>{rows}</tbody></table>"
    )


def _model_summary(model: Any, model_dir: Path, shown: int = 10) -> str:
    """``**NAME**: K classes (a, b, ...), single-label (softmax)``: the folder's name, never its full path."""
    config = model.config
    multi = getattr(config, "problem_type", None) == "multi_label_classification"
    kind = "multi-label (sigmoid, per-class thresholds)" if multi else "single-label (softmax)"
    names = [str(config.id2label[i]) for i in range(min(shown, int(config.num_labels)))]
    more = ", ..." if config.num_labels > shown else ""
    listed = markdown_text(", ".join(names) + more)
    return f"**{markdown_text(model_dir.resolve().name)}**: {config.num_labels} classes ({listed}), {kind}."


def _reports_tab(gr: Any, reports: RunReports) -> None:
    with gr.Tab("Reports", id="reports"):
        for title, path in reports.figures:
            gr.Image(value=str(path), label=title, type="filepath", interactive=False, format="png")
        for title, header, rows in reports.tables:
            gr.Dataframe(value=rows, headers=header, label=title, interactive=False)


def build_app(model_dir: str | Path, top_k: int = 5, loaded: tuple[Any, Any] | None = None):
    """The ``gradio.Blocks`` page for the model in ``model_dir`` (loaded here unless ``loaded`` is given)."""
    import gradio as gr

    folder = check_model_folder(model_dir)
    loaded = loaded if loaded is not None else load_for_inference(folder)
    top_k = min(top_k, int(loaded[0].config.num_labels))

    def classify(path: str | None):
        if not path:
            return None, ""
        try:
            record = predict_images(folder, [path], top_k=top_k, strict=True, loaded=loaded)[0]
        except HfFinetuneError as err:
            raise gr.Error(str(err)) from None
        scores = {p["label"]: p["score"] for p in record["predictions"]}
        return scores, predictions_html(record)

    reports = find_reports(folder)
    with gr.Blocks(title=f"hf-finetune: {folder.name}", delete_cache=UPLOADS_KEPT_S) as page:
        gr.Markdown(_model_summary(loaded[0], folder))
        with gr.Tabs():
            with gr.Tab("Predict", id="predict"):
                with gr.Row():
                    image = gr.Image(type="filepath", image_mode=None, label="image", sources=["upload"])
                    with gr.Column():
                        label = gr.Label(num_top_classes=top_k, label=f"top {top_k}")
                        table = gr.HTML(elem_id="hf-table")
                image.change(classify, inputs=image, outputs=[label, table])
            if reports:
                _reports_tab(gr, reports)
    return page


def _interrupt(signum: int, frame: Any) -> None:
    raise KeyboardInterrupt


def serve(model_dir: str | Path, host: str = "127.0.0.1", port: int = 7860, top_k: int = 5) -> None:
    """Serve :func:`build_app` on ``host:port`` until interrupted (Ctrl-C or SIGTERM); then the server stops
    and the uploaded images are deleted from Gradio's cache (``GRADIO_TEMP_DIR``)."""
    os.environ.setdefault("GRADIO_ANALYTICS_ENABLED", "False")  # no calls home
    try:
        import gradio as gr
    except ImportError as err:
        raise ConfigError(
            f"hf-finetune app needs gradio ({err}); install it with: pip install 'hf-finetune[app]'"
        ) from None
    page = build_app(model_dir, top_k=top_k)
    theme = gr.themes.Default(font=SYSTEM_FONTS, font_mono=MONO_FONTS)
    signal.signal(signal.SIGTERM, _interrupt)  # SIGTERM stops the server as Ctrl-C does: uploads deleted
    logger.info("serving %s on http://%s:%d (Ctrl-C stops)", model_dir, host, port)
    page.launch(
        server_name=host,
        server_port=port,
        share=False,
        inbrowser=False,
        ssr_mode=False,
        theme=theme,
        footer_links=[],
    )
