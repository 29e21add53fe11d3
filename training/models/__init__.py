"""The pure model modules: no training loop, no data, no export."""

from .pixelcnn import PixelCNN, PixelCNNConfig
from .vae import VAE, VAEConfig

__all__ = ["VAE", "PixelCNN", "PixelCNNConfig", "VAEConfig"]
