"""Labels for fine-tuning: class folders, CSV, .npy, YOLO boxes; every mismatch is one error."""

from __future__ import annotations

import numpy as np
import pytest
from PIL import Image

from graphslim.bridge import BridgeError
from graphslim.bridge.labels import YoloLabels, folder_labels, read_labels, yolo_label_files
from graphslim.feeds import Preprocess


def _image(path, w=40, h=20):
    path.parent.mkdir(parents=True, exist_ok=True)
    Image.new("RGB", (w, h), (120, 60, 30)).save(path)
    return path


def test_class_folders_number_by_integer_name_or_sorted_position(tmp_path):
    files = [_image(tmp_path / "num" / c / f"{i}.png") for c in ("2", "0", "10") for i in range(2)]
    assert folder_labels(tmp_path / "num", files).tolist() == [2, 2, 0, 0, 10, 10]
    named = [_image(tmp_path / "named" / c / "a.png") for c in ("dog", "cat")]
    (tmp_path / "named" / "bird").mkdir()  # an empty class still takes its number
    assert folder_labels(tmp_path / "named", named).tolist() == [2, 1]


def test_an_image_outside_the_class_folders_is_named(tmp_path):
    inside = _image(tmp_path / "root" / "0" / "a.png")
    loose = _image(tmp_path / "root" / "b.png")
    with pytest.raises(BridgeError, match="b.png lies directly in"):
        folder_labels(tmp_path / "root", [inside, loose])
    with pytest.raises(BridgeError, match="not under the class-folder root"):
        folder_labels(tmp_path / "root" / "0", [_image(tmp_path / "elsewhere" / "c.png")])


def test_csv_with_header_and_class_names_and_a_missing_row(tmp_path):
    files = [_image(tmp_path / f"{n}.png") for n in ("a", "b", "c")]
    csv = tmp_path / "labels.csv"
    csv.write_text("file,label\na.png,cat\nb.png,dog\nc.png,cat\n")
    assert read_labels(csv, files).tolist() == [0, 1, 0]
    csv.write_text("a.png,1\nc.png,0\n")
    with pytest.raises(BridgeError, match=r"no label for image b.png \(1 of 3 unlabeled\)"):
        read_labels(csv, files)


def test_npy_and_line_labels_must_count_the_images(tmp_path):
    files = [_image(tmp_path / f"{i}.png") for i in range(3)]
    np.save(tmp_path / "y.npy", np.array([0, 1]))
    with pytest.raises(BridgeError, match="2 labels for 3 images"):
        read_labels(tmp_path / "y.npy", files)
    (tmp_path / "y.txt").write_text("1\n0\n1\n")
    assert read_labels(tmp_path / "y.txt", files).tolist() == [1, 0, 1]


def test_yolo_boxes_come_back_in_network_input_pixels(tmp_path):
    image = _image(tmp_path / "img" / "a.png", w=80, h=40)
    (tmp_path / "lbl").mkdir()
    # one box centred at (20, 10) in the 80x40 image, 16 x 8 pixels, class 1
    (tmp_path / "lbl" / "a.txt").write_text("1 0.25 0.25 0.2 0.2\n")
    txt = yolo_label_files(tmp_path / "lbl", [image])
    labels = YoloLabels(txt, [image], Preprocess.parse("yolo"), (64, 64))
    (d,) = labels.all()
    # letterbox 80x40 -> 64x64: ratio 0.8, 64x32 placed at top 16
    np.testing.assert_allclose(d.boxes, [[(20 - 8) * 0.8, 16 + 6 * 0.8, 28 * 0.8, 16 + 14 * 0.8]])
    assert d.classes.tolist() == [1] and len(labels[np.array([0])]) == 1


def test_yolo_label_files_that_match_no_image_are_refused(tmp_path):
    image = _image(tmp_path / "img" / "a.png")
    (tmp_path / "lbl").mkdir()
    (tmp_path / "lbl" / "zzz.txt").write_text("0 0.5 0.5 0.1 0.1\n")
    with pytest.raises(BridgeError, match="zzz.txt matches no image"):
        yolo_label_files(tmp_path / "lbl", [image])
    (tmp_path / "lbl" / "zzz.txt").unlink()
    with pytest.raises(BridgeError, match="no YOLO .txt label matches"):
        yolo_label_files(tmp_path / "lbl", [image])


def test_a_limited_image_set_accepts_the_labels_of_the_images_it_left_out(tmp_path):
    from bridge_helpers import fixture_model

    from graphslim.bridge.data import ImageFolderDataset

    for stem in ("a", "b", "c"):
        _image(tmp_path / "img" / f"{stem}.png")
    (tmp_path / "lbl").mkdir()
    for stem in ("a", "b", "c"):
        (tmp_path / "lbl" / f"{stem}.txt").write_text("0 0.5 0.5 0.2 0.2\n")
    model = fixture_model("tiny_yolo")
    ds = ImageFolderDataset(tmp_path / "img", model, Preprocess.parse("yolo"), limit=2)
    labels = YoloLabels.for_dataset(tmp_path / "lbl", ds)  # c.txt is c.png's, not a stray
    assert len(labels) == 2 and [p.stem for p in labels.images] == ["a", "b"]
    (tmp_path / "lbl" / "zzz.txt").write_text("0 0.5 0.5 0.1 0.1\n")
    with pytest.raises(BridgeError, match="zzz.txt matches no image"):
        YoloLabels.for_dataset(tmp_path / "lbl", ds)
