"""LinCIR keyword masking for text-only phi training (METHOD.md 4.2).

``spacy``: every maximal run of NOUN/PROPN/ADJ/DET tokens (en_core_web_sm) is a keyword span; spans are replaced
by the placeholder in order; at the first span that is empty or not found, one random word is masked instead
(LinCIR's rule). Needs spaCy and ``en_core_web_sm``; when either is missing the ``span`` rule is used (logged once).

``span`` (deterministic fallback, documented): one run of 1..``max_span`` adjacent content words (alphabetic,
>= 3 letters, not a stop-word) is replaced by the placeholder; PROXY_BASELINES.md measured that this masks enough of
the caption for phi to learn the reference (single-word masking leaves cos(pred, target) ~ 0.83 from the start).

``word``: one random content word. ``full_mask_prob``: the whole caption becomes the plain prompt.
"""

from __future__ import annotations

import logging
import random
import re
from functools import lru_cache

logger = logging.getLogger(__name__)

STOP_WORDS = frozenset(
    "a an the and or but of in on at to for with by from up down over under into onto off out as is are was were be "
    "been being it its this that these those there here their his her him she he they them we you your our my me i "
    "some any each every all both few more most other such no nor not only own same so than too very can will just "
    "has have had do does did while near next behind front top bottom side left right very".split()
)
_WORD = re.compile(r"[A-Za-z]{3,}")


@lru_cache(maxsize=1)
def _spacy_model():
    try:
        import spacy

        return spacy.load("en_core_web_sm", disable=["ner", "lemmatizer"])
    except Exception as e:  # ImportError or OSError (model not installed)
        logger.warning("spaCy en_core_web_sm unavailable (%s): using the deterministic 'span' masking rule", e)
        return None


def _content_positions(words: list[str]) -> list[int]:
    return [i for i, w in enumerate(words) if _WORD.fullmatch(w.strip(".,!?;:'\"()")) and w.lower() not in STOP_WORDS]


def mask_span(caption: str, rng: random.Random, placeholder: str = "$", max_span: int = 3) -> str | None:
    words = caption.split()
    content = _content_positions(words)
    if not content:
        return None
    start = rng.choice(content)
    length = rng.randint(1, max_span)
    end = start
    while end + 1 < len(words) and end + 1 - start < length and (end + 1) in content:
        end += 1
    return " ".join(words[:start] + [placeholder] + words[end + 1 :])


def mask_word(caption: str, rng: random.Random, placeholder: str = "$") -> str | None:
    return mask_span(caption, rng, placeholder, max_span=1)


def mask_spacy(caption: str, rng: random.Random, placeholder: str = "$") -> str | None:
    nlp = _spacy_model()
    if nlp is None:
        return mask_span(caption, rng, placeholder)
    spans, cur = [], []
    for tok in nlp(caption):
        if tok.pos_ in ("NOUN", "PROPN", "ADJ", "DET"):
            cur.append(tok.text)
        elif cur:
            spans.append(" ".join(cur))
            cur = []
    if cur:
        spans.append(" ".join(cur))
    masked = caption
    for span in spans or [""]:
        if span and span in masked:
            masked = masked.replace(span, placeholder)
        else:
            words = caption.split(" ")
            w = rng.choice(words) if words else ""
            if w:
                masked = masked.replace(w, placeholder)
            break
    return masked if placeholder in masked else None


def mask_caption(caption: str, rng: random.Random, mode: str = "span", placeholder: str = "$", max_span: int = 3,
                 full_mask_prob: float = 0.0, plain_prompt: str = "a photo of $") -> str:
    """The masked caption phi must reconstruct; falls back to the plain prompt when nothing can be masked."""
    if full_mask_prob and rng.random() < full_mask_prob:
        return plain_prompt
    if mode == "spacy":
        out = mask_spacy(caption, rng, placeholder)
    elif mode == "word":
        out = mask_word(caption, rng, placeholder)
    else:
        out = mask_span(caption, rng, placeholder, max_span)
    return out if out else plain_prompt
