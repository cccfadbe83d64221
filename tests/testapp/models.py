"""Models used only by the test suite."""
