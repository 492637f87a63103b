"""Faces in photos: detection with five landmarks, and alignment onto the training framing."""

from glae.faces.align import ALIGNED_SIZE, DEFAULT_MARGIN, align_face, reference_points, similarity_transform
from glae.faces.detector import LANDMARK_NAMES, DetectedFace, FaceDetector

__all__ = [
    "ALIGNED_SIZE",
    "DEFAULT_MARGIN",
    "LANDMARK_NAMES",
    "DetectedFace",
    "FaceDetector",
    "align_face",
    "reference_points",
    "similarity_transform",
]
