"""Mistakes a user makes in the configuration end ``rdpo`` with exactly one line, ``rdpo: error: <key>: <what is
wrong>``, naming the key, with "did you mean" and the available classes; no usage text, no traceback. The paper's
names (KLDPO, WDPO, DPO) and short class names work as class paths. All through the real CLI, in-process (the
mistakes are found while parsing, before anything is built)."""

from __future__ import annotations

from pathlib import Path

import pytest
import yaml

from rdpo_lightning.cli import main, run

CONFIGS = Path(__file__).resolve().parents[2] / "configs"
QUICKSTART = str(CONFIGS / "quickstart.yaml")
KL = "rdpo_lightning.robust.KLReweighter"


def one_error_line(capsys, argv: list[str], code: int = 2) -> str:
    with pytest.raises(SystemExit) as exit_info:
        main(argv)
    assert exit_info.value.code == code
    err = capsys.readouterr().err
    errors = [line for line in err.splitlines() if line.startswith("rdpo: error:")]
    assert len(errors) == 1, err[-3000:]
    assert "usage:" not in err and "Traceback" not in err, err[-3000:]
    return errors[0]


def yaml_file(tmp_path: Path, text: str, name: str = "override.yaml") -> str:
    path = tmp_path / name
    path.write_text(text)
    return str(path)


# (overrides or a YAML text stacked on the quickstart, the expected line after "rdpo: error: ")
MISTAKES = {
    "unknown key": (["--model.betta=0.1"], "model.betta: no such key; did you mean 'model.beta'?"),
    "unknown key in YAML": ("model:\n  betta: 0.1\n", "model.betta: no such key; did you mean 'model.beta'?"),
    "unknown top-level key": ("trainr:\n  max_epochs: 1\n", "trainr.max_epochs: no such key; did you mean "),
    "unknown option under data": (
        ["--data.init_args.batchsize=8"],
        "data.batchsize: AttributeWorldDataModule has no option 'batchsize'; did you mean 'batch_size'?",
    ),
    "unknown option under data, YAML": (
        "data:\n  init_args:\n    batchsize: 8\n",
        "data.batchsize: AttributeWorldDataModule has no option 'batchsize'; did you mean 'batch_size'?",
    ),
    "init argument typo": (
        f"model:\n  robust:\n    class_path: {KL}\n    init_args:\n      temperature: 0.5\n",
        "model.robust.temperature: KLReweighter has no option 'temperature' (it takes: tau, ",
    ),
    "init argument near miss": (
        ["--model.robust=KLReweighter", "--model.robust.taus=0.5"],
        "model.robust.taus: KLReweighter has no option 'taus'; did you mean 'tau'?",
    ),
    "tau: one": (
        f"model:\n  robust:\n    class_path: {KL}\n    init_args:\n      tau: one\n",
        "model.robust.tau: expected float, got 'one'",
    ),
    "a word for a number": (["--model.beta=abc"], "model.beta: expected float, got 'abc'"),
    "a word for an optional int": (["--trainer.max_epochs=x"], "trainer.max_epochs: expected int (or null), got 'x'"),
    "optimizer argument typo": (
        ["--model.optimizer.init_args.lrr=0.1"],
        "model.optimizer.lrr: AdamW has no option 'lrr'; did you mean 'lr'?",
    ),
    "mistyped class path": (
        ["--model.robust=rdpo_lightning.robust.KLReweigher"],
        "model.robust: no class 'rdpo_lightning.robust.KLReweigher'; did you mean 'rdpo_lightning.robust.KLReweighter'?"
        " Available strategies: ",
    ),
    "mistyped paper name": (["--model.robust=KLDP"], "model.robust: no class 'KLDP'; did you mean 'KLDPO'?"),
    "mistyped loss": (
        "model:\n  pair_loss:\n    class_path: SigmoidLos\n",
        "model.pair_loss: no class 'SigmoidLos'; did you mean 'SigmoidLoss'? Available pair losses: SigmoidLoss (DPO)",
    ),
    "mistyped callback": (
        ["--trainer.callbacks+=ModelCheckpoin"],
        "trainer.callbacks: no class 'ModelCheckpoin'; did you mean 'ModelCheckpoint'?",
    ),
}


