"""nearsight: large-scale image retrieval and nearest-neighbour search."""

__version__ = "0.1.0"
