"""``hf-finetune app``: a Gradio page (on 127.0.0.1) to try a finished model on one's own images, with the run's
reports in a second tab. gradio is an optional extra (``pip install 'hf-finetune[app]'``), imported only when the
page is built (:mod:`hf_finetune.app.page`); the checks before it (:mod:`hf_finetune.app.checks`) are light."""
