"""ssl_rep: self-supervised representation learning on images, from pretext task to evaluation."""
__version__ = "0.1.0"   # before the imports: ssl_rep.export records it

from .data import build_dataset
from .encoders import create_encoder, list_encoders, load_encoder
from .eval import extract_features
from .eval.inputs import input_transform
from .export import export_encoder
from .quantize import quantize_encoder

__all__ = ["build_dataset", "create_encoder", "export_encoder", "extract_features", "input_transform", "list_encoders",
           "load_encoder", "quantize_encoder"]
