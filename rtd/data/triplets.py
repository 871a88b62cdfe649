"""Triplet schema, row validation and the LinCIR caption cleaning (METHOD.md 4.2 step 1)."""

from __future__ import annotations

import csv
import gzip
import json
from collections import Counter
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Iterable, Iterator, Sequence

from rtd.config import FieldMap

BAD_ROW_REASONS = ("missing", "empty", "non_string", "too_long", "malformed")


@dataclass(frozen=True)
class Triplet:
    reference: str  # T_r
    conditioning: str  # T_c
    target: str  # T_t


class BadRowError(ValueError):
    """A training row failed validation with ``on_bad_rows=fail``; the message names file, row and field."""


@dataclass
class RowStats:
    """Counts of rows read, kept and skipped per reason (reported in metrics and the run summary)."""

    read: int = 0
    kept: int = 0
    bad: Counter = field(default_factory=Counter)

    def as_metrics(self, prefix: str = "data/") -> dict[str, int]:
        out = {f"{prefix}rows_read": self.read, f"{prefix}rows_kept": self.kept}
        for reason in BAD_ROW_REASONS:
            out[f"{prefix}bad_rows/{reason}"] = int(self.bad.get(reason, 0))
        return out


def clean_caption(text: Any) -> str:
    """LinCIR cleaning: None -> "", ``<PERSON>`` -> person, lower-case, delete ``$``, strip."""
    if text is None:
        return ""
    return str(text).replace("<PERSON>", "person").lower().replace("$", "").strip()


def check_fields(row: dict[str, Any], names: Sequence[str], max_chars: int) -> tuple[list[str] | None, str | None, str | None]:
    """The one row rule (local and Ray ingest): every named field present, a string, non-empty and at most
    ``max_chars`` long. Returns (values, None, None) or (None, reason, field)."""
    vals = []
    for name in names:
        v = row.get(name)
        if v is None:
            return None, "missing", name
        if not isinstance(v, str):
            return None, "non_string", name
        if not v.strip():
            return None, "empty", name
        if len(v) > max_chars:
            return None, "too_long", name
        vals.append(v)
    return vals, None, None


def validate_row(row: dict[str, Any], fields: FieldMap, max_chars: int) -> tuple[Triplet | None, str | None, str | None]:
    """Returns (triplet, None, None) or (None, reason, field_name)."""
    vals, reason, name = check_fields(row, (fields.reference, fields.conditioning, fields.target), max_chars)
    return (Triplet(*vals), None, None) if vals is not None else (None, reason, name)


def _open_text(path: Path):
    return gzip.open(path, "rt", encoding="utf-8") if path.suffix == ".gz" else open(path, encoding="utf-8")


def _fmt_of(path: Path, fmt: str) -> str:
    if fmt != "auto":
        return fmt
    suffixes = [s for s in path.suffixes if s != ".gz"]
    ext = suffixes[-1] if suffixes else ""
    return {".jsonl": "jsonl", ".json": "json", ".parquet": "parquet", ".csv": "csv", ".txt": "txt"}.get(ext, "jsonl")


def iter_rows(path: str | Path, fmt: str = "auto") -> Iterator[tuple[int, dict[str, Any]]]:
    """Rows of one local file as (row number, dict). Malformed JSON lines yield ``{"__error__": msg}``."""
    path = Path(path)
    kind = _fmt_of(path, fmt)
    if kind == "parquet":
        import pyarrow.parquet as pq

        for i, row in enumerate(pq.read_table(path).to_pylist()):
            yield i, row
    elif kind == "csv":
        with _open_text(path) as f:
            for i, row in enumerate(csv.DictReader(f)):
                yield i, row
    elif kind == "json":
        with _open_text(path) as f:
            data = json.load(f)
        if not isinstance(data, list):
            raise BadRowError(f"{path}: a JSON triplet file must hold an array of objects")
        for i, row in enumerate(data):
            yield i, row if isinstance(row, dict) else {"__error__": "not an object"}
    elif kind == "txt":
        with _open_text(path) as f:
            for i, line in enumerate(f):
                yield i, {"caption": line.rstrip("\n")}
    else:
        with _open_text(path) as f:
            for i, line in enumerate(f):
                if not line.strip():
                    continue
                try:
                    row = json.loads(line)
                except json.JSONDecodeError as e:
                    row = {"__error__": f"invalid JSON: {e}"}
                yield i, row if isinstance(row, dict) else {"__error__": "not an object"}


def expand_paths(paths: Iterable[str]) -> list[Path]:
    out: list[Path] = []
    for p in paths:
        pp = Path(p)
        if pp.is_dir():
            out.extend(sorted(x for x in pp.rglob("*") if x.is_file() and not x.name.startswith(".")))
        elif pp.exists():
            out.append(pp)
        else:
            raise FileNotFoundError(f"training data path {p} does not exist")
    return out


def load_triplets(paths: Iterable[str], fields: FieldMap = FieldMap(), fmt: str = "auto", max_chars: int = 1000,
                  on_bad_rows: str = "skip") -> tuple[list[Triplet], RowStats]:
    """Read and validate local triplet files (the Ray-free path; Ray Data does the same in ``ray_adapters``).

    Raises:
        BadRowError: with ``on_bad_rows="fail"``, at the first bad row, naming file, row and field.
    """
    stats = RowStats()
    out: list[Triplet] = []
    for path in expand_paths(paths):
        for i, row in iter_rows(path, fmt):
            stats.read += 1
            if "__error__" in row:
                reason, name = "malformed", "<row>"
            else:
                trip, reason, name = validate_row(row, fields, max_chars)
                if trip is not None:
                    stats.kept += 1
                    out.append(trip)
                    continue
            if on_bad_rows == "fail":
                detail = f" ({row['__error__']})" if "__error__" in row else ""
                raise BadRowError(f"{path} row {i}: field {name!r} is {reason}{detail}")
            stats.bad[reason] += 1
    return out, stats


def load_captions(paths: Iterable[str], field_name: str = "caption", fmt: str = "auto", max_chars: int = 1000,
                  on_bad_rows: str = "skip") -> tuple[list[str], RowStats]:
    """Captions for phi training (one text field per row)."""
    stats = RowStats()
    out = []
    for path in expand_paths(paths):
        for i, row in iter_rows(path, fmt):
            stats.read += 1
            vals, reason, _ = (None, "malformed", None) if "__error__" in row else check_fields(
                row, (field_name,), max_chars)
            if reason is None:
                stats.kept += 1
                out.append(vals[0])
            elif on_bad_rows == "fail":
                raise BadRowError(f"{path} row {i}: field {field_name!r} is {reason}")
            else:
                stats.bad[reason] += 1
    return out, stats
