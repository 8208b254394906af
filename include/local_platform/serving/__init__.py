"""TensorFlow serving: SavedModels and their signatures, JSON instances to tensors, tensors to prediction rows,
fast numeric JSON, and the cache of loaded models."""
