"""Generated stand-in faces in UTKFace's layout, for machines without a real dataset.

The demo needs *some* labelled faces to show the pipeline end to end. Each drawing makes
age visible the way a photo would (hair greys, lines appear, the face lengthens), so a
model trained on them learns something real, but they are no substitute for real data.

Usage: ``python -m glae.data.synthetic OUT_DIR --count 400``
"""

from __future__ import annotations

import argparse
import random
from pathlib import Path

from PIL import Image, ImageDraw


def draw_face(age: int, rng: random.Random, size: int = 200) -> Image.Image:
    """One face whose hair colour, wrinkles and proportions depend on ``age`` (1..100)."""
    skin = tuple(int(c) for c in rng.choice([(241, 194, 167), (198, 134, 66), (141, 85, 36), (255, 219, 172)]))
    image = Image.new("RGB", (size, size), tuple(rng.randint(60, 200) for _ in range(3)))
    draw = ImageDraw.Draw(image)
    grey = min(age / 80, 1.0)
    hair = tuple(int(dark * (1 - grey) + 200 * grey) for dark in (60, 40, 20))
    length = 0.55 + 0.15 * min(age, 20) / 20
    top, bottom = size * (0.5 - length / 2), size * (0.5 + length / 2)
    draw.ellipse([size * 0.2, top - 10, size * 0.8, top + 50], fill=hair)
    draw.ellipse([size * 0.25, top, size * 0.75, bottom], fill=skin)
    eye_y = size * 0.45
    eye = max(3, int(9 - age / 15))
    for x in (size * 0.38, size * 0.62):
        draw.ellipse([x - eye, eye_y - eye, x + eye, eye_y + eye], fill=(30, 30, 30))
    for line in range(age // 15):
        y = size * 0.33 + line * 4
        draw.line([size * 0.38, y, size * 0.62, y], fill=(120, 90, 70), width=1)
    draw.arc([size * 0.4, size * 0.6, size * 0.6, size * 0.7], 20, 160, fill=(120, 40, 40), width=3)
    return image


def write_synthetic_utkface(folder: str | Path, count: int, seed: int = 0) -> list[Path]:
    """Write ``count`` faces named ``age_gender_race_datetime.jpg.chip.jpg`` into ``folder``."""
    folder = Path(folder)
    folder.mkdir(parents=True, exist_ok=True)
    rng = random.Random(seed)
    paths = []
    for index in range(count):
        age = min(int(rng.expovariate(1 / 30)) + 1, 100)
        path = folder / f"{age}_{rng.randint(0, 1)}_{rng.randint(0, 4)}_{20170101000000000 + index}.jpg.chip.jpg"
        draw_face(age, rng).save(path, quality=90)
        paths.append(path)
    return paths


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("folder")
    parser.add_argument("--count", type=int, default=400)
    parser.add_argument("--seed", type=int, default=0)
    args = parser.parse_args()
    write_synthetic_utkface(args.folder, args.count, args.seed)


if __name__ == "__main__":
    main()
