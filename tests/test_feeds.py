"""Tests for graphslim.feeds: random, array and image feeds and their preprocessing."""

from __future__ import annotations

import logging

import numpy as np
import onnx
import onnxruntime as ort
import pytest
from onnx import TensorProto, helper
from PIL import Image

from graphslim.feeds import (
    FeedError,
    InputSpec,
    Letterbox,
    Preprocess,
    image_folder_feeds,
    input_specs,
    load_array_feeds,
    load_feeds,
    parse_shape_overrides,
    preprocess_image,
    random_feeds,
)

# ----------------------------------------------------------------------------- models


def identity_model(*inputs: tuple[str, int, list]) -> onnx.ModelProto:
    """One Identity per input: (name, elem_type, shape) -> output '<name>_out'."""
    nodes, graph_inputs, graph_outputs = [], [], []
    for name, elem, shape in inputs:
        nodes.append(helper.make_node("Identity", [name], [f"{name}_out"]))
        graph_inputs.append(helper.make_tensor_value_info(name, elem, shape))
        graph_outputs.append(helper.make_tensor_value_info(f"{name}_out", elem, shape))
    graph = helper.make_graph(nodes, "identity", graph_inputs, graph_outputs)
    return helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)], ir_version=10)


def conv_model(shape: list, channels: int = 3) -> onnx.ModelProto:
    """x[N,C,H,W] -> Conv 1x1 to 4 channels; the weight is also listed as a graph input."""
    weight = helper.make_tensor(
        "w",
        TensorProto.FLOAT,
        [4, channels, 1, 1],
        np.arange(4 * channels, dtype=np.float32).tolist(),
    )
    graph = helper.make_graph(
        [helper.make_node("Conv", ["x", "w"], ["y"])],
        "conv",
        [
            helper.make_tensor_value_info("x", TensorProto.FLOAT, shape),
            helper.make_tensor_value_info("w", TensorProto.FLOAT, [4, channels, 1, 1]),
        ],
        [helper.make_tensor_value_info("y", TensorProto.FLOAT, None)],
        initializer=[weight],
    )
    return helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)], ir_version=10)


def run_ort(model: onnx.ModelProto, feed: dict) -> list[np.ndarray]:
    session = ort.InferenceSession(model.SerializeToString(), providers=["CPUExecutionProvider"])
    return session.run(None, feed)


def write_image(path, rgb, size=(20, 10)) -> None:
    """A solid-colour image, size = (W, H)."""
    Image.new("RGB", size, tuple(rgb)).save(path)


# ----------------------------------------------------------------------------- signature


def test_input_specs_skip_initializers_and_keep_symbols():
    specs = input_specs(conv_model(["batch", 3, None, 32]))
    assert specs == [InputSpec("x", np.dtype(np.float32), ("batch", 3, None, 32))]
    assert specs[0].describe() == "x: float32[batch,3,?,32]"


# ----------------------------------------------------------------------------- random


def test_random_feeds_deterministic_and_follow_signature():
    model = identity_model(
        ("f", TensorProto.FLOAT, [2, 3]),
        ("h", TensorProto.FLOAT16, [4]),
        ("i", TensorProto.INT64, [5, 5]),
        ("b", TensorProto.BOOL, [7]),
    )
    a = random_feeds(model, count=3, seed=7)
    b = random_feeds(model, count=3, seed=7)
    c = random_feeds(model, count=3, seed=8)
    assert len(a) == 3
    for fa, fb in zip(a, b, strict=True):
        assert fa.keys() == fb.keys()
        for name in fa:
            assert fa[name].tobytes() == fb[name].tobytes()
    assert not np.array_equal(a[0]["f"], c[0]["f"])
    assert not np.array_equal(a[0]["f"], a[1]["f"])
    feed = a[0]
    assert feed["f"].dtype == np.float32 and feed["f"].shape == (2, 3)
    assert feed["h"].dtype == np.float16 and feed["h"].shape == (4,)
    assert feed["i"].dtype == np.int64 and feed["i"].min() >= 0 and feed["i"].max() < 10
    assert feed["b"].dtype == np.bool_
    assert ((feed["f"] >= 0) & (feed["f"] < 1)).all()
    run_ort(model, feed)


