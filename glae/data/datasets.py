"""Dataset adapters: turn each public age dataset's native layout into `AgeSample` records.

Every adapter follows the same contract so that training never meets a surprise:

* A missing path, an empty folder or a structurally broken CSV is fatal (`DatasetError`),
  and the message names the file (and the line for CSVs), because these are setup mistakes
  the user must fix before any run makes sense.
* A single image whose labels cannot be read (a malformed file name, a CSV row pointing
  to a missing or zero-byte file) is *not* fatal: it lands in `DatasetIndex.skipped` with
  a precise reason, so a 20k-image dataset with 6 bad names still loads and the report
  says exactly what was left out. Labels are never guessed from a malformed name.
* Images are not decoded here (too slow for large datasets); only zero-byte files are
  caught, as they are the common truncated-download failure.
"""

from __future__ import annotations

import csv
import math
import os
import re
from collections.abc import Callable, Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path

from ..imageformats import image_extensions


class DatasetError(ValueError):
    """Bad dataset input; message always names the file (and line for CSVs)."""


@dataclass(frozen=True)
class AgeSample:
    """One labelled face image.

    Attributes:
        path: Absolute path to the image.
        age: Age in years; a float because apparent-age datasets label with a mean.
        age_std: Std of the apparent age (LAP 2015 / APPA-REAL), else None.
        subject: Identity id when the dataset has one (needed by leave-one-subject-out).
        split: "train"/"val"/"test" as shipped by the dataset, else None.
        attributes: Extra labels such as gender or race, kept as strings; excluded from
            equality and hashing so two records of the same image compare equal.
    """

    path: Path
    age: float
    age_std: float | None = None
    subject: str | None = None
    split: str | None = None
    attributes: Mapping[str, str] = field(default_factory=dict, compare=False, hash=False)


@dataclass
class SkippedFile:
    """A file left out of the dataset, with the reason shown to the user."""

    path: Path
    reason: str


@dataclass
class DatasetIndex:
    """The loaded records of one dataset plus the exact list of what was left out."""

    root: Path
    format: str
    samples: list[AgeSample]
    skipped: list[SkippedFile]

    def summary(self) -> str:
        """Human-readable load report, one line per skipped file so nothing is lost silently."""
        lines = [f"{self.format}: {len(self.samples)} images loaded, {len(self.skipped)} skipped"]
        lines += [f"  skipped {_display(s.path, self.root)}: {s.reason}" for s in self.skipped]
        return "\n".join(lines)


def _display(path: Path, root: Path) -> str:
    """Path relative to the dataset root when possible, to keep reports short."""
    base = root if root.is_dir() else root.parent
    try:
        return path.relative_to(base).as_posix()
    except ValueError:
        return str(path)


# ---------------------------------------------------------------------------------------
# Shared helpers: paths and files
# ---------------------------------------------------------------------------------------


def _is_image(path: Path) -> bool:
    """Decide by extension only, with the extensions ``glae predict`` takes (asked on first use:
    listing them loads every Pillow plugin, which no command should pay for at import)."""
    return path.suffix.lower() in image_extensions()


def _existing(path: str | Path) -> Path:
    """Absolute form of `path`, failing early with a clear message if it does not exist."""
    resolved = Path(path).expanduser().absolute()
    if not resolved.exists():
        raise DatasetError(f"{resolved} does not exist")
    return resolved


def _require_dir(path: Path, format: str) -> None:
    """Folder formats get a clear error instead of an empty listing when handed a file."""
    if not path.is_dir():
        raise DatasetError(f"{path}: the {format} format expects a folder, got a file")


def _require_file(path: Path, format: str) -> None:
    """CSV formats get a clear error when handed a folder."""
    if not path.is_file():
        raise DatasetError(f"{path}: the {format} format expects a CSV file, got a folder")


def _list_images(folder: Path, recursive: bool = False) -> list[Path]:
    """Sorted image files of `folder`; sorting makes every load order reproducible."""
    candidates = folder.rglob("*") if recursive else folder.iterdir()
    images = sorted(p for p in candidates if p.is_file() and _is_image(p))
    if not images:
        raise _no_images(folder)
    return images


