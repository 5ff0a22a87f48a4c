"""One GPU session, end to end: install what the image lacks, then the checks and benchmarks in order of value.

Each part runs in its own process group under its own timeout (a part that hangs is killed, and the next one still
gets its time), inside an overall budget (``--budget``, 555 s: a device command may run 600), and writes its whole
output to ``<out>/<n>-<part>.log``; ``<out>/session.log`` gets each part's status, time and digest (its RESULT
lines, tables and verdicts, which this also prints), and ``<out>/details.tar.gz`` the per-strategy logs and reports:
seven files in all (a device call brings back at most eight).

    bash benchmarks/gpu_session.sh               # on a GPU machine (OUT=<folder>; wheels in .whl/)
    bash benchmarks/gpu_session.sh --dry-run     # rehearsal on CPU: a fresh venv with the image's packages only
    bash benchmarks/gpu_session.sh --check       # seconds: wheels against the image's gaps, every part's arguments

``--dry-run`` builds a virtual environment holding what the device image holds that the project uses (the CPU
torch wheel and the rest at this environment's versions), then runs every part at ``--tiny`` size on CPU through the
same install step (the carried wheels with ``--no-deps --target``) and the same argument lists, except the sizes.
GPU-only parts (FSDP1, QLoRA, bf16 kernels) say they are skipped; their arguments are still parsed.
"""

from __future__ import annotations

import argparse
import os
import re
import shutil
import signal
import subprocess
import sys
import tarfile
import tempfile
import time
from dataclasses import dataclass, field
from pathlib import Path

HERE = Path(__file__).resolve().parent
ROOT = HERE.parent
sys.path.insert(0, str(ROOT))

from benchmarks import gpu_wheels  # noqa: E402

#: what the device's own scripts add to a session: a placeholder the runner fills with the part's log folder
LOGS = "{logs}"


@dataclass
class Part:
    """One part of the session: its command on a GPU and at ``--tiny`` on CPU, each with its timeout (seconds), and
    the (module, argv) pairs whose ``parse_args`` the check runs."""

    name: str
    gpu: list[str]
    tiny: list[str]
    seconds: int
    tiny_seconds: int
    env: dict[str, str] = field(default_factory=dict)
    tiny_env: dict[str, str] = field(default_factory=dict)
    parses: list[tuple[str, list[str]]] = field(default_factory=list)
    call: int = 1  # the device command it runs in: 1, then 2 right after on the still-warm machine (see PARTS)


def script_argv(command: list[str]) -> tuple[str, list[str]] | None:
    """(module, arguments) of ``python benchmarks/<module>.py ...``."""
    if len(command) > 1 and command[0] == "python" and command[1].startswith("benchmarks/"):
        return "benchmarks." + Path(command[1]).stem, command[2:]
    return None


