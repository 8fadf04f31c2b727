"""LIBERO integration, TensorFlow-free: env factory, observation/action protocol, spawned env-worker pool,
scripted pick-and-place controller and demonstration collection.

Import the submodules directly: ``env`` (factory, suites, init states), ``protocol`` (image/state/action
conventions), ``workers`` (``EnvWorkerPool``), ``scripted`` (+ ``scripted_geometry``, ``scripted_scene``:
the controller), ``scripted_rollout`` (episode runner, no-op filter, success report) and ``collect``
(``stamo-vla collect`` / ``controller-report``). This ``__init__`` stays empty so importing it is cheap.
"""
