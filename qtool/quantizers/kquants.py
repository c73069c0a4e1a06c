"""Q2_K ... Q6_K and Q8_K: 256-weight super-blocks with quantized sub-block scales."""
