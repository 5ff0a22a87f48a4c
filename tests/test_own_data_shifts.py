"""Worst-case evaluation on a user's own pairs, through the real ``rdpo`` CLI and ``configs/own_model.yaml``: a
held-out set, one set per group of it, a shifted file; GroupDRO from ``configs/robust/group_dro_pairs.yaml``;
checkpoint selection on the worst case; ``rdpo validate``'s table; ``rdpo pareto`` over the runs."""

from __future__ import annotations

import json
import math
import random
import re
from pathlib import Path

import pytest

from rdpo_lightning.cli import main
from rdpo_lightning.pareto.report import main as pareto

CONFIGS = Path(__file__).resolve().parents[1] / "configs"
NOUNS = ["morning", "train", "city", "road", "river", "garden", "letter", "window"]
GOOD, BAD = ["happy", "laugh", "delight", "smile", "bright"], ["grief", "tears", "rage", "dread", "bitter"]
SETS = ["held_out", "group=cheerful", "group=gloomy", "flipped"]


def write_rows(path: Path, count: int, seed: int, groups: bool) -> Path:
    """Two groups of users who disagree: ``cheerful`` prefers the happy words, ``gloomy`` the sad ones; without
    ``groups`` every row is the gloomy users' preference (a shifted set)."""
    rng = random.Random(seed)
    rows = []
    for i in range(count):
        happy, sad = " ".join(rng.choices(GOOD, k=3)), " ".join(rng.choices(BAD, k=3))
        group = "cheerful" if groups and i % 4 else "gloomy"  # three quarters cheerful
        row = {"prompt": f"the {rng.choice(NOUNS)} {rng.choice(NOUNS)}"}
        row.update({"chosen": happy, "rejected": sad} if group == "cheerful" else {"chosen": sad, "rejected": happy})
        rows.append({**row, "group": group} if groups else row)
    path.write_text("".join(json.dumps(row) + "\n" for row in rows))
    return path


def own_data_args(model_dir: Path, data: Path, root: Path) -> list[str]:
    settings = {
        "model.model": model_dir,
        "data.init_args.tokenizer": model_dir,
        "data.init_args.path": data / "pairs.jsonl",
        "data.init_args.val_path": f"{{flipped: {data / 'flipped.jsonl'}}}",
        "data.init_args.group_column": "group",
        "data.init_args.val_fraction": 0.25,
        "data.init_args.max_length": 48,
        "trainer.default_root_dir": root,
        "trainer.logger.init_args.save_dir": root,
        "trainer.accelerator": "cpu",
        "trainer.enable_progress_bar": "false",
        "trainer.log_every_n_steps": 1,
        "trainer.val_check_interval": 2,  # 24 training pairs, batches of 4: passes at steps 2, 4, 6
        "model.optimizer.init_args.lr": 0.003,
    }
    return [f"--{key}={value}" for key, value in settings.items()]


@pytest.fixture(scope="module")
def runs(tmp_path_factory, tiny_model_dir):
    """A DPO run and a GroupDRO run on the same files, through ``rdpo fit``."""
    data = tmp_path_factory.mktemp("own_data")
    write_rows(data / "pairs.jsonl", 32, seed=0, groups=True)
    write_rows(data / "flipped.jsonl", 8, seed=1, groups=False)
    done = {}
    for method, stack in (("DPO", []), ("GroupDRO", ["-c", str(CONFIGS / "robust" / "group_dro_pairs.yaml")])):
        root = data / method
        cli = main(["fit", "-c", str(CONFIGS / "own_model.yaml"), *stack, *own_data_args(tiny_model_dir, data, root)])
        done[method] = (root, cli)
    return data, done


def passes(scalars: dict[str, dict[int, float]], tag: str) -> list[float]:
    return [scalars[tag][step] for step in sorted(scalars[tag])]


def test_every_set_is_validated_and_the_worst_case_is_the_worst_of_them(runs, tensorboard_scalars):
    data, done = runs
    for method, (root, cli) in done.items():
        dm = cli.datamodule
        assert dm.val_names == SETS, method
        sizes = {name: len(dm.val_datasets[name]) for name in SETS}
        assert sizes == {"held_out": 8, "group=cheerful": 6, "group=gloomy": 2, "flipped": 8}  # 25% of each group
        assert len(dm.train_dataset) == 24
        scalars = tensorboard_scalars(root)
        losses = {name: passes(scalars, f"val/{name}/loss") for name in SETS}
        assert all(len(values) == 3 for values in losses.values())
        for index, worst in enumerate(passes(scalars, "val/worst_case/loss")):
            per_set = [losses[name][index] for name in SETS]
            assert worst == pytest.approx(max(per_set), abs=1e-6)
            # the group sets are exactly the held-out set's pairs: its mean is their size-weighted mean
            pooled = (6 * losses["group=cheerful"][index] + 2 * losses["group=gloomy"][index]) / 8
            assert losses["held_out"][index] == pytest.approx(pooled, abs=1e-5)
        assert max(losses["group=gloomy"]) > max(losses["group=cheerful"])  # a real worst case: the minority
        # the checkpoint kept is the pass with the best worst case
        checkpoint = cli.trainer.checkpoint_callback
        assert checkpoint.monitor == "val/worst_case/loss"
        assert float(checkpoint.best_model_score) == pytest.approx(min(passes(scalars, "val/worst_case/loss")))


