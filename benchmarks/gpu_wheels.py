"""What a GPU session must carry: the packages the project needs that the device image lacks, and whether a wheels
folder holds exactly them.

The GPU machine reaches no registry, so every package its image (``gpu_image_packages.txt``) lacks travels as a
wheel in an ignored folder (``.whl/``, filled by ``gpu_wheels.sh`` from the pins in ``gpu_wheels.txt``) and is
installed with ``--no-deps``. The gaps are found by walking the project's requirements (with the ``bench`` and
``qlora`` extras) for the device's interpreter (CPython 3.12, Linux x86-64): a requirement the image holds is the
image's business (its own needs included); one it lacks is a gap, and its own requirements are walked in turn, read
from its wheel in the folder, else from this environment's installed copy. ``python benchmarks/gpu_session.py
check`` reports any difference between the gaps, the pins and the folder; ``versions`` (part 1 of the session)
prints what the machine runs and any carried requirement its packages do not meet.
"""

from __future__ import annotations

import re
import subprocess
import sys
import zipfile
from collections.abc import Callable, Iterable
from importlib import metadata
from pathlib import Path

HERE = Path(__file__).resolve().parent
ROOT = HERE.parent
IMAGE = HERE / "gpu_image_packages.txt"
PINS = HERE / "gpu_wheels.txt"
PROJECT = "rdpo-lightning"
EXTRAS = ("bench", "qlora")
#: what travels to the device in one call: the working tree and the carried wheels together
CARRY_LIMIT = 64 * 2**20
#: the device's interpreter, for environment markers
DEVICE = {"python_version": "3.12", "python_full_version": "3.12.3", "sys_platform": "linux", "os_name": "posix",
          "platform_system": "Linux", "platform_machine": "x86_64", "implementation_name": "cpython",
          "platform_python_implementation": "CPython"}  # fmt: skip
#: wheel tags the device installs: pure Python, or CPython 3.12 manylinux x86-64
PYTHON_TAGS = {"py3", "py312", "cp312", "py2.py3"}
ABI_TAGS = {"none", "cp312", "abi3"}


def canonical(name: str) -> str:
    return re.sub(r"[-_.]+", "-", name).lower()


def read_names(path: Path) -> list[str]:
    """Lines of a list file, comments and blanks dropped."""
    lines = (line.split("#", 1)[0].strip() for line in path.read_text().splitlines())
    return [line for line in lines if line]


def image_packages(path: Path = IMAGE) -> set[str]:
    return {canonical(name) for name in read_names(path)}


def pins(path: Path = PINS) -> dict[str, str]:
    """``name==version`` lines: canonical name -> version."""
    found = {}
    for line in read_names(path):
        name, _, version = line.partition("==")
        found[canonical(name)] = version.strip()
    return found


def project_requirements() -> list[str]:
    """The project's requirements with its extras, from pyproject.toml (or the installed metadata before 3.11)."""
    try:
        import tomllib
    except ModuleNotFoundError:  # Python 3.10
        return [r for r in metadata.requires(PROJECT) or [] if "extra ==" not in r or _extra_of(r) in EXTRAS]
    project = tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]
    extras = project.get("optional-dependencies", {})
    return [*project["dependencies"], *(r for extra in EXTRAS for r in extras.get(extra, []))]


def _extra_of(requirement: str) -> str:
    match = re.search(r"extra\s*==\s*['\"]([^'\"]+)['\"]", requirement)
    return match.group(1) if match else ""


def wheel_requires(path: Path) -> list[str] | None:
    """Requires-Dist of a wheel file (None: not a readable wheel)."""
    try:
        with zipfile.ZipFile(path) as wheel:
            name = next(n for n in wheel.namelist() if n.endswith(".dist-info/METADATA"))
            text = wheel.read(name).decode()
    except (zipfile.BadZipFile, StopIteration, OSError):
        return None
    return [line.split(":", 1)[1].strip() for line in text.splitlines() if line.startswith("Requires-Dist:")]


def installed_requires(name: str) -> list[str] | None:
    try:
        return metadata.requires(name) or []
    except metadata.PackageNotFoundError:
        return None


