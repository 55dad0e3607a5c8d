"""Test setup: a 4-device CPU mesh (must be set before JAX is imported) and shared fixtures."""

import os

os.environ["XLA_FLAGS"] = os.environ.get("XLA_FLAGS", "") + " --xla_force_host_platform_device_count=4"
os.environ.setdefault("JAX_PLATFORMS", "cpu")
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")

import jax
import pytest

jax.config.update("jax_default_matmul_precision", "highest")


@pytest.fixture(scope="session")
def devices():
    assert jax.device_count() == 4, "tests expect 4 virtual CPU devices"
    return jax.devices()
