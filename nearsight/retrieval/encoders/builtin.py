"""Imports every built-in encoder module so each registers itself."""
from . import tiny  # noqa: F401
from . import cnn, clip  # noqa: F401
from . import gist  # noqa: F401
from . import lab_layout  # noqa: F401
from . import triplet  # noqa: F401