def requirement_reader(wheels: Path | None) -> Callable[[str], list[str] | None]:
    """A package's requirements: from its wheel in ``wheels`` where readable, else from this environment."""
    files = {parse_wheel_name(p.name)[0]: p for p in wheels.glob("*.whl")} if wheels and wheels.is_dir() else {}

    def requires(name: str) -> list[str] | None:
        found = wheel_requires(files[name]) if name in files else None
        return found if found is not None else installed_requires(name)

    return requires


def gaps(
    requirements: Iterable[str], image: set[str], requires: Callable[[str], list[str] | None]
) -> dict[str, list[str] | None]:
    """Every package the requirements need on the device that the image lacks -> its requirements (None: unknown
    here, so not walked)."""
    from packaging.requirements import Requirement

    found: dict[str, list[str] | None] = {}
    todo = [(r, ("",) + EXTRAS) for r in requirements]  # the project's own extras are wanted
    while todo:
        text, extras = todo.pop()
        requirement = Requirement(text)
        marker = requirement.marker
        if marker is not None and not any(marker.evaluate({**DEVICE, "extra": e}) for e in extras):
            continue
        name = canonical(requirement.name)
        if name in image or name == PROJECT or name in found:
            continue
        found[name] = requires(name)
        todo += [(r, ("", *requirement.extras)) for r in found[name] or []]
    return found


def parse_wheel_name(filename: str) -> tuple[str, str, set[str], set[str], set[str]]:
    """(canonical name, version, python tags, abi tags, platform tags) of a wheel file name."""
    parts = filename[: -len(".whl")].split("-")
    if len(parts) == 6:  # a build tag
        del parts[2]
    name, version, python, abi, platform = (parts + ["", "", "", ""])[:5]
    return canonical(name), version, set(python.split(".")), set(abi.split(".")), set(platform.split("."))


def device_installs(python: set[str], abi: set[str], platform: set[str]) -> bool:
    """Whether the device's pip takes a wheel with these tags."""
    linux = any(p == "any" or (p.startswith("manylinux") and p.endswith("x86_64")) for p in platform)
    return bool(python & PYTHON_TAGS) and bool(abi & ABI_TAGS) and linux


def travelling_bytes() -> int | None:
    """Bytes of the working tree that a device call sends (tracked and untracked-not-ignored files); None without
    git."""
    try:
        listed = subprocess.run(["git", "ls-files", "-z", "--cached", "--others", "--exclude-standard"], cwd=ROOT,
                                capture_output=True, check=True).stdout  # fmt: skip
    except (OSError, subprocess.CalledProcessError):
        return None
    files = (ROOT / name for name in listed.decode().split("\0") if name)
    return sum(f.stat().st_size for f in files if f.is_file())


def check_folder(wheels: Path, pinned: dict[str, str], tree_bytes: int | None) -> tuple[list[str], list[str]]:
    """Problems with the wheels folder against the pins (one wheel each, at its version, installable on the device,
    nothing else), and notes (sizes against the carry limit)."""
    if not wheels.is_dir():
        return [f"no wheels folder {wheels}: run bash benchmarks/gpu_wheels.sh"], []
    problems, held = [], {}
    for path in sorted(wheels.glob("*.whl")):
        name, version, python, abi, platform = parse_wheel_name(path.name)
        held.setdefault(name, []).append(version)
        if not device_installs(python, abi, platform):
            problems.append(f"{path.name}: not installable on the device (CPython 3.12, manylinux x86-64)")
    for name, versions in held.items():
        if name not in pinned:
            problems.append(f"{name} {versions}: a wheel in {wheels} that gpu_wheels.txt does not pin")
        elif len(versions) > 1:
            problems.append(f"{name}: {len(versions)} versions {versions} (two stop the whole install)")
        elif versions[0] != pinned[name]:
            problems.append(f"{name}: the wheel is {versions[0]}, gpu_wheels.txt pins {pinned[name]}")
    problems += [f"{name}=={version}: no wheel in {wheels}" for name, version in pinned.items() if name not in held]
    size = sum(p.stat().st_size for p in wheels.glob("*.whl"))
    notes = [f"wheels: {len(held)} packages, {size / 2**20:.1f} MiB"]
    if tree_bytes is not None:
        total = size + tree_bytes
        notes.append(f"with the working tree ({tree_bytes / 2**20:.1f} MiB): {total / 2**20:.1f} MiB of the"
                     f" {CARRY_LIMIT / 2**20:.0f} MiB a device call carries")  # fmt: skip
        if total > CARRY_LIMIT:
            problems.append(f"{total / 2**20:.1f} MiB would travel: over the {CARRY_LIMIT / 2**20:.0f} MiB limit")
    return problems, notes


