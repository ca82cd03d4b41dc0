"""Out-of-sample probabilities for every training image, assembled from the held-out folds of
K-fold cross-validation runs (pure: plain values and arrays in, arrays out).

Each fold run stores what its model of record says of the images it never trained on
(`predictions/heldout.npz`). Runs that differ only in their fold (and what follows from it:
`contract.PER_FOLD_PARAMS`) form one replicate, a full set of K folds, which must hold every
training image exactly once. Replicates (other seeds, other settings) are stacked like the runs
of the test-set ranking: R probabilities per image, each from a model that never saw it.
"""

from __future__ import annotations

from collections import defaultdict
from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np

from analysis.errors import AnalysisError
from mnist_train.contract import CV_FOLDS_PARAM, N_CLASSES

EXAMPLES = 3  # image positions a message names


@dataclass(frozen=True)
class HeldOut:
    """One fold run's held-out predictions. `replicate`: the params it shares with the other
    folds of its set, as sorted (name, value) pairs; `n_images`: the training images its folds
    divide (None when the run does not say); arrays as in `predictions/heldout.npz`: labels int
    (n,), probs float (n, 10), index int (n,) into the torchvision training set."""

    run: str  # how messages name it, e.g. "seed=1,fold=3 (0c1d2e3f)"
    folds: int
    fold: int
    replicate: tuple[tuple[str, str], ...]
    n_images: int | None
    labels: np.ndarray
    probs: np.ndarray
    index: np.ndarray


@dataclass(frozen=True)
class Assembled:
    """Every training image once: labels int64 (N,), probs float64 (R, N, 10) from the R
    replicates, index int64 (N,) ascending; `folds`: K of each replicate."""

    labels: np.ndarray
    probs: np.ndarray
    index: np.ndarray
    folds: tuple[int, ...]

    @property
    def basis(self) -> str:
        """What the probabilities are, in the words the report and the command print."""
        ks = sorted(set(self.folds))
        k = "/".join(str(k) for k in ks)
        return f"out-of-sample, {k}-fold cross-validation"


def assemble(held: Sequence[HeldOut]) -> Assembled:
    """Every training image's out-of-sample probabilities, one row per image per replicate.

    AnalysisError (one line, naming the runs) when a replicate misses a fold or holds one twice,
    when its folds overlap or leave images out, or when replicates cover different images or
    disagree on a label."""
    if not held:
        raise ValueError("no held-out predictions to assemble")
    groups: dict[tuple, list[HeldOut]] = defaultdict(list)
    for part in held:
        groups[(part.folds, part.replicate)].append(part)
    names = _replicate_names(list(groups))
    assembled = [_one_replicate(parts, names[key]) for key, parts in groups.items()]
    index, labels = assembled[0][0], assembled[0][1]
    for (other_index, other_labels, _), key in zip(assembled[1:], list(groups)[1:]):
        if not np.array_equal(other_index, index):
            raise AnalysisError(
                f"the cross-validation runs cover different training images ({len(index)} and "
                f"{len(other_index)}{names[key]}); select runs of one training set"
            )
        differ = np.flatnonzero(other_labels != labels)
        if len(differ):
            raise AnalysisError(
                f"the cross-validation runs disagree on the labels of {len(differ)} training "
                f"images (e.g. {_examples(index[differ])}); were they trained on the same data?"
            )
    return Assembled(
        labels=labels,
        probs=np.stack([probs for _, _, probs in assembled]),
        index=index,
        folds=tuple(k for k, _ in groups),
    )


def _one_replicate(parts: list[HeldOut], name: str) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """(index, labels, probs) of one set of K folds, sorted by index, after checking that the
    folds partition its training images."""
    k = parts[0].folds
    by_fold: dict[int, list[HeldOut]] = defaultdict(list)
    for part in parts:
        by_fold[part.fold].append(part)
    twice = {fold: runs for fold, runs in sorted(by_fold.items()) if len(runs) > 1}
    if twice:
        fold, runs = next(iter(twice.items()))
        raise AnalysisError(
            f"fold {fold} of {k}{name} is held out by {len(runs)} runs "
            f"({', '.join(r.run for r in runs)}); select one study (--parent)"
        )
    missing = [fold for fold in range(k) if fold not in by_fold]
    if missing:
        have = ", ".join(str(f) for f in sorted(by_fold))
        raise AnalysisError(
            f"fold {missing[0]} of {k}{name} has no run among those selected (folds present: "
            f"{have}); every fold must have finished"
        )
    ordered = [by_fold[fold][0] for fold in range(k)]
    _check_disjoint(ordered, name)
    index = np.concatenate([p.index for p in ordered]).astype(np.int64)
    n_images = {p.n_images for p in ordered} - {None}
    expected = max(n_images) if n_images else int(index.max()) + 1
    missed = np.setdiff1d(np.arange(expected), index)
    outside = index[index >= expected]
    if len(missed) or len(outside):
        detail = f"{len(missed)} of the {expected} training images are in no fold"
        if len(missed):
            detail += f" (e.g. {_examples(missed)})"
        if len(outside):
            detail += f"; {len(outside)} positions lie beyond them (e.g. {_examples(outside)})"
        raise AnalysisError(f"the {k} folds{name} do not cover the training set: {detail}")
    order = np.argsort(index, kind="stable")
    labels = np.concatenate([p.labels for p in ordered]).astype(np.int64)[order]
    probs = np.concatenate([p.probs for p in ordered]).astype(np.float64)
    if probs.shape != (len(index), N_CLASSES):
        raise ValueError(f"held-out probs must be (n, {N_CLASSES}), got {probs.shape}")
    return index[order], labels, probs[order]


def _check_disjoint(ordered: list[HeldOut], name: str) -> None:
    """AnalysisError naming two folds that hold out the same image."""
    positions, counts = np.unique(np.concatenate([p.index for p in ordered]), return_counts=True)
    repeated = positions[counts > 1]
    if not len(repeated):
        return
    holders = [p for p in ordered if repeated[0] in p.index]
    first, second = (holders + holders)[:2]  # one holder: a fold that repeats an image
    shared = np.intersect1d(first.index, second.index) if first is not second else repeated
    raise AnalysisError(
        f"folds overlap{name}: fold {first.fold} ({first.run}) and fold {second.fold} "
        f"({second.run}) both hold out {len(shared)} training image(s) (e.g. {_examples(shared)})"
    )


def _replicate_names(keys: list[tuple]) -> dict[tuple, str]:
    """`" (seed=1)"` for each replicate: the params that tell them apart ("" for one)."""
    if len(keys) < 2:
        return {key: "" for key in keys}
    params = [dict(replicate, **{CV_FOLDS_PARAM: str(k)}) for k, replicate in keys]
    varying = sorted({name for p in params for name in p if len({q.get(name) for q in params}) > 1})
    return {
        key: " (" + ",".join(f"{name}={p.get(name, '')}" for name in varying) + ")"
        for key, p in zip(keys, params)
    }


def _examples(positions: np.ndarray) -> str:
    shown = ", ".join(f"#{int(p)}" for p in np.asarray(positions)[:EXAMPLES])
    return shown + (", ..." if len(positions) > EXAMPLES else "")
