"""The uncertainty set of :class:`~rdpo_lightning.robust.MixtureDRO`: mixtures α around the training mixture α₀.

Distances between mixtures are total variation, ½‖α − α′‖₁: the share of weight moved from some attributes to
others. The ball of radius r is every mixture within r of α₀ (on the family's line, or anywhere in the simplex). The
set holds the ball's **extreme points**, so its convex hull is the ball, and a lattice of step h = r / ``steps``
anchored at α₀ inside it:

* ``pair``: the data's one-parameter family α·r_a + (1 − α)·r_b (``data.attribute_a`` / ``attribute_b``), where the
  distance is |α − α₀|. The ball is the interval [α₀ − r, α₀ + r] cut to [0, 1]; its ends are the extreme points, and
  α₀ + (j / steps)·r for j = −steps … steps that fall inside it the lattice: every α of the interval lies within h/2
  of the set.
* ``simplex``: every K-attribute mixture within r of α₀. Its extreme points (:func:`extreme_points`) move
  t = min(r, 1 − α₀_i) of weight to one attribute i from the others, emptying them one after another. The lattice is
  α₀ + h·v, v integer with Σv = 0 and ½‖v‖₁ ≤ steps, without its points that have a negative weight; where a lattice
  step would cross a face of the simplex (a weight α_j below h, as 0.1 at h = 0.125), the point where it meets the face
  is in the set too (:func:`face_crossings`), so that the lattice's resolution holds up to the faces: every mixture of
  the ball lies as close to the set as the lattice's own deepest holes, 2h/3 for K = 3 and h for K = 4
  (``tests/robust/test_mixture_set.py`` measures both; the holes deepen with K).

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
    attribute whose weight is α. ``family`` (``pair``, ``simplex`` or ``list``), ``radius`` and ``extremes`` (the rows
    that are the ball's extreme points; none for a list) say what the set is (:meth:`summary`)."""

    weights: np.ndarray
    names: tuple[str, ...]
    center: int
    attributes: tuple[str, ...]
    alpha_attribute: int | None = None
    family: str = "list"
    radius: float | None = None
    extremes: tuple[int, ...] = ()

    def __len__(self) -> int:
        return len(self.names)

    def summary(self) -> str:
        """One line: the family, the radius, how many mixtures, and the extreme points (a list: every mixture)."""
        center = self.names[self.center]
        if self.family == "list":
            return f"MixtureDRO set: an explicit list of {len(self)} mixtures around alpha_0 = {center}: " + "; ".join(
                self.names
            )
        corners = "; ".join(self.names[i] for i in self.extremes)
        return (
            f"MixtureDRO set: family {self.family}, radius {self.radius:g} around alpha_0 = {center}, {len(self)}"
            f" mixtures, {len(self.extremes)} extreme points: {corners}"
        )

    def table(self) -> str:
        """The :meth:`summary` line, then every mixture, one a line: its weights by attribute and what it is."""
        weighed = [k for k in range(len(self.attributes)) if self.weights[:, k].any()]
        width = max(len(self.attributes[k]) for k in weighed)
        head = "  ".join(f"{self.attributes[k]:>{max(width, 6)}}" for k in weighed)
        lines = [self.summary(), f"{'':>5}  {head}"]
        for i, row in enumerate(self.weights):
            role = "alpha_0" if i == self.center else "extreme point" if i in self.extremes else ""
            cells = "  ".join(f"{row[k]:>{max(width, 6)}.4f}" for k in weighed)
            lines.append(f"{i:>5}  {cells}  {role}".rstrip())
        return "\n".join(lines)


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
    """Each row's name, with as many decimals as it takes for the names to differ (face crossings are not on the 0.01
    grid)."""
    for digits in range(2, 13):
        names = tuple(vector_name(list(w), space.attributes, digits) for w in weights)
        if len(set(names)) == len(names):
            return names
    return names


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
    ends = (0,) if len(alphas) == 1 else (0, len(alphas) - 1)
    return MixtureSet(
        weights, names, alphas.index(t0), tuple(space.attributes), a, family="pair", radius=radius, extremes=ends
    )


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


def _refuse_many(count: int, steps: int, k: int) -> None:
    if count > MAX_MIXTURES:
        raise InputError(
            f"{KEY}.steps={steps}: more than {MAX_MIXTURES} mixtures in the ball over {k} attributes; use fewer steps"
            " (or family: pair, or an explicit list of mixtures)"
        )


def lattice_points(alpha0: np.ndarray, radius: float, steps: int) -> np.ndarray:
    """α₀ + (r / steps)·v for v integer, Σv = 0, ½‖v‖₁ ≤ steps, v ≠ 0, with no negative weight: (N, K)."""
    step, rows = radius / steps, []
    for v in _lattice(len(alpha0), steps):
        point = alpha0 + step * np.asarray(v, dtype=np.float64)
        if any(v) and (point >= -TOLERANCE).all():
            rows.append(np.clip(point, 0.0, None) / np.clip(point, 0.0, None).sum())
            _refuse_many(len(rows), steps, len(alpha0))
    return np.asarray(rows, dtype=np.float64).reshape(-1, len(alpha0))


