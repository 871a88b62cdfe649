#!/usr/bin/env python3
"""Build the vendored text-proxy data under ``data/text_proxy`` from the shared annotation snapshots.

The text proxy of composed image retrieval replaces every image by its BLIP-2 caption: a query is
(caption of the reference image, human modification text) and the gallery is the captions of the split's
images (docs: PROXY_BASELINES.md). This script joins the official CIRR / FashionIQ annotations with the
DQU-CIR BLIP-2 captions and also converts the InstructPix2Pix human triplets and the COCO val2017 captions
into training files. It uses only the Python standard library and writes deterministic gzip files (mtime 0),
so rebuilding from the same inputs gives byte-identical outputs.

CIRCO and GeneCIS annotations are CC BY-NC 4.0 and are deliberately NOT vendored.

Usage:
    python scripts/build_text_proxy.py --shared ../shared/data --out data/text_proxy

Outputs (all gzipped JSON Lines, one object per line):
    cirr_val.queries.jsonl.gz        pairid, reference, target, caption, members, reference_caption
    cirr_val.gallery.jsonl.gz        id, caption                        (split.rc2.val.json order)
    fiq_val_{cat}.queries.jsonl.gz   candidate, target, captions[2], reference_caption
    fiq_val_{cat}.gallery.jsonl.gz   id, caption                        (split.{cat}.val.json order)
    cirr_train.triplets.jsonl.gz     reference, target, reference_caption, conditioning_caption, target_caption
    cirr_train.captions.jsonl.gz     caption                            (unique, first-seen order)
    ip2p.triplets.jsonl.gz           reference_caption, conditioning_caption, target_caption
    coco_val2017.captions.jsonl.gz   caption, image_id                  (annotation order)
    MANIFEST.json                    row counts, sizes and sha256 of every file above
"""

from __future__ import annotations

import argparse
import ast
import gzip
import hashlib
import io
import json
import sys
from pathlib import Path
from typing import Any, Iterable

FIQ_CATEGORIES = ("dress", "shirt", "toptee")


class BuildError(RuntimeError):
    """An input file is missing or does not have the expected structure."""


def _load_json(path: Path) -> Any:
    if not path.is_file():
        raise BuildError(f"missing input file: {path}")
    try:
        with path.open("r", encoding="utf-8") as f:
            return json.load(f)
    except json.JSONDecodeError as e:
        raise BuildError(f"{path}: not valid JSON ({e})") from e


def _field(row: Any, key: str, path: Path, index: int | str) -> Any:
    if not isinstance(row, dict):
        raise BuildError(f"{path}: row {index} is {type(row).__name__}, expected an object")
    if key not in row:
        raise BuildError(f"{path}: row {index} has no key {key!r} (keys: {sorted(row)})")
    return row[key]


def _write_jsonl_gz(rows: Iterable[dict[str, Any]], path: Path) -> int:
    """Write rows as deterministic gzipped JSON Lines; returns the row count."""
    buf = io.BytesIO()
    n = 0
    # mtime=0 and an empty embedded file name make the output byte-reproducible.
    with gzip.GzipFile(filename="", mode="wb", fileobj=buf, compresslevel=9, mtime=0) as gz:
        for row in rows:
            gz.write((json.dumps(row, ensure_ascii=False, separators=(",", ":")) + "\n").encode("utf-8"))
            n += 1
    path.write_bytes(buf.getvalue())
    return n


def _caption_lookup(captions: dict[str, str], key: str, path: Path) -> str:
    try:
        cap = captions[key]
    except KeyError:
        raise BuildError(f"{path}: no caption for image {key!r}") from None
    if not isinstance(cap, str) or not cap.strip():
        raise BuildError(f"{path}: caption of {key!r} is empty or not a string")
    return cap.strip()


# --------------------------------------------------------------------------------------------------- CIRR


def build_cirr_val(shared: Path) -> tuple[list[dict], list[dict]]:
    cap_path = shared / "CIRR/captions/cap.rc2.val.json"
    split_path = shared / "CIRR/image_splits/split.rc2.val.json"
    blip_path = shared / "DQU-CIR/data/CIRR/image_captions_cirr_val.json"
    rows, split, blip = _load_json(cap_path), _load_json(split_path), _load_json(blip_path)
    if not isinstance(split, dict):
        raise BuildError(f"{split_path}: expected an object image name -> relative path")
    gallery = [{"id": name, "caption": _caption_lookup(blip, name, blip_path)} for name in split]
    queries = []
    for i, r in enumerate(rows):
        img_set = _field(r, "img_set", cap_path, i)
        members = _field(img_set, "members", cap_path, i)
        ref, tgt = _field(r, "reference", cap_path, i), _field(r, "target_hard", cap_path, i)
        for name in (ref, tgt, *members):
            if name not in split:
                raise BuildError(f"{cap_path}: row {i} names image {name!r}, which is not in {split_path}")
        queries.append(
            {
                "pairid": int(_field(r, "pairid", cap_path, i)),
                "reference": ref,
                "target": tgt,
                "caption": _field(r, "caption", cap_path, i),
                "members": list(members),
                "reference_caption": _caption_lookup(blip, ref, blip_path),
            }
        )
    return queries, gallery


def _parse_mod_value(value: Any, path: Path, key: str) -> tuple[str, Any]:
    # Train values are JSON lists; val/test1 values are the string repr of a Python list.
    if isinstance(value, str):
        try:
            value = ast.literal_eval(value)
        except (ValueError, SyntaxError) as e:
            raise BuildError(f"{path}: value of {key!r} is neither a list nor a list literal") from e
    if not isinstance(value, (list, tuple)) or len(value) < 1 or not isinstance(value[0], str):
        raise BuildError(f"{path}: value of {key!r} must be [modification, keywords], got {value!r:.80}")
    return value[0], value[1] if len(value) > 1 else None