def test_random_feeds_low_high():
    model = identity_model(("f", TensorProto.FLOAT, [1000]))
    (feed,) = random_feeds(model, low=-2.0, high=-1.0)
    assert feed["f"].min() >= -2.0 and feed["f"].max() < -1.0


def test_random_feeds_resolve_batch_and_overrides():
    model = conv_model(["batch", 3, "height", "width"])
    with pytest.raises(FeedError, match="--input-shape") as err:
        random_feeds(model)
    assert "'x'" in str(err.value) and "dim 2" in str(err.value)
    (feed,) = random_feeds(model, shapes={"x": (2, 3, 16, 8)})
    assert feed["x"].shape == (2, 3, 16, 8)
    (y,) = run_ort(model, feed)
    assert y.shape == (2, 4, 16, 8)
    # A symbolic batch alone is filled with 1.
    (feed,) = random_feeds(conv_model(["N", 3, 8, 8]))
    assert feed["x"].shape == (1, 3, 8, 8)
    (feed,) = random_feeds(conv_model([None, 3, 8, 8]))
    assert feed["x"].shape == (1, 3, 8, 8)


def test_concrete_shapes_order_pipeline_given_metadata_guess():
    from graphslim.feeds import concrete_shapes

    model = conv_model(["batch", 3, "height", "width"])
    with pytest.raises(FeedError, match=r"--input-shape x:1,3,640,640 "):  # a concrete example
        random_feeds(model)
    shapes, note = concrete_shapes(model)
    assert shapes == {"x": (1, 3, 640, 640)}
    assert "using x:1,3,640,640" in note and "--input-shape x:" in note
    shapes, note = concrete_shapes(model, {"x": (1, 3, 32, 32)})
    assert shapes == {"x": (1, 3, 32, 32)} and note is None
    # the pipeline's own fix-input-shapes beats --input-shape
    shapes, _ = concrete_shapes(model, {"x": (1, 3, 32, 32)}, {"x": (1, 3, 64, 48)})
    assert shapes == {"x": (1, 3, 64, 48)}
    onnx.helper.set_model_props(model, {"imgsz": "[320, 256]"})  # ultralytics metadata
    shapes, note = concrete_shapes(model)
    assert shapes == {"x": (1, 3, 320, 256)} and note is None
    assert concrete_shapes(conv_model([1, 3, 8, 8])) == (None, None)


def test_random_feeds_share_symbols_between_inputs():
    model = identity_model(
        ("ids", TensorProto.INT64, ["batch", "seq"]), ("mask", TensorProto.INT64, ["batch", "seq"])
    )
    (feed,) = random_feeds(model, shapes={"ids": (2, 5)})
    assert feed["mask"].shape == (2, 5)


def test_random_feeds_bad_overrides():
    model = conv_model(["batch", 3, 8, 8])
    with pytest.raises(FeedError, match="unknown input"):
        random_feeds(model, shapes={"nope": (1, 3, 8, 8)})
    with pytest.raises(FeedError, match="rank"):
        random_feeds(model, shapes={"x": (1, 3, 8)})
    with pytest.raises(FeedError, match="fixes it to 3"):
        random_feeds(model, shapes={"x": (1, 4, 8, 8)})


# ----------------------------------------------------------------------------- shape text


@pytest.mark.parametrize(
    ("text", "expected"),
    [
        ("images:1,3,640,640", {"images": (1, 3, 640, 640)}),
        ("images:1,3,640,640;mask:1,1,64,64", {"images": (1, 3, 640, 640), "mask": (1, 1, 64, 64)}),
        ("images:1,3,640,640 mask:1,1,64,64", {"images": (1, 3, 640, 640), "mask": (1, 1, 64, 64)}),
        ("images: [1, 3, 64, 64];", {"images": (1, 3, 64, 64)}),
        ("x:1x3x32x32", {"x": (1, 3, 32, 32)}),
        ("input:0:1,224,224,3", {"input:0": (1, 224, 224, 3)}),
        ("", {}),
    ],
)
def test_parse_shape_overrides_good(text, expected):
    assert parse_shape_overrides(text) == expected


