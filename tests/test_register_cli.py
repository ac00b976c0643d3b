"""``python -m deepsim_edu register`` on files: every output, the fixed image's affine, Dice
before/after against an independent recomputation, the size and intensity rules, and one
line for each bad input."""

import json

import nibabel as nib
import numpy as np
import pytest
import torch
from PIL import Image

from deepsim_edu import apply, pretrained
from deepsim_edu.__main__ import main
from deepsim_edu.imageio import read_displacement
from deepsim_edu.runs import load_run_results, run_folder
from tests.tiny_runs import train_tiny_runs, write_blobs, write_discs

DATASET = "phc-u373"
# a fixed image's affine with rotation, anisotropic voxels and an offset: outputs must keep it
ANGLE = np.deg2rad(20)
AFFINE = np.array([[0.5 * np.cos(ANGLE), -0.7 * np.sin(ANGLE), 0, 10.0],
                   [0.5 * np.sin(ANGLE), 0.7 * np.cos(ANGLE), 0, -4.0],
                   [0, 0, 1.5, 2.0], [0, 0, 0, 1]])  # fmt: skip


@pytest.fixture(scope="module")
def runs(tmp_path_factory):
    """(data folder, results root, release folder): the disc series, its MSE run (and
    extractor), and a release built from them."""
    data = tmp_path_factory.mktemp("data")
    write_discs(data)
    root = train_tiny_runs(data, tmp_path_factory.mktemp("runs"), metrics=("mse",))
    release = tmp_path_factory.mktemp("models") / "tiny"
    pretrained.build_release(root, release, data, log=lambda line: None)
    return data, root, release


def case(data, kind, name):
    return data / DATASET / kind / f"{name}.nii.gz"


def nifti(path, array, affine=AFFINE):
    nib.save(nib.Nifti1Image(np.asarray(array), affine), path)
    return path


def run(capsys, *argv):
    """``main(argv)`` → (exit status, stdout, stderr lines)."""
    try:
        code = main([str(a) for a in argv])
    except SystemExit as exc:
        code = exc.code
    printed = capsys.readouterr()
    return code, printed.out, printed.err.strip().splitlines()


def hand_dice(a, b):
    """Foreground-mean Dice of two label maps, straight from the definition."""
    labels = [v for v in np.union1d(np.unique(a), np.unique(b)) if v != 0]
    return np.mean([2 * np.sum((a == v) & (b == v)) / (np.sum(a == v) + np.sum(b == v))
                    for v in labels])  # fmt: skip


def hand_det(u):
    """det ∇Φ of a 2D displacement (2, H, W), forward differences, last row/column 0."""
    d = [np.concatenate([np.diff(u, axis=a), np.zeros_like(u.take([0], axis=a))], axis=a)
         for a in (1, 2)]  # d[j][i] = ∂u_i/∂x_j  # fmt: skip
    return (1 + d[0][0]) * (1 + d[1][1]) - d[1][0] * d[0][1]


