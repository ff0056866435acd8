"""Training of the latent codec's adapters (self-expressive autoencoding)."""

from zcompress_integrations.core.training.trainer import TrainConfig, get_lr, prepare_segments, train

__all__ = ["TrainConfig", "train", "get_lr", "prepare_segments"]
