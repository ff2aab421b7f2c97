"""Fault tests: real SIGKILLs of `harness run` and `harness train`, resumed; a dashboard reading a live run."""
