"""The path earlier model cards printed; the heads live in ``ftpeft.features.heads``."""

from ftpeft.features.heads import attach_head, load_sklearn_head, load_torch_head

__all__ = ["attach_head", "load_sklearn_head", "load_torch_head"]
