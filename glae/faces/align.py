"""Five-point similarity alignment: warp a detected face onto a fixed template.

GLAE's models learn from UTKFace's aligned 200x200 crops, so a photo's face must be cut
the same way or the model sees a framing it never learned. The template is therefore
UTKFace's own: the mean MTCNN points over 198 UTKFace crops (every 90th file), averaged
with their mirror image so the template is left-right symmetric. (InsightFace's ArcFace
112x112 template, the usual target for MTCNN points, is framed tighter and has
other proportions: eye-to-mouth over eye distance 1.15 against UTKFace's 1.02.)
``margin`` adds context on every side, as a fraction of the face framing, for models
trained on looser crops.
"""

from __future__ import annotations

import numpy as np
from PIL import Image

# (x, y) as fractions of the crop side, in LANDMARK_NAMES order; measured as described above.
UTKFACE_TEMPLATE = np.array(
    [
        [0.3035, 0.2894],
        [0.6965, 0.2894],
        [0.5000, 0.5225],
        [0.3287, 0.6945],
        [0.6713, 0.6945],
    ]
)
ALIGNED_SIZE = 224  # the paper's input side
MAX_ALIGNED_SIZE = 2048  # 4x the largest model input GLAE builds; a typo must not allocate gigabytes per crop
DEFAULT_MARGIN = 0.0  # exactly UTKFace's framing
MAX_MARGIN = 2.0  # a crop five times the face framing's side: little face is left to see


def reference_points(size: int = ALIGNED_SIZE, margin: float = DEFAULT_MARGIN) -> np.ndarray:
    """``[5, 2]`` template in a ``size`` crop, with ``margin`` x the framing added on every side."""
    if not 8 <= size <= MAX_ALIGNED_SIZE:
        raise ValueError(f"aligned crop size (--size) must be in 8..{MAX_ALIGNED_SIZE} px, got {size}")
    if not 0 <= margin <= MAX_MARGIN:
        raise ValueError(f"margin must be in [0, {MAX_MARGIN:g}], got {margin}")
    return (UTKFACE_TEMPLATE + margin) / (1 + 2 * margin) * size


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

    Pixels outside the photo are black. The warp reads 2x2 photo pixels per crop pixel, so a
    face at least twice the crop's size is first shrunk by whole-pixel box averaging: the model
    learned from crops shrunk with antialiasing, not from the aliased texture of a phone photo.
    """
    # PIL maps each output pixel back into the input, so solve template -> photo directly.
    inverse = similarity_transform(reference_points(size, margin), landmarks)
    shrink = int(np.sqrt(abs(np.linalg.det(inverse[:, :2]))))  # photo pixels per crop pixel, rounded down
    if shrink >= 2:  # Image.reduce maps photo coordinate x to x / shrink exactly, so the warp divides by it
        image, inverse = image.reduce(shrink), inverse / shrink
    return image.transform((size, size), Image.Transform.AFFINE, inverse.ravel().tolist(), Image.Resampling.BILINEAR)

