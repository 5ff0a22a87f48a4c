"""Every user-facing hyper-parameter is checked where it enters: a bad value in the YAML/command line ends ``rdpo``
with one line ``rdpo: error: <key>...: <message>`` that starts with the key (``model.robust.tau must be ...``,
``model: give exactly one of ...``), and no traceback."""

from __future__ import annotations

from pathlib import Path

import pytest
import yaml

from rdpo_lightning.cli import main

CONFIGS = Path(__file__).resolve().parents[2] / "configs"
KL = ["--model.robust=rdpo_lightning.robust.KLReweighter"]
WDPO = ["--model.robust=rdpo_lightning.robust.WassersteinPenalty"]
MIXTURE = ["--model.robust=MixtureDRO"]
DPO = ["--model.pair_loss=rdpo_lightning.losses.SigmoidLoss"]
RDPO = ["--model.pair_loss=rdpo_lightning.losses.RobustNoiseLoss"]
NAN, INF = float("nan"), float("inf")  # given in YAML (.nan, .inf): the command-line parser refuses them itself

BAD = [
    # the module
    (["--model.beta=0"], "model", "model.beta must be a finite number > 0, got 0"),
    ([{"model": {"beta": NAN}}], "model", "model.beta must be a finite number > 0, got nan"),
    (["--model.min_lr_ratio=1.5"], "model", "model.min_lr_ratio must lie in [0, 1], got 1.5"),
    (["--model.gradient_clip_val=-1"], "model", "model.gradient_clip_val must be a finite number > 0"),
    (["--model.warmup_steps=-3"], "model", "model.warmup_steps must be a finite number >= 0, got -3"),
    (["--model.logprob_chunk_rows=0"], "model", "model.logprob_chunk_rows must be an integer >= 1 or null, got 0"),
    (["--model.torch_dtype=float8"], "model", "model.torch_dtype must be one of"),
    (["--model.on_nonfinite=ignore"], "model", "model.on_nonfinite must be one of 'stop', 'skip'; got 'ignore'"),
    (["--model.model=gpt2"], "model", "give exactly one of model.model (a name or path) and model.model_config"),
    (["--model.model_config={n_layer: 1}"], "model", "model.model_config needs a 'model_type' key"),
    # pair losses
    (
        [*DPO, "--model.pair_loss.label_smoothing=0.7"],
        "model.pair_loss",
        "label_smoothing must lie in [0, 0.5], got 0.7",
    ),
    (
        [
            {
                "model": {
                    "pair_loss": {
                        "class_path": "rdpo_lightning.losses.SigmoidLoss",
                        "init_args": {"label_smoothing": NAN},
                    }
                }
            }
        ],
        "model.pair_loss",
        "label_smoothing must lie in [0, 0.5], got nan",
    ),
    (
        [*RDPO, "--model.pair_loss.label_smoothing=0.5"],
        "model.pair_loss",
        "label_smoothing must lie in [0, 0.5), got 0.5",
    ),
    # robust strategies
    ([*KL, "--model.robust.tau=0"], "model.robust", "tau must be a finite number > 0, got 0"),
    (
        [{"model": {"robust": {"class_path": "rdpo_lightning.robust.KLReweighter", "init_args": {"tau": INF}}}}],
        "model.robust",
        "tau must be a finite number > 0, got inf",
    ),
    ([*KL, "--model.robust.clamp_max=-1"], "model.robust", "clamp_max must be a finite number > 0, got -1"),
    ([*WDPO, "--model.robust.rho=-0.1"], "model.robust", "rho must be a finite number >= 0, got -0.1"),
    ([*WDPO, "--model.robust.mode=approx"], "model.robust", "mode must be one of 'exact', 'finite_difference'"),
    ([*WDPO, "--model.robust.epsilon=0"], "model.robust", "epsilon must be a finite number > 0, got 0"),
    ([*WDPO, "--model.robust.max_grad_norm=0"], "model.robust", "max_grad_norm must be a finite number > 0, got 0"),
    (
        [*WDPO, "--model.robust.form=norm", "--model.robust.max_grad_norm=1"],
        "model.robust",
        "max_grad_norm applies to form='squared' only",
    ),
    ([*MIXTURE, "--model.robust.radius=-0.1"], "model.robust", "radius must be a finite number >= 0, got -0.1"),
    ([*MIXTURE, "--model.robust.mixtures=[]"], "model.robust", "mixtures is empty: the set needs at least"),
    (
        [*MIXTURE, "--model.robust.radius=0.1", "--model.robust.mixtures=[0.1]"],
        "model.robust",
        "give one of radius (0.1: a ball around α₀) and mixtures ([0.1]: an explicit list), not both: a value an"
        " earlier -c file or flag set stays until null clears it: --model.robust.init_args.radius=null (or"
        " --model.robust.init_args.mixtures=null) (model.robust.radius from --model.robust.radius;"
        " model.robust.mixtures from --model.robust.mixtures)",
    ),
    (MIXTURE, "model.robust", "give radius (a ball around α₀) or mixtures (an explicit list of mixtures)"),
    ([*MIXTURE, "--model.robust.radius=0.1", "--model.robust.aggregate=min"], "model.robust", "aggregate must be"),
    # the DataModule
    (["--data.init_args.batch_size=0"], "data", "data.batch_size must be an integer >= 1, got 0"),
    (["--data.init_args.val_batch_size=0"], "data", "data.val_batch_size must be an integer >= 1 or null, got 0"),
    (["--data.init_args.num_workers=-1"], "data", "data.num_workers must be an integer >= 0, got -1"),
    (
        ["--data.init_args.pad_to_multiple_of=0"],
        "data",
        "data.pad_to_multiple_of must be an integer >= 1 or null, got 0",
    ),
    (["--data.init_args.max_length=1"], "data", "data.max_length must be an integer >= 2, got 1"),
    (["--data.init_args.max_prompt_length=40"], "data", "data.max_prompt_length must lie in [1, max_length), got 40"),
    (["--data.init_args.train_alpha=1.5"], "data", "data.train_alpha: alpha must lie in [0, 1], got 1.5"),
    (["--data.init_args.val_alphas=[0.5,-0.1]"], "data", "data.val_alphas[1]: alpha must lie in [0, 1], got -0.1"),
    (
        ["--data.init_args.mixture_kind=harmonic"],
        "data",
        "data.mixture_kind must be one of ('convex', 'geometric'), got 'harmonic'",
    ),
    (["--data.init_args.label_temperature=0"], "data", "data.label_temperature must be > 0 (or null"),
    (["--data.init_args.num_train=0"], "data", "data.num_train and data.num_val must be >= 1, got 0 and 256"),
    (["--data.init_args.seed=-1"], "data", "data.seed must be >= 0, got -1"),
    (
        ["--data.init_args.attribute_b=anger"],
        "data",
        "data.attribute_a and data.attribute_b must differ, both are 'anger'",
    ),
    (["--data.init_args.attribute_a=envy"], "data", "data.attribute_a: unknown attribute 'envy'"),
    # a value stacked from the quickstart, and how null clears it
    (
        ["--data.init_args.train_mixtures=[0.2]"],
        "data",
        "give one of data.train_alpha (0.1) and data.train_mixtures ([0.2]), not both: a value an earlier -c file or"
        " flag set stays until null clears it: --data.init_args.train_alpha=null (or"
        " --data.init_args.train_mixtures=null) (data.train_alpha from ",
    ),
    (
        ["--data.init_args.attribute_b=null"],
        "data",
        "data.attribute_a and data.attribute_b must be given together, got 'anger' and None;"
        " --data.init_args.attribute_a=null --data.init_args.attribute_b=null clears both",
    ),
    (
        ["--data.init_args.attribute_a=null", "--data.init_args.attribute_b=null", "--data.init_args.train_alpha=null"]
        + ["--data.init_args.train_mixtures=[{joy: 1.0}]"],
        "data",
        "data.val_alphas ([0.0, 0.25, 0.5, 0.75, 1.0]) needs data.attribute_a and data.attribute_b (the pair each α"
        " mixes); without them, --data.init_args.val_alphas=null clears it and data.val_mixtures lists",
    ),
]


