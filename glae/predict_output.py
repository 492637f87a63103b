"""What ``glae predict`` shows: a table, JSON or CSV, annotated copies, and the skip summary."""

from __future__ import annotations

import csv
import io
import json
import os
import sys
import textwrap
from collections.abc import Iterable, Sequence
from pathlib import Path
from typing import Protocol

from PIL import Image, ImageDraw, ImageFont
from tqdm import tqdm

from .data.images import read_rgb
from .estimator import ImagePrediction
from .fileio import create_new

JPEG_MAX_SIDE = 65500  # libjpeg's limit on either side of an image

CSV_COLUMNS = ("file", "face", "x1", "y1", "x2", "y2", "age", "low_90", "high_90", "head", "score", "error")


class Output(Protocol):
    """One output format, written a photo at a time so a large run shows results as they come."""

    def header(self) -> str | None: ...

    def lines(self, prediction: ImagePrediction) -> list[str]: ...

    def footer(self) -> str | None: ...


class JsonOutput:
    """A JSON array, ``[{"file", "faces": [{"box", "landmarks", "score", "age", "interval_90", "head"}], "error"}]``.

    Each record is printed when the next one arrives (it needs its comma), the last at the
    end; ``JsonLinesOutput`` has no such lag and suits large runs better.
    """

    def __init__(self) -> None:
        self.pending: str | None = None

    def header(self) -> str:
        return "["

    def lines(self, prediction: ImagePrediction) -> list[str]:
        ready = [] if self.pending is None else [self.pending + ","]
        self.pending = textwrap.indent(json.dumps(prediction.to_dict(), indent=2), "  ")
        return ready

    def footer(self) -> str:
        return "]" if self.pending is None else f"{self.pending}\n]"


class JsonLinesOutput:
    """JSON Lines: one compact record per photo, the same fields as ``JsonOutput``; a run cut
    short leaves every finished line usable, and ``jq``/pandas read it a line at a time."""

    def header(self) -> None:
        return None

    def lines(self, prediction: ImagePrediction) -> list[str]:
        return [json.dumps(prediction.to_dict())]

    def footer(self) -> None:
        return None


class CsvOutput:
    """One row per face; a photo without faces gets one row with ``face`` 0 and no error, as in
    the JSON (``faces: []``, ``error: null``); a photo that failed gets one row with its ``error``."""

    def header(self) -> str:
        return ",".join(CSV_COLUMNS)

    def lines(self, prediction: ImagePrediction) -> list[str]:
        buffer = io.StringIO()
        writer = csv.writer(buffer, lineterminator="\n")
        file = None if prediction.file is None else utf8_name(prediction.file)
        if not prediction.faces:
            faces, error = ("", utf8_name(prediction.error)) if prediction.error else ("0", "")  # errors quote names
            writer.writerow([file, faces, "", "", "", "", "", "", "", "", "", error])
        for number, face in enumerate(prediction.faces, 1):
            box = [f"{v:.1f}" for v in face.box]
            low, high = (f"{v:.2f}" for v in face.interval_90)
            score = "" if face.score is None else f"{face.score:.4f}"
            writer.writerow([file, number, *box, f"{face.age:.2f}", low, high, face.head, score, ""])
        return [buffer.getvalue().removesuffix("\n")]  # one block: a quoted name may hold line breaks

    def footer(self) -> None:
        return None


def utf8_name(name: str) -> str:
    """A file name as UTF-8 text: bytes that are not UTF-8 (a Latin-1 ``caf\\xe9.jpg``) as ``\\xe9``, so
    writing the row cannot fail on a strict UTF-8 stdout."""
    return os.fsencode(name).decode("utf-8", "backslashreplace")