@pytest.mark.parametrize(
    "text", ["images", "images:", ":1,2", "images:1,a,3", "x:1,-3", "x:1,2;x:1,2", "x:1,,2"]
)
def test_parse_shape_overrides_bad(text):
    with pytest.raises(FeedError):
        parse_shape_overrides(text)


# ----------------------------------------------------------------------------- arrays


def test_npz_round_trip_with_and_without_sample_axis(tmp_path):
    model = identity_model(("a", TensorProto.FLOAT, ["batch", 3]), ("b", TensorProto.INT64, [2]))
    rng = np.random.default_rng(0)
    a = rng.random((4, 1, 3), dtype=np.float32)  # 4 samples of [1, 3]
    b = np.array([5, 6], dtype=np.int64)  # shared by every sample
    np.savez(tmp_path / "feeds.npz", a=a, b=b)
    feeds = load_array_feeds(tmp_path / "feeds.npz", model)
    assert len(feeds) == 4
    for i, feed in enumerate(feeds):
        np.testing.assert_array_equal(feed["a"], a[i])
        np.testing.assert_array_equal(feed["b"], b)
        run_ort(model, feed)
    # One sample, no sample axis.
    np.savez(tmp_path / "one.npz", a=a[0], b=b)
    (feed,) = load_array_feeds(tmp_path / "one.npz", model)
    np.testing.assert_array_equal(feed["a"], a[0])


def test_npy_single_input_and_folder(tmp_path):
    model = conv_model([1, 3, 4, 4])
    x = np.random.default_rng(1).random((3, 1, 3, 4, 4))  # float64: cast to float32
    np.save(tmp_path / "b.npy", x[:2])
    np.save(tmp_path / "a.npy", x[2, :])
    (tmp_path / "notes.txt").write_text("ignored")
    feeds = load_array_feeds(tmp_path, model)
    assert [f["x"].dtype for f in feeds] == [np.float32] * 3
    np.testing.assert_allclose(feeds[0]["x"], x[2].astype(np.float32))  # a.npy first
    np.testing.assert_allclose(feeds[2]["x"], x[1].astype(np.float32))
    run_ort(model, feeds[0])


def test_npz_wrong_name_rank_dtype(tmp_path):
    model = identity_model(("a", TensorProto.FLOAT, [2, 3]))
    np.savez(tmp_path / "bad.npz", images=np.zeros((2, 3), np.float32))
    with pytest.raises(FeedError, match="images") as err:
        load_array_feeds(tmp_path / "bad.npz", model)
    assert "'a'" in str(err.value) and "bad.npz" in str(err.value)
    np.savez(tmp_path / "rank.npz", a=np.zeros((3,), np.float32))
    with pytest.raises(FeedError, match="rank 2"):
        load_array_feeds(tmp_path / "rank.npz", model)
    np.savez(tmp_path / "dtype.npz", a=np.zeros((2, 3), np.int64))
    with pytest.raises(FeedError, match="astype"):
        load_array_feeds(tmp_path / "dtype.npz", model)
    np.savez(tmp_path / "dims.npz", a=np.zeros((2, 4), np.float32))
    with pytest.raises(FeedError, match="dim 1 to 3"):
        load_array_feeds(tmp_path / "dims.npz", model)


def test_npy_for_multi_input_model_is_refused(tmp_path):
    model = identity_model(("a", TensorProto.FLOAT, [2]), ("b", TensorProto.FLOAT, [2]))
    np.save(tmp_path / "x.npy", np.zeros(2, np.float32))
    with pytest.raises(FeedError, match="npz"):
        load_array_feeds(tmp_path / "x.npy", model)


# ----------------------------------------------------------------------------- preprocess


