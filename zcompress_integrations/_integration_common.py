"""What the LangChain and LlamaIndex adapters share: the settings model, the one-model-per-process cache, the
code pattern, the metadata keys, and the backbone facts a framework asks for (context size, tool support).

No framework is imported here (only pydantic, which both frameworks are built on), and nothing loads torch.
"""

from __future__ import annotations

import json
import re
import threading
from pathlib import Path
from typing import TYPE_CHECKING, Any, Literal

from pydantic import BaseModel, ConfigDict, Field

if TYPE_CHECKING:
    from zcompress_integrations.core.compressor import ZCompressor
    from zcompress_integrations.core.zcode import ZCode

__all__ = [
    "CODE_PATTERN",
    "find_codes",
    "META_PREFIX",
    "META_CODE",
    "META_CODEC",
    "META_RATIO",
    "META_TEXT_TOKENS",
    "META_Z_TOKENS",
    "META_FINGERPRINT",
    "STATS_KEYS",
    "code_metadata",
    "ZCompressSettings",
    "RayHandoff",
    "SETTING_NAMES",
    "shared_compressor",
    "settings_from_compressor",
    "backbone_profile",
    "envelope_messages",
]

CODE_PATTERN = re.compile(r"zc1:[A-Za-z0-9_\-]+={0,2}")
"""A Z code in string form (``ZCode.to_string()``: ``zc1:`` + URL-safe base64) inside free text; it ends at the
first character outside that alphabet."""


def find_codes(text: str) -> list[str]:
    """Every ``zc1:`` string in ``text``, in order."""
    return CODE_PATTERN.findall(text)


META_PREFIX = "zcompress_"
META_CODE = "zcompress_code"  # the code in string form ("zc1:...")
META_CODEC = "zcompress_codec"  # "exact" | "latent"
META_RATIO = "zcompress_ratio"  # text tokens / Z-tokens
META_TEXT_TOKENS = "zcompress_text_tokens"
META_Z_TOKENS = "zcompress_z_tokens"
META_FINGERPRINT = "zcompress_fingerprint"  # hex of the backbone fingerprint stored in the code
STATS_KEYS = (META_CODE, META_CODEC, META_RATIO, META_TEXT_TOKENS, META_Z_TOKENS, META_FINGERPRINT)
"""The metadata keys one code adds to a document or node."""


def code_metadata(code: ZCode) -> dict[str, Any]:
    """The ``zcompress_*`` metadata of one code: the code string and its figures (all JSON values)."""
    return {
        META_CODE: code.to_string(),
        META_CODEC: code.codec,
        META_RATIO: round(float(code.ratio), 4),
        META_TEXT_TOKENS: int(code.text_tokens),
        META_Z_TOKENS: int(code.z_tokens),
        META_FINGERPRINT: code.fingerprint.hex(),
    }


class ZCompressSettings(BaseModel):
    """Which :class:`ZCompressor` to build: every ``ZCompressor.from_pretrained`` option, one field each.

    Mixed into every adapter of both frameworks, so the option names are the same everywhere. Adapters whose
    settings are equal share one loaded compressor (:func:`shared_compressor`). Plain JSON values only: the
    frameworks rebuild components from their fields (pickling, worker processes, ingestion cache keys).
    """

    model_config = ConfigDict(protected_namespaces=())

    model_name_or_path: str | None = Field(
        default=None, description="Backbone name or local path; None is the embedded default (SmolLM2-135M)."
    )
    adapters: str | None = Field(
        default="default", description="Latent adapter directory, 'default' for the shipped one, or None."
    )
    device: str | None = Field(default="auto", description="'auto' (cuda > mps > cpu), 'cpu', 'cuda', ...")
    dtype: str | None = Field(
        default=None,
        description="'float32', 'bfloat16', 'float16' or 'auto'; None/'auto': bf16 on a native-bf16 GPU, else fp32.",
    )
    quantization: Literal["4bit", "8bit"] | None = Field(
        default=None, description="bitsandbytes quantization (CUDA only)."
    )
    window: int = Field(default=256, ge=2, description="Tokens per window of the exact codec.")
    k: int = Field(default=4096, ge=2, description="Z vocabulary size of the exact codec (a power of two).")
    model_kwargs: dict[str, Any] = Field(
        default_factory=dict, description="Extra AutoModelForCausalLM.from_pretrained options."
    )

    def compressor_settings(self) -> dict[str, Any]:
        """The ``ZCompressor.from_pretrained`` keyword arguments these fields stand for."""
        return {name: getattr(self, name) for name in SETTING_NAMES}