def test_group_dro_stacks_on_own_model_and_weights_the_groups(runs, tensorboard_scalars):
    _, done = runs
    root, cli = done["GroupDRO"]
    assert type(cli.model.robust).__name__ == "GroupDRO" and cli.datamodule.group_names == ["cheerful", "gloomy"]
    assert sorted(set(cli.datamodule.train_dataset["group"])) == [0, 1]
    scalars = tensorboard_scalars(root)
    assert {"train/robust/worst_group_loss", "train/robust/group_weight/0", "train/robust/group_weight/1"} <= set(
        scalars
    )
    weights = cli.model.robust.group_weights.tolist()
    assert weights != [0.5, 0.5] and sum(weights) == pytest.approx(1.0)


def table_rows(text: str) -> dict[str, list[str]]:
    """The rows of the validate table by their first word (a set name, or 'worst' / 'at')."""
    table = text[text.index("mixture") :].split("\n\n")[0]  # Lightning prints its own table after it
    lines = table.splitlines()[2:]
    words = [re.sub(r" \([^)]*\)", "", line).split() for line in lines if not line.startswith("---")]  # '(train)'
    return {row[0]: row[1:] for row in words}


def test_validate_prints_every_set_and_their_worst_case(runs, tiny_model_dir, capsys):
    data, done = runs
    root, cli = done["DPO"]
    best = cli.trainer.checkpoint_callback.best_model_path
    capsys.readouterr()
    args = own_data_args(tiny_model_dir, data, root / "validate")
    main(["validate", "-c", str(CONFIGS / "own_model.yaml"), *args, f"--ckpt_path={best}"])
    rows = table_rows(capsys.readouterr().out)
    assert [name for name in rows if name not in ("worst", "at")] == SETS
    losses = {name: float(rows[name][0]) for name in SETS}
    assert float(rows["worst"][1]) == pytest.approx(max(losses.values()), abs=1e-4)  # 'worst case <loss> ...'
    assert rows["at"][0] == max(losses, key=losses.get)


def test_pareto_reads_the_runs_and_judges_group_dro_against_dpo(runs, tensorboard_scalars, tmp_path, capsys):
    _, done = runs
    capsys.readouterr()
    text = pareto(
        [
            *(f"--run={method}={root}" for method, (root, _) in done.items()),
            "--metric=loss",
            "--min-seeds=1",
            f"--out={tmp_path / 'fronts.png'}",
        ]
    )
    assert (tmp_path / "fronts.png").stat().st_size > 0
    line = next(line for line in text.splitlines() if line.startswith("GroupDRO"))
    gap = float(line.split()[2])  # the one seed's gap
    # the gap from the logged points, computed here: higher-is-better staircases of (−val/loss, −worst case)
    fronts = {}
    for method, (root, _) in done.items():
        scalars = tensorboard_scalars(root)
        fronts[method] = list(zip(passes(scalars, "val/loss"), passes(scalars, "val/worst_case/loss"), strict=True))
    assert gap == pytest.approx(staircase_gap(fronts["GroupDRO"], fronts["DPO"]), abs=1e-4)


def staircase_gap(method: list[tuple[float, float]], baseline: list[tuple[float, float]]) -> float:
    """docs/evaluation.md's gap for losses, by brute force on a fine grid: S(x) = best worst case among points at
    least as good in distribution; the mean of S_method − S_baseline over the shared range."""
    flip = [[(-x, -y) for x, y in points] for points in (method, baseline)]

    def staircase(points, x):
        reachable = [y for px, y in points if px >= x]
        return max(reachable) if reachable else -math.inf

    def front(points):  # the undominated points
        return [(x, y) for x, y in points if not any(a >= x and b >= y and (a, b) != (x, y) for a, b in points)]

    low = min(x for points in flip for x, _ in front(points))
    high = min(max(x for x, _ in points) for points in flip)
    grid = [low + (high - low) * (i + 0.5) / 20000 for i in range(20000)]
    return sum(staircase(flip[0], x) - staircase(flip[1], x) for x in grid) / len(grid)
