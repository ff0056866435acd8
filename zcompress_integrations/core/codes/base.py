"""The protocol every latent code kind follows.

A code kind says how a segment of text tokens becomes Z ids and how Z ids become the input embeddings the reader
(the ``decompress`` adapter) sees, where those embeddings sit in a prompt, and which of its tensors are saved. The
:class:`~zcompress_integrations.core.latent.LatentCodec` around it does everything that does not depend on the
kind: segmentation, batching, greedy reading, the exact residual, adapters and persistence.

A new kind is a new module in this package plus one entry in ``CODE_KINDS``; nothing outside this package
branches on the kind.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import TYPE_CHECKING, Any, Protocol

if TYPE_CHECKING:
    import torch

    from zcompress_integrations.core.latent import LatentCodec

__all__ = ["CodeKind", "ZLayout"]


class ZLayout(Protocol):
    """Where a code's Z-tokens sit in a prompt: ``offsets`` (one position offset per Z-token, from the code's
    first position) and ``span`` (the positions the code takes; what follows it starts at ``span``)."""

    offsets: list[int]
    span: int


class CodeKind(Protocol):
    """One latent code kind (see the module docstring). Implementations hold their own small tensors."""

    name: str
    adapters: tuple[str, ...]  # the LoRA adapters this kind trains and saves (the reader is "decompress")

    @property
    def k(self) -> int:
        """Distinct values one Z-token can take (stored in every code as ``ZCode.k``)."""
        ...

    @property
    def max_ratio(self) -> float:
        """The highest text-tokens-per-Z-token ratio this kind can reach."""
        ...

    def fewest_z(self, length: int) -> int:
        """The fewest Z-tokens a segment of ``length`` text tokens can take."""
        ...

    def write(
        self, codec: LatentCodec, segments: list[list[int]], ratio: float, batch_size: int, progress: bool
    ) -> list[list[int]]:
        """Z ids of each segment's text tokens at ``ratio`` (the codec gives access to the backbone: the base
        model's NLLs, or an adapter with which the model writes Z itself); ``batch_size`` segments a forward."""
        ...

    def embeddings(self, z_ids: Sequence[int]) -> torch.Tensor:
        """``[n, H]`` input embeddings of Z ids (what the reader sees), in the backbone's dtype."""
        ...

    def offsets(self, z_ids: Sequence[int]) -> tuple[list[int], int]:
        """Position offsets of a segment's Z-tokens and the positions the segment spans."""
        ...

    def text_length(self, z_ids: Sequence[int]) -> int | None:
        """Text tokens a segment of these Z ids holds when the code says so (the reader stops there), else None."""
        ...

    def named_tokens(self, z_ids: Sequence[int]) -> list[int] | None:
        """The text tokens a segment's ids name, when the ids name them (token groups), else None (the reader must
        rebuild the text)."""
        ...

    def check_ids(self, z_ids: Sequence[int]) -> None:
        """Raise :class:`~zcompress_integrations.errors.CorruptCodeError` for ids this kind never writes."""
        ...

    def state_dict(self) -> dict[str, Any]:
        """The tensors to save (only what cannot be rebuilt from the config and the backbone)."""
        ...

    def load_state_dict(self, state: dict[str, Any]) -> None: ...

    def fingerprint_parts(self) -> list[bytes]:
        """Bytes that identify this code's Z vocabulary (hashed into the codec fingerprint)."""
        ...
