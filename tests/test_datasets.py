"""Dataset adapters: each format is written in its real layout at test time, plus real UTKFace."""

from __future__ import annotations

import re
from pathlib import Path

import pytest
from PIL import Image

from glae.data import split_from_field
from glae.data import AgeSample, CsvColumns, DatasetError, check_ages, load_dataset

UTKFACE = Path("/work/shared/data/utkface")


def _jpeg(path: Path) -> Path:
    """A tiny real JPEG at `path`, creating parent folders."""
    path.parent.mkdir(parents=True, exist_ok=True)
    Image.new("RGB", (8, 8), (120, 90, 60)).save(path, format="JPEG")
    return path


def _write(path: Path, text: str) -> Path:
    """A text file at `path`, creating parent folders."""
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(text, encoding="utf-8")
    return path


def _by_name(samples: list[AgeSample]) -> dict[str, AgeSample]:
    return {s.path.name: s for s in samples}


def _skipped(index) -> dict[str, str]:
    return {s.path.name: s.reason for s in index.skipped}


# --- UTKFace -------------------------------------------------------------------------


def test_utkface_fixture_parses_labels_and_reports_every_skip(tmp_path: Path) -> None:
    _jpeg(tmp_path / "25_1_2_20170116174525125.jpg.chip.jpg")
    _jpeg(tmp_path / "39_1_20170116174525125.jpg.chip.jpg")
    _jpeg(tmp_path / "0_0_0_20170116174525125.jpg.chip.jpg")
    (tmp_path / "3_0_0_20170116174525125.jpg.chip.jpg").touch()
    _write(tmp_path / "README.md", "labels in names")

    index = load_dataset(tmp_path, "utkface")

    (sample,) = index.samples
    assert sample.path == tmp_path / "25_1_2_20170116174525125.jpg.chip.jpg"
    assert (sample.age, sample.age_std, sample.subject, sample.split) == (25.0, None, None, None)
    assert sample.attributes == {"gender": "female", "race": "asian"}
    assert _skipped(index) == {
        "39_1_20170116174525125.jpg.chip.jpg":
            "malformed name: 3 fields, expected 4 (age_gender_race_datetime)",
        "0_0_0_20170116174525125.jpg.chip.jpg":
            "malformed name: age '0' is not an integer in 1..116",
        "3_0_0_20170116174525125.jpg.chip.jpg": "empty file",
        "README.md": "not an image file",
    }
    assert index.summary().splitlines()[0] == "utkface: 1 images loaded, 4 skipped"


def test_real_utkface_loads_all_but_the_six_malformed_names() -> None:
    if not UTKFACE.is_dir():
        pytest.skip(f"{UTKFACE} not available")
    index = load_dataset(UTKFACE, "utkface")
    fields = "malformed name: 3 fields, expected 4 (age_gender_race_datetime)"
    assert _skipped(index) == {
        "24_0_1_20170116220224657 .jpg.chip.jpg": "malformed name: contains whitespace",
        "28_1_2_201701161846515488.jpg.chip.jpg":
            "malformed name: timestamp '201701161846515488' is not 17 digits",
        "39_1_20170116174525125.jpg.chip.jpg": fields,
        "61_1_20170109142408075.jpg.chip.jpg": fields,
        "61_1_20170109150557335.jpg.chip.jpg": fields,
        "55_0_0_20170116232725357jpg.chip.jpg":
            "malformed name: does not end with '.jpg.chip.jpg'",
        "README.md": "not an image file",
    }
    assert len(index.samples) == 18_930 - 6
    assert all(1 <= s.age <= 116 for s in index.samples)
    assert index.summary().splitlines()[0] == "utkface: 18924 images loaded, 7 skipped"


# --- Folder formats ------------------------------------------------------------------


def test_cacd_name_with_underscores_is_the_subject(tmp_path: Path) -> None:
    _jpeg(tmp_path / "53_Robin_Williams_0001.jpg")
    _jpeg(tmp_path / "23_Emma_Watson_0012.jpg")
    _jpeg(tmp_path / "Robin_Williams.jpg")
    _write(tmp_path / "README.txt", "ignored")

    index = load_dataset(tmp_path, "cacd")

    samples = _by_name(index.samples)
    assert samples["53_Robin_Williams_0001.jpg"].age == 53.0
    assert samples["53_Robin_Williams_0001.jpg"].subject == "Robin_Williams"
    assert samples["23_Emma_Watson_0012.jpg"].subject == "Emma_Watson"
    assert _skipped(index) == {"Robin_Williams.jpg": "malformed name: expected age_Name_NNNN.jpg"}


