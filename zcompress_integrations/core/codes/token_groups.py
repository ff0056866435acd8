"""The token-group code (the shipped default): a Z-token names a group of 1..``max_group`` consecutive text tokens.

Ids. A group of ``g`` tokens ``t_0 .. t_{g-1}`` over a text vocabulary of ``V`` has the id
``sum(V**h for h < g) + sum(t_k * V**k)``, so every id names one group of one size and ``k = sum(V**g)`` ids exist
(about 2^62 for SmolLM2 at ``max_group = 4``). The code stores the tokens; it is not smaller than the text, it is
shorter as a prompt.

Grouping. A segment of ``n`` tokens gets ``count`` Z-tokens (set by the codec from its surprisal and the requested
ratio); the groups are chosen by dynamic programming to even out the base model's NLL per group: surprising
tokens get a Z-token to themselves, predictable runs share one.

Embedding. A group's Z embedding is the sum of its tokens' unit input embeddings, token ``k`` turned by a fixed
random rotation ``R_k`` (``R_0 = I``; the others are rebuilt from :data:`ROTATION_SEED`, never stored) so that order
is in the code, divided by ``sqrt(g)`` and scaled to the backbone's mean token-embedding norm. Nothing in it is
trained: only the reader (the ``decompress`` LoRA) learns to read it.

Positions. ``aligned`` (the shipped reader): a Z-token sits where its group's first token sits in the text, so the
reader finds the Z it needs at a small fixed offset and a code spans the positions of its text. ``consecutive``:
Z-tokens take positions ``0 .. m-1``, so a code of ``m`` Z-tokens spans ``m`` positions in a prompt and
compressed documents leave room for more of them; the reader finds its Z by content, not by position.
"""

from __future__ import annotations

import struct
from collections.abc import Sequence
from typing import TYPE_CHECKING, Any

from zcompress_integrations.errors import CorruptCodeError

if TYPE_CHECKING:
    import torch

    from zcompress_integrations.core.latent import LatentCodec

__all__ = [
    "TokenGroupCode",
    "group_ids",
    "id_groups",
    "even_groups",
    "surprisal_groups",
    "ROTATION_SEED",
    "POSITIONS",
]

ROTATION_SEED = 1234
POSITIONS = ("aligned", "consecutive")  # where Z-tokens sit (see "Positions" above)


def group_ids(tokens: Sequence[int], sizes: Sequence[int], vocab: int) -> list[int]:
    """Z ids of consecutive groups of ``sizes`` tokens (see the module docstring)."""
    if sum(sizes) != len(tokens):
        raise ValueError(f"group sizes sum to {sum(sizes)}, not the {len(tokens)} tokens")
    ids, start = [], 0
    for g in sizes:
        offset = sum(vocab**h for h in range(1, g))
        ids.append(offset + sum(int(t) * vocab**k for k, t in enumerate(tokens[start : start + g])))
        start += g
    return ids