GPU_CHECK_STEPS = {"gpu": "4", "tiny": "2"}
GPU_CHECK_PARSES = [
    *(("benchmarks.gpu_check", f"--strategy {s} --steps {GPU_CHECK_STEPS['gpu']}".split())
      for s in ("ddp", "fsdp", "fsdp2", "single")),
    *(("benchmarks.gpu_check", f"--strategy {s} --steps {GPU_CHECK_STEPS['tiny']} --cpu-dry-run".split())
      for s in ("ddp", "fsdp2")),
]  # fmt: skip
#: in order of value, in two device commands of at most BUDGET seconds each (a command may run 600 s): the first
#: holds what decides the speed work and the GPU-only correctness checks, the second (``--call 2``, started at once,
#: while the machine is still warm: one start for both) the output layer's GPU figures, the robust strategies' step
#: times and the largest-batch search. Sized from the first H200 session (2026-12-04): install 20 s, gpu_check 52 s,
#: and 26-48 s per benchmark process at 1.24 B, mostly its start (imports, the model built and saved)
PARTS = [
    Part("install", ["install"], ["install"], seconds=35, tiny_seconds=300),
    Part("profile",
         f"python benchmarks/profile_step.py --gpu --shape llama-1b --batch-size 8 --steps 2"
         f" --output {LOGS}/profile.md".split(),
         f"python benchmarks/profile_step.py --tiny --shape llama-1b --batch-size 2 --steps 2"
         f" --output {LOGS}/profile.md".split(),
         seconds=90, tiny_seconds=300),
    Part("scale",
         f"python benchmarks/scale.py --gpu --shape llama-1b --batch-size 8 --steps 3 --configs trl-dpo ours-dpo"
         f" --output {LOGS}/scale.md".split(),
         f"python benchmarks/scale.py --tiny --shape llama-1b --batch-size 8 --steps 3 --configs trl-dpo ours-dpo"
         f" --live-configs --output {LOGS}/scale.md".split(),
         seconds=130, tiny_seconds=600),
    Part("scale32",
         f"python benchmarks/scale.py --gpu --shape llama-1b --batch-size 32 --steps 2 --lengths long_tailed"
         f" --configs trl-dpo ours-dpo --output {LOGS}/scale32.md".split(),
         f"python benchmarks/scale.py --tiny --shape llama-1b --batch-size 4 --steps 2 --lengths long_tailed"
         f" --configs trl-dpo ours-dpo --live-configs --output {LOGS}/scale32.md".split(),
         seconds=100, tiny_seconds=600),
    # all four strategies at once on one GPU (correctness: their step times share the GPU)
    Part("gpu_check", ["bash", "benchmarks/gpu_check.sh"], ["bash", "benchmarks/gpu_check.sh"], seconds=80,
         tiny_seconds=1500, parses=GPU_CHECK_PARSES,
         env={"STEPS": GPU_CHECK_STEPS["gpu"], "PARALLEL": "1", "PER_STRATEGY_TIMEOUT": "145", "LOG_DIR": LOGS},
         tiny_env={"STEPS": GPU_CHECK_STEPS["tiny"], "PARALLEL": "1", "PER_STRATEGY_TIMEOUT": "1400",
                   "LOG_DIR": LOGS, "CPU_DRY_RUN": "1"}),
    Part("varlen_check", ["python", "benchmarks/varlen_check.py"],
         ["python", "benchmarks/varlen_check.py", "--cpu-dry-run"], seconds=60, tiny_seconds=300),
    Part("output_layer",
         "python benchmarks/output_layer.py --device cuda --dtype bf16 --tokens 16384".split(),
         "python benchmarks/output_layer.py --tiny".split(), seconds=45, tiny_seconds=120, call=2),
    Part("robust_steps",
         f"python benchmarks/accumulation.py --gpu --shape llama-1b --strategies kldpo wdpo_fd cvar mixture_dro"
         f" --steps 2 --output {LOGS}/robust_steps.md".split(),
         f"python benchmarks/accumulation.py --tiny --shape llama-1b --strategies kldpo wdpo_fd cvar mixture_dro"
         f" --steps 1 --output {LOGS}/robust_steps.md".split(),
         seconds=100, tiny_seconds=900, call=2),
    Part("largest_batch",
         f"python benchmarks/largest_batch.py --parallel --start-pairs 8 --resolution 0.25 --max-pairs 64"
         f" --output {LOGS}/largest_batch.md".split(),
         f"python benchmarks/largest_batch.py --tiny --parallel --start-pairs 1 --resolution 0.125 --max-pairs 2"
         f" --output {LOGS}/largest_batch.md".split(),
         seconds=85, tiny_seconds=600, call=2),  # 64 pairs at most (was 128): the online part needed its 45 s
    Part("online",  # issue 35: online DPO against offline on the GPU, generation tokens/s and step time
         f"python benchmarks/online.py --accelerator gpu --scenarios pair --methods DPO --seeds 1 --num-train 1024"
         f" --epochs 1 --completions 4 --gen-tokens 32 --layers 4 --hidden 256 --quiet --out {LOGS}/online".split(),
         f"python benchmarks/online.py --tiny --scenarios pair --methods DPO --quiet --out {LOGS}/online".split(),
         seconds=50, tiny_seconds=300, call=2),
]  # fmt: skip
for _part in PARTS:  # a part that runs a benchmark script also parses its two argument lists
    _part.parses = [*_part.parses, *(parsed for parsed in map(script_argv, (_part.gpu, _part.tiny)) if parsed)]
