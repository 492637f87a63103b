"""GLAE: general and long-tailed facial age estimation.

An image goes: ``glae.data.images.read_rgb`` (decode) -> ``glae.data.transforms``
(resize, normalize) -> ``glae.models.AgeModel`` (backbone, Feature Rearrangement,
Pixel-level Auxiliary heads) -> ``glae.routing.route`` (Adaptive Routing between the
vanilla and balanced head) -> ``glae.losses.expected_age`` (the predicted age).
"""

__version__ = "0.1.0"
