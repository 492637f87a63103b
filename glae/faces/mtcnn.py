"""MTCNN (Zhang et al. 2016, the paper's ref. [57]): face boxes and five landmarks.

Three small networks run as a cascade: P-Net scans an image pyramid and proposes
12x12 windows, R-Net rejects most of them on 24x24 crops, O-Net refines the survivors
on 48x48 crops and places the five points (eye centres, nose tip, mouth corners).

The code is GLAE's own; the trained weights are the plain state dicts that the
facenet-pytorch wheel (MIT) ships as ``facenet_pytorch/data/{pnet,rnet,onet}.pt``. Its
metadata pins torch<2.3, so it is installed with ``pip install --no-deps`` (see
scripts/env.sh) and never imported: only its three files are read, with
``torch.load(weights_only=True)``, which cannot run code.
"""

from __future__ import annotations

import importlib.util
import math
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F
from PIL import Image
from torch import Tensor, nn
from torchvision.ops import nms, roi_align

from .detector import DetectedFace, largest_first

WEIGHTS_PACKAGE = "facenet_pytorch"
WEIGHTS_PIP = "pip install --no-deps facenet-pytorch==2.6.0"


class MTCNNWeightsError(FileNotFoundError):
    """The MTCNN weight files are not installed; the message says how to install them."""


def default_weights_dir() -> Path:
    """``facenet_pytorch/data`` of the installed wheel, found without importing the package."""
    spec = importlib.util.find_spec(WEIGHTS_PACKAGE)
    if spec is None or not spec.submodule_search_locations:
        raise MTCNNWeightsError(f"the MTCNN face detector weights are not installed; run: {WEIGHTS_PIP}")
    return Path(next(iter(spec.submodule_search_locations))) / "data"


def _normalize(pixels: Tensor) -> Tensor:
    """MTCNN's input scaling of 0..255 pixels: (x - 127.5) / 128."""
    return (pixels - 127.5) * 0.0078125


def _flatten_transposed(features: Tensor) -> Tensor:
    """Flatten ``[B, C, H, W]`` in (W, H, C) order, the layout the ported Caffe weights expect."""
    return features.permute(0, 3, 2, 1).flatten(1)


class PNet(nn.Module):
    """Fully convolutional proposal net: ``[B, 3, H, W]`` -> face probability and box offsets per cell."""

    def __init__(self) -> None:
        super().__init__()
        self.conv1, self.prelu1 = nn.Conv2d(3, 10, 3), nn.PReLU(10)
        self.pool1 = nn.MaxPool2d(2, 2, ceil_mode=True)
        self.conv2, self.prelu2 = nn.Conv2d(10, 16, 3), nn.PReLU(16)
        self.conv3, self.prelu3 = nn.Conv2d(16, 32, 3), nn.PReLU(32)
        self.conv4_1 = nn.Conv2d(32, 2, 1)
        self.conv4_2 = nn.Conv2d(32, 4, 1)

    def forward(self, x: Tensor) -> tuple[Tensor, Tensor]:
        """Returns ``([B, H', W'] face probability, [B, 4, H', W'] offsets)``; one cell per 2 px."""
        x = self.pool1(self.prelu1(self.conv1(x)))
        x = self.prelu3(self.conv3(self.prelu2(self.conv2(x))))
        return self.conv4_1(x).softmax(1)[:, 1], self.conv4_2(x)


class RNet(nn.Module):
    """Refinement net on 24x24 crops: ``[N, 3, 24, 24]`` -> (``[N]`` probability, ``[N, 4]`` offsets)."""

    def __init__(self) -> None:
        super().__init__()
        self.conv1, self.prelu1 = nn.Conv2d(3, 28, 3), nn.PReLU(28)
        self.pool1 = nn.MaxPool2d(3, 2, ceil_mode=True)
        self.conv2, self.prelu2 = nn.Conv2d(28, 48, 3), nn.PReLU(48)
        self.pool2 = nn.MaxPool2d(3, 2, ceil_mode=True)
        self.conv3, self.prelu3 = nn.Conv2d(48, 64, 2), nn.PReLU(64)
        self.dense4, self.prelu4 = nn.Linear(576, 128), nn.PReLU(128)
        self.dense5_1 = nn.Linear(128, 2)
        self.dense5_2 = nn.Linear(128, 4)

    def forward(self, x: Tensor) -> tuple[Tensor, Tensor]:
        x = self.pool1(self.prelu1(self.conv1(x)))
        x = self.pool2(self.prelu2(self.conv2(x)))
        x = self.prelu4(self.dense4(_flatten_transposed(self.prelu3(self.conv3(x)))))
        return self.dense5_1(x).softmax(1)[:, 1], self.dense5_2(x)


