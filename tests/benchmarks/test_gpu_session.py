"""benchmarks/gpu_session.py's rehearsal in seconds, without a GPU or a network: the wheels it carries are exactly
what the device image lacks, a wheels folder is checked against them, every part's arguments parse with its own
script's parser, and a part that hangs is killed with its children while the next part still runs."""

from __future__ import annotations

import sys
import time
from pathlib import Path

from benchmarks import gpu_session, gpu_wheels


def test_the_pinned_wheels_are_what_the_image_lacks():
    needed = gpu_wheels.gaps(
        gpu_wheels.project_requirements(), gpu_wheels.image_packages(), gpu_wheels.installed_requires
    )
    assert set(needed) == set(gpu_wheels.pins())
    assert {"datasets", "trl", "jsonargparse", "bitsandbytes", "dill"} <= set(needed)
    assert not {"torch", "transformers", "lightning", "peft", "pyarrow"} & set(needed)


def test_the_walk_stops_at_the_image_and_follows_extras_and_markers():
    """A made-up graph with its answer worked out by hand."""
    graph = {
        "b": ["a>=1", "c[x]", "old; python_version < '3.10'"],
        "c": ["d", "e; extra == 'x'", "f; extra == 'y'"],
        "d": [],
        "e": ["a"],
    }
    found = gpu_wheels.gaps(["a", "b", "win; sys_platform == 'win32'", "g; extra == 'bench'"], {"a", "d"}, graph.get)
    # a, d: the image's; old, win: not on the device; f: an extra nobody asks for; g: the project's bench extra,
    # unknown here (None: not walked)
    assert found == {"b": graph["b"], "c": graph["c"], "e": ["a"], "g": None}


def wheel_folder(tmp_path: Path, pinned: dict[str, str]) -> Path:
    folder = tmp_path / "whl"
    folder.mkdir()
    for name, version in pinned.items():
        (folder / f"{name.replace('-', '_')}-{version}-py3-none-any.whl").write_bytes(b"")
    return folder


def test_the_folder_check_names_each_problem(tmp_path):
    pinned = gpu_wheels.pins()
    folder = wheel_folder(tmp_path, pinned)
    assert gpu_wheels.check_folder(folder, pinned, tree_bytes=0)[0] == []

    (folder / f"dill-{pinned['dill']}-py3-none-any.whl").unlink()
    (folder / "trl-0.1.0-py3-none-any.whl").write_bytes(b"")
    (folder / "tomlkit-0.15.3-py3-none-any.whl").write_bytes(b"")
    (folder / "xxhash-3.0.0-cp311-cp311-manylinux_2_17_x86_64.whl").write_bytes(b"")
    problems, _ = gpu_wheels.check_folder(folder, pinned, tree_bytes=65 * 2**20)
    text = "\n".join(problems)
    assert f"dill=={pinned['dill']}: no wheel" in text
    assert "trl: 2 versions" in text
    assert "tomlkit ['0.15.3']: a wheel" in text and "xxhash ['3.0.0']: a wheel" in text
    assert "xxhash-3.0.0-cp311-cp311-manylinux_2_17_x86_64.whl: not installable on the device" in text
    assert "over the 64 MiB limit" in text
    assert len(problems) == 6, problems


def test_wheel_tags_the_device_installs():
    def installs(filename: str) -> bool:
        return gpu_wheels.device_installs(*gpu_wheels.parse_wheel_name(filename)[2:])

    assert installs("bitsandbytes-0.50.2-py3-none-manylinux_2_24_x86_64.whl")
    assert installs("multiprocess-0.70.19-py312-none-any.whl")
    assert installs("pyarrow-26.0.1-cp312-cp312-manylinux_2_28_x86_64.whl")
    assert not installs("pyarrow-26.0.1-cp311-cp311-manylinux_2_28_x86_64.whl")
    assert not installs("multiprocess-0.70.19-py311-none-any.whl")
    assert not installs("bitsandbytes-0.50.2-py3-none-manylinux_2_24_aarch64.whl")
    assert not installs("bitsandbytes-0.50.2-py3-none-win_amd64.whl")


