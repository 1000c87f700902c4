"""sagecute: SageAttention-style quantized attention in CuTe DSL.

``sageattn`` is a drop-in for ``torch.nn.functional.scaled_dot_product_attention``
(and for SageAttention's ``sageattn``): INT8 Q/K and FP8 P/V on Hopper, with
K smoothing and an LSE correction that keep it close to bf16 attention.
"""

from .api import sageattn, sageattn_varlen
from .quant_layout import PvAccum, QuantGranularity

__version__ = "0.1.0"
__all__ = ["sageattn", "sageattn_varlen", "QuantGranularity", "PvAccum", "__version__"]
