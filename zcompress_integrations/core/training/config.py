"""One config dataclass per training task. Every field is a ``zcompress train <task>`` flag and a key of the
``--config`` YAML/JSON file; ``__post_init__`` checks every field and names it (and the value) in a
:class:`~zcompress_integrations.errors.ConfigError`."""

from __future__ import annotations

import dataclasses
import math
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any, Literal, get_args, get_origin, get_type_hints

from zcompress_integrations.errors import ConfigError

__all__ = [
    "AnswerSettings",
    "ReaderConfig",
    "InferConfig",
    "PrepareConfig",
    "CompressorConfig",
    "CalibrateConfig",
    "Device",
    "Decay",
    "config_from_dict",
]

Device = Literal["cpu", "cuda", "auto"]
Decay = Literal["constant", "linear", "cosine"]
GROUP_PROBS = [0.2, 0.45, 0.15, 0.2]  # P(group size = 1, 2, 3, 4): the shipped reader's mix


def _is_int(value: Any) -> bool:
    return isinstance(value, int) and not isinstance(value, bool)


def _is_number(value: Any) -> bool:
    return isinstance(value, (int, float)) and not isinstance(value, bool) and math.isfinite(value)


def _is_list_of(value: Any, item: type) -> bool:
    """A list of ``item`` (ints count as floats)."""
    return isinstance(value, list) and all(
        isinstance(v, item) or (item is float and isinstance(v, int)) for v in value
    )


# a plain type (or an optional one: ``int | None``), the test its values pass, what the error says they must be
_SCALARS: tuple[tuple[type, Callable[[Any], bool], str], ...] = (
    (int, _is_int, "an integer"),
    (float, _is_number, "a finite number"),
    (str, lambda v: isinstance(v, str), "a string"),
)


def _expected(hint: Any) -> tuple[Callable[[Any], bool], str] | None:
    """(test, what it must be) for a field's type hint: Literal choices, ``list[...]``, bool, int, float, str."""
    options = [a for a in get_args(hint) if a is not type(None)]
    if get_origin(hint) is Literal:
        return (lambda v: v in options), f"one of {list(options)}"
    if get_origin(hint) is list:
        (item,) = get_args(hint)
        return (lambda v: _is_list_of(v, item)), f"a list of {item.__name__}"
    if hint is bool:
        return (lambda v: isinstance(v, bool)), "true or false"
    for kind, test, what in _SCALARS:
        if hint is kind or kind in options:
            return test, what
    return None


def _check(cfg: Any) -> None:
    """Type and range checks shared by every config: ints, floats, Literal choices, lists of floats."""
    for f, hint in get_type_hints(type(cfg)).items():
        value = getattr(cfg, f)
        expected = _expected(hint)
        if expected is None or (value is None and type(None) in get_args(hint)):
            continue
        test, what = expected
        if not test(value):
            raise ConfigError(f"{type(cfg).__name__}.{f} must be {what}; got {value!r}")


def _at_least(cfg: Any, minimum: float, *names: str) -> None:
    for n in names:
        value = getattr(cfg, n)
        if value is not None and value < minimum:
            raise ConfigError(f"{type(cfg).__name__}.{n} must be >= {minimum}; got {value!r}")


def _check_probs(cfg: Any, max_group: int | None) -> None:
    name, probs = type(cfg).__name__, cfg.group_probs
    if not probs or any(p < 0 for p in probs) or sum(probs) <= 0:
        raise ConfigError(
            f"{name}.group_probs must be non-negative weights with a positive sum; got {probs!r}"
        )
    if max_group is not None and len(probs) > max_group:
        raise ConfigError(
            f"{name}.group_probs has {len(probs)} sizes; groups hold at most {max_group} tokens"
        )


