"""Test-session setup.

Eight host CPU devices are forced before JAX initialises so that sharding tests can build real
meshes; single-device tests simply use device 0.
"""

import os

os.environ.setdefault("XLA_FLAGS", "--xla_force_host_platform_device_count=8")
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")
# Keep the test workers from oversubscribing the two cores with BLAS/torch threads.
os.environ.setdefault("OMP_NUM_THREADS", "1")