def test_register_writes_every_output_on_the_fixed_grid(runs, tmp_path, capsys):
    data, root, _ = runs
    fixed = nifti(tmp_path / "fixed.nii.gz", nib.load(case(data, "images", "test_1")).dataobj)
    fixed_labels = nifti(tmp_path / "fixed_labels.nii.gz",
                         np.asarray(nib.load(case(data, "labels", "test_1")).dataobj))  # fmt: skip
    out = tmp_path / "out"
    code, stdout, err = run(capsys, "register", "--model", run_folder(root, DATASET, "mse"),
                            "--fixed", fixed, "--moving", case(data, "images", "test_0"),
                            "--moving-labels", case(data, "labels", "test_0"),
                            "--fixed-labels", fixed_labels, "--out", out)  # fmt: skip
    assert code == 0, err
    assert "Dice" in stdout and f"outputs: {out}" in stdout
    assert {p.name for p in out.iterdir()} == set(apply.OUTPUTS.values())
    metrics = json.loads((out / "metrics.json").read_text())
    for name in ("warped", "displacement", "jacobian_determinant", "warped_labels"):
        assert np.allclose(nib.load(out / apply.OUTPUTS[name]).affine, AFFINE), name
    u, affine = read_displacement(out / "displacement.nii.gz")
    assert u.shape == (2, 32, 32) and np.allclose(affine, AFFINE)
    assert nib.load(out / "displacement.nii.gz").header.get_intent()[0] == "vector"
    # Dice before and after, recomputed from the files
    moving_labels = np.asarray(nib.load(case(data, "labels", "test_0")).dataobj)
    fixed_array = np.asarray(nib.load(fixed_labels).dataobj)
    warped_labels = np.asarray(nib.load(out / "warped_labels.nii.gz").dataobj)
    assert metrics["dice_before"] == pytest.approx(hand_dice(moving_labels, fixed_array))
    assert metrics["dice_after"] == pytest.approx(hand_dice(warped_labels, fixed_array))
    # ... and equal to the run's own evaluation of that test pair (evaluate.evaluate_run)
    results = load_run_results(run_folder(root, DATASET, "mse"))
    row = results[(results["moving"] == "test_0") & (results["fixed"] == "test_1")].iloc[0]
    assert metrics["dice_after"] == pytest.approx(row["dice"], abs=1e-6)
    assert metrics["dice_before"] == pytest.approx(row["dice_before"], abs=1e-6)
    # det ∇Φ and folding from the written displacement, by hand
    det = np.asarray(nib.load(out / "jacobian_determinant.nii.gz").dataobj)
    assert np.allclose(det, hand_det(u), atol=1e-5)
    assert metrics["folding_percent"] == pytest.approx(100 * np.mean(det[:-1, :-1] < 0))
    # the warped image is the moving image read at x + u(x)
    moving = np.asarray(nib.load(case(data, "images", "test_0")).dataobj)
    rows, cols = np.round(np.indices((32, 32)) + u).astype(int).clip(0, 31)
    assert np.array_equal(warped_labels, moving_labels[rows, cols])
    warped = np.asarray(nib.load(out / "warped.nii.gz").dataobj)
    assert warped.shape == (32, 32) and abs(warped.mean() - moving.mean()) < 0.05
    assert metrics["seconds"] > 0 and metrics["intensity"]["moving"].startswith("as stored")
    assert metrics["model"] == str(run_folder(root, DATASET, "mse"))


def test_register_with_a_released_model_and_png_files(runs, tmp_path, capsys):
    data, root, release = runs
    files = {}
    for name in ("test_1", "test_2"):
        image = np.asarray(nib.load(case(data, "images", name)).dataobj)
        files[name] = tmp_path / f"{name}.png"
        Image.fromarray(np.round(image * 255).astype(np.uint8)).save(files[name])
        labels = np.asarray(nib.load(case(data, "labels", name)).dataobj).astype(np.uint8)
        Image.fromarray(labels).save(tmp_path / f"{name}_labels.png")
    out = tmp_path / "out"
    code, _, err = run(capsys, "register", "--model", f"{DATASET}/mse", "--release", release,
                       "--fixed", files["test_2"], "--moving", files["test_1"],
                       "--moving-labels", tmp_path / "test_1_labels.png",
                       "--fixed-labels", tmp_path / "test_2_labels.png", "--out", out)  # fmt: skip
    assert code == 0, err
    metrics = json.loads((out / "metrics.json").read_text())
    assert metrics["intensity"]["fixed"] == "8-bit values divided by 256"
    assert np.allclose(nib.load(out / "displacement.nii.gz").affine, np.eye(4))
    warped_labels = np.asarray(nib.load(out / "warped_labels.nii.gz").dataobj)
    fixed_labels = np.asarray(Image.open(tmp_path / "test_2_labels.png"))
    assert metrics["dice_after"] == pytest.approx(hand_dice(warped_labels, fixed_labels))
    # the released net on the NIfTI files gives the manifest's per-pair Dice of that pair
    code, _, err = run(capsys, "register", "--model", f"{DATASET}/mse", "--release", release,
                       "--fixed", case(data, "images", "test_2"),
                       "--moving", case(data, "images", "test_1"),
                       "--moving-labels", case(data, "labels", "test_1"),
                       "--fixed-labels", case(data, "labels", "test_2"),
                       "--out", tmp_path / "nifti")  # fmt: skip
    assert code == 0, err
    listed = pretrained.read_manifest(release)["models"][f"{DATASET}/mse"]["test_pairs"][1]
    assert (listed["moving"], listed["fixed"]) == ("test_1", "test_2")
    metrics = json.loads((tmp_path / "nifti" / "metrics.json").read_text())
    assert metrics["dice_after"] == pytest.approx(listed["dice"], abs=1e-6)


