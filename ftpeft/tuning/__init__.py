"""How much of a model trains: the tuning arguments, LoRA, and the one entry point that applies them."""
