"""``python -m hf_finetune.demo``."""

import sys

from hf_finetune.demo.run import main

sys.exit(main(sys.argv[1:]))