def _check_schedule(cfg: Any) -> None:
    _at_least(cfg, 0, "steps", "warmup_steps", "grad_clip", "decay_start")
    _at_least(cfg, 1, "batch_size", "log_every", "checkpoint_every", "eval_every")
    if cfg.lr <= 0:
        raise ConfigError(f"{type(cfg).__name__}.lr must be > 0; got {cfg.lr!r}")
    if not 0 <= cfg.min_lr_frac <= 1:
        raise ConfigError(f"{type(cfg).__name__}.min_lr_frac must be in [0, 1]; got {cfg.min_lr_frac!r}")
    _at_least(cfg, 0, "max_minutes")


@dataclass
class AnswerSettings:
    """The answer-from-Z term a reader-training task may add (``core/training/from_z.py``): fields shared by the
    configs that train a reader."""

    # add this times the answer-from-Z loss (core/training/from_z.py) to each step; 0 = reconstruction only
    qa_weight: float = 0.0
    # folder with hotpotqa/hotpotqa_train_100.jsonl and natural_questions/nq_open_oracle_500.jsonl
    qa_data: str | None = None
    qa_batch: int = 4  # answer examples per step
    qa_repeat: float = 0.25  # share of them that are "repeat the document" prompts
    qa_held: int = 24  # answer examples held apart for the held-out answer CE


def _check_answers(cfg: AnswerSettings) -> None:
    _at_least(cfg, 1, "qa_batch")
    _at_least(cfg, 0, "qa_held", "qa_weight")
    if not 0 <= cfg.qa_repeat <= 1:
        raise ConfigError(f"{type(cfg).__name__}.qa_repeat must be in [0, 1]; got {cfg.qa_repeat!r}")
    if cfg.qa_weight > 0 and not cfg.qa_data:
        raise ConfigError(
            f"{type(cfg).__name__}.qa_data must name the answer-examples folder when qa_weight > 0"
        )


@dataclass
class ReaderConfig(AnswerSettings):
    """Train the token-group code's reader (the ``decompress`` LoRA): teacher-forced reconstruction of training
    segments after ``[Z_1 .. Z_m, sep]``, over random groupings (sizes drawn from ``group_probs``), so one adapter
    reads any grouping the compressor chooses at any ratio up to ``max_group``."""

    # jsonl files with a "text" field, or one .npy of segments [N, >= segment_len] (zcompress train prepare)
    data: list[str] = field(default_factory=list)
    out: str = "runs/reader"  # run folder: checkpoint.pt, log.jsonl, adapters/
    model: str | None = None  # backbone name or path; None = the embedded SmolLM2-135M
    device: Device = "cpu"  # where to train (fp32 everywhere: the model is small)
    seed: int = 0  # adapter init, separator, data order and groupings
    segment_len: int = 64  # text tokens per segment
    max_group: int = 4  # most text tokens one Z-token stands for
    # where Z-tokens sit: "aligned" (at their group's first token; the shipped reader) or "consecutive"
    # (0 .. m-1: a code takes as many positions as it has Z-tokens)
    positions: Literal["aligned", "consecutive"] = "aligned"
    lora_r: int = 16  # LoRA rank of the reader (alpha = 2 x rank)
    group_probs: list[float] = field(default_factory=lambda: list(GROUP_PROBS))  # P(group size = 1, 2, ...)
    train_sep: bool = False  # also train the separator embedding (the shipped recipe keeps it fixed)
    steps: int = 600  # optimizer steps in all (a resumed run stops here too)
    batch_size: int = 8  # segments per step
    lr: float = 2e-3  # peak learning rate (AdamW, no weight decay)
    warmup_steps: int = 20  # linear warm-up steps
    decay: Decay = "constant"  # after the warm-up (or from decay_start): constant, linear or cosine
    decay_start: int | None = None  # the step the decay starts at (default: the end of the warm-up)
    min_lr_frac: float = 0.05  # the decay ends at lr * min_lr_frac at ``steps``
    grad_clip: float = 1.0  # gradient norm clip
    held: int = 32  # the first ``held`` segments are held apart for the held-out CE
    log_every: int = 5  # a train row in log.jsonl every this many steps
    eval_every: int = 50  # an eval row (held-out CE, true and shuffled code) every this many steps
    checkpoint_every: int = 25  # checkpoint.pt every this many steps
    # 0 = no limit; else stop (checkpoint, eval, export) after this many minutes of training
    max_minutes: float = 0.0
    max_data_tokens: int = 0  # jsonl data: stop reading after this many tokens (0 = all)

    def __post_init__(self) -> None:
        _check(self)
        _at_least(self, 1, "segment_len", "max_group", "lora_r")
        _at_least(self, 0, "held", "max_data_tokens")
        _check_schedule(self)
        _check_probs(self, self.max_group)
        _check_answers(self)


