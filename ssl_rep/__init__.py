"""ssl_rep: self-supervised representation learning on images, from pretext task to evaluation."""
from .data import build_dataset
from .encoders import create_encoder, list_encoders, load_encoder
from .eval import extract_features
from .quantize import quantize_encoder

__version__ = "0.1.0"
__all__ = ["build_dataset", "create_encoder", "extract_features", "list_encoders", "load_encoder",
           "quantize_encoder"]
