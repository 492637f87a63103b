"""``glae align``: align every image of a dataset into a folder that loads in the same format.

Each crop keeps its path relative to the dataset folder (UTKFace names, AFAD folders,
the image paths a CSV names), and the dataset's CSV files are copied beside the crops,
so ``load_dataset(DST, format)`` reads the aligned copy exactly as it read the original.
This holds for CSVs whose image paths are relative; an image outside the dataset folder
is reported instead of aligned.

Faces are found as ``glae predict`` finds them: the same detectors (``--detector``) and the
same filter (``--min-face-score``, ``--min-face-size``, with predict's defaults), so a photo
whose only detection is a doubtful one is reported as having no face instead of aligned around it.

Resumable: a crop is written to a temporary file and renamed, so it is either complete
or absent, and a crop that exists is never redone. The settings (source, format, size,
margin, detector and filter) are written to ``DST/align_report.json`` before the first crop,
so a rerun with other settings, or another dataset, is refused instead of mixed in. Problems
never stop the run; each is listed in the report.
"""

from __future__ import annotations

import dataclasses
import json
import multiprocessing
import os
import shutil
from collections import Counter
from dataclasses import dataclass
from pathlib import Path
from typing import Any, cast

import torch
from PIL import Image
from tqdm import tqdm

from ..fileio import atomic_write, atomic_write_text
from ..data.datasets import DatasetError, load_dataset
from ..data.images import DECODE_ERRORS, ImageReadError, read_rgb
from .align import ALIGNED_SIZE, DEFAULT_MARGIN, align_face, reference_points
from .detector import PHOTO_ERRORS, FaceDetector, build_detector, photo_failure
from .filtering import DEFAULT_MIN_FACE_SCORE, DEFAULT_MIN_FACE_SIZE, FaceFilter

REPORT_NAME = "align_report.json"


@dataclass(frozen=True)
class AlignResult:
    """What happened to one image: status is "aligned", "several_faces" (largest kept), "no_face", "unreadable"
    or "failed" (detection or alignment raised on it: landmarks that fix no alignment, too little memory)."""

    source: Path
    status: str
    detail: str | None = None


@dataclass(frozen=True)
class Aligner:
    """Detect, align and write one image. With the detector's name instead of a detector it is
    the picklable recipe a worker process builds its own from."""

    detector: FaceDetector | str
    size: int = ALIGNED_SIZE
    margin: float = DEFAULT_MARGIN
    face_filter: FaceFilter = FaceFilter()

    def __call__(self, task: tuple[Path, Path]) -> AlignResult:
        source, target = task
        try:
            image = read_rgb(source)
        except ImageReadError as error:
            return AlignResult(source, "unreadable", str(error))
        assert not isinstance(self.detector, str), "build the detector first (_run does)"
        try:
            faces = self.face_filter(self.detector.detect(image))
            crop = align_face(image, faces[0].landmarks, self.size, self.margin) if faces else None
        except PHOTO_ERRORS as error:
            reason = photo_failure(error, image)
            if reason is None:
                raise  # a bug, not this photo's fault
            return AlignResult(source, "failed", reason)
        if crop is None:
            return AlignResult(source, "no_face")
        _save_atomically(crop, target)
        if len(faces) > 1:
            return AlignResult(source, "several_faces", f"{len(faces)} faces; aligned the largest")
        return AlignResult(source, "aligned")


# Formats that store an RGB crop whole, with their save options; any other extension (.gif,
# .ico, .xpm ...) gets PNG bytes under its own name, which every reader opens by content.
_CROP_FORMATS: dict[str, dict[str, Any]] = {"JPEG": {"quality": 95}, "WEBP": {"quality": 95}, "PNG": {}, "BMP": {}, "TIFF": {}}


def _save_atomically(image: Image.Image, target: Path) -> None:
    """Through a temporary file, so an interrupted run never leaves half a crop to skip later."""
    image_format = Image.registered_extensions().get(target.suffix.lower(), "PNG")
    if image_format not in _CROP_FORMATS:
        image_format = "PNG"
    atomic_write(target, lambda temp: image.save(temp, format=image_format, **_CROP_FORMATS[image_format]))


_WORKER_ALIGNER: Aligner | None = None


def _start_worker(aligner: Aligner) -> None:
    """Each worker builds its own detector once; one thread each, the processes give the parallelism."""
    global _WORKER_ALIGNER
    torch.set_num_threads(1)
    _WORKER_ALIGNER = dataclasses.replace(aligner, detector=build_detector(cast(str, aligner.detector), "cpu"))


