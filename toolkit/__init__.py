"""dlkit: train a PyTorch image classifier and take it to a fast, verified Triton deployment.

Importing the package is cheap on purpose (no torch): the CLI answers `--help` from here.
"""

from toolkit.errors import DlkitError

__version__ = "0.1.0"
__all__ = ["DlkitError", "__version__"]