class TableOutput:
    """Aligned columns for the terminal: file, face number, age, 90% interval, head, box.

    The file column is as wide as the longest name to come (``files``), the others are
    fixed, so rows line up without waiting for the run to end. A photo without a face
    gets its file name and a note ("no face", "error: ...") instead.
    """

    HEADER = ("file", "face", "age", "90% interval", "head", "box")
    WIDTHS = (4, 5, 12, 8)

    def __init__(self, files: Sequence[str]) -> None:
        self.name_width = max([len(self.HEADER[0]), *(len(printable(name)) for name in files)])

    def _row(self, cells: Sequence[str]) -> str:
        widths = (self.name_width, *self.WIDTHS)
        return "  ".join(cell.ljust(width) for cell, width in zip(cells[:-1], widths)) + "  " + cells[-1]

    def header(self) -> str:
        return self._row(self.HEADER)

    def lines(self, prediction: ImagePrediction) -> list[str]:
        name = printable(prediction.file or "<image>")
        if not prediction.faces:
            return [self._row((name, f"error: {printable(prediction.error)}" if prediction.error else "no face"))]
        rows = []
        for number, face in enumerate(prediction.faces, 1):
            low, high = face.interval_90
            box = ",".join(f"{v:.0f}" for v in face.box)
            rows.append(self._row((name, str(number), f"{face.age:.1f}", f"{low:.1f}-{high:.1f}", face.head, box)))
        return rows

    def footer(self) -> None:
        return None


class Summary:
    """Running counts for the closing line, without keeping the predictions themselves."""

    def __init__(self) -> None:
        self.files = self.faces = self.with_faces = self.no_face = 0
        self.errors: list[str] = []

    def add(self, prediction: ImagePrediction) -> None:
        self.files += 1
        self.faces += len(prediction.faces)
        self.with_faces += bool(prediction.faces)
        if prediction.error:
            error, file = str(prediction.error), prediction.file
            self.errors.append(printable(error if file is None or error.startswith(file) else f"{file}: {error}"))
        elif not prediction.faces:
            self.no_face += 1

    @property
    def any_read(self) -> bool:
        """Whether at least one file could be used: ``glae predict`` fails otherwise."""
        return len(self.errors) < self.files

    def line(self) -> str:
        """Faces found, photos without a face, and the files skipped with their reason."""
        line = f"{self.files} file(s): {self.faces} face(s) in {self.with_faces}, {self.no_face} without a face, {len(self.errors)} skipped"
        if self.errors:
            line += " (" + "; ".join(self.errors) + ")"
        return line


def printable(text: str) -> str:
    """``text`` with control characters escaped: a file name holding a newline stays on its row."""
    return "".join(char if char.isprintable() else repr(char)[1:-1] for char in text)


def check_annotate_folder(folder: Path, inputs: Sequence[Path]) -> None:
    """Refuse, before any work, a folder whose annotated copies would land among the input photos."""
    resolved = folder.resolve()
    clash = next((path for path in inputs if path.resolve().parent == resolved), None)
    if clash is not None:
        raise ValueError(
            f"--annotate {folder} holds the input photo {printable(str(clash))}: its copies could replace photos; "
            "choose a folder of its own"
        )


class AnnotatedCopies:
    """Annotated copies of readable photos in ``folder``, as ``<name>.jpg``, one photo at a time.

    No file already in the folder is ever replaced: not a user's file, not a copy from this
    run or an earlier one. A taken name moves the copy to the next free ``<name>_2.jpg``,
    ``<name>_3.jpg``...; a rerun adds new copies beside the earlier ones. A copy appears
    under its name only when whole (``fileio.create_new``): a full disk, Ctrl-C or ``kill -9``
    leaves no half-written copy.
    """

    def __init__(self, folder: Path) -> None:
        folder.mkdir(parents=True, exist_ok=True)
        self.folder = folder

    def write(self, prediction: ImagePrediction) -> Path | None:
        """The copy written, or None for an input that is no readable photo file."""
        if prediction.file is None or prediction.error:
            return None
        copy = annotate(prediction)
        copy.thumbnail((JPEG_MAX_SIDE, JPEG_MAX_SIDE))  # a panorama wider than JPEG allows is shrunk, not fatal
        encoded = io.BytesIO()
        copy.save(encoded, format="JPEG", quality=92)
        stem, number = Path(prediction.file).stem, 1
        while not create_new(target := self.folder / _copy_name(stem, number), encoded.getvalue()):
            number += 1
        return target


