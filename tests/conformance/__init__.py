"""This repository's run of the packaged conformance suite (``avatarchat.testing.conformance``)
on the built-in handlers; ``conftest.py`` gives their factories."""
