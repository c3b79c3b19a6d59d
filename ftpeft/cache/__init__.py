"""The frozen-prefix activation cache: run the frozen bottom of a model once, train the top from its output."""
