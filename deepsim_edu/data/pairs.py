"""Which images are registered to which (the paper's pairing rules), as PyTorch datasets.

* ``atlas`` rule (Brain-MRI): every subject is registered to one atlas — moving = subject,
  fixed = atlas — in every split.
* ``neighbours`` rule (Platelet-EM sections, PhC-U373 frames; each split is an ordered series):
  for training, case i is paired with a random neighbour i ± k, 1 ≤ k ≤ ``max_offset`` (2 in
  the paper), drawn anew every epoch from (seed, epoch); for validation and test the pairs are
  the consecutive (i, i+1). Moving = i, fixed = its partner.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import torch
from torch.utils.data import Dataset

from .layout import (
    SPLITS,
    DatasetError,
    DatasetInfo,
    DatasetReport,
    check_dataset,
    checked_before,
    load_info,
    read_case,
)


def _check_split(split: str) -> None:
    if split not in SPLITS:
        raise DatasetError(f"unknown split {split!r}; valid: {', '.join(SPLITS)}")


def evaluation_pairs(info: DatasetInfo, split: str) -> list[tuple[str, str]]:
    """Fixed (moving, fixed) pairs of a split: subject → atlas, or consecutive (i, i+1)."""
    _check_split(split)
    cases = info.splits[split]
    if info.atlas is not None:
        return [(case, info.atlas) for case in cases]
    return list(zip(cases[:-1], cases[1:], strict=False))


def spread_subset(pairs: list, limit: int | None) -> list:
    """At most ``limit`` of ``pairs``, evenly spaced from the first to the last (indices
    ``round(i (n − 1) / (limit − 1))``); all of them when ``limit`` is None or ≥ n."""
    if limit is not None and (isinstance(limit, bool) or not isinstance(limit, int) or limit < 1):
        raise ValueError(f"limit must be a whole number >= 1 or None, got {limit!r}")
    if limit is None or limit >= len(pairs):
        return list(pairs)
    if limit == 1:
        return [pairs[0]]
    n = len(pairs)
    return [pairs[round(i * (n - 1) / (limit - 1))] for i in range(limit)]


def training_pairs(
    info: DatasetInfo, split: str, epoch: int, seed: int = 0
) -> list[tuple[str, str]]:
    """Training pairs of one epoch: subject → atlas, or i → a random neighbour within ±max_offset.

    The neighbour draw depends only on (seed, epoch), so a resumed run sees the same pairs.
    """
    _check_split(split)
    cases = info.splits[split]
    if info.atlas is not None:
        return [(case, info.atlas) for case in cases]
    rng = np.random.default_rng([seed, epoch])
    max_offset = int(info.pairing.get("max_offset", 2))
    pairs = []
    for i, case in enumerate(cases):
        partners = [
            i + k for k in range(-max_offset, max_offset + 1) if k != 0 and 0 <= i + k < len(cases)
        ]
        pairs.append((case, cases[int(rng.choice(partners))]))
    return pairs


class CaseStore:
    """Reads cases of one dataset folder once and keeps them in memory as tensors.

    ``store[case] -> (image (1, *spatial) float32, label (1, *spatial) int64)``.
    ``store.check()`` checks the whole dataset first (``layout.check_dataset``).
    """

    def __init__(self, root: str | Path):
        self.root = Path(root)
        self.info = load_info(self.root)
        self._cache: dict[str, tuple[torch.Tensor, torch.Tensor]] = {}

    def _keep(self, case: str, image: np.ndarray, label: np.ndarray) -> None:
        self._cache[case] = (torch.from_numpy(image)[None], torch.from_numpy(label)[None])

    def check(self, keep: tuple[str, ...] = SPLITS) -> DatasetReport:
        """Check every file of the dataset (``layout.check_dataset``; one DatasetError naming
        every file at fault) and keep in memory the cases of the splits ``keep`` (and the
        atlas), so that what the check read is not read again. A dataset that passed the check
        in this process and whose files have not changed since is not read again
        (``layout.checked_before``); its cases are then read when first used."""
        for split in keep:
            _check_split(split)
        if (report := checked_before(self.root)) is not None:
            return report  # passed in this process, no file changed since: cases read on use
        wanted = {case for split in keep for case in self.info.splits[split]}
        wanted.add(self.info.atlas)

        def keep_case(case: str, image: np.ndarray, label: np.ndarray) -> None:
            if case in wanted:
                self._keep(case, image, label)

        return check_dataset(self.root, keep=keep_case)

    def __getitem__(self, case: str) -> tuple[torch.Tensor, torch.Tensor]:
        if case not in self._cache:
            self._keep(case, *read_case(self.root, self.info, case))
        return self._cache[case]


class PairDataset(Dataset):
    """(moving, fixed) pairs of one split, following the dataset's pairing rule.

    Items are dicts: ``moving``, ``fixed`` ``(1, *spatial)`` float32; ``moving_labels``,
    ``fixed_labels`` ``(1, *spatial)`` int64; ``moving_id``, ``fixed_id`` strings.
    With ``training=True`` the neighbour pairs are redrawn by ``set_epoch(epoch)``. ``limit``
    keeps at most that many evaluation pairs, evenly spaced (``spread_subset``; None: all).
    """

    def __init__(
        self, root: str | Path | CaseStore, split: str, training: bool = False, seed: int = 0,
        limit: int | None = None,
    ):  # fmt: skip
        self.store = root if isinstance(root, CaseStore) else CaseStore(root)
        self.info, self.split, self.training, self.seed = self.store.info, split, training, seed
        if training and limit is not None:
            raise ValueError("limit applies to evaluation pairs, not to training pairs")
        self.limit = limit
        self.set_epoch(0)

    def set_epoch(self, epoch: int) -> None:
        self.pairs = (
            training_pairs(self.info, self.split, epoch, self.seed)
            if self.training
            else spread_subset(evaluation_pairs(self.info, self.split), self.limit)
        )

    def __len__(self) -> int:
        return len(self.pairs)

    def __getitem__(self, index: int) -> dict:
        moving_id, fixed_id = self.pairs[index]
        moving, moving_labels = self.store[moving_id]
        fixed, fixed_labels = self.store[fixed_id]
        return {
            "moving": moving,
            "fixed": fixed,
            "moving_labels": moving_labels,
            "fixed_labels": fixed_labels,
            "moving_id": moving_id,
            "fixed_id": fixed_id,
        }


class CaseDataset(Dataset):
    """Single images with their labels (for training the segmentation net): dicts with
    ``image`` ``(1, *spatial)`` float32, ``labels`` ``(1, *spatial)`` int64, ``id``."""

    def __init__(self, root: str | Path | CaseStore, split: str):
        _check_split(split)
        self.store = root if isinstance(root, CaseStore) else CaseStore(root)
        self.cases = list(self.store.info.splits[split])

    def __len__(self) -> int:
        return len(self.cases)

    def __getitem__(self, index: int) -> dict:
        image, labels = self.store[self.cases[index]]
        return {"image": image, "labels": labels, "id": self.cases[index]}
