from turbovid.ops.quant.int8 import Int8Linear, quantize_blockwise, dequantize_blockwise, swap_linears

__all__ = ["Int8Linear", "quantize_blockwise", "dequantize_blockwise", "swap_linears"]