@dataclass
class InferConfig:
    """Train the ``infer`` adapter and its head (generation in Z space, ``core/zspace_groups.py``) on top of trained
    reader adapters: windows of ``window_segments`` consecutive segments, cut at random into groups, and every
    group's next ``max_group`` tokens are the targets."""

    adapters: str = ""  # trained latent adapters to add infer/ to ("default": the shipped ones)
    data: list[str] = field(default_factory=list)  # jsonl files with a "text" field, or one .npy of windows
    # run folder: checkpoint.pt, log.jsonl, adapters/ (the input adapters plus infer/)
    out: str = "runs/infer"
    model: str | None = None  # backbone name or path; None = the embedded SmolLM2-135M
    device: Device = "cpu"  # where to train
    seed: int = 0  # adapter and head init, data order and groupings
    window_segments: int = 4  # consecutive segments per training window (>= 2)
    group_probs: list[float] = field(default_factory=lambda: list(GROUP_PROBS))  # P(group size = 1, 2, ...)
    chain_rank: int = 0  # give the head a chain of this rank when it has none (0: keep the head as it is)
    steps: int = 200  # optimizer steps in all (a resumed run stops here too)
    batch_size: int = 8  # windows per step
    lr: float = 5e-4  # peak learning rate of the infer LoRA
    lr_head: float = 2e-3  # peak learning rate of the Z head
    warmup_steps: int = 10  # linear warm-up steps
    decay: Decay = "cosine"  # after the warm-up (or from decay_start): constant, linear or cosine
    decay_start: int | None = None  # the step the decay starts at (default: the end of the warm-up)
    min_lr_frac: float = 0.1  # the decay ends at lr * min_lr_frac at ``steps``
    grad_clip: float = 1.0  # gradient norm clip (LoRA and head each)
    weight_decay: float = 0.0  # AdamW weight decay
    held: int = 8  # the first ``held`` windows are held apart for the held-out CE (groups of 2)
    log_every: int = 10  # a train row in log.jsonl every this many steps
    eval_every: int = 50  # an eval row (held-out CE and per-offset accuracy) every this many steps
    checkpoint_every: int = 50  # checkpoint.pt every this many steps
    max_minutes: float = 0.0  # 0 = no limit; else stop after this many minutes of training
    max_data_tokens: int = 0  # jsonl data: stop reading after this many tokens (0 = all)

    def __post_init__(self) -> None:
        _check(self)
        _at_least(self, 2, "window_segments")
        _at_least(self, 0, "chain_rank", "held", "max_data_tokens", "weight_decay")
        _check_schedule(self)
        if self.lr_head <= 0:
            raise ConfigError(f"InferConfig.lr_head must be > 0; got {self.lr_head!r}")
        _check_probs(self, None)  # the code's max_group is known once the adapters are loaded


