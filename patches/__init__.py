"""Compatibility patches for third-party code stamo_vla runs (LIBERO, upstream OpenVLA remote code).

Every patch is small, names the upstream issue it works around, applies only when the installed version
needs it (detected from the installed code, not assumed), and is tested with fakes.
"""