def test_every_part_parses_and_a_bad_argument_is_named():
    assert gpu_session.check_arguments() == []
    modules = {module for part in gpu_session.PARTS for module, _ in part.parses}
    assert modules == {
        f"benchmarks.{m}"
        for m in ("profile_step", "gpu_check", "largest_batch", "scale", "accumulation", "varlen_check", "output_layer",
                  "online")
    }  # fmt: skip
    bad = gpu_session.Part("bad", [], [], 1, 1, parses=[("benchmarks.scale", ["--gpu", "--resolutions", "0.1"])])
    assert gpu_session.check_arguments([bad]) == ["bad: benchmarks.scale refuses --gpu --resolutions 0.1 (exit 2)"]


def test_the_parts_fit_two_device_commands_most_valuable_first():
    """The profile first; each of the two device commands (the second on the still-warm machine) fits its budget with
    its install, and together they fit a session's 15 minutes of device time with one start (about 90 s)."""
    assert [part.name for part in gpu_session.PARTS] == [
        "install", "profile", "scale", "scale32", "gpu_check", "varlen_check", "output_layer", "robust_steps",
        "largest_batch", "online",
    ]  # fmt: skip
    install = gpu_session.PARTS[0]
    calls = {call: [p for p in gpu_session.PARTS[1:] if p.call == call] for call in (1, 2)}
    assert [p.name for p in calls[1]] == ["profile", "scale", "scale32", "gpu_check", "varlen_check"]
    seconds = {call: install.seconds + sum(p.seconds for p in parts) for call, parts in calls.items()}
    assert all(total <= gpu_session.BUDGET <= 600 - 45 for total in seconds.values()), seconds
    assert sum(seconds.values()) + 90 <= 15 * 60, seconds


def test_a_call_runs_its_own_parts_after_the_install(tmp_path):
    second = gpu_session.Session(tmp_path, tmp_path, tiny=False, budget=1, site=tmp_path, call=2)
    assert [part.name for part in second.parts] == [
        "install", "output_layer", "robust_steps", "largest_batch", "online"
    ]  # fmt: skip
    everything = gpu_session.Session(tmp_path, tmp_path, tiny=True, budget=1, site=tmp_path, call=None)
    assert everything.parts == gpu_session.PARTS


def test_a_rerun_of_some_parts_installs_first(tmp_path):
    session = gpu_session.Session(tmp_path, tmp_path, tiny=False, budget=1, site=tmp_path, only=["scale", "gpu_check"])
    assert [part.name for part in session.parts] == ["install", "scale", "gpu_check"]


def test_a_hanging_part_is_killed_with_its_children_and_the_next_still_runs(tmp_path, monkeypatch):
    marker = tmp_path / "grandchild_survived"
    python = sys.executable
    hang = f"({python} -c 'import time; time.sleep(2)'; touch {marker}) & sleep 30"
    monkeypatch.setattr(gpu_session, "PARTS", [
        gpu_session.Part("hangs", ["bash", "-c", hang], [], seconds=1, tiny_seconds=1),
        gpu_session.Part("next", ["python", "-c", "print('RESULT next PASS')"], [], seconds=30, tiny_seconds=30),
        gpu_session.Part("late", ["python", "-c", "print('never')"], [], seconds=30, tiny_seconds=30),
    ])  # fmt: skip
    monkeypatch.setattr(gpu_session, "RESERVE", 0)
    out = tmp_path / "out"
    out.mkdir()
    session = gpu_session.Session(out, tmp_path / "no_wheels", tiny=False, budget=40, site=tmp_path / "site")
    real_run_part = session.run_part

    def run_part(number, part):  # the budget is gone once the second part is done
        status = real_run_part(number, part)
        if part.name == "next":
            session.deadline = time.monotonic() + 5
        return status

    monkeypatch.setattr(session, "run_part", run_part)
    assert session.run() == 1
    log = (out / "session.log").read_text()
    assert "## 1. hangs: timed out after 1 s" in log
    assert (out / "1-hangs.log").read_text().endswith("[killed: past its 1 s]\n")
    assert "## 2. next: ok" in log and "    RESULT next PASS" in log
    assert "## 3. late: skipped" in log
    assert "# done: 1 of 3 parts ok" in log
    time.sleep(2.5)
    assert not marker.exists(), "the hanging part's grandchild outlived the timeout"
    assert sorted(p.name for p in out.iterdir()) == ["1-hangs.log", "2-next.log", "details.tar.gz", "session.log"]
