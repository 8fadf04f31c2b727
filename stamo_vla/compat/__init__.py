"""Version-gated patches of third-party code stamo_vla runs (today: official LIBERO installed from source).

Every patch is small, names the upstream issue it works around, applies only when the installed version
needs it (detected from the installed code, not assumed), and is tested with fakes. Patches a user applies
to a third-party checkout by hand would live in the repository's top-level ``patches/``; there are none.
"""