class ONet(nn.Module):
    """Output net on 48x48 crops: probability ``[N]``, offsets ``[N, 4]``, landmarks ``[N, 10]`` (5 x then 5 y)."""

    def __init__(self) -> None:
        super().__init__()
        self.conv1, self.prelu1 = nn.Conv2d(3, 32, 3), nn.PReLU(32)
        self.pool1 = nn.MaxPool2d(3, 2, ceil_mode=True)
        self.conv2, self.prelu2 = nn.Conv2d(32, 64, 3), nn.PReLU(64)
        self.pool2 = nn.MaxPool2d(3, 2, ceil_mode=True)
        self.conv3, self.prelu3 = nn.Conv2d(64, 64, 3), nn.PReLU(64)
        self.pool3 = nn.MaxPool2d(2, 2, ceil_mode=True)
        self.conv4, self.prelu4 = nn.Conv2d(64, 128, 2), nn.PReLU(128)
        self.dense5, self.prelu5 = nn.Linear(1152, 256), nn.PReLU(256)
        self.dense6_1 = nn.Linear(256, 2)
        self.dense6_2 = nn.Linear(256, 4)
        self.dense6_3 = nn.Linear(256, 10)

    def forward(self, x: Tensor) -> tuple[Tensor, Tensor, Tensor]:
        x = self.pool1(self.prelu1(self.conv1(x)))
        x = self.pool2(self.prelu2(self.conv2(x)))
        x = self.pool3(self.prelu3(self.conv3(x)))
        x = self.prelu5(self.dense5(_flatten_transposed(self.prelu4(self.conv4(x)))))
        return self.dense6_1(x).softmax(1)[:, 1], self.dense6_2(x), self.dense6_3(x)


def _load(net: nn.Module, path: Path) -> nn.Module:
    if not path.is_file():
        raise MTCNNWeightsError(f"MTCNN weights {path} not found; run: {WEIGHTS_PIP}")
    net.load_state_dict(torch.load(path, map_location="cpu", weights_only=True))
    return net.eval()


def _regress(boxes: Tensor, offsets: Tensor) -> Tensor:
    """Move each box edge by its predicted offset, in units of the box's width or height."""
    sizes = (boxes[:, 2:4] - boxes[:, 0:2]).repeat(1, 2)
    return boxes + offsets * sizes


def _square(boxes: Tensor) -> Tensor:
    """Grow each box to a square around its centre: the next net's input is square."""
    centres = (boxes[:, 0:2] + boxes[:, 2:4]) / 2
    half = (boxes[:, 2:4] - boxes[:, 0:2]).max(1, keepdim=True).values / 2
    return torch.cat([centres - half, centres + half], 1)


def _nms_min(boxes: Tensor, scores: Tensor, threshold: float) -> Tensor:
    """Greedy NMS on intersection over the *smaller* area: drops boxes nested in a better one."""
    areas = (boxes[:, 2] - boxes[:, 0]) * (boxes[:, 3] - boxes[:, 1])
    order = scores.argsort(descending=True)
    keep = []
    while order.numel():
        best, rest = order[0], order[1:]
        keep.append(best)
        top_left = torch.maximum(boxes[best, :2], boxes[rest, :2])
        bottom_right = torch.minimum(boxes[best, 2:], boxes[rest, 2:])
        inter = (bottom_right - top_left).clamp(min=0).prod(1)
        order = rest[inter / torch.minimum(areas[best], areas[rest]) <= threshold]
    return torch.stack(keep) if keep else torch.zeros(0, dtype=torch.long, device=boxes.device)


