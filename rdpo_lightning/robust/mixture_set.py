"""The uncertainty set of :class:`~rdpo_lightning.robust.MixtureDRO`: mixtures α around the training mixture α₀.

Distances between mixtures are total variation, ½‖α − α′‖₁: the share of weight moved from some attributes to
others. Two families:

* ``pair``: the data's one-parameter family α·r_a + (1 − α)·r_b (``data.attribute_a`` / ``attribute_b``), where the
  distance is |α − α₀|. The ball of radius r is the interval [α₀ − r, α₀ + r] cut to [0, 1], discretised as
  α₀ + (j / steps)·r for j = −steps … steps, plus the end 0 or 1 when the interval crosses it.
* ``simplex``: every K-attribute mixture, discretised as the lattice α₀ + (r / steps)·v, v integer with Σv = 0 and
  ½‖v‖₁ ≤ steps; lattice points with a negative weight are left out.

Or an explicit list of mixtures, which must hold α₀. A radius larger than the distance from α₀ to the farthest
mixture of the family is refused: it would say more than the set can hold.
"""

from __future__ import annotations

from collections.abc import Iterator, Sequence
from dataclasses import dataclass

import numpy as np

from rdpo_lightning.errors import InputError
from rdpo_lightning.mixtures import Mixture, MixtureEntry, MixtureSpace, parse_mixture, vector_name

FAMILIES = ("pair", "simplex")
KEY = "model.robust.init_args"
#: more mixtures than this is a grid too fine to be meant (each costs a (B, K) product per step)
MAX_MIXTURES = 20_000
TOLERANCE = 1e-12


@dataclass(frozen=True)
class MixtureSet:
    """The mixtures (A, K) as float64 rows, their names, the row of α₀, and (family ``pair``) the index of the
    attribute whose weight is α."""

    weights: np.ndarray
    names: tuple[str, ...]
    center: int
    attributes: tuple[str, ...]
    alpha_attribute: int | None = None

    def __len__(self) -> int:
        return len(self.names)


def resolve_set(
    space: MixtureSpace,
    radius: float | None,
    steps: int,
    family: str | None,
    mixtures: Sequence[MixtureEntry] | None,
) -> MixtureSet:
    """The uncertainty set for the data described by ``space``; errors name the YAML key."""
    center = training_mixture(space)
    if mixtures is not None:
        return explicit_set(space, center, mixtures)
    family = family or default_family(space, center)
    if family == "pair":
        a, b = on_pair_line(space, center)
        return pair_set(space, center, radius, steps, a, b)
    return simplex_set(space, center, radius, steps)


def training_mixture(space: MixtureSpace) -> Mixture:
    if len(space.train) != 1:
        raise InputError(
            f"{KEY}: MixtureDRO builds its mixtures around one training mixture α₀, but {space.train_keys} gives"
            f" {len(space.train)} ({', '.join(m.name for m in space.train)}); train at one mixture"
        )
    return space.train[0]


def default_family(space: MixtureSpace, center: Mixture) -> str:
    """``pair`` when the data names attribute_a / attribute_b and α₀ lies on their line, else ``simplex``."""
    if space.pair is None:
        return "simplex"
    weights = np.asarray(center.weights)
    off = np.delete(weights, list(space.pair))
    return "pair" if not (off > 0).any() else "simplex"


def on_pair_line(space: MixtureSpace, center: Mixture) -> tuple[int, int]:
    if space.pair is None:
        raise InputError(f"{KEY}.family=pair needs data.attribute_a and data.attribute_b (the line α·r_a + (1−α)·r_b)")
    if default_family(space, center) != "pair":
        raise InputError(
            f"{KEY}.family=pair: the training mixture α₀ = {center.name} ({space.train_keys}) does not lie on the"
            f" {space.attributes[space.pair[0]]}–{space.attributes[space.pair[1]]} line; use family: simplex"
        )
    return space.pair


def _named(space: MixtureSpace, weights: np.ndarray) -> tuple[str, ...]:
    return tuple(vector_name(list(w), space.attributes) for w in weights)


def _refuse_far(radius: float, farthest: float, center: Mixture, space: MixtureSpace, where: str) -> None:
    if radius > farthest + TOLERANCE:
        raise InputError(
            f"{KEY}.radius={radius:g} reaches beyond the simplex: no mixture {where} lies farther than {farthest:g}"
            f" from α₀ = {center.name} ({space.train_keys}) in total variation; give a radius in [0, {farthest:g}]"
        )


