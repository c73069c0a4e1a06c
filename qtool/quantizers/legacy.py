"""Q4_0, Q4_1, Q5_0, Q5_1, Q8_0: 32-weight blocks with one (or scale + min) half-precision factor."""
