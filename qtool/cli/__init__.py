"""The ``qtool`` command: one module per command (parsing and printing), wired together in app."""

import os

# NumPy's OpenBLAS starts a worker per core when NumPy is imported, and each worker spins on its core for
# a while before it sleeps: on two cores, ~0.3 s of CPU that a command's own start-up and first kernels
# wanted (measured with perf: blas_thread_server 8% of a whole conversion's samples). No qtool command
# calls BLAS, so a command process asks for none, unless the user chose a number.
os.environ.setdefault("OPENBLAS_NUM_THREADS", "1")
