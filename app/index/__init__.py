"""The vector index over gallery embeddings (FAISS), rebuilt from the database when needed."""
