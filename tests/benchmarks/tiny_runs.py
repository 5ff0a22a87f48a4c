"""Running a benchmark script at ``--tiny``: the way a user runs it, a fresh process with the repository on its path;
or its ``main`` in this process, where a fresh process of the same script runs elsewhere (its own configurations'
worker processes, or another test's run) and would add only an interpreter's start-up (~7 s of CPU for torch,
Lightning and transformers)."""

from __future__ import annotations

import contextlib
import importlib
import io
import logging
import os
import subprocess
import sys
import warnings
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]
RESULTS = ROOT / "benchmarks" / "results"


def published() -> dict[str, tuple[int, bytes]]:
    """Every file under benchmarks/results/ (the published figures): its modification time and its bytes, by path."""
    files = sorted(path for path in RESULTS.rglob("*") if path.is_file())
    return {str(path.relative_to(RESULTS)): (path.stat().st_mtime_ns, path.read_bytes()) for path in files}


def run_tiny(script: str, *args: str, cwd: Path, timeout: int = 300, **env: str) -> subprocess.CompletedProcess:
    """``python benchmarks/<script>.py --tiny <args>`` from ``cwd`` with extra environment ``env``; it must succeed
    and leave the published results as they were (``--tiny`` never writes benchmarks/results/)."""
    before = published()
    run = subprocess.run(
        [sys.executable, str(ROOT / "benchmarks" / f"{script}.py"), "--tiny", *args],
        capture_output=True,
        text=True,
        env=dict(os.environ, PYTHONPATH=str(ROOT), **env),
        cwd=cwd,
        timeout=timeout,
    )
    assert run.returncode == 0, run.stderr[-4000:]
    assert published() == before, f"{script}.py --tiny wrote to benchmarks/results/"
    return run


def run_tiny_here(script: str, *args: str, cwd: Path, **env: str) -> subprocess.CompletedProcess:
    """``benchmarks.<script>.main(["--tiny", *args])`` in this process, from ``cwd`` with extra environment ``env``,
    its printed output returned as a finished process's; the same checks as :func:`run_tiny`. What a benchmark's main
    sets for the whole process (library log levels, progress bars, warning filters, environment, working directory;
    the torch thread count is tests/conftest.py's to restore) is put back afterwards, so later tests see none of it."""
    main = importlib.import_module(f"benchmarks.{script}").main
    before = published()
    out, err = io.StringIO(), io.StringIO()
    with _restored_process_state(), contextlib.redirect_stdout(out), contextlib.redirect_stderr(err):
        os.chdir(cwd)
        os.environ.update(env)
        main(["--tiny", *args])
    assert published() == before, f"{script}.py --tiny wrote to benchmarks/results/"
    return subprocess.CompletedProcess([script, "--tiny", *args], 0, out.getvalue(), err.getvalue())


@contextlib.contextmanager
def _restored_process_state():
    import datasets
    import transformers

    known = logging.Logger.manager.loggerDict.values()
    loggers = [logging.getLogger(), *(logger for logger in known if isinstance(logger, logging.Logger))]
    levels = {logger: (logger.level, logger.disabled) for logger in loggers}
    bars = datasets.utils.logging.is_progress_bar_enabled(), transformers.utils.logging.is_progress_bar_enabled()
    environ, cwd = dict(os.environ), os.getcwd()
    try:
        with warnings.catch_warnings():
            yield
    finally:
        os.chdir(cwd)
        os.environ.clear()
        os.environ.update(environ)
        for logger, (level, disabled) in levels.items():
            logger.setLevel(level)
            logger.disabled = disabled
        for logger in list(logging.Logger.manager.loggerDict.values()):  # made during the run (e.g. "rdpo_lightning"
            if isinstance(logger, logging.Logger) and logger not in levels:  # set to ERROR by a benchmark): as new
                logger.setLevel(logging.NOTSET)
                logger.disabled = False
        for enabled, library in zip(bars, (datasets.utils.logging, transformers.utils.logging), strict=True):
            (library.enable_progress_bar if enabled else library.disable_progress_bar)()
