"""Training of the latent codec's adapters (self-expressive autoencoding) and of the ``infer`` adapter."""

from zcompress_integrations.core.training.infer import group_infer_loss, infer_loss, train_infer
from zcompress_integrations.core.training.trainer import TrainConfig, get_lr, prepare_segments, train

__all__ = ["TrainConfig", "train", "get_lr", "prepare_segments", "train_infer", "infer_loss", "group_infer_loss"]
