"""What ``glae predict`` shows: a table, JSON or CSV, annotated copies, and the skip summary."""

from __future__ import annotations

import csv
import io
import json
from collections.abc import Sequence
from pathlib import Path

from PIL import Image, ImageDraw, ImageFont

from .data.images import read_rgb
from .predict import ImagePrediction

CSV_COLUMNS = ("file", "face", "x1", "y1", "x2", "y2", "age", "low_90", "high_90", "head", "score", "error")


def to_json(predictions: Sequence[ImagePrediction]) -> str:
    """``[{"file", "faces": [{"box", "landmarks", "score", "age", "interval_90", "head"}], "error"}]``."""
    return json.dumps([prediction.to_dict() for prediction in predictions], indent=2)


def to_csv(predictions: Sequence[ImagePrediction]) -> str:
    """One row per face; a photo without faces (or with an error) still gets one row."""
    buffer = io.StringIO()
    writer = csv.writer(buffer, lineterminator="\n")
    writer.writerow(CSV_COLUMNS)
    for prediction in predictions:
        if not prediction.faces:
            writer.writerow([prediction.file, "", "", "", "", "", "", "", "", "", "", prediction.error or "no face"])
        for number, face in enumerate(prediction.faces, 1):
            box = [f"{v:.1f}" for v in face.box]
            low, high = (f"{v:.2f}" for v in face.interval_90)
            score = "" if face.score is None else f"{face.score:.4f}"
            writer.writerow([prediction.file, number, *box, f"{face.age:.2f}", low, high, face.head, score, ""])
    return buffer.getvalue()


def to_table(predictions: Sequence[ImagePrediction]) -> str:
    """Aligned columns for the terminal: file, face number, age, 90% interval, head, box.

    A photo without a face gets its file name and a note ("no face", "error: ...") instead.
    """
    header = ("file", "face", "age", "90% interval", "head", "box")
    rows: list[tuple[str, ...]] = []
    for prediction in predictions:
        name = printable(prediction.file or "<image>")
        if not prediction.faces:
            rows.append((name, f"error: {prediction.error}" if prediction.error else "no face"))
        for number, face in enumerate(prediction.faces, 1):
            low, high = face.interval_90
            box = ",".join(f"{v:.0f}" for v in face.box)
            rows.append((name, str(number), f"{face.age:.1f}", f"{low:.1f}-{high:.1f}", face.head, box))
    widths = [max(len(row[column]) for row in [header, *rows] if len(row) > column + 1) for column in range(len(header) - 1)]
    return "\n".join("  ".join(cell.ljust(width) for cell, width in zip(row[:-1], widths)) + "  " + row[-1] for row in [header, *rows])


def summary(predictions: Sequence[ImagePrediction]) -> str:
    """One line: faces found, photos without a face, and the files skipped with their reason."""
    with_faces = [p for p in predictions if p.faces]
    skipped = [p for p in predictions if p.error]
    no_face = len(predictions) - len(with_faces) - len(skipped)
    faces = sum(len(p.faces) for p in with_faces)
    line = f"{len(predictions)} file(s): {faces} face(s) in {len(with_faces)}, {no_face} without a face, {len(skipped)} skipped"
    if skipped:
        line += " (" + "; ".join(printable(str(p.error)) for p in skipped) + ")"
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


def annotate_all(predictions: Sequence[ImagePrediction], folder: Path) -> list[Path]:
    """Annotated copies of every readable photo in ``folder``, as ``<name>.jpg``.

    Photos from different folders may share a name; later ones get ``_2``, ``_3``...
    instead of overwriting the first. A rerun overwrites its own earlier copies, never an
    input photo, whatever folder it is given.
    """
    folder.mkdir(parents=True, exist_ok=True)
    inputs = {Path(p.file).resolve() for p in predictions if p.file is not None}
    written: list[Path] = []
    for prediction in predictions:
        if prediction.file is None or prediction.error:
            continue
        stem, number = Path(prediction.file).stem, 1
        target = folder / f"{stem}.jpg"
        while target in written or target.resolve() in inputs:
            number += 1
            target = folder / f"{stem}_{number}.jpg"
        annotate(prediction).save(target, quality=92)
        written.append(target)
    return written


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
        label = f"{face.age:.0f} ({face.head})"
        left, top = face.box[0], max(0.0, face.box[1] - font.size - 2 * line)
        draw.rectangle(draw.textbbox((left, top), label, font=font), fill=(0, 0, 0))
        draw.text((left, top), label, fill=(255, 255, 255), font=font)
    return image
