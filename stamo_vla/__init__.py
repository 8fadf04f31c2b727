"""stamo_vla: StaMo compact-state targets as a fine-tuning plugin for OpenVLA-style policies.

Importing this package is cheap: it never imports tensorflow, libero or diffusers. Heavy modules are
imported by the subpackages that need them, and optional ones only inside the functions that use them.
"""

__version__ = "0.1.0"