def build_cirr_train(shared: Path) -> tuple[list[dict], list[dict]]:
    mods_path = shared / "DQU-CIR/data/CIRR/keywords_in_mods_cirr_train.json"
    blip_path = shared / "DQU-CIR/data/CIRR/image_captions_cirr_train.json"
    mods, blip = _load_json(mods_path), _load_json(blip_path)
    triplets = []
    for key, value in mods.items():
        parts = key.split("+")
        if len(parts) != 2:
            raise BuildError(f"{mods_path}: key {key!r} is not '<reference>+<target>'")
        ref, tgt = parts
        modification, _keywords = _parse_mod_value(value, mods_path, key)
        triplets.append(
            {
                "reference": ref,
                "target": tgt,
                "reference_caption": _caption_lookup(blip, ref, blip_path),
                "conditioning_caption": modification.strip(),
                "target_caption": _caption_lookup(blip, tgt, blip_path),
            }
        )
    seen: dict[str, None] = {}
    for name in blip:
        seen.setdefault(_caption_lookup(blip, name, blip_path), None)
    captions = [{"caption": c} for c in seen]
    return triplets, captions


# --------------------------------------------------------------------------------------------------- FashionIQ


def build_fiq_val(shared: Path, category: str) -> tuple[list[dict], list[dict]]:
    cap_path = shared / f"fashion-iq/captions/cap.{category}.val.json"
    split_path = shared / f"fashion-iq/image_splits/split.{category}.val.json"
    blip_path = shared / f"DQU-CIR/data/FashionIQ/captions/image_captions_{category}_val.json"
    rows, split, blip = _load_json(cap_path), _load_json(split_path), _load_json(blip_path)
    gallery = [{"id": asin, "caption": _caption_lookup(blip, asin, blip_path)} for asin in split]
    split_set = set(split)
    queries = []
    for i, r in enumerate(rows):
        cand, tgt = _field(r, "candidate", cap_path, i), _field(r, "target", cap_path, i)
        caps = _field(r, "captions", cap_path, i)
        if not isinstance(caps, list) or len(caps) != 2:
            raise BuildError(f"{cap_path}: row {i} key 'captions' must be a list of 2 strings")
        if tgt not in split_set:
            raise BuildError(f"{cap_path}: row {i} target {tgt!r} is not in {split_path}")
        queries.append(
            {
                "candidate": cand,
                "target": tgt,
                "captions": caps,
                "reference_caption": _caption_lookup(blip, cand, blip_path),
            }
        )
    return queries, gallery


# --------------------------------------------------------------------------------------------------- training text


def build_ip2p(shared: Path) -> list[dict]:
    path = shared / "instruct-pix2pix-human-written-prompts/human-written-prompts.jsonl"
    if not path.is_file():
        raise BuildError(f"missing input file: {path}")
    out = []
    with path.open("r", encoding="utf-8") as f:
        for i, line in enumerate(f):
            if not line.strip():
                continue
            try:
                r = json.loads(line)
            except json.JSONDecodeError as e:
                raise BuildError(f"{path}: line {i + 1} is not valid JSON ({e})") from e
            out.append(
                {
                    "reference_caption": _field(r, "input", path, i).strip(),
                    "conditioning_caption": _field(r, "edit", path, i).strip(),
                    "target_caption": _field(r, "output", path, i).strip(),
                }
            )
    return out


def build_coco(shared: Path) -> list[dict]:
    path = shared / "coco-captions-val2017/captions_val2017.json"
    data = _load_json(path)
    anns = _field(data, "annotations", path, "<root>")
    out = []
    for i, a in enumerate(anns):
        cap = " ".join(str(_field(a, "caption", path, i)).split())
        out.append({"caption": cap, "image_id": int(_field(a, "image_id", path, i))})
    return out


# --------------------------------------------------------------------------------------------------- main


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--shared", type=Path, required=True, help="the shared data folder (holds SOURCES.md)")
    ap.add_argument("--out", type=Path, default=Path("data/text_proxy"))
    args = ap.parse_args(argv)

    out: Path = args.out
    out.mkdir(parents=True, exist_ok=True)
    files: dict[str, list[dict]] = {}
    files["cirr_val.queries"], files["cirr_val.gallery"] = build_cirr_val(args.shared)
    for cat in FIQ_CATEGORIES:
        files[f"fiq_val_{cat}.queries"], files[f"fiq_val_{cat}.gallery"] = build_fiq_val(args.shared, cat)
    files["cirr_train.triplets"], files["cirr_train.captions"] = build_cirr_train(args.shared)
    files["ip2p.triplets"] = build_ip2p(args.shared)
    files["coco_val2017.captions"] = build_coco(args.shared)

    manifest: dict[str, Any] = {"generator": "scripts/build_text_proxy.py", "files": {}}
    total = 0
    for stem, rows in files.items():
        path = out / f"{stem}.jsonl.gz"
        n = _write_jsonl_gz(rows, path)
        data = path.read_bytes()
        total += len(data)
        manifest["files"][path.name] = {
            "rows": n,
            "bytes": len(data),
            "sha256": hashlib.sha256(data).hexdigest(),
        }
        sys.stdout.write(f"{path}: {n} rows, {len(data) / 1024:.1f} KiB\n")
    (out / "MANIFEST.json").write_text(json.dumps(manifest, indent=2, sort_keys=True) + "\n", encoding="utf-8")
    sys.stdout.write(f"total {total / 1024 / 1024:.2f} MiB in {len(files)} files\n")
    return 0


if __name__ == "__main__":
    try:
        sys.exit(main())
    except BuildError as e:
        sys.stderr.write(f"build_text_proxy: error: {e}\n")
        sys.exit(2)
