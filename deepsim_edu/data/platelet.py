"""Platelet-EM, embedded default: a synthetic serial-section electron-microscopy stack.

The real dataset (paper, Data) is a stack of 800×800 serial EM sections of blood platelets with
three classes — background, cytoplasm, organelle — registered section to section. This module
makes a small stand-in from a seed, in seconds, with the properties the paper's claims are about:
low contrast and noise. It is not a physical EM simulation; every ingredient is here because a
claim needs it.

1. **A 3D scene, cut into sections.** Cells (platelets) are irregular ellipsoids; organelles are
   small ellipsoids inside them (granules, dense granules with a dark core, elongated
   mitochondria), plus bright vesicles that belong to the cytoplasm. Section ``z`` is the scene
   cut at depth ``z``, so structures continue from section to section and organelles appear
   and disappear as the cut passes through them. Textures evolve from section to section as
   ``t_{z+1} = ρ t_z + sqrt(1 - ρ²) · fresh`` (partly the same tissue, partly new).
2. **Each section is distorted** by a smooth random displacement ``d_z`` (cutting and imaging
   stretch every section differently) — this is what registering neighbours undoes:
   ``section_z(x) = cut_z(x + d_z(x))``. The next distortion is the previous one followed by a
   fresh smooth step v_z (bending + a small shift), ``Φ_{d_{z+1}} = Φ_{d_z} ∘ Φ_{v_z}``, so the
   generator knows the answer: for the pair (moving = section z, fixed = section z+1) the true
   displacement is ``u_z = v_z``, with ``warp(section_z, u_z) ≈ section_{z+1}``
   (``warped(x) = image(x + u(x))``, as in ``transform.warp``). What remains after that warp
   is the real change of anatomy between two cuts, and the fresh noise.
3. **Low contrast.** Mean grey levels are 0.50 (background), 0.52 (cytoplasm) and 0.42
   (organelle): the classes differ by texture (fine grain outside, mottled and granular
   cytoplasm), by dark cell membranes and by dark organelle rims far more than by grey level —
   so a pixel metric (MSE, NCC) gets weak gradients while a segmentation network's features can
   still tell the classes apart (the DeepSim argument).
4. **Microscope nuisances, scaled by ``noise``** (``add_noise``): contrast ±30 % and gain ±20 %
   per section, a smooth multiplicative bias field, white noise, and in half of the sections
   (chosen at random) strong noise patches (σ 0.3–0.4) that cover 30–50 % of the image,
   together with bright/dark streaks (structured artefacts). ``noise=0`` gives the clean, easy
   case from the same seed (same anatomy, same distortions); ``noise=1`` is the default;
   larger values make the stress test of a noise sweep.

``add_noise``, ``Section`` and the writer ``write_series`` live in ``series.py``
(shared with ``phc.py``). At the defaults (256², 50 + 24 sections) generation takes about 8 s
on 2 CPU cores and the folder about 12 MB.

Splits follow the paper's proportions: ``train`` is one stack of ``n_train`` sections (paper:
50); a second, independent stack of ``n_valtest`` sections (paper: 24) gives ``val`` = its first
half and ``test`` = its second half (paper: sections 0–11 and 12–23). Pairs are neighbours
(``pairing = {"rule": "neighbours", "max_offset": 2}``).

Files (the layout of ``layout.py``) plus one extra folder::

    images/<case>.nii.gz         float32 in [0, 1], quantised to 256 grey levels like 8-bit EM
    labels/<case>.nii.gz         uint8: 0 background, 1 cytoplasm, 2 organelle
    displacements/<case>.nii.gz  float32 (2, H, W): u with warp(case, u) ≈ the next section,
                                 for the val and test pairs (i, i+1), in steps of 1/64 pixel
    noise_masks/<case>.nii.gz    uint8 0/1: where the strong noise patches were added (for the
                                 noisy-patch analysis); all zeros in clean sections

Case ids: ``train_000`` … for the training stack, ``vt_000`` … for the val/test stack.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
from scipy.ndimage import gaussian_filter, grey_dilation, grey_erosion

from .series import (
    Section,
    add_noise,
    check_noise,
    quantise,
    quantise_displacement,
    series_rngs,
    write_series,
)
from .synth import (
    compose_displacements,
    random_displacement,
    smooth_noise,
    warp_array,
)

CLASSES = ["background", "cytoplasm", "organelle"]
GREY = {"background": 0.50, "cytoplasm": 0.52, "organelle": 0.42}
Window = tuple[slice, slice]  # a rectangle of the image
MARGIN = 16  # pixels simulated around the image, so distortions never read past the scene


# ----------------------------------------------------------------------------- the 3D scene


@dataclass
class Ellipsoid:
    """An ellipsoid in (z, y, x): centre, radii (z in sections, y/x in pixels), in-plane angle."""

    centre: tuple[float, float, float]
    radii: tuple[float, float, float]
    angle: float
    kind: str = "cell"  # cell | granule | dense | mitochondrion | vesicle

    def level(self, z: float, shape: tuple[int, int]) -> tuple[Window, np.ndarray] | None:
        """The cross-section at depth z: a window of the image and q there (q < 1 inside).

        q = ((a/r_y)² + (b/r_x)²) / h with (a, b) the rotated in-plane offset from the centre and
        h = 1 − ((z − z_c)/r_z)² the squared shrinking of the cut towards the poles. The window
        holds every pixel with q < 2. None if the cut misses the ellipsoid.
        """
        height = 1.0 - ((z - self.centre[0]) / self.radii[0]) ** 2
        if height <= 0.02:
            return None
        reach = max(self.radii[1:]) * math.sqrt(2.0 * height) + 1
        window = []
        for centre, n in zip(self.centre[1:], shape, strict=True):
            low, high = max(int(centre - reach), 0), min(int(centre + reach) + 2, n)
            if low >= high:
                return None
            window.append(slice(low, high))
        yy, xx = np.ogrid[window[0], window[1]]
        dy, dx = yy - self.centre[1], xx - self.centre[2]
        cos, sin = math.cos(self.angle), math.sin(self.angle)
        a = (cos * dy + sin * dx) / self.radii[1]
        b = (-sin * dy + cos * dx) / self.radii[2]
        return (window[0], window[1]), ((a * a + b * b) / height).astype(np.float32)


@dataclass
class Cell:
    """A platelet: its outline and the organelles/vesicles inside it."""

    body: Ellipsoid
    organelles: list[Ellipsoid] = field(default_factory=list)


def make_cells(n_sections: int, canvas: int, scale: float, rng: np.random.Generator) -> list[Cell]:
    """Throw darts for cell centres (rejecting overlaps) and fill each cell with organelles."""
    cells: list[Cell] = []
    for _ in range(int(60 * (n_sections / 24 + 1))):
        ry, rx = rng.uniform(26, 52, size=2) * scale
        rz = rng.uniform(20, 45)
        centre = (
            rng.uniform(-0.4 * rz, n_sections + 0.4 * rz),
            rng.uniform(0, canvas),
            rng.uniform(0, canvas),
        )
        body = Ellipsoid(centre, (rz, ry, rx), rng.uniform(0, math.pi))
        if all(_apart(body, other.body) for other in cells):
            cells.append(Cell(body, _organelles(body, scale, rng)))
    return cells


def _apart(a: Ellipsoid, b: Ellipsoid) -> bool:
    """True if two cells overlap at most a little (a cheap test on centres and mean radii)."""
    (za, ya, xa), (zb, yb, xb) = a.centre, b.centre
    r_plane = (a.radii[1] + a.radii[2] + b.radii[1] + b.radii[2]) / 2
    r_depth = a.radii[0] + b.radii[0]
    return ((ya - yb) ** 2 + (xa - xb) ** 2) / r_plane**2 + ((za - zb) / r_depth) ** 2 > 0.75**2


def _organelles(body: Ellipsoid, scale: float, rng: np.random.Generator) -> list[Ellipsoid]:
    """Organelles at random places inside a cell: mostly granules, some dense, some elongated."""
    volume = body.radii[0] * body.radii[1] * body.radii[2]
    count = int(volume / (1800 * scale**2)) + 2
    out = []
    for kind in rng.choice(
        ["granule", "dense", "mitochondrion", "vesicle"], size=count, p=[0.55, 0.15, 0.12, 0.18]
    ):
        direction = rng.standard_normal(3)
        reach = 0.7 * rng.uniform() ** (1 / 3) / np.linalg.norm(direction)
        offset = direction * reach * np.array(body.radii)
        r = rng.uniform(4, 8) * scale
        radii = {
            "granule": (rng.uniform(5, 10), r, r * rng.uniform(0.8, 1.2)),
            "dense": (rng.uniform(4, 7), 0.7 * r, 0.7 * r),
            "mitochondrion": (rng.uniform(6, 12), 0.8 * r, 2.2 * r),
            "vesicle": (rng.uniform(3, 6), 0.6 * r, 1.3 * r),
        }[str(kind)]
        centre = tuple(np.array(body.centre) + offset)
        out.append(Ellipsoid(centre, radii, rng.uniform(0, math.pi), str(kind)))
    return out


# ----------------------------------------------------------------------------- one section


@dataclass
class Textures:
    """Smooth random fields that evolve from section to section (AR(1) in depth)."""

    fine: np.ndarray  # grain of the background and organelles
    mottle: np.ndarray  # coarse mottling of the cytoplasm
    outline: np.ndarray  # bumps of cell and organelle outlines

    @classmethod
    def fresh(cls, shape: tuple[int, int], scale: float, rng: np.random.Generator) -> Textures:
        """New, independent fields (unit variance) of correlation lengths 0.8, 2 and 7 pixels."""
        return cls(
            smooth_noise(shape, 0.8, rng),
            smooth_noise(shape, 2.0 * scale, rng),
            smooth_noise(shape, 7.0 * scale, rng),
        )

    def next_section(self, scale: float, rng: np.random.Generator) -> Textures:
        """The textures of the next section: ``ρ · now + sqrt(1 − ρ²) · fresh`` per field."""
        new = Textures.fresh(self.fine.shape, scale, rng)
        mix = {"fine": 0.5, "mottle": 0.8, "outline": 0.98}
        return Textures(
            **{
                name: _mix(getattr(self, name), getattr(new, name), rho)
                for name, rho in mix.items()
            }
        )


def _mix(now: np.ndarray, fresh: np.ndarray, rho: float) -> np.ndarray:
    """ρ · now + sqrt(1 − ρ²) · fresh: keeps unit variance, correlation ρ with ``now``."""
    return rho * now + math.sqrt(1 - rho**2) * fresh


def cut_section(cells: list[Cell], z: float, tex: Textures) -> dict[str, np.ndarray]:
    """Cut the scene at depth z: label map (0/1/2), cell instances, dark cores, bright vesicles.

    A pixel belongs to the cell whose level q (bumped by the outline texture) is smallest and
    below 1; touching cells thus share a border, where a membrane is drawn.
    """
    shape = tex.fine.shape
    best = np.ones(shape, dtype=np.float32)  # the smallest cell level seen so far
    instance = np.zeros(shape, dtype=np.int32)
    for index, cell in enumerate(cells, start=1):
        cut = cell.body.level(z, shape)
        if cut is not None:
            window, q = cut
            q = q + 0.2 * tex.outline[window]
            instance[window][q < best[window]] = index
            best[window] = np.minimum(best[window], q)
    label = (instance > 0).astype(np.uint8)
    core = np.zeros(shape, dtype=bool)
    vesicle = np.zeros(shape, dtype=bool)
    for index, cell in enumerate(cells, start=1):
        for organelle in cell.organelles:
            cut = organelle.level(z, shape)
            if cut is None:
                continue
            window, q = cut
            inside = (q + 0.1 * tex.outline[window] < 1) & (instance[window] == index)
            if organelle.kind == "vesicle":
                vesicle[window] |= inside & (label[window] == 1)
            else:
                label[window][inside] = 2
                core[window] |= inside & (q < 0.35) & (organelle.kind == "dense")
    return {"label": label, "instance": instance, "core": core, "vesicle": vesicle}


def _boundary(regions: np.ndarray, width: float) -> np.ndarray:
    """A soft line (peak ≈ 1) along the borders between different values of ``regions``."""
    edge = grey_dilation(regions, size=(2, 2)) != grey_erosion(regions, size=(2, 2))
    line = gaussian_filter(edge.astype(np.float32), width)
    return line / max(float(line.max()), 1e-6)


def render_section(cut: dict[str, np.ndarray], tex: Textures) -> np.ndarray:
    """Clean EM intensities of one cut: grey level + class texture, membranes and rims.

    The three mean grey levels are close (0.50 / 0.52 / 0.42); what sets the classes apart is
    texture (fine grain outside, mottled cytoplasm), the dark membrane around every cell, the
    dark rim around every organelle, dark cores of dense granules and bright vesicles.
    """
    label = cut["label"]
    background = GREY["background"] + 0.045 * tex.fine
    cytoplasm = GREY["cytoplasm"] + 0.03 * tex.mottle - 0.05 * (tex.fine > 1.6)
    organelle = GREY["organelle"] + 0.02 * tex.fine
    image = np.choose(label, [background, cytoplasm, organelle])
    image = image - 0.12 * _boundary(cut["instance"], 0.6)  # cell membranes
    image = image - 0.07 * _boundary(label == 2, 0.6) * (label > 0)  # organelle rims
    image = image - 0.15 * gaussian_filter(cut["core"].astype(np.float32), 1.0)
    image = image + 0.09 * gaussian_filter(cut["vesicle"].astype(np.float32), 0.8)
    return np.clip(image, 0, 1).astype(np.float32)


# ----------------------------------------------------------------------------- the microscope


def next_distortion(
    d: np.ndarray, scale: float, rng: np.random.Generator
) -> tuple[np.ndarray, np.ndarray]:
    """The next section's distortion and the true displacement between the two sections.

    Section z shows the scene through its distortion d_z: ``section_z(x) = cut_z(x + d_z(x))``.
    We draw the step v (smooth bending and a small shift, pulled a little back towards no
    distortion so the stack does not drift away) and set ``d_{z+1} = d_z ∘ v``, i.e.
    ``Φ_{d_{z+1}} = Φ_{d_z} ∘ Φ_v``. Then ``section_z(x + v(x)) = cut_z(x + d_{z+1}(x))``
    ≈ ``section_{z+1}(x)``: v is exactly the true displacement of the pair (z, z+1), with no
    field to invert. Returns ``(d_{z+1}, v)``, both ``(2, H, W)`` in pixels.
    """
    bend = random_displacement(d.shape[1:], sigma=40 * scale, magnitude=2.0 * scale, rng=rng)
    shift = rng.normal(0.0, 1.5 * scale, size=(2, 1, 1)).astype(np.float32)
    v = bend + shift - 0.2 * d
    return compose_displacements(d, v), v


# ----------------------------------------------------------------------------- a stack


def simulate_stack(
    n_sections: int, size: int, noise: float, rng: np.random.Generator,
    patch_strength: float = 1.0,
) -> list[Section]:
    """A serial-section stack: cut the scene, distort each section, add the microscope's noise."""
    scale = size / 256
    canvas = size + 2 * MARGIN
    cells = make_cells(n_sections, canvas, scale, rng)
    tex = Textures.fresh((canvas, canvas), scale, rng)
    d = np.zeros((2, canvas, canvas), dtype=np.float32)
    crop = (slice(MARGIN, MARGIN + size),) * 2
    patchy = rng.permutation(n_sections) < (n_sections + 1) // 2  # half the sections get patches
    sections = []
    for z in range(n_sections):
        if z > 0:
            tex = tex.next_section(scale, rng)
            d, v = next_distortion(d, scale, rng)
            sections[-1].displacement = quantise_displacement(v[(slice(None), *crop)])
        cut = cut_section(cells, z, tex)
        image = warp_array(render_section(cut, tex), d)[crop]
        label = warp_array(cut["label"], d, mode="nearest")[crop]
        image, mask = add_noise(image, noise, rng, patches=bool(patchy[z]),
                                patch_strength=patch_strength)
        sections.append(Section(quantise(image), label, mask))
    return sections