#: the issue-25 mixture strategy joins through benchmarks/gpu_check.py's CASES (one line), not here
BUDGET = 555
RESERVE = 15  # seconds kept back for packing the logs
DIGEST = ("RESULT", "PLAN", "passed:", "gpu_check:", "|", "Ours / TRL", "- ", "Targets", "GPUs:", "python ",
          "nvidia-smi", "torch ", "  ", "install:", "requirements", "rehearsal:", "rdpo: error", "Traceback",
          "[killed")  # fmt: skip
ERROR = re.compile(r"^\w*(Error|Exception)\b")


# --- check ------------------------------------------------------------------------------------------------------------
def check_arguments(parts: list[Part] = PARTS) -> list[str]:
    """Every part's argument lists through its script's own ``parse_args``, and the shell scripts through
    ``bash -n``; the problems found."""
    import importlib

    problems = []
    for part in parts:
        for module, argv in part.parses:
            try:
                importlib.import_module(module).parse_args([a.replace(LOGS, "/tmp") for a in argv])
            except SystemExit as error:  # argparse's way to refuse
                problems.append(f"{part.name}: {module} refuses {' '.join(argv)} (exit {error.code})")
    for script in ("gpu_check.sh", "gpu_session.sh", "gpu_wheels.sh"):
        done = subprocess.run(["bash", "-n", str(HERE / script)], capture_output=True, text=True)
        if done.returncode != 0:
            problems.append(f"{script}: {done.stderr.strip()}")
    return problems


def check(wheels: Path) -> int:
    problems, notes = gpu_wheels.check(wheels)
    problems += check_arguments()
    for line in notes:
        print(f"check: {line}")
    for line in problems:
        print(f"check: PROBLEM: {line}")
    print(f"check: {'OK' if not problems else f'{len(problems)} problem(s)'}: {len(PARTS)} parts")
    return 1 if problems else 0


