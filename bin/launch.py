"""bin/start's Python entry point: runs ``controlroom.launcher`` as ``python -m`` would.

Importing the project (the ``controlroom`` package loads the Celery app) takes a moment before
the launcher can install its own signal handlers. Ctrl-C or SIGTERM in that moment, when nothing
has been started yet, is a requested stop like any later one: one line and status 0, not a
KeyboardInterrupt traceback. The launcher replaces these handlers as soon as it runs.
"""

import runpy
import signal
import sys
from pathlib import Path
from types import FrameType


def stopped(signum: int, frame: FrameType | None) -> None:
    print(f"{signal.Signals(signum).name} received before start-up finished: stopped.", flush=True)
    sys.exit(0)


signal.signal(signal.SIGINT, stopped)
signal.signal(signal.SIGTERM, stopped)
sys.path[0] = str(Path(__file__).resolve().parent.parent)  # the project, not bin/ (as -m from the root)
runpy.run_module("controlroom.launcher", run_name="__main__", alter_sys=True)