def pair_set(space: MixtureSpace, center: Mixture, radius: float, steps: int, a: int, b: int) -> MixtureSet:
    t0 = float(center.weights[a])
    line = f"on the {space.attributes[a]}–{space.attributes[b]} line"
    _refuse_far(radius, max(t0, 1.0 - t0), center, space, line)
    points = {t0}
    for j in range(-steps, steps + 1):
        t = round(t0 + radius * j / steps, 12)  # 0.1 − 0.1 is 0, not 1e-17 beside it
        if 0.0 <= t <= 1.0 and t != round(t0, 12):
            points.add(t)
    if t0 - radius < 0:
        points.add(0.0)
    if t0 + radius > 1:
        points.add(1.0)
    alphas = sorted(points)
    weights = np.zeros((len(alphas), len(space.attributes)))
    weights[:, a], weights[:, b] = alphas, [1.0 - t for t in alphas]
    names = tuple(f"alpha={t:.3f}" for t in alphas)
    return MixtureSet(weights, names, alphas.index(t0), tuple(space.attributes), alpha_attribute=a)


def _lattice(k: int, budget: int) -> Iterator[tuple[int, ...]]:
    """Integer vectors of length ``k`` with Σv = 0 and ‖v‖₁ ≤ 2·budget."""

    def extend(prefix: tuple[int, ...], total: int, used: int) -> Iterator[tuple[int, ...]]:
        if len(prefix) == k - 1:
            last = -total
            if used + abs(last) <= 2 * budget:
                yield (*prefix, last)
            return
        left = 2 * budget - used
        for value in range(-left, left + 1):
            yield from extend((*prefix, value), total + value, used + abs(value))

    yield from extend((), 0, 0)


def simplex_set(space: MixtureSpace, center: Mixture, radius: float, steps: int) -> MixtureSet:
    alpha0 = np.asarray(center.weights, dtype=np.float64)
    _refuse_far(radius, float(1.0 - alpha0.min()), center, space, "of the simplex")
    rows = [alpha0]
    if radius > 0:
        step = radius / steps
        for v in _lattice(len(alpha0), steps):
            point = alpha0 + step * np.asarray(v, dtype=np.float64)
            if any(v) and (point >= -TOLERANCE).all():
                rows.append(np.clip(point, 0.0, None) / np.clip(point, 0.0, None).sum())
            if len(rows) > MAX_MIXTURES:
                raise InputError(
                    f"{KEY}.steps={steps}: more than {MAX_MIXTURES} mixtures in the ball over {len(alpha0)} attributes;"
                    " use fewer steps (or family: pair, or an explicit list of mixtures)"
                )
    weights = np.stack(rows)
    return MixtureSet(weights, _named(space, weights), 0, tuple(space.attributes))


def explicit_set(space: MixtureSpace, center: Mixture, entries: Sequence[MixtureEntry]) -> MixtureSet:
    parsed = []
    for i, entry in enumerate(entries):
        where = f"{KEY}.mixtures[{i}]"
        try:
            mixture = parse_mixture(entry, space.attributes, space.pair, space.kind, where)
        except ValueError as error:
            raise InputError(str(error)) from error
        for j, earlier in enumerate(parsed):
            if np.allclose(mixture.weights, earlier.weights, rtol=0, atol=1e-9):
                raise InputError(f"{where} repeats {KEY}.mixtures[{j}] ({earlier.name})")
        parsed.append(mixture)
    found = [i for i, m in enumerate(parsed) if np.allclose(m.weights, center.weights, rtol=0, atol=1e-9)]
    if not found:
        raise InputError(
            f"{KEY}.mixtures does not hold the training mixture α₀ = {center.name} ({space.train_keys}); add it: the"
            " set is the mixtures around the one the data was labelled at"
        )
    weights = np.asarray([m.weights for m in parsed], dtype=np.float64)
    a = space.pair[0] if space.pair is not None and all(default_family(space, m) == "pair" for m in parsed) else None
    return MixtureSet(weights, tuple(m.name for m in parsed), found[0], tuple(space.attributes), alpha_attribute=a)