def test_preprocess_presets():
    yolo = Preprocess.parse("yolo")
    assert yolo == Preprocess(resize="letterbox", pad_value=114, scale=1 / 255)
    assert (yolo.channels, yolo.layout, yolo.size) == ("RGB", "NCHW", None)
    imagenet = Preprocess.parse("imagenet")
    assert imagenet.size == (224, 224) and imagenet.resize == "center-crop"
    assert imagenet.mean == (0.485, 0.456, 0.406) and imagenet.std == (0.229, 0.224, 0.225)
    raw = Preprocess.parse("raw-bgr")
    assert (raw.scale, raw.channels, raw.pad_value, raw.resize) == (1.0, "BGR", 114, "letterbox")
    assert Preprocess.parse("yolo,nhwc,letterbox=320").size == (320, 320)


def test_preprocess_parse_custom():
    spec = Preprocess.parse("letterbox=640,pad=0,scale=1/255,bgr,nhwc")
    assert spec == Preprocess(
        size=(640, 640),
        resize="letterbox",
        pad_value=0.0,
        scale=1 / 255,
        channels="BGR",
        layout="NHWC",
    )
    spec = Preprocess.parse("resize=224x320,mean=0.485/0.456/0.406,std=0.229/0.224/0.225")
    assert spec.size == (224, 320) and spec.resize == "resize"
    assert spec.mean == (0.485, 0.456, 0.406) and spec.std == (0.229, 0.224, 0.225)
    assert Preprocess.parse("mean=0.5,std=0.5").mean == (0.5, 0.5, 0.5)
    for text in ["yolo", "imagenet", "raw-bgr", "resize=224x320,mean=0.5,bgr,nhwc"]:
        spec = Preprocess.parse(text)
        assert Preprocess.parse(spec.to_string()) == spec


@pytest.mark.parametrize(
    "text",
    [
        "bogus=1",
        "letterbox,colour=bgr",
        "scale=abc",
        "resize=big",
        "std=0",
        "layout=nchwc",
        "bgr,yolo",
    ],
)
def test_preprocess_parse_bad(text):
    with pytest.raises(FeedError):
        Preprocess.parse(text)


def test_preprocess_parse_unknown_key_lists_valid_keys():
    with pytest.raises(FeedError, match="bogus") as err:
        Preprocess.parse("bogus=1")
    assert "letterbox" in str(err.value) and "mean" in str(err.value)


def test_letterbox_100x50_to_64x64():
    pixels = np.full((50, 100, 3), 200, dtype=np.uint8)  # W=100, H=50
    spec = Preprocess.parse("yolo")
    x, box = preprocess_image(pixels, spec, (64, 64))
    assert x.shape == (3, 64, 64) and x.dtype == np.float32
    assert box == Letterbox(ratio=0.64, pad=(0.0, 16.0), orig_size=(50, 100))
    pad = np.float32(114.0 * (1 / 255))
    np.testing.assert_allclose(x[:, :16, :], pad, rtol=0, atol=1e-7)
    np.testing.assert_allclose(x[:, 48:, :], pad, rtol=0, atol=1e-7)
    np.testing.assert_allclose(x[:, 16:48, :], 200 / 255, rtol=0, atol=1e-6)
    # Boxes map back: the whole image region is (0, 16, 64, 48) in the input.
    np.testing.assert_allclose(box.to_original(np.array([0, 16, 64, 48])), [0, 0, 100, 50])


def test_letterbox_odd_padding_split_like_ultralytics():
    pixels = np.zeros((50, 100, 3), dtype=np.uint8)
    x, box = preprocess_image(pixels, Preprocess(pad_value=255, scale=1.0), (63, 64))
    # dh = 31: top = round(15.5 - 0.1) = 15, bottom = round(15.5 + 0.1) = 16.
    assert box.pad == (0.0, 15.0)
    assert (x[:, :15] == 255).all() and (x[:, 15:47] == 0).all() and (x[:, 47:] == 255).all()