def test_a_3d_pair_of_another_size(tmp_path, capsys):
    """A 3D run on 16³ blobs registers a 15×16×13 crop: padded to multiples of 8, cropped back."""
    data = tmp_path / "data"
    write_blobs(data)
    root = train_tiny_runs(data, tmp_path / "runs", dataset="brain-mri", metrics=("mse",))
    crop = (slice(0, 15), slice(None), slice(2, 15))
    paths = {}
    for name in ("s4", "atlas"):
        for kind in ("images", "labels"):
            array = np.asarray(nib.load(data / "brain-mri" / kind / f"{name}.nii.gz").dataobj)
            paths[name, kind] = nifti(tmp_path / f"{name}_{kind}.nii.gz", array[crop],
                                      np.diag([2.0, 2.0, 2.0, 1.0]))  # fmt: skip
    out = tmp_path / "out"
    code, _, err = run(capsys, "register", "--model", run_folder(root, "brain-mri", "mse"),
                       "--fixed", paths["atlas", "images"], "--moving", paths["s4", "images"],
                       "--moving-labels", paths["s4", "labels"],
                       "--fixed-labels", paths["atlas", "labels"], "--out", out)  # fmt: skip
    assert code == 0, err
    u, _ = read_displacement(out / "displacement.nii.gz")
    assert u.shape == (3, 15, 16, 13)
    assert nib.load(out / "warped_labels.nii.gz").shape == (15, 16, 13)
    metrics = json.loads((out / "metrics.json").read_text())
    fixed = np.asarray(nib.load(paths["atlas", "labels"]).dataobj)
    moving = np.asarray(nib.load(paths["s4", "labels"]).dataobj)
    assert metrics["dice_before"] == pytest.approx(hand_dice(moving, fixed))
    assert (out / "overview.png").stat().st_size > 10_000


class EchoNet(torch.nn.Module):
    """A stand-in U-Net of 3 stages whose "displacement" is its moving input, twice: what
    padding and cropping do to u can be read off exactly."""

    encoder = [None] * 3

    def forward(self, x):
        assert all(n % 8 == 0 for n in x.shape[2:])
        return torch.cat([x[:, :1], x[:, :1]], dim=1)


def test_padding_is_cropped_back_exactly():
    assert apply.padding((30, 32, 17), 8) == [(1, 1), (0, 0), (3, 4)]
    moving = torch.rand(1, 1, 30, 21)
    u = apply.padded_displacement(EchoNet(), moving, torch.rand(1, 1, 30, 21))
    assert u.shape == (1, 2, 30, 21) and torch.equal(u[0, 0], moving[0, 0])


def test_resampled_displacement_is_mapped_back_in_original_voxels():
    class Constant(EchoNet):
        def forward(self, x):
            return torch.ones(1, 2, *x.shape[2:])  # one voxel of the resampled grid

    image = torch.rand(1, 1, 34, 40)
    u = apply.network_displacement(Constant(), image, image, (1.0, 0.5), (2.0, 2.0))
    # 34 voxels of 1 mm → 17 of 2 mm; 40 of 0.5 mm → 10 of 2 mm (corners kept)
    assert apply.resampled_shape((34, 40), (1.0, 0.5), (2.0, 2.0)) == (17, 10)
    assert u.shape == (1, 2, 34, 40)
    assert torch.allclose(u[0, 0], torch.full((34, 40), 33 / 16))
    assert torch.allclose(u[0, 1], torch.full((34, 40), 39 / 9))


