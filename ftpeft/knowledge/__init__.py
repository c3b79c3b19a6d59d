"""Knowledge injection: external vectors added to token embeddings or fused after the encoder.

``from ftpeft.knowledge import KnowledgeTable, knowledge_batch`` is the path earlier model cards printed.
"""

from ftpeft.knowledge.data import knowledge_batch
from ftpeft.knowledge.table import KnowledgeTable

__all__ = ["KnowledgeTable", "knowledge_batch"]
