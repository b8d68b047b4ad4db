"""Run every benchmark script in bench/ in turn (``make bench``); each prints its own table."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

HERE = Path(__file__).resolve().parent


def main() -> int:
    scripts = sorted(
        p for p in HERE.glob("*.py") if p.name != Path(__file__).name and not p.name.startswith("_")
    )
    failed = []
    for script in scripts:
        print(f"== {script.name}", flush=True)
        if subprocess.run([sys.executable, str(script)], check=False).returncode != 0:
            failed.append(script.name)
    print(f"{len(scripts) - len(failed)} benchmark scripts ran, {len(failed)} failed {failed or ''}")
    return 1 if failed or not scripts else 0


if __name__ == "__main__":
    sys.exit(main())