def test_fgnet_parses_subject_age_and_variant_letter(tmp_path: Path) -> None:
    _jpeg(tmp_path / "001A02.JPG")
    _jpeg(tmp_path / "010A07a.JPG")
    _jpeg(tmp_path / "photo.JPG")

    index = load_dataset(tmp_path, "fgnet")

    samples = _by_name(index.samples)
    assert (samples["001A02.JPG"].subject, samples["001A02.JPG"].age) == ("001", 2.0)
    assert (samples["010A07a.JPG"].subject, samples["010A07a.JPG"].age) == ("010", 7.0)
    assert list(_skipped(index)) == ["photo.JPG"]


@pytest.mark.parametrize("nested", [True, False])
def test_afad_reads_age_and_gender_from_folders(tmp_path: Path, nested: bool) -> None:
    base = tmp_path / "AFAD-Full" if nested else tmp_path
    _jpeg(base / "18" / "111" / "a.jpg")
    _jpeg(base / "42" / "112" / "b.jpg")
    _jpeg(base / "42" / "113" / "c.jpg")
    _write(tmp_path / "AFAD-Full.txt", "list")

    index = load_dataset(tmp_path, "afad")

    samples = _by_name(index.samples)
    assert (samples["a.jpg"].age, samples["a.jpg"].attributes) == (18.0, {"gender": "male"})
    assert (samples["b.jpg"].age, samples["b.jpg"].attributes) == (42.0, {"gender": "female"})
    assert _skipped(index) == {"c.jpg": "unexpected location: expected <age>/<111|112>/<image>"}


# --- CSV formats ---------------------------------------------------------------------


def test_morph_csv_case_insensitive_columns(tmp_path: Path) -> None:
    _jpeg(tmp_path / "Album2" / "003316_1M47.JPG")
    _jpeg(tmp_path / "Album2" / "003317_0F21.JPG")
    csv_path = _write(
        tmp_path / "morph.csv",
        "ID_NUM,picture_num,dob,doa,Race,Gender,facial_hair,AGE,age_diff,glasses,Photo\n"
        "003316,1,1/1/1950,1/1/1997,W,M,0,47,0,0,Album2/003316_1M47.JPG\n"
        "003317,0,1/1/1976,1/1/1997,B,F,0,21,0,0,Album2/003317_0F21.JPG\n"
        "003318,0,1/1/1976,1/1/1997,B,F,0,30,0,0,Album2/missing.JPG\n",
    )

    index = load_dataset(csv_path, "morph")

    samples = _by_name(index.samples)
    first = samples["003316_1M47.JPG"]
    assert first.path == tmp_path / "Album2" / "003316_1M47.JPG"
    assert (first.age, first.subject) == (47.0, "003316")
    assert first.attributes == {"race": "W", "gender": "M"}
    assert samples["003317_0F21.JPG"].attributes == {"race": "B", "gender": "F"}
    assert _skipped(index) == {"missing.JPG": "file not found"}


def test_lap2015_semicolons_and_stem_folder_lookup(tmp_path: Path) -> None:
    _jpeg(tmp_path / "Train" / "image_000001.jpg")
    _jpeg(tmp_path / "image_000002.jpg")
    csv_path = _write(
        tmp_path / "Train.csv",
        "image;mean;stdv\nimage_000001.jpg;20.5;3.25\nimage_000002.jpg;41;5\n",
    )

    index = load_dataset(csv_path, "lap2015")

    samples = _by_name(index.samples)
    assert samples["image_000001.jpg"].path == tmp_path / "Train" / "image_000001.jpg"
    assert (samples["image_000001.jpg"].age, samples["image_000001.jpg"].age_std) == (20.5, 3.25)
    assert (samples["image_000002.jpg"].age, samples["image_000002.jpg"].age_std) == (41.0, 5.0)
    assert index.skipped == []


