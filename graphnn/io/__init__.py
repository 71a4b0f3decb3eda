"""Files: checkpoints (training state) and saved models (inference graph + weights)."""

from graphnn.io.checkpoint import load_checkpoint, save_checkpoint
from graphnn.io.saved_model import LoadedModel, load_model, save_model

__all__ = ["LoadedModel", "load_checkpoint", "load_model", "save_checkpoint", "save_model"]
