"""Hyper-parameter search (``--hp_search N``): Optuna trials through ``Trainer.hyperparameter_search`` that reach
ftpeft's own fields (head LR, layer decay, LoRA rank, depth), chosen on the validation split only."""