def _copy_name(stem: str, number: int) -> str:
    """``<stem>.jpg``, or ``<stem>_<number>.jpg`` after the first, the stem cut to fit in 255 bytes."""
    suffix = ".jpg" if number == 1 else f"_{number}.jpg"
    while len(os.fsencode(stem + suffix)) > 255:
        stem = stem[:-1]
    return stem + suffix


def write_predictions(
    predictions: Iterable[ImagePrediction], output: Output, total: int, copies: AnnotatedCopies | None = None
) -> Summary:
    """Print each photo's lines on stdout as soon as it is done, and annotate it.

    A progress bar of the ``total`` photos goes to stderr only when stderr is a terminal,
    so redirected or piped runs get clean output; lines are flushed one by one, so
    ``glae predict ... --jsonl > ages.jsonl`` can be followed while it runs.
    """
    summary = Summary()
    with tqdm(total=total, unit="photo", file=sys.stderr, disable=not sys.stderr.isatty(), dynamic_ncols=True) as bar:

        def emit(line: str | None) -> None:
            if line is not None:
                bar.write(line, file=sys.stdout)
                sys.stdout.flush()

        emit(output.header())
        for prediction in predictions:
            for line in output.lines(prediction):
                emit(line)
            if copies is not None:
                copies.write(prediction)
            summary.add(prediction)
            bar.update()
        emit(output.footer())
    return summary


def annotate(prediction: ImagePrediction) -> Image.Image:
    """The photo with each face's box, landmarks and "age (head)" drawn on it."""
    if prediction.file is None:
        raise ValueError("only predictions made from a file can be annotated")
    image = read_rgb(prediction.file)
    draw = ImageDraw.Draw(image)
    line = max(2, round(min(image.size) / 200))
    font = ImageFont.load_default(size=max(12, 6 * line))
    for face in prediction.faces:
        draw.rectangle(face.box, outline=(0, 255, 0), width=line)
        for x, y in face.landmarks or ():
            draw.ellipse((x - line, y - line, x + line, y + line), fill=(255, 0, 0))
    labels = [f"{face.age:.0f} ({face.head})" for face in prediction.faces]
    sizes = [_text_size(draw, label, font, line) for label in labels]
    for label, (left, top, _, _) in zip(labels, place_labels([face.box for face in prediction.faces], sizes, image.size)):
        draw.rectangle(draw.textbbox((left + line, top + line), label, font=font), fill=(0, 0, 0))
        draw.text((left + line, top + line), label, fill=(255, 255, 255), font=font)
    return image


Rect = tuple[float, float, float, float]


def _text_size(draw: ImageDraw.ImageDraw, label: str, font: ImageFont.FreeTypeFont | ImageFont.ImageFont, pad: int) -> tuple[float, float]:
    _, _, right, bottom = draw.textbbox((0, 0), label, font=font)
    return right + 2 * pad, bottom + 2 * pad


def _overlaps(a: Rect, b: Rect) -> bool:
    return a[0] < b[2] and b[0] < a[2] and a[1] < b[3] and b[1] < a[3]


def place_labels(boxes: Sequence[Rect], sizes: Sequence[tuple[float, float]], image_size: tuple[int, int]) -> list[Rect]:
    """A rectangle per label, touching its face's box and overlapping no other label.

    Each label tries, in order: above its box, inside its top edge, below it; then rows
    further up and further down, one label height at a time, until one is free. Labels are
    kept inside the image; one with nowhere free (a crowd filling the photo) goes above
    its box anyway.
    """
    width, height = image_size
    placed: list[Rect] = []
    for (x1, y1, _, y2), (w, h) in zip(boxes, sizes):
        left = min(max(0.0, x1), max(0.0, width - w))
        tops = [y1 - h, y1, y2]
        tops += [top for step in range(1, int(height // max(h, 1)) + 1) for top in (y1 - h - step * h, y2 + step * h)]
        candidates = [(left, top, left + w, top + h) for top in tops if 0 <= top <= height - h]
        free = [rect for rect in candidates if not any(_overlaps(rect, other) for other in placed)]
        above = min(max(0.0, y1 - h), max(0.0, height - h))
        placed.append(free[0] if free else (left, above, left + w, above + h))
    return placed
