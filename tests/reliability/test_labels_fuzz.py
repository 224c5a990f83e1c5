"""Label files fuzzed with hypothesis: never a crash, each bad line reported once, with its file
and line, and only the valid boxes reach training.

Each generated file mixes lines whose fate is known in advance (valid, clipped, duplicate,
non-finite, wrong column count, non-numeric, fractional class, no area, huge values) with
random separators, CRLF / CR / LF endings, blank lines and an optional BOM; the expected
labels and issues are built alongside. Random bytes and near-numeric noise check the
invariants only. Settings: ``derandomize=True`` (the same cases on every run) and no example
database (nothing written into the repository).
"""
from __future__ import annotations

import logging
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from tests.conftest import write_sample
from utils.data.datasets import YoloDataset
from utils.data.labels import LabelError, parse_label_file, read_label_lines, scan_dataset

NC = 3
IMG_HW = (100, 200)
FUZZ = settings(max_examples=100, deadline=None, database=None, derandomize=True,
                suppress_health_check=[HealthCheck.too_slow])


# --------------------------------------------------------------------------- generated lines
@dataclass
class Line:
    """One generated label line: its tokens, and the box it must give (or the issue it must raise)."""

    tokens: list[str]
    box: tuple[float, ...] | None = None  # expected [cls, cx, cy, w, h] if the box is kept
    kind: str | None = None  # expected issue kind, None for a clean line


@dataclass
class Expected:
    boxes: list[tuple[float, ...]] = field(default_factory=list)
    issues: list[tuple[str, int]] = field(default_factory=list)  # (kind, line number)


def _num(lo: float, hi: float) -> st.SearchStrategy[str]:
    return st.floats(lo, hi, allow_nan=False).map(lambda v: f"{v:.6f}")


CLS = st.integers(0, NC - 1).map(str)
INSIDE = st.tuples(CLS, _num(0.3, 0.7), _num(0.3, 0.7), _num(0.05, 0.4), _num(0.05, 0.4))
BAD_NUMBER = st.sampled_from(["nan", "NaN", "inf", "-inf", "Infinity", "1e999", "-1e400"])
WORD = st.text("abcdxyz,;#%", min_size=1, max_size=6)
HUGE = st.sampled_from(["2", "17.5", "1e6", "1e300", "1.7e308"])


def _valid(t: tuple[str, ...]) -> Line:
    return Line(list(t), tuple(float(v) for v in t))


def _replace(t: tuple[str, ...], i: int, token: str, kind: str) -> Line:
    tokens = list(t)
    tokens[i] = token
    return Line(tokens, kind=kind)


@st.composite
def label_line(draw: st.DrawFn) -> Line:
    t = draw(INSIDE)
    case = draw(st.sampled_from(["valid", "valid", "valid", "nonfinite", "columns", "word",
                                 "fraction", "no_area", "outside", "huge_box"]))
    if case == "valid":
        return _valid(t)
    if case == "nonfinite":
        return _replace(t, draw(st.integers(0, 4)), draw(BAD_NUMBER), "malformed_line")
    if case == "columns":  # too few, or an even number > 5 (neither a box nor a polygon)
        n = draw(st.sampled_from([1, 2, 3, 4, 6, 8, 10]))
        return Line((list(t) * 2)[:n], kind="malformed_line")
    if case == "word":
        return _replace(t, draw(st.integers(0, 4)), draw(WORD), "malformed_line")
    if case == "fraction":
        return _replace(t, 0, draw(st.sampled_from(["0.5", "1.25", "2.999"])), "malformed_line")
    if case == "no_area":  # zero or negative width or height
        return _replace(t, draw(st.integers(3, 4)), draw(st.sampled_from(["0", "-0.2", "-1e300"])),
                        "degenerate")
    if case == "outside":  # entirely off the image, up to float overflow
        return _replace(t, draw(st.integers(1, 2)), draw(st.sampled_from(["-5", "3", "1e308", "-1.7e308"])),
                        "degenerate")
    # huge_box: centred horizontally, far wider than the image -> clipped to the full width
    cls, _, cy, _, h = t
    return Line([cls, "0.5", cy, draw(HUGE), h], (float(cls), 0.5, float(cy), 1.0, float(h)), "clipped")


def _expected(lines: list[Line | None]) -> Expected:
    """What parse_label_file must return for ``lines`` (None = a blank line)."""
    out, seen = Expected(), set()
    for no, line in enumerate(lines, 1):
        if line is None:
            continue
        if line.box is None:
            out.issues.append((line.kind, no))
        elif line.box in seen:
            out.issues.append(("duplicate", no))  # reported once, even if it was also clipped
        else:
            seen.add(line.box)
            out.boxes.append(line.box)
            if line.kind:
                out.issues.append((line.kind, no))
    return out


