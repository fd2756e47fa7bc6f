"""Test-session setup: eight fake CPU devices, so sharding tests use real multi-device meshes.

The flag must be set before JAX initialises its backends, hence at conftest import time.
Single-device code is unaffected: unsharded arrays live on device 0.
"""
import os

os.environ["XLA_FLAGS"] = " ".join(
    [os.environ.get("XLA_FLAGS", ""), "--xla_force_host_platform_device_count=8"]
).strip()
os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")
