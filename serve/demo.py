"""A small generated gallery (coloured shapes) embedded with the tiny test CLIP, indexed into shards.

    python -m serve.demo --out runs/serve_demo          # then: serve run serve/config.yaml

No network, no Ray: images are drawn with PIL, embedded in-process, indexed with ``rtd.index``.
"""

from __future__ import annotations

import argparse
import logging
from pathlib import Path

from rtd.config import GalleryEmbedConfig, IndexConfig, ModelConfig

COLORS = {"red": (220, 30, 30), "green": (30, 180, 60), "blue": (40, 70, 220), "yellow": (240, 220, 40),
          "purple": (140, 50, 170), "orange": (250, 140, 20), "black": (15, 15, 15), "white": (245, 245, 245)}
SHAPES = ("circle", "square", "triangle", "bar")


def tiny_model_config() -> ModelConfig:
    """The tiny random-init open_clip model shipped for tests (``rtd/configs/models/rtd-tiny-clip.json``)."""
    root = Path(__file__).resolve().parent.parent / "rtd" / "configs" / "models"
    return ModelConfig(backend="open_clip", name="rtd-tiny-clip", pretrained=None, model_config_dir=str(root),
                       load_image_tower=True)


def draw(shape: str, fg: tuple[int, int, int], bg: tuple[int, int, int], size: int = 64):
    from PIL import Image, ImageDraw

    im = Image.new("RGB", (size, size), bg)
    d = ImageDraw.Draw(im)
    m = size // 6
    if shape == "circle":
        d.ellipse([m, m, size - m, size - m], fill=fg)
    elif shape == "square":
        d.rectangle([m, m, size - m, size - m], fill=fg)
    elif shape == "triangle":
        d.polygon([(size // 2, m), (m, size - m), (size - m, size - m)], fill=fg)
    else:
        d.rectangle([m, size // 2 - m, size - m, size // 2 + m], fill=fg)
    return im


def write_images(folder: Path, n: int) -> list[Path]:
    folder.mkdir(parents=True, exist_ok=True)
    names = list(COLORS)
    paths = []
    for i in range(n):
        shape = SHAPES[i % len(SHAPES)]
        fg = names[(i // len(SHAPES)) % len(names)]
        bg = names[(i // len(SHAPES) + 3 + i // (len(SHAPES) * len(names))) % len(names)]
        if bg == fg:
            bg = "white" if fg != "white" else "black"
        p = folder / f"{i:04d}_{fg}_{shape}_on_{bg}.png"
        draw(shape, COLORS[fg], COLORS[bg]).save(p)
        paths.append(p)
    return paths


def make_demo_index(out: str | Path, n: int = 64, num_shards: int = 2, factory: str = "Flat") -> Path:
    """Generate ``n`` images under ``out/images``, embed them (tiny CLIP) and build ``out/index``.

    Returns:
        The index folder.
    """
    from rtd.index import build_index
    from rtd.ray_adapters.embed import embed_gallery_local

    out = Path(out)
    write_images(out / "images", n)
    embed_gallery_local(GalleryEmbedConfig(kind="image", source=str(out / "images"), output=str(out / "embeddings"),
                                           model=tiny_model_config(), batch_size=64))
    build_index(IndexConfig(embeddings=str(out / "embeddings"), output=str(out / "index"), factory=factory,
                            num_shards=num_shards))
    return out / "index"


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--out", default="runs/serve_demo")
    ap.add_argument("--n", type=int, default=64)
    ap.add_argument("--shards", type=int, default=2)
    args = ap.parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    print(make_demo_index(args.out, args.n, args.shards))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