@st.composite
def label_file(draw: st.DrawFn) -> tuple[bytes, Expected]:
    pool = draw(st.lists(label_line(), min_size=1, max_size=8))
    picks = st.one_of(st.none(), st.sampled_from(pool), st.sampled_from(pool))  # repeats -> duplicates
    lines = draw(st.lists(picks, min_size=1, max_size=30))
    sep = draw(st.sampled_from([" ", "\t", "  ", " \x0c ", "\x0b"]))
    eol = draw(st.sampled_from(["\n", "\r\n", "\r"]))
    text = eol.join("" if ln is None else sep.join(ln.tokens) for ln in lines)
    text += draw(st.sampled_from(["", eol]))
    bom = draw(st.sampled_from(["", "\ufeff"]))
    return (bom + text).encode("utf-8"), _expected(lines)


@pytest.fixture(scope="module")
def fuzz_file(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return tmp_path_factory.mktemp("fuzz") / "labels" / "fuzzed.txt"


def _write(path: Path, data: bytes) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_bytes(data)
    return path


def _sample(root: Path, name: str, data: bytes) -> None:
    """A plain image ``images/<name>.jpg`` with ``data`` as its label file."""
    write_sample(root, name, hw=IMG_HW, labels="")
    _write(root / "labels" / f"{name}.txt", data)


# --------------------------------------------------------------------------- properties
@FUZZ
@given(case=label_file())
def test_fuzzed_file_gives_exactly_the_valid_boxes_and_one_issue_per_bad_line(
        fuzz_file: Path, case: tuple[bytes, Expected]) -> None:
    data, expected = case
    labels, issues = parse_label_file(_write(fuzz_file, data), IMG_HW, nc=NC)
    assert labels.dtype == np.float32 and labels.shape == (len(expected.boxes), 5)
    np.testing.assert_allclose(labels, np.array(expected.boxes, np.float32).reshape(-1, 5), atol=1e-6)
    assert [(i.kind, i.line) for i in issues] == expected.issues
    assert {i.file for i in issues} <= {str(fuzz_file)}


def _assert_invariants(path: Path, labels: np.ndarray, issues: list, nc: int | None) -> None:
    """Whatever the input: finite boxes inside the image, issues naming the file, one per line."""
    n_lines = len(read_label_lines(path))
    assert labels.shape[1:] == (5,) and np.isfinite(labels).all()
    if len(labels):
        cls, xy, wh = labels[:, 0], labels[:, 1:3], labels[:, 3:5]
        assert (cls >= 0).all() and (cls == np.round(cls)).all() and (nc is None or (cls < nc).all())
        assert (wh > 0).all() and (xy - wh / 2 >= -1e-6).all() and (xy + wh / 2 <= 1 + 1e-6).all()
    lines = [i.line for i in issues]
    assert len(lines) == len(set(lines)), "a line was reported twice"
    assert all(i.file == str(path) and 1 <= i.line <= n_lines and i.describe() for i in issues)


def _parse_or_label_error(path: Path, nc: int | None) -> None:
    try:
        labels, issues = parse_label_file(path, IMG_HW, nc=nc)
    except LabelError as e:  # the one fatal case: an integer class id outside [0, nc)
        assert f"{path}:" in str(e) and "class id" in str(e)
        return
    _assert_invariants(path, labels, issues, nc)


@FUZZ
@given(data=st.binary(max_size=3000))
def test_random_bytes_never_crash(fuzz_file: Path, data: bytes) -> None:
    _parse_or_label_error(_write(fuzz_file, data), nc=NC)


NEAR_NUMERIC = st.text("0123456789.-+eE nafiINF\t\r\n\ufeff,_", max_size=400)


@FUZZ
@given(text=NEAR_NUMERIC, encoding=st.sampled_from(["utf-8", "utf-16", "latin-1"]))
def test_near_numeric_noise_never_crashes(fuzz_file: Path, text: str, encoding: str) -> None:
    _parse_or_label_error(_write(fuzz_file, text.encode(encoding, errors="replace")), nc=None)


@pytest.mark.parametrize("cls", ["3", "-1", "1e20"])
def test_class_out_of_range_names_file_and_line(fuzz_file: Path, cls: str) -> None:
    path = _write(fuzz_file, f"0 0.5 0.5 0.1 0.1\r\n\r\n{cls} 0.5 0.5 0.2 0.2\r\n".encode())
    with pytest.raises(LabelError, match=f"{path}:3: class id"):
        parse_label_file(path, IMG_HW, nc=NC)


def test_bom_crlf_and_utf16_files_keep_their_first_box(fuzz_file: Path) -> None:
    text = "1 0.5 0.5 0.2 0.2\r\n2 0.4 0.4 0.1 0.1\r\n"
    for data in (("\ufeff" + text).encode("utf-8"), text.encode("utf-16")):
        labels, issues = parse_label_file(_write(fuzz_file, data), IMG_HW, nc=NC)
        assert labels[:, 0].tolist() == [1, 2] and issues == []


# --------------------------------------------------------------------------- big files, training
def _big_label_text(rng: np.random.Generator, n: int) -> tuple[str, int, int]:
    """``n`` lines, a third of them bad; returns the text, valid boxes and bad lines."""
    lines, n_bad = [], 0
    for i in range(n):
        cx, cy = rng.uniform(0.3, 0.7, 2)
        w, h = rng.uniform(0.05, 0.2, 2)
        line = f"{i % NC} {cx:.6f} {cy:.6f} {w:.6f} {h:.6f}"
        if i % 3 == 2:
            line = [f"{i % NC} nan {cy} {w} {h}", "0 0.5 0.5", f"0 {cx} {cy} -{w} {h}"][i % 9 // 3]
            n_bad += 1
        lines.append(line)
    return "\r\n".join(lines), n - n_bad, n_bad


def test_thousands_of_lines(fuzz_file: Path) -> None:
    text, n_good, n_bad = _big_label_text(np.random.default_rng(0), 6000)
    labels, issues = parse_label_file(_write(fuzz_file, text.encode()), IMG_HW, nc=NC)
    assert len(labels) == n_good == 4000 and len(issues) == n_bad == 2000
    assert sorted(i.line for i in issues) == list(range(3, 6001, 3))


def test_training_uses_only_valid_boxes_and_reports_each_file_once(tmp_path: Path,
                                                                    caplog: pytest.LogCaptureFixture) -> None:
    text, n_good, n_bad = _big_label_text(np.random.default_rng(1), 3000)
    _sample(tmp_path, "big", text.encode())
    _sample(tmp_path, "bom", "\ufeff0 0.5 0.5 0.2 0.2\r\n0 0.5 0.5 0.2 0.2\r\n1 inf 0 0 0".encode())
    _sample(tmp_path, "clean", b"2 0.5 0.5 0.3 0.3\n")
    with caplog.at_level(logging.INFO, logger="utils.data.labels"):
        ds = YoloDataset(tmp_path / "images", img_size=64, cache_dir=tmp_path / "cache")
    counts = {Path(f).stem: len(lab) for f, lab in zip(ds.im_files, ds.labels)}
    assert counts == {"big": n_good, "bom": 1, "clean": 1}
    assert ds.report.n_boxes == n_good + 2 and len(ds.report.issues) == n_bad + 2
    assert {(Path(i.file).name, i.line) for i in ds.report.issues if "bom" in i.file} == {("bom.txt", 2), ("bom.txt", 3)}
    warnings = [r.getMessage() for r in caplog.records if r.levelno == logging.WARNING]
    assert len(warnings) == 1 and "big.txt:3" in warnings[0] and "bom.txt:2" in warnings[0]
    item_boxes = {Path(ds[i][2]).stem: len(ds[i][1]) for i in range(len(ds))}
    assert item_boxes == counts  # what a batch holds: the valid boxes, all of them
    again = YoloDataset(tmp_path / "images", img_size=64, cache_dir=tmp_path / "cache")  # from the cache
    assert all(np.array_equal(a, b) for a, b in zip(ds.labels, again.labels))
    assert len(again.report.issues) == len(ds.report.issues)


@settings(max_examples=25, deadline=None, database=None, derandomize=True,
          suppress_health_check=[HealthCheck.too_slow, HealthCheck.function_scoped_fixture])
@given(cases=st.lists(label_file(), min_size=2, max_size=3))
def test_fuzzed_dataset_trains_on_the_valid_boxes(tmp_path_factory: pytest.TempPathFactory,
                                                   cases: list[tuple[bytes, Expected]]) -> None:
    root = tmp_path_factory.mktemp("ds")
    for k, (data, _) in enumerate(cases):
        _sample(root, f"im{k}", data)
    samples, report = scan_dataset(sorted((root / "images").iterdir()), nc=NC, use_cache=False)
    assert report.n_usable == len(cases)
    for sample, (_, expected) in zip(samples, cases):
        want = np.array(expected.boxes, np.float32).reshape(-1, 5)
        np.testing.assert_allclose(sample.labels, want, atol=1e-6)
        label_file = str(root / "labels" / f"{Path(sample.im_file).stem}.txt")
        assert [(i.kind, i.line) for i in report.issues if i.file == label_file] == expected.issues
