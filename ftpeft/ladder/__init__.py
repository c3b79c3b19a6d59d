"""The strategy ladder: probe every layer, run the fine-tuning strategies within a time budget, choose on
validation, and print the command to use (``ftpeft ladder`` / ``recipes/ladder.py``)."""
