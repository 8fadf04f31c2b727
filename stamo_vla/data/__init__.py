"""LIBERO RLDS data: writer, tfds reader, trajectory transforms, statistics, augmentation, torch datasets.

Importing this package is cheap: tensorflow and tensorflow_datasets are imported only inside the functions
that read or build a tfds dataset. Import the submodules directly, e.g. ``stamo_vla.data.rlds_writer``.
"""
