"""Five-point similarity alignment: warp a detected face onto a fixed template.

The template is InsightFace's ArcFace 112x112 five points (eye centres, nose tip, mouth
corners), the standard target for MTCNN landmarks, widened by ``margin`` on every side
and scaled to the crop size. The default margin makes crops framed like UTKFace's aligned
crops, which GLAE's models are trained on (measured in tests/test_align.py: MTCNN points
found on UTKFace crops land within a few percent of the crop side of this template).
"""

from __future__ import annotations

import numpy as np
from PIL import Image

from .detector import DetectedFace

# InsightFace's ArcFace template in a 112x112 crop, (x, y) in LANDMARK_NAMES order.
ARCFACE_TEMPLATE_112 = np.array(
    [
        [38.2946, 51.6963],
        [73.5318, 51.5014],
        [56.0252, 71.7366],
        [41.5493, 92.3655],
        [70.7299, 92.2041],
    ]
)
ALIGNED_SIZE = 224  # the paper's input side
DEFAULT_MARGIN = 0.35  # fits UTKFace's framing (see the module docstring)


def reference_points(size: int = ALIGNED_SIZE, margin: float = DEFAULT_MARGIN) -> np.ndarray:
    """``[5, 2]`` template in a ``size`` crop with ``margin`` x the ArcFace crop side added on every side."""
    if size < 8:
        raise ValueError(f"aligned crop size must be at least 8 px, got {size}")
    if margin < 0:
        raise ValueError(f"margin must be >= 0, got {margin}")
    return (ARCFACE_TEMPLATE_112 / 112 + margin) / (1 + 2 * margin) * size


def similarity_transform(source: np.ndarray, target: np.ndarray) -> np.ndarray:
    """Least-squares rotation + uniform scale + translation taking ``source`` points to ``target``.

    Umeyama (1991): the closed-form optimum without reflection, so a mirrored landmark set
    is never "fixed" by flipping the face.

    Args:
        source: ``[N, 2]`` points, N >= 2, not all equal.
        target: ``[N, 2]`` points.

    Returns:
        ``[2, 3]`` matrix ``M`` with ``target ≈ M @ [x, y, 1]``.
    """
    source, target = np.asarray(source, np.float64), np.asarray(target, np.float64)
    if source.shape != target.shape or source.ndim != 2 or source.shape[1] != 2 or len(source) < 2:
        raise ValueError(f"expected two [N, 2] point sets with N >= 2, got {source.shape} and {target.shape}")
    source_mean, target_mean = source.mean(0), target.mean(0)
    source_centred, target_centred = source - source_mean, target - target_mean
    spread = (source_centred**2).sum() / len(source)
    if spread < 1e-12:
        raise ValueError("the source points coincide; no similarity transform is defined")
    u, singular, vt = np.linalg.svd(target_centred.T @ source_centred / len(source))
    signs = np.array([1.0, np.sign(np.linalg.det(u) * np.linalg.det(vt)) or 1.0])
    rotation = u @ np.diag(signs) @ vt
    scale = (singular * signs).sum() / spread
    translation = target_mean - scale * rotation @ source_mean
    return np.hstack([scale * rotation, translation[:, None]])


def align_face(
    image: Image.Image, landmarks: np.ndarray, size: int = ALIGNED_SIZE, margin: float = DEFAULT_MARGIN
) -> Image.Image:
    """The ``size`` x ``size`` crop of ``image`` whose five ``landmarks`` land on the template.

    Pixels outside the photo are black. Bilinear resampling, as in training crops.
    """
    # PIL maps each output pixel back into the input, so solve template -> photo directly.
    inverse = similarity_transform(reference_points(size, margin), landmarks)
    return image.transform((size, size), Image.Transform.AFFINE, inverse.ravel().tolist(), Image.Resampling.BILINEAR)


def align_faces(
    image: Image.Image, faces: list[DetectedFace], size: int = ALIGNED_SIZE, margin: float = DEFAULT_MARGIN
) -> list[Image.Image]:
    """One aligned crop per detected face, in the same order."""
    return [align_face(image, face.landmarks, size, margin) for face in faces]
