"""Augmentation with albumentations on the uint8 image, before preprocessing.

albumentations is the field's augmentation library (fast OpenCV kernels on uint8 images,
bbox-aware); it is an optional extra (``pip install 'onnx-graphslim[aug]'``), imported on
first use only, and asking for it without it installed is one
:class:`~graphslim.bridge.TorchMissing` line with the install command.

The names of ``FinetuneOptions.augment`` map onto albumentations transforms (each drawn
independently per sample):

* ``flip``: ``HorizontalFlip`` (p 0.5);
* ``crop``: ``RandomCropFromBorders`` (up to 15% off each side, p 0.5; the preprocessing
  resizes the crop to the network size afterwards);
* ``scale``: ``Affine`` scale 0.75..1.25 and translation up to 10% (p 0.5, edge pixels
  replicated at the border);
* ``rotate``: ``Affine`` rotation within +-10 degrees (p 0.5, border replicated);
* ``color``: ``HueSaturationValue`` (hue +-10, saturation +-30, value +-20) and
  ``RandomBrightnessContrast`` (+-0.2 each), p 0.5 each;
* ``blur``: one of ``GaussianBlur`` (3..5) or ``MotionBlur`` (3..5), p 0.3.

Every sample's draw is seeded by ``(seed, epoch, sample index)`` (one seed per transform,
:meth:`ImageAugment.draw_seeds`), so a run is repeatable and independent of batching, worker
processes and data-parallel splits. The teacher sees exactly what the student sees: the
augmented image is preprocessed once and both models get that same tensor.
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np

from graphslim.bridge import TorchMissing

AUG_HINT = "pip install 'onnx-graphslim[aug]' (or: pip install albumentations)"
NAMES = ("flip", "crop", "scale", "rotate", "color", "blur")


def require_albumentations():
    """Import and return ``albumentations``; raise :class:`TorchMissing` with the install line."""
    try:
        import albumentations
    except ImportError as exc:
        raise TorchMissing(
            f"augmentation with albumentations was asked for, but it is not installed; {AUG_HINT}"
        ) from exc
    return albumentations


def build(names: Sequence[str]):
    """The ``albumentations.Compose`` of ``names`` (the module doc's table, in that order)."""
    import cv2

    A = require_albumentations()
    steps = {
        "flip": lambda: [A.HorizontalFlip(p=0.5)],
        "crop": lambda: [
            A.RandomCropFromBorders(
                crop_left=0.15, crop_right=0.15, crop_top=0.15, crop_bottom=0.15, p=0.5
            )
        ],
        "scale": lambda: [
            A.Affine(
                scale=(0.75, 1.25),
                translate_percent=(-0.1, 0.1),
                border_mode=cv2.BORDER_REPLICATE,
                p=0.5,
            )
        ],  # fmt: skip
        "rotate": lambda: [A.Affine(rotate=(-10, 10), border_mode=cv2.BORDER_REPLICATE, p=0.5)],
        "color": lambda: [
            A.HueSaturationValue(hue_shift_limit=10, sat_shift_limit=30, val_shift_limit=20, p=0.5),
            A.RandomBrightnessContrast(brightness_limit=0.2, contrast_limit=0.2, p=0.5),
        ],
        "blur": lambda: [
            A.OneOf([A.GaussianBlur(blur_limit=(3, 5)), A.MotionBlur(blur_limit=(3, 5))], p=0.3)
        ],
    }
    unknown = [n for n in names if n not in steps]
    if unknown:
        from graphslim.bridge import BridgeError

        raise BridgeError(f"augmentation '{unknown[0]}' is not one of {', '.join(NAMES)}")
    transforms = [t for n in NAMES if n in names for t in steps[n]()]
    return A.Compose(transforms)


class ImageAugment:
    """``augment(image, key)``: the uint8 ``H x W x 3`` RGB ``image`` augmented with the draw
    seeded by ``key = (epoch, index)`` and this object's ``seed``. Picklable (the transform is
    rebuilt in each DataLoader worker), so it travels to worker processes."""

    def __init__(self, names: Sequence[str], seed: int = 0) -> None:
        self.names, self.seed = tuple(names), int(seed)
        self._compose = build(self.names)  # fails here, in the parent, when not installed

    def __getstate__(self) -> dict:
        return {"names": self.names, "seed": self.seed}

    def __setstate__(self, state: dict) -> None:
        self.names, self.seed = state["names"], state["seed"]
        self._compose = build(self.names)

    def draw_seeds(self, epoch: int, index: int) -> list[int]:
        """32-bit seeds of one sample's draw, one per transform (numpy's SeedSequence of
        ``(seed, epoch, index)``): ``Compose.set_random_seed`` alone hands every transform
        the same seed, and then transforms with the same ``p`` fire all together or not at
        all."""
        n = len(self._compose.transforms) + 1
        state = np.random.SeedSequence((self.seed, int(epoch), int(index))).generate_state(n)
        return [int(s) for s in state]

    def __call__(self, image: np.ndarray, epoch: int, index: int) -> np.ndarray:
        if not self.names:
            return image
        first, *rest = self.draw_seeds(epoch, index)
        self._compose.set_random_seed(first)
        for transform, s in zip(self._compose.transforms, rest):
            transform.set_random_seed(s)
        return self._compose(image=np.ascontiguousarray(image))["image"]