def check(wheels: Path, image: Path = IMAGE, pin_file: Path = PINS) -> tuple[list[str], list[str]]:
    """Problems (the gaps against the pins, the folder against both) and notes."""
    pinned = pins(pin_file)
    needed = gaps(project_requirements(), image_packages(image), requirement_reader(wheels))
    problems = [f"{name}: the image lacks it and gpu_wheels.txt does not carry it" for name in needed
                if name not in pinned]  # fmt: skip
    problems += [f"{name}: carried, but the image has it or nothing needs it (a carried copy shadows the image's)"
                 for name in pinned if name not in needed]  # fmt: skip
    notes = [f"the image lacks {len(needed)} packages the project needs: {', '.join(sorted(needed))}"]
    unknown = sorted(name for name, requires in needed.items() if requires is None)
    if unknown:
        notes.append(f"requirements not read (neither installed here nor a wheel in {wheels}): {', '.join(unknown)}")
    folder_problems, folder_notes = check_folder(wheels, pinned, travelling_bytes())
    return problems + folder_problems, notes + folder_notes


# --- on the device: what runs there -----------------------------------------------------------------------------------
SHOWN = ("torch", "transformers", "lightning", "pytorch-lightning", "peft", "accelerate", "tokenizers",
         "huggingface-hub", "safetensors", "numpy", "pyarrow", "torchmetrics")  # fmt: skip


def versions() -> int:
    """Print the GPU, driver and package versions, where each carried package was imported from, and every
    requirement of a carried package or of the project that the installed versions do not meet; 1 if a carried
    package or the project does not import."""
    import importlib

    print(f"python {sys.version.split()[0]} ({sys.executable})")
    try:
        query = "name,driver_version,memory.total"
        smi = subprocess.run(["nvidia-smi", f"--query-gpu={query}", "--format=csv,noheader"], capture_output=True,
                             text=True, timeout=30)  # fmt: skip
        print(f"nvidia-smi: {smi.stdout.strip() or smi.stderr.strip()}")
    except (OSError, subprocess.TimeoutExpired) as error:
        print(f"nvidia-smi: not run ({error})")
    import torch

    cuda = torch.cuda.is_available()
    gpu = f"{torch.cuda.get_device_name(0)}, capability {torch.cuda.get_device_capability(0)}" if cuda else "none"
    print(f"torch {torch.__version__}, CUDA {torch.version.cuda}, GPU: {gpu}")
    for name in (*SHOWN, *pins()):
        try:
            print(f"  {name} {metadata.version(name)}")
        except metadata.PackageNotFoundError:
            print(f"  {name}: not installed")
    failed = 0
    for module in ("datasets", "trl", "jsonargparse", "bitsandbytes", "rdpo_lightning"):
        try:
            print(f"  import {module}: {Path(importlib.import_module(module).__file__).parent}")
        except Exception as error:  # report every failure, then go on
            failed += 1
            print(f"  import {module}: FAILED {type(error).__name__}: {str(error).splitlines()[0][:200]}")
    unmet = unmet_requirements([PROJECT, *pins()])
    print("requirements of the carried packages and the project: " + ("all met" if not unmet else ""))
    for line in unmet:
        print(f"  {line}")
    return 1 if failed else 0


def unmet_requirements(names: Iterable[str]) -> list[str]:
    """Each requirement of ``names`` (for this interpreter, with the project's extras) that the installed packages
    do not meet."""
    from packaging.requirements import Requirement

    lines = []
    for name in names:
        for text in installed_requires(name) or []:
            requirement = Requirement(text)
            extras = ("", *EXTRAS) if name == PROJECT else ("",)
            if requirement.marker is not None and not any(requirement.marker.evaluate({"extra": e}) for e in extras):
                continue
            try:
                have = metadata.version(requirement.name)
            except metadata.PackageNotFoundError:
                lines.append(f"{name} needs {requirement}: not installed")
                continue
            if requirement.specifier and not requirement.specifier.contains(have, prereleases=True):
                lines.append(f"{name} needs {requirement}: found {have}")
    return lines


if __name__ == "__main__":
    sys.exit(versions())
