"""Quantized linear layers. Importing this package does not import Triton (kernels load on first use)."""
from turbovid.ops.quant.fp8 import Fp8Linear, Fp8TensorLinear, fp8_available, swap_linears_fp8
from turbovid.ops.quant.int8 import Int8Linear, dequantize_blockwise, quantize_blockwise, swap_linears

__all__ = [
    "Int8Linear", "Fp8Linear", "Fp8TensorLinear", "quantize_blockwise", "dequantize_blockwise", "swap_linears",
    "swap_linears_fp8", "fp8_available",
]
