"""Fuzz tests of the HTTP/1.1 parser and framer (hypothesis in CI, atheris on demand)."""
