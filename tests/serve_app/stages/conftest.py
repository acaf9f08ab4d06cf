"""The vision-shaped graph fixture of the runtime's EP tests, shared with the vision stage's EP tests."""

from tests.mmcore.runtime.conftest import vision_artifacts  # noqa: F401 -- a fixture, found by name
