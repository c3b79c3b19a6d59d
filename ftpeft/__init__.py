"""ftpeft: fine-tuning recipes for the HuggingFace stack, and the library behind them.

Use the pieces in your own ``transformers.Trainer``::

    from ftpeft import unfreeze_last, build_param_groups
    report = unfreeze_last(model, 2)              # top 2 layers + pooler + head trainable
    groups = build_param_groups(model, 5e-5, head_lr=1e-3, layer_decay=0.9)
    trainer = Trainer(model, args, optimizers=(torch.optim.AdamW(groups), None), ...)
"""

from ftpeft.core.errors import FtpeftError
from ftpeft.core.freezing import (
    ARCHITECTURES,
    FreezeReport,
    LayerMap,
    count_parameters,
    freeze_report,
    keep_frozen_norms_in_eval,
    layer_map,
    unfreeze_last,
)
from ftpeft.core.param_groups import build_param_groups
from ftpeft.core.trainer import FtpeftTrainer
from ftpeft.core.windows import pool_windows
from ftpeft.features.extract import load_features
from ftpeft.features.heads import attach_head, load_sklearn_head, load_torch_head
from ftpeft.knowledge.data import knowledge_batch
from ftpeft.knowledge.model import KnowledgeInjectionConfig, KnowledgeInjectionForSequenceClassification
from ftpeft.knowledge.table import KnowledgeTable
from ftpeft.text.pooling import MeanPoolingConfig, MeanPoolingForSequenceClassification
from ftpeft.text.windows import tokenize_windows
from ftpeft.tuning.apply import TuningReport, apply_tuning

__version__ = "0.1.0"

__all__ = [
    "ARCHITECTURES",
    "FreezeReport",
    "FtpeftError",
    "FtpeftTrainer",
    "KnowledgeInjectionConfig",
    "KnowledgeInjectionForSequenceClassification",
    "KnowledgeTable",
    "LayerMap",
    "MeanPoolingConfig",
    "MeanPoolingForSequenceClassification",
    "TuningReport",
    "apply_tuning",
    "attach_head",
    "build_param_groups",
    "count_parameters",
    "freeze_report",
    "keep_frozen_norms_in_eval",
    "knowledge_batch",
    "layer_map",
    "load_features",
    "load_sklearn_head",
    "load_torch_head",
    "pool_windows",
    "tokenize_windows",
    "unfreeze_last",
]
