"""The user-facing errors, re-exported for users: they live at the bottom layer
(onnxcompress.compiler.errors) so that every layer can raise them without importing upward."""

from onnxcompress.compiler.errors import (  # noqa: F401
    CompressError,
    DataError,
    ModelError,
    PlanError,
    ResourceError,
    UnsupportedOpError,
    UsageError,
    VerificationError,
)

__all__ = ["CompressError", "DataError", "ModelError", "PlanError", "ResourceError", "UnsupportedOpError", "UsageError",
           "VerificationError"]
