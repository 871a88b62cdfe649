"""Listing gallery sources (folder / list file / table) for the embedding job; no model, no Ray."""

from __future__ import annotations

import json

import pytest

from rtd.config import GalleryEmbedConfig
from rtd.index import stable_id
from rtd.ray_adapters.embed import list_gallery_source


def _touch(p):
    p.parent.mkdir(parents=True, exist_ok=True)
    p.write_bytes(b"x")
    return p


def test_folder_ids_are_stable_ids_of_relative_paths(tmp_path):
    _touch(tmp_path / "g" / "b" / "2.jpg"), _touch(tmp_path / "g" / "a.png"), _touch(tmp_path / "g" / "notes.txt")
    rows = list_gallery_source(GalleryEmbedConfig(source=str(tmp_path / "g")))
    assert [json.loads(m)["path"] for m in rows["metadata"]] == ["a.png", "b/2.jpg"]
    assert rows["id"] == [stable_id("a.png"), stable_id("b/2.jpg")]
    assert rows["key"][0] == str(tmp_path / "g" / "a.png")


def test_list_file_paths_resolve_against_image_root(tmp_path):
    (tmp_path / "list.txt").write_text("# gallery\nx/1.jpg\n\nx/2.jpg\n")
    rows = list_gallery_source(GalleryEmbedConfig(source=str(tmp_path / "list.txt"), image_root="/data/imgs"))
    assert rows["key"] == ["/data/imgs/x/1.jpg", "/data/imgs/x/2.jpg"]


def test_jsonl_table_with_ids_and_extra_metadata(tmp_path):
    lines = [{"id": 3, "path": "p/3.jpg", "label": "cat"}, {"id": 4, "path": "p/4.jpg", "label": "dog"}]
    (tmp_path / "g.jsonl").write_text("\n".join(json.dumps(x) for x in lines))
    rows = list_gallery_source(GalleryEmbedConfig(source=str(tmp_path / "g.jsonl")))
    assert rows["id"] == [3, 4] and json.loads(rows["metadata"][1]) == {"path": "p/4.jpg", "label": "dog"}


def test_source_errors_name_the_field(tmp_path):
    with pytest.raises(FileNotFoundError, match="source"):
        list_gallery_source(GalleryEmbedConfig(source=str(tmp_path / "missing")))
    (tmp_path / "g.jsonl").write_text('{"id": 1, "file": "a"}\n{"id": 1, "file": "b"}')
    with pytest.raises(ValueError, match="path_column"):
        list_gallery_source(GalleryEmbedConfig(source=str(tmp_path / "g.jsonl")))
    with pytest.raises(ValueError, match="id_column"):
        list_gallery_source(GalleryEmbedConfig(source=str(tmp_path / "g.jsonl"), path_column="file"))
