"""Optional-dependency checks: one place that knows which extra provides which module."""

from __future__ import annotations

import importlib
import importlib.util
from types import ModuleType

# module import name -> the pip extra of this project that installs it
EXTRAS: dict[str, str] = {
    "tensorflow": "data",
    "tensorflow_datasets": "data",
    "libero": "sim",
    "mujoco": "sim",
    "robosuite": "sim",
    "simplejpeg": "sim",
    "bitsandbytes": "quant",
    "imageio": "viz",
    "matplotlib": "viz",
    "flash_attn": "flash",
    "scipy": "study",
    "av": "lerobot",
    "pyarrow": "lerobot",
    "pyarrow.parquet": "lerobot",
    "pyarrow.compute": "lerobot",
}


class MissingDependencyError(ImportError):
    """Raised when an optional dependency is needed but not installed."""


def is_available(module: str) -> bool:
    """Whether `module` can be imported, without importing it."""
    try:
        return importlib.util.find_spec(module) is not None
    except (ImportError, ValueError):
        return False


def require(module: str, purpose: str) -> ModuleType:
    """Import an optional module or raise an error that names the extra to install.

    Args:
        module: import name, e.g. ``"tensorflow_datasets"``.
        purpose: what the caller needs it for, used in the message.
    """
    try:
        return importlib.import_module(module)
    except ImportError as err:
        extra = EXTRAS.get(module)
        hint = f"pip install 'stamo-vla[{extra}]'" if extra else f"pip install {module}"
        raise MissingDependencyError(
            f"{purpose} needs the optional dependency '{module}', which is not installed ({err}). "
            f"Install it with: {hint}"
        ) from err
