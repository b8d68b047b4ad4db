"""What ``hf-finetune app`` checks before gradio (slow to import) is loaded: the model folder and the address.

Both raise :class:`~hf_finetune.errors.ConfigError` with one line naming the folder or ``host:port``.
Nothing heavy is imported here."""

from __future__ import annotations

import errno
import socket

from hf_finetune.config.path_checks import check_model_folder
from hf_finetune.errors import ConfigError

__all__ = ["check_model_folder", "check_port_free"]


def check_port_free(host: str, port: int) -> None:
    """Bind ``host:port`` once and let it go: a :class:`ConfigError` naming ``host:port`` when another program
    listens there (or the host is not an address of this machine), before gradio starts."""
    if not 1 <= port <= 65535:
        raise ConfigError(f"--port: {port} is not a TCP port; expected 1 to 65535")
    try:
        infos = socket.getaddrinfo(host, port, type=socket.SOCK_STREAM)
    except socket.gaierror as err:
        raise ConfigError(f"--host: {host!r} is not a host name or address of this machine ({err})") from None
    family, kind, proto, _, address = infos[0]
    with socket.socket(family, kind, proto) as probe:
        probe.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)  # a port in TIME_WAIT is free
        try:
            probe.bind(address)
        except OSError as err:
            if err.errno == errno.EADDRINUSE:
                raise ConfigError(
                    f"--port: {host}:{port} is already in use by another program; stop it or choose a free "
                    "port with --port N"
                ) from None
            raise ConfigError(f"--host: cannot listen on {host}:{port} ({err.strerror or err})") from None
