"""pocketswap: distil real-time face-swap students and ship them to phones."""

__version__ = "0.1.0"
