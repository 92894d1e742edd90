"""Encoder registry: ``list_encoders()``, ``create_encoder(name, **cfg)``, ``register_encoder(name)``."""
from .base import (IMAGE, TEXT, Encoder, create_encoder, encoder_class, l2_normalize, list_encoders,
                   register_encoder, resolve_device)

__all__ = ["IMAGE", "TEXT", "Encoder", "create_encoder", "encoder_class", "l2_normalize", "list_encoders",
           "register_encoder", "resolve_device"]
