"""Suite-wide settings: deterministic hypothesis, CPU-only JAX."""

import os

os.environ.setdefault("JAX_PLATFORMS", "cpu")

from hypothesis import HealthCheck, settings  # noqa: E402

# A flaky test is a failing test: examples are derived from the test itself, never from the clock.
settings.register_profile(
    "ci",
    derandomize=True,
    deadline=None,
    print_blob=True,
    suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large],
)
# For local bug hunting only: `HYPOTHESIS_PROFILE=explore pytest`.
settings.register_profile("explore", deadline=None, max_examples=2000)
settings.load_profile(os.environ.get("HYPOTHESIS_PROFILE", "ci"))
