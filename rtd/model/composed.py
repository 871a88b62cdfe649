"""The one composed-query path used by training-time validation, offline evaluation and Serve.

query = normalize( psi_T^theta( template(T_c) with $ := phi(reference embedding) ) )
gallery = normalize( frozen image tower(image) )  or, for the text proxy, normalize( psi_T^0(caption) )
"""

from __future__ import annotations

import logging
import os
from pathlib import Path
from typing import Any, Sequence

import torch
import torch.nn.functional as F
import yaml
from torch import nn

from rtd.config import ModelConfig, PromptConfig, ProjectorConfig, TrainConfig
from rtd.model.backends import MODEL_INIT_SEED, EncoderBundle, TextTower, build_encoders
from rtd.model.checkpoint import MODEL_FILE, PHI_FILE, load_text_tower
from rtd.model.projector import build_projector, load_projector_state

logger = logging.getLogger(__name__)


def clean_modification(text: str, placeholder: str = "$") -> str:
    """Modification texts may not contain the placeholder (it would receive the pseudo token)."""
    return " ".join(str(text).replace(placeholder, " ").split())


class ComposedQueryEncoder(nn.Module):
    """Composed queries (reference embedding + modification text) and gallery embeddings.

    Args:
        bundle: the frozen encoders (text, optional image) and tokenizer.
        query_tower: the text tower that encodes queries (the RTD-trained copy, or the frozen one for the base
            method).
        phi: the frozen projector.
        prompts: prompt templates (``composed`` for reference + text, ``plain`` for reference only).
    """

    def __init__(self, bundle: EncoderBundle, query_tower: TextTower, phi: nn.Module, prompts: PromptConfig,
                 checkpoint: str | None = None):
        super().__init__()
        self.bundle = bundle
        self.query_tower = query_tower
        self.phi = phi.eval()
        self.prompts = prompts
        self.checkpoint = checkpoint

    @property
    def device(self) -> torch.device:
        return next(self.bundle.text.parameters()).device

    @property
    def embed_dim(self) -> int:
        return self.bundle.embed_dim

    @property
    def fingerprint(self) -> str:
        return self.bundle.fingerprint

    # ---------------------------------------------------------------- reference side
    @torch.no_grad()
    def encode_reference_texts(self, texts: Sequence[str], batch_size: int = 256) -> torch.Tensor:
        """Frozen text embeddings [N, D]: what phi sees in place of an image embedding (text proxy, training)."""
        return self.bundle.encode_frozen_text(list(texts), batch_size=batch_size)

    @torch.no_grad()
    def encode_reference_images(self, images: Sequence[Any], batch_size: int = 64) -> torch.Tensor:
        """Frozen image embeddings [N, D], un-normalised (phi's input, METHOD.md 3.2 step 1)."""
        if self.bundle.image is None or self.bundle.preprocess is None:
            raise ValueError(f"backend {self.bundle.cfg.backend} was built without an image tower "
                             "(set model.load_image_tower=true)")
        out = []
        for i in range(0, len(images), batch_size):
            px = torch.stack([self.bundle.preprocess(im) for im in images[i : i + batch_size]]).to(self.device)
            out.append(self.bundle.image(px).float())
        return torch.cat(out) if out else torch.zeros(0, self.embed_dim)

    # ---------------------------------------------------------------- queries
    @torch.no_grad()
    def pseudo_tokens(self, ref_emb: torch.Tensor) -> torch.Tensor:
        return self.phi(ref_emb.to(self.device).float())  # [N, d_tok]

    @torch.no_grad()
    def encode_queries(self, ref_emb: torch.Tensor | None, texts: Sequence[str | None], template: str | None = None,
                       batch_size: int = 256) -> torch.Tensor:
        """L2-normalised query embeddings [N, D].

        Args:
            ref_emb: [N, D] reference embeddings (image or frozen caption embedding), or None for text-only queries.
            texts: modification texts; with ``ref_emb`` set, an empty/None text gives the reference-only prompt.
            template: overrides ``prompts.composed`` (must contain the placeholder and ``{}``).
        """
        ph = self.prompts.placeholder
        template = template or self.prompts.composed
        prompts = []
        for t in texts:
            t = clean_modification(t or "", ph)
            if ref_emb is None:
                prompts.append(t)
            else:
                prompts.append(template.format(t) if t else self.prompts.plain)
        out = []
        self.query_tower.eval()
        for i in range(0, len(prompts), batch_size):
            tb = self.bundle.tokenizer(prompts[i : i + batch_size]).to(self.device)
            pseudo = None if ref_emb is None else self.pseudo_tokens(ref_emb[i : i + batch_size])
            out.append(self.query_tower(tb.ids, tb.mask, pseudo).float())
        q = torch.cat(out) if out else torch.zeros(0, self.embed_dim)
        return F.normalize(q, dim=-1)

    # ---------------------------------------------------------------- gallery side
    @torch.no_grad()
    def encode_gallery_texts(self, texts: Sequence[str], batch_size: int = 256) -> torch.Tensor:
        return F.normalize(self.bundle.encode_frozen_text(list(texts), batch_size=batch_size), dim=-1)

    @torch.no_grad()
    def encode_gallery_images(self, images: Sequence[Any], batch_size: int = 64) -> torch.Tensor:
        return F.normalize(self.encode_reference_images(images, batch_size=batch_size), dim=-1)

    # ---------------------------------------------------------------- swapping
    def load_text_checkpoint(self, path: str | os.PathLike[str] | None) -> None:
        """Swap the query tower's weights (None = back to the frozen pretrained tower). Image tower, phi and
        any gallery index are untouched, so no re-indexing is needed."""
        if path is None:
            self.query_tower = self.bundle.text
        else:
            if self.query_tower is self.bundle.text:
                self.query_tower = self.bundle.trainable_copy().eval().requires_grad_(False)
            load_text_tower(self.query_tower, path)
        self.checkpoint = str(path) if path else None