def extreme_points(alpha0: np.ndarray, radius: float) -> np.ndarray:
    """The vertices of the ball {α in the simplex: ½‖α − α₀‖₁ ≤ r}, (E, K), some possibly repeated.

    The ball is α₀ + p − n with p ≥ 0, 0 ≤ n ≤ α₀ and Σp = Σn ≤ r. A linear c·α is largest over it when the weight
    moved, t = min(r, 1 − α₀_i), all goes to an attribute i with the largest c_i and is taken from the others in
    increasing order of c, each emptied before the next is touched: the vertices are, for each receiver i, the
    removals n that empty a set S of donors and take the rest of t from one more donor j (Σ_S α₀ < t < Σ_S α₀ + α₀_j),
    or empty S exactly (Σ_S α₀ = t)."""
    k, found = len(alpha0), []

    def remove(receiver: int, moved: float, donors: list[int], start: int, emptied: list[int], taken: float) -> None:
        if moved - taken <= TOLERANCE:  # S takes all of t
            found.append(_moved(alpha0, receiver, moved, emptied, None, 0.0))
            return
        for j in donors:
            if j not in emptied and taken + alpha0[j] > moved + TOLERANCE:  # j gives the rest and keeps some
                found.append(_moved(alpha0, receiver, moved, emptied, j, moved - taken))
        if len(found) > MAX_MIXTURES:
            raise InputError(
                f"{KEY}.radius={radius:g}: the ball over {k} attributes has more than {MAX_MIXTURES} extreme points;"
                " use a smaller radius (or family: pair, or an explicit list of mixtures)"
            )
        for index in range(start, len(donors)):
            j = donors[index]
            if taken + alpha0[j] <= moved + TOLERANCE:
                remove(receiver, moved, donors, index + 1, [*emptied, j], taken + alpha0[j])

    for i in range(k):
        donors = [j for j in range(k) if j != i and alpha0[j] > 0]
        remove(i, min(radius, 1.0 - alpha0[i]), donors, 0, [], 0.0)
    return np.asarray(found, dtype=np.float64).reshape(-1, k)


def _moved(alpha0: np.ndarray, receiver: int, moved: float, emptied: list[int], partial: int | None, rest: float):
    point = alpha0.copy()
    point[emptied] = 0.0
    if partial is not None:
        point[partial] -= rest
    point[receiver] += moved
    return np.clip(point, 0.0, None) / np.clip(point, 0.0, None).sum()


def face_crossings(points: np.ndarray, alpha0: np.ndarray, radius: float, step: float) -> np.ndarray:
    """Where the lattice's steps from ``points`` leave the simplex inside the ball, (C, K): from a point with
    0 < α_j < step, the step moving weight from j to i ends at α_j = 0 (α_i + α_j), kept when within ``radius``."""
    crossings = []
    for j in range(len(alpha0)):
        short = points[(points[:, j] > TOLERANCE) & (points[:, j] < step - TOLERANCE)]
        for i in range(len(alpha0)):
            if i == j or not len(short):
                continue
            moved = short.copy()
            moved[:, i] += moved[:, j]
            moved[:, j] = 0.0
            crossings.append(moved[0.5 * np.abs(moved - alpha0).sum(1) <= radius + TOLERANCE])
    return np.concatenate(crossings) if crossings else np.zeros((0, len(alpha0)))


def _distinct(parts: Sequence[np.ndarray]) -> tuple[np.ndarray, dict[tuple[float, ...], int]]:
    """The rows of ``parts`` in order, each once (equal to 12 decimals), and each row's index by its rounded key."""
    rows, index = [], {}
    for part in parts:
        for row in part:
            key = tuple(np.round(row, 12) + 0.0)  # + 0.0: -0.0 and 0.0 are one key
            if key not in index:
                index[key] = len(rows)
                rows.append(row)
    return np.stack(rows), index


def simplex_set(space: MixtureSpace, center: Mixture, radius: float, steps: int) -> MixtureSet:
    alpha0 = np.asarray(center.weights, dtype=np.float64)
    _refuse_far(radius, float(1.0 - alpha0.min()), center, space, "of the simplex")
    corners = extreme_points(alpha0, radius)
    parts = [alpha0[None, :]]
    if radius > 0:
        lattice = lattice_points(alpha0, radius, steps)
        inside = np.concatenate([alpha0[None, :], lattice])
        parts += [lattice, corners, face_crossings(inside, alpha0, radius, radius / steps)]
    weights, index = _distinct(parts)
    _refuse_many(len(weights), steps, len(alpha0))
    extremes = tuple(sorted({index[tuple(np.round(c, 12) + 0.0)] for c in corners})) if radius > 0 else (0,)
    return MixtureSet(
        weights, _named(space, weights), 0, tuple(space.attributes), family="simplex", radius=radius, extremes=extremes
    )


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