def id_groups(z_ids: Sequence[int], vocab: int, max_group: int) -> list[list[int]]:
    """Inverse of :func:`group_ids`: the token group each Z id stands for."""
    out = []
    for z in z_ids:
        g, offset = 1, 0
        while z >= offset + vocab**g:
            offset += vocab**g
            g += 1
            if g > max_group:
                raise CorruptCodeError(
                    f"Z id {z} is outside the token-group code (groups of at most {max_group})"
                )
        if z < 0:
            raise CorruptCodeError(f"Z id {z} is negative")
        x = z - offset
        out.append([(x // vocab**k) % vocab for k in range(g)])
    return out


def even_groups(length: int, size: int) -> list[int]:
    """Sizes of ``length`` tokens cut into groups of ``size`` (the last one shorter when it does not divide)."""
    return [size] * (length // size) + ([length % size] if length % size else [])


def surprisal_groups(nll: Sequence[float], count: int, max_group: int) -> list[int]:
    """Sizes of ``count`` consecutive groups (1..``max_group`` tokens each) covering tokens with these NLLs, chosen
    to even out the NLL per group (least sum of squared group NLL, by dynamic programming)."""
    n = len(nll)
    if not -(-n // max_group) <= count <= n:
        raise ValueError(f"{n} tokens cannot make {count} groups of 1..{max_group}")
    prefix = [0.0]
    for x in nll:
        prefix.append(prefix[-1] + max(float(x), 0.0) + 1e-3)  # + a little per token: ties favour even sizes
    inf = float("inf")
    # best[j][i]: least cost of splitting the first i tokens into j groups; back[j][i]: the last group's size
    best = [[inf] * (n + 1) for _ in range(count + 1)]
    back = [[0] * (n + 1) for _ in range(count + 1)]
    best[0][0] = 0.0
    for j in range(1, count + 1):
        for i in range(j, min(n, j * max_group) + 1):
            for g in range(1, min(max_group, i) + 1):
                cost = best[j - 1][i - g] + (prefix[i] - prefix[i - g]) ** 2
                if cost < best[j][i]:
                    best[j][i], back[j][i] = cost, g
    sizes, i = [], n
    for j in range(count, 0, -1):
        sizes.append(back[j][i])
        i -= back[j][i]
    return sizes[::-1]


def group_starts(sizes: Sequence[int]) -> list[int]:
    """Aligned position of each group: where its first token sits in the text."""
    starts, at = [], 0
    for g in sizes:
        starts.append(at)
        at += g
    return starts


class TokenGroupCode:
    """The token-group code over one backbone's input embeddings (see the module docstring).

    Args:
        embedding: the backbone's input embedding layer (read, never changed).
        vocab_size: the text vocabulary the ids are built on.
        max_group: most text tokens one Z-token stands for.
        token_scale: the embedding norm of a Z-token; ``None`` measures it (mean token-embedding norm).
        positions: ``"aligned"`` or ``"consecutive"`` (see the module docstring).
    """

    name = "token_groups"
    adapters = ("decompress",)

    def __init__(
        self,
        embedding: Any,
        vocab_size: int,
        max_group: int,
        token_scale: float | None = None,
        positions: str = "aligned",
    ) -> None:
        import torch

        if positions not in POSITIONS:
            raise ValueError(f"positions must be one of {POSITIONS}; got {positions!r}")
        self.positions = positions
        self.embedding = embedding
        self.vocab_size = int(vocab_size)
        self.max_group = int(max_group)
        weight = embedding.weight
        if token_scale is None:
            token_scale = float(weight.detach().float().norm(dim=1).mean())
        self.token_scale = float(token_scale)
        hidden = weight.shape[1]
        gen = torch.Generator().manual_seed(ROTATION_SEED)
        turns = [
            torch.linalg.qr(torch.randn(hidden, hidden, generator=gen))[0] for _ in range(self.max_group - 1)
        ]
        self.rotations = torch.stack([torch.eye(hidden), *turns]).to(weight.device)  # [G, H, H]

    @classmethod
    def from_config(cls, config: Any, embedding: Any, state: dict[str, Any] | None = None) -> TokenGroupCode:
        """The code a :class:`~zcompress_integrations.core.latent.LatentConfig` describes (``state``: saved tensors)."""
        scale = None if state is None else float(state["token_scale"])
        return cls(embedding, config.vocab_size, config.max_group, scale, config.positions)

    # ---- sizes -------------------------------------------------------------------------------------------
    @property
    def k(self) -> int:
        return sum(self.vocab_size**g for g in range(1, self.max_group + 1))

    @property
    def max_ratio(self) -> float:
        return float(self.max_group)

    def fewest_z(self, length: int) -> int:
        return -(-length // self.max_group)

    @staticmethod
    def ratio_cap(config: Any) -> float:
        return float(config.max_group)

    # ---- text -> Z ---------------------------------------------------------------------------------------
    def write(
        self, codec: LatentCodec, segments: list[list[int]], ratio: float, batch_size: int, progress: bool
    ) -> list[list[int]]:
        """Groups chosen from the base model's surprisal: ``codec.slot_count`` Z-tokens per segment."""
        token_nlls = codec.nll_batches(segments, batch_size, progress)
        return [
            self.encode(seg, nll, codec.slot_count(len(seg), sum(nll) / len(nll), ratio))
            for seg, nll in zip(segments, token_nlls, strict=True)
        ]

    def encode(self, tokens: Sequence[int], token_nll: Sequence[float], count: int) -> list[int]:
        return group_ids(tokens, surprisal_groups(token_nll, count, self.max_group), self.vocab_size)

    def groups(self, z_ids: Sequence[int]) -> list[list[int]]:
        return id_groups(z_ids, self.vocab_size, self.max_group)

    def check_ids(self, z_ids: Sequence[int]) -> None:
        self.groups(z_ids)

    # ---- Z -> reader inputs ------------------------------------------------------------------------------
    def embeddings(self, z_ids: Sequence[int]) -> torch.Tensor:
        return self.group_embeddings(self.groups(z_ids))

    def group_embeddings(self, groups: list[list[int]]) -> torch.Tensor:
        """``[n, H]``: sum of the groups' unit token embeddings, token k turned by ``rotations[k]``, at token scale."""
        import torch

        weight = self.embedding.weight
        dev = weight.device
        size = max((len(g) for g in groups), default=1)
        tok = torch.tensor([g + [0] * (size - len(g)) for g in groups], dtype=torch.long, device=dev).view(
            -1, size
        )
        present = torch.tensor([[1.0] * len(g) + [0.0] * (size - len(g)) for g in groups], device=dev).view(
            -1, size
        )
        unit = torch.nn.functional.normalize(weight[tok].float(), dim=-1)  # [n, G, H]
        turned = torch.einsum("ngh,gkh->ngk", unit, self.rotations[:size].float())
        total = (turned * present.unsqueeze(-1)).sum(1) / present.sum(1, keepdim=True).sqrt()
        scale = torch.tensor(self.token_scale, dtype=torch.float32, device=dev)
        return (total * scale).to(weight.dtype)

    def group_positions(self, sizes: Sequence[int]) -> tuple[list[int], int]:
        """Position offsets of the Z-tokens of groups of ``sizes`` tokens, and the positions the code spans."""
        if self.positions == "consecutive":
            return list(range(len(sizes))), len(sizes)
        return group_starts(sizes), sum(sizes)

    def offsets(self, z_ids: Sequence[int]) -> tuple[list[int], int]:
        return self.group_positions([len(g) for g in self.groups(z_ids)])

    def text_length(self, z_ids: Sequence[int]) -> int | None:
        return sum(len(g) for g in self.groups(z_ids))

    def named_tokens(self, z_ids: Sequence[int]) -> list[int] | None:
        return [t for group in self.groups(z_ids) for t in group]

    # ---- persistence -------------------------------------------------------------------------------------
    def state_dict(self) -> dict[str, Any]:
        import torch

        return {"token_scale": torch.tensor(self.token_scale, dtype=torch.float32)}

    def load_state_dict(self, state: dict[str, Any]) -> None:
        self.token_scale = float(state["token_scale"])

    def fingerprint_parts(self) -> list[bytes]:
        parts = [
            self.name.encode(),
            struct.pack("<IIIf", self.vocab_size, self.max_group, ROTATION_SEED, self.token_scale),
        ]
        # only the new layout adds a part: codes written with aligned adapters keep their fingerprints
        return parts + ([b"consecutive"] if self.positions == "consecutive" else [])
