from .layer_norm import LayerNorm
from .layer_norm import RMSNorm
