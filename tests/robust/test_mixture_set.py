"""MixtureDRO's uncertainty sets (rdpo_lightning/robust/mixture_set.py) against an independent description of the
ball {α in the simplex: ½‖α − α₀‖₁ ≤ r}: its vertices found by brute force (every choice of K − 1 active constraints
among α_k ≥ 0 and the 2^K half-spaces ½·s·(α − α₀) ≤ r, s ∈ {±1}^K, solved with Σα = 1 and kept when feasible), and
its points on a fine grid of the simplex or as random convex combinations of those vertices."""

from __future__ import annotations

import itertools

import numpy as np
import pytest

from rdpo_lightning.data.mixture import Mixture
from rdpo_lightning.data.score_margins import MixtureSpace
from rdpo_lightning.errors import InputError
from rdpo_lightning.robust.mixture_set import resolve_set

ATTRIBUTES = ("anger", "fear", "joy", "love")


def space(center=(0.1, 0.9, 0.0), pair=(0, 1), kind="convex") -> MixtureSpace:
    return MixtureSpace(ATTRIBUTES[: len(center)], kind, (Mixture(tuple(center), "alpha0", kind),), pair)


def tv(points: np.ndarray, alpha: np.ndarray) -> np.ndarray:
    return 0.5 * np.abs(points - alpha).sum(-1)


def ball_vertices(alpha0: np.ndarray, radius: float) -> np.ndarray:
    """The polytope's vertices by brute force over its inequalities, written as half-spaces A·α ≤ b: every system of
    K − 1 of them made equalities, with Σα = 1, solved at once."""
    k = len(alpha0)
    signs = np.asarray(list(itertools.product((-1.0, 1.0), repeat=k)))
    a = np.vstack([-np.eye(k), 0.5 * signs])
    b = np.concatenate([np.zeros(k), radius + 0.5 * signs @ alpha0])
    active = np.asarray(list(itertools.combinations(range(len(a)), k - 1)))
    systems = np.concatenate([a[active], np.ones((len(active), 1, k))], axis=1)
    solvable = np.abs(np.linalg.det(systems)) > 1e-10
    right = np.concatenate([b[active[solvable]], np.ones((int(solvable.sum()), 1))], axis=1)
    points = np.linalg.solve(systems[solvable], right[..., None])[..., 0]
    feasible = points[(points @ a.T <= b + 1e-9).all(1)]
    found: list[np.ndarray] = []
    for x in feasible:
        if not any(np.abs(x - y).max() < 1e-9 for y in found):
            found.append(x)
    return np.asarray(found)


def ball_points(alpha0: np.ndarray, radius: float, vertices: np.ndarray) -> np.ndarray:
    """Points all over the ball: for three attributes every point of the simplex's 1/240 grid in it, for more random
    convex combinations of the vertices (spread towards them by a Dirichlet of concentration 0.3), and the vertices."""
    if len(alpha0) == 3:
        grid = np.asarray([(i, j, 240 - i - j) for i in range(241) for j in range(241 - i)]) / 240
        inside = grid[tv(grid, alpha0) <= radius + 1e-12]
    else:
        mix = np.random.default_rng(0).dirichlet(np.full(len(vertices), 0.3), size=20_000)
        inside = mix @ vertices
    return np.vstack([inside, vertices])


#: α₀ on a corner, on an edge, inside, with weights smaller than the lattice step, and over four attributes
BALLS = {
    "corner": ((1.0, 0.0, 0.0), 0.5, 4),
    "corner, the whole simplex": ((1.0, 0.0, 0.0), 1.0, 4),
    "edge": ((0.5, 0.5, 0.0), 0.3, 4),
    "edge, crossing to the far corner": ((0.6, 0.4, 0.0), 0.7, 3),
    "centre": ((1 / 3, 1 / 3, 1 / 3), 0.3, 4),
    "weights below the step (the issue's)": ((0.8, 0.1, 0.1), 0.5, 4),
    "weights below the step, one step": ((0.05, 0.15, 0.8), 0.4, 1),
    "weights below the step, coarse": ((0.05, 0.15, 0.8), 0.4, 4),
    "four attributes": ((0.7, 0.1, 0.1, 0.1), 0.5, 4),
    "four attributes, a zero weight": ((0.55, 0.3, 0.15, 0.0), 0.35, 3),
}


