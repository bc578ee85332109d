"""Core pieces shared by every stage: the feature-cache contract, dataset annotations,
safe deserialisation, typed configuration and the user-facing error type."""

from aqa.errors import UserError

__version__ = "0.1.0"

__all__ = ["UserError", "__version__"]
