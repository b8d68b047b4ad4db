"""``python -m hf_finetune`` (and ``accelerate launch -m hf_finetune train RECIPE``)."""

import sys

from hf_finetune.cli import main

sys.exit(main())