# --- run --------------------------------------------------------------------------------------------------------------
class Session:
    """Runs the parts in order under their timeouts and the overall budget, logging under ``out``."""

    def __init__(
        self,
        out: Path,
        wheels: Path,
        tiny: bool,
        budget: float,
        site: Path,
        only: list[str] | None = None,
        call: int | None = 1,
    ) -> None:
        self.out, self.wheels, self.tiny, self.site = out, wheels, tiny, site
        wanted = only if only is not None else [p.name for p in PARTS if call is None or p.call == call]
        self.parts = [p for p in PARTS if p.name in ("install", *wanted)]  # a fresh machine: install first
        self.deadline = time.monotonic() + budget
        self.work = Path(tempfile.mkdtemp(prefix="rdpo-gpu-session-"))
        self.logs = self.work / "details"
        self.logs.mkdir()
        self.summary = out / "session.log"
        self.env = {
            **os.environ,
            "PYTHONPATH": os.pathsep.join([str(site), str(ROOT), os.environ.get("PYTHONPATH", "")]).rstrip(os.pathsep),
            "PYTHONUNBUFFERED": "1",
            "TOKENIZERS_PARALLELISM": "false",
            "RDPO_CACHE": str(self.work / "cache"),
            "RDPO_BENCH_MODELS": str(self.work / "models"),  # the 1 B weights, written once for three parts
            "HF_HUB_OFFLINE": "1",  # nothing outside the machine can be reached: never wait for a registry
            "HF_DATASETS_OFFLINE": "1",
            "TRANSFORMERS_NO_ADVISORY_WARNINGS": "1",
            "PYTHON": sys.executable,
        }

    def say(self, text: str) -> None:
        print(text, flush=True)
        with self.summary.open("a") as summary:
            summary.write(text + "\n")

    def run(self) -> int:
        self.say(f"# GPU session ({'--tiny on CPU: a rehearsal' if self.tiny else 'GPU'}), {time.ctime()}, budget"
                 f" {self.deadline - time.monotonic():.0f} s, python {sys.executable}")  # fmt: skip
        failures = 0
        for part in self.parts:
            failures += self.run_part(PARTS.index(part) + 1, part) != "ok"
        self.pack()
        self.say(f"# done: {len(self.parts) - failures} of {len(self.parts)} parts ok")
        return 1 if failures else 0

    def run_part(self, number: int, part: Part) -> str:
        log = self.out / f"{number}-{part.name}.log"
        seconds, left = part.tiny_seconds if self.tiny else part.seconds, self.deadline - time.monotonic() - RESERVE
        if left < min(seconds, 20):  # too little of the budget left to be worth starting
            self.say(f"## {number}. {part.name}: skipped, {left + RESERVE:.0f} s of the budget left")
            return "skipped"
        limit = min(seconds, left)
        start = time.monotonic()
        if part.name == "install":
            status = self.install(log, limit)
        else:
            command = [sys.executable if a == "python" else a.replace(LOGS, str(self.logs))
                       for a in (part.tiny if self.tiny else part.gpu)]  # fmt: skip
            env = {k: v.replace(LOGS, str(self.logs)) for k, v in (part.tiny_env if self.tiny else part.env).items()}
            status = run_logged(command, {**self.env, **env}, log, limit)
        self.say(f"## {number}. {part.name}: {status} in {time.monotonic() - start:.0f} s (limit {limit:.0f} s;"
                 f" whole output: {log.name})")  # fmt: skip
        self.say("\n".join(digest(log)))
        return status

    def install(self, log: Path, limit: float) -> str:
        """The carried wheels into ``site`` with ``--no-deps`` (as the device's notes say), the project with
        ``--no-deps`` (editable, else from PYTHONPATH), then what runs and what is unmet. A rehearsal first proves
        that the device's pip (CPython 3.12, manylinux x86-64) takes every carried file, then installs them for its
        own interpreter (:func:`rehearsal_wheels`)."""
        end = time.monotonic() + limit
        wheels = sorted(str(p) for p in self.wheels.glob("*.whl"))
        if not wheels:  # a machine that installed the project itself (pip install -e ".[bench,qlora]")
            with log.open("a") as out:
                out.write(f"install: no wheels in {self.wheels}: what this environment holds must do (on a machine"
                          " without a registry: bash benchmarks/gpu_wheels.sh fills it beforehand)\n")  # fmt: skip
            return run_logged([sys.executable, str(HERE / "gpu_wheels.py")], self.env, log, limit)
        pip = [sys.executable, "-m", "pip", "install", "-q", "--no-index", "--no-deps", "--no-compile",
               "--no-cache-dir", "--disable-pip-version-check"]  # fmt: skip
        if self.tiny:
            device = [*pip, "--dry-run", "--only-binary=:all:", "--target", str(self.work / "device-site"),
                      "--python-version", "3.12", "--implementation", "cp", "--platform", "any",
                      *(f"--platform=manylinux{tag}_x86_64" for tag in DEVICE_MANYLINUX), *wheels]  # fmt: skip
            status = run_logged(device, self.env, log, end - time.monotonic())
            if status != "ok":
                return f"failed: the device's pip would refuse the wheels ({status})"
            wheels = rehearsal_wheels(wheels, self.work / "rehearsal-wheels", log)
        status = run_logged([*pip, "--upgrade", "--target", str(self.site), *wheels], self.env, log, limit)
        if status != "ok":
            return f"failed: the wheels did not install ({status})"
        editable = run_logged([*pip, "--no-build-isolation", "-e", str(ROOT)], self.env, log, end - time.monotonic())
        with log.open("a") as out:
            out.write(f"install: the project {'installed editable' if editable == 'ok' else 'runs from PYTHONPATH'}"
                      f" ({editable}); {len(wheels)} wheels in {self.site}\n")  # fmt: skip
        return run_logged([sys.executable, str(HERE / "gpu_wheels.py")], self.env, log, end - time.monotonic())

    def pack(self) -> None:
        """The per-strategy logs and the reports, one archive (files over 4 MiB left out)."""
        with tarfile.open(self.out / "details.tar.gz", "w:gz") as archive:
            for path in sorted(self.logs.rglob("*")):
                if path.is_file() and path.stat().st_size <= 4 * 2**20:
                    archive.add(path, arcname=str(path.relative_to(self.logs)))
        shutil.rmtree(self.work, ignore_errors=True)


