"""OpenHART: the open, trainable, device-agnostic Hybrid Autoregressive Transformer."""

__version__ = "0.1.0"