@dataclass
class CompressorConfig(AnswerSettings):
    """Train the learned code (``core/codes/learned.py``): the ``compress`` LoRA with which the backbone writes its
    own Z-tokens, its stop head and codebook, bootstrapped from a trained token-group reader; optionally with the
    answer-from-Z term (:class:`AnswerSettings`)."""

    # jsonl files with a "text" field, or one .npy of segments [N, >= segment_len] (zcompress train prepare)
    data: list[str] = field(default_factory=list)
    out: str = "runs/compressor"  # run folder: checkpoint.pt, log.jsonl, adapters/
    model: str | None = None  # backbone name or path; None = the embedded SmolLM2-135M
    device: Device = "cpu"  # where to train
    # the token-group adapters whose reader starts the learned code's reader ("default": the shipped ones;
    # "none": a fresh reader, for tests on tiny models)
    init_reader: str = "default"
    seed: int = 0  # adapter, head and codebook init; data order
    segment_len: int = 64  # text tokens per segment
    lora_r: int = 16  # LoRA rank of the compress adapter (and of a fresh reader)
    codebook_size: int = 4096  # rows per codebook (K)
    codebooks: int = 1  # codebooks per Z-token (residual VQ): a Z costs codebooks * log2(K) bits
    max_span: int = 16  # most text tokens one Z-token stands for
    ratios: list[float] = field(default_factory=lambda: [2.0, 4.0, 8.0])  # the ratio curriculum, in order
    curriculum_every: int = 300  # one more ratio of the curriculum joins the mix every this many steps
    vq_start: int = 100  # steps of continuous Z (matching the token-group embeddings) before quantising
    reader_start: int = (
        100  # the reader LoRA trains from this step on (before: frozen, the compressor adapts)
    )
    match_weight: float = 1.0  # weight of matching the token-group embedding of spans of <= 4 tokens
    # weight of the reader's CE in the loss (always logged as ``ce``); 0 before ``ce_start`` lets the writer first
    # learn the embeddings the reader reads (stage a) without the reader's gradient through noise Z (run 4)
    ce_weight: float = 1.0
    ce_start: int = 0  # the reader's CE joins the loss (at ``ce_weight``) from this step on
    stop_weight: float = 1.0  # weight of the stop head's imitation of the surprisal-balanced span ends
    budget_weight: float = 1.0  # weight of (mean stop probability - 1 / ratio)^2: the length budget
    commit_weight: float = 0.25  # VQ commitment weight (the codebook loss has weight 1)
    # weight of max(0, contrast_margin - (CE with another row's Z - CE with its own Z)): ignoring Z must cost
    # (run 1 without it: CE true 6.56 vs other 6.55 nats, no information in Z). 0 = off (one reader pass less)
    contrast_weight: float = 1.0
    contrast_margin: float = 1.0  # nats/token by which a segment's own Z must beat another's
    # scheduled sampling: the share of the reader's input text tokens replaced by its own greedy prediction (from
    # a first pass with the true prefix), so it learns to go on from its own errors as it must free-running; the
    # targets stay the true tokens. 0 = off (teacher forcing, one reader pass less)
    sampling: float = 0.0
    sampling_ramp: int = 0  # steps over which the share grows linearly from 0 to ``sampling`` (0 = at once)
    steps: int = 1000  # optimizer steps in all (a resumed run stops here too)
    batch_size: int = 8  # segments per step
    lr: float = 1e-3  # peak learning rate (AdamW, no weight decay)
    warmup_steps: int = 20  # linear warm-up steps
    decay: Decay = "constant"  # after the warm-up (or from decay_start): constant, linear or cosine
    decay_start: int | None = None  # the step the decay starts at (default: the end of the warm-up)
    min_lr_frac: float = 0.05  # the decay ends at lr * min_lr_frac at ``steps``
    grad_clip: float = 1.0  # gradient norm clip
    held: int = 32  # the first ``held`` segments are held apart for the diagnostics
    log_every: int = 5  # a train row in log.jsonl every this many steps
    eval_every: int = 50  # a diagnostics row every this many steps
    checkpoint_every: int = 25  # checkpoint.pt every this many steps
    max_minutes: float = 0.0  # 0 = no limit; else stop (checkpoint, eval, export) after this many minutes
    max_data_tokens: int = 0  # jsonl data: stop reading after this many tokens (0 = all)

    def __post_init__(self) -> None:
        _check(self)
        _at_least(self, 1, "segment_len", "lora_r", "codebooks", "max_span", "curriculum_every")
        _at_least(self, 2, "codebook_size")
        _at_least(self, 0, "held", "max_data_tokens", "vq_start", "reader_start", "ce_start")
        _at_least(self, 0, "match_weight", "ce_weight", "stop_weight", "budget_weight", "commit_weight")
        _at_least(self, 0, "contrast_weight", "contrast_margin", "sampling_ramp")
        _check_schedule(self)
        if not 0 <= self.sampling <= 1:
            raise ConfigError(f"CompressorConfig.sampling must be in [0, 1]; got {self.sampling!r}")
        _check_answers(self)
        if not self.ratios or any(not 1 <= r <= self.max_span for r in self.ratios):
            raise ConfigError(
                f"CompressorConfig.ratios must be numbers in [1, max_span={self.max_span}]; got {self.ratios!r}"
            )