def _no_images(folder: Path) -> DatasetError:
    """The error for a folder without images, listing the extensions that count."""
    extensions = " ".join(sorted(image_extensions()))
    return DatasetError(f"{folder}: no image files found (looked for {extensions})")


def _file_problem(path: Path) -> str | None:
    """Reason an image file cannot be used, checked without decoding it."""
    if not path.is_file():
        return "file not found"
    if not _is_image(path):
        return "not an image file"
    if path.stat().st_size == 0:
        return "empty file"
    return None


def _finish(
    root: Path, format: str, samples: list[AgeSample], skipped: list[SkippedFile]
) -> DatasetIndex:
    """Build the index, refusing one without samples since nothing could train on it."""
    if not samples:
        first = f"; first: {skipped[0].path}: {skipped[0].reason}" if skipped else ""
        raise DatasetError(f"{root}: no usable images ({len(skipped)} skipped{first})")
    return DatasetIndex(root=root, format=format, samples=samples, skipped=skipped)


def _load_folder(
    root: Path,
    format: str,
    parse: Callable[[Path], AgeSample | str],
    recursive: bool = False,
) -> DatasetIndex:
    """Load a folder format whose labels come from each image's name or location."""
    _require_dir(root, format)
    return _index_files(root, format, _list_images(root, recursive), parse)


def _index_files(
    root: Path, format: str, files: Iterable[Path], parse: Callable[[Path], AgeSample | str]
) -> DatasetIndex:
    """Shared loop of folder formats: `parse` returns a sample or the reason it was skipped."""
    samples: list[AgeSample] = []
    skipped: list[SkippedFile] = []
    for path in files:
        result = _file_problem(path) or parse(path)
        if isinstance(result, str):
            skipped.append(SkippedFile(path, result))
        else:
            samples.append(result)
    return _finish(root, format, samples, skipped)


# ---------------------------------------------------------------------------------------
# Shared helpers: CSV files
# ---------------------------------------------------------------------------------------


@dataclass
class _Row:
    """One CSV record with the physical line it ended on, for error messages."""

    line: int
    values: dict[str, str]


def _sniff_delimiter(first_line: str) -> str:
    """Pick the delimiter of the header line; LAP 2015 files use ';' rather than ','."""
    return max([",", ";", "\t"], key=first_line.count)


def _read_rows(csv_path: Path, header: bool = True) -> tuple[list[str], list[_Row]]:
    """Read a CSV into rows keyed by lower-cased column name (or by position if no header).

    Column names are lower-cased and stripped because the public datasets disagree on case.
    """
    with csv_path.open(newline="", encoding="utf-8-sig") as handle:
        try:
            delimiter = _sniff_delimiter(next((line for line in handle if line.strip()), ""))
            handle.seek(0)
            reader = csv.reader(handle, delimiter=delimiter)
            records = [(reader.line_num, row) for row in reader if any(v.strip() for v in row)]
        except UnicodeDecodeError as error:
            raise DatasetError(f"{csv_path}: not a UTF-8 text file ({error.reason} at byte {error.start}); "
                               "is it an image or a spreadsheet rather than a CSV?") from None
        except csv.Error as error:
            raise DatasetError(f"{csv_path}:{reader.line_num}: not a valid CSV ({error}); an unclosed quote?") from None
    if not records:
        raise DatasetError(f"{csv_path}: the CSV file is empty")
    if header:
        columns = [name.strip().lower() for name in records[0][1]]
        records = records[1:]
    else:
        columns = [str(i) for i in range(len(records[0][1]))]
    if not records:
        raise DatasetError(f"{csv_path}: the CSV file has a header but no rows")
    return columns, [_to_row(csv_path, columns, line, cells) for line, cells in records]


