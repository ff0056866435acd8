"""The learned code: the backbone writes its own Z-tokens from a finite vocabulary (arXiv 2603.25340's compressor).

Writing. The backbone reads a segment with its ``compress`` LoRA adapter on, after one ratio embedding
(``ratio_embed[0] + log2(ratio) * ratio_embed[1]``) that tells it how hard to compress. A stop head scores every
text token; the segment gets the head's expected number of spans (the sum of its stop probabilities), ending at its
highest-scoring tokens (and at the last token; no span is longer than ``max_span``): the number of Z-tokens is the
model's choice, not a formula, and spans can be short where the text is surprising and long where it is
predictable (``span_ends``); a calibration (``zcompress train calibrate``, ``LatentConfig.stop_offsets``) may add a
bias per ratio to the stop logits so that the mean count meets the request. The hidden state at a span's last token,
turned by ``to_z``, is quantised by residual vector quantisation over ``codebooks`` codebooks of ``codebook_size``
rows each: codebook 1 takes the nearest row, codebook 2 the nearest row to what is left, and so on.

Ids and size. A Z id is ``i_1 + K * i_2 + K^2 * i_3 ...`` (``K = codebook_size``), so ``k = K ** codebooks`` and a
stored Z costs ``log2(k)`` bits: 12 bits at the default 4096 x 1, against 63 for a token-group Z.

Reading. A Z id's input embedding is the sum of its codebook rows; the reader (the ``decompress`` adapter) sees
``[Z_1 .. Z_m, sep]`` and writes the segment back: as many text tokens as the container stores for the segment
(``ZCode.segment_tokens``; the ids do not say it), or, in a container without the counts, until its end token.

Positions. Z-tokens take consecutive positions (``0 .. m-1``): a code of ``m`` Z-tokens spans ``m`` positions in a
prompt, so compressed documents leave room for more of them in the backbone's window.
"""

from __future__ import annotations

import hashlib
import math
import struct
from collections.abc import Sequence
from typing import TYPE_CHECKING, Any

from zcompress_integrations.errors import CorruptCodeError

if TYPE_CHECKING:
    import torch

    from zcompress_integrations.core.latent import LatentCodec

__all__ = ["LearnedCode", "COMPRESS", "quantize", "span_count", "span_ends"]

COMPRESS = "compress"  # the LoRA adapter with which the backbone writes Z


