"""Predictions from any finished ftpeft run: ``ftpeft predict OUTPUT_DIR --input FILE_OR_FOLDER --output preds.csv``.

The run's kind is read off its files (``runs.py``), the matching predictor is loaded (``text.py``, ``image.py``,
``heads.py``), the input is read (``inputs.py``), rows are scored in batches across accelerate ranks and the
main process writes one CSV (``job.py``, ``writer.py``): the id, the predicted ``label`` and one probability
column per class, named by label (the Kaggle submission shape).
"""