def _to_row(csv_path: Path, columns: list[str], line: int, cells: list[str]) -> _Row:
    """Key a record's cells by column. A short record, or one with values past the last
    column (``a.jpg,30,5``: an unquoted decimal comma), is a broken file, so it is fatal."""
    if len(cells) < len(columns) or any(cell.strip() for cell in cells[len(columns):]):
        raise DatasetError(
            f"{csv_path}:{line}: expected {len(columns)} columns, found {len(cells)}"
        )
    return _Row(line, {column: cell.strip() for column, cell in zip(columns, cells)})


def _column(csv_path: Path, columns: Sequence[str], aliases: Sequence[str]) -> str:
    """First of `aliases` present in `columns`; a missing required column is fatal."""
    found = _optional_column(columns, aliases)
    if found is None:
        raise DatasetError(
            f"{csv_path}: missing required column {' or '.join(repr(a) for a in aliases)}; "
            f"columns found: {', '.join(columns)}"
        )
    return found


def _optional_column(columns: Sequence[str], aliases: Sequence[str]) -> str | None:
    """First of `aliases` present in `columns`, or None."""
    return next((alias for alias in aliases if alias in columns), None)


def _number(csv_path: Path, row: _Row, column: str, what: str) -> float:
    """Parse a non-negative finite number; anything else means a broken file, so it is fatal."""
    text = row.values.get(column, "")
    try:
        value = float(text)
    except ValueError:
        raise DatasetError(f"{csv_path}:{row.line}: {what} {text!r} is not a number") from None
    if not math.isfinite(value):
        raise DatasetError(f"{csv_path}:{row.line}: {what} {text!r} is not a finite number")
    if value < 0:
        raise DatasetError(f"{csv_path}:{row.line}: {what} {text!r} is negative")
    return value


def _image_path(csv_path: Path, row: _Row, column: str, fallbacks: Sequence[Path] = ()) -> Path:
    """Image path of a CSV row: relative to the CSV's folder (or absolute), else in a fallback.

    The first candidate that exists wins; if none does, the primary one is returned so the
    row is reported as "file not found" under the path the CSV actually names.

    Raises:
        DatasetError: If the cell is empty, which is a broken row rather than a lost file.
    """
    value = row.values.get(column, "")
    if not value:
        raise DatasetError(f"{csv_path}:{row.line}: empty image path in column {column!r}")
    primary = (csv_path.parent / value).absolute()
    if primary.exists():
        return primary
    candidates = ((folder / value).absolute() for folder in fallbacks)
    return next((c for c in candidates if c.exists()), primary)


def _optional(row: _Row, column: str) -> str | None:
    """Value of an optional column, with an empty cell or absent column read as missing."""
    return row.values.get(column) or None


def _collect(
    rows: Iterable[tuple[Path, AgeSample]],
) -> tuple[list[AgeSample], list[SkippedFile]]:
    """Split candidate samples into usable ones and skipped files by checking each image.

    A file listed a second time is skipped: as two samples it could land in train and test.
    """
    samples: list[AgeSample] = []
    skipped: list[SkippedFile] = []
    seen: set[str] = set()
    for path, sample in rows:
        key = os.path.normpath(path.absolute())
        problem = "listed again (its first row is kept)" if key in seen else _file_problem(path)
        seen.add(key)
        if problem:
            skipped.append(SkippedFile(path, problem))
        else:
            samples.append(sample)
    return samples, skipped


# ---------------------------------------------------------------------------------------
# UTKFace
# ---------------------------------------------------------------------------------------

_UTK_SUFFIX = ".jpg.chip.jpg"
_UTK_GENDERS = {"0": "male", "1": "female"}
_UTK_RACES = {"0": "white", "1": "black", "2": "asian", "3": "indian", "4": "other"}


def _is_int(text: str) -> bool:
    """ASCII digits only: `str.isdigit` alone also accepts characters like '²'."""
    return text.isascii() and text.isdigit()