def _align_in_worker(task: tuple[Path, Path]) -> AlignResult:
    assert _WORKER_ALIGNER is not None, "worker not initialized"
    return _WORKER_ALIGNER(task)


def align_dataset(
    source: str | Path,
    destination: str | Path,
    format: str,
    workers: int = 2,
    size: int = ALIGNED_SIZE,
    margin: float = DEFAULT_MARGIN,
    detector: FaceDetector | str = "mtcnn",
    show_progress: bool = True,
    face_filter: FaceFilter = FaceFilter(),
) -> dict[str, Any]:
    """Align a dataset into ``destination``; returns (and writes) the report.

    Args:
        workers: processes for detection; 0 runs in this process.
        detector: a name in ``DETECTORS``, or, with ``workers=0``, a detector object (tests
            and callers can plug in their own).
    """
    if workers < 0:
        raise ValueError(f"workers must be >= 0, got {workers}")
    reference_points(size, margin)  # refuses a size or margin out of range before any work
    if workers > 0 and isinstance(detector, str):
        # Missing detector weights: one error line here. In a worker's initializer, the pool
        # would start a new worker after each failure, forever.
        build_detector(detector, "cpu")
    destination = Path(destination).absolute()
    if destination.exists() and not destination.is_dir():
        raise ValueError(f"destination {destination} is an existing file, not a folder; choose another path")
    index = load_dataset(source, format)
    base = index.root if index.root.is_dir() else index.root.parent
    if destination.resolve() == base.resolve():
        raise ValueError(f"destination {destination} is the dataset folder itself: crops would replace the originals; choose another folder")
    settings = {"source": str(index.root), "format": format, "size": size, "margin": margin,
                "detector": detector if isinstance(detector, str) else None,  # None: an object a caller passed
                "min_face_score": face_filter.min_score, "min_face_size": face_filter.min_size}
    _check_earlier_run(destination, settings)
    destination.mkdir(parents=True, exist_ok=True)
    atomic_write_text(destination / REPORT_NAME, json.dumps(settings, indent=2))
    # A destination inside a dataset read from its subfolders (AFAD) holds the earlier runs' crops:
    # they are this command's output, not photos to align again, one folder deeper each run.
    samples = [sample for sample in index.samples if not _is_within(sample.path, destination)]
    skipped = [skip for skip in index.skipped if not _is_within(skip.path, destination)]
    problems = [{"file": _relative(s.path, base), "problem": f"not in the dataset: {s.reason}"} for s in skipped]
    tasks, done = [], 0
    for path in dict.fromkeys(sample.path for sample in samples):
        try:
            target = destination / _inside(path, base)
        except ValueError:
            problems.append({"file": str(path), "problem": f"outside the dataset folder {base}; not aligned"})
            continue
        if _is_complete_crop(target, size):
            done += 1
        else:
            tasks.append((path, target))
    results = _run(tasks, workers, Aligner(detector, size, margin, face_filter), show_progress)
    counts = Counter(result.status for result in results)
    problems += [
        {"file": _relative(r.source, base), "problem": r.status.replace("_", " ") + (f": {r.detail}" if r.detail else "")}
        for r in sorted(results, key=lambda result: result.source)
        if r.status != "aligned"
    ]
    if _copy_manifests(index.root, destination):
        copied = destination / index.root.name if index.root.is_file() else destination
        problems += _rows_still_reading_originals(copied, format, base, destination)
    report = {
        **settings,
        "counts": {
            "images": len(samples) + len(skipped),
            "aligned": counts["aligned"] + counts["several_faces"],
            "already_aligned": done,
            "several_faces": counts["several_faces"],
            "no_face": counts["no_face"],
            "unreadable": counts["unreadable"],
            "failed": counts["failed"],
            "not_in_dataset": len(skipped),
        },
        "problems": problems,
    }
    atomic_write_text(destination / REPORT_NAME, json.dumps(report, indent=2))
    return report


