"""Frozen features: hook-based export from any layer of a timm or transformers backbone, and cheap heads on them.

``from ftpeft.features import load_features`` is the path earlier docs printed.
"""

from ftpeft.features.extract import load_features

__all__ = ["load_features"]