@dataclass
class StagedConfig:
    """Train the learned code in stages (``core/training/staged.py``): a k-means vocabulary over token-group
    embeddings, then the reader on the teacher's ids, then the writer (the ``compress`` LoRA, ``to_z`` and the stop
    head) of those ids; each stage against a fixed target, so none can collapse onto another."""

    # jsonl files with a "text" field, or one .npy of segments [N, >= segment_len] (zcompress train prepare)
    data: list[str] = field(default_factory=list)
    out: str = "runs/staged"  # run folder: checkpoint.pt, log.jsonl, adapters/
    model: str | None = None  # backbone name or path; None = the embedded SmolLM2-135M
    device: Device = "cpu"  # where to train
    # the token-group adapters whose reader starts the learned code's reader ("default": the shipped ones;
    # "none": a fresh reader, for tests on tiny models)
    init_reader: str = "default"
    seed: int = 0  # adapter, head and k-means init; data order
    segment_len: int = 64  # text tokens per segment
    lora_r: int = 16  # LoRA rank of the compress adapter (and of a fresh reader)
    codebook_size: int = 4096  # rows per codebook (K)
    codebooks: int = 2  # codebooks per Z-token (residual VQ): a Z costs codebooks * log2(K) bits
    max_span: int = 16  # most text tokens one Z-token stands for
    ratios: list[float] = field(default_factory=lambda: [2.0, 4.0, 8.0])  # the ratio curriculum, in order
    curriculum_every: int = 100  # one more ratio of the curriculum joins the mix every this many steps
    kmeans_rows: int = 1024  # training rows whose teacher spans (at every ratio) make the vocabulary
    reader_steps: int = 400  # stage 1: the reader learns the teacher ids' codebook rows
    writer_steps: int = 200  # stage 2: the writer learns to write the teacher ids
    writer_fit_rows: int = 256  # rows whose span ends start to_z by least squares at stage 2 (0 = no fit)
    # weight of max(0, contrast_margin - (CE with another row's ids - CE with its own)) in stage 1; 0 = off
    contrast_weight: float = 0.0
    contrast_margin: float = 1.0  # nats/token by which a segment's own Z must beat another's
    stop_weight: float = 1.0  # weight of the stop head's imitation of the surprisal-balanced span ends
    budget_weight: float = 1.0  # weight of (mean stop probability - 1 / ratio)^2: the length budget
    batch_size: int = 8  # segments per step
    lr: float = 1e-3  # peak learning rate (AdamW, no weight decay)
    warmup_steps: int = 10  # linear warm-up steps
    decay: Decay = "constant"  # after the warm-up (or from decay_start): constant, linear or cosine
    decay_start: int | None = None  # the step the decay starts at (default: the end of the warm-up)
    min_lr_frac: float = 0.05  # the decay ends at lr * min_lr_frac at the last step
    grad_clip: float = 1.0  # gradient norm clip
    held: int = 32  # the first ``held`` segments are held apart for the diagnostics
    log_every: int = 5  # a train row in log.jsonl every this many steps
    eval_every: int = 100  # a diagnostics row every this many steps (and at the end of each stage)
    checkpoint_every: int = 25  # checkpoint.pt every this many steps
    max_minutes: float = 0.0  # 0 = no limit; else stop (checkpoint, eval, export) after this many minutes
    max_data_tokens: int = 0  # jsonl data: stop reading after this many tokens (0 = all)

    @property
    def steps(self) -> int:
        """Optimizer steps in all (both stages): where the lr schedule ends."""
        return self.reader_steps + self.writer_steps

    def __post_init__(self) -> None:
        _check(self)
        _at_least(self, 1, "segment_len", "lora_r", "codebooks", "max_span", "curriculum_every")
        _at_least(self, 1, "kmeans_rows")
        _at_least(self, 2, "codebook_size")
        _at_least(self, 0, "held", "max_data_tokens", "reader_steps", "writer_steps", "writer_fit_rows")
        _at_least(self, 0, "stop_weight", "budget_weight", "contrast_weight", "contrast_margin")
        _check_schedule(self)
        if not self.ratios or any(not 1 <= r <= self.max_span for r in self.ratios):
            raise ConfigError(
                f"StagedConfig.ratios must be numbers in [1, max_span={self.max_span}]; got {self.ratios!r}"
            )