class MTCNNDetector:
    """The MTCNN cascade behind the ``FaceDetector`` interface, on the CPU or a GPU.

    Args:
        min_face_size: smallest face side in pixels that the pyramid looks for.
        thresholds: face probability each of P-, R- and O-Net requires.
        scale_factor: ratio between pyramid levels (0.709 = 1/sqrt(2), MTCNN's).
        weights_dir: folder with ``pnet.pt``, ``rnet.pt``, ``onet.pt``; default: the
            installed facenet-pytorch wheel's.
        chunk: crops per R-/O-Net forward pass, to bound memory on crowded images.
        device: where the three nets run ("cpu", "cuda", "cuda:1"...); the faces come back
            on the CPU either way.
    """

    def __init__(
        self,
        min_face_size: int = 20,
        thresholds: tuple[float, float, float] = (0.6, 0.7, 0.7),
        scale_factor: float = 0.709,
        weights_dir: str | Path | None = None,
        chunk: int = 512,
        device: str | torch.device = "cpu",
    ) -> None:
        if min_face_size < 12:
            raise ValueError(f"min_face_size must be at least 12 px (P-Net's window), got {min_face_size}")
        if not 0 < scale_factor < 1:
            raise ValueError(f"scale_factor must be in (0, 1), got {scale_factor}")
        folder = Path(weights_dir) if weights_dir is not None else default_weights_dir()
        self.pnet = _load(PNet(), folder / "pnet.pt")
        self.rnet = _load(RNet(), folder / "rnet.pt")
        self.onet = _load(ONet(), folder / "onet.pt")
        self.device = torch.device(device)
        for net in (self.pnet, self.rnet, self.onet):
            net.to(self.device)
        self.min_face_size = min_face_size
        self.thresholds = thresholds
        self.scale_factor = scale_factor
        self.chunk = chunk

    @torch.no_grad()
    def detect(self, image: Image.Image) -> list[DetectedFace]:
        """Faces in an RGB image, largest first."""
        if image.mode != "RGB":
            raise ValueError(f"MTCNN expects an RGB image, got mode {image.mode!r} (read it with glae.data.images.read_rgb)")
        pixels = torch.from_numpy(np.array(image, dtype=np.float32)).permute(2, 0, 1).to(self.device)
        boxes = self._propose(pixels)
        if len(boxes):
            boxes = self._refine(pixels, boxes)
        if not len(boxes):
            return []
        boxes, scores, landmarks = (tensor.cpu() for tensor in self._output(pixels, boxes))
        faces = [
            DetectedFace((float(box[0]), float(box[1]), float(box[2]), float(box[3])), points.numpy().astype(np.float64), float(score))
            for box, score, points in zip(boxes, scores, landmarks)
        ]
        return largest_first(faces)

    def _propose(self, pixels: Tensor) -> Tensor:
        """P-Net over the pyramid -> ``[N, 4]`` square candidate boxes."""
        height, width = pixels.shape[-2:]
        scale = 12.0 / self.min_face_size
        found_boxes, found_scores = [], []
        while min(height, width) * scale >= 12:
            size = (math.ceil(height * scale), math.ceil(width * scale))
            level = F.interpolate(pixels[None], size=size, mode="area")
            probs, offsets = self.pnet(_normalize(level))
            ys, xs = torch.nonzero(probs[0] >= self.thresholds[0], as_tuple=True)
            if len(ys):
                # Each P-Net cell sees a 12x12 window every 2 pixels of the scaled image.
                corners = torch.stack([xs, ys], 1).float() * 2
                boxes = torch.cat([corners, corners + 12], 1) / scale
                boxes = _regress(boxes, offsets[0, :, ys, xs].T)
                scores = probs[0, ys, xs]
                keep = nms(boxes, scores, 0.5)
                found_boxes.append(boxes[keep])
                found_scores.append(scores[keep])
            scale *= self.scale_factor
        if not found_boxes:
            return torch.zeros(0, 4, device=pixels.device)
        boxes, scores = torch.cat(found_boxes), torch.cat(found_scores)
        return _square(boxes[nms(boxes, scores, 0.7)])

    def _crops(self, pixels: Tensor, boxes: Tensor, size: int) -> Tensor:
        """``[N, 3, size, size]`` normalized crops; outside the image is black, as MTCNN was trained."""
        return torch.cat(
            [
                _normalize(roi_align(pixels[None], [part], output_size=size, aligned=True))
                for part in boxes.split(self.chunk)
            ]
        )

    def _refine(self, pixels: Tensor, boxes: Tensor) -> Tensor:
        """R-Net: drop non-faces among the candidates and correct the rest."""
        probs, offsets = self.rnet(self._crops(pixels, boxes, 24))
        keep = probs >= self.thresholds[1]
        boxes, probs, offsets = boxes[keep], probs[keep], offsets[keep]
        kept = nms(boxes, probs, 0.7)
        return _square(_regress(boxes[kept], offsets[kept]))

    def _output(self, pixels: Tensor, boxes: Tensor) -> tuple[Tensor, Tensor, Tensor]:
        """O-Net: final boxes ``[M, 4]``, scores ``[M]`` and landmarks ``[M, 5, 2]``."""
        probs, offsets, points = self.onet(self._crops(pixels, boxes, 48))
        keep = probs >= self.thresholds[2]
        boxes, probs, offsets, points = boxes[keep], probs[keep], offsets[keep], points[keep]
        sizes = boxes[:, 2:4] - boxes[:, 0:2]
        landmarks = torch.stack([points[:, :5], points[:, 5:]], 2) * sizes[:, None] + boxes[:, None, 0:2]
        boxes = _regress(boxes, offsets)
        kept = _nms_min(boxes, probs, 0.7)
        return boxes[kept], probs[kept], landmarks[kept]