def case_id(overrides: list) -> str:
    return " ".join(str(o) for o in overrides)[-60:]


@pytest.mark.parametrize("overrides, key, message", BAD, ids=[case_id(case[0]) for case in BAD])
def test_bad_value_is_one_line_naming_its_key(tmp_path, capsys, overrides, key, message):
    """Strings are command-line overrides; dicts are YAML files stacked after the quickstart config."""
    args = ["fit", "-c", str(CONFIGS / "quickstart.yaml"), f"--trainer.default_root_dir={tmp_path}"]
    args.append("--trainer.fast_dev_run=true")  # should a check be missing, fail after one batch, not a fit
    for i, override in enumerate(overrides):
        if isinstance(override, dict):
            path = tmp_path / f"override{i}.yaml"
            path.write_text(yaml.safe_dump(override))
            args += ["-c", str(path)]
        else:
            args.append(override)
    with pytest.raises(SystemExit) as exit_info:
        main(args)
    assert exit_info.value.code == 2
    err = capsys.readouterr().err
    errors = [line for line in err.splitlines() if line.startswith("rdpo: error:")]
    assert len(errors) == 1 and errors[0].startswith(f"rdpo: error: {key}") and message in errors[0], err[-2000:]
    assert "Traceback" not in err
    assert not list(tmp_path.rglob("*.ckpt"))