#: the manylinux tags the device's pip takes (glibc 2.39 there; the ones wheels of these packages use)
DEVICE_MANYLINUX = ("_2_28", "_2_27", "_2_24", "_2_17", "2014", "1")


def rehearsal_wheels(wheels: list[str], folder: Path, log: Path) -> list[str]:
    """The carried wheels, each one this interpreter cannot install (a rehearsal on another Python than the
    device's 3.12, e.g. multiprocess's per-version wheel) swapped for the same release built for it, said in the
    log."""
    from packaging.tags import sys_tags
    from packaging.utils import parse_wheel_filename

    here = set(sys_tags())
    chosen = []
    for wheel in wheels:
        name, version, _, tags = parse_wheel_filename(Path(wheel).name)
        if tags & here:
            chosen.append(wheel)
            continue
        folder.mkdir(parents=True, exist_ok=True)
        fetch = [sys.executable, "-m", "pip", "download", "-q", "--no-deps", "--only-binary=:all:", "-d", str(folder),
                 f"{name}=={version}"]  # fmt: skip
        if run_logged(fetch, dict(os.environ), log, 120) != "ok":
            raise RuntimeError(f"rehearsal: no wheel of {name}=={version} for this interpreter")
        found = next(p for p in folder.glob("*.whl") if parse_wheel_filename(p.name)[:2] == (name, version))
        with log.open("a") as out:
            out.write(f"rehearsal: {Path(wheel).name} is for the device's Python; {found.name} instead\n")
        chosen.append(str(found))
    return chosen


def run_logged(command: list[str], env: dict[str, str], log: Path, limit: float) -> str:
    """Run ``command`` in its own process group, output appended to ``log``; kill the group at ``limit`` seconds."""
    with log.open("a") as out:
        out.write(f"$ {' '.join(command)}\n")
        out.flush()
        process = subprocess.Popen(command, cwd=ROOT, env=env, stdout=out, stderr=subprocess.STDOUT,
                                   start_new_session=True)  # fmt: skip
        try:
            code = process.wait(timeout=max(limit, 1))
        except subprocess.TimeoutExpired:
            for sig, grace in ((signal.SIGTERM, 10), (signal.SIGKILL, 5)):
                try:
                    os.killpg(process.pid, sig)
                    process.wait(timeout=grace)
                    break
                except (ProcessLookupError, subprocess.TimeoutExpired):
                    continue
            out.write(f"\n[killed: past its {limit:.0f} s]\n")
            return f"timed out after {limit:.0f} s"
    return "ok" if code == 0 else f"failed (exit {code})"


