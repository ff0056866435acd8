"""What the LlamaIndex adapters share: the compressor settings fields, the metadata keys, code lookup.

One options model (:class:`CompressorSettings`) is mixed into every adapter, so the fields, the lazy compressor
and the pickling rules live in one place. Settings are plain JSON values: LlamaIndex builds ingestion cache keys
from ``to_dict()`` and rebuilds components in worker processes from them.
"""

from __future__ import annotations

import logging
import re
import threading
from typing import TYPE_CHECKING, Any

from llama_index.core.bridge.pydantic import BaseModel, ConfigDict, Field, PrivateAttr

from zcompress_integrations.core.zcode import ZCode, text_checksum
from zcompress_integrations.errors import CorruptCodeError, ModelMismatchError

if TYPE_CHECKING:
    from llama_index.core.schema import BaseNode

    from zcompress_integrations.core.compressor import ZCompressor

__all__ = [
    "CompressorSettings",
    "META_PREFIX",
    "META_CODE",
    "STATS_KEYS",
    "code_metadata",
    "add_code_metadata",
    "stored_code",
    "find_code_strings",
    "node_text",
]

logger = logging.getLogger(__name__)

META_PREFIX = "zcompress_"
META_CODE = "zcompress_code"
STATS_KEYS = (
    "zcompress_code",
    "zcompress_codec",
    "zcompress_ratio",
    "zcompress_text_tokens",
    "zcompress_z_tokens",
    "zcompress_fingerprint",
)
# "zc1:" + URL-safe base64 (padding optional); a code string ends at the first character outside that alphabet.
CODE_STRING_RE = re.compile(r"zc1:[A-Za-z0-9_\-]+={0,2}")
_LOAD_LOCK = threading.Lock()


class CompressorSettings(BaseModel):
    """Fields that say which :class:`ZCompressor` to build, and the lazy instance itself.

    Pass ``compressor=`` to share an instance you already have: its settings are copied into these fields (so the
    object can be rebuilt elsewhere) and the instance is kept in a private attribute.
    """

    model_config = ConfigDict(protected_namespaces=(), arbitrary_types_allowed=True)

    model_name_or_path: str | None = Field(
        default=None, description="Local model directory or cached Hub id; None for the embedded default."
    )
    adapters: str | None = Field(
        default="default", description="Latent adapter directory, 'default' or None."
    )
    device: str | None = Field(default="auto", description="'auto', 'cpu', 'cuda', ...")
    window: int = Field(default=256, ge=2, description="Tokens per window of the exact codec.")
    k: int = Field(default=4096, ge=2, description="Z vocabulary size of the exact codec (a power of two).")

    _compressor: Any = PrivateAttr(default=None)

    def __init__(self, compressor: ZCompressor | None = None, **data: Any) -> None:
        if compressor is not None:
            settings = compressor.settings
            for field, key in (
                ("model_name_or_path", "name_or_path"),
                ("adapters", "adapters"),
                ("device", "device"),
                ("window", "window"),
                ("k", "k"),
            ):
                data.setdefault(field, settings[key])
        super().__init__(**data)
        self._compressor = compressor
        self._check_options()

    def _check_options(self) -> None:
        """Cross-field checks; raise ConfigError (not wrapped in pydantic's ValidationError)."""

    @property
    def compressor(self) -> ZCompressor:
        """The :class:`ZCompressor` (built from the fields on first use; the model itself loads lazily too)."""
        if self._compressor is None:
            with _LOAD_LOCK:
                if self._compressor is None:
                    from zcompress_integrations.core.compressor import ZCompressor

                    self._compressor = ZCompressor.from_pretrained(
                        self.model_name_or_path,
                        adapters=self.adapters,
                        device=self.device,
                        window=self.window,
                        k=self.k,
                    )
        return self._compressor

    def __setstate__(self, state: dict[str, Any]) -> None:
        # LlamaIndex's BaseComponent rebuilds the object with __init__(**fields), which drops private attributes;
        # keep the compressor when it came along (ZCompressor pickles as its settings, so this stays cheap).
        private = dict(state.get("__pydantic_private__") or {})
        super().__setstate__(state)  # type: ignore[misc]
        if private.get("_compressor") is not None and self._compressor is None:
            self._compressor = private["_compressor"]


def code_metadata(code: ZCode) -> dict[str, Any]:
    """The ``zcompress_*`` metadata of one code: the code string and its figures (all JSON values)."""
    return {
        "zcompress_code": code.to_string(),
        "zcompress_codec": code.codec,
        "zcompress_ratio": round(float(code.ratio), 4),
        "zcompress_text_tokens": int(code.text_tokens),
        "zcompress_z_tokens": int(code.z_tokens),
        "zcompress_fingerprint": code.fingerprint.hex(),
    }


def add_code_metadata(node: BaseNode, code: ZCode) -> None:
    """Store ``code`` in ``node.metadata`` and keep those keys out of embedding and LLM metadata strings."""
    node.metadata.update(code_metadata(code))
    for attr in ("excluded_embed_metadata_keys", "excluded_llm_metadata_keys"):
        keys = list(getattr(node, attr))
        keys += [k for k in STATS_KEYS if k not in keys]
        setattr(node, attr, keys)


def stored_code(node: BaseNode, text: str, *, mode: str, fingerprint: bytes | None) -> ZCode | None:
    """The code already in the node's metadata, when it is valid and still stands for ``text``; else None.

    A damaged, foreign (other backbone), other-mode or stale (text changed since) code is not an error here:
    the caller re-compresses the node's text, which is always kept. A warning names the node.
    """
    value = node.metadata.get(META_CODE)
    if value is None:
        return None
    try:
        code = ZCode.load(value)
        if fingerprint is not None and code.fingerprint != fingerprint:
            raise ModelMismatchError(
                f"code fingerprint {code.fingerprint.hex()} != model {fingerprint.hex()}"
            )
    except (CorruptCodeError, ModelMismatchError, TypeError, ValueError) as exc:
        logger.warning(
            "node %s: ignoring the stored Z code (%s); compressing its text again", node.node_id, exc
        )
        return None
    if code.codec != mode:
        return None
    if code.checksum != text_checksum(text.encode("utf-8")):
        logger.warning(
            "node %s: the stored Z code does not match the node's text; compressing it again", node.node_id
        )
        return None
    return code


def node_text(node: BaseNode, min_chars: int) -> str | None:
    """The text to compress, or None when the node passes through unchanged (no text, empty, too short)."""
    from llama_index.core.schema import MetadataMode, Node, TextNode

    if not isinstance(
        node, TextNode | Node
    ):  # other node kinds (index nodes' objects...) have no text to code
        return None
    text = node.get_content(metadata_mode=MetadataMode.NONE)
    if not isinstance(text, str):
        logger.warning(
            "node %s has non-text content (%s); passing it through", node.node_id, type(text).__name__
        )
        return None
    if not text.strip() or len(text) < min_chars:
        return None
    return text


def find_code_strings(text: str) -> tuple[list[str], str]:
    """Split a prompt into the ``zc1:`` code strings it contains and the rest of the text."""
    codes = CODE_STRING_RE.findall(text)
    rest = CODE_STRING_RE.sub("", text)
    rest = re.sub(r"\n{3,}", "\n\n", rest).strip()
    return codes, rest