def make_platelet_em(
    out: str | Path,
    seed: int = 0,
    noise: float = 1.0,
    size: int = 256,
    n_train: int = 50,
    n_valtest: int = 24,
    patch_strength: float = 1.0,
) -> Path:
    """Generate the embedded Platelet-EM dataset into ``out`` and return its path.

    Args:
        out: the dataset folder to create (replaced if it exists).
        seed: everything is drawn from this seed: the same seed gives identical files.
        noise: nuisance level (see ``add_noise``); 0 gives clean sections, 1 the default.
        size: sections are ``size × size`` pixels (structures scale with it; ≥ 64).
        n_train: sections of the training stack (paper: 50).
        n_valtest: sections of the val/test stack (paper: 24): the first half is ``val``,
            the second ``test`` (each at least 2).
        patch_strength: scales the strong noise patches and streaks alone (``add_noise``);
            1 the default, 0 none (the masks still say where they would be): claim 4's sweep.
    """
    check_noise(noise)
    if not isinstance(size, int | np.integer) or size < 64:
        raise ValueError(f"size must be an integer of at least 64 pixels, got {size!r}")
    if n_train < 2:
        raise ValueError(f"n_train must be at least 2 sections (one pair), got {n_train}")
    if n_valtest < 4:
        raise ValueError(f"n_valtest must be at least 4 sections (2 val + 2 test), got {n_valtest}")
    train_rng, valtest_rng = series_rngs(seed)
    n_val = n_valtest // 2
    return write_series(
        out,
        "platelet-em",
        CLASSES,
        train=simulate_stack(n_train, size, noise, train_rng, patch_strength),
        valtest=simulate_stack(n_valtest, size, noise, valtest_rng, patch_strength),
        val=range(n_val),
        test=range(n_val, n_valtest),
        source=(
            f"embedded: deepsim_edu.data.platelet.make_platelet_em(seed={seed}, "
            f"noise={noise}, size={size}, n_train={n_train}, n_valtest={n_valtest}"
            + (f", patch_strength={patch_strength})" if patch_strength != 1.0 else ")")
        ),
    )
