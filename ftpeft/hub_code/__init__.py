"""Code that ships with saved models: ftpeft's own transformers architectures, loadable without ftpeft.

Each module here imports only torch and transformers (no ftpeft, no relative imports), so it works as
transformers' remote code: ``save_pretrained`` copies the module next to the weights and writes ``auto_map``
into config.json (the classes are registered with ``register_for_auto_class``), and anyone loads the model with
``AutoModelForSequenceClassification.from_pretrained(DIR, trust_remote_code=True)`` or ``pipeline(...,
trust_remote_code=True)``. ftpeft imports its classes from these same modules: one source, no copy.

- ``mean_pooling``: the mean-pooling readout (``model_type: ftpeft-mean-pooling``); also a linear head on frozen
  features read at any hidden state, [CLS] or mean (train_head's ``transformers_model/``).
- ``knowledge_injection``: knowledge injection (``ftpeft-knowledge``) and its text-to-knowledge pipeline.

What each module needs from elsewhere (the classification loss, the encoder config) lives inside it; a test keeps
the copies of those few helpers identical.
"""

# model_type -> the module of this package that defines it (what a saved model of that type ships)
SHIPPED_MODULES = {
    "ftpeft-mean-pooling": "mean_pooling",
    "ftpeft-knowledge": "knowledge_injection",
}