def has_image_tower(model_cfg: ModelConfig) -> bool:
    return model_cfg.backend != "hf_text"


def build_query_encoder(model_cfg: ModelConfig, projector_cfg: ProjectorConfig, prompts: PromptConfig | None = None,
                        device: str | torch.device = "cpu", text_checkpoint: str | None = None,
                        bundle: EncoderBundle | None = None, init_seed: int = MODEL_INIT_SEED) -> ComposedQueryEncoder:
    """Build the composed-query encoder; ``text_checkpoint`` (or ``model_cfg.text_checkpoint``) swaps in a
    trained text tower, else the frozen tower encodes queries (the base method)."""
    prompts = prompts or PromptConfig()
    bundle = bundle or build_encoders(model_cfg, placeholder=prompts.placeholder, device=device, init_seed=init_seed)
    phi = build_projector(projector_cfg, bundle.embed_dim, bundle.token_dim).to(device).eval()
    enc = ComposedQueryEncoder(bundle, bundle.text, phi, prompts)
    ckpt = text_checkpoint or model_cfg.text_checkpoint
    if ckpt:
        enc.load_text_checkpoint(ckpt)
    return enc


def load_query_encoder_from_checkpoint(ckpt_dir: str | os.PathLike[str], device: str | torch.device = "cpu",
                                       load_image_tower: bool | None = None,
                                       init_seed: int = MODEL_INIT_SEED) -> ComposedQueryEncoder:
    """Build the encoder a training run used, from its checkpoint dir (``config.yaml`` + weights + phi)."""
    ckpt = Path(ckpt_dir)
    if not (ckpt / MODEL_FILE).is_file() or not (ckpt / "config.yaml").is_file():
        raise FileNotFoundError(f"{ckpt} is not an rtd checkpoint (needs {MODEL_FILE} and config.yaml)")
    raw = yaml.safe_load((ckpt / "config.yaml").read_text())
    raw.pop("config_kind", None)
    cfg = TrainConfig.model_validate(raw)
    model_cfg = cfg.model
    if load_image_tower is not None:
        # Text-only backends (hf_text) have no image tower: they serve caption galleries and phi reads the frozen
        # caption embedding, so asking for an image tower there means "if the backend has one".
        model_cfg = model_cfg.model_copy(update={"load_image_tower": load_image_tower and has_image_tower(model_cfg)})
    proj_cfg = cfg.projector.model_copy(update={"checkpoint": None})
    enc = build_query_encoder(model_cfg.model_copy(update={"text_checkpoint": None}), proj_cfg, cfg.prompts, device,
                              init_seed=init_seed)
    if (ckpt / PHI_FILE).is_file():
        load_projector_state(enc.phi, ckpt / PHI_FILE, cfg.projector.kind)
    elif cfg.projector.checkpoint:
        load_projector_state(enc.phi, cfg.projector.checkpoint, cfg.projector.kind)
    enc.load_text_checkpoint(ckpt)
    return enc