def _utk_name_problem(name: str) -> str | None:
    """Why a UTKFace file name breaks `age_gender_race_datetime.jpg.chip.jpg`, if it does.

    The parse is strict on purpose: a name with a missing field or an odd timestamp could
    have its fields shifted, so its age label cannot be trusted.
    """
    if not name.endswith(_UTK_SUFFIX):
        return f"malformed name: does not end with '{_UTK_SUFFIX}'"
    stem = name[: -len(_UTK_SUFFIX)]
    if any(char.isspace() for char in stem):
        return "malformed name: contains whitespace"
    fields = stem.split("_")
    if len(fields) != 4:
        return f"malformed name: {len(fields)} fields, expected 4 (age_gender_race_datetime)"
    age, gender, race, stamp = fields
    if not _is_int(age) or not 1 <= int(age) <= 116:
        return f"malformed name: age {age!r} is not an integer in 1..116"
    if gender not in _UTK_GENDERS:
        return f"malformed name: gender {gender!r} is not 0 or 1"
    if race not in _UTK_RACES:
        return f"malformed name: race {race!r} is not in 0..4"
    if not (_is_int(stamp) and len(stamp) == 17):
        return f"malformed name: timestamp {stamp!r} is not 17 digits"
    return None


def _parse_utkface(path: Path) -> AgeSample | str:
    """Sample from a UTKFace file name, or the reason the name is rejected."""
    problem = _utk_name_problem(path.name)
    if problem:
        return problem
    age, gender, race, _ = path.name[: -len(_UTK_SUFFIX)].split("_")
    attributes = {"gender": _UTK_GENDERS[gender], "race": _UTK_RACES[race]}
    return AgeSample(path=path, age=float(age), attributes=attributes)


def load_utkface(root: Path) -> DatasetIndex:
    """UTKFace: a flat folder of `[age]_[gender]_[race]_[date&time].jpg.chip.jpg`.

    Unlike the other folder formats, every non-image file (the README.md shipped among the
    images) is listed in `skipped` as "not an image file", so the report accounts for
    every entry of the folder.
    """
    _require_dir(root, "utkface")
    files = sorted(p for p in root.iterdir() if p.is_file())
    if not any(_is_image(p) for p in files):
        raise _no_images(root)
    return _index_files(root, "utkface", files, _parse_utkface)


# ---------------------------------------------------------------------------------------
# CACD, FG-NET, AFAD (folder formats)
# ---------------------------------------------------------------------------------------

_CACD_NAME = re.compile(r"^(\d{1,3})_(.+)_(\d+)\.[^.]+$")
_FGNET_NAME = re.compile(r"^(\d{3})A(\d{2})([a-z]?)\.[^.]+$", re.IGNORECASE)
_AFAD_GENDERS = {"111": "male", "112": "female"}


def _parse_cacd(path: Path) -> AgeSample | str:
    """CACD `53_Robin_Williams_0001.jpg`; the celebrity name may itself contain underscores."""
    match = _CACD_NAME.match(path.name)
    if not match:
        return "malformed name: expected age_Name_NNNN.jpg"
    return AgeSample(path=path, age=float(match.group(1)), subject=match.group(2))


def load_cacd(root: Path) -> DatasetIndex:
    """CACD: a flat folder of `age_Name_NNNN.jpg`; subject is the celebrity name."""
    return _load_folder(root, "cacd", _parse_cacd)


def _parse_fgnet(path: Path) -> AgeSample | str:
    """FG-NET `001A02.JPG` (subject 001, age 2), also with a variant letter: `010A07a.JPG`."""
    match = _FGNET_NAME.match(path.name)
    if not match:
        return "malformed name: expected SSSAyy.JPG (subject, 'A', two-digit age)"
    return AgeSample(path=path, age=float(match.group(2)), subject=match.group(1))


def load_fgnet(root: Path) -> DatasetIndex:
    """FG-NET: a flat folder of `SSSAyy[x].JPG`; subject is the three-digit id."""
    return _load_folder(root, "fgnet", _parse_fgnet)


