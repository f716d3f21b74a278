"""hone: turn an open-weights model into your own specialist, on your own machines, and prove it worked."""

__version__ = "0.1.0"
