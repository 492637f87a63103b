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
from collections.abc import Callable, Sequence
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F
from PIL import Image
from torch import Tensor, nn
from torchvision.ops import batched_nms, roi_align

from .detector import MAX_BATCH_PIXELS, DetectedFace, largest_first

WEIGHTS_PACKAGE = "facenet_pytorch"
WEIGHTS_PIP = "pip install --no-deps facenet-pytorch==2.6.0"
# Pyramid-level pixels per P-Net pass: small levels of many photos share a pass (fewer,
# larger calls), large ones go alone; on the CPU, stacking 4 levels of a 640x480 photo's
# first scale (1.8 M pixels) ran slower per photo than one at a time (cache), 0.5 M did not.
PNET_PIXELS_PER_PASS = 2**19
# Candidate boxes for R-Net and O-Net in place of P-Net's pyramid: RGB photos of one size ->
# ``[N, 4]`` boxes in image pixels, ``[N]`` scores, ``[N]`` the photo of each box.
Proposer = Callable[[Sequence[Image.Image]], tuple[Tensor, Tensor, Tensor]]


class MTCNNWeightsError(FileNotFoundError):
    """The MTCNN weight files are missing or damaged; the message says how to reinstall them."""


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


def _widen(photos: Tensor) -> Tensor:
    """``[B, H, W, 3]`` bytes -> ``[B, 3, H, W]`` contiguous floats (roi_align would copy a
    channels-last batch at each call). Reordered as bytes, then widened: 1.6x faster than
    the other way round on the CPU."""
    return photos.permute(0, 3, 1, 2).contiguous().float()


def _crops(pixels: Tensor, boxes: Tensor, owners: Tensor, size: int) -> Tensor:
    """Normalized ``size`` x ``size`` crops of ``boxes`` (``owners``: their image), channels-last.

    Outside the image is black, as MTCNN was trained. ``pixels`` is either the ``[B, 3, H, W]``
    float photos, or the ``[B, H, W, 3]`` bytes: then each box's surroundings alone are
    widened to float, which pays for a few boxes per photo (BlazeFace's proposals, not
    P-Net's hundreds). Both give the same crops: ``roi_align`` samples inside the box, and a
    region cut 2 px beyond it, or at the image's own edge, holds every pixel it reads.
    """
    if pixels.dtype != torch.uint8:
        rois = torch.cat([owners[:, None].to(boxes.dtype), boxes], 1)
        crops = roi_align(pixels, rois, output_size=size, aligned=True)
    else:
        height, width = pixels.shape[1:3]
        parts = []
        for (x1, y1, x2, y2), owner in zip(boxes.tolist(), owners.tolist()):
            left, top = min(width, max(0, math.floor(x1) - 2)), min(height, max(0, math.floor(y1) - 2))
            right, bottom = max(left, min(width, math.ceil(x2) + 3)), max(top, min(height, math.ceil(y2) + 3))
            if right == left or bottom == top:  # wholly outside the image
                parts.append(torch.zeros(1, 3, size, size, device=pixels.device))
                continue
            region = pixels[owner, top:bottom, left:right].permute(2, 0, 1).float()[None]
            roi = torch.tensor([[0.0, x1 - left, y1 - top, x2 - left, y2 - top]], device=pixels.device)
            parts.append(roi_align(region, roi, output_size=size, aligned=True))
        crops = torch.cat(parts) if parts else torch.zeros(0, 3, size, size, device=pixels.device)
    return _normalize(crops).contiguous(memory_format=torch.channels_last)


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
    try:
        net.load_state_dict(torch.load(path, map_location="cpu", weights_only=True))
    except Exception as error:  # a cut zip or pickle fails in many ways (EOF, IndexError, Unpickling ...)
        raise MTCNNWeightsError(f"MTCNN weights {path} are damaged ({type(error).__name__}); reinstall: {WEIGHTS_PIP}") from None
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


def _nms_min(boxes: Tensor, scores: Tensor, owners: Tensor, threshold: float) -> Tensor:
    """Greedy NMS on intersection over the *smaller* area, per image: drops boxes nested in a better one.

    ``owners`` ``[N]`` is each box's image; moved apart by image, as ``batched_nms`` does,
    boxes of different images never intersect.
    """
    if not len(boxes):
        return torch.zeros(0, dtype=torch.long, device=boxes.device)
    boxes = boxes + (owners * (boxes.max() - boxes.min() + 1))[:, None]
    areas = (boxes[:, 2] - boxes[:, 0]) * (boxes[:, 3] - boxes[:, 1])
    order = scores.argsort(descending=True)
    keep: list[Tensor] = []
    while order.numel():
        best, rest = order[0], order[1:]
        keep.append(best)
        top_left = torch.maximum(boxes[best, :2], boxes[rest, :2])
        bottom_right = torch.minimum(boxes[best, 2:], boxes[rest, 2:])
        inter = (bottom_right - top_left).clamp(min=0).prod(1)
        order = rest[inter / torch.minimum(areas[best], areas[rest]) <= threshold]
    return torch.stack(keep)