def test_bgr_flips_channels_and_nhwc_layout():
    pixels = np.empty((8, 8, 3), dtype=np.uint8)
    pixels[...] = (10, 20, 30)
    rgb, _ = preprocess_image(pixels, Preprocess(scale=1.0), (8, 8))
    bgr, _ = preprocess_image(pixels, Preprocess(scale=1.0, channels="BGR"), (8, 8))
    assert rgb[:, 0, 0].tolist() == [10, 20, 30]
    assert bgr[:, 0, 0].tolist() == [30, 20, 10]
    nhwc, _ = preprocess_image(pixels, Preprocess.parse("resize,scale=1,nhwc"), (8, 4))
    assert nhwc.shape == (8, 4, 3) and nhwc[0, 0].tolist() == [10, 20, 30]


def test_mean_std_and_stretch_resize_and_center_crop():
    pixels = np.full((40, 80, 3), 255, dtype=np.uint8)
    spec = Preprocess.parse("resize,mean=0.5,std=0.25")
    x, box = preprocess_image(pixels, spec, (16, 16))
    np.testing.assert_allclose(x, 2.0, atol=1e-6)
    assert box.ratio_xy == (0.2, 0.4)
    x, box = preprocess_image(pixels, Preprocess.parse("imagenet"))
    assert x.shape == (3, 224, 224)
    # Short side 40 -> 256, long side 80 -> 512, crop 224 from the center.
    assert box.ratio == pytest.approx(6.4) and box.pad == (-144.0, -16.0)


# ----------------------------------------------------------------------------- image folders


def test_image_folder_feeds(tmp_path):
    write_image(tmp_path / "b.png", (0, 255, 0))
    write_image(tmp_path / "a.png", (255, 0, 0))
    write_image(tmp_path / "c.JPG", (0, 0, 255))
    (tmp_path / "readme.txt").write_text("not an image")
    model = conv_model([1, 3, 32, 32])
    feeds = image_folder_feeds(tmp_path, model, Preprocess.parse("resize,scale=1"))
    assert len(feeds) == 3
    assert all(f["x"].shape == (1, 3, 32, 32) and f["x"].dtype == np.float32 for f in feeds)
    assert feeds[0]["x"][0, :, 5, 5].tolist() == [255, 0, 0]  # a.png first
    assert feeds[1]["x"][0, :, 5, 5].tolist() == [0, 255, 0]
    assert np.abs(feeds[2]["x"][0, :, 5, 5] - [0, 0, 255]).max() < 8  # JPEG is lossy
    run_ort(model, feeds[0])
    assert len(image_folder_feeds(tmp_path, model, Preprocess(), limit=2)) == 2


def test_image_folder_static_batch_and_dynamic_size(tmp_path, caplog):
    for i in range(3):
        write_image(tmp_path / f"{i}.png", (i * 50, 0, 0))
    with caplog.at_level(logging.WARNING, logger="graphslim.feeds"):
        feeds = image_folder_feeds(tmp_path, conv_model([2, 3, 16, 16]), Preprocess())
    assert len(feeds) == 1 and feeds[0]["x"].shape == (2, 3, 16, 16)
    assert "dropping" in caplog.text
    dynamic = conv_model(["batch", 3, "height", "width"])
    with pytest.raises(FeedError, match="letterbox=640"):
        image_folder_feeds(tmp_path, dynamic, Preprocess())
    feeds = image_folder_feeds(tmp_path, dynamic, Preprocess.parse("letterbox=32x48"))
    assert feeds[0]["x"].shape == (1, 3, 32, 48)
    with pytest.raises(FeedError, match="does not match"):
        image_folder_feeds(tmp_path, conv_model([1, 3, 16, 16]), Preprocess.parse("letterbox=32"))


def test_image_folder_gray_nhwc_and_layout_hint(tmp_path):
    write_image(tmp_path / "a.png", (255, 255, 255))
    gray = conv_model([1, 1, 8, 8], channels=1)
    (feed,) = image_folder_feeds(tmp_path, gray, Preprocess(resize="resize"))
    assert feed["x"].shape == (1, 1, 8, 8)
    np.testing.assert_allclose(feed["x"], 1.0, atol=1e-5)
    nhwc = identity_model(("img", TensorProto.FLOAT, [1, 8, 8, 3]))
    with pytest.raises(FeedError, match="nhwc"):
        image_folder_feeds(tmp_path, nhwc, Preprocess())
    (feed,) = image_folder_feeds(tmp_path, nhwc, Preprocess.parse("yolo,nhwc"))
    assert feed["img"].shape == (1, 8, 8, 3)
    raw = identity_model(("img", TensorProto.UINT8, [1, 8, 8, 3]))
    with pytest.raises(FeedError, match="uint8"):
        image_folder_feeds(tmp_path, raw, Preprocess.parse("yolo,nhwc"))
    (feed,) = image_folder_feeds(tmp_path, raw, Preprocess.parse("raw-bgr,nhwc"))
    assert feed["img"].dtype == np.uint8 and set(np.unique(feed["img"])) == {114, 255}