def _parse_afad(path: Path) -> AgeSample | str:
    """AFAD `<age>/<111|112>/<image>`: the labels live in the two parent folder names."""
    gender_dir, age_dir = path.parent.name, path.parent.parent.name
    if not _is_int(age_dir) or gender_dir not in _AFAD_GENDERS:
        return "unexpected location: expected <age>/<111|112>/<image>"
    attributes = {"gender": _AFAD_GENDERS[gender_dir]}
    return AgeSample(path=path, age=float(age_dir), attributes=attributes)


def load_afad(root: Path) -> DatasetIndex:
    """AFAD: `AFAD-Full/<age>/<111|112>/<image>.jpg`, searched recursively.

    Accepts the folder holding the age folders as well as any folder above it (such as the
    one containing `AFAD-Full/`), since only the two parent folders of an image matter.
    """
    return _load_folder(root, "afad", _parse_afad, recursive=True)


# ---------------------------------------------------------------------------------------
# MORPH II, MIVIA, generic CSV
# ---------------------------------------------------------------------------------------

_PATH_ALIASES = ("photo", "path", "file")


def load_morph(csv_path: Path) -> DatasetIndex:
    """MORPH II CSV (`id_num, ..., race, gender, ..., age, ..., photo`), column case ignored.

    Requires `age` and an image column (`photo`, `path` or `file`); subject is `id_num`
    and race/gender are kept raw (MORPH codes such as 'W', 'B', 'M', 'F').
    """
    _require_file(csv_path, "morph")
    columns, rows = _read_rows(csv_path)
    age_col = _column(csv_path, columns, ("age",))
    path_col = _column(csv_path, columns, _PATH_ALIASES)
    extra: list[str] = [name for name in ("race", "gender") if name in columns]

    def record(row: _Row) -> tuple[Path, AgeSample]:
        path = _image_path(csv_path, row, path_col)
        age = _number(csv_path, row, age_col, "age")
        attributes = {name: row.values[name] for name in extra}
        return path, AgeSample(path, age, subject=_optional(row, "id_num"), attributes=attributes)

    return _finish(csv_path, "morph", *_collect(record(row) for row in rows))


def _has_header(csv_path: Path) -> bool:
    """A MIVIA CSV has a header when its first row's age cell is not a number."""
    _, rows = _read_rows(csv_path, header=False)
    try:
        float(rows[0].values.get("1", ""))
    except ValueError:
        return True
    return False


def load_mivia(csv_path: Path) -> DatasetIndex:
    """MIVIA Age CSV of `path,age`, with or without a header line (detected)."""
    _require_file(csv_path, "mivia")
    header = _has_header(csv_path)
    columns, rows = _read_rows(csv_path, header=header)
    path_col = _column(csv_path, columns, _PATH_ALIASES) if header else "0"
    age_col = _column(csv_path, columns, ("age",)) if header else "1"

    def record(row: _Row) -> tuple[Path, AgeSample]:
        path = _image_path(csv_path, row, path_col)
        return path, AgeSample(path, _number(csv_path, row, age_col, "age"))

    return _finish(csv_path, "mivia", *_collect(record(row) for row in rows))


@dataclass(frozen=True)
class CsvColumns:
    """The column of a `csv` manifest that holds each label (case ignored).

    The defaults are the manifest's own names; renaming them reads an existing table
    (``file,real_age``) without rewriting it. `std`, `subject` and `split` are optional:
    a manifest without those columns simply has no such labels.
    """

    path: str = "path"
    age: str = "age"
    std: str = "std"
    subject: str = "subject"
    split: str = "split"


def _header(name: str) -> str:
    """A configured column name in the form `_read_rows` keys columns by."""
    return name.strip().lower()


def _required(csv_path: Path, columns: Sequence[str], name: str, label: str) -> str:
    """A required manifest column, or an error naming the setting that renames it."""
    column = _header(name)
    if column not in columns:
        raise DatasetError(
            f"{csv_path}: missing required column {column!r} for the {label} (rename it with "
            f"data.csv_columns.{label} or --csv-column {label}=NAME); columns found: {', '.join(columns)}"
        )
    return column