class MTCNNDetector:
    """The MTCNN cascade behind the ``FaceDetector`` interface, on the CPU or a GPU, one image or many.

    ``detect_batch`` runs photos of one size through each P-Net pyramid level together and
    the candidates of all of them through R-Net and O-Net together; ``detect`` is a batch of one.

    Args:
        min_face_size: smallest face side in pixels that the pyramid looks for: its first
            level shrinks the image by ``12 / min_face_size``, so P-Net's 12 px window spans
            that many pixels. 20 finds faces down to the 16 px boxes that ``FaceFilter``
            keeps by default (recall 0.98 on faces pasted at 24 px, ``docs/face_filter.md``).
            The first level is half of the pyramid's pixels, which grow as
            ``(1 / min_face_size)^2``: 16 would cost 1.56x.
        thresholds: face probability each of P-, R- and O-Net requires.
        scale_factor: ratio between pyramid levels (0.709 = 1/sqrt(2), MTCNN's).
        weights_dir: folder with ``pnet.pt``, ``rnet.pt``, ``onet.pt``; default: the
            installed facenet-pytorch wheel's.
        chunk: crops per R-/O-Net forward pass, to bound memory on crowded images.
        device: where the three nets run ("cpu", "cuda", "cuda:1"...); the faces come back
            on the CPU either way.
        proposer: where R-Net's candidates come from; default: P-Net over the pyramid.
            ``glae.faces.blazeface.BlazeFace`` proposes from one pass over a small copy of
            the photo. A photo where its candidates yield no face goes through the pyramid.
    """

    def __init__(
        self,
        min_face_size: int = 20,
        thresholds: tuple[float, float, float] = (0.6, 0.7, 0.7),
        scale_factor: float = 0.709,
        weights_dir: str | Path | None = None,
        chunk: int = 512,
        device: str | torch.device = "cpu",
        proposer: Proposer | None = None,
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
            # Channels-last: on the CPU, P-Net's 3-channel first convolution runs 6x faster,
            # its max pooling 3.5x, R-Net 1.8x, O-Net 3.7x; the same results up to rounding.
            net.to(self.device).to(memory_format=torch.channels_last)
        self.min_face_size = min_face_size
        self.thresholds = thresholds
        self.scale_factor = scale_factor
        self.chunk = chunk
        self.proposer = proposer

    def detect(self, image: Image.Image) -> list[DetectedFace]:
        """Faces in an RGB image, largest first."""
        return self.detect_batch([image])[0]

    @torch.no_grad()
    def detect_batch(self, images: Sequence[Image.Image]) -> list[list[DetectedFace]]:
        """The faces of each RGB image, largest first: ``detect`` of each, in fewer, larger passes.

        Images of one size are stacked, as many at a time as reach ``MAX_BATCH_PIXELS``
        pixels (the batches ``AgeEstimator`` cuts).
        """
        for image in images:
            if image.mode != "RGB":
                raise ValueError(f"MTCNN expects an RGB image, got mode {image.mode!r} (read it with glae.data.images.read_rgb)")
        found: list[list[DetectedFace]] = [[] for _ in images]
        by_size: dict[tuple[int, int], list[int]] = {}
        for index, image in enumerate(images):
            by_size.setdefault(image.size, []).append(index)
        for (width, height), indices in by_size.items():
            per_batch = math.ceil(MAX_BATCH_PIXELS / (width * height))
            for start in range(0, len(indices), per_batch):
                part = indices[start : start + per_batch]
                photos = torch.from_numpy(np.stack([np.asarray(images[index]) for index in part])).to(self.device)
                if self.proposer is None:
                    pixels = _widen(photos)
                    faces = self._cascade(pixels, *self._propose(pixels))
                else:
                    boxes, _, owners = self.proposer([images[index] for index in part])
                    # R-Net and O-Net read the few proposals from the bytes: the photos are
                    # never widened to float as a whole (that alone took 2-4 ms a photo).
                    faces = self._cascade(photos, _square(boxes.to(self.device)), owners.to(self.device))
                    # Photos with no face from the proposer's candidates get the pyramid.
                    missed = [k for k, image_faces in enumerate(faces) if not image_faces]
                    if missed:
                        pixels = _widen(photos[missed])
                        for k, image_faces in zip(missed, self._cascade(pixels, *self._propose(pixels))):
                            faces[k] = image_faces
                for index, image_faces in zip(part, faces):
                    found[index] = image_faces
        return found

    def _cascade(self, pixels: Tensor, boxes: Tensor, owners: Tensor) -> list[list[DetectedFace]]:
        """R-Net and O-Net on the candidate ``boxes`` (``owners``: their image) -> the faces of each image.

        ``pixels``: the photos as ``[B, 3, H, W]`` floats or ``[B, H, W, 3]`` bytes (``_crops``).
        """
        if len(boxes):
            boxes, owners = self._refine(pixels, boxes, owners)
        faces: list[list[DetectedFace]] = [[] for _ in range(len(pixels))]
        if not len(boxes):
            return faces
        boxes, scores, landmarks, owners = (tensor.cpu() for tensor in self._output(pixels, boxes, owners))
        for box, score, points, owner in zip(boxes.tolist(), scores.tolist(), landmarks.double().numpy(), owners.tolist()):
            faces[owner].append(DetectedFace((box[0], box[1], box[2], box[3]), points, score))
        return [largest_first(image_faces) for image_faces in faces]

    def _propose(self, pixels: Tensor) -> tuple[Tensor, Tensor]:
        """P-Net over the pyramid -> ``[N, 4]`` square candidate boxes and ``[N]`` their image."""
        height, width = pixels.shape[-2:]
        scale = 12.0 / self.min_face_size
        found_boxes, found_scores, found_owners = [], [], []
        while min(height, width) * scale >= 12:
            size = (math.ceil(height * scale), math.ceil(width * scale))
            per_pass = max(1, PNET_PIXELS_PER_PASS // (size[0] * size[1]))
            for start in range(0, len(pixels), per_pass):
                level = F.interpolate(pixels[start : start + per_pass], size=size, mode="area")
                probs, offsets = self.pnet(_normalize(level).contiguous(memory_format=torch.channels_last))
                images, ys, xs = torch.nonzero(probs >= self.thresholds[0], as_tuple=True)
                # Each P-Net cell sees a 12x12 window every 2 pixels of the scaled image.
                corners = torch.stack([xs, ys], 1).float() * 2
                boxes = _regress(torch.cat([corners, corners + 12], 1) / scale, offsets[images, :, ys, xs])
                scores, owners = probs[images, ys, xs], images + start
                keep = batched_nms(boxes, scores, owners, 0.5)
                found_boxes.append(boxes[keep])
                found_scores.append(scores[keep])
                found_owners.append(owners[keep])
            scale *= self.scale_factor
        if not found_boxes:
            return torch.zeros(0, 4, device=pixels.device), torch.zeros(0, dtype=torch.long, device=pixels.device)
        boxes, scores, owners = torch.cat(found_boxes), torch.cat(found_scores), torch.cat(found_owners)
        keep = batched_nms(boxes, scores, owners, 0.7)
        return _square(boxes[keep]), owners[keep]

    def _run_on_crops(self, net: nn.Module, pixels: Tensor, boxes: Tensor, owners: Tensor, size: int) -> list[Tensor]:
        """``net`` on ``size`` x ``size`` crops of the boxes, ``chunk`` at a time."""
        outputs = [net(_crops(pixels, part_boxes, part_owners, size)) for part_boxes, part_owners in zip(boxes.split(self.chunk), owners.split(self.chunk))]
        return [torch.cat(parts) for parts in zip(*outputs)]

    def _refine(self, pixels: Tensor, boxes: Tensor, owners: Tensor) -> tuple[Tensor, Tensor]:
        """R-Net: drop non-faces among the candidates and correct the rest."""
        probs, offsets = self._run_on_crops(self.rnet, pixels, boxes, owners, 24)
        keep = probs >= self.thresholds[1]
        boxes, probs, offsets, owners = boxes[keep], probs[keep], offsets[keep], owners[keep]
        kept = batched_nms(boxes, probs, owners, 0.7)
        return _square(_regress(boxes[kept], offsets[kept])), owners[kept]

    def _output(self, pixels: Tensor, boxes: Tensor, owners: Tensor) -> tuple[Tensor, Tensor, Tensor, Tensor]:
        """O-Net: final boxes ``[M, 4]``, scores ``[M]``, landmarks ``[M, 5, 2]`` and their image ``[M]``."""
        probs, offsets, points = self._run_on_crops(self.onet, pixels, boxes, owners, 48)
        keep = probs >= self.thresholds[2]
        boxes, probs, offsets, points, owners = boxes[keep], probs[keep], offsets[keep], points[keep], owners[keep]
        sizes = boxes[:, 2:4] - boxes[:, 0:2]
        landmarks = torch.stack([points[:, :5], points[:, 5:]], 2) * sizes[:, None] + boxes[:, None, 0:2]
        boxes = _regress(boxes, offsets)
        kept = _nms_min(boxes, probs, owners, 0.7)
        return boxes[kept], probs[kept], landmarks[kept], owners[kept]