def test_intensity_rules():
    eight_bit = np.array([[0, 128], [255, 64]], dtype=np.uint8)
    values, rule = apply.normalise_intensity(eight_bit)
    assert np.allclose(values, eight_bit / 256) and "256" in rule
    unit = np.array([[0.0, 0.25], [1.0, 0.5]], dtype=np.float32)
    assert np.array_equal(apply.normalise_intensity(unit)[0], unit)
    ct = np.concatenate([np.full(1000, -1000.0), np.linspace(0, 2000, 2001)])
    values, rule = apply.normalise_intensity(ct)
    top = np.percentile(ct[ct > -1000], 99.9)  # 1998
    assert values.min() == 0 and values.max() == 1
    assert values[1000 + 1000] == pytest.approx(2000 / (top + 1000))
    assert "99.9th percentile" in rule
    assert np.array_equal(apply.normalise_intensity(ct, "none")[0], ct.astype(np.float32))


def test_help_says_what_the_models_saw_and_when_to_optimise(capsys):
    code, stdout, _ = run(capsys, "register", "--help")
    assert code == 0
    text = " ".join(stdout.split())
    assert "What the released models were trained on: the embedded datasets" in text
    assert "80x96x80 voxels at 2 mm" in text and "128x128 crops" in text
    assert "--method optimise" in text and "safer choice" in text
    assert "Intensities, as in training" in text


@pytest.fixture
def bad_files(runs, tmp_path):
    data, _, _ = runs
    image = np.asarray(nib.load(case(data, "images", "test_0")).dataobj)
    (tmp_path / "garbage.nii.gz").write_bytes(b"this is no NIfTI file at all")
    (tmp_path / "garbage.png").write_bytes(b"\x89PNG but not really")
    labels = np.asarray(nib.load(case(data, "labels", "test_0")).dataobj).astype(np.float32)
    labels[3, 3] = 0.5
    return {
        "small": nifti(tmp_path / "small.nii.gz", image[:24, :24]),
        "4d": nifti(tmp_path / "4d.nii.gz", np.stack([image[..., None]] * 2, axis=-1)),
        "3d": nifti(tmp_path / "3d.nii.gz", np.stack([image] * 8, axis=-1)),
        "garbage": tmp_path / "garbage.nii.gz",
        "garbage_png": tmp_path / "garbage.png",
        "missing": tmp_path / "missing.nii.gz",
        "fractional_labels": nifti(tmp_path / "fractional.nii.gz", labels),
        "small_labels": nifti(tmp_path / "small_labels.nii.gz", labels[:24, :24].round()),
        "negative_labels": nifti(tmp_path / "negative.nii.gz", -labels.round()),
        "text": tmp_path / "image.txt",
    }


@pytest.mark.parametrize("swap, message", [
    ({"moving": "small"}, "small.nii.gz: shape (24, 24), but the fixed image"),
    ({"moving": "4d"}, "4d.nii.gz: a 4D volume of shape (32, 32, 1, 2)"),
    ({"fixed": "garbage"}, "garbage.nii.gz: not a readable NIfTI file"),
    ({"fixed": "garbage_png"}, "garbage.png: not a readable PNG/TIFF image"),
    ({"moving": "missing"}, "missing.nii.gz: no such file"),
    ({"moving": "text"}, "image.txt: unknown file type '.txt'"),
    ({"moving_labels": "fractional_labels"}, "fractional.nii.gz: labels must be whole numbers"),
    ({"fixed_labels": "small_labels"}, "small_labels.nii.gz: label map of shape (24, 24)"),
    ({"fixed_labels": "negative_labels"}, "negative.nii.gz: labels must be class indices >= 0"),
    ({"fixed": "3d", "moving": "3d"}, "3d.nii.gz: a 3D image, but the model"),
])  # fmt: skip
def test_each_bad_input_gets_one_line(runs, bad_files, tmp_path, capsys, swap, message):
    data, root, _ = runs
    given = {"fixed": case(data, "images", "test_1"), "moving": case(data, "images", "test_0"),
             "moving_labels": case(data, "labels", "test_0"),
             "fixed_labels": case(data, "labels", "test_1")}  # fmt: skip
    given.update({k: bad_files[v] for k, v in swap.items()})
    out = tmp_path / "out"
    code, _, err = run(capsys, "register", "--model", run_folder(root, DATASET, "mse"),
                       "--fixed", given["fixed"], "--moving", given["moving"],
                       "--moving-labels", given["moving_labels"],
                       "--fixed-labels", given["fixed_labels"], "--out", out)  # fmt: skip
    assert code == 2 and len(err) == 1, err
    assert err[0].startswith("error: ") and message in err[0], err[0]
    assert not out.exists()


