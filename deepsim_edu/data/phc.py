"""PhC-U373, embedded default: a synthetic phase-contrast time-lapse of moving glioblastoma cells.

The real dataset (Cell Tracking Challenge PhC-C2DH-U373, paper: Data) films U373 cells under a
phase-contrast microscope; two classes (background, cell); neighbouring frames are registered.
This module makes a small stand-in from a seed, in seconds. It is not an optical simulation;
each ingredient is here because the paper's claims (low contrast, noise) need it.

1. **Cells that move and deform.** Each cell is a star-shaped outline in its own body frame,
   ``r(φ) = R · exp(Σ_k a_k cos kφ + b_k sin kφ)`` (k = 2 … 6: elongated, lobed), that drifts
   (a persistent random walk, pushed apart from its neighbours and back from the border),
   turns, and slowly changes its shape coefficients from frame to frame.
2. **The true displacement is known.** A point at body coordinates (s, φ) — s = distance from
   the centre / r(φ) — stays at the same body coordinates from one frame to the next, so for
   the pair (moving = frame t, fixed = frame t+1) every pixel x near a cell is sent to the
   point with the same body coordinates in frame t. Between cells the cells' displacements are
   blended smoothly (no folding), and far from the cells u fades to 0 (the dish does not
   move). Then ``warp(frame_t, u_t) ≈ frame_{t+1}``
   (``warped(x) = image(x + u(x))``, as in ``transform.warp``); the cell texture is painted in
   body coordinates, so it moves and deforms with the cell as well.
3. **Phase-contrast look, low contrast.** Cells are told apart from the background mostly by
   their boundary — a bright halo just outside the edge and a dark interior that darkens
   towards the middle — and by their texture and nucleus, not by a flat grey level. The
   labels are the cells' outlines sampled at the pixel centres. The illumination is uneven
   (a static smooth field of about ±15 %) and the dish has a faint static texture; both are
   part of the "microscope" and present even when ``noise = 0``.
4. **Nuisances, scaled by ``noise``** — the same ``add_noise`` as Platelet-EM: contrast ±30 %,
   gain ±20 %, a bias field, white noise, and in half of the frames strong noise patches
   (σ 0.3–0.4 over 30–50 % of the frame) with streaks. ``noise = 0`` gives the clean case from
   the same seed.

Sizes and splits. Frames are ``size = (H, W) = (192, 256)`` pixels by default (the real crop
is 512 × 688, landscape too). The paper trains on sequence 01 (115 frames) and uses frames
0–49 of sequence 02 for validation and frames 60–114 for testing. We keep those proportions
for any length: ``train`` = a sequence of ``n_train`` frames; a second sequence of ``n_valtest``
frames gives ``val`` = frames ``0 … round(50/115 · n) − 1`` and ``test`` = frames
``round(60/115 · n) … n − 1``; the frames in between are simulated but not written. The
defaults are about half the paper's counts (58 + 58 frames: 25 val frames, 28 test frames =
27 test pairs), which keeps the folder small (about 16 MB, generated in about 9 s on 2 CPU
cores); ``n_train=115, n_valtest=115`` gives the paper's exact frame numbers.

Files: the layout of ``layout.py`` plus ``noise_masks/<case>.nii.gz`` (uint8 0/1, where the
strong noise patches were added); ``displacements/<case>.nii.gz`` for the val and test pairs
(frame t, frame t+1). Case ids: ``train_000`` …, and ``vt_<frame>`` for the second
sequence (``vt_060`` is frame 60, as in the paper's numbering).
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from pathlib import Path

import numpy as np
from scipy.ndimage import map_coordinates

from .series import (
    Section,
    add_noise,
    check_noise,
    quantise,
    quantise_displacement,
    series_rngs,
    write_series,
)
from .synth import bias_field, smooth_noise

CLASSES = ["background", "cell"]
BACKGROUND = 0.45
MODES = np.arange(2, 7)  # shape harmonics k of the outline
TEXTURE = 64  # side of the texture patch painted in each cell's body frame


@dataclass
class Cell:
    """One cell's state in one frame (positions in pixels, angles in radians)."""

    centre: np.ndarray  # (2,) y, x
    velocity: np.ndarray  # (2,) pixels per frame
    angle: float
    radius: float  # R, the mean radius
    shape: np.ndarray  # (2, len(MODES)): a_k, b_k of log r(φ)
    texture: np.ndarray  # (TEXTURE, TEXTURE) smooth noise painted in body coordinates

    @property
    def extent(self) -> float:
        """The largest r(φ) (over 64 directions): the cell fits in a disc of this radius."""
        return float(self.outline(np.exp(2j * np.pi * np.arange(64) / 64)).max())

    def outline(self, direction: np.ndarray) -> np.ndarray:
        """r(φ) = R · exp(Σ_k a_k cos kφ + b_k sin kφ) for body directions e^{iφ} (complex).

        With c_k = a_k − i b_k the exponent is Re(Σ_k c_k e^{ikφ}), summed by Horner's rule —
        powers of e^{iφ} instead of a cosine and a sine per harmonic.
        """
        coefficients = self.shape[0] - 1j * self.shape[1]  # c_k for k in MODES (2 … 6)
        series = np.zeros_like(direction)
        for c in coefficients[::-1]:
            series = (series + c) * direction
        return self.radius * np.exp((series * direction ** (MODES[0] - 1)).real)

    def body_coordinates(self, yy: np.ndarray, xx: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        """(s, e^{iφ}) of pixels: s = distance / r(φ) (s < 1 inside), φ the body-frame angle."""
        offset = (xx - self.centre[1]) + 1j * (yy - self.centre[0])  # x + i y
        rho = np.abs(offset)
        direction = np.where(rho > 0, offset / np.maximum(rho, 1e-12), 1.0)
        direction = direction * np.exp(-1j * self.angle)  # image frame -> body frame
        return rho / self.outline(direction), direction

    def position(self, rho: np.ndarray, direction: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        """The pixel (y, x) at distance ``rho`` from the centre along body direction e^{iφ}."""
        point = rho * direction * np.exp(1j * self.angle)
        return self.centre[0] + point.imag, self.centre[1] + point.real


def make_cells(size: tuple[int, int], rng: np.random.Generator) -> list[Cell]:
    """Up to eight cells (dart throwing) that keep apart, each with its own size and shape."""
    scale = size[1] / 256
    cells: list[Cell] = []
    for _ in range(200):
        if len(cells) == 8:
            break
        shape = rng.normal(0, 1, size=(2, len(MODES))) * 0.3 / MODES
        shape[0, 0] += rng.uniform(0.2, 0.6)  # elongation along the body's x axis
        low, high = [0.1 * size[0], 0.1 * size[1]], [0.9 * size[0], 0.9 * size[1]]
        cell = Cell(
            centre=rng.uniform(low, high),
            velocity=rng.normal(0, 1, 2) * scale,
            angle=rng.uniform(0, 2 * math.pi),
            radius=rng.uniform(11, 22) * scale,
            shape=shape,
            texture=smooth_noise((TEXTURE, TEXTURE), 2.5, rng).astype(np.float32),
        )
        if all(
            np.linalg.norm(cell.centre - c.centre) > cell.extent + c.extent + 4 * scale
            for c in cells
        ):
            cells.append(cell)
    return cells


def move_cells(cells: list[Cell], size: tuple[int, int], rng: np.random.Generator) -> list[Cell]:
    """One frame later: persistent random walk, turning and shape change.

    Cells that come close are pushed apart and partly share their velocity (they do not shear
    past each other at full speed, which no smooth displacement could follow); all are pulled
    back from the border.
    """
    scale = size[1] / 256
    moved = []
    for cell in cells:
        velocity = 0.85 * cell.velocity + rng.normal(0, 2.5 * scale, 2)
        for other in cells:
            if other is cell:
                continue
            gap = cell.centre - other.centre
            distance = float(np.linalg.norm(gap))
            room = distance - cell.extent - other.extent  # > 0: their discs are apart
            closeness = float(np.clip(1 - room / (24 * scale), 0, 1))
            velocity += 0.7 * closeness * (other.velocity - cell.velocity)
            velocity += 0.3 * max(8 * scale - room, 0) * gap / max(distance, 1e-6)
        inside = np.clip(cell.centre, 0.15 * np.array(size), 0.85 * np.array(size))
        velocity += 0.05 * (inside - cell.centre)
        velocity *= min(1.0, 6.0 * scale / max(float(np.linalg.norm(velocity)), 1e-6))
        shape = (
            cell.shape
            + 0.1 * (_mean_shape(cell) - cell.shape)
            + rng.normal(0, 0.05, cell.shape.shape) / MODES
        )
        moved.append(
            Cell(
                cell.centre + velocity,
                velocity,
                cell.angle + rng.normal(0, 0.06),
                cell.radius,
                shape,
                cell.texture,
            )
        )
    return moved


def _mean_shape(cell: Cell) -> np.ndarray:
    """The shape the coefficients relax to: keep the cell's elongation, smooth out the rest."""
    mean = np.zeros_like(cell.shape)
    mean[0, 0] = cell.shape[0, 0]
    return mean


# ----------------------------------------------------------------------------- one frame


def frame_labels(cells: list[Cell], size: tuple[int, int]) -> tuple[np.ndarray, np.ndarray, list]:
    """Label map (0 background, 1 cell), signed distance to the nearest cell edge, and each
    cell's body coordinates (s, e^{iφ}).

    The distance is measured along the cell's ray, (s − 1) · r(φ) pixels (< 0 inside): unlike
    a distance transform of the label map it is sub-pixel smooth and moves with the cell.
    """
    yy, xx = np.mgrid[: size[0], : size[1]].astype(np.float64)
    coords = [cell.body_coordinates(yy, xx) for cell in cells]
    gaps = np.stack([(s - 1) * cell.outline(e) for cell, (s, e) in zip(cells, coords, strict=True)])
    distance = gaps.min(0)  # (cells, H, W) -> (H, W)
    return (distance < 0).astype(np.uint8), distance, coords


def render_frame(
    cells: list[Cell], size: tuple[int, int], microscope: np.ndarray
) -> tuple[np.ndarray, np.ndarray]:
    """Clean phase-contrast intensities and labels of one frame.

    The signed distance d to the cell edge (pixels, > 0 outside) shapes the halo, a bright ring
    just outside the edge, and the dark interior; texture and nucleus are painted in each
    cell's body frame so they move with it. ``microscope`` ``(2, H, W)`` holds what does not
    move: the uneven illumination (a factor) and the faint texture of the dish (added).
    Returns ``(image, label)``.
    """
    label, d, coords = frame_labels(cells, size)
    halo = 0.22 * np.exp(-0.5 * ((d - 1.5) / 1.4) ** 2) + 0.05 * np.exp(-np.maximum(d, 0) / 6)
    interior = -0.12 * (1 - np.exp(np.minimum(d, 0) / 4.0))
    body = np.zeros(size)
    owner = np.stack([s for s, _ in coords]).argmin(0)  # the cell a pixel belongs to
    for index, (cell, (s, direction)) in enumerate(zip(cells, coords, strict=True)):
        mine = (owner == index) & (label == 1)
        ty = TEXTURE / 2 + 0.45 * TEXTURE * s[mine] * direction[mine].imag
        tx = TEXTURE / 2 + 0.45 * TEXTURE * s[mine] * direction[mine].real
        texture = map_coordinates(cell.texture, [ty, tx], order=1, mode="nearest")
        nucleus = np.exp(-0.5 * (s[mine] / 0.35) ** 4)
        body[mine] = 0.05 * texture + 0.07 * nucleus - 0.1 * nucleus * (texture > 1.2)
    illumination, dish = microscope
    image = (BACKGROUND + dish + halo + interior + body) * illumination
    return np.clip(image, 0, 1).astype(np.float32), label


def true_displacement(
    before: list[Cell], after: list[Cell], size: tuple[int, int], softness: float = 8.0
) -> np.ndarray:
    """u with ``frame_before(x + u(x)) ≈ frame_after(x)``, ``(2, H, W)`` in pixels.

    Each cell k proposes u_k: a pixel of the later frame goes to the point with the same body
    coordinates (s, φ) in the earlier frame; outside the cell the change of shape fades out
    (by s = 3), leaving the cell's rigid motion (shift and turn). The proposals are blended by
    soft ownership p_k = softmax_k(−gap_k / softness), gap_k = the distance to cell k's edge
    in pixels, so inside a cell its own u_k holds (exactly, unless another cell is near); the
    blend fades to 0 (cosine) between 3 and 3 + 40 pixels from the nearest cell, so the
    background far from the cells stays still (softness and fade scale with width / 256).
    A softness of 8 pixels keeps the field free of folding (checked on 1140 pairs: smallest
    Jacobian determinant 0.08) although neighbouring cells move differently; a sharper blend
    folds between cells that pass each other.
    """
    yy, xx = np.mgrid[: size[0], : size[1]].astype(np.float64)
    proposals, gaps = [], []
    for old, new in zip(before, after, strict=True):
        s, direction = new.body_coordinates(yy, xx)
        r_new = new.outline(direction)
        stretch = old.outline(direction) / r_new  # change of shape along the ray φ
        keep = np.clip((3.0 - s) / 2, 0, 1)  # 1 inside, 0 from s = 3 on
        y_old, x_old = old.position(s * r_new * (1 + (stretch - 1) * keep), direction)
        proposals.append(np.stack([y_old - yy, x_old - xx]))
        gaps.append((s - 1) * r_new)  # pixels from the edge along the ray (< 0 inside)
    gaps = np.stack(gaps)  # (cells, H, W)
    nearest = gaps.min(0)
    scale = size[1] / 256
    ownership = np.exp(-(gaps - nearest) / (softness * scale))  # (cells, H, W)
    ownership /= ownership.sum(0)
    fade = 40.0 * scale
    weight = 0.5 + 0.5 * np.cos(math.pi * np.clip((nearest - 3) / fade, 0, 1))
    u = weight * np.einsum("khw,kchw->chw", ownership, np.stack(proposals))
    return u.astype(np.float32)


# ----------------------------------------------------------------------------- a sequence


def simulate_sequence(
    n_frames: int,
    size: tuple[int, int],
    noise: float,
    rng: np.random.Generator,
    displacements: bool = True,
    patch_strength: float = 1.0,
) -> list[Section]:
    """A time-lapse: move the cells, render each frame, add noise; u between neighbours.

    ``displacements=False`` skips computing the true displacements (the training sequence
    does not store them); the frames are the same either way.
    """
    cells = make_cells(size, rng)
    illumination = 0.9 * bias_field(size, max(size) / 3, 0.12, rng)
    dish = 0.012 * smooth_noise(size, 3.0, rng)
    microscope = np.stack([illumination, dish])
    patchy = rng.permutation(n_frames) < (n_frames + 1) // 2  # half the frames get patches
    frames = []
    for t in range(n_frames):
        if t > 0:
            moved = move_cells(cells, size, rng)
            if displacements:
                u = true_displacement(cells, moved, size)
                frames[-1].displacement = quantise_displacement(u)
            cells = moved
        image, label = render_frame(cells, size, microscope)
        image, mask = add_noise(image, noise, rng, patches=bool(patchy[t]),
                                patch_strength=patch_strength)
        frames.append(Section(quantise(image), label, mask))
    return frames


def valtest_frames(n_valtest: int) -> tuple[range, range]:
    """Frame numbers of val and test in a sequence of ``n_valtest`` (paper: 0–49 and 60–114)."""
    return range(round(50 / 115 * n_valtest)), range(round(60 / 115 * n_valtest), n_valtest)


def make_phc_u373(
    out: str | Path,
    seed: int = 0,
    noise: float = 1.0,
    size: tuple[int, int] = (192, 256),
    n_train: int = 58,
    n_valtest: int = 58,
    patch_strength: float = 1.0,
) -> Path:
    """Generate the embedded PhC-U373 dataset into ``out`` and return its path.

    Args:
        out: the dataset folder to create (replaced if it exists).
        seed: everything is drawn from this seed: the same seed gives identical files.
        noise: nuisance level (see ``series.add_noise``); 0 clean, 1 the default.
        size: frame size (H, W) in pixels, each at least 64.
        n_train: frames of the training sequence (paper: 115).
        n_valtest: frames of the val/test sequence (paper: 115); val and test each get at
            least 2 frames, so it must be at least 6.
        patch_strength: scales the strong noise patches and streaks alone
            (``series.add_noise``); 1 the default, 0 none (masks kept): claim 4's sweep.
    """
    check_noise(noise)
    size = tuple(int(n) for n in np.atleast_1d(size))
    if len(size) != 2 or min(size) < 64:
        raise ValueError(f"size must be (H, W) with both at least 64 pixels, got {size}")
    if n_train < 2:
        raise ValueError(f"n_train must be at least 2 frames (one pair), got {n_train}")
    if n_valtest < 6:
        raise ValueError(f"n_valtest must be at least 6 frames (2 val, 2 test), got {n_valtest}")
    train_rng, valtest_rng = series_rngs(seed)
    val, test = valtest_frames(n_valtest)
    return write_series(
        out,
        "phc-u373",
        CLASSES,
        train=simulate_sequence(n_train, size, noise, train_rng, False, patch_strength),
        valtest=simulate_sequence(n_valtest, size, noise, valtest_rng, True, patch_strength),
        val=val,
        test=test,
        source=(
            f"embedded: deepsim_edu.data.phc.make_phc_u373(seed={seed}, noise={noise}, "
            f"size={size}, n_train={n_train}, n_valtest={n_valtest}"
            + (f", patch_strength={patch_strength})" if patch_strength != 1.0 else ")")
        ),
    )
