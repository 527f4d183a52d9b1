"""The fuzz suite: seeded generators of bad input (``gen_*.py``) and the tests that throw
them at the real server, data channel, file readers and config loader (``test_fuzz_*.py``).

Every generator is deterministic (a fixed seed), so a failure names an input that fails
again on the next run. ``test_fuzz_counts.py`` checks the corpus holds 1,000+ inputs.
"""
