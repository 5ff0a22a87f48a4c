"""MixtureDRO's set in view: the line a fit logs when it starts (and writes to TensorBoard's text tab), and
``rdpo fit ... --print_set``, which prints every mixture and stops; both through the real CLI, in-process. The printed
rows are checked against the ball itself (its vertices by brute force), not against the code that built them."""

from __future__ import annotations

import logging
import re

import numpy as np
import yaml
from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

from rdpo_lightning.cli import main
from tests.cli.test_cli import CONFIGS, run_args
from tests.cli.test_cli_errors import one_error_line
from tests.robust.test_mixture_set import ball_vertices

STACK = ["-c", str(CONFIGS / "quickstart.yaml"), "-c", str(CONFIGS / "robust" / "mixture_dro.yaml")]
#: a mixture near the anger corner, with weights below the lattice step (0.125)
SIMPLEX = [
    "--data.init_args.train_alpha=null",
    "--data.init_args.train_mixtures=[{anger: 0.8, fear: 0.1, joy: 0.1}]",
    "--model.robust.init_args.family=simplex",
    "--model.robust.init_args.radius=0.5",
    "--model.robust.init_args.steps=4",
]
SMALL = [
    "--data.init_args.num_train=16",
    "--data.init_args.num_val=4",
    "--data.init_args.batch_size=8",
    "--data.init_args.val_alphas=[1.0]",
    "--model.model_config.n_layer=1",
]
ATTRIBUTES = ("sadness", "joy", "love", "anger", "fear")  # the attribute world's, in its column order


def printed_rows(text: str) -> tuple[list[str], np.ndarray, list[str]]:
    """The printed table: its header's attribute names, every row's weights, and each row's role."""
    lines = text.strip().splitlines()
    header = lines[1].split()
    rows, roles = [], []
    for line in lines[2:]:
        cells = line.split()
        rows.append([float(c) for c in cells[1 : 1 + len(header)]])
        roles.append(" ".join(cells[1 + len(header) :]))
    return header, np.asarray(rows), roles


def test_print_set_prints_every_mixture_of_the_ball_and_trains_nothing(tmp_path, capsys):
    """The ball is over all five of the world's attributes (family simplex): the printed extreme points are its
    vertices, α₀ is marked, and every printed mixture lies in it."""
    cli = main(["fit", *STACK, *run_args(tmp_path), *SMALL, *SIMPLEX, "--print_set"])
    out = capsys.readouterr().out
    text = out[out.index("MixtureDRO set:") :]
    assert cli.trainer.global_step == 0 and not any(tmp_path.iterdir())  # no step, no log, no checkpoint
    header, rows, roles = printed_rows(text)
    assert header == list(ATTRIBUTES)
    alpha0 = np.asarray([0.0, 0.1, 0.0, 0.8, 0.1])
    vertices = ball_vertices(alpha0, 0.5)
    extreme = rows[[role == "extreme point" for role in roles]]
    assert sorted(map(tuple, np.round(extreme, 4))) == sorted(map(tuple, np.round(vertices, 4)))
    assert np.allclose(rows[[role == "alpha_0" for role in roles]], [alpha0])
    assert (0.5 * np.abs(rows - alpha0).sum(1) <= 0.5 + 1e-4).all() and np.allclose(rows.sum(1), 1, atol=1e-3)
    summary = text.splitlines()[0]
    assert f"radius 0.5 around alpha_0 = joy=0.10,anger=0.80,fear=0.10, {len(rows)} mixtures" in summary
    assert f"{len(vertices)} extreme points" in summary and "anger=1.00" in summary


def test_the_fit_logs_its_set_once_and_writes_it_to_tensorboard(tmp_path, caplog, capsys):
    with caplog.at_level(logging.INFO):
        cli = main(["fit", *STACK, *run_args(tmp_path), *SMALL, *SIMPLEX, "--trainer.max_steps=1"])
    assert cli.trainer.global_step == 1
    lines = [r.getMessage() for r in caplog.records if r.getMessage().startswith("MixtureDRO set:")]
    assert len(lines) == 1, lines
    corners = len(ball_vertices(np.asarray([0.0, 0.1, 0.0, 0.8, 0.1]), 0.5))
    assert re.search(rf"family simplex, radius 0.5 around .*, \d+ mixtures, {corners} extreme points: ", lines[0])
    (events,) = tmp_path.rglob("events.out.tfevents.*")
    accumulator = EventAccumulator(str(events), size_guidance={"tensors": 0})
    accumulator.Reload()
    (written,) = accumulator.Tensors("robust/uncertainty_set/text_summary")
    assert written.tensor_proto.string_val[0].decode() == lines[0]
    assert "print_set" not in yaml.safe_load(cli.model.run_config_yaml)  # a request, not part of the run


def test_print_set_for_a_strategy_without_a_list_of_mixtures_is_one_line(tmp_path, capsys):
    line = one_error_line(capsys, ["fit", *STACK, *run_args(tmp_path), *SMALL, "--model.robust=KLDPO", "--print_set"])
    assert line == (
        "rdpo: error: --print_set: model.robust (KLReweighter) takes its worst case over no list of mixtures to print;"
        " MixtureDRO (model.robust=MixtureDRO) has one"
    )