def quantize(vectors: torch.Tensor, codebook: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """Residual VQ: ``vectors [N, H]`` over ``codebook [C, K, H]`` -> ``(quantised [N, H], indices [N, C])``."""
    import torch

    rest = vectors
    total = torch.zeros_like(vectors)
    picks = []
    for book in codebook:  # [K, H]
        dist = (rest.pow(2).sum(-1, keepdim=True) - 2 * rest @ book.T) + book.pow(2).sum(-1)  # [N, K]
        idx = dist.argmin(-1)
        row = book[idx]
        picks.append(idx)
        total = total + row
        rest = rest - row
    return total, torch.stack(picks, -1)


def span_count(count: float, length: int, max_span: int) -> int:
    """``count`` spans rounded and kept within what a segment of ``length`` tokens allows: at least
    ``ceil(length / max_span)`` (and 1), at most ``length``."""
    return min(max(round(count), -(-length // max_span), 1), length)


def span_ends(
    stop_logits: Sequence[float], length: int, max_span: int, count: int | None = None
) -> list[int]:
    """Indices of the tokens that end a span. The segment gets the stop head's expected span count,
    ``round(sum(sigmoid(stop_logits)))`` (at least ``ceil(length / max_span)``, at most ``length``), placed where
    their summed stop logits are highest, with the last end at the last token and no span longer than ``max_span``.
    ``count`` asks for that many spans instead (a decoder re-encoding a candidate text to compare it with a stored
    code), within the same bounds.

    Training pulls the mean stop probability toward ``1 / ratio`` (the length budget), so the count follows the
    requested ratio on average and moves with how the head scores the content. A fixed threshold (stop where the
    probability passes 0.5) does not: run 2's head never passed it, and every span ran to ``max_span``."""
    import numpy as np

    if length <= 0:
        return []
    logits = np.clip(np.asarray(list(stop_logits)[:length], dtype=np.float64), -60.0, 60.0)
    if count is None:
        count = round(float((1.0 / (1.0 + np.exp(-logits))).sum()))
    count = span_count(count, length, max_span)
    # exactly ``count`` ends, the last at the last token, no span over ``max_span``: the placement with the highest
    # summed stop logit (dynamic programme over spans); a tiny evenness term only breaks ties
    even = length / count
    gaps = np.arange(1, max_span + 1)
    step = -1e-9 * (gaps - even) ** 2
    score = np.full((count + 1, length + 1), -np.inf)  # score[k, e]: k spans covering tokens 0 .. e - 1
    score[0, 0] = 0.0
    back = np.zeros((count + 1, length + 1), dtype=np.int64)
    for k in range(1, count + 1):
        for e in range(1, length + 1):
            g = gaps[gaps <= e]
            cand = score[k - 1, e - g] + step[: len(g)] + logits[e - 1]
            best = int(cand.argmax())
            score[k, e], back[k, e] = cand[best], g[best]
    ends, e = [], length
    for k in range(count, 0, -1):
        ends.append(e - 1)
        e -= int(back[k, e])
    return ends[::-1]


class LearnedCode:
    """The learned code's own tensors (codebooks, heads, ratio embedding) and its id arithmetic.

    Args:
        embedding: the backbone's input embedding layer (sizes, device, dtype; never changed).
        codebook_size: rows per codebook (``K``).
        codebooks: codebooks per Z-token (residual VQ depth).
        max_span: most text tokens one Z-token stands for.
    """

    name = "learned"
    adapters = ("decompress", COMPRESS)

    def __init__(
        self,
        embedding: Any,
        codebook_size: int,
        codebooks: int,
        max_span: int,
        stop_offsets: dict[str, float] | None = None,
    ) -> None:
        import torch

        weight = embedding.weight
        hidden = weight.shape[1]
        self.embedding = embedding
        self.codebook_size = int(codebook_size)
        self.codebooks = int(codebooks)
        self.max_span = int(max_span)
        # (log2 ratio, offset), sorted: the stop head's calibration (LatentConfig.stop_offsets)
        self.stop_offsets = sorted((math.log2(float(r)), float(b)) for r, b in (stop_offsets or {}).items())
        dev = weight.device
        scale = float(weight.detach().float().norm(dim=1).mean())
        gen = torch.Generator().manual_seed(0)
        book = torch.randn(self.codebooks, self.codebook_size, hidden, generator=gen)
        book = book / book.norm(dim=-1, keepdim=True) * scale / math.sqrt(self.codebooks)
        self.codebook = torch.nn.Parameter(book.to(dev))  # [C, K, H]
        self.to_z = torch.nn.Linear(hidden, hidden).to(dev)
        with torch.no_grad():  # final hidden states are far larger than token embeddings: start Z small
            self.to_z.weight.mul_(0.1)
        self.stop = torch.nn.Linear(hidden, 1).to(dev)
        # a zero input embedding gives non-finite gradients through the first RMSNorm: start at token scale
        start = torch.randn(2, hidden, generator=gen) * float(weight.detach().float().std())
        self.ratio_embed = torch.nn.Parameter(start.to(dev))

    @classmethod
    def from_config(cls, config: Any, embedding: Any, state: dict[str, Any] | None = None) -> LearnedCode:
        code = cls(embedding, config.codebook_size, config.codebooks, config.max_span, config.stop_offsets)
        if state is not None:
            code.load_state_dict(state)
        return code

    @staticmethod
    def ratio_cap(config: Any) -> float:
        return float(config.max_span)

    def parameters(self) -> list[torch.nn.Parameter]:
        """Everything this code trains besides the LoRA adapters."""
        return [self.codebook, self.ratio_embed, *self.to_z.parameters(), *self.stop.parameters()]

    # ---- sizes -------------------------------------------------------------------------------------------
    @property
    def k(self) -> int:
        return self.codebook_size**self.codebooks

    @property
    def max_ratio(self) -> float:
        return float(self.max_span)

    def fewest_z(self, length: int) -> int:
        return -(-length // self.max_span)

    # ---- text -> Z ---------------------------------------------------------------------------------------
    def ratio_vector(self, ratio: float) -> torch.Tensor:
        """``[H]`` input embedding that tells the compress pass the requested ratio."""
        return self.ratio_embed[0] + math.log2(ratio) * self.ratio_embed[1]

    def stop_offset(self, ratio: float) -> float:
        """The calibration's bias on the stop logits at ``ratio``: linear in log2(ratio) between calibrated
        ratios, the nearest one's outside them, 0 without a calibration."""
        points = self.stop_offsets
        if not points:
            return 0.0
        x = math.log2(ratio)
        if x <= points[0][0]:
            return points[0][1]
        for (x0, b0), (x1, b1) in zip(points, points[1:], strict=False):
            if x <= x1:
                return b0 + (b1 - b0) * (x - x0) / (x1 - x0)
        return points[-1][1]

    def compress_hidden(self, codec: LatentCodec, seg: torch.Tensor, ratio: float) -> torch.Tensor:
        """``[B, n, H]`` hidden states of the compress pass over ``seg [B, n]`` (call under the compress adapter)."""
        import torch

        x = codec.embed(seg)
        head = self.ratio_vector(ratio).to(x.dtype).view(1, 1, -1).expand(seg.shape[0], 1, -1)
        hidden = codec.lm.model(inputs_embeds=torch.cat([head, x], 1)).last_hidden_state
        return hidden[:, 1:].float()

    def write(
        self, codec: LatentCodec, segments: list[list[int]], ratio: float, batch_size: int, progress: bool
    ) -> list[list[int]]:
        """Z ids of each segment, written by the backbone (compress adapter) with its own span ends."""
        import torch

        from zcompress_integrations.core.latent import _progress

        out: list[list[int]] = [[] for _ in segments]
        by_length: dict[int, list[int]] = {}
        for i, seg in enumerate(segments):
            by_length.setdefault(len(seg), []).append(i)
        # a short segment runs alone, so its ids do not depend on the other texts in the call (as for the base
        # model's NLL in ``LatentCodec.token_nll``: too few matrix rows pick other kernels)
        from zcompress_integrations.core.latent import _NLL_ALONE_BELOW

        chunks = [
            members[s : s + (batch_size if length >= _NLL_ALONE_BELOW else 1)]
            for length, members in by_length.items()
            for s in range(0, len(members), batch_size if length >= _NLL_ALONE_BELOW else 1)
        ]
        dev = self.codebook.device
        offset = self.stop_offset(ratio)
        with codec.adapter(COMPRESS), torch.inference_mode():
            for chunk in _progress(chunks, progress, "latent compress"):
                seg = torch.tensor([segments[i] for i in chunk], device=dev)
                hidden = self.compress_hidden(codec, seg, ratio)  # [B, n, H]
                stops = self.stop(hidden).squeeze(-1) + offset  # [B, n]
                for row, i in enumerate(chunk):
                    ends = span_ends(stops[row].tolist(), seg.shape[1], self.max_span)
                    _, idx = quantize(self.to_z(hidden[row, ends]), self.codebook)
                    out[i] = self.ids_of(idx)
        return out

    def ids_of(self, indices: torch.Tensor) -> list[int]:
        """``indices [N, C]`` codebook rows -> N Z ids."""
        K = self.codebook_size
        return [sum(int(v) * K**c for c, v in enumerate(row)) for row in indices.tolist()]

    def indices_of(self, z_ids: Sequence[int]) -> list[list[int]]:
        K = self.codebook_size
        return [[(int(z) // K**c) % K for c in range(self.codebooks)] for z in z_ids]

    def check_ids(self, z_ids: Sequence[int]) -> None:
        for z in z_ids:
            if not 0 <= int(z) < self.k:
                raise CorruptCodeError(f"Z id {z} is outside the learned code's vocabulary of {self.k}")

    # ---- Z -> reader inputs ------------------------------------------------------------------------------
    def embeddings(self, z_ids: Sequence[int]) -> torch.Tensor:
        import torch

        self.check_ids(z_ids)
        dev = self.codebook.device
        idx = torch.tensor(self.indices_of(z_ids), device=dev, dtype=torch.long).view(-1, self.codebooks)
        rows = torch.stack([self.codebook[c][idx[:, c]] for c in range(self.codebooks)], 0).sum(0)
        return rows.to(self.embedding.weight.dtype)

    def offsets(self, z_ids: Sequence[int]) -> tuple[list[int], int]:
        return list(range(len(z_ids))), len(z_ids)

    def text_length(self, z_ids: Sequence[int]) -> int | None:
        return None  # the ids do not say: the container stores it (ZCode.segment_tokens)

    def named_tokens(self, z_ids: Sequence[int]) -> list[int] | None:
        return None  # a row of the codebook stands for no particular tokens: the reader rebuilds the text

    # ---- persistence -------------------------------------------------------------------------------------
    def state_dict(self) -> dict[str, Any]:
        return {
            "codebook": self.codebook.detach(),
            "ratio_embed": self.ratio_embed.detach(),
            "to_z.weight": self.to_z.weight.detach(),
            "to_z.bias": self.to_z.bias.detach(),
            "stop.weight": self.stop.weight.detach(),
            "stop.bias": self.stop.bias.detach(),
        }

    def load_state_dict(self, state: dict[str, Any]) -> None:
        import torch

        with torch.no_grad():
            self.codebook.copy_(state["codebook"])
            self.ratio_embed.copy_(state["ratio_embed"])
            self.to_z.weight.copy_(state["to_z.weight"])
            self.to_z.bias.copy_(state["to_z.bias"])
            self.stop.weight.copy_(state["stop.weight"])
            self.stop.bias.copy_(state["stop.bias"])

    def fingerprint_parts(self) -> list[bytes]:
        digest = hashlib.blake2b(digest_size=8)
        for tensor in self.state_dict().values():
            digest.update(tensor.float().cpu().numpy().tobytes())
        return [
            self.name.encode(),
            struct.pack("<III", self.codebook_size, self.codebooks, self.max_span),
            digest.digest(),
        ]
