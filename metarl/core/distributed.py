"""Ray, the optional extra (``pip install "metarl[ray]"``): the one place metarl imports it and connects to it.

Nothing here imports Ray at module import, and nothing in metarl calls this module's Ray-facing functions unless a
config asks for Ray (``sampler="ray"``) or a command needs it (``metarl sweep``); the default local sampler never
imports Ray.

* :func:`ray_installed` says whether the extra is installed, without importing Ray (a config's ``__post_init__`` uses
  it, so a missing extra is refused before anything is built).
* :func:`import_ray` imports it, or raises a one-line :class:`~metarl.core.config.ConfigError` saying how to install it.
* :func:`connect` returns the ``ray`` module with a running instance: the one this process already started (a test's
  ``ray.init(num_cpus=2)``, a user's ``ray.init(address=...)``), else ``ray.init()``, which itself reads
  ``RAY_ADDRESS`` (a cluster's head, ``host:port`` or ``ray://host:port``) and otherwise starts a local instance.
  Connecting to a cluster is Ray's own; the only thing added here is that an address in ``RAY_ADDRESS`` is first
  checked with a short TCP connect (:data:`CONNECT_TIMEOUT` seconds), so an unreachable head fails in seconds with
  one line instead of Ray's minute of retries.
"""

from __future__ import annotations

import importlib
import importlib.util
import os
import socket
from typing import Any
from urllib.parse import urlsplit

from .config import ConfigError

INSTALL_HINT = 'install the extra: pip install "metarl[ray]" (or make install)'
CONNECT_TIMEOUT = 5.0
"""seconds to wait for the TCP connect to the address in ``RAY_ADDRESS`` before refusing it"""


def ray_installed() -> bool:
    """Whether ``import ray`` would find Ray (the module is not imported)."""
    try:
        return importlib.util.find_spec("ray") is not None
    except (ImportError, ValueError):  # ValueError: sys.modules["ray"] is None (import blocked)
        return False


def import_ray(purpose: str = "sampler 'ray'") -> Any:
    """The ``ray`` module; one-line :class:`ConfigError` naming ``purpose`` when the extra is not installed."""
    try:
        return importlib.import_module("ray")
    except ImportError:
        raise ConfigError(f"{purpose} needs Ray, which is not installed: {INSTALL_HINT}") from None


def _host_port(address: str) -> tuple[str, int] | None:
    """``(host, port)`` of a Ray address (``host:port``, ``ray://host:port``); None for ``auto``/``local``."""
    if address in ("auto", "local", ""):
        return None
    parts = urlsplit(address if "://" in address else f"ray://{address}")
    default = 10001 if address.startswith("ray://") else 6379
    try:
        port = parts.port or default
    except ValueError:
        raise ConfigError(f"RAY_ADDRESS={address!r} is not a Ray address (host:port or ray://host:port)") from None
    if not parts.hostname:
        raise ConfigError(f"RAY_ADDRESS={address!r} is not a Ray address (host:port or ray://host:port)")
    return parts.hostname, port


def check_reachable(address: str, timeout: float = CONNECT_TIMEOUT) -> None:
    """One-line :class:`ConfigError` unless a TCP connection to the Ray address opens within ``timeout`` seconds."""
    target = _host_port(address)
    if target is None:
        return
    try:
        with socket.create_connection(target, timeout=timeout):
            pass
    except OSError as err:
        reason = err.strerror or str(err) or type(err).__name__
        raise ConfigError(f"cannot reach the Ray cluster at RAY_ADDRESS={address!r} within {timeout:g} s ({reason}): "
                          "start it (ray start --head) or unset RAY_ADDRESS for a local instance") from None


def connect(purpose: str = "sampler 'ray'", log_to_driver: bool = False) -> Any:
    """The ``ray`` module with a running instance (see the module docstring); one-line errors. ``log_to_driver``:
    show the workers' output here (a sweep's trials)."""
    ray = import_ray(purpose)
    if ray.is_initialized():
        return ray
    address = os.environ.get("RAY_ADDRESS")
    if address:
        check_reachable(address)
    try:
        ray.init(address=address or None, include_dashboard=False, log_to_driver=log_to_driver)
    except (ConnectionError, RuntimeError, ValueError) as err:
        text = str(err).strip().splitlines()
        raise ConfigError(f"cannot start or join a Ray instance: {text[0] if text else type(err).__name__}") from None
    return ray