def test_image_folder_multi_input_needs_input_name(tmp_path):
    write_image(tmp_path / "a.png", (1, 2, 3))
    model = identity_model(
        ("image", TensorProto.FLOAT, [1, 3, 8, 8]), ("scale", TensorProto.FLOAT, [1, 2])
    )
    with pytest.raises(FeedError, match="input_name"):
        image_folder_feeds(tmp_path, model, Preprocess())
    (feed,) = image_folder_feeds(tmp_path, model, Preprocess(), input_name="image")
    assert feed["image"].shape == (1, 3, 8, 8) and feed["scale"].shape == (1, 2)
    run_ort(model, feed)


def test_image_folder_errors(tmp_path):
    model = conv_model([1, 3, 8, 8])
    with pytest.raises(FeedError, match="no images"):
        image_folder_feeds(tmp_path, model, Preprocess())
    write_image(tmp_path / "a.png", (1, 2, 3))
    (tmp_path / "broken.jpg").write_bytes(b"\xff\xd8\xff\xe0 definitely not a jpeg")
    with pytest.raises(FeedError, match="broken.jpg"):
        image_folder_feeds(tmp_path, model, Preprocess())


def test_truncated_png_names_the_file(tmp_path):
    write_image(tmp_path / "full.png", (1, 2, 3), size=(64, 64))
    data = (tmp_path / "full.png").read_bytes()
    (tmp_path / "full.png").unlink()
    (tmp_path / "cut.png").write_bytes(data[: len(data) // 2])
    with pytest.raises(FeedError, match="cut.png"):
        image_folder_feeds(tmp_path, conv_model([1, 3, 8, 8]), Preprocess())


# ----------------------------------------------------------------------------- dispatch


def test_load_feeds_dispatch(tmp_path):
    model = conv_model([1, 3, 8, 8])
    assert len(load_feeds(None, model, count=2)) == 2
    assert (
        load_feeds("random", model, seed=3)[0]["x"].tobytes()
        == random_feeds(model, seed=3)[0]["x"].tobytes()
    )
    np.save(tmp_path / "x.npy", np.zeros((5, 1, 3, 8, 8), np.float32))
    assert len(load_feeds(tmp_path / "x.npy", model, limit=3)) == 3
    images = tmp_path / "images"
    images.mkdir()
    write_image(images / "a.png", (255, 255, 255))
    (feed,) = load_feeds(images, model)  # default preset yolo
    assert feed["x"].shape == (1, 3, 8, 8)
    (feed,) = load_feeds(str(images / "a.png"), model, preprocess="raw-bgr")
    assert feed["x"].max() == 255
    with pytest.raises(FeedError, match="does not exist"):
        load_feeds(tmp_path / "missing", model)
    (tmp_path / "x.txt").write_text("?")
    with pytest.raises(FeedError, match="neither"):
        load_feeds(tmp_path / "x.txt", model)
    write_image(tmp_path / "mixed.png", (0, 0, 0))
    with pytest.raises(FeedError, match="one kind"):
        load_feeds(tmp_path, model)


def test_concrete_shapes_take_the_image_size_of_the_preprocess():
    from graphslim.feeds import Preprocess, concrete_shapes

    model = conv_model(["batch", 3, "height", "width"])
    shapes, note = concrete_shapes(model, preprocess=Preprocess.parse("resize=48x192"))
    assert shapes == {"x": (1, 3, 48, 192)} and note is None
