"""The core every recipe stands on: parsing, errors, the output directory and run lifecycle, metrics and reports,
cards and the Hub, the Trainer subclass, and the model-agnostic pieces of tuning (layer map, freezing, LR groups)."""