def load_manifest(csv_path: Path, names: CsvColumns = CsvColumns()) -> DatasetIndex:
    """Generic manifest: a header naming the `names` columns; `path` and `age` are required.

    Any other column is kept in `attributes`, so a user can attach labels such as gender
    without a new adapter.
    """
    _require_file(csv_path, "csv")
    columns, rows = _read_rows(csv_path)
    path_col = _required(csv_path, columns, names.path, "path")
    age_col = _required(csv_path, columns, names.age, "age")
    std_col, subject_col, split_col = (_header(name) for name in (names.std, names.subject, names.split))
    known = {path_col, age_col, std_col, subject_col, split_col}
    extra = [name for name in columns if name not in known]

    def record(row: _Row) -> tuple[Path, AgeSample]:
        path = _image_path(csv_path, row, path_col)
        std = _number(csv_path, row, std_col, "std") if _optional(row, std_col) else None
        return path, AgeSample(
            path,
            _number(csv_path, row, age_col, "age"),
            age_std=std,
            subject=_optional(row, subject_col),
            split=_optional(row, split_col),
            attributes={name: row.values[name] for name in extra},
        )

    return _finish(csv_path, "csv", *_collect(record(row) for row in rows))


# ---------------------------------------------------------------------------------------
# Apparent age: ChaLearn LAP 2015 and APPA-REAL
# ---------------------------------------------------------------------------------------

_APPA_SPLITS = {"train": "train", "valid": "val", "test": "test"}


def _read_apparent(
    csv_path: Path, split: str | None, fallbacks: Sequence[Path]
) -> list[tuple[Path, AgeSample]]:
    """Rows of a LAP 2015 / APPA-REAL label file: image name, mean and std of apparent age.

    Header names differ between releases, so each column accepts its known aliases.
    `real_age` and `num_ratings` (APPA-REAL) are kept in `attributes`.
    """
    columns, rows = _read_rows(csv_path)
    image_col = _column(csv_path, columns, ("image", "file_name"))
    mean_col = _column(csv_path, columns, ("mean", "apparent_age_avg"))
    std_col = _column(csv_path, columns, ("stdv", "std", "apparent_age_std"))
    extra: list[str] = [name for name in ("real_age", "num_ratings") if name in columns]

    def record(row: _Row) -> tuple[Path, AgeSample]:
        path = _image_path(csv_path, row, image_col, fallbacks)
        mean = _number(csv_path, row, mean_col, "age")
        std = _number(csv_path, row, std_col, "std")
        attributes = {name: row.values[name] for name in extra}
        return path, AgeSample(path, mean, age_std=std, split=split, attributes=attributes)

    return [record(row) for row in rows]


def _read_apparent_files(
    path: Path,
    format: str,
    csv_files: Sequence[Path],
    split_and_folder: Callable[[Path], tuple[str | None, Path]],
) -> DatasetIndex:
    """Several apparent-age label files as one index; ``split_and_folder`` gives each file's
    split and the folder its images unpack to (LAP 2015 and APPA-REAL differ only there).
    An image listed in two files is kept once, from the first: otherwise it could be in
    train and test."""
    rows: list[tuple[Path, AgeSample]] = []
    for csv_path in csv_files:
        split, folder = split_and_folder(csv_path)
        rows += _read_apparent(csv_path, split, [folder])
    samples, skipped = _collect(rows)
    return _finish(path, format, samples, skipped)


_LAP_SPLITS = {"train": "train", "training": "train", "valid": "val", "validation": "val", "test": "test"}