class RayHandoff(BaseModel):
    """Fields of the ingestion adapters (LlamaIndex ``ZCompressTransform``, LangChain
    ``ZCompressDocumentTransformer``) that hand each batch to Ray Data (``zcompress_integrations.corpus``) instead
    of compressing it in this process: for batches too large for one machine. Needs the ``ray`` extra."""

    ray_workers: int = Field(
        default=0,
        ge=0,
        description="Compress each batch on Ray Data with this many actors; 0: in this process.",
    )
    ray_address: str | None = Field(
        default=None, description="Ray cluster address; None: this process's cluster, else a local one."
    )
    ray_num_cpus_per_worker: float = Field(default=1.0, gt=0, description="CPUs Ray reserves per actor.")
    ray_num_gpus_per_worker: float = Field(
        default=0.0, ge=0, description="GPUs per actor (> 0: CUDA actors)."
    )
    ray_workdir: str | None = Field(
        default=None, description="Keep each Ray run here (a rerun resumes it); None: a temporary folder."
    )

    def ray_compress(
        self,
        zc: ZCompressor,
        texts: list[str],
        mode: Literal["exact", "latent"],
        ratio: float | None,
        batch_size: int,
    ) -> list[ZCode]:
        """``zc.compress_batch(texts, ...)``'s codes, made by actors built from ``zc``'s settings."""
        from zcompress_integrations.corpus.handoff import compress_texts
        from zcompress_integrations.errors import ModelMismatchError

        codes = compress_texts(
            texts,
            settings_from_compressor(zc),
            mode=mode,
            ratio=ratio,
            workers=self.ray_workers,
            address=self.ray_address,
            num_cpus_per_worker=self.ray_num_cpus_per_worker,
            num_gpus_per_worker=self.ray_num_gpus_per_worker,
            batch_size=batch_size,
            workdir=self.ray_workdir,
        )
        if mode == "exact" and any(c.fingerprint != zc.fingerprint for c in codes):
            raise ModelMismatchError(
                "the Ray actors' backbone differs from this compressor's (exact fingerprints)"
            )
        return codes


SETTING_NAMES = tuple(ZCompressSettings.model_fields)
"""The settings fields, in the order ``ZCompressor.settings`` names them (``name_or_path`` is
``model_name_or_path`` here)."""

_CACHE: dict[str, ZCompressor] = {}
_CACHE_LOCK = threading.Lock()


def settings_from_compressor(zc: ZCompressor) -> dict[str, Any]:
    """The settings fields of an existing compressor (so an adapter given one can be rebuilt elsewhere)."""
    settings = dict(zc.settings)
    settings["model_name_or_path"] = settings.pop("name_or_path")
    return {name: settings[name] for name in SETTING_NAMES if name in settings}


def shared_compressor(settings: dict[str, Any]) -> ZCompressor:
    """One :class:`ZCompressor` per distinct setting in this process, so adapters share one model and one lock."""
    from zcompress_integrations.core.compressor import ZCompressor

    key = json.dumps(settings, sort_keys=True, default=repr)
    with _CACHE_LOCK:
        zc = _CACHE.get(key)
        if zc is None:
            options = dict(settings)
            zc = _CACHE[key] = ZCompressor.from_pretrained(options.pop("model_name_or_path"), **options)
        return zc


def backbone_profile(zc: ZCompressor | None, model_name_or_path: str | None) -> dict[str, Any]:
    """What a framework asks about the backbone: ``max_input_tokens`` (``max_position_embeddings``) and
    ``tool_calling`` (whether its chat template reads ``tools``).

    Read from a loaded backbone when there is one, else from the model directory's JSON files (no model load).
    """
    if zc is not None and zc._backbone is not None:
        config = zc.backbone.model.config
        window = getattr(config, "max_position_embeddings", None)
        template = getattr(zc.backbone.tokenizer, "chat_template", None) or ""
        return _profile(window, template)
    if zc is not None:
        model_name_or_path = zc.settings["name_or_path"]
    folder = _model_dir(model_name_or_path)
    if folder is None:
        return {}
    config = json.loads((folder / "config.json").read_text())
    template = ""
    if (folder / "chat_template.jinja").exists():
        template = (folder / "chat_template.jinja").read_text()
    elif (folder / "tokenizer_config.json").exists():
        template = json.loads((folder / "tokenizer_config.json").read_text()).get("chat_template") or ""
    return _profile(config.get("max_position_embeddings"), template if isinstance(template, str) else "")


def _profile(window: Any, template: str) -> dict[str, Any]:
    profile: dict[str, Any] = {"tool_calling": "tools" in template}
    if isinstance(window, int):
        profile["max_input_tokens"] = window
    return profile


def _model_dir(name_or_path: str | None) -> Path | None:
    from zcompress_integrations.core.backbone import DEFAULT_MODEL

    if name_or_path is None or name_or_path == DEFAULT_MODEL:
        from zcompress_integrations.core.backbone import default_model_dir

        return default_model_dir()  # converted once from the embedded GGUF file, then cached
    folder = Path(name_or_path)
    return folder if (folder / "config.json").exists() else None


def envelope_messages(text: str, envelope: str) -> list[Any] | None:
    """The ``messages`` list of a memory envelope ``{envelope: 1, "messages": [...]}`` (JSON), or ``None`` when
    ``text`` is not one: both frameworks' memories store their flushed turns this way."""
    if not text.startswith("{"):
        return None
    try:
        data = json.loads(text)
    except ValueError:
        return None
    if not isinstance(data, dict) or data.get(envelope) != 1 or not isinstance(data.get("messages"), list):
        return None
    return data["messages"]
