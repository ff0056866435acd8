"""Training of the latent codec's adapters: the token-group reader (``reader.py``) and the ``infer`` adapter
(``infer.py``), the learned code's compressor (``compressor.py``, joint; ``staged.py``, in stages), one config dataclass per task (``config.py``), one lr schedule (``schedule.py``), one checkpoint
schema (``checkpoint.py``), data preparation (``data.py``) and ``zcompress train <task>`` (``cli.py``)."""

from zcompress_integrations.core.training.checkpoint import load_checkpoint, save_checkpoint
from zcompress_integrations.core.training.compressor import train_compressor
from zcompress_integrations.core.training.config import (
    CompressorConfig,
    InferConfig,
    PrepareConfig,
    ReaderConfig,
    StagedConfig,
)
from zcompress_integrations.core.training.data import prepare_segments, write_segments
from zcompress_integrations.core.training.infer import group_infer_loss, run_infer, train_infer
from zcompress_integrations.core.training.reader import train_reader
from zcompress_integrations.core.training.schedule import get_lr
from zcompress_integrations.core.training.staged import train_staged

__all__ = [
    "ReaderConfig",
    "InferConfig",
    "CompressorConfig",
    "train_compressor",
    "StagedConfig",
    "train_staged",
    "PrepareConfig",
    "train_reader",
    "train_infer",
    "run_infer",
    "group_infer_loss",
    "get_lr",
    "save_checkpoint",
    "load_checkpoint",
    "prepare_segments",
    "write_segments",
]
