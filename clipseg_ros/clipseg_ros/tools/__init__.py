"""Tools for tests, the demo, benchmarks and fuzzing; the runtime package never imports them."""
