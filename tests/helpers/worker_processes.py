"""Background-worker processes started by a test (Celery workers, django-tasks ``db_worker``s):
each in its own process group, its output in a log file, SIGKILLed at the end."""

from __future__ import annotations

import os
import signal
import subprocess
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path


@dataclass
class WorkerProcess:
    name: str
    proc: subprocess.Popen
    log: Path
    killed: bool = field(default=False)

    def kill(self) -> None:
        """SIGKILL the worker and whatever it started (one process group)."""
        self.killed = True
        try:
            os.killpg(self.proc.pid, signal.SIGKILL)
        except ProcessLookupError:
            pass
        self.proc.wait(30)

    def owns(self, pid: int) -> bool:
        """Whether ``pid`` (a pool process, say) belongs to this worker's process group."""
        try:
            return os.getpgid(pid) == self.proc.pid
        except ProcessLookupError:
            return False

    def text(self) -> str:
        return self.log.read_text(errors="replace")


@contextmanager
def worker_processes(directory: Path) -> Iterator:
    """Yields ``spawn(name, argv, env)``, which starts a worker logging to ``directory/<name>.log``;
    every worker started is SIGKILLed on exit."""
    started: list[WorkerProcess] = []

    def spawn(name: str, argv: list[str], env: dict[str, str]) -> WorkerProcess:
        log = directory / f"{name}.log"
        with log.open("wb") as out:
            proc = subprocess.Popen(
                argv,
                env=env,
                stdout=out,
                stderr=subprocess.STDOUT,
                stdin=subprocess.DEVNULL,
                start_new_session=True,
            )
        started.append(WorkerProcess(name, proc, log))
        return started[-1]

    try:
        yield spawn
    finally:
        for worker in started:
            worker.kill()
