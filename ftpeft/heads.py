from ftpeft.features.heads import attach_head, load_sklearn_head, load_torch_head  # noqa: F401  (path of earlier cards)
