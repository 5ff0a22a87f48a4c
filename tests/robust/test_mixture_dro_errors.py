"""MixtureDRO's uncertainty set and its scores, wrong: one line ``rdpo: error: <key>: ...`` through the real CLI,
in-process, found when the fit starts (the set is built around the data's training mixture): a radius beyond the
simplex, a list of mixtures without α₀ or with the wrong number of weights, a grouped training set, and scores that are
not numbers (a geometric mixture over a score of 0). The construction-time checks (negative radius, empty list) are
in tests/cli/test_config_errors.py; data without scores in tests/cli/test_input_errors.py."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from tests.cli.test_cli_errors import QUICKSTART, one_error_line

MIXTURE_DRO = str(Path(QUICKSTART).parent / "robust" / "mixture_dro.yaml")
SMALL = ["--data.init_args.num_train=16", "--data.init_args.num_val=4", "--data.init_args.val_alphas=[1.0]"]
KEY = "model.robust.init_args"

CASES = {
    "radius beyond the simplex": (
        [f"--{KEY}.radius=0.95"],
        f"{KEY}.radius=0.95 reaches beyond the simplex: no mixture on the anger–fear line lies farther than 0.9",
    ),
    "grid without alpha0": (
        [f"--{KEY}.radius=null", f"--{KEY}.mixtures=[0.0,0.5,1.0]"],
        f"{KEY}.mixtures does not hold the training mixture α₀ = alpha=0.10 (data.train_alpha)",
    ),
    "weights of another length": (
        [f"--{KEY}.radius=null", f"--{KEY}.mixtures=[0.1,[0.5,0.5]]"],
        f"{KEY}.mixtures[1] has 2 weights but there are 5 attributes (sadness, joy, love, anger, fear)",
    ),
    "several training mixtures": (
        ["--data.init_args.train_alpha=null", "--data.init_args.train_mixtures=[0.1,0.9]"],
        f"{KEY}: MixtureDRO builds its mixtures around one training mixture α₀, but data.train_mixtures gives 2",
    ),
}


@pytest.mark.parametrize("case", list(CASES))
def test_a_bad_set_is_one_line_naming_its_key(case, tmp_path, capsys):
    overrides, expected = CASES[case]
    argv = ["fit", "-c", QUICKSTART, "-c", MIXTURE_DRO, f"--trainer.default_root_dir={tmp_path}", *SMALL]
    line = one_error_line(capsys, [*argv, "--trainer.fast_dev_run=true", *overrides])
    assert line.startswith(f"rdpo: error: {expected}"), line


def test_scores_that_are_not_numbers_are_one_line(tmp_path, world_tokenizer_dir, capsys):
    """A geometric mixture in log space: the data trains at helpfulness alone, so a verbosity of 0 is allowed there;
    the ball around it weighs verbosity, where log 0 is no number."""
    rows = [
        {"prompt": f"the day {p}", "response": f"{w} river", "helpfulness": 1 + (j + i) % 3, "verbosity": 0}
        for j, p in enumerate(("road", "rain", "music", "story", "night", "garden"))
        for i, w in enumerate(("happy", "gloomy", "sunny"))
    ]
    path = tmp_path / "scored.jsonl"
    path.write_text("".join(json.dumps(row) + "\n" for row in rows))
    data = {
        "class_path": "rdpo_lightning.data.ScoredCompletionsDataModule",
        "init_args": {
            "path": str(path),
            "tokenizer": str(world_tokenizer_dir),
            "score_columns": ["helpfulness", "verbosity"],
            "attribute_a": "helpfulness",
            "attribute_b": "verbosity",
            "train_alpha": 1.0,
            "val_alphas": [],
            "mixture_kind": "geometric",
            "val_fraction": 0.34,
            "max_length": 32,
        },
    }
    config = tmp_path / "scored.yaml"
    config.write_text(json.dumps({"data": data}))
    argv = ["fit", "-c", QUICKSTART, "-c", MIXTURE_DRO, "-c", str(config), f"--trainer.default_root_dir={tmp_path}"]
    line = one_error_line(capsys, [*argv, "--trainer.fast_dev_run=true"])
    assert line.startswith("rdpo: error: data.score_columns: a pair's score margin for 'verbosity' is not a number")