@pytest.mark.parametrize("case", list(BALLS))
def test_the_simplex_set_is_the_ball_its_convex_hull_and_its_extreme_points(case):
    """Every vertex of the ball is in the set and named as an extreme point, and no mixture of the set lies outside the
    ball: the set's convex hull is the ball."""
    center, radius, steps = BALLS[case]
    alpha0 = np.asarray(center)
    got = resolve_set(space(center, pair=None), radius=radius, steps=steps, family="simplex", mixtures=None)
    vertices = ball_vertices(alpha0, radius)
    matches = [np.flatnonzero(np.abs(got.weights - v).max(1) < 1e-9) for v in vertices]
    missing = vertices[[len(m) == 0 for m in matches]]
    assert all(len(m) == 1 for m in matches), f"vertices missing from the set: {missing}"
    assert sorted(int(m[0]) for m in matches) == list(got.extremes)
    assert (got.weights >= 0).all() and np.allclose(got.weights.sum(1), 1, rtol=0, atol=1e-12)
    assert (tv(got.weights, alpha0) <= radius + 1e-12).all()
    assert got.center == 0 and np.array_equal(got.weights[0], alpha0)
    assert len({tuple(np.round(w, 9)) for w in got.weights}) == len(got) == len(set(got.names))


@pytest.mark.parametrize("case", list(BALLS))
def test_every_mixture_of_the_ball_is_within_the_lattices_resolution_of_the_set(case):
    """The farthest a point of the ball lies from the set, in total variation, is no more than the farthest a point
    lies from the lattice of step h = r / steps itself (its deep holes: 2h/3 for three attributes, h for four), also
    near the faces that α₀'s small weights keep the lattice from reaching."""
    center, radius, steps = BALLS[case]
    alpha0, k = np.asarray(center), len(center)
    got = resolve_set(space(center, pair=None), radius=radius, steps=steps, family="simplex", mixtures=None)
    points = ball_points(alpha0, radius, ball_vertices(alpha0, radius))
    farthest = max(tv(got.weights[None, :, :], chunk[:, None, :]).min(1).max() for chunk in np.array_split(points, 20))
    assert farthest <= {3: 2 / 3, 4: 1.0}[k] * radius / steps + 1e-9


def test_the_issues_ball_holds_its_far_corner():
    """(0.8, 0.1, 0.1) at radius 0.5 in steps of 0.125: the lattice alone cannot lower a 0.1 weight, so it held 15
    mixtures, none with anger above 0.8; the set reaches the corner and both sides of the ball towards it."""
    got = resolve_set(space((0.8, 0.1, 0.1), pair=None), radius=0.5, steps=4, family="simplex", mixtures=None)
    assert got.weights[:, 0].max() == 1.0
    assert {tuple(np.round(got.weights[i], 9)) for i in got.extremes} == {
        (1.0, 0.0, 0.0),
        (0.3, 0.6, 0.1),
        (0.4, 0.6, 0.0),
        (0.3, 0.1, 0.6),
        (0.4, 0.0, 0.6),
    }


LINES = {
    "inside": (0.5, 0.3, 4),
    "crossing 0": (0.1, 0.4, 4),  # the issue's quickstart line
    "a weight below the step": (0.05, 0.5, 4),
    "on the end": (0.0, 0.5, 4),
    "crossing 1": (0.97, 0.5, 3),
    "the whole line": (0.1, 0.9, 2),
}