def _check_earlier_run(destination: Path, settings: dict[str, Any]) -> None:
    """A folder holds the crops of one dataset in one framing: anything else would be mixed in.

    A folder with files but no report is not an earlier run's: its files could share names
    with the crops, so it is refused too.
    """
    report = destination / REPORT_NAME
    if not report.is_file():
        if destination.is_dir() and any(destination.iterdir()):
            raise ValueError(f"{destination} already holds files and no {REPORT_NAME}; align into an empty or new folder")
        return
    try:
        earlier = json.loads(report.read_text())
        found = {key: earlier[key] for key in ("source", "format", "size", "margin")}
        same_source = Path(found["source"]).resolve() == Path(settings["source"]).resolve()
        # Reports from before the filter was recorded were written with its defaults, by an unrecorded detector.
        found |= {"min_face_score": earlier.get("min_face_score", DEFAULT_MIN_FACE_SCORE),
                  "min_face_size": earlier.get("min_face_size", DEFAULT_MIN_FACE_SIZE), "detector": earlier.get("detector")}
    except (ValueError, KeyError, TypeError, AttributeError):
        raise ValueError(f"{report} is not a GLAE align report; align into an empty folder") from None
    if not same_source or found["format"] != settings["format"]:
        raise ValueError(
            f"{destination} holds crops of another dataset ({found['source']}, --format {found['format']}); "
            "align into another folder"
        )
    if (found["size"], found["margin"]) != (settings["size"], settings["margin"]):
        raise ValueError(
            f"{destination} holds crops aligned with --size {found['size']} --margin {found['margin']}; "
            "rerun with those, or align into another folder"
        )
    same_detector = None in (found["detector"], settings["detector"]) or found["detector"] == settings["detector"]
    if not same_detector or (found["min_face_score"], found["min_face_size"]) != (settings["min_face_score"], settings["min_face_size"]):
        raise ValueError(
            f"{destination} holds crops found with --detector {found['detector'] or '(not recorded)'} --min-face-score "
            f"{found['min_face_score']} --min-face-size {found['min_face_size']}; rerun with those, or align into another folder"
        )


def _is_complete_crop(target: Path, size: int) -> bool:
    """An existing crop counts as done only when it decodes whole; a broken one is redone.

    A whole crop of another size means the folder belongs to another alignment: refused,
    since redoing it would overwrite a finished crop.
    """
    if not target.is_file():
        return False
    try:
        with Image.open(target) as image:
            image.load()
            found = image.size
    except (*DECODE_ERRORS, Image.DecompressionBombError):
        return False
    if found != (size, size):
        raise ValueError(f"{target} is a {found[0]}x{found[1]} crop, not {size}x{size}; rerun with --size {found[0]} or align into another folder")
    return True


def _run(tasks: list[tuple[Path, Path]], workers: int, aligner: Aligner, show_progress: bool) -> list[AlignResult]:
    """Align ``tasks``; with workers, ``aligner``'s detector is a name, from which each process builds its own."""
    progress: dict[str, Any] = {"total": len(tasks), "desc": "align", "unit": "img", "disable": not show_progress}
    if workers == 0 or not tasks:
        if isinstance(aligner.detector, str):
            aligner = dataclasses.replace(aligner, detector=build_detector(aligner.detector, "cpu"))
        return [aligner(task) for task in tqdm(tasks, **progress)]
    if not isinstance(aligner.detector, str):
        raise ValueError("worker processes build their own detector: pass its name, or workers=0 with a detector object")
    # spawn: a forked copy of a process that already ran torch threads can deadlock.
    context = multiprocessing.get_context("spawn")
    with context.Pool(workers, initializer=_start_worker, initargs=(aligner,)) as pool:
        return list(tqdm(pool.imap_unordered(_align_in_worker, tasks, chunksize=4), **progress))


def _copy_manifests(root: Path, destination: Path) -> list[Path]:
    """CSV formats: the label files go beside the crops, whose relative paths they name."""
    manifests = [root] if root.is_file() else sorted(root.glob("*.csv"))
    for manifest in manifests:
        shutil.copy2(manifest, destination / manifest.name)
    return manifests


def _rows_still_reading_originals(copy: Path, format: str, base: Path, destination: Path) -> list[dict[str, str]]:
    """Rows of the copied label files that name a dataset image by absolute path still read the original photo.

    (Rows outside the dataset folder are reported as such already.)
    """
    try:
        samples = load_dataset(copy, format).samples
    except DatasetError:  # no crop was written (no face anywhere): no row can read one
        return []
    return [
        {"file": str(sample.path), "problem": "the copied label file names it by an absolute path, so the aligned dataset still reads the original; make the path relative"}
        for sample in samples
        if _is_within(sample.path, base) and not _is_within(sample.path, destination)
    ]


def _inside(path: Path, base: Path) -> Path:
    """``path`` relative to ``base`` once ``..`` is resolved; ValueError when it lies outside.

    A CSV row ``../photos/x.jpg`` is outside the dataset folder: taken as it reads, its
    crop would go to ``DST/../photos/x.jpg``, which can be the original photo itself.
    """
    return Path(os.path.normpath(path)).relative_to(os.path.normpath(base))


def _is_within(path: Path, folder: Path) -> bool:
    try:
        _inside(path, folder)
    except ValueError:
        return False
    return True


def _relative(path: Path, base: Path) -> str:
    try:
        return path.relative_to(base).as_posix()
    except ValueError:
        return str(path)