@pytest.mark.parametrize("case", list(MISTAKES))
def test_mistake_is_one_line_naming_its_key(case, tmp_path, capsys):
    given, expected = MISTAKES[case]
    overrides = ["-c", yaml_file(tmp_path, given)] if isinstance(given, str) else given
    line = one_error_line(capsys, ["fit", "-c", QUICKSTART, f"--trainer.default_root_dir={tmp_path}", *overrides])
    assert line.startswith(f"rdpo: error: {expected}"), line


def test_wrong_strategy_lists_every_strategy_by_its_names(capsys):
    line = one_error_line(capsys, ["fit", "-c", QUICKSTART, "--model.robust=KLDPP"])
    listed = line.split("Available strategies: ", 1)[1].split(", ")
    assert {"KLReweighter (KLDPO)", "WassersteinPenalty (WDPO)", "NoRobust (DPO)", "DrDPO", "GroupDRO"} <= set(listed)
    assert "RobustLoss" not in listed and "GlobalReweighting" not in listed  # bases are not choices


def test_bad_yaml_indentation_names_file_line_and_key(tmp_path, capsys):
    path = yaml_file(tmp_path, "model:\n  beta: 0.1\n   warmup_steps: 3\n")
    line = one_error_line(capsys, ["fit", "-c", QUICKSTART, "-c", path])
    assert line == (
        f"rdpo: error: {path}, line 3: not valid YAML (mapping values are not allowed here), after model.beta: "
        "check the indentation"
    )


def test_missing_config_file_suggests_a_neighbour(capsys):
    missing = str(CONFIGS / "robust" / "kll.yaml")
    line = one_error_line(capsys, ["fit", "-c", QUICKSTART, "-c", missing])
    assert line == f"rdpo: error: -c {missing}: no such file; did you mean 'kl.yaml'?"


def printed_config(capsys, argv: list[str]) -> dict:
    with pytest.raises(SystemExit) as exit_info:
        main(["fit", "-c", QUICKSTART, *argv, "--print_config"])
    assert exit_info.value.code in (0, None)
    return yaml.safe_load(capsys.readouterr().out)


@pytest.mark.parametrize(
    "given, key, class_path",
    [
        (["--model.robust=KLDPO"], "robust", "rdpo_lightning.robust.KLReweighter"),
        (["--model.robust", "WDPO"], "robust", "rdpo_lightning.robust.WassersteinPenalty"),
        (["--model.robust.class_path=DPO"], "robust", "rdpo_lightning.robust.NoRobust"),
        (["--model.robust=KLReweighter"], "robust", "rdpo_lightning.robust.KLReweighter"),
        (["--model.pair_loss=DPO"], "pair_loss", "rdpo_lightning.losses.SigmoidLoss"),
        ("model:\n  robust: WDPO\n", "robust", "rdpo_lightning.robust.WassersteinPenalty"),
        ("model:\n  robust:\n    class_path: KLDPO\n    init_args: {tau: 0.5}\n", "robust", KL),
        ("model:\n  pair_loss: {class_path: IPO}\n", "pair_loss", "rdpo_lightning.losses.IPOLoss"),
    ],
    ids=lambda given: str(given).replace("\n", " ")[:40],
)
def test_paper_names_and_short_names_are_class_paths(given, key, class_path, tmp_path, capsys):
    argv = ["-c", yaml_file(tmp_path, given)] if isinstance(given, str) else given
    model = printed_config(capsys, argv)["model"]
    assert model[key]["class_path"] == class_path


def test_paper_name_keeps_its_init_args(tmp_path, capsys):
    model = printed_config(capsys, ["--model.robust=KLDPO", "--model.robust.tau=0.25"])["model"]
    assert model["robust"] == {"class_path": KL, "init_args": {"tau": 0.25, "normalize": True, "clamp_max": 10.0}}


def test_a_value_that_looks_like_an_alias_elsewhere_is_left_alone(tmp_path, capsys):
    printed = printed_config(capsys, ["--trainer.logger.init_args.name=DPO"])
    assert printed["trainer"]["logger"]["init_args"]["name"] == "DPO"


@pytest.mark.parametrize(
    "argv, expected",
    [
        (["fitt"], "rdpo: error: fitt: no such command; did you mean 'fit'? (commands: fit, validate, export, pareto)"),
        (["test"], "rdpo: error: test: no such command (commands: fit, validate, export, pareto)"),
    ],
)
def test_unknown_command_is_one_line(argv, expected, capsys):
    with pytest.raises(SystemExit) as exit_info:
        run(argv)
    assert exit_info.value.code == 2
    assert capsys.readouterr().err.strip() == expected
