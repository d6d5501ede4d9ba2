"""The dummy meta-RL agent with a crash for the sweep tests: at iteration ``crash_at``, if ``crash_marker`` does not
exist yet, it creates it and kills its own process (SIGKILL: a Ray worker dying mid-run, no cleanup) or, with
``crash_how="raise"``, raises a RuntimeError."""

from __future__ import annotations

import os
import signal
from dataclasses import dataclass

from tests.dummy_agent import DummyAgent, DummyConfig


@dataclass
class CrashOnceConfig(DummyConfig):
    crash_marker: str = ""
    """a file; empty: never crash"""
    crash_at: int = -1
    """the iteration at which to crash (once, while crash_marker does not exist)"""
    crash_how: str = "kill"
    """kill: SIGKILL this process; raise: a RuntimeError"""


class CrashOnceAgent(DummyAgent):
    name = "crashonce"

    def train_iteration(self, iteration: int) -> dict[str, float]:
        marker = self.config.crash_marker
        if iteration == self.config.crash_at and marker and self._claim(marker):
            if self.config.crash_how == "raise":
                raise RuntimeError(f"a crash at iteration {iteration}")
            os.kill(os.getpid(), signal.SIGKILL)
        return super().train_iteration(iteration)

    @staticmethod
    def _claim(marker: str) -> bool:
        """Create ``marker`` holding this pid, atomically (O_EXCL): of trials reaching ``crash_at`` at the same moment
        exactly one crashes (an exists-then-write check let two crash at once under load)."""
        try:
            fd = os.open(marker, os.O_CREAT | os.O_EXCL | os.O_WRONLY)
        except FileExistsError:
            return False
        with os.fdopen(fd, "w") as file:
            file.write(f"{os.getpid()}\n")
        return True