def test_lap2015_challenge_folder_gives_the_official_split(tmp_path: Path) -> None:
    for part, name in (("Train", "a.jpg"), ("Validation", "b.jpg"), ("Test", "c.jpg")):
        _jpeg(tmp_path / part / name)
        _write(tmp_path / f"{part}.csv", f"image,mean,stdv\n{name},30,4\n")

    index = load_dataset(tmp_path, "lap2015")

    splits = {path: sample.split for path, sample in _by_name(index.samples).items()}
    assert splits == {"a.jpg": "train", "b.jpg": "val", "c.jpg": "test"}
    split = split_from_field(index.samples)
    assert [s.path.name for s in split.val] == ["b.jpg"]


def test_lap2015_image_listed_in_two_label_files_is_kept_once(tmp_path: Path) -> None:
    """``a.jpg`` next to both ``Train.csv`` and ``Test.csv``: one sample, or it would be trained on and tested on."""
    _jpeg(tmp_path / "a.jpg")
    for part in ("Train", "Test"):
        _write(tmp_path / f"{part}.csv", "image,mean,stdv\na.jpg,30,4\n")

    index = load_dataset(tmp_path, "lap2015")

    assert [sample.path.name for sample in index.samples] == ["a.jpg"]
    assert [(skip.path.name, skip.reason) for skip in index.skipped] == [("a.jpg", "listed again (its first row is kept)")]


def _appa_real(root: Path) -> None:
    """APPA-REAL layout: gt_avg_<split>.csv next to the <split>/ image folders."""
    header = "file_name,num_ratings,apparent_age_avg,apparent_age_std,real_age\n"
    for folder, name, mean in (("train", "000000.jpg", "26.5"), ("valid", "004113.jpg", "9"),
                               ("test", "005613.jpg", "70.25")):
        _jpeg(root / folder / name)
        _write(root / f"gt_avg_{folder}.csv", f"{header}{name},38,{mean},3.5,25\n")


def test_appa_real_folder_sets_splits_and_keeps_real_age(tmp_path: Path) -> None:
    _appa_real(tmp_path)

    index = load_dataset(tmp_path, "appa-real")

    samples = _by_name(index.samples)
    assert {name: s.split for name, s in samples.items()} == {
        "000000.jpg": "train", "004113.jpg": "val", "005613.jpg": "test"
    }
    train = samples["000000.jpg"]
    assert train.path == tmp_path / "train" / "000000.jpg"
    assert (train.age, train.age_std) == (26.5, 3.5)
    assert train.attributes == {"real_age": "25", "num_ratings": "38"}


def test_appa_real_single_csv(tmp_path: Path) -> None:
    _appa_real(tmp_path)

    index = load_dataset(tmp_path / "gt_avg_valid.csv", "appa-real")

    (sample,) = index.samples
    assert (sample.path.name, sample.age, sample.split) == ("004113.jpg", 9.0, "val")


@pytest.mark.parametrize("header", ["", "path,age\n"])
def test_mivia_with_and_without_header(tmp_path: Path, header: str) -> None:
    _jpeg(tmp_path / "training" / "a.jpg")
    _jpeg(tmp_path / "training" / "b.jpg")
    csv_path = _write(tmp_path / "labels.csv", f"{header}training/a.jpg,31\ntraining/b.jpg,7.5\n")

    index = load_dataset(csv_path, "mivia")

    assert {s.path.name: s.age for s in index.samples} == {"a.jpg": 31.0, "b.jpg": 7.5}


def test_generic_csv_manifest(tmp_path: Path) -> None:
    image = _jpeg(tmp_path / "faces" / "x.png")
    _jpeg(tmp_path / "faces" / "y.jpg")
    (tmp_path / "faces" / "empty.jpg").touch()
    csv_path = _write(
        tmp_path / "data" / "manifest.csv",
        f"path,age,std,subject,split,gender\n{image},30,2.5,p1,train,f\n"
        "../faces/y.jpg,40,,,test,m\n../faces/empty.jpg,50,,,test,m\n",
    )

    index = load_dataset(csv_path, "csv")

    x, y = index.samples
    assert x == AgeSample(image, 30.0, age_std=2.5, subject="p1", split="train")
    assert x.attributes == {"gender": "f"}
    assert (y.age, y.age_std, y.subject, y.split) == (40.0, None, None, "test")
    assert y.path.resolve() == (tmp_path / "faces" / "y.jpg").resolve()
    assert _skipped(index) == {"empty.jpg": "empty file"}