def digest(log: Path, limit: int = 80) -> list[str]:
    """The lines of a part's log worth reading first (results, tables, verdicts, errors), at most ``limit``."""
    lines = log.read_text(errors="replace").splitlines() if log.exists() else []
    kept = [line for line in lines if (line.startswith(DIGEST) and not line.startswith(("  File ", "    "))
            and "it/s]" not in line) or ERROR.match(line)]  # fmt: skip
    kept = list(dict.fromkeys(kept))  # once each (gpu_check.sh repeats its RESULT lines in its summary)
    if len(kept) > limit:
        kept = [*kept[: limit // 2], f"... ({len(kept) - limit} lines) ...", *kept[-limit // 2 :]]
    last = lines[-1][:300] if lines else ""
    return [f"    {line[:300]}" for line in kept] or [f"    (nothing to show; last line: {last})"]


# --- dry run ----------------------------------------------------------------------------------------------------------
def image_environment(venv: Path) -> None:
    """A fresh venv with what the device image holds that the project uses, at this environment's versions: the
    image-held requirements met on the way to the gaps (torch from its CPU wheel), their own needs left to pip."""
    from importlib import metadata

    from packaging.requirements import Requirement

    image, held = gpu_wheels.image_packages(), set()
    for text in gpu_wheels.project_requirements():
        held.add(gpu_wheels.canonical(Requirement(text).name))
    for requires in gpu_wheels.gaps(gpu_wheels.project_requirements(), image, gpu_wheels.installed_requires).values():
        held.update(gpu_wheels.canonical(Requirement(r).name) for r in requires or [] if "extra ==" not in r)
    wanted = []
    for name in sorted(held & image):
        try:
            wanted.append(f"{name}=={metadata.version(name).split('+')[0]}")  # torch==2.13.0: the CPU wheel on disk
        except metadata.PackageNotFoundError:
            wanted.append(name)
    shutil.rmtree(venv, ignore_errors=True)
    subprocess.run([sys.executable, "-m", "venv", str(venv)], check=True)
    python = str(venv / "bin" / "python")
    print(f"dry run: a fresh venv {venv} with the image's packages the project uses: {' '.join(wanted)}", flush=True)
    subprocess.run([python, "-m", "pip", "install", "-q", "--disable-pip-version-check", *wanted], check=True)
    missing = subprocess.run([python, "-c", "import importlib.util as u; print(' '.join(n for n in "
                              f"{sorted(gpu_wheels.pins())!r} if u.find_spec(n.replace('-', '_')) is None))"],
                             capture_output=True, text=True, check=True).stdout.split()  # fmt: skip
    present = sorted(set(gpu_wheels.pins()) - set(missing))
    print(
        f"dry run: before the wheels the venv lacks {', '.join(missing)}"
        + (f"; it already has {', '.join(present)} (not as on the image)" if present else " (as the image)")
    )


REHEARSAL = Path(tempfile.gettempdir()) / "rdpo-gpu-rehearsal"


def dry_run(out: Path, wheels: Path, keep_venv: bool, parts: list[str] | None = None) -> int:
    start = time.monotonic()
    work = REHEARSAL
    venv = work / "venv"
    if not (keep_venv and (venv / "bin" / "python").exists()):
        image_environment(venv)
    site = work / "site"
    shutil.rmtree(site, ignore_errors=True)
    command = [str(venv / "bin" / "python"), str(Path(__file__)), "run", "--tiny", "--out", str(out),
               "--wheels", str(wheels), "--site", str(site), "--budget", "100000", "--call", "all"]  # fmt: skip
    code = subprocess.run(command + (["--parts", *parts] if parts else []), cwd=ROOT).returncode
    print(f"dry run: {time.monotonic() - start:.0f} s in all; logs in {out}")
    return code


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("mode", choices=["run", "dry-run", "check"])
    parser.add_argument(
        "--out",
        type=Path,
        default=None,
        help="where the logs go (default: $OUT, else a temporary folder; never the repository)",
    )
    parser.add_argument("--wheels", type=Path, default=ROOT / ".whl")
    parser.add_argument("--tiny", action="store_true", help="run: every part at its CPU smoke size")
    parser.add_argument("--budget", type=float, default=BUDGET, help="run: seconds for all parts together")
    parser.add_argument("--site", type=Path, default=Path("/tmp/site"), help="run: where the wheels are installed")
    parser.add_argument("--keep-venv", action="store_true", help="dry-run: reuse the last rehearsal's venv")
    parser.add_argument(
        "--parts",
        nargs="+",
        default=None,
        choices=[p.name for p in PARTS[1:]],
        help="these parts only (after the install), e.g. to rerun the ones that failed",
    )
    parser.add_argument(
        "--call",
        choices=["1", "2", "all"],
        default="1",
        help="run: the first device command's parts (default), the second's, or all (a rehearsal)",
    )
    return parser.parse_args(argv)


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    if args.mode == "check":
        return check(args.wheels)
    if args.out is None:
        rehearsal = REHEARSAL / "out"
        shutil.rmtree(rehearsal if args.mode == "dry-run" else "", ignore_errors=True)
        args.out = rehearsal if args.mode == "dry-run" else Path(os.environ.get("OUT") or tempfile.mkdtemp())
    args.out.mkdir(parents=True, exist_ok=True)
    if args.mode == "dry-run":
        return dry_run(args.out, args.wheels, args.keep_venv, args.parts)
    call = None if args.call == "all" else int(args.call)
    return Session(args.out, args.wheels, args.tiny, args.budget, args.site, args.parts, call).run()


if __name__ == "__main__":
    sys.exit(main())
