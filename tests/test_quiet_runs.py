"""What a user sees: a short quickstart fit and a LoRA fit on their own model print no warning they cannot act on,
the progress bar shows the project's metric names in full (no ``v_num``), ``last.ckpt`` holds the last step and the
best worst-case pass keeps its own name; ``rdpo validate --ckpt_path X`` alone runs from the recorded configuration
and prints the project's table once. Through the real CLI, in-process, with every warning and log record kept."""

from __future__ import annotations

import logging
import warnings
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

import pytest
import torch

from rdpo_lightning.cli import main
from tests.cli.test_input_errors import own_model_args, write_pairs

CONFIGS = Path(__file__).resolve().parents[1] / "configs"
#: the libraries' loggers (the project's own warnings each name the key that acts on them)
LOGGERS = ("lightning.pytorch", "lightning.fabric", "transformers", "peft", "py.warnings")


class Keep(logging.Handler):
    def __init__(self) -> None:
        super().__init__(logging.INFO)
        self.messages: list[str] = []

    def emit(self, record: logging.LogRecord) -> None:
        self.messages.append(f"{record.levelname} {record.name}: {record.getMessage()}")


@contextmanager
def everything_said() -> Iterator[tuple[list[warnings.WarningMessage], Keep]]:
    """Every warning a user running ``rdpo`` sees (Python's default filters, not pytest's: deprecations of code
    outside ``__main__`` hidden) and every INFO+ record of the libraries' loggers."""
    keep = Keep()
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        warnings.simplefilter("ignore", DeprecationWarning)
        warnings.simplefilter("ignore", PendingDeprecationWarning)
        for name in LOGGERS:
            logging.getLogger(name).addHandler(keep)
        try:
            yield caught, keep
        finally:
            for name in LOGGERS:
                logging.getLogger(name).removeHandler(keep)


def unactionable(caught: list[warnings.WarningMessage], keep: Keep) -> list[str]:
    said = [f"{w.category.__name__} {Path(w.filename).name}:{w.lineno}: {w.message}" for w in caught]
    said += [m for m in keep.messages if not m.startswith("INFO") or "Tip:" in m]
    return said


def quickstart_args(root: Path, steps: int) -> list[str]:
    return [
        *("-c", str(CONFIGS / "quickstart.yaml")),
        f"--trainer.default_root_dir={root}",
        f"--trainer.logger.init_args.save_dir={root}",
        f"--trainer.max_steps={steps}",
        "--trainer.val_check_interval=2",  # passes at steps 2 and 4 (generation on the 2nd); the fit stops at 5
        "--trainer.enable_model_summary=false",
        "--trainer.log_every_n_steps=1",
        "--data.init_args.num_train=64",
        "--data.init_args.num_val=8",
        "--data.init_args.batch_size=8",
        "--data.init_args.val_alphas=[0.0,1.0]",
        "--model.model_config.n_layer=1",
        "--model.model_config.n_embd=32",
    ]


def test_quickstart_fit_is_quiet_and_last_ckpt_holds_the_last_step(tmp_path, capsys):
    with everything_said() as (caught, keep):
        cli = main(["fit", *quickstart_args(tmp_path, steps=5)])
    assert cli.trainer.global_step == 5
    assert not (said := unactionable(caught, keep)), "\n".join(said)
    out = capsys.readouterr().out
    assert "v_num" not in out
    assert "step 4: val/" in out and "val/worst_case/loss " in out  # the validation line, names in full

    checkpoints = Path(cli.trainer.log_dir) / "checkpoints"
    last = torch.load(checkpoints / "last.ckpt", map_location="cpu", weights_only=False)
    assert last["global_step"] == 5
    (best,) = checkpoints.glob("best-worst-case-*.ckpt")
    best_step = torch.load(best, map_location="cpu", weights_only=False)["global_step"]
    assert best_step in (2, 4) and best.name.endswith(f"step={best_step}.ckpt")
    assert sorted(p.name for p in checkpoints.iterdir()) == sorted([best.name, "last.ckpt"])

    # validate from the checkpoint alone (its recorded YAML), one override on top
    with everything_said() as (caught, keep):
        validated = main(["validate", f"--ckpt_path={checkpoints / 'last.ckpt'}", "--data.init_args.val_alphas=[0.5]"])
    assert not (said := unactionable(caught, keep)), "\n".join(said)
    assert validated.datamodule.val_names == ["alpha=0.10", "alpha=0.50"]
    out = capsys.readouterr().out
    assert out.count("Per-mixture validation of checkpoint") == 1
    assert "Validate metric" not in out  # Lightning's own table is off
    rows = [line for line in out.splitlines() if line.startswith("alpha=")]
    assert [row.split()[0] for row in rows] == ["alpha=0.10", "alpha=0.50"]
    assert "(train)" in rows[0] and "(train)" not in rows[1]


def test_lora_fit_on_own_model_is_quiet(tmp_path, tiny_model_dir, capsys, monkeypatch):
    monkeypatch.chdir(tmp_path)
    args = own_model_args(tiny_model_dir, write_pairs(tmp_path / "pairs.jsonl", count=16), tmp_path)
    with everything_said() as (caught, keep):
        cli = main(
            [
                "fit",
                *args,
                "--trainer.max_steps=2",
                "--trainer.log_every_n_steps=1",
                "--data.init_args.batch_size=4",
                "--model.accumulate_grad_batches=1",
                "--model.peft.init_args.fan_in_fan_out=true",  # what PEFT's warning asks of a GPT-2 (Conv1D) user
            ]
        )
    assert cli.trainer.global_step == 2
    assert not (said := unactionable(caught, keep)), "\n".join(said)


def test_validate_needs_a_recorded_config_or_c(tmp_path, capsys):
    torch.save({"state_dict": {}}, tmp_path / "plain.ckpt")
    with pytest.raises(SystemExit) as exit_info:
        main(["validate", f"--ckpt_path={tmp_path / 'plain.ckpt'}"])
    assert exit_info.value.code == 2
    assert capsys.readouterr().err.strip() == (
        f"rdpo: error: ckpt_path={tmp_path / 'plain.ckpt'}: the checkpoint records no configuration "
        "(not written by `rdpo fit`): give one with -c"
    )