@pytest.mark.parametrize("case", list(LINES))
def test_the_pair_line_holds_its_ends_and_no_gap_wider_than_the_step(case):
    """The interval [α₀ − r, α₀ + r] cut to [0, 1]: its two ends are the set's extreme points, every α lies between
    them, no two neighbours are farther apart than h = r / steps, and α₀ is in it."""
    t0, radius, steps = LINES[case]
    got = resolve_set(space((t0, 1 - t0, 0.0)), radius=radius, steps=steps, family="pair", mixtures=None)
    alphas = got.weights[:, 0]
    low, high = max(0.0, t0 - radius), min(1.0, t0 + radius)
    assert [alphas[i] for i in got.extremes] == pytest.approx([low, high], abs=1e-12)
    assert alphas.min() == pytest.approx(low, abs=1e-12) and alphas.max() == pytest.approx(high, abs=1e-12)
    assert np.diff(np.sort(alphas)).max() <= radius / steps + 1e-12
    assert alphas[got.center] == pytest.approx(t0, abs=1e-12)
    assert np.allclose(got.weights[:, 1], 1 - alphas) and not got.weights[:, 2].any()


def test_the_interval_on_the_pair_line_holds_alpha0_and_crosses_into_the_ends():
    got = resolve_set(space(), radius=0.4, steps=4, family=None, mixtures=None)
    assert [round(w[0], 12) for w in got.weights] == [0.0, 0.1, 0.2, 0.3, 0.4, 0.5]
    assert got.center == 1 and got.alpha_attribute == 0
    assert np.allclose(got.weights.sum(1), 1) and not got.weights[:, 2].any()
    wide = resolve_set(space(), radius=0.9, steps=2, family="pair", mixtures=None)
    assert [round(w[0], 12) for w in wide.weights] == [0.0, 0.1, 0.55, 1.0]
    assert len(resolve_set(space(), radius=0.0, steps=4, family=None, mixtures=None)) == 1


def test_the_simplex_ball_is_the_lattice_within_the_radius():
    """Against an independent enumeration: every α₀ + (r/steps)·v with v integer, Σv = 0, in the simplex, within
    total variation r (far from the faces, where the ball's vertices are lattice points and no step crosses a face)."""
    center, radius, steps = np.array([0.2, 0.5, 0.3]), 0.2, 2
    got = resolve_set(space(tuple(center), pair=None), radius=radius, steps=steps, family=None, mixtures=None)
    want = set()
    for v in itertools.product(range(-4, 5), repeat=3):
        point = center + radius / steps * np.asarray(v)
        if sum(v) == 0 and (point >= -1e-12).all() and 0.5 * np.abs(point - center).sum() <= radius + 1e-12:
            want.add(tuple(np.round(point, 9)))
    assert {tuple(np.round(w, 9)) for w in got.weights} == want
    assert got.center == 0 and np.allclose(got.weights[0], center) and len(got) == len(want)


@pytest.mark.parametrize(
    ("kwargs", "message"),
    [
        ({"radius": 0.95}, "model.robust.init_args.radius=0.95 reaches beyond the simplex"),
        ({"radius": 1.5, "family": "simplex", "center": (1.0, 0.0, 0.0)}, "give a radius in [0, 1]"),
        ({"mixtures": [0.0, 1.0]}, "model.robust.init_args.mixtures does not hold the training mixture α₀"),
        (
            {"mixtures": [0.1, 0.5, 0.5]},
            "model.robust.init_args.mixtures[2] repeats model.robust.init_args.mixtures[1]",
        ),
        (
            {"mixtures": [0.1, [0.5, 0.5]]},
            "model.robust.init_args.mixtures[1] has 2 weights but there are 3 attributes",
        ),
        ({"radius": 0.1, "family": "pair", "pair": None}, "family=pair needs data.attribute_a and data.attribute_b"),
    ],
)
def test_bad_sets_name_the_key(kwargs, message):
    kwargs = dict(kwargs)
    described = space(kwargs.pop("center", (0.1, 0.9, 0.0)), pair=kwargs.pop("pair", (0, 1)))
    arguments = {"radius": None, "steps": 4, "family": None, "mixtures": None, **kwargs}
    with pytest.raises(InputError) as error:
        resolve_set(described, **arguments)
    assert message in str(error.value)
