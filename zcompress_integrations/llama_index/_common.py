"""What the LlamaIndex adapters share: the compressor settings fields, the metadata keys, code lookup.

One options model (:class:`CompressorSettings`, the shared ``ZCompressSettings`` plus the lazy compressor) is
mixed into every adapter, so the fields, the lazy compressor and the pickling rules live in one place. Settings
are plain JSON values: LlamaIndex builds ingestion cache keys from ``to_dict()`` and rebuilds components in worker
processes from them.
"""

from __future__ import annotations

import logging
import re
import threading
from typing import TYPE_CHECKING, Any

from llama_index.core.bridge.pydantic import ConfigDict, PrivateAttr

from zcompress_integrations._integration_common import (
    CODE_PATTERN,
    META_CODE,
    META_PREFIX,
    STATS_KEYS,
    ZCompressSettings,
    code_metadata,
    settings_from_compressor,
    shared_compressor,
)
from zcompress_integrations.core.entropy import as_bytes
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

_LOAD_LOCK = threading.Lock()


class CompressorSettings(ZCompressSettings):
    """The settings fields (shared with the LangChain adapters) and the lazy compressor itself.

    Pass ``compressor=`` to share an instance you already have: its settings are copied into these fields (so the
    object can be rebuilt elsewhere) and the instance is kept in a private attribute. Otherwise components with
    equal settings share one loaded compressor in this process (LLM, postprocessor, transform: one backbone).
    """

    model_config = ConfigDict(protected_namespaces=(), arbitrary_types_allowed=True)

    _compressor: Any = PrivateAttr(default=None)
    _given: bool = PrivateAttr(default=False)

    def __init__(self, compressor: ZCompressor | None = None, **data: Any) -> None:
        if compressor is not None:
            for field, value in settings_from_compressor(compressor).items():
                data.setdefault(field, value)
        super().__init__(**data)
        self._compressor = compressor
        self._given = compressor is not None
        self._check_options()

    def _check_options(self) -> None:
        """Cross-field checks; raise ConfigError (not wrapped in pydantic's ValidationError)."""

    @property
    def compressor(self) -> ZCompressor:
        """The :class:`ZCompressor` (shared per settings in this process; the model itself loads lazily too)."""
        if self._compressor is None:
            with _LOAD_LOCK:
                if self._compressor is None:
                    self._compressor = shared_compressor(self.compressor_settings())
        return self._compressor

    def __getstate__(self) -> dict[Any, Any]:
        state = super().__getstate__()  # type: ignore[misc]
        private = dict(state.get("__pydantic_private__") or {})
        if private.get("_compressor") is not None and not self._given:
            # built from the settings: the receiving process shares its own compressor for them
            private["_compressor"] = None
            state["__pydantic_private__"] = private
        return state

    def __setstate__(self, state: dict[str, Any]) -> None:
        # LlamaIndex's BaseComponent rebuilds the object with __init__(**fields), which drops private attributes;
        # keep the compressor when it came along (ZCompressor pickles as its settings, so this stays cheap).
        private = dict(state.get("__pydantic_private__") or {})
        super().__setstate__(state)  # type: ignore[misc]
        if private.get("_compressor") is not None and self._compressor is None:
            self._compressor = private["_compressor"]
            self._given = True


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
    if code.checksum != text_checksum(as_bytes(text)):
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
    codes = CODE_PATTERN.findall(text)
    rest = CODE_PATTERN.sub("", text)
    rest = re.sub(r"\n{3,}", "\n\n", rest).strip()
    return codes, rest