@dataclass
class CalibrateConfig:
    """Calibrate a learned code's stop head: per requested ratio, the bias on its stop logits with which the code
    of training segments comes out at that ratio (``LatentConfig.stop_offsets``). Nothing is trained; the writer
    still chooses each segment's count and span ends, only the mean count is set."""

    adapters: str = ""  # learned-code adapters to calibrate
    # training text: jsonl files with a "text" field (each line a paragraph, cut as compress cuts it), or a .npy
    # of full rows (zcompress train prepare)
    data: list[str] = field(default_factory=list)
    out: str = ""  # where to write the calibrated adapters ("" = in place)
    ratios: list[float] = field(default_factory=lambda: [2.0, 4.0, 8.0])  # the ratios to calibrate
    rows: int = 512  # training segments to calibrate on
    # leave out the first segments (of a .npy: the compressor's ``held`` rows, its diagnostics)
    skip: int = 64
    model: str | None = None  # backbone name or path; None = the embedded SmolLM2-135M
    device: Device = "cpu"  # where to run
    batch_size: int = 32  # segments per compress pass

    def __post_init__(self) -> None:
        _check(self)
        _at_least(self, 1, "rows", "batch_size")
        _at_least(self, 0, "skip")
        if not self.adapters:
            raise ConfigError("CalibrateConfig.adapters is required: a learned-code adapters directory")
        if not self.ratios or any(not r > 1 for r in self.ratios):
            raise ConfigError(f"CalibrateConfig.ratios must be ratios > 1; got {self.ratios!r}")


@dataclass
class PrepareConfig:
    """Tokenise jsonl files (a ``text`` field per line) into the ``.npy`` of segments the reader trains on."""

    data: list[str] = field(default_factory=list)  # jsonl files (globs allowed) with a "text" field
    out: str = "segments.npy"  # the .npy to write (uint16 when the vocabulary fits)
    model: str | None = None  # the backbone whose tokenizer to use; None = the embedded SmolLM2-135M
    segment_len: int = 64  # tokens per row
    max_tokens: int = 10_000_000  # stop reading after this many tokens (0 = all)
    seed: int = 0  # the rows are shuffled with this seed

    def __post_init__(self) -> None:
        _check(self)
        _at_least(self, 1, "segment_len")
        _at_least(self, 0, "max_tokens")


def config_from_dict(cls: type, values: dict[str, Any]) -> Any:
    """``cls(**values)``, with unknown keys named in a :class:`ConfigError` instead of a ``TypeError``."""
    known = {f.name for f in dataclasses.fields(cls)}
    unknown = sorted(set(values) - known)
    if unknown:
        raise ConfigError(f"{cls.__name__} has no field(s) {unknown}; known: {sorted(known)}")
    return cls(**values)