def test_the_null_an_exclusive_pair_error_names_clears_it(tmp_path, capsys):
    """Stacking a scenario on the quickstart: the error's own flag, added to the same command, makes it run."""
    args = ["fit", "-c", str(CONFIGS / "quickstart.yaml"), f"--trainer.default_root_dir={tmp_path}"]
    args += ["--data.init_args.attribute_a=null", "--data.init_args.attribute_b=null"]
    args += ["--data.init_args.train_mixtures=[{joy: 0.5, fear: 0.5}]", *MIXTURE, "--model.robust.radius=0.2"]
    for _ in range(3):  # train_alpha, then val_alphas, then it runs
        try:
            main([*args, "--print_set"])
            break
        except SystemExit as exit_info:
            assert exit_info.code == 2
        (line,) = [line for line in capsys.readouterr().err.splitlines() if line.startswith("rdpo: error:")]
        flags = [word for word in line.replace("(", " ").replace(")", " ").split() if word.endswith("=null")]
        args.append(flags[0])
    else:
        pytest.fail("the flags the errors named did not clear them")
    assert args[-2:] == ["--data.init_args.train_alpha=null", "--data.init_args.val_alphas=null"]
    assert "MixtureDRO set: family simplex, radius 0.2 around alpha_0 = joy=0.50,fear=0.50" in capsys.readouterr().out


def test_a_stacked_pair_error_names_the_file_and_the_flag_that_set_each_side(tmp_path, capsys):
    """The quickstart sets data.train_alpha; a scenario file stacked after it sets data.train_mixtures; a flag after
    both sets the radius the MixtureDRO file's mixtures clash with: each side is named with its source, the last
    one that set it."""
    scenario = tmp_path / "scenario.yaml"
    scenario.write_text(yaml.safe_dump({"data": {"init_args": {"train_mixtures": [0.3]}}}))
    quickstart = str(CONFIGS / "quickstart.yaml")
    with pytest.raises(SystemExit):
        main(["fit", "-c", quickstart, "-c", str(scenario), f"--trainer.default_root_dir={tmp_path}"])
    (line,) = [line for line in capsys.readouterr().err.splitlines() if line.startswith("rdpo: error:")]
    assert line.endswith(f"(data.train_alpha from {quickstart}; data.train_mixtures from {scenario})"), line

    listed = tmp_path / "listed.yaml"
    listed.write_text(
        yaml.safe_dump({"model": {"robust": {"class_path": "MixtureDRO", "init_args": {"mixtures": [0.1]}}}})
    )
    with pytest.raises(SystemExit):
        main(["fit", "-c", quickstart, "-c", str(listed), "--model.robust.init_args.radius=0.3",
              f"--trainer.default_root_dir={tmp_path}"])  # fmt: skip
    (line,) = [line for line in capsys.readouterr().err.splitlines() if line.startswith("rdpo: error:")]
    assert line.endswith(
        f"(model.robust.radius from --model.robust.init_args.radius; model.robust.mixtures from {listed})"
    ), line
