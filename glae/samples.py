"""Sample photos that need no download, for the demo and for trying ``glae predict``.

scikit-image ships two photos of people: the astronaut Eileen Collins (``astronaut``) and
the "cameraman" (``camera``, grayscale). A third photo is a composite built here: both
faces on one canvas, one of them rotated, so detection, alignment and several faces per
photo are exercised too.

Usage: ``python -m glae.samples OUT_DIR``
"""

from __future__ import annotations

import argparse
from pathlib import Path

from PIL import Image


def sample_photos() -> dict[str, Image.Image]:
    """``{file name: image}`` of the sample photos (needs scikit-image, a test extra)."""
    from skimage import data

    astronaut = Image.fromarray(data.astronaut())
    camera = Image.fromarray(data.camera()).convert("RGB")
    canvas = Image.new("RGB", (900, 520), (235, 235, 235))
    canvas.paste(astronaut.crop((96, 0, 352, 256)).resize((320, 320)), (40, 100))
    canvas.paste(camera.crop((160, 20, 416, 276)).resize((320, 320)).rotate(15, fillcolor=(235, 235, 235)), (500, 60))
    return {"astronaut.jpg": astronaut, "cameraman.png": camera, "composite.jpg": canvas}


def write_sample_photos(folder: str | Path) -> list[Path]:
    folder = Path(folder)
    folder.mkdir(parents=True, exist_ok=True)
    paths = []
    for name, image in sample_photos().items():
        image.save(folder / name)
        paths.append(folder / name)
    return paths


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("folder")
    for path in write_sample_photos(parser.parse_args().folder):
        print(path)


if __name__ == "__main__":
    main()
