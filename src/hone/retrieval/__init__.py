"""Retrieval shared by evaluation and serving: sentence embeddings, document passages and a vector index."""

from hone.retrieval.embeddings import Embedder, load_embedder
from hone.retrieval.index import Hit, Passage, VectorIndex, chunk_documents

__all__ = ["Embedder", "Hit", "Passage", "VectorIndex", "chunk_documents", "load_embedder"]
