"""A finished run as an ONNX model that serves on CPU without torch: ``ftpeft export OUTPUT_DIR --format onnx``.

``onnx.py`` exports the run's classifier with torch's exporter (dynamic batch and sequence axes), checks it against
torch on example rows, optionally quantises it to int8 (ONNX Runtime's dynamic quantisation), and saves beside it
what predicting needs: the tokenizer or the image transform, the label names and the run's target (target.json:
softmax, sigmoid + thresholds, or raw numbers). ``predictor.py`` reads that folder back for
``ftpeft predict OUTPUT_DIR --backend onnx``: the same rows, the same CSV as the torch backend.
Needs ``pip install -e '.[onnx]'``.
"""