def load_lap2015(path: Path) -> DatasetIndex:
    """ChaLearn LAP 2015 label CSVs (`image,mean,stdv`; ',' or ';' separated).

    Given one CSV, its rows; given the challenge folder, every CSV in it, each sample's
    `split` taken from the file name (`Train.csv`, `Validation.csv`, `Test.csv`), so the
    official protocol is `data.protocol: field`. Images are looked up next to the CSV,
    then in a sibling folder named like the CSV stem (`Train.csv` -> `Train/`), which is
    how the challenge archives unpack.
    """
    csv_files = [path] if path.is_file() else sorted(path.glob("*.csv"))
    if not csv_files:
        raise DatasetError(f"{path}: no LAP 2015 label CSV (Train.csv, Validation.csv, Test.csv) found")

    def split_and_folder(csv_path: Path) -> tuple[str | None, Path]:
        split = _LAP_SPLITS.get(csv_path.stem.lower()) if path.is_dir() else None
        return split, csv_path.parent / csv_path.stem

    return _read_apparent_files(path, "lap2015", csv_files, split_and_folder)


def _appa_split(csv_path: Path) -> str | None:
    """Split of a `gt_avg_<split>.csv` file from its name ('valid' becomes 'val')."""
    return _APPA_SPLITS.get(csv_path.stem.removeprefix("gt_avg_"))


def load_appa_real(path: Path) -> DatasetIndex:
    """APPA-REAL: a folder with `gt_avg_{train,valid,test}.csv`, or one of those CSVs.

    `age` is the apparent age (`apparent_age_avg`), since this is an apparent-age benchmark;
    the real age stays in `attributes["real_age"]`. Images are read from the split folder
    (`train/`, `valid/`, `test/`) next to the CSV. From a folder, each split file present
    is read and its samples get the matching `split`.
    """
    csv_files = [path] if path.is_file() else sorted(path.glob("gt_avg_*.csv"))
    if not csv_files:
        raise DatasetError(f"{path}: no gt_avg_train/valid/test.csv files found")

    def split_and_folder(csv_path: Path) -> tuple[str | None, Path]:
        return _appa_split(csv_path), csv_path.parent / csv_path.stem.removeprefix("gt_avg_")

    return _read_apparent_files(path, "appa-real", csv_files, split_and_folder)


# ---------------------------------------------------------------------------------------
# Registry and checks
# ---------------------------------------------------------------------------------------

DATASET_FORMATS: dict[str, Callable[[Path], DatasetIndex]] = {
    "utkface": load_utkface,
    "morph": load_morph,
    "cacd": load_cacd,
    "lap2015": load_lap2015,
    "appa-real": load_appa_real,
    "mivia": load_mivia,
    "fgnet": load_fgnet,
    "afad": load_afad,
    "csv": load_manifest,
}


def load_dataset(path: str | Path, format: str, csv_columns: CsvColumns = CsvColumns()) -> DatasetIndex:
    """Load a dataset in one of the `DATASET_FORMATS` layouts.

    `csv_columns` renames the columns of the `csv` format; the other formats have fixed
    names, so renaming there is refused rather than ignored.

    Raises:
        DatasetError: Unknown format, missing path, or a dataset with no usable image.
    """
    loader = DATASET_FORMATS.get(format)
    if loader is None:
        raise DatasetError(
            f"unknown dataset format {format!r}; known: {', '.join(sorted(DATASET_FORMATS))}"
        )
    if csv_columns != CsvColumns():
        if format != "csv":
            raise DatasetError(
                f"CSV column names (data.csv_columns, --csv-column) apply to format csv only, not {format!r}"
            )
        return load_manifest(_existing(path), csv_columns)
    return loader(_existing(path))


def check_ages(samples: Iterable[AgeSample], max_age: int) -> None:
    """Fail before training if a label exceeds the model's age range.

    An age above `max_age` would silently fall outside the model's output bins, so the
    error names the first offending files and the setting that fixes it.

    Raises:
        DatasetError: If any sample's age is above `max_age`.
    """
    too_old = [s for s in samples if s.age > max_age]
    if not too_old:
        return
    examples = ", ".join(f"{s.path} (age {s.age:g})" for s in too_old[:3])
    oldest = max(s.age for s in too_old)
    raise DatasetError(
        f"{len(too_old)} sample(s) older than max_age={max_age}, e.g. {examples}; "
        f"set model.max_age >= {math.ceil(oldest)}, or data.clip_ages=true to train on them as {max_age}"
    )