@pytest.mark.parametrize("argv, message", [
    (["--model", "nowhere/at-all"], "--model nowhere/at-all: neither a run folder"),
    (["--model", "platelet-em/deepsim", "--release", "NOPE"], "no release 'NOPE'"),
    (["--metric", "ncc"], "--metric belongs to --method optimise or network+optimise"),
    (["--iterations", "5"], "--iterations belongs to --method optimise"),
    (["--method", "optimise", "--metric", "ncc-sup"], "--metric ncc-sup compares label maps"),
])  # fmt: skip
def test_bad_model_arguments_get_one_line(runs, tmp_path, capsys, argv, message):
    data, root, _ = runs
    base = {"--model": str(run_folder(root, DATASET, "mse")),
            "--fixed": str(case(data, "images", "test_1")),
            "--moving": str(case(data, "images", "test_0")), "--out": str(tmp_path / "out")}
    given = dict(base, **dict(zip(argv[::2], argv[1::2])))  # fmt: skip
    code, _, err = run(capsys, "register", *[x for kv in given.items() for x in kv])
    assert code == 2 and len(err) == 1 and message in err[0], err
    assert not (tmp_path / "out").exists()


def test_optimise_aligns_the_drifting_disc(runs, tmp_path, capsys):
    """Per-pair optimisation of MSE from the identity: the disc moved 2 pixels between the
    frames, and the optimised field brings its labels closer than the identity does."""
    data, root, _ = runs
    out = tmp_path / "out"
    code, _, err = run(capsys, "register", "--model", run_folder(root, DATASET, "mse"),
                       "--method", "optimise", "--metric", "mse", "--iterations", "30",
                       "--fixed", case(data, "images", "test_1"),
                       "--moving", case(data, "images", "test_0"),
                       "--moving-labels", case(data, "labels", "test_0"),
                       "--fixed-labels", case(data, "labels", "test_1"), "--out", out)  # fmt: skip
    assert code == 0, err
    metrics = json.loads((out / "metrics.json").read_text())
    assert metrics["method"] == "optimise" and metrics["metric"] == "mse"
    assert metrics["iterations_per_level"] == 30 and metrics["seconds_by_step"]["optimise"] > 0
    assert metrics["dice_after"] > metrics["dice_before"] + 0.02
    warped = np.asarray(nib.load(out / "warped_labels.nii.gz").dataobj)
    fixed = np.asarray(nib.load(case(data, "labels", "test_1")).dataobj)
    assert metrics["dice_after"] == pytest.approx(hand_dice(warped, fixed))


def test_network_plus_zero_iterations_is_the_network(runs, tmp_path):
    data, root, _ = runs
    model = apply.resolve_model(str(run_folder(root, DATASET, "mse")))
    pair = {"fixed": case(data, "images", "test_1"), "moving": case(data, "images", "test_0")}
    apply.register_files(**pair, out=tmp_path / "net", model=model)
    apply.register_files(**pair, out=tmp_path / "both", model=model, method="network+optimise",
                         metric="deepsim", iterations=0)  # fmt: skip
    network, _ = read_displacement(tmp_path / "net" / "displacement.nii.gz")
    both, _ = read_displacement(tmp_path / "both" / "displacement.nii.gz")
    assert np.array_equal(network, both)
