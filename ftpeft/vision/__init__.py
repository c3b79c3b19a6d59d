"""Image classification with timm: arguments, image data and transforms, models, the offline demo weights."""
