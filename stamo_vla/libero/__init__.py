"""LIBERO integration, TensorFlow-free: env factory, observation/action protocol, spawned env-worker pool,
scripted pick-and-place controller and demonstration collection.

Import the submodules directly (``stamo_vla.libero.env``, ``.protocol``, ``.workers``, ``.scripted``,
``.collect``); this package ``__init__`` stays empty so importing it is cheap.
"""
