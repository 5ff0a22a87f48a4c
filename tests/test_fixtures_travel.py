"""No tracked file under ``tests/`` or ``configs/`` holds an absolute path of the machine it was made on.

A fixture that records where it was written (a checkpoint's hyper-parameters, a saved ``config.yaml``, an adapter
config) passes only where that directory still exists: on a fresh clone every stop would be red. Files are read as
bytes, so checkpoints, safetensors headers and pickles are scanned as well as YAML and Python.
"""

from __future__ import annotations

import re
import subprocess
from pathlib import Path

import torch

ROOT = Path(__file__).resolve().parents[1]
SCANNED = ("tests", "configs")
#: the roots under which a machine keeps its checkouts, homes and temporary folders
MACHINE_ROOTS = ("tmp", "home", "work", "root", "Users", "mnt", "scratch", "data", "srv", "private", "media", "var")
ABSOLUTE_PATH = re.compile(rb"(?<![\w.:/~-])/(?:" + "|".join(MACHINE_ROOTS).encode() + rb")(?:/[\w.+-]+)+")


def tracked_files(root: Path) -> list[Path]:
    """The files git tracks under :data:`SCANNED` (every file there when this is no git checkout)."""
    try:
        listed = subprocess.run(
            ["git", "-C", str(root), "ls-files", "-z", *SCANNED], capture_output=True, check=True
        ).stdout
    except (OSError, subprocess.CalledProcessError):
        return [p for folder in SCANNED for p in sorted((root / folder).rglob("*")) if p.is_file()]
    return [root / name for name in listed.decode().split("\0") if name]


def absolute_paths(path: Path) -> list[str]:
    """The absolute machine paths in a file's bytes, and the repository's own absolute path if it appears."""
    data = path.read_bytes()
    found = [match.decode(errors="replace") for match in ABSOLUTE_PATH.findall(data)]
    if str(ROOT).encode() in data:
        found.append(str(ROOT))
    return found


def test_no_tracked_file_under_tests_or_configs_holds_an_absolute_path():
    files = tracked_files(ROOT)
    assert any(p.suffix == ".ckpt" for p in files)  # the binary fixtures are among those scanned
    offenders = {str(p.relative_to(ROOT)): found for p in files if (found := absolute_paths(p))}
    assert not offenders, f"absolute paths of the machine that wrote them: {offenders}"


def test_the_scan_finds_a_path_in_text_and_in_a_checkpoint(tmp_path):
    text = tmp_path / "config.yaml"
    home = "/" + "home/someone/models/base"  # written in two parts: this file is scanned too
    text.write_text(f"model:\n  model: {home}\n  url: https://example.org/home/page\n")
    assert absolute_paths(text) == [home]
    checkpoint = tmp_path / "last.ckpt"
    base = "/" + "work/build/out/lora/base"
    torch.save({"hyper_parameters": {"model": base}, "w": torch.zeros(3)}, checkpoint)
    (found,) = absolute_paths(checkpoint)  # a pickle opcode may follow the string: the path is found all the same
    assert found.startswith(base)
    relative = tmp_path / "relative.yaml"
    relative.write_text("model: lora/base\nshebang: '#!/usr/bin/env bash'\n")
    assert absolute_paths(relative) == []