def test_a_file_listed_twice_is_kept_once_so_it_cannot_land_in_train_and_test(tmp_path: Path) -> None:
    for name in ("a.jpg", "b.jpg"):
        _jpeg(tmp_path / name)
    csv_path = _write(tmp_path / "manifest.csv", "path,age\na.jpg,30\nb.jpg,40\n./a.jpg,31\nb.jpg,40\n")
    index = load_dataset(csv_path, "csv")
    assert [(s.path.name, s.age) for s in index.samples] == [("a.jpg", 30.0), ("b.jpg", 40.0)]
    assert [(s.path.name, s.reason) for s in index.skipped] == [("a.jpg", "listed again (its first row is kept)"), ("b.jpg", "listed again (its first row is kept)")]


def test_a_broken_csv_is_one_error_naming_the_file_and_line(tmp_path: Path) -> None:
    _jpeg(tmp_path / "a.jpg")
    rows = "".join(f"a{i}.jpg,30\n" for i in range(3)) + '"a.jpg,30\n' + "x" * 140_000 + "\n"
    csv_path = _write(tmp_path / "manifest.csv", "path,age\n" + rows)
    with pytest.raises(DatasetError, match=re.escape(f"{csv_path}:") + r"\d+: not a valid CSV"):
        load_dataset(csv_path, "csv")


def test_an_image_given_as_a_csv_is_one_error_naming_the_file(tmp_path: Path) -> None:
    image = _jpeg(tmp_path / "faces.csv")
    with pytest.raises(DatasetError, match=re.escape(f"{image}: not a UTF-8 text file")):
        load_dataset(image, "csv")


def test_csv_manifest_with_renamed_columns(tmp_path: Path) -> None:
    """A table with its own column names (any case) reads like a manifest with the default names;
    a column that now names no label, here `path`, is kept as an attribute like any other."""
    _jpeg(tmp_path / "faces" / "x.jpg")
    _jpeg(tmp_path / "faces" / "y.jpg")
    csv_path = _write(
        tmp_path / "table.csv",
        "File,Real_Age,SD,person,part,path\nfaces/x.jpg,30,2.5,p1,train,a\nfaces/y.jpg,41.5,,p2,test,b\n",
    )
    names = CsvColumns(path="file", age="Real_Age", std="sd", subject="PERSON", split="part")

    x, y = load_dataset(csv_path, "csv", names).samples

    assert x == AgeSample(tmp_path / "faces" / "x.jpg", 30.0, age_std=2.5, subject="p1", split="train")
    assert y == AgeSample(tmp_path / "faces" / "y.jpg", 41.5, subject="p2", split="test")
    assert (x.attributes, y.attributes) == ({"path": "a"}, {"path": "b"})


def test_csv_renamed_column_that_is_missing_names_the_columns_found(tmp_path: Path) -> None:
    csv_path = _write(tmp_path / "m.csv", "path,age\na.jpg,3\n")
    with pytest.raises(DatasetError) as error:
        load_dataset(csv_path, "csv", CsvColumns(age="real_age"))
    assert str(error.value) == (
        f"{csv_path}: missing required column 'real_age' for the age (rename it with "
        "data.csv_columns.age or --csv-column age=NAME); columns found: path, age"
    )


def test_csv_column_names_for_another_format_are_refused(tmp_path: Path) -> None:
    _jpeg(tmp_path / "25_1_2_20170116174525125.jpg.chip.jpg")
    with pytest.raises(DatasetError, match="apply to format csv only, not 'utkface'"):
        load_dataset(tmp_path, "utkface", CsvColumns(path="file"))


# --- Errors --------------------------------------------------------------------------


def test_missing_path_is_fatal(tmp_path: Path) -> None:
    with pytest.raises(DatasetError, match="nowhere does not exist"):
        load_dataset(tmp_path / "nowhere", "cacd")


@pytest.mark.parametrize("format", ["utkface", "cacd", "fgnet", "afad"])
def test_folder_without_images_is_fatal(tmp_path: Path, format: str) -> None:
    _write(tmp_path / "README.md", "no images here")
    with pytest.raises(DatasetError, match=re.escape(f"{tmp_path}: no image files found")):
        load_dataset(tmp_path, format)


def test_unknown_format(tmp_path: Path) -> None:
    with pytest.raises(DatasetError, match="unknown dataset format 'imdb'"):
        load_dataset(tmp_path, "imdb")


