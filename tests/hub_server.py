"""A real Hub-compatible read server for the tests: ``olah`` (PyPI) serving local git repositories on 127.0.0.1.

olah is a Hugging Face Hub mirror. With ``offline = true`` it never contacts huggingface.co, and every git
repository under ``<mirrors-path>/models/ORG/NAME`` is served as the model repo ``ORG/NAME``: the Hub's
``/api/models/ORG/NAME/revision/REV`` metadata and ``/ORG/NAME/resolve/REV/FILE`` downloads, which is what
``huggingface_hub`` (and so transformers and timm) read when ``HF_ENDPOINT`` points at it. olah answers
``/api/models/ORG/NAME`` without a revision with 401 in offline mode, so readiness is checked on
``.../revision/main`` and loaders pass ``revision="main"``. It is a read server: uploads are refused (405).

    server = LocalHub(tmp_path)
    server.publish(folder, "test-org/name")    # git init + commit of exactly that folder
    server.start("test-org/name")              # free loopback port, waits until the repo is served
    env = server.client_env(os.environ, tmp_path / "hf_home")
    ...
    server.stop()                              # SIGTERM to its process id, SIGKILL after 10 s
"""

from __future__ import annotations

import os
import shutil
import signal
import socket
import subprocess
import sys
import time
import urllib.error
import urllib.request
from pathlib import Path

__all__ = ["LocalHub", "free_port"]

_GIT_ENV = {
    "GIT_CONFIG_NOSYSTEM": "1",
    "GIT_CONFIG_GLOBAL": os.devnull,
    "GIT_AUTHOR_NAME": "hf-finetune tests",
    "GIT_AUTHOR_EMAIL": "tests@localhost",
    "GIT_COMMITTER_NAME": "hf-finetune tests",
    "GIT_COMMITTER_EMAIL": "tests@localhost",
}


def free_port() -> int:
    """A TCP port free on 127.0.0.1 right now."""
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


class LocalHub:
    """olah started as a subprocess on a free loopback port, serving the repos :meth:`publish` made."""

    def __init__(self, root: str | Path):
        self.root = Path(root)
        self.mirrors = self.root / "mirrors"
        self.port: int | None = None
        self.process: subprocess.Popen | None = None
        self.log_path = self.root / "olah.out"

    @property
    def endpoint(self) -> str:
        if self.port is None:
            raise RuntimeError("the server is not started")
        return f"http://127.0.0.1:{self.port}"

    def publish(self, folder: str | Path, repo_id: str) -> str:
        """Make ``repo_id`` a git repository holding exactly the files of ``folder``; returns the commit id."""
        org, name = repo_id.split("/")
        repo = self.mirrors / "models" / org / name
        if repo.exists():
            shutil.rmtree(repo)
        shutil.copytree(folder, repo)
        env = dict(os.environ, **_GIT_ENV)
        for command in (
            ["git", "init", "-q", "-b", "main"],
            ["git", "add", "-A"],
            ["git", "commit", "-q", "--no-gpg-sign", "-m", f"publish {repo_id}"],
        ):
            subprocess.run(command, cwd=repo, env=env, check=True, capture_output=True, timeout=60)
        head = subprocess.run(
            ["git", "rev-parse", "HEAD"], cwd=repo, env=env, check=True, capture_output=True, text=True
        )
        return head.stdout.strip()

    def _write_config(self) -> Path:
        config = self.root / "olah.toml"
        config.write_text(
            "\n".join(
                [
                    "[basic]",
                    'host = "127.0.0.1"',
                    f"port = {self.port}",
                    f'repos-path = "{self.root / "cache"}"',
                    'mirror-scheme = "http"',
                    f'mirror-netloc = "127.0.0.1:{self.port}"',
                    f'mirror-lfs-netloc = "127.0.0.1:{self.port}"',
                    f'mirrors-path = ["{self.mirrors}"]',
                    "metadata-cache-ttl = 0",
                    "",
                    "[accessibility]",
                    "offline = true",
                    "",
                ]
            ),
            encoding="utf-8",
        )
        return config

    def start(self, ready_repo: str, timeout: float = 60.0) -> None:
        """Start olah and wait until it serves ``ready_repo``'s ``main`` (a repo :meth:`publish` made)."""
        (self.mirrors / "models").mkdir(parents=True, exist_ok=True)
        for _ in range(3):  # another process may take the free port first: try another one
            self.port = free_port()
            config = self._write_config()
            log = self.log_path.open("ab")
            self.process = subprocess.Popen(
                [
                    sys.executable,
                    "-c",
                    "import sys; from olah.server import cli; sys.exit(cli())",
                    "--config",
                    str(config),
                    "--log-path",
                    str(self.root / "logs"),
                ],
                cwd=self.root,
                stdout=log,
                stderr=subprocess.STDOUT,
                env={k: v for k, v in os.environ.items() if not k.startswith("HF_")},
            )
            log.close()
            if self.wait_ready(ready_repo, timeout):
                return
            if self.process.poll() is None:
                self.stop()
                break
            self.process = None
        raise RuntimeError(f"olah did not serve {ready_repo}; its output:\n{self.log()[-3000:]}")

    def wait_ready(self, repo_id: str, timeout: float = 60.0) -> bool:
        """True once ``/api/models/ORG/NAME/revision/main`` answers 200; False if olah exits or time runs out."""
        url = f"{self.endpoint}/api/models/{repo_id}/revision/main"
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if self.process is not None and self.process.poll() is not None:
                return False
            try:
                with urllib.request.urlopen(url, timeout=5) as response:
                    if response.status == 200:
                        return True
            except (urllib.error.URLError, ConnectionError, TimeoutError):
                pass
            time.sleep(0.2)
        return False

    def stop(self) -> None:
        """Stop olah by its process id: SIGTERM, then SIGKILL if it is still there after 10 s."""
        process, self.process = self.process, None
        if process is None or process.poll() is not None:
            return
        os.kill(process.pid, signal.SIGTERM)
        try:
            process.wait(timeout=10)
        except subprocess.TimeoutExpired:
            os.kill(process.pid, signal.SIGKILL)
            process.wait(timeout=10)

    def log(self) -> str:
        """What olah printed (its access log included)."""
        return self.log_path.read_text(encoding="utf-8", errors="replace") if self.log_path.exists() else ""

    def client_env(self, base: dict[str, str], hf_home: str | Path) -> dict[str, str]:
        """``base`` for a process that reads the Hub from this server: HF_ENDPOINT, online, a fresh HF_HOME."""
        env = {
            k: v for k, v in base.items() if k not in ("HF_TOKEN", "HUGGING_FACE_HUB_TOKEN", "HF_HUB_CACHE")
        }
        env.update(
            HF_ENDPOINT=self.endpoint,
            HF_HUB_OFFLINE="0",
            TRANSFORMERS_OFFLINE="0",
            HF_HOME=str(hf_home),
            HF_HUB_DISABLE_TELEMETRY="1",
            HF_HUB_DISABLE_XET="1",
        )
        return env
