"""hone: turn an open-weights model into your own specialist, on your own machines, and prove it worked."""

import logging

__version__ = "0.1.0"

# On AVX512-BF16 CPUs bitsandbytes warns at import that an optional kernel from the model hub is missing; hone
# never downloads, and bitsandbytes falls back to its built-in CPU kernel, so the warning is only noise.
logging.getLogger("bitsandbytes.backends.cpu.ops").setLevel(logging.ERROR)