def test_csv_without_age_column_names_file_and_columns(tmp_path: Path) -> None:
    csv_path = _write(tmp_path / "m.csv", "path,years\na.jpg,3\n")
    with pytest.raises(DatasetError) as error:
        load_dataset(csv_path, "csv")
    message = str(error.value)
    assert str(csv_path) in message
    assert "missing required column 'age'" in message
    assert "columns found: path, years" in message


@pytest.mark.parametrize(
    ("age", "problem"),
    [("abc", "is not a number"), ("-3", "is negative"), ("nan", "is not a finite number")],
)
def test_bad_age_names_file_and_line(tmp_path: Path, age: str, problem: str) -> None:
    _jpeg(tmp_path / "a.jpg")
    csv_path = _write(tmp_path / "m.csv", f"path,age\na.jpg,20\na.jpg,{age}\n")
    with pytest.raises(DatasetError, match=re.escape(f"{csv_path}:3: age '{age}' {problem}")):
        load_dataset(csv_path, "csv")


def test_short_csv_row_is_fatal(tmp_path: Path) -> None:
    csv_path = _write(tmp_path / "m.csv", "path,age\na.jpg\n")
    with pytest.raises(DatasetError, match=re.escape(f"{csv_path}:2: expected 2 columns, found 1")):
        load_dataset(csv_path, "csv")


def test_csv_row_with_values_past_the_last_column_is_fatal(tmp_path: Path) -> None:
    """``a.jpg,30,5`` under ``path,age`` is an unquoted decimal comma (30,5), not age 30."""
    csv_path = _write(tmp_path / "m.csv", "path,age\na.jpg,30,5\n")
    with pytest.raises(DatasetError, match=re.escape(f"{csv_path}:2: expected 2 columns, found 3")):
        load_dataset(csv_path, "csv")


def test_csv_row_with_trailing_empty_cells_still_loads(tmp_path: Path) -> None:
    """Spreadsheets often export ``a.jpg,30,,``: empty cells past the header are no data."""
    _jpeg(tmp_path / "a.jpg")
    csv_path = _write(tmp_path / "m.csv", "path,age\na.jpg,30,,\n")
    assert [sample.age for sample in load_dataset(csv_path, "csv").samples] == [30.0]


def test_delimiter_is_read_from_the_first_non_blank_line(tmp_path: Path) -> None:
    _jpeg(tmp_path / "a.jpg")
    csv_path = _write(tmp_path / "Train.csv", "\nimage;mean;stdv\na.jpg;30;4\n")
    assert [(s.age, s.age_std) for s in load_dataset(csv_path, "lap2015").samples] == [(30.0, 4.0)]


def test_all_rows_skipped_is_fatal(tmp_path: Path) -> None:
    csv_path = _write(tmp_path / "m.csv", "path,age\ngone.jpg,20\n")
    with pytest.raises(DatasetError, match="no usable images.*gone.jpg: file not found"):
        load_dataset(csv_path, "csv")


def test_check_ages_names_offenders_and_fix(tmp_path: Path) -> None:
    samples = [AgeSample(tmp_path / "a.jpg", 30), AgeSample(tmp_path / "b.jpg", 101.5)]
    check_ages(samples, max_age=110)
    with pytest.raises(DatasetError) as error:
        check_ages(samples, max_age=100)
    message = str(error.value)
    assert "1 sample(s)" in message and "b.jpg (age 101.5)" in message
    assert "set model.max_age >= 102" in message
    check_ages([AgeSample(tmp_path / "oldest.jpg", 116.0)], max_age=116)  # UTKFace's oldest faces fit K = 116 exactly


@pytest.mark.parametrize(
    ("code", "attributes"),
    [("0_0", {"gender": "male", "race": "white"}), ("1_1", {"gender": "female", "race": "black"}),
     ("0_2", {"gender": "male", "race": "asian"}), ("1_3", {"gender": "female", "race": "indian"}),
     ("0_4", {"gender": "male", "race": "other"})],
)
def test_utkface_gender_and_race_codes(tmp_path: Path, code: str, attributes: dict[str, str]) -> None:
    """The dataset's own legend (age_gender_race_datetime): the MORPH-style protocol filters on race."""
    _jpeg(tmp_path / f"25_{code}_20170116174525125.jpg.chip.jpg")
    (sample,) = load_dataset(tmp_path, "utkface").samples
    assert sample.attributes == attributes
