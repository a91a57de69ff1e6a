"""Test-session setup.

Eight host CPU devices are forced before JAX initialises so that sharding tests can build real
meshes; single-device tests simply use device 0.
"""

import os

os.environ.setdefault("XLA_FLAGS", "--xla_force_host_platform_device_count=8")
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")
# Keep the test workers from oversubscribing the two cores with BLAS/torch threads.
os.environ.setdefault("OMP_NUM_THREADS", "1")
# One on-disk compilation cache per checkout, shared by the xdist workers and the CLI subprocesses the
# tests start: many tests compile the same tiny-model programs (a cold cache cut a trainer-heavy subset
# of the suite from 564 s to 410 s on 2 cores). Entries are keyed by program and JAX version, so a cache
# left by an older checkout is never wrong, only unused.
os.environ.setdefault(
    "JAX_COMPILATION_CACHE_DIR",
    os.path.join(os.path.dirname(os.path.dirname(os.path.abspath(__file__))), ".pytest_cache", "jax-compilation-cache"),
)
os.environ.setdefault("JAX_PERSISTENT_CACHE_MIN_COMPILE_TIME_SECS", "0.2")
